"""glibc's allocator, asked to give memory back to the system. Never raises: elsewhere (musl,
macOS) it does nothing.

glibc keeps memory freed in a thread's heap mapped; after decoding a large image (Pillow keeps
images in 16 MB blocks) or freeing a model session, RSS would stay where it was.
"""

from __future__ import annotations

import ctypes
import os


def _glibc():
    try:
        library = ctypes.CDLL(None)
        return library if hasattr(library, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()
M_ARENA_MAX = -8  # mallopt(3)


def trim() -> None:
    """Hand memory freed in the heaps back to the system."""
    if _libc is not None:
        _libc.malloc_trim(0)


def limit_arenas(count: int) -> None:
    """At most `count` malloc arenas (glibc makes up to 8 per core, one for each thread that
    allocates while the others are busy, and each fragments on its own); a MALLOC_ARENA_MAX or
    GLIBC_TUNABLES the operator set is left as it is. Call before threads allocate."""
    if _libc is not None and not {"MALLOC_ARENA_MAX", "GLIBC_TUNABLES"} & set(os.environ):
        _libc.mallopt(M_ARENA_MAX, max(1, count))
