"""The daemon as a process: real signals, real reloads, real exit codes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support import REPO


def solid_png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def health(daemon) -> dict:
    return requests.get(f"{daemon.url}/health", timeout=10).json()


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_sighup_reloads_the_config_and_the_model(start_daemon, tmp_path, tiny_model_dir, default_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    tiny_sha = health(daemon)["model"]["sha256"]
    (tmp_path / "inferd.conf").write_text(f"[model]\npath = {default_model_dir}\n")
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING", "1")
    ready = [m for m in daemon.notify.messages if m.get("READY") == "1"]
    daemon.notify.messages = daemon.notify.messages[daemon.notify.messages.index(ready[0]) + 1:]
    daemon.notify.wait_for("READY", "1")
    after = health(daemon)["model"]
    assert after["name"] == "efficientnet-lite0" and after["sha256"] != tiny_sha


def test_reloading_reports_monotonic_usec(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    daemon.signal(signal.SIGHUP)
    message = daemon.notify.wait_for("RELOADING", "1")
    assert int(message["MONOTONIC_USEC"]) > 0


def test_failed_reload_keeps_the_old_model_serving(start_daemon, tmp_path, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "model")
    daemon = start_daemon(f"[model]\npath = {model}\n")
    before = health(daemon)["model"]["sha256"]
    (model / "model.onnx").write_bytes(b"this is not an onnx graph")
    response = requests.post(f"{daemon.url}/admin/reload", timeout=60)
    assert response.status_code == 500
    error = response.json()["error"]
    assert "previous model keeps serving" in error and "onnxruntime cannot load" in error
    assert health(daemon)["model"]["sha256"] == before
    served = requests.post(f"{daemon.url}/infer", files={"file": ("red.png", solid_png((255, 0, 0)))}, timeout=30)
    assert served.status_code == 200 and served.json()["predictions"][0]["index"] == 900
    assert "reload failed" in daemon.log()


def test_bad_config_on_reload_keeps_serving(start_daemon, tmp_path, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    (tmp_path / "inferd.conf").write_text("[batching]\nmax_batch_size = zero\n")
    response = requests.post(f"{daemon.url}/admin/reload", timeout=60)
    assert response.status_code == 500 and "max_batch_size" in response.json()["error"]
    assert health(daemon)["status"] == "ok"


def test_admin_reload_answers_after_the_new_model_serves(start_daemon, tmp_path, tiny_model_dir,
                                                         default_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    (tmp_path / "inferd.conf").write_text(f"[model]\npath = {default_model_dir}\n")
    response = requests.post(f"{daemon.url}/admin/reload", timeout=60)
    assert response.status_code == 200
    assert response.json()["message"] == "Model reloaded successfully"
    assert response.json()["model"]["name"] == "efficientnet-lite0"
    assert health(daemon)["model"]["name"] == "efficientnet-lite0"


def test_sigterm_drains_requests_in_flight_then_exits_0(start_daemon, default_model_dir, images):
    daemon = start_daemon(f"[model]\npath = {default_model_dir}\n[server]\ndrain_timeout = 20\n")
    keep_alive = requests.Session()
    assert keep_alive.get(f"{daemon.url}/health", timeout=5).status_code == 200
    body = images["cat.jpg"]
    in_flight = socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])))
    in_flight.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
    while requests.get(f"{daemon.url}/metrics", timeout=5).json()["requests_in_flight"] < 2:
        pass  # until the half-sent request is being handled (this scrape is the other one)
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING", "1")
    draining = keep_alive.get(f"{daemon.url}/health", timeout=5)
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    in_flight.sendall(body[100:])
    answer = in_flight.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 200") and "Connection: close" in answer
    assert '"tiger cat"' in answer
    assert daemon.proc.wait(timeout=20) == 0


def test_idle_keep_alive_connection_does_not_delay_stop(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[server]\nrequest_timeout = 120\n")
    session = requests.Session()
    assert session.get(f"{daemon.url}/health", timeout=5).status_code == 200  # connection stays open
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    session.close()


def test_a_notify_socket_nobody_reads_does_not_stop_reloads_or_shutdown(start_daemon, tiny_model_dir):
    """A $NOTIFY_SOCKET whose reader stopped reading fills after net.unix.max_dgram_qlen datagrams
    (10 by default) and then blocks its senders: the 120 s soak, which reloads every 16 s and
    never reads the socket, hung the main loop in sd_notify, and SIGTERM with it."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.connect(daemon.notify.path)
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                filler.send(b"STATUS=filling the queue", socket.MSG_DONTWAIT)
    for _ in range(3):
        assert requests.post(f"{daemon.url}/admin/reload", timeout=10).status_code == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0


def test_missing_model_exits_1_with_the_reason(tmp_path):
    result = subprocess.run([sys.executable, "-m", "inferd", "--model", str(tmp_path / "nothing"), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "model.ini" in result.stderr and "missing" in result.stderr


def test_config_error_exits_2_naming_the_key(tmp_path):
    (tmp_path / "bad.conf").write_text("[server]\nport = 99999\n")
    result = subprocess.run([sys.executable, "-m", "inferd", "--config", str(tmp_path / "bad.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "[server] port = '99999': must be 0..65535" in result.stderr


def test_journal_stream_gets_priority_prefixes_and_no_timestamps(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n", env={"JOURNAL_STREAM": "8:1234"})
    requests.get(f"{daemon.url}/health", timeout=5)
    assert daemon.stop() == 0
    lines = [line for line in daemon.log().splitlines() if line]
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines), lines
    assert any(line.startswith("<6>inferd.daemon: serving") for line in lines)


def test_serving_creates_no_telemetry_device_id(start_daemon, default_model_dir, images, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # No opt-out inherited from the test runner: the daemon must set it itself.
    env = {"HOME": str(home), "XDG_CACHE_HOME": None, "ORT_DISABLE_TELEMETRY": None}
    daemon = start_daemon(f"[model]\npath = {default_model_dir}\n", env=env)
    answer = requests.post(f"{daemon.url}/infer", files={"file": ("cat.jpg", images["cat.jpg"])}, timeout=60)
    assert answer.status_code == 200
    assert daemon.stop() == 0
    created = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert created == [], f"files written under HOME: {created}"


def test_python_dash_m_and_console_script_agree():
    script = Path(sys.executable).parent / "inferd"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "inferd 0.1.0" in result.stdout
    assert (REPO / "inferd" / "__main__.py").exists()


# -- reloads that cannot hold the main loop (issue 21) -------------------------------------------------

def repository_daemon(start_daemon, tmp_path, tiny_model_dir, extra: str = ""):
    """A daemon serving a repository that holds a copy of the tiny model as "tiny"."""
    repository = tmp_path / "repository"
    copy_model(tiny_model_dir, repository / "tiny")
    daemon = start_daemon(f"[models]\nrepository = {repository}\ndefault = tiny\n{extra}"
                          "[server]\ndrain_timeout = 1\n[logging]\naccess_log = false\n")
    return daemon, repository


def infer_ok(daemon, model: str = "tiny") -> bool:
    return requests.post(f"{daemon.url}/infer?model={model}", files={"file": ("a.png", solid_png((9, 9, 9)))},
                         timeout=10).ok


def stop_seconds(daemon) -> tuple[int, float]:
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.proc.wait(30)
    seconds = time.monotonic() - started
    print(f"exit {code} {seconds:.2f} s after SIGTERM")
    return code, seconds


def test_labels_replaced_by_a_fifo_fail_their_model_at_once_and_sigterm_is_obeyed(start_daemon, tmp_path,
                                                                                  tiny_model_dir):
    """Was: the reload blocked in open() of the FIFO, later reloads queued behind it, and SIGTERM
    waited as long as the read did (for ever without a writer)."""
    daemon, repository = repository_daemon(start_daemon, tmp_path, tiny_model_dir)
    labels = repository / "tiny" / "labels.txt"
    labels.unlink()
    os.mkfifo(labels)
    started = time.monotonic()
    answer = requests.post(f"{daemon.url}/admin/reload", timeout=20)
    assert answer.status_code == 500 and "labels.txt: cannot read labels: not a regular file (a FIFO)" in answer.json()["error"]
    assert time.monotonic() - started < 5
    assert infer_ok(daemon)  # the version it had keeps serving
    assert health(daemon)["models"][0]["last_error"].endswith("not a regular file (a FIFO)")
    code, seconds = stop_seconds(daemon)
    assert code == 0 and seconds < 1 + 3, seconds


def test_a_model_whose_load_outlasts_reload_timeout_fails_alone(start_daemon, tmp_path, tiny_model_dir):
    from tests.support import slow_model

    daemon, repository = repository_daemon(start_daemon, tmp_path, tiny_model_dir, "reload_timeout = 1\n")
    slow_model(repository / "slow", convolutions=40, upscale=4)  # ~6 s to warm up on 2 cores
    started = time.monotonic()
    answer = requests.post(f"{daemon.url}/admin/reload", timeout=20)
    assert answer.status_code == 500, answer.text
    assert "slow: loading took longer than [models] reload_timeout = 1 s" in answer.json()["error"]
    assert time.monotonic() - started < 4
    assert infer_ok(daemon)
    assert {m["name"]: m["state"] for m in health(daemon)["models"]} == {"slow": "failed", "tiny": "ready"}


def test_sigterm_during_a_long_reload_exits_within_the_drain_timeout(start_daemon, tmp_path, tiny_model_dir):
    """The main loop waits for a reload's loads without blocking: a stop signal ends the wait."""
    from tests.support import slow_model

    daemon, repository = repository_daemon(start_daemon, tmp_path, tiny_model_dir)
    slow_model(repository / "slow", convolutions=40, upscale=4)
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING", "1")
    time.sleep(0.5)  # into the slow model's warm-up (a reload of the tiny one alone takes ~50 ms)
    code, seconds = stop_seconds(daemon)
    assert code == 0 and seconds < 1 + 3, seconds  # drain_timeout 1 s, plus a margin
    assert "reload stopped" in daemon.log() and "interrupted: the daemon is stopping" in daemon.log()


def test_admin_and_v2_path_parameters_are_percent_decoded_alike(start_daemon, tmp_path, tiny_model_dir):
    """Was: /admin/models/tin%79/reload answered 404 while /v2/models/tin%79 found the model."""
    import http.client  # sends the target as written (requests decodes %79 to "y" itself)

    daemon, _ = repository_daemon(start_daemon, tmp_path, tiny_model_dir)

    def status(method: str, target: str) -> int:
        connection = http.client.HTTPConnection(daemon.url.removeprefix("http://"), timeout=20)
        try:
            connection.request(method, target)
            return connection.getresponse().status
        finally:
            connection.close()
    assert status("POST", "/admin/models/tin%79/reload") == 200
    assert status("GET", "/v2/models/tin%79") == 200
    assert status("POST", "/admin/models/tin%2Fy/reload") == 404


def test_an_empty_keys_file_reloads_with_a_loud_warning(start_daemon, tmp_path, tiny_model_dir):
    """Was: an empty, comments-only or /dev/null keys file reloaded with 200 and refused everyone
    without a word. Failing closed stays; now the journal and the reload's answer say so."""
    keys = tmp_path / "keys"
    keys.write_text("")
    keys.chmod(0o600)
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[auth]\nkeys_file = {keys}\n")
    assert f"{keys} holds no keys: every inference request is refused" in daemon.log()
    for name, target in (("comments only", "# nobody yet\n"), ("/dev/null", None)):
        config = tmp_path / "inferd.conf"
        if target is None:
            config.write_text(f"[model]\npath = {tiny_model_dir}\n[auth]\nkeys_file = /dev/null\n")
        else:
            keys.write_text(target)
        answer = requests.post(f"{daemon.url}/admin/reload", timeout=20)
        assert answer.status_code == 200, (name, answer.text)
        assert "holds no keys" in answer.json()["warnings"][0], name
        assert requests.post(f"{daemon.url}/infer", files={"file": ("a.png", solid_png((1, 2, 3)))},
                             timeout=10).status_code == 401, name
    assert daemon.log().count("holds no keys: every inference request is refused (401)") == 3


def test_a_reload_to_two_inference_workers_keeps_one_until_restart(start_daemon, tmp_path, tiny_model_dir):
    """Issue 23: the reload logged "takes effect at the next restart", yet the reloaded batcher
    got 2 workers (and half the intra-op threads) while the shared RunGate kept 1 permit."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[batching]\ninference_workers = 1\n")
    threads = health(daemon)["model"]["intra_op_threads"]
    (tmp_path / "inferd.conf").write_text(f"[model]\npath = {tiny_model_dir}\n[batching]\ninference_workers = 2\n"
                                          "max_batch_size = 4\n")
    assert requests.post(f"{daemon.url}/admin/reload", timeout=30).status_code == 200
    assert "[batching] inference_workers changes take effect at the next restart" in daemon.log()
    assert health(daemon)["model"]["intra_op_threads"] == threads  # cores // 1, not cores // 2
    assert requests.get(f"{daemon.url}/v2/models/tiny-10/config", timeout=10).json()["max_batch_size"] == 4
