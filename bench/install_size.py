"""Disk size of what `pip install` puts into a venv for one server, against a bare venv.

`make bench-peers-venvs` makes .venv-peers/bare (`python -m venv`, nothing installed),
.venv-peers/inferd (`pip install .`: inferd and its runtime dependencies, as `make install` puts
the daemon, without the model-building extra) and one venv per peer (the framework plus the same
onnxruntime, numpy and Pillow). A server's install size is its venv's disk usage minus the bare
venv's: the interpreter links, pip and its activation scripts are the same in every one.
"""

from __future__ import annotations

import os
from pathlib import Path

from .contenders import PEER_VENVS


def disk_usage(path: Path) -> int:
    """Bytes of disk blocks under `path`, each inode counted once, links not followed."""
    seen, total = set(), 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def installed_mb(name: str) -> float | None:
    """MB that installing server `name` added to a bare venv; None when either venv is missing."""
    venv, bare = PEER_VENVS / name, PEER_VENVS / "bare"
    if not (venv / "bin" / "python").is_file() or not (bare / "bin" / "python").is_file():
        return None
    return round((disk_usage(venv) - disk_usage(bare)) / 1e6, 1)
