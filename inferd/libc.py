"""glibc's allocator, asked to give memory back to the system. Never raises: elsewhere (musl,
macOS) it does nothing.

glibc keeps memory freed in a thread's heap mapped; after decoding a large image (Pillow keeps
images in 16 MB blocks) or freeing a model session, RSS would stay where it was.
"""

from __future__ import annotations

import ctypes


def _glibc():
    try:
        library = ctypes.CDLL(None)
        return library if hasattr(library, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()


def trim() -> None:
    """Hand memory freed in the heaps back to the system."""
    if _libc is not None:
        _libc.malloc_trim(0)
