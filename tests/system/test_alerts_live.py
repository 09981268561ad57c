"""The alerting rules of systemd/prometheus/, loaded into a real Prometheus that scrapes two live
inferd daemons, fire when the condition is induced for real and resolve when it ends.

Time runs 60 times faster: the test loads copies of the three rule files in which every duration
(`for:`, range windows, offsets, the 4-hour horizon) counts seconds where the shipped files count
minutes, and minutes where they count hours; Prometheus scrapes and evaluates every second. The
thresholds are the shipped ones.

- Instance A (the tiny model): one /infer request in four is a bad image (InferdClientErrors); its
  model.onnx is replaced with garbage and reloaded (InferdReloadFailed); then it is stopped
  (InferdDown) and started again on the same port.
- Instance B (a model taking 2 s per image, one request handler): three clients at once get 503s
  (InferdOverloaded) and the requests it does answer take 2 s, above the 1 s SLO (InferdLatencyAboveSLO).

Each alert must show up as firing in /api/v1/alerts, no other alert may fire, and all must be gone
once the conditions end. About 45 s.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.system.prometheus_server import PROMETHEUS, SKIP_REASON, send_traffic

pytestmark = [pytest.mark.system, pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)]

RULES_DIR = Path(__file__).resolve().parents[2] / "systemd" / "prometheus"
SLOW_SECONDS = 2.0  # per image on B: twice the SLO, so p99 stays above it under any load here
OVERLOAD_CLIENTS = 3
ALERT_TIMEOUT = 40.0  # for all alerts of a phase to fire, or to resolve


def sixty_times_faster(text: str) -> str:
    """Rule text with minutes read as seconds and hours as minutes (`for: 5m` -> `for: 5s`,
    `[1h]` -> `[1m]`, `4 * 3600` -> `4 * 60`). Names such as `ratio_rate5m` are left alone."""
    text = re.sub(r"(?<![\w.])(\d+)([mh])\b", lambda m: m[1] + {"m": "s", "h": "m"}[m[2]], text)
    return text.replace("* 3600", "* 60")


def fast_rules(directory: Path) -> list[Path]:
    paths = []
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        paths.append(directory / path.name)
        paths[-1].write_text(sixty_times_faster(path.read_text()))
    return paths


def test_sixty_times_faster_changes_durations_only():
    assert sixty_times_faster("rate(x[5m]) for: 10m offset 1h predict_linear(y[1h], 4 * 3600)") == \
        "rate(x[5s]) for: 10s offset 1m predict_linear(y[1m], 4 * 60)"
    unchanged = "instance:inferd_images:rate5m inferd:restarts_30m:threshold 0.5m 260 MB"
    assert sixty_times_faster(unchanged) == unchanged


class Alerts:
    """Prometheus' active alerts, polled; remembers every (alertname, instance) seen firing."""

    def __init__(self, server):
        self.server = server
        self.fired: set[tuple[str, str]] = set()
        self.started = time.monotonic()

    def active(self) -> dict[tuple[str, str], str]:
        alerts = self.server.api("alerts")["alerts"]
        now = {(a["labels"]["alertname"], a["labels"]["instance"]): a["state"] for a in alerts}
        for key in {key for key, state in now.items() if state == "firing"} - self.fired:
            self.log(f"{key[0]} {key[1]} firing")
            self.fired.add(key)
        return now

    def log(self, event: str) -> None:
        print(f"{time.monotonic() - self.started:5.1f}s {event}")  # shown by pytest -s or on failure

    def wait(self, done, what: str) -> None:
        deadline = time.monotonic() + ALERT_TIMEOUT
        while not done(self.active()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: active {self.active()}, fired so far {self.fired}")
            time.sleep(0.25)  # the polling period of a deadline-bounded wait

    def wait_fired(self, expected: set[tuple[str, str]]) -> None:
        self.wait(lambda active: expected <= self.fired, f"expected {expected} to fire")

    def wait_quiet(self, keys: set[tuple[str, str]]) -> None:
        self.wait(lambda active: not keys & active.keys(), f"expected {keys} to resolve")
        self.log(f"resolved: {sorted(keys)}")


def overload(url: str, image: bytes, stop: threading.Event, statuses: list, errors: list) -> None:
    """POST /infer until stop is set (at most ALERT_TIMEOUT * 2 s); after a 503, wait 0.1 s."""
    deadline = time.monotonic() + 2 * ALERT_TIMEOUT
    with requests.Session() as s:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = s.post(f"{url}/infer", files={"file": ("white.png", image, "image/png")}, timeout=30)
            except requests.RequestException as exc:
                errors.append(exc)
                return
            statuses.append(r.status_code)
            if r.status_code == 503:
                stop.wait(0.1)


def reload(url: str) -> int:
    return requests.post(f"{url}/admin/reload", timeout=60).status_code


def test_alerts_fire_for_real_and_resolve(start_daemon, prometheus, tiny_model_dir, slow_model,
                                          bright_png, images, tmp_path):
    # B first: start_daemon writes every config to tmp_path/inferd.conf, and A's reloads read it.
    slow = start_daemon(f"[model]\npath = {slow_model(SLOW_SECONDS)}\n"
                        "[limits]\nmax_inference_requests = 1\n[batching]\nmax_queue_size = 1\n")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config_a = f"[model]\npath = {model_dir}\n"
    tiny = start_daemon(config_a)
    a, b = (d.url.removeprefix("http://") for d in (tiny, slow))
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    server = prometheus(a, b, rule_files=fast_rules(rules_dir))
    alerts = Alerts(server)
    # A reload failure only shows as an increase once Prometheus has seen the counter at 0.
    server.eventually(f'inferd_reloads_total{{instance="{a}", result="failure"}}', lambda r: len(r) == 1)

    stop, errors, statuses = threading.Event(), [], []
    threads = [threading.Thread(target=send_traffic, args=(tiny.url, images, stop, errors))]
    threads += [threading.Thread(target=overload, args=(slow.url, bright_png, stop, statuses, errors))
                for _ in range(OVERLOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    good_model = (model_dir / "model.onnx").read_bytes()
    try:
        (model_dir / "model.onnx").write_bytes(b"not an ONNX model")
        assert reload(tiny.url) >= 500
        alerts.log("traffic started; a reload failed")
        phase_one = {("InferdClientErrors", a), ("InferdReloadFailed", a),
                     ("InferdOverloaded", b), ("InferdLatencyAboveSLO", b)}
        alerts.wait_fired(phase_one)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert errors == []
    assert 503 in statuses and 200 in statuses, statuses
    # B refused most requests at its thread cap (one handler), from the parsed head: counted under
    # their route. (503s at the connection cap come before any head and count as route="other",
    # which is why the rules count those too as refused inference requests.)
    refused = server.query(f'inferd_http_requests_total{{instance="{b}", code="503"}}')
    assert "/infer" in {s["metric"]["route"] for s in refused}, refused

    (model_dir / "model.onnx").write_bytes(good_model)
    assert reload(tiny.url) == 200
    alerts.log("traffic stopped; the model reloaded")
    alerts.wait_quiet(phase_one)  # no traffic now: the ratios are absent, and stay so

    port = a.rsplit(":", 1)[1]
    assert tiny.stop() == 0
    alerts.log("A stopped")
    alerts.wait_fired({("InferdDown", a)})
    start_daemon(config_a, env={"INFERD_SERVER_PORT": port})
    alerts.log("A started again")
    alerts.wait_quiet({("InferdDown", a)})

    assert alerts.fired == phase_one | {("InferdDown", a)}, alerts.fired
    assert alerts.active() == {}
    log = server.log()
    assert "level=error" not in log and "level=warn" not in log, log
