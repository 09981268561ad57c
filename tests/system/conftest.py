"""Fixtures for the system tests: a booted systemd with inferd installed (once per session), the
service reset before each test, slow models to keep requests in flight, and a real Prometheus.

Each test gets the service stopped, its failures reset, its drop-ins removed and the installed
config (with port 0) restored; the unit's journal since the test began is printed on failure.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.system import prometheus_server
from tests.system.systemd_machine import (CONFIG, SLOW_MANIFEST, Machine, boot, install, reset,
                                          seconds_per_iteration, skip_reason, slow_graph)


@pytest.fixture(scope="session")
def machine(tmp_path_factory) -> Machine:
    """A booted systemd with inferd installed by systemd/install.sh (once per session)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("machine") / "boot.log"
    machine = boot(log_path)
    try:
        install(machine)
        test_config = machine.path(CONFIG).read_text()
        test_config, count = re.subn(r"(?m)^port = 8000$", "port = 0", test_config)
        assert count == 1, "the installed config has no 'port = 8000' line"
        machine.test_config = test_config
        yield machine
    finally:
        machine.poweroff()


@pytest.fixture
def inferd(machine):
    """The machine with inferd stopped, failures reset, no drop-ins, the installed config (port 0)."""
    reset(machine)
    machine.test_started_usec = time.time_ns() // 1000
    yield machine
    print(machine.unit_messages()[-20000:])  # shown by pytest when the test failed
    reset(machine)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory):
    """slow_model(seconds) -> a model directory (on the host) whose run on a bright image takes
    about `seconds`, while its warm-up on zeros is instant."""
    import onnx

    per_iteration = seconds_per_iteration()
    built = {}

    def build(seconds: float) -> Path:
        if seconds not in built:
            out = tmp_path_factory.mktemp("slow-model")
            name = f"slow-{seconds:g}s"
            onnx.save(slow_graph(max(1, round(seconds / per_iteration))), str(out / "model.onnx"))
            (out / "model.ini").write_text(SLOW_MANIFEST.format(name=name))
            (out / "labels.txt").write_text("".join(f"class{i}\n" for i in range(10)))
            built[seconds] = out
        return built[seconds]

    return build


@pytest.fixture(scope="session")
def bright_png() -> bytes:
    """A white 64x64 PNG: every pixel at the maximum, so slow_graph runs its full loop."""
    import io
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(*targets "host:port", rule_files=()) -> a ready PrometheusServer scraping the
    targets as job "inferd" and evaluating the rule files, every 1 s."""
    started: list = []

    def start(*targets: str, rule_files: tuple[Path, ...] = ()) -> prometheus_server.PrometheusServer:
        return prometheus_server.start(tmp_path, targets, tuple(rule_files), started)

    yield start
    prometheus_server.stop(started)
