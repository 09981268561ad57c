"""A real Prometheus server (Debian's /usr/bin/prometheus) for the system tests, started by the
`prometheus` fixture of tests/system/conftest.py, and traffic to give it something to scrape.

Prometheus runs with a config written here: loopback only, scrape and rule evaluation every 1 s,
storage in a temp dir, no remote write/read, no Alertmanager; rule files only when a test names
them. The first scrape comes about 5 s after start: Prometheus' fixed delay between loading its
config and handing the first targets to the scrape manager.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

PROMETHEUS = shutil.which("prometheus")
SKIP_REASON = "/usr/bin/prometheus not installed (Debian package 'prometheus'; `make system-deps`)"

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


def start(workdir: Path, targets: tuple[str, ...], rule_files: tuple[Path, ...],
          started: list[subprocess.Popen]) -> PrometheusServer:
    """A ready Prometheus scraping targets ("host:port") as job "inferd" and evaluating rule_files;
    every process it starts is appended to `started` (the caller stops them)."""
    config = {  # JSON is YAML: no YAML library needed
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "inferd", "static_configs": [{"targets": list(targets)}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))
    ports = random.SystemRandom()
    for attempt in range(PORT_ATTEMPTS):
        port = ports.randint(*PORT_RANGE)
        url = f"http://127.0.0.1:{port}"
        storage = workdir / f"tsdb-{attempt}"
        log_path = workdir / f"prometheus-{attempt}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
                 f"--storage.tsdb.path={storage}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
        started.append(proc)
        if _wait_ready(proc, url, storage):
            return PrometheusServer(proc, url, log_path)
        output = log_path.read_text(errors="replace")
        if "address already in use" not in output:
            raise AssertionError(f"Prometheus exited with {proc.returncode}:\n{output}")
    raise AssertionError(f"no free port for Prometheus in {PORT_ATTEMPTS} attempts")


def stop(started: list[subprocess.Popen]) -> None:
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def send_traffic(url: str, images: dict, stop: threading.Event, errors: list) -> None:
    """Good images, with a bad image and a 404 in every five requests, about 40 per second, until
    stop is set: one /infer request in four is rejected as bad input (400 or 415)."""
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
