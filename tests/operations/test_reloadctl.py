"""inferd-reload against real processes: a fake daemon that answers SIGHUP by writing the status file
the way inferd does, and the real daemon serving the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from inferd.tools import reloadctl

FAKE_DAEMON = r"""
import json, os, signal, sys, time
path, mode = sys.argv[1], sys.argv[2]
generation = 0

def write(ok, message):
    global generation
    generation += 1
    status = {"generation": generation, "pid": os.getpid(), "ok": ok, "message": message}
    with open(path + ".tmp", "w") as f:
        json.dump(status, f)
    os.replace(path + ".tmp", path)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # no SIGHUP is lost before sigwait
write(True, "serving fake-1")
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGHUP})
    if mode == "ok":
        write(True, f"serving fake-{generation + 1}")
    elif mode == "fail":
        write(False, "/models/broken/model.onnx: onnxruntime cannot load it")
    elif mode == "slow":
        time.sleep(0.6)
        write(True, "serving fake-slow")
    elif mode == "exit":
        sys.exit(0)
    # mode "ignore": never answers
"""


@pytest.fixture
def fake_daemon(tmp_path):
    """fake_daemon(mode) -> a running Popen that has written generation 1 to tmp_path's status file."""
    started = []

    def start(mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(tmp_path / reloadctl.STATUS_FILE), mode],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def bystander():
    """A process with no SIGHUP handler: a SIGHUP sent to it would kill it."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def run(tmp_path, pid, *extra) -> int:
    return reloadctl.main(["--pid", str(pid), "--runtime-directory", str(tmp_path), *extra])


def generation(tmp_path) -> int:
    return json.loads((tmp_path / reloadctl.STATUS_FILE).read_text())["generation"]


def test_successful_reload_exits_0_after_the_new_generation(tmp_path, fake_daemon, capsys):
    proc = fake_daemon("ok")
    assert run(tmp_path, proc.pid) == 0
    assert generation(tmp_path) == 2
    assert "reloaded (generation 2): serving fake-2" in capsys.readouterr().out
    assert run(tmp_path, proc.pid) == 0
    assert generation(tmp_path) == 3


def test_waits_for_a_slow_reload(tmp_path, fake_daemon):
    proc = fake_daemon("slow")
    started = time.monotonic()
    assert run(tmp_path, proc.pid) == 0
    assert time.monotonic() - started >= 0.6
    assert generation(tmp_path) == 2


def test_failed_reload_exits_1_with_the_reason(tmp_path, fake_daemon, capsys):
    proc = fake_daemon("fail")
    assert run(tmp_path, proc.pid) == reloadctl.FAILED
    err = capsys.readouterr().err
    assert "reload failed, the previous model keeps serving" in err
    assert "onnxruntime cannot load it" in err


def test_no_answer_times_out_with_exit_3(tmp_path, fake_daemon, capsys):
    proc = fake_daemon("ignore")
    started = time.monotonic()
    assert run(tmp_path, proc.pid, "--timeout", "0.5") == reloadctl.TIMED_OUT
    assert 0.5 <= time.monotonic() - started < 5
    assert "no reload result from pid" in capsys.readouterr().err


def test_process_exiting_during_the_reload_exits_2(tmp_path, fake_daemon, capsys):
    proc = fake_daemon("exit")
    assert run(tmp_path, proc.pid, "--timeout", "30") == reloadctl.UNAVAILABLE
    assert f"pid {proc.pid} exited during the reload" in capsys.readouterr().err


def test_missing_status_file_sends_no_signal(tmp_path, bystander, capsys):
    assert run(tmp_path, bystander.pid) == reloadctl.UNAVAILABLE
    assert "missing or unreadable" in capsys.readouterr().err
    assert bystander.poll() is None  # still alive: no SIGHUP was sent


def test_status_file_of_another_process_sends_no_signal(tmp_path, fake_daemon, bystander, capsys):
    fake_daemon("ok")
    assert run(tmp_path, bystander.pid) == reloadctl.UNAVAILABLE
    assert f"not {bystander.pid}" in capsys.readouterr().err
    assert bystander.poll() is None
    assert generation(tmp_path) == 1


def test_status_path_takes_the_first_runtime_directory():
    env = {"RUNTIME_DIRECTORY": "/run/inferd:/run/other"}
    assert str(reloadctl.status_path(None, env)) == "/run/inferd/reload-status.json"
    assert str(reloadctl.status_path("/x", env)) == "/x/reload-status.json"
    assert str(reloadctl.status_path(None, {})) == "/run/inferd/reload-status.json"


@pytest.mark.parametrize("text", ["", "{", "[]", '{"generation": "1"}', "\xff"])
def test_unparsable_status_reads_as_not_there_yet(tmp_path, text):
    path = tmp_path / reloadctl.STATUS_FILE
    path.write_text(text, encoding="latin-1")
    assert reloadctl.read_status(path) is None


@pytest.mark.parametrize("argv", [["--pid", "0"], ["--pid", "1", "--timeout", "0"], []])
def test_bad_usage_exits_2(argv):
    with pytest.raises(SystemExit) as exc:
        reloadctl.main(argv)
    assert exc.value.code == 2


def test_command_line_uses_runtime_directory_and_journal_prefix(tmp_path, fake_daemon):
    """As systemd runs it: RUNTIME_DIRECTORY and JOURNAL_STREAM set, output prefixed for journald."""
    proc = fake_daemon("ok")
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path), "JOURNAL_STREAM": "8:1234"}
    result = subprocess.run([sys.executable, "-m", "inferd.tools.reloadctl", "--pid", str(proc.pid)],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<6>inferd-reload: reloaded (generation 2)")


def test_does_not_import_onnxruntime_or_numpy():
    code = "import sys, inferd.tools.reloadctl; print(sorted({'onnxruntime', 'numpy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[]"


def test_reloads_the_real_daemon(tmp_path, start_daemon, tiny_model_dir, default_model_dir):
    """The real daemon under a RUNTIME_DIRECTORY: a good reload exits 0, a broken model exits 1."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    conf = tmp_path / "inferd.conf"
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n", env={"RUNTIME_DIRECTORY": str(runtime)})
    assert run(runtime, daemon.proc.pid) == 0
    conf.write_text(f"[model]\npath = {default_model_dir}\n")
    assert run(runtime, daemon.proc.pid) == 0
    status = json.loads((runtime / reloadctl.STATUS_FILE).read_text())
    assert status == {"generation": 3, "pid": daemon.proc.pid, "ok": True, "message": "serving efficientnet-lite0"}
    conf.write_text(f"[model]\npath = {tmp_path / 'nowhere'}\n")
    assert run(runtime, daemon.proc.pid) == reloadctl.FAILED
    assert requests.get(f"{daemon.url}/health", timeout=10).json()["model"]["name"] == "efficientnet-lite0"
    assert daemon.stop() == 0
