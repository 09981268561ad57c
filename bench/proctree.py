"""A server's whole process tree, read from /proc: its processes, their memory, the ports they listen on.

Peers run several processes (workers, a Rust front end, an arbiter), so a figure for one PID
would flatter them; every figure here covers the process and all its descendants.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def tree(pid: int) -> list[int]:
    """`pid` and all its living descendants (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) over the tree, in KiB; Pss splits pages shared by forked workers."""
    rss = pss = 0
    for member in tree(pid):
        try:
            rss += _field(f"/proc/{member}/status", "VmRSS:")
            pss += _field(f"/proc/{member}/smaps_rollup", "Pss:")
        except OSError:  # exited between listing and reading
            pass
    return rss, pss


def _field(path: str, name: str) -> int:
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def listening_ports(pid: int) -> set[int]:
    """TCP ports (IPv4 and IPv6) that any process of the tree listens on."""
    inodes = set()
    for member in tree(pid):
        try:
            for fd in os.scandir(f"/proc/{member}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class PeakMemory:
    """Samples a tree's memory every `interval` seconds in a thread, keeping the peaks (KiB)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.rss = self.pss = self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss, pss = memory_kib(self.pid)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
        self.processes = max(self.processes, len(tree(self.pid)))
