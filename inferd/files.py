"""Reading the files an operator names (models, manifests, labels, keys, the configuration) without
ever blocking on one that is not a file.

A FIFO put where labels.txt was blocks `open()` until a writer comes, and the daemon's main loop,
which reloads, also handles SIGTERM (issue 21). So a file is opened non-blocking, checked with
fstat on the descriptor it got (no window between a check and the open), and read only if it is a
regular file, or a character device where the caller allows one (/dev/null as an empty keys file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device"))


class NotAFile(OSError):
    """The path names something other than a regular file."""

    def __init__(self, path: Path, kind: str):
        super().__init__(f"{path}: not a regular file ({kind})")
        self.strerror = f"not a regular file ({kind})"
        self.filename = str(path)


def read_bytes(path: Path, *, devices: bool = False) -> bytes:
    """The bytes of the regular file at `path` (with `devices`, of a character device too).
    Raises NotAFile for a FIFO, socket, directory or device, OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", closefd=True) as file:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or (devices and stat.S_ISCHR(mode))):
            raise NotAFile(Path(path), next((kind for test, kind in KINDS if test(mode)), "not a file"))
        os.set_blocking(fd, True)
        return file.read()


def read_text(path: Path, *, devices: bool = False) -> str:
    """read_bytes decoded as UTF-8; raises as read_bytes does, and UnicodeDecodeError."""
    return read_bytes(path, devices=devices).decode("utf-8")

