"""The cores the daemon may keep busy: its CPU affinity capped by its cgroup's CPU quota (issue 21).

A daemon under a 1-CPU quota must start one intra-op thread per session, not one per visible core:
the kernel throttles a process that spends more than its quota, and tail latency explodes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from inferd import cpus

CPU_V1 = Path("/sys/fs/cgroup/cpu")


def write_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    (tmp_path / "self").mkdir(parents=True)
    (tmp_path / "self" / "cgroup").write_text(cgroup)
    (tmp_path / "self" / "mountinfo").write_text(mountinfo)
    return tmp_path


def test_the_tightest_quota_from_the_process_cgroup_up_wins_v2(tmp_path):
    root = tmp_path / "fs"
    (root / "system.slice" / "inferd.service").mkdir(parents=True)
    (root / "system.slice" / "cpu.max").write_text("150000 100000\n")
    (root / "system.slice" / "inferd.service" / "cpu.max").write_text("max 100000\n")
    proc = write_proc(tmp_path / "proc", "0::/system.slice/inferd.service\n",
                      f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n")
    assert cpus.cgroup_quota(proc) == 1.5


def v1_group(directory: Path, quota: int, period: int = 100000) -> Path:
    directory.mkdir()
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")
    return directory


def test_a_v1_quota_and_a_namespaced_root(tmp_path):
    root = v1_group(tmp_path / "cpu", 50000)
    # In a container with a cgroup namespace the mount's root is the container's own cgroup.
    proc = write_proc(tmp_path / "proc", "5:cpu,cpuacct:/kubepods/pod1\n0::/\n",
                      f"32 31 0:29 /kubepods/pod1 {root} rw - cgroup cgroup rw,cpu,cpuacct\n")
    assert cpus.cgroup_quota(proc) == 0.5


def test_no_quota_and_unreadable_files_mean_no_quota(tmp_path):
    root = v1_group(tmp_path / "cpu", -1)
    proc = write_proc(tmp_path / "proc", "1:cpu:/\n", f"32 31 0:29 / {root} rw - cgroup cgroup rw,cpu\n")
    assert cpus.cgroup_quota(proc) is None
    assert cpus.cgroup_quota(tmp_path / "nowhere") is None
    assert cpus.cores().effective >= 1


@pytest.fixture
def one_cpu_cgroup():
    """A cgroup v1 `cpu` group with a quota of one CPU (100 ms per 100 ms), as root."""
    if os.geteuid() != 0 or not (CPU_V1 / "cpu.cfs_quota_us").exists() or not os.access(CPU_V1, os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 cpu controller")
    group = CPU_V1 / f"inferd-test-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text("100000")
    yield group
    for pid in (group / "cgroup.procs").read_text().split():  # a daemon still inside: out first
        (CPU_V1 / "cgroup.procs").write_text(pid)
    group.rmdir()


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_daemon_under_a_one_cpu_quota_runs_one_intra_op_thread(start_daemon, tiny_model_dir, one_cpu_cgroup):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell a quota from the affinity")
    config = f"[model]\npath = {tiny_model_dir}\n[logging]\naccess_log = false\n"
    free = start_daemon(config)
    limited = start_daemon(config, preexec=lambda: (one_cpu_cgroup / "cgroup.procs").write_text(str(os.getpid())))
    free_health = requests.get(f"{free.url}/health", timeout=10).json()
    health = requests.get(f"{limited.url}/health", timeout=10).json()
    assert health["cpus"] == {"effective": 1, "affinity": free_health["cpus"]["affinity"], "quota": 1.0}
    assert health["model"]["intra_op_threads"] == 1
    assert free_health["model"]["intra_op_threads"] == free_health["cpus"]["effective"] >= 2
    # onnxruntime's pool has intra_op_threads - 1 threads of its own per session: one fewer here.
    assert threads(free.proc.pid) - threads(limited.proc.pid) == free_health["model"]["intra_op_threads"] - 1
    text = requests.get(f"{limited.url}/metrics?format=prometheus", timeout=10).text
    assert 'cpus="1"' in next(line for line in text.splitlines() if line.startswith("inferd_build_info{"))
