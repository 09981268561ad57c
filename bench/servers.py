"""Servers under test, each a subprocess on a port the OS chose at bind time.

inferd binds port 0 itself and reports the port in the STATUS= line it sends with READY=1 on a
notify socket we bound (as systemd would). The reference design's uvicorn binds port 0 and logs
the port it got. No "free port" is ever picked and bound later.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from inferd.tools.notify import NotifyReceiver

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    """A running server process and the URL it answers on."""

    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path
    started_in: float = 0.0

    def rss_kib(self) -> int:
        """VmRSS of the server process in KiB, from /proc/<pid>/status."""
        return read_rss_kib(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL after `timeout`. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def read_rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB; raises OSError when the process is gone."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError(f"no VmRSS for pid {pid}")


def start_inferd(model_dir: Path, workdir: Path, config: str = "", timeout: float = 120.0,
                 env: dict[str, str] | None = None, cgroup: Path | None = None) -> Server:
    """Run `python -m inferd` on 127.0.0.1, port 0, with `model_dir`, extra INI `config` text and extra
    environment variables `env` (INFERD_<SECTION>_<KEY> overrides); in `cgroup` (a directory of the
    cgroup v1 cpu controller, see cpu_quota_group) from its first instruction when given.

    Returns once READY=1 arrived; `started_in` is the time from spawn to READY=1. Raises
    RuntimeError with the daemon's log when it exits or stays silent.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "inferd.conf"
    config_path.write_text(f"[model]\npath = {Path(model_dir).resolve()}\n[logging]\naccess_log = false\n{config}")
    notify = NotifyReceiver(workdir)
    log_path = workdir / "inferd.log"
    env = {**os.environ, **(env or {}), "NOTIFY_SOCKET": notify.path, "INFERD_SERVER_PORT": "0",
           "INFERD_SERVER_HOST": "127.0.0.1"}
    began = time.monotonic()
    with open(log_path, "wb") as log:
        join = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
        proc = subprocess.Popen([sys.executable, "-m", "inferd", "--config", str(config_path)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, preexec_fn=join)
    try:
        ready = notify.wait_for("READY", "1", timeout, alive=lambda: proc.poll() is None)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"inferd did not become ready; log:\n{log_path.read_text(errors='replace')}") from None
    finally:
        notify.close()
    started_in = time.monotonic() - began
    port = re.search(r" on (\S+):(\d+)", ready.get("STATUS", "")).group(2)
    return Server("inferd", proc, f"http://127.0.0.1:{port}", log_path, started_in)


def start_reference(model_dir: Path, workdir: Path, threads: int = 0, timeout: float = 120.0) -> Server:
    """Run the reference design (bench/reference_app.py) under uvicorn on 127.0.0.1, port 0.

    uvicorn binds port 0 itself and logs the port it got; returns once that line is logged and
    GET /health answers 200. Raises RuntimeError with the server's log otherwise. (Not `--fd`:
    uvicorn takes a passed descriptor for a Unix socket and then never sets TCP_NODELAY, which
    adds 40 ms delayed-ACK stalls the reference design does not have when it binds a port.)
    """
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir).resolve()
    env = {**os.environ, "MODEL_PATH": str(model_dir / "model.onnx"), "LABELS_PATH": str(model_dir / "labels.txt"),
           "MANIFEST_PATH": str(model_dir / "model.ini"), "NUM_THREADS": str(threads),
           "ORT_DISABLE_TELEMETRY": "1"}
    log_path = workdir / "reference.log"
    began = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.reference_app:app", "--host", "127.0.0.1", "--port", "0",
             "--log-level", "info", "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    server = Server("reference", proc, "", log_path)
    port = _logged_port(log_path, timeout, alive=lambda: proc.poll() is None)
    server.url = f"http://127.0.0.1:{port}"
    if port is None or not wait_healthy(server.url, timeout, alive=lambda: proc.poll() is None):
        server.stop(5)
        raise RuntimeError(f"reference design did not become healthy; log:\n{server.log()}")
    server.started_in = time.monotonic() - began
    return server


def _logged_port(log_path: Path, timeout: float, alive) -> int | None:
    """The port in uvicorn's "Uvicorn running on http://127.0.0.1:PORT" line, polled with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    return None


def wait_healthy(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll GET /health until it answers 200, the process dies, or `timeout` passes."""
    import http.client
    from urllib.parse import urlsplit

    target = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=2)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)  # polling interval of a readiness probe with a deadline, not a readiness guess
    return False


CPU_CONTROLLER = Path("/sys/fs/cgroup/cpu")  # cgroup v1, which this machine mounts (needs root)


def cpu_quota_group(name: str, cores: float) -> Path:
    """A cgroup v1 cpu group allowing `cores` CPUs' worth of time per 100 ms period (as a container's
    --cpus or a unit's CPUQuota= does); remove it with remove_group once its processes are gone."""
    group = CPU_CONTROLLER / name
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)))
    return group


def remove_group(group: Path) -> None:
    for pid in (group / "cgroup.procs").read_text().split():
        (group.parent / "cgroup.procs").write_text(pid)
    group.rmdir()


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="inferd-bench-"))
