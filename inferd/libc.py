"""glibc's allocator, asked to give memory back to the system. Never raises: elsewhere (musl,
macOS) both calls do nothing.

glibc serves a request of up to 32 MB from a thread's heap once a block of that size has been
freed (its mmap threshold rises on its own), and memory freed in a heap stays mapped. Decoding
large images allocates such blocks on many handler threads (Pillow keeps images in 16 MB blocks),
so RSS stayed high after a burst of large images. A fixed threshold keeps every such block in its
own mapping, unmapped when it is freed.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024


def _glibc():
    try:
        library = ctypes.CDLL(None)
        return library if hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()


def keep_large_blocks_unmappable(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of `threshold` bytes and more from their own mappings; True if set."""
    return bool(_libc is not None and _libc.mallopt(M_MMAP_THRESHOLD, threshold))


def trim() -> None:
    """Hand memory freed in the heaps back to the system."""
    if _libc is not None:
        _libc.malloc_trim(0)
