"""How many cores the daemon may keep busy: the CPUs it may run on (its affinity), capped by its
cgroup's CPU quota (issue 21).

A container started with `--cpus=1`, a Kubernetes CPU limit or a unit's `CPUQuota=` leaves every
core visible and throttles the process once it spends its quota; one intra-op thread per visible
core then makes tail latency explode (bentoml#1474, pytorch/serve#3150). The quota is read where the
kernel keeps it: cgroup v2's `cpu.max`, or v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`, in the
process's own cgroup and every cgroup above it (the tightest wins), under the mount points that
/proc/self/mountinfo names. Never raises: whatever cannot be read counts as no quota.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cores:
    effective: int  # min(affinity, quota rounded up), at least 1
    affinity: int  # CPUs the scheduler may run the process on
    quota: float | None  # cores' worth of CPU time the cgroups allow per period; None: no quota

    def describe(self) -> dict:
        return {"effective": self.effective, "affinity": self.affinity, "quota": self.quota}


def cores(proc: Path = Path("/proc")) -> Cores:
    """The cores of this process now (read afresh: a quota can change while it runs)."""
    affinity = _affinity()
    quota = cgroup_quota(proc)
    effective = affinity if quota is None else max(1, min(affinity, math.ceil(quota)))
    return Cores(effective, affinity, quota)


def available() -> int:
    return cores().effective


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cgroup_quota(proc: Path = Path("/proc")) -> float | None:
    """Cores' worth of CPU time the tightest cgroup above this process allows, or None."""
    try:
        memberships = (proc / "self" / "cgroup").read_text().splitlines()
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in memberships:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            limits += [_v2_quota(d) for d in _directories(mounts, "cgroup2", None, path)]
        elif "cpu" in controllers.split(","):
            limits += [_v1_quota(d) for d in _directories(mounts, "cgroup", "cpu", path)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _directories(mounts: list[str], fstype: str, controller: str | None, path: str) -> list[Path]:
    """The directory of cgroup `path` and of each cgroup above it, under the mount of `fstype`
    (with `controller` among its options, for v1) whose root holds `path`."""
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        root, mount_point = fields[3], fields[4]
        kind, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        if kind != fstype or (controller is not None and controller not in options):
            continue
        if not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        relative = Path(path[len(root):].lstrip("/")) if root != "/" else Path(path.lstrip("/"))
        found = [Path(mount_point) / relative]
        while found[-1] != Path(mount_point):
            found.append(found[-1].parent)
        return found
    return []


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
