"""The deployment files, checked without podman or systemd (the quick part of issue 15; the image
and the fleet run for real in tests/system/test_container.py and test_fleet.py).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess

import pytest

from tests.support import REPO

CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"
SCRIPTS = [*sorted((REPO / "deploy" / "container").glob("*.sh")), *sorted((REPO / "systemd").glob("*.sh"))]


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The Containerfile's instructions, (KEYWORD, arguments), one list per stage (before the
    first FROM: the global ARGs)."""
    text = re.sub(r"(?m)^\s*#.*\n", "", text).replace("\\\n", " ")
    result = [[]]
    for line in filter(str.strip, text.splitlines()):
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            result.append([])
        result[-1].append((keyword.upper(), " ".join(arguments.split())))
    return result


def test_containerfile_final_stage_is_runtime_only_non_root_and_stoppable():
    preamble, *_, final = stages(CONTAINERFILE.read_text())
    assert ("ARG", "BASE=docker.io/library/debian:bookworm-slim") in preamble
    settings = dict(instruction for instruction in final if instruction[0] != "COPY")
    assert settings["USER"] == "inferd"
    assert settings["STOPSIGNAL"] == "SIGTERM" and settings["EXPOSE"] == "8000"
    assert "/health" in settings["HEALTHCHECK"]
    assert json.loads(settings["ENTRYPOINT"]) == ["/opt/inferd/bin/inferd"]  # exec form: inferd is PID 1
    assert [args for keyword, args in final if keyword == "COPY"] == [
        "--from=build /opt/inferd /opt/inferd", "--from=build /models /models", "--from=build /etc/inferd /etc/inferd"]
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "pip" not in runs and "apt-get" not in runs  # the final stage installs nothing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_parse(script):
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make system-deps)")
def test_haproxy_config_is_valid():
    result = subprocess.run(["haproxy", "-c", "-f", str(REPO / "systemd" / "haproxy" / "inferd.cfg")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def load_roll():
    loader = importlib.machinery.SourceFileLoader("inferd_roll", str(REPO / "systemd" / "inferd-roll"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("inferd_roll", loader))
    loader.exec_module(module)
    return module


def test_inferd_roll_expects_the_model_the_instance_config_names(tmp_path):
    """Relative paths are taken from the config's directory, as inferd does; a wildcard address
    is checked on loopback."""
    roll = load_roll()
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "model.onnx").write_bytes(b"weights")
    (tmp_path / "other.onnx").write_bytes(b"other weights")
    config = tmp_path / "a.conf"
    config.write_text("[server]\nhost = 0.0.0.0\nport = 8101\n[model]\npath = models/m\n")
    assert roll.expected_model(config) == ("http://127.0.0.1:8101/health", hashlib.sha256(b"weights").hexdigest())
    config.write_text("[server]\nhost = ::1\nport = 8102\n[model]\npath = models/m\nonnx_file = other.onnx\n")
    assert roll.expected_model(config) == ("http://[::1]:8102/health", hashlib.sha256(b"other weights").hexdigest())
    with pytest.raises(roll.RollError, match="cannot read"):
        roll.expected_model(tmp_path / "missing.conf")
