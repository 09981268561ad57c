"""Shared fixtures: real models, real images, a real daemon process, a real in-process server.

Readiness is never a sleep: a daemon is ready when READY=1 arrives on a notify socket the test
bound, and its port is read from the STATUS= line it sends with it.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "efficientnet-lite0"
sys.path.insert(0, str(REPO / "models"))

import build as model_build  # noqa: E402  (models/build.py: build-time code, on sys.path above)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real EfficientNet-Lite0 directory, built if `make model` has not run yet."""
    model_build.build_model("efficientnet-lite0", DEFAULT_MODEL)
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A millisecond-fast model with the same I/O contract (see models/onnx_graphs.py: tiny)."""
    out = tmp_path_factory.mktemp("tiny-model")
    model_build.build_model("tiny", out)
    return out


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, bytes]:
    """Real photos from scikit-image's offline samples, encoded in several formats."""
    from PIL import Image
    from skimage import data

    def encode(array, fmt, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt, **options)
        return buffer.getvalue()

    return {
        "cat.jpg": encode(data.chelsea(), "JPEG", quality=92),
        "coffee.png": encode(data.coffee(), "PNG"),
        "camera.png": encode(data.camera(), "PNG"),
        "motorcycle.webp": encode(data.stereo_motorcycle()[0], "WEBP", quality=90),
        "cat.gif": encode(data.chelsea(), "GIF"),
        "coffee.bmp": encode(data.coffee(), "BMP"),
        "coffee.tiff": encode(data.coffee(), "TIFF"),
    }


EXPECTED_TOP1 = {
    "cat.jpg": {"tiger cat", "Egyptian cat", "tabby"},
    "coffee.png": {"espresso"},
    "camera.png": {"tripod"},
    "motorcycle.webp": {"moped", "motor scooter"},
}


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; collects every field sent."""

    def __init__(self, directory: Path):
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0) -> dict[str, str]:
        """The first message (new or already seen) with key (= value); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key}={value} in {self.messages}")
            self.sock.settimeout(remaining)
            try:
                raw = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(dict(line.split("=", 1) for line in raw.splitlines() if "=" in line))

    def close(self):
        self.sock.close()


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    notify: NotifySocket
    log_path: Path
    url: str = ""
    _consumed: int = field(default=0)

    def wait_ready(self, timeout: float = 60.0) -> "DaemonProcess":
        try:
            ready = self.notify.wait_for("READY", "1", timeout)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"daemon not ready; log:\n{self.log()}") from None
        port = re.search(r" on (\S+):(\d+)", ready.get("STATUS", "")).group(2)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(config_text, env=None, args=()) -> a DaemonProcess that has sent READY=1.

    `env` entries override the test's environment; a None value removes the variable. The config is written to tmp_path/inferd.conf; port 0 unless the text sets one.
    """
    started: list[DaemonProcess] = []

    def start(config_text: str = "", env: dict | None = None, args: tuple = (), wait: bool = True):
        config_path = tmp_path / "inferd.conf"
        config_path.write_text(config_text)
        notify = NotifySocket(tmp_path)
        log_path = tmp_path / f"daemon-{len(started)}.log"
        environment = {**os.environ, "NOTIFY_SOCKET": notify.path, "INFERD_SERVER_PORT": "0", **(env or {})}
        environment = {key: value for key, value in environment.items() if value is not None}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "inferd", "--config", str(config_path), *args],
                                    env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        daemon = DaemonProcess(proc, notify, log_path)
        started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        daemon.notify.close()


@dataclass
class InProcessServer:
    server: object
    thread: threading.Thread
    url: str


@pytest.fixture
def serve():
    """serve(config) -> an InferdServer on 127.0.0.1:0 in this process, with its model loaded."""
    from inferd import state as state_module
    from inferd.metrics import InferdMetrics
    from inferd.server import InferdServer

    running: list[InProcessServer] = []

    def start(config, reload_model=None) -> InProcessServer:
        metrics = InferdMetrics()
        state = state_module.build(config, metrics)
        metrics.set_model(state.model.name, state.model.sha256, state.loaded_at)
        server = InferdServer(("127.0.0.1", 0), state, metrics, reload_model=reload_model)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append(InProcessServer(server, thread, f"http://127.0.0.1:{server.server_address[1]}"))
        return running[-1]

    yield start
    for item in running:
        item.server.shutdown()
        item.server.server_close()
        item.server.state.retire(5.0)


def config_for(model_dir: Path, **sections) -> "object":
    """A Config for `model_dir` with section overrides, e.g. batching={"max_batch_size": 4}."""
    from inferd import config

    sections.setdefault("model", {})
    sections["model"] = {"path": model_dir, **sections["model"]}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    return config.parse("\n".join(lines), "<test>")
