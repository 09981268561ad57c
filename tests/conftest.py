"""Shared fixtures: real models, real images, a real daemon process, a real in-process server.

Readiness is never a sleep: a daemon is ready when READY=1 arrives on a notify socket the test
bound, and its port is read from the STATUS= line it sends with it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import DEFAULT_MODEL, DaemonProcess, InProcessServer, NotifySocket, model_build


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


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(config_text, env=None, args=()) -> a DaemonProcess that has sent READY=1.

    `env` entries override the test's environment; a None value removes the variable. The config is written to tmp_path/inferd.conf; port 0 unless the text sets one.
    """
    started: list[DaemonProcess] = []

    def start(config_text: str = "", env: dict | None = None, args: tuple = (), wait: bool = True):
        config_path = tmp_path / "inferd.conf"
        config_path.write_text(config_text)
        notify = NotifySocket(tmp_path, f"notify-{len(started)}.sock")  # one per daemon
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
