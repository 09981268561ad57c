"""``process_*`` metrics read from /proc on every scrape, with the semantics of client_python's
ProcessCollector (Linux only; elsewhere it reports nothing)."""

from __future__ import annotations

import math
import os

from .families import FamilySnapshot, Sample


class ProcessCollector:
    """Reads ``process_*`` metrics from /proc/<pid>; reports nothing where /proc is missing."""

    def __init__(self, proc: str = "/proc", pid: str = "self"):
        self._dir = os.path.join(proc, pid)
        try:
            self._ticks = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError, AttributeError):
            self._ticks = 100
        try:
            self._pagesize = os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            self._pagesize = 4096
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def __call__(self) -> list[FamilySnapshot]:
        if not self._btime:
            return []
        result = []

        def gauge(name, doc, value, unit=""):
            result.append(FamilySnapshot(name, doc, "gauge", unit, (Sample("", (), value),)))

        try:
            with open(os.path.join(self._dir, "stat"), "rb") as f:
                # Fields after the ")" that closes comm, which may itself contain spaces.
                parts = f.read().rsplit(b")", 1)[-1].split()
            cpu = (float(parts[11]) + float(parts[12])) / self._ticks  # utime + stime
            result.append(FamilySnapshot("process_cpu_seconds", "Total user and system CPU time "
                                         "spent in seconds.", "counter", "seconds",
                                         (Sample("_total", (), cpu),)))
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                  float(parts[20]), "bytes")
            gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                  float(parts[21]) * self._pagesize, "bytes")
            gauge("process_start_time_seconds", "Start time of the process since unix epoch "
                  "in seconds.", float(parts[19]) / self._ticks + self._btime, "seconds")
        except (OSError, IndexError, ValueError):
            pass
        try:
            gauge("process_open_fds", "Number of open file descriptors.",
                  len(os.listdir(os.path.join(self._dir, "fd"))))
            with open(os.path.join(self._dir, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open files"):
                        soft = line.split()[3]
                        gauge("process_max_fds", "Maximum number of open file descriptors.",
                              math.inf if soft == b"unlimited" else float(soft))
                        break
        except (OSError, IndexError, ValueError):
            pass
        return result
