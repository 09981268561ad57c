"""A real Prometheus server (Debian's /usr/bin/prometheus) scrapes a live inferd; its HTTP API must
then answer the README's queries with numbers.

Prometheus runs with a config written here: loopback only, scrape interval 1 s, storage in a temp
dir, no remote write/read, no alerting, no rules. About 10 s, most of it Prometheus' fixed 5 s delay
between loading its config and handing the first targets to the scrape manager.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(PROMETHEUS is None,
                       reason="/usr/bin/prometheus not installed (Debian package 'prometheus'; "
                              "`make system-deps`)"),
]

REPO = Path(__file__).resolve().parents[2]

# The three queries of the README's "Monitoring" section, verbatim (test_the_readme_shows_...).
REQUEST_RATE = 'sum by (route) (rate(inferd_http_requests_total[5m]))'
P99_LATENCY = ('histogram_quantile(0.99, sum by (le) '
               '(rate(inferd_http_request_duration_seconds_bucket{route=~"/infer|/infer/batch"}[5m])))')
ERROR_RATIO = ('(sum(rate(inferd_http_requests_total{route=~"/infer|/infer/batch",code=~"5.."}[5m]))'
               ' or vector(0))\n  / sum(rate(inferd_http_requests_total{route=~"/infer|/infer/batch"}[5m]))')
# The README's variant that counts client errors (4xx) too.
FAILURE_RATIO = ERROR_RATIO.replace('code=~"5.."', 'code=~"4..|5.."')

NOT_AN_IMAGE = b"GIF89a but not really: a truncated header and nothing else"

# Prometheus cannot be handed a bound socket, and STYLE.md forbids probing for a free port and
# binding it later (another process can take it in between). So Prometheus binds the port itself:
# pick one at random and, when Prometheus exits with "address already in use", try another one.
# The range lies below Linux's default ephemeral range (32768-60999, ip_local_port_range), so an
# outgoing connection's source port can never be what makes the bind fail; only a listener can.
PORT_RANGE = (20000, 32767)
PORT_ATTEMPTS = 5
READY_TIMEOUT = 20.0


@dataclass
class PrometheusServer:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params):
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """The instant vector for promql evaluated now: [{"metric": {...}, "value": [t, "x"]}]."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def eventually(self, promql: str, check, timeout: float = 20.0) -> list[dict]:
        """Poll promql until check(result) is true; AssertionError with the last result otherwise.

        A 1 s scrape interval means a rate needs two scrapes after traffic began, so the first
        answers may legitimately be empty or zero."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if check(result):
                return result
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                raise AssertionError(f"{promql} -> {result}; targets: {targets}")
            time.sleep(0.25)  # the polling period of a deadline-bounded wait, not a readiness guess


def number(sample: dict) -> float:
    return float(sample["value"][1])


def _wait_ready(proc: subprocess.Popen, url: str, storage: Path) -> bool:
    """True once *our* Prometheus answers /-/ready; False if it exited first."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                # The port might belong to someone else's server (ours then fails to bind and
                # exits): only ours was started with this storage directory.
                flags = requests.get(f"{url}/api/v1/status/flags", timeout=1).json()["data"]
                if flags.get("storage.tsdb.path") == str(storage):
                    return True
        except requests.RequestException:
            pass  # not listening yet, or not ready
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"Prometheus not ready after {READY_TIMEOUT}s")


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(target "host:port") -> a ready PrometheusServer scraping target as job "inferd"."""
    started: list[subprocess.Popen] = []

    def start(target: str) -> PrometheusServer:
        config = {  # JSON is YAML: no YAML library needed
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "inferd", "static_configs": [{"targets": [target]}]}],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        ports = random.SystemRandom()
        for attempt in range(PORT_ATTEMPTS):
            port = ports.randint(*PORT_RANGE)
            url = f"http://127.0.0.1:{port}"
            storage = tmp_path / f"tsdb-{attempt}"
            log_path = tmp_path / f"prometheus-{attempt}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
                     f"--storage.tsdb.path={storage}", "--storage.tsdb.retention.time=1h"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
            started.append(proc)
            if _wait_ready(proc, url, storage):
                return PrometheusServer(proc, url, log_path)
            output = log_path.read_text(errors="replace")
            if "address already in use" not in output:
                raise AssertionError(f"Prometheus exited with {proc.returncode}:\n{output}")
        raise AssertionError(f"no free port for Prometheus in {PORT_ATTEMPTS} attempts")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def send_traffic(url: str, images: dict, stop: threading.Event, errors: list) -> None:
    """Good images, with a bad image and a 404 in every five requests, about 40 per second."""
    with requests.Session() as s:
        i = 0
        while not stop.is_set():
            try:
                if i % 5 == 3:
                    r = s.post(f"{url}/infer", files={"file": ("bad.gif", NOT_AN_IMAGE, "image/gif")})
                    assert r.status_code in (400, 415), r.text
                elif i % 5 == 4:
                    assert s.get(f"{url}/no/such/route").status_code == 404
                else:
                    r = s.post(f"{url}/infer", files={"file": ("cat.jpg", images["cat.jpg"])})
                    assert r.status_code == 200, r.text
            except Exception as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                return
            i += 1
            stop.wait(0.02)  # pacing: leave CPU to Prometheus on a 2-core box


def test_the_readme_shows_the_queries_checked_here():
    readme = (REPO / "README.md").read_text()
    for query in (REQUEST_RATE, P99_LATENCY, ERROR_RATIO):
        assert f"```promql\n{query}\n```" in readme


def test_prometheus_scrapes_inferd_and_answers_the_readme_queries(start_daemon, prometheus,
                                                                  tiny_model_dir, images):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    server = prometheus(daemon.url.removeprefix("http://"))
    stop, errors = threading.Event(), []
    traffic = threading.Thread(target=send_traffic, args=(daemon.url, images, stop, errors), daemon=True)
    traffic.start()
    try:
        (up,) = server.eventually('up{job="inferd"}', lambda r: len(r) == 1)
        assert number(up) == 1

        # The brief's checks: the request counter's rate is positive, p99 over all routes a number.
        (total,) = server.eventually("sum(rate(inferd_http_requests_total[10s]))",
                                     lambda r: r and number(r[0]) > 0)
        assert number(total) > 0
        (p99_all,) = server.eventually(
            "histogram_quantile(0.99, sum by (le) (rate(inferd_http_request_duration_seconds_bucket[10s])))",
            lambda r: r and math.isfinite(number(r[0])))
        assert 0 < number(p99_all) <= 10

        # The README's three queries, verbatim.
        rates = server.eventually(REQUEST_RATE, lambda r: any(
            s["metric"].get("route") == "/infer" and number(s) > 0 for s in r))
        assert all(set(s["metric"]) == {"route"} for s in rates), rates
        (p99,) = server.eventually(P99_LATENCY, lambda r: r and math.isfinite(number(r[0])))
        assert 0 < number(p99) <= 10
        (errors_5xx,) = server.eventually(ERROR_RATIO, lambda r: len(r) == 1)
        assert number(errors_5xx) == 0  # the traffic provokes no 5xx: a number, not an empty answer
        (failures,) = server.eventually(FAILURE_RATIO, lambda r: r and number(r[0]) > 0)
        assert 0 < number(failures) < 1  # one bad image in four /infer requests

        print(f"up={number(up)} requests/s={number(total):.2f} p99(all)={number(p99_all):.4f}s "
              f"p99(infer)={number(p99):.4f}s error_ratio={number(errors_5xx)} "
              f"failure_ratio={number(failures):.3f} by_route="
              f"{ {s['metric']['route']: round(number(s), 2) for s in rates} }")

        # The scrape itself: healthy, and parsed as OpenMetrics. Only the OpenMetrics parser reads
        # "# UNIT", so a unit in Prometheus' metadata proves the negotiation picked OpenMetrics.
        (target,) = server.api("targets")["activeTargets"]
        assert (target["health"], target["lastError"]) == ("up", ""), target
        metadata = server.api("targets/metadata", match_target='{job="inferd"}',
                              metric="inferd_http_request_duration_seconds")
        assert [(m["type"], m["unit"]) for m in metadata] == [("histogram", "seconds")]
        # ...and counters arrive under their OpenMetrics family name, without _total.
        assert server.api("targets/metadata", match_target='{job="inferd"}',
                          metric="inferd_http_requests")[0]["type"] == "counter"
    finally:
        stop.set()
        traffic.join(30)
    assert errors == []
    assert "level=error" not in server.log(), server.log()
