"""inferd under a real systemd 252: start waits for READY=1, stop drains, crashes and a wedged
inference thread get the service restarted.
"""

from __future__ import annotations

import http.client
import threading
import time

import pytest
import requests

from tests.system.systemd_machine import dropin, set_config

pytestmark = pytest.mark.system


def health(url: str) -> requests.Response:
    return requests.get(f"{url}/health", timeout=10)


def test_start_returns_once_the_model_serves(inferd):
    """`systemctl start` returns after READY=1: no retry, /health answers 200 at once."""
    inferd.systemctl("start", "inferd")
    props = inferd.show("inferd", "ActiveState", "SubState", "StatusText", "Type", "NRestarts")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify")
    assert props["StatusText"].startswith("serving efficientnet-lite0 on 127.0.0.1:")
    response = health(inferd.url())
    assert response.status_code == 200
    assert response.json()["model"]["name"] == "efficientnet-lite0"
    inferd.unit_log("serving efficientnet-lite0 on http://127.0.0.1:", "Started inferd.service")


# systemd 252 clears ExecMainStatus when a stopped unit goes inactive; ExecStopPost= sees how the
# main process ended in $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS (systemd.exec(5)).
EXIT_REPORT = """[Service]
ExecStopPost=/bin/sh -c 'echo "main process: $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS"'
"""


def exit_report(inferd) -> str:
    log = inferd.unit_log("main process: ")
    return [line for line in log.splitlines() if line.startswith("main process: ")][-1]


def open_idle_connection(url: str) -> http.client.HTTPConnection:
    """A keep-alive connection that has answered one request and now sits idle."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    assert response.status == 200 and response.getheader("Connection", "").lower() != "close"
    return connection


def in_flight(url: str) -> int:
    metrics = requests.get(f"{url}/metrics?format=json", timeout=10).json()
    return metrics["requests_in_flight"] - 1  # not counting this request


def test_stop_drains_requests_in_flight_and_ignores_idle_connections(inferd, slow_model, bright_png):
    """SIGTERM: the request in flight completes with 200, idle keep-alive connections do not hold
    the stop up (their idle timeout is 120 s), /health turns 503 (or the idle connection is closed),
    and the daemon exits 0."""
    model = inferd.copy_model(slow_model(4.0), "slow-4s")
    set_config(inferd, model={"path": model}, limits={"idle_timeout": 120}, server={"drain_timeout": 20})
    dropin(inferd, "inferd.service", EXIT_REPORT)
    inferd.systemctl("start", "inferd")
    url = inferd.url()
    idle = [open_idle_connection(url) for _ in range(3)]
    slow: dict = {}

    def slow_request():
        started = time.monotonic()
        response = requests.post(f"{url}/infer", files={"file": ("white.png", bright_png, "image/png")},
                                 timeout=60)
        slow.update(status=response.status_code, seconds=time.monotonic() - started, ended=time.monotonic(),
                    connection=response.headers.get("Connection"), model=response.json().get("model"))

    client = threading.Thread(target=slow_request)
    client.start()
    inferd.wait(lambda: in_flight(url) >= 1, "the slow request to be in flight", timeout=10)

    stopping = threading.Thread(target=lambda: inferd.systemctl("stop", "inferd", timeout=60))
    started = time.monotonic()
    stopping.start()
    inferd.wait(lambda: inferd.show("inferd", "ActiveState")["ActiveState"] == "deactivating",
                "systemd to send SIGTERM", timeout=10, interval=0.02)
    health_during_drain = []

    def draining_answer():
        try:
            idle[0].request("GET", "/health")
            response = idle[0].getresponse()
            response.read()
        except (ConnectionError, http.client.HTTPException):
            health_during_drain.append("closed")
            return True
        health_during_drain.append(response.status)
        return response.status != 200  # 200 only in the instant before the daemon saw SIGTERM

    inferd.wait(draining_answer, "/health to stop answering 200", timeout=5, interval=0.02)
    stopping.join(60)
    stop_seconds = time.monotonic() - started
    client.join(60)

    assert slow["status"] == 200, slow
    assert slow["model"] == "slow-4s"
    assert health_during_drain[-1] in (503, "closed")
    # The stop ends with the slow request, not with the idle connections' 120 s timeout.
    lag = started + stop_seconds - slow["ended"]
    assert lag < 3, f"stop returned {lag:.1f}s after the last request in flight: idle connections held it up?"
    assert inferd.show("inferd", "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    assert exit_report(inferd) == "main process: success exited 0"
    print(f"stop took {stop_seconds:.2f}s, {lag:.2f}s after the slow request ({slow['seconds']:.2f}s) ended; "
          f"/health during the drain: {health_during_drain}")


def test_drain_is_bounded_by_drain_timeout(inferd, slow_model, bright_png):
    """A request that would take a minute does not hold SIGTERM past [server] drain_timeout."""
    model = inferd.copy_model(slow_model(60.0), "slow-60s")
    set_config(inferd, model={"path": model}, server={"drain_timeout": 2})
    dropin(inferd, "inferd.service", EXIT_REPORT)
    inferd.systemctl("start", "inferd")
    url = inferd.url()
    outcome = []
    client = threading.Thread(target=lambda: outcome.append(_post_quietly(url, bright_png)))
    client.start()
    inferd.wait(lambda: in_flight(url) >= 1, "the slow request to be in flight", timeout=10)
    started = time.monotonic()
    inferd.systemctl("stop", "inferd", timeout=60)
    stop_seconds = time.monotonic() - started
    client.join(60)
    assert 2 <= stop_seconds < 6, f"stop took {stop_seconds:.1f}s with drain_timeout = 2"
    assert exit_report(inferd) == "main process: success exited 0"
    assert outcome and outcome[0] != 200  # cut off: it would have taken a minute
    inferd.unit_log("drain timeout (2.0s)")


def _post_quietly(url: str, image: bytes):
    """The outcome of POST /infer as a status code or the exception's class name."""
    try:
        response = requests.post(f"{url}/infer", files={"file": ("white.png", image, "image/png")}, timeout=90)
        return response.status_code
    except requests.RequestException as exc:
        return type(exc).__name__


def test_kill_9_gets_the_service_restarted(inferd):
    inferd.systemctl("start", "inferd")
    first = inferd.show("inferd", "MainPID")["MainPID"]
    assert health(inferd.url()).status_code == 200
    inferd.run("kill", "-9", first)
    props = inferd.wait(lambda: _restarted(inferd, first), "systemd to restart inferd", timeout=30)
    assert props["NRestarts"] == "1"
    assert health(inferd.url()).status_code == 200
    inferd.unit_log("Main process exited, code=killed, status=9/KILL",
                    "Scheduled restart job, restart counter is at 1")


def _restarted(inferd, old_pid: str) -> dict | None:
    props = inferd.show("inferd", "ActiveState", "SubState", "MainPID", "NRestarts")
    if props["ActiveState"] == "active" and props["MainPID"] not in ("0", old_pid):
        return props
    return None


def test_wedged_inference_thread_trips_the_watchdog(inferd, slow_model, bright_png):
    """An inference run far longer than WatchdogSec: the daemon withholds WATCHDOG=1, systemd kills
    and restarts it with result 'watchdog'; an idle daemon under the same WatchdogSec stays up."""
    model = inferd.copy_model(slow_model(120.0), "slow-120s")
    set_config(inferd, model={"path": model})
    dropin(inferd, "inferd.service", "[Service]\nWatchdogSec=3\n")
    inferd.systemctl("start", "inferd")
    props = inferd.show("inferd", "MainPID", "WatchdogUSec")
    assert props["WatchdogUSec"] == "3s"
    url = inferd.url()
    # Alive and idle: pings keep coming well past WatchdogSec.
    time.sleep(7)  # the assertion is about time passing without a restart
    assert inferd.show("inferd", "NRestarts", "MainPID") == {"NRestarts": "0", "MainPID": props["MainPID"]}

    outcome = []
    client = threading.Thread(target=lambda: outcome.append(_post_quietly(url, bright_png)))
    wedged_at = time.monotonic()
    client.start()
    restarted = inferd.wait(lambda: _restarted(inferd, props["MainPID"]), "the watchdog restart", timeout=60)
    detected = time.monotonic() - wedged_at
    client.join(60)
    assert restarted["NRestarts"] == "1"
    assert outcome and outcome[0] != 200  # the wedged request died with its process
    inferd.unit_log("inference is stalled; withholding the watchdog ping", "Watchdog timeout (limit 3s)!",
                    "Failed with result 'watchdog'")
    assert health(inferd.url()).status_code == 200
    print(f"wedged inference thread: restarted {detected:.1f}s after the request started")
