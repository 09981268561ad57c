"""Shared fixtures: real models, real images, a real daemon process, a real in-process server.

Readiness is never a sleep: a daemon is ready when READY=1 arrives on a notify socket the test
bound, and its port is read from the STATUS= line it sends with it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import (DEFAULT_MODEL, REPO, DaemonProcess, InProcessServer, NotifyReceiver, model_build,
                           start_in_process)


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
def resnet50_dir(tmp_path_factory) -> Path:
    """A ResNet-50-shaped graph (random weights) beside the shipped preset's model.ini and labels."""
    directory = tmp_path_factory.mktemp("resnet50")
    shutil.copy(REPO / "models" / "resnet50" / "model.ini", directory)
    shutil.copy(REPO / "models" / "resnet50" / "labels.txt", directory)
    model_build.build_model("resnet50", directory)
    return directory


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
    `preexec` runs in the child before it becomes the daemon (to join a cgroup, say).
    """
    started: list[DaemonProcess] = []

    def start(config_text: str = "", env: dict | None = None, args: tuple = (), wait: bool = True,
              preexec=None):
        config_path = tmp_path / "inferd.conf"
        config_path.write_text(config_text)
        notify = NotifyReceiver(tmp_path, f"notify-{len(started)}.sock")  # one per daemon
        log_path = tmp_path / f"daemon-{len(started)}.log"
        environment = {**os.environ, "NOTIFY_SOCKET": notify.path, "INFERD_SERVER_PORT": "0", **(env or {})}
        environment = {key: value for key, value in environment.items() if value is not None}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "inferd", "--config", str(config_path), *args],
                                    env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                    preexec_fn=preexec)
        daemon = DaemonProcess(proc, notify, log_path)
        started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()  # a clean exit, so that `make coverage` gets its data
            try:
                daemon.proc.wait(15)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()
        daemon.notify.close()


@pytest.fixture
def tiny_srv(serve, tiny_model_dir):
    """The tiny model served in this process, its access log off."""
    from tests.support import config_for

    return serve(config_for(tiny_model_dir, logging={"access_log": "false"}))


@pytest.fixture
def serve():
    """serve(config, reload_model=None) -> an inferd HTTP server on 127.0.0.1:0 in this process,
    its model loaded; reload requests run `reload_model` (default: a real reload of `config`)."""
    running: list[InProcessServer] = []

    def start(config, reload_model=None) -> InProcessServer:
        running.append(start_in_process(config, reload=reload_model))
        return running[-1]

    yield start
    for item in running:
        item.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """make test's closing line says plainly what did not run, and why (each reason names the
    command that installs what it lacks); or that everything ran."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("every collected test ran (none skipped)")
        return
    by_reason: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        by_reason[reason] = by_reason.get(reason, 0) + 1
    terminalreporter.write_line(f"{len(skipped)} tests did not run:", yellow=True)
    for reason, count in sorted(by_reason.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"  {count} x {reason}", yellow=True)
