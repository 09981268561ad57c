"""GET /metrics on a live daemon (a real subprocess) after real traffic, read by real peers.

Each test starts the daemon with the tiny model, sends the same traffic (good images, a batch with
a bad image, a bad image alone, a 404, a health check, a reload, one more image after the reload,
a failed reload),
then scrapes over real HTTP with the Accept headers real clients send and checks the answers with
real validators: promtool, prometheus_client's strict OpenMetrics parser, its text parser.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from inferd.metrics import CONTENT_TYPE_JSON, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from tests.support import PROMTOOL, needs_promtool

# What Debian's prometheus 2.42 sends on every scrape (captured from the real binary, User-Agent
# "Prometheus/2.42.0+ds"); tests/system/test_prometheus.py proves that server gets OpenMetrics.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
FIREFOX_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
                 "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
NOT_AN_IMAGE = b"GIF89a but not really: a truncated header and nothing else"



@dataclass
class Live:
    url: str
    bad_image_status: int  # what POST /infer answered for NOT_AN_IMAGE
    model_name: str

    def get(self, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
        """One GET on a fresh connection, with exactly this Accept header (or none)."""
        connection = http.client.HTTPConnection(urlsplit(self.url).netloc, timeout=30)
        try:
            return _get(connection, path, accept)
        finally:
            connection.close()


def _get(connection: http.client.HTTPConnection, path: str, accept: str | None):
    # skip_accept_encoding: no Accept-Encoding either; the only negotiation header is ours.
    connection.putrequest("GET", path, skip_accept_encoding=True)
    if accept is not None:
        connection.putheader("Accept", accept)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


@pytest.fixture
def live(start_daemon, tiny_model_dir, images, tmp_path) -> Live:
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    url = daemon.url
    with requests.Session() as s:
        for name in ("cat.jpg", "coffee.png", "camera.png"):
            r = s.post(f"{url}/infer", files={"file": (name, images[name], "application/octet-stream")})
            assert r.status_code == 200, r.text
        r = s.post(f"{url}/infer/batch", files=[("files", ("cat.jpg", images["cat.jpg"])),
                                                 ("files", ("motorcycle.webp", images["motorcycle.webp"])),
                                                 ("files", ("bad.gif", NOT_AN_IMAGE))])
        assert r.status_code == 200 and (r.json()["successful"], r.json()["failed"]) == (2, 1), r.text
        bad = s.post(f"{url}/infer", files={"file": ("bad.gif", NOT_AN_IMAGE, "image/gif")})
        assert bad.status_code in (400, 415), bad.text
        assert s.get(f"{url}/no/such/route").status_code == 404
        health = s.get(f"{url}/health")
        assert health.status_code == 200
        assert s.post(f"{url}/admin/reload").status_code == 200
        r = s.post(f"{url}/infer", files={"file": ("coffee.bmp", images["coffee.bmp"])})
        assert r.status_code == 200, r.text
        # A failed reload too: start_daemon reads its config from tmp_path/inferd.conf.
        (tmp_path / "inferd.conf").write_text(f"[model]\npath = {tmp_path / 'no-such-model'}\n")
        assert s.post(f"{url}/admin/reload").status_code == 500
    return Live(url, bad.status_code, health.json()["model"]["name"])


def families_by_name(families) -> dict:
    return {f.name: f for f in families}


def value(family, suffix="", **labels) -> float:
    """The one sample of family named family.name + suffix whose labels include these."""
    (sample,) = [s for s in family.samples if s.name == family.name + suffix
                 and all(s.labels.get(k) == v for k, v in labels.items())]
    return sample.value


# -- negotiation over real HTTP -----------------------------------------------------------------


# (path, Accept header or None for no header, the content type that must come back)
NEGOTIATION = [
    ("/metrics", PROMETHEUS_ACCEPT, CONTENT_TYPE_OPENMETRICS),
    ("/metrics", "application/openmetrics-text; version=1.0.0", CONTENT_TYPE_OPENMETRICS),
    ("/metrics", "text/plain", CONTENT_TYPE_TEXT),
    ("/metrics", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", CONTENT_TYPE_TEXT),
    ("/metrics", "*/*", CONTENT_TYPE_JSON),  # curl, requests, wget
    ("/metrics", FIREFOX_ACCEPT, CONTENT_TYPE_JSON),
    ("/metrics", CHROME_ACCEPT, CONTENT_TYPE_JSON),
    ("/metrics", None, CONTENT_TYPE_JSON),
    ("/metrics?format=prometheus", PROMETHEUS_ACCEPT, CONTENT_TYPE_TEXT),
    ("/metrics?format=openmetrics", "*/*", CONTENT_TYPE_OPENMETRICS),
    ("/metrics?format=json", "text/plain", CONTENT_TYPE_JSON),
    ("/metrics?format=prometheus", CHROME_ACCEPT, CONTENT_TYPE_TEXT),
]


def test_each_client_gets_its_view(live):
    # One daemon for every case (a loop, not parametrize): starting one costs a second.
    for path, accept, content_type in NEGOTIATION:
        status, got_type, body = live.get(path, accept)
        assert (status, got_type) == (200, content_type), (path, accept)
        text = body.decode("utf-8")
        if content_type == CONTENT_TYPE_JSON:
            assert json.loads(text)["total_requests"] == 6
        elif content_type == CONTENT_TYPE_OPENMETRICS:
            assert text.endswith("\n# EOF\n")
            assert "inferd_http_requests" in families_by_name(parse_openmetrics(text))
        else:
            assert "# EOF" not in text
            assert "inferd_http_requests" in families_by_name(parse_text(text))

    status, content_type, body = live.get("/metrics?format=xml", "text/plain")
    assert (status, content_type) == (400, CONTENT_TYPE_JSON)
    assert "unknown format" in json.loads(body)["error"]


# -- validators ---------------------------------------------------------------------------------


def promtool_check(text: str) -> tuple[int, str]:
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                          timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode()


@needs_promtool
def test_promtool_finds_nothing_in_the_live_text_scrape(live):
    status, _, body = live.get("/metrics", "text/plain")
    assert status == 200
    assert promtool_check(body.decode()) == (0, "")


@needs_promtool
def test_promtool_on_the_live_openmetrics_scrape_reports_only_its_known_gap(live):
    status, _, body = live.get("/metrics", PROMETHEUS_ACCEPT)
    text = body.decode()
    # promtool 2.42's `check metrics` has only the 0.0.4 parser; OpenMetrics support is still open
    # (prometheus/prometheus#8932). It reads "# HELP inferd_images" (an OpenMetrics counter family
    # is named without _total) and then samples "inferd_images_total", which it takes for another
    # family, one without HELP. That complaint, once per counter, is the only one accepted; any
    # other line, or exit code 1 (a parse error), is a fault of ours.
    counters = {f.name + "_total" for f in parse_openmetrics(text) if f.type == "counter" and f.samples}
    assert "inferd_http_requests_total" in counters and "process_cpu_seconds_total" in counters
    code, output = promtool_check(text)
    assert code in (0, 3), output
    assert sorted(output.splitlines()) == sorted(f"{c} no help text" for c in counters)


def test_strict_openmetrics_parser_reads_every_family_filled_by_real_traffic(live):
    started = time.time()
    status, _, body = live.get("/metrics", PROMETHEUS_ACCEPT)
    assert status == 200
    families = families_by_name(parse_openmetrics(body.decode()))
    # Every family inferd exports has samples after traffic and a reload: none is wired to nothing
    # (the per-key families only have series with API keys on: tests/service/test_keys.py).
    assert {name for name, f in families.items() if not f.samples} == {"inferd_key_requests", "inferd_key_images"}
    for name in ("inferd_http_request_duration_seconds", "inferd_preprocess_seconds",
                 "inferd_queue_wait_seconds", "inferd_inference_seconds"):
        assert families[name].unit == "seconds"

    requests_ = families["inferd_http_requests"]
    assert value(requests_, "_total", route="/infer", method="POST", code="200") == 4
    assert value(requests_, "_total", route="/infer", method="POST", code=str(live.bad_image_status)) == 1
    assert value(requests_, "_total", route="/infer/batch", method="POST", code="200") == 1
    assert value(requests_, "_total", route="other", method="GET", code="404") == 1
    assert value(requests_, "_total", route="/health", method="GET", code="200") == 1
    assert value(requests_, "_total", route="/admin/reload", method="POST", code="200") == 1
    assert value(requests_, "_total", route="/admin/reload", method="POST", code="500") == 1
    assert value(families["inferd_http_request_duration_seconds"], "_count", route="/infer") == 5
    # This scrape is the one request in flight while it is rendered.
    assert value(families["inferd_http_requests_in_flight"]) == 1

    images = families["inferd_images"]
    assert value(images, "_total", outcome="ok") == 6  # 3 + 2 in the batch + 1 after the reload
    assert value(images, "_total", outcome="bad_input") == 2
    assert value(images, "_total", outcome="error") == 0
    assert value(families["inferd_preprocess_seconds"], "_count") == 6
    assert value(families["inferd_queue_wait_seconds"], "_count") == 6
    batches = value(families["inferd_batch_size"], "_count")
    assert 1 <= batches <= 5  # the batch request's two images may share one session.run
    assert value(families["inferd_batch_size"], "_sum") == 6
    assert value(families["inferd_inference_seconds"], "_count") == batches
    assert value(families["inferd_queue_depth"]) == 0

    reloads = families["inferd_reloads"]
    assert (value(reloads, "_total", result="success"), value(reloads, "_total", result="failure")) == (1, 1)
    (info,) = families["inferd_model_info"].samples
    assert info.labels["name"] == live.model_name and len(info.labels["sha256"]) == 64
    assert started - 60 < value(families["inferd_model_loaded_timestamp_seconds"]) <= started
    (build,) = families["inferd_build_info"].samples
    assert build.value == 1 and build.labels["onnxruntime"] != "unknown"

    assert value(families["process_cpu_seconds"], "_total") > 0
    assert value(families["process_resident_memory_bytes"]) > 10e6  # numpy + onnxruntime loaded
    assert 0 < value(families["process_open_fds"]) <= value(families["process_max_fds"])
    assert started - 120 < value(families["process_start_time_seconds"]) <= started


# -- the JSON view agrees with the text view ----------------------------------------------------


def test_json_agrees_with_the_text_view_of_the_same_daemon(live):
    # One keep-alive connection: each request is counted before the next one is read, so the JSON
    # scrape sees exactly the text scrape counted on top of what the text scrape saw.
    connection = http.client.HTTPConnection(urlsplit(live.url).netloc, timeout=30)
    try:
        _, _, text = _get(connection, "/metrics", "text/plain")
        _, _, raw = _get(connection, "/metrics", "application/json")
    finally:
        connection.close()
    view = json.loads(raw)
    families = families_by_name(parse_text(text.decode()))

    inference = [s for s in families["inferd_http_requests"].samples
                 if s.labels["route"] in ("/infer", "/infer/batch")]
    assert view["total_requests"] == sum(s.value for s in inference) == 6
    assert view["successful_requests"] == sum(s.value for s in inference if s.labels["code"][0] == "2") == 5
    assert view["failed_requests"] == 1
    assert view["success_rate"] == pytest.approx(5 / 6)
    assert view["all_http_requests"] == sum(s.value for s in families["inferd_http_requests"].samples) + 1
    assert view["requests_in_flight"] == value(families["inferd_http_requests_in_flight"]) == 1

    durations = families["inferd_http_request_duration_seconds"]
    count = sum(value(durations, "_count", route=r) for r in ("/infer", "/infer/batch"))
    total = sum(value(durations, "_sum", route=r) for r in ("/infer", "/infer/batch"))
    assert count == view["total_requests"] == view["latency_window"]["size"]
    assert view["average_latency_ms"] == pytest.approx(1000 * total / count)
    # The window holds every inference request so far (6 < 1024), so each nearest-rank percentile
    # must sit in the histogram bucket where the cumulative count first reaches its rank.
    buckets = {}
    for s in durations.samples:
        if s.name.endswith("_bucket") and s.labels["route"] in ("/infer", "/infer/batch"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0) + s.value
    for p in (50, 95, 99):
        seconds = view[f"p{p}_latency_ms"] / 1000
        rank = math.ceil(p / 100 * count)
        assert buckets[min(le for le in buckets if le >= seconds)] >= rank
        below = [le for le in buckets if le < seconds]
        assert not below or buckets[max(below)] < rank
    assert view["requests_per_second"] == pytest.approx(view["total_requests"] / view["uptime_seconds"])
    assert 0 < view["uptime_seconds"] < time.time() - value(families["process_start_time_seconds"]) + 1

    assert view["images"] == {s.labels["outcome"]: s.value for s in families["inferd_images"].samples}
    assert view["reloads"] == {s.labels["result"]: s.value for s in families["inferd_reloads"].samples}
    assert view["batches"]["count"] == value(families["inferd_batch_size"], "_count")
    assert view["batches"]["images"] == value(families["inferd_batch_size"], "_sum") == 6
    assert view["batches"]["average_inference_ms"] == pytest.approx(
        1000 * value(families["inferd_inference_seconds"], "_sum") / view["batches"]["count"])
    assert view["queue_depth"] == value(families["inferd_queue_depth"]) == 0
    (info,) = families["inferd_model_info"].samples
    assert (view["model"]["name"], view["model"]["sha256"]) == (info.labels["name"], info.labels["sha256"])
    assert view["model"]["loaded_at"] == value(families["inferd_model_loaded_timestamp_seconds"])
    (build,) = families["inferd_build_info"].samples
    assert view["build"] == build.labels


# -- label values come from fixed sets ----------------------------------------------------------


def series(text: str) -> set[tuple[str, frozenset]]:
    return {(s.name, frozenset(s.labels.items())) for f in parse_text(text) for s in f.samples}


def other_route_requests(text: str) -> float:
    return sum(s.value for f in parse_text(text) if f.name == "inferd_http_requests"
               for s in f.samples if s.labels["route"] == "other")


def test_random_unknown_paths_and_methods_add_no_series(live):
    rng = random.Random(4)
    netloc = urlsplit(live.url).netloc
    methods = ("GET", "POST", "DELETE", "PROPFIND")  # DELETE: not a counted method; PROPFIND: 501

    def junk() -> tuple[str, str, str]:
        token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_~") for _ in range(16))
        path = rng.choice([f"/{token}", f"/infer/{token}", f"/{token}?top_k=3&x={token}",
                           f"/%22{token}%0A%7D", f"//{token}/../metrics", f"/METRICS/{token}"])
        return rng.choice(methods), path, token

    def send(method: str, path: str) -> int:
        connection = http.client.HTTPConnection(netloc, timeout=30)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    # Each kind of request once first, so that its series exists: a scrape counts only the
    # scrapes before it, and each kind of unknown request gets its one series.
    live.get("/metrics", "text/plain")
    for method in methods:
        assert send(method, junk()[1]) in (404, 501)
    before = live.get("/metrics", "text/plain")[2].decode()
    sent = [junk() for _ in range(50)]
    assert {send(method, path) for method, path, _ in sent} <= {404, 501}
    after = live.get("/metrics", "text/plain")[2].decode()
    openmetrics = live.get("/metrics", PROMETHEUS_ACCEPT)[2].decode()

    assert series(after) - series(before) == set() and series(before) - series(after) == set()
    assert other_route_requests(after) - other_route_requests(before) == 50
    for _, _, token in sent:
        assert token not in after and token not in openmetrics
    assert "PROPFIND" not in after and "DELETE" not in after


def test_images_refused_by_a_full_queue_are_counted_as_errors(start_daemon, tiny_model_dir, images):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[batching]\nmax_queue_size = 1\n")
    two = [("files", ("cat.jpg", images["cat.jpg"])), ("files", ("coffee.png", images["coffee.png"]))]
    r = requests.post(f"{daemon.url}/infer/batch", files=two, timeout=30)
    assert r.status_code == 503, r.text  # two images never fit a queue of one
    live = Live(daemon.url, 0, "")
    families = families_by_name(parse_openmetrics(live.get("/metrics", PROMETHEUS_ACCEPT)[2].decode()))
    assert value(families["inferd_images"], "_total", outcome="error") == 2
