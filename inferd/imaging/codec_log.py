"""The codecs' own messages, routed through logging once per cause: Pillow's Python warnings
(a corrupt EXIF block warns on every request) and libtiff's C error and warning handlers (which
write raw lines to stderr, hundreds for one corrupt G4 TIFF).

`install()` replaces warnings.showwarning for warnings raised inside PIL and sets libtiff's
handlers, so each distinct message becomes one log line at debug (warnings) or warning (libtiff
errors) level, with digits blanked to tell causes apart and no file paths; at most
DISTINCT_CAUSES causes are remembered.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import warnings

log = logging.getLogger("inferd.images")

DISTINCT_CAUSES = 256
_DIGITS = re.compile(r"\d+")
_seen: set[str] = set()
_lock = threading.Lock()
_handlers: list = []  # the ctypes callbacks, kept alive for as long as libtiff may call them


def report(level: int, source: str, message: str) -> None:
    """Log `message` from `source` once per cause (the message with its numbers blanked)."""
    text = " ".join(str(message).split())[:300]
    cause = f"{source}: {_DIGITS.sub('N', text)}"
    with _lock:
        if cause in _seen or len(_seen) >= DISTINCT_CAUSES:
            return
        _seen.add(cause)
    log.log(level, "%s: %s (logged once)", source, text)


def install() -> None:
    """Route Pillow's warnings and libtiff's messages through `report`; idempotent."""
    if _handlers:
        return
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if "/PIL/" in str(filename).replace("\\", "/"):
            report(logging.DEBUG, f"Pillow {category.__name__}", str(message))
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    _handlers.append(showwarning)
    _install_libtiff()


def _install_libtiff() -> None:
    library = _loaded_libtiff()
    if library is None:
        return
    libc = ctypes.CDLL(None)
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

    def make(level: int):
        def handler(module, fmt, args):
            buffer = ctypes.create_string_buffer(512)
            libc.vsnprintf(buffer, ctypes.c_size_t(512), fmt, ctypes.c_void_p(args))
            report(level, f"libtiff {(module or b'').decode(errors='replace')}",
                   buffer.value.decode(errors="replace"))
        return handler_type(handler)

    errors, warnings_ = make(logging.WARNING), make(logging.DEBUG)
    _handlers.extend((errors, warnings_))
    library.TIFFSetErrorHandler.restype = ctypes.c_void_p
    library.TIFFSetWarningHandler.restype = ctypes.c_void_p
    library.TIFFSetErrorHandler(errors)
    library.TIFFSetWarningHandler(warnings_)


def _loaded_libtiff():
    """The libtiff that Pillow's _imaging module is linked against, as mapped in this process."""
    from PIL import Image  # noqa: F401  (loads _imaging, and with it libtiff)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None
