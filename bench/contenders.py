"""The servers of the peer table: inferd and each peer app, how to start one, how to talk to it.

Every server runs as its own process tree (a new session, so that stopping it ends every worker
it forked) on 127.0.0.1. Where the framework takes port 0 the port is read back from /proc (the
sockets the tree listens on); LitServe refuses port 0, so it alone gets a port that was unused a
moment before, and a start that fails is named with its log. Start-up is timed from spawning the
process to the first 200 of its health endpoint and to its first classification.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import proctree, servers
from inferd.tools import loadclient

PEER_VENVS = servers.REPO / ".venv-peers"
POLL_SECONDS = 0.02  # how often start-up polls the health endpoint, i.e. its resolution
PROBE_TIMEOUT = 0.5  # a health probe waits this long for an answer, then asks again


@dataclass(frozen=True)
class Contender:
    """How to run one server and how to send it one image."""

    name: str
    argv: tuple[str, ...]  # "{port}" is replaced by the port (0 where the server binds port 0 itself)
    health: str
    infer: str
    request: str  # "multipart" (field "file"), "msgpack" ({"image": bytes}) or "kserve-v1" (JSON, base64)
    picks_own_port: bool = True  # False: the server refuses port 0 and must be given one
    venv: Path | None = None  # the peer's own venv; None for inferd (the bench's venv)

    def body(self, data: bytes, filename: str) -> tuple[str, bytes]:
        """(Content-Type, body) of one request carrying the encoded image `data`."""
        if self.request == "multipart":
            return loadclient.multipart_body(data, filename)
        if self.request == "msgpack":  # a one-entry map {"image": bin32}, written out by hand
            return "application/msgpack", b"\x81\xa5image\xc6" + struct.pack(">I", len(data)) + data
        instance = {"image": {"b64": base64.b64encode(data).decode("ascii")}}
        return "application/json", json.dumps({"instances": [instance]}).encode()

    def missing(self) -> str | None:
        """Why this server cannot run here (its venv is missing), or None."""
        if self.venv is not None and not (self.venv / "bin" / "python").is_file():
            return f"{self.venv.relative_to(servers.REPO)} is missing: run `make bench-peers-venvs`"
        return None


def _peer(name: str, argv: tuple[str, ...], health: str, infer: str = "/infer", request: str = "multipart",
          **more) -> Contender:
    """A peer whose program (argv[0]) comes from its own venv, .venv-peers/<name>/bin."""
    program = str(PEER_VENVS / name / "bin" / argv[0])
    return Contender(name, (program, *argv[1:]), health, infer, request, venv=PEER_VENVS / name, **more)


INFERD = Contender("inferd", (sys.executable, "-m", "inferd", "--config", "{config}"), "/health", "/infer",
                   "multipart")
PEERS = (
    _peer("bentoml", ("bentoml", "serve", "bench.peers.bentoml_app:Classifier", "--host", "127.0.0.1",
                      "--port", "{port}"), "/readyz"),
    _peer("litserve", ("python", "-m", "bench.peers.litserve_app", "{port}"), "/health", picks_own_port=False),
    _peer("mosec", ("python", "-m", "bench.peers.mosec_app", "--address", "127.0.0.1", "--port", "{port}",
                    "--timeout", "30000"), "/", request="msgpack"),
    _peer("kserve", ("python", "-m", "bench.peers.kserve_app", "--http_port", "{port}"), "/v1/models/classifier",
          "/v1/models/classifier:predict", "kserve-v1"),
)
ALL = (INFERD, *PEERS)


@dataclass
class Running:
    """A started server: its process (the leader of its own session), URL and start-up times."""

    contender: Contender
    proc: subprocess.Popen
    url: str = ""
    to_health: float = 0.0  # seconds from spawn to the first 200 of the health endpoint
    to_answer: float = 0.0  # seconds from spawn to the first classification
    top1: str = ""  # the label of its first answer
    log_path: Path = field(default=Path("/dev/null"))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the whole session, SIGKILL to what is left after `timeout` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout)
                if not _group_alive(self.proc.pid):
                    break
            except subprocess.TimeoutExpired:
                pass
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def start(contender: Contender, model_dir: Path, workdir: Path, probe: tuple[str, bytes], *,
          timeout: float = 180.0) -> Running:
    """Spawn `contender` serving `model_dir`; return once it answered its health check and one
    classification of `probe` ((Content-Type, body)). RuntimeError with its log otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = 0 if contender.picks_own_port else _unused_port()
    config = _inferd_config(model_dir, workdir) if contender is INFERD else ""
    argv = [part.format(port=port, config=config) for part in contender.argv]
    # Nothing leaves the box (DESIGN.md): onnxruntime's and BentoML's usage tracking are off.
    env = {**os.environ, "PEER_MODEL_DIR": str(model_dir.resolve()), "ORT_DISABLE_TELEMETRY": "1",
           "BENTOML_DO_NOT_TRACK": "True",
           "INFERD_SERVER_PORT": "0", "INFERD_SERVER_HOST": "127.0.0.1", "PYTHONPATH": str(servers.REPO)}
    env.pop("NOTIFY_SOCKET", None)
    log_path = workdir / f"{contender.name}.log"
    began = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=servers.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    running = Running(contender, proc, log_path=log_path)
    try:
        _wait_until_serving(running, port, probe, began, began + timeout)
    except BaseException:
        running.stop(5)
        raise
    return running


def _wait_until_serving(running: Running, port: int, probe: tuple[str, bytes], began: float, deadline: float) -> None:
    contender = running.contender
    healthy, running.to_health = _first_healthy(running, port, deadline)
    running.to_health -= began
    running.url = f"http://127.0.0.1:{healthy}"
    while True:  # some health endpoints answer before the workers are up (mosec's /)
        _check_alive(running, deadline)
        try:
            status, answer = _request(healthy, "POST", contender.infer, probe)
        except socket.timeout:
            status, answer = None, b""
        if status == 200:
            running.to_answer, running.top1 = time.monotonic() - began, top_label(answer)
            return
        time.sleep(POLL_SECONDS)


def _first_healthy(running: Running, port: int, deadline: float) -> tuple[int, float]:
    """(port, monotonic time) of the first 200 from the health endpoint on `port` or, with port 0,
    on any port the tree listens on. Each port gets a prober thread of its own, so that a port that
    accepts and never answers (BentoML has such) delays no other."""
    found, stop, probing = queue.Queue(), threading.Event(), set()

    def probe_port(candidate: int) -> None:
        while not stop.is_set():
            if _status(candidate, "GET", running.contender.health) == 200:
                found.put((candidate, time.monotonic()))
                return
            stop.wait(POLL_SECONDS)  # polling with a deadline, not a readiness guess

    try:
        while True:
            _check_alive(running, deadline)
            for candidate in ({port} if port else proctree.listening_ports(running.proc.pid)) - probing:
                probing.add(candidate)
                threading.Thread(target=probe_port, args=(candidate,), daemon=True).start()
            try:
                return found.get(timeout=POLL_SECONDS)
            except queue.Empty:
                pass
    finally:
        stop.set()


def _check_alive(running: Running, deadline: float) -> None:
    if running.proc.poll() is not None:
        raise RuntimeError(f"{running.contender.name} exited ({running.proc.returncode}); log:\n{running.log()}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{running.contender.name} did not serve in time; log:\n{running.log()}")


def _status(port: int, method: str, path: str) -> int | None:
    """The status of a quick request; None when there was no answer in PROBE_TIMEOUT."""
    try:
        return _request(port, method, path, None, timeout=PROBE_TIMEOUT)[0]
    except socket.timeout:
        return None


def _request(port: int, method: str, path: str, probe: tuple[str, bytes] | None,
             timeout: float = 30.0) -> tuple[int | None, bytes]:
    """(status, body); (None, b"") when the connection fails; socket.timeout propagates."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": probe[0]} if probe else {}
        connection.request(method, path, probe[1] if probe else None, headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except socket.timeout:
        raise
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        connection.close()


def top_label(answer: bytes) -> str:
    """The first "label" in a JSON answer, wherever the framework nests it."""
    def first(node):
        if isinstance(node, dict):
            if "label" in node:
                return node["label"]
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                if (found := first(item)) is not None:
                    return found
        return None
    try:
        return str(first(json.loads(answer)))
    except ValueError:
        return "?"


def _unused_port() -> int:
    """A loopback port free right now, for a server that refuses port 0 (LitServe)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _inferd_config(model_dir: Path, workdir: Path) -> Path:
    path = workdir / "inferd.conf"
    path.write_text(f"[model]\npath = {model_dir.resolve()}\n[logging]\naccess_log = false\n")
    return path
