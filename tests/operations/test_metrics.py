"""inferd.metrics: golden text, real validators (strict OpenMetrics parser, promtool), negotiation,
JSON/text agreement, exact counts under threads, and /proc process metrics."""

import json
import math
import subprocess
import sys
import threading
import time
from http import HTTPStatus

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from inferd import metrics
from inferd.metrics import (
    CONTENT_TYPE_JSON, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Counter, Gauge, Histogram,
    LoadedVersion, Registry, format_openmetrics, format_text, negotiate, render,
)
from tests.support import PROMTOOL, needs_promtool, new_metrics

HELP = 'Requests with "quotes", a back\\slash\nand a newline.'
NASTY = 'a"b\\c\nd'


def small_registry():
    r = Registry()
    c = Counter("demo_requests_total", HELP, ("path",), registry=r)
    c.labels(path=NASTY).inc(2)
    c.labels(path="/x").inc()
    g = Gauge("demo_temperature", "Plain help.", ("kind",), registry=r)
    for kind, value in [("nan", math.nan), ("pinf", math.inf), ("ninf", -math.inf),
                        ("int", 3), ("float", 0.25)]:
        g.labels(kind=kind).set(value)
    h = Histogram("demo_latency_seconds", "Latency.", buckets=(1, 0.125), unit="seconds", registry=r)
    for v in (0.0625, 0.125, 0.5, 2, 4):  # 0.125 lands in le="0.125": the bound is inclusive
        h.observe(v)
    Gauge("demo_up", "Unlabelled, never set.", registry=r)
    return r


GOLDEN_TEXT = r'''# HELP demo_requests_total Requests with "quotes", a back\\slash\nand a newline.
# TYPE demo_requests_total counter
demo_requests_total{path="/x"} 1
demo_requests_total{path="a\"b\\c\nd"} 2
# HELP demo_temperature Plain help.
# TYPE demo_temperature gauge
demo_temperature{kind="float"} 0.25
demo_temperature{kind="int"} 3
demo_temperature{kind="nan"} NaN
demo_temperature{kind="ninf"} -Inf
demo_temperature{kind="pinf"} +Inf
# HELP demo_latency_seconds Latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{le="0.125"} 2
demo_latency_seconds_bucket{le="1.0"} 3
demo_latency_seconds_bucket{le="+Inf"} 5
demo_latency_seconds_count 5
demo_latency_seconds_sum 6.6875
# HELP demo_up Unlabelled, never set.
# TYPE demo_up gauge
demo_up 0
'''

GOLDEN_OPENMETRICS = r'''# HELP demo_requests Requests with \"quotes\", a back\\slash\nand a newline.
# TYPE demo_requests counter
demo_requests_total{path="/x"} 1
demo_requests_total{path="a\"b\\c\nd"} 2
# HELP demo_temperature Plain help.
# TYPE demo_temperature gauge
demo_temperature{kind="float"} 0.25
demo_temperature{kind="int"} 3
demo_temperature{kind="nan"} NaN
demo_temperature{kind="ninf"} -Inf
demo_temperature{kind="pinf"} +Inf
# HELP demo_latency_seconds Latency.
# TYPE demo_latency_seconds histogram
# UNIT demo_latency_seconds seconds
demo_latency_seconds_bucket{le="0.125"} 2
demo_latency_seconds_bucket{le="1.0"} 3
demo_latency_seconds_bucket{le="+Inf"} 5
demo_latency_seconds_count 5
demo_latency_seconds_sum 6.6875
# HELP demo_up Unlabelled, never set.
# TYPE demo_up gauge
demo_up 0
# EOF
'''


def test_golden_text():
    assert format_text(small_registry().collect()) == GOLDEN_TEXT


def test_golden_openmetrics():
    assert format_openmetrics(small_registry().collect()) == GOLDEN_OPENMETRICS


def test_golden_outputs_round_trip_through_the_parsers():
    for parse, text in [(parse_text, GOLDEN_TEXT), (parse_openmetrics, GOLDEN_OPENMETRICS)]:
        families = {f.name: f for f in parse(text)}
        requests = families["demo_requests"]
        assert requests.documentation == HELP
        assert {s.labels["path"]: s.value for s in requests.samples} == {"/x": 1, NASTY: 2}
        latency = {(s.name, s.labels.get("le")): s.value for s in families["demo_latency_seconds"].samples}
        assert latency[("demo_latency_seconds_bucket", "+Inf")] == latency[("demo_latency_seconds_count", None)]


UNICODE = st.characters(blacklist_categories=("Cs",))  # any code point UTF-8 can carry


# Whitespace around HELP text does not survive: parsers skip the blanks after the name (Go's too),
# and client_python's 0.0.4 parser strips the rest. Inside HELP and in label values, anything goes.
@settings(max_examples=300, deadline=None)
@given(help_text=st.text(UNICODE).map(str.strip), value=st.text(UNICODE))
def test_any_help_and_label_value_survive_both_formats(help_text, value):
    r = Registry()
    Counter("x_total", help_text, ("v",), registry=r).labels(v=value).inc()
    for parse, text in [(parse_text, format_text(r.collect())), (parse_openmetrics, format_openmetrics(r.collect()))]:
        (family,) = parse(text)
        assert family.documentation == help_text
        assert [s.labels for s in family.samples] == [{"v": value}]


# -- validation ---------------------------------------------------------------------------------


def test_families_reject_what_the_formats_cannot_carry():
    r = Registry()
    with pytest.raises(ValueError, match="_total"):
        Counter("requests", "h")
    with pytest.raises(ValueError, match="invalid metric name"):
        Gauge("1bad", "h")
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "h", ("__reserved",))
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h_seconds", "h", ("le",))
    with pytest.raises(ValueError, match="unit"):
        Gauge("g_bytes", "h", unit="seconds")
    Counter("a_total", "h", registry=r)
    with pytest.raises(ValueError, match="clash"):
        Gauge("a", "h", registry=r)  # the OpenMetrics family name of a_total
    c = Counter("b_total", "h", ("x",))
    with pytest.raises(ValueError, match="expected labels"):
        c.labels(y="1")
    with pytest.raises(ValueError, match="only go up"):
        c.labels(x="1").inc(-1)
    h = Histogram("h_seconds", "h")
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError):
            h.observe(bad)
    assert h._unlabelled().get() == (0, 0.0)


# -- negotiation --------------------------------------------------------------------------------

PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3_STYLE = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,"
                      "application/openmetrics-text;version=0.0.1;q=0.9,text/plain;version=1.0.0;"
                      "escaping=allow-utf-8;q=0.8,text/plain;version=0.0.4;q=0.7,*/*;q=0.6")
PROMETHEUS_TEXT_ONLY = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
CHROME = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
          "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("accept, fmt, expected", [
    (PROMETHEUS_2, None, "openmetrics"),
    (PROMETHEUS_3_STYLE, None, "openmetrics"),
    (PROMETHEUS_TEXT_ONLY, None, "prometheus"),
    ("text/plain", None, "prometheus"),
    ("text/plain; version=0.0.4", None, "prometheus"),
    ("text/*", None, "prometheus"),
    ("application/openmetrics-text", None, "openmetrics"),
    ("APPLICATION/OpenMetrics-Text; Version=1.0.0", None, "openmetrics"),
    ("*/*", None, "json"),
    (None, None, "json"),
    ("", None, "json"),
    ("application/json", None, "json"),
    (CHROME, None, "json"),
    (FIREFOX, None, "json"),
    ("image/png", None, "json"),  # nothing acceptable: the JSON view rather than 406
    ("application/openmetrics-text;version=2.0.0", None, "json"),  # a version we do not serve
    ("text/plain;q=0, */*", None, "json"),  # q=0 excludes, the specific range beats */*
    ("text/plain, application/openmetrics-text", None, "prometheus"),  # tie: first listed
    ("application/json;q=0.5, text/plain", None, "prometheus"),
    ("text/plain;q=nonsense, ;;, /, application/json", None, "json"),
    ("text/plain", "json", "json"),
    (PROMETHEUS_2, "prometheus", "prometheus"),
    (None, "openmetrics", "openmetrics"),
    (None, "JSON", "json"),
])
def test_negotiate(accept, fmt, expected):
    assert negotiate(accept, fmt) == expected


@pytest.mark.parametrize("fmt", ["xml", "", "text", "prom"])
def test_negotiate_rejects_an_unknown_format(fmt):
    with pytest.raises(ValueError, match="unknown format"):
        negotiate("*/*", fmt)


def test_render_content_types():
    m = populated(process=False)  # process metrics move between two renders
    assert m.render("prometheus")[0] == CONTENT_TYPE_TEXT == "text/plain; version=0.0.4; charset=utf-8"
    content_type, body = m.render("openmetrics")
    assert content_type == CONTENT_TYPE_OPENMETRICS
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert body.endswith(b"\n# EOF\n")
    content_type, body = m.render("json")
    assert content_type == CONTENT_TYPE_JSON
    assert json.loads(body)["total_requests"] == m.snapshot_json()["total_requests"]
    assert render("prometheus", m.registry) == m.render("prometheus")
    with pytest.raises(TypeError):
        render("json", m.registry)
    with pytest.raises(ValueError):
        m.render("xml")


# -- InferdMetrics ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def populated(process=True):
    m = new_metrics(clock=FakeClock(), onnxruntime_version="1.32.0", process=process)
    m.observe_request("/infer", "POST", 200, 0.02)
    m.observe_request("/infer", "POST", 200, 0.04)
    m.observe_request("/infer", "POST", 415, 0.001)
    m.observe_request("/infer/batch?top_k=3", "POST", 200, 0.3)
    m.observe_request("/infer/batch", "POST", 503, 0.0)
    m.observe_request("/health", "GET", 200, 0.0005)
    m.observe_request("/health", "HEAD", 200, 0.0005)
    m.observe_request("/metrics", "GET", 200, 0.002)
    m.observe_request("/admin/reload", "POST", 500, 1.5)
    m.observe_request("/wp-login.php", "PROPFIND", 404, 0.0001)
    m.observe_request("/infer", "DELETE", HTTPStatus.METHOD_NOT_ALLOWED, 0.0001)
    m.observe_request("/infer", "POST", 999, 0.0001)
    name = 'weird "name"\\\n'
    m.set_models([LoadedVersion(name, "1", "0" * 64, 1_700_000_000.5, lambda: 7)], default=name)
    version = m.for_version(name, "1")
    for outcome in ("ok", "ok", "ok", "bad_input", "error"):
        version.observe_image(outcome)
    version.observe_preprocess(0.004)
    version.observe_queue_wait(0.001)
    version.observe_batch(3, 0.05)
    version.observe_batch(1, 0.01)
    m.request_started()
    m.request_started()
    m.request_finished()
    m.observe_reload(True)
    m.observe_reload(False)
    m.cache.lookup(True)
    m.cache.lookup(False)
    m.cache.evicted(2)
    m.keys.install(["alice", "unknown"])
    m.keys.observe("alice", "ok")
    m.keys.observe_images("alice", 3)
    m.keys.observe("unknown", "unauthorized")
    return m


def samples_of(families):
    return {f.name: f.samples for f in families}


def test_strict_openmetrics_parser_accepts_a_populated_render():
    families = samples_of(parse_openmetrics(format_openmetrics(populated().registry.collect())))
    expected = {
        "inferd_http_requests", "inferd_http_request_duration_seconds",
        "inferd_http_requests_in_flight", "inferd_images", "inferd_preprocess_seconds",
        "inferd_queue_wait_seconds", "inferd_inference_seconds", "inferd_batch_size",
        "inferd_queue_depth", "inferd_model_info", "inferd_model_loaded_timestamp_seconds",
        "inferd_reloads", "inferd_model_reloads", "inferd_build_info", "process_cpu_seconds",
        "process_virtual_memory_bytes", "process_resident_memory_bytes",
        "process_start_time_seconds", "process_open_fds", "process_max_fds", "inferd_cache_requests",
        "inferd_cache_evictions", "inferd_cache_bytes", "inferd_cache_entries", "inferd_key_requests",
        "inferd_key_images",
    }
    assert set(families) == expected
    (info,) = families["inferd_model_info"]
    assert info.labels == {"name": 'weird "name"\\\n', "version": "1", "sha256": "0" * 64} and info.value == 1


def test_text_parser_accepts_a_populated_render():
    families = samples_of(parse_text(format_text(populated().registry.collect())))
    assert "inferd_http_requests" in families and "process_cpu_seconds" in families
    (depth,) = families["inferd_queue_depth"]
    assert depth.value == 7


def test_unknown_paths_and_methods_never_get_series_of_their_own():
    text = format_text(populated().registry.collect())
    assert "wp-login" not in text and "PROPFIND" not in text and "DELETE" not in text
    assert 'inferd_http_requests_total{route="other",method="other",code="404"} 1' in text
    assert 'inferd_http_requests_total{route="/infer",method="other",code="405"} 1' in text
    assert 'inferd_http_requests_total{route="/infer",method="POST",code="other"} 1' in text
    assert populated().route_label("/infer?top_k=5") == "/infer"
    assert populated().route_label("/infer/") == "other"
    assert populated().route_label("/INFER") == "other"


def test_set_models_replaces_the_info_samples_and_forgets_unloaded_versions():
    m = new_metrics(process=False)
    m.set_models([LoadedVersion("a", "1", "1" * 64, 10.0)], default="a")
    m.for_version("a", "1").observe_image("ok")
    m.set_models([LoadedVersion("b", "1", "2" * 64, 20.0), LoadedVersion("b", "2", "3" * 64, 30.0)], default="b")
    families = samples_of(parse_openmetrics(format_openmetrics(m.registry.collect())))
    assert [(s.labels["name"], s.labels["version"]) for s in families["inferd_model_info"]] == [("b", "1"), ("b", "2")]
    assert [s.value for s in families["inferd_model_loaded_timestamp_seconds"]] == [20.0, 30.0]
    assert all(s.labels["model"] == "b" for s in families["inferd_images"])
    assert m.snapshot_json()["model"] == {"name": "b", "version": "2", "sha256": "3" * 64, "loaded_at": 30.0}
    assert sorted(m.snapshot_json()["models"]["b"]["versions"]) == ["1", "2"]


def test_a_failing_queue_depth_source_drops_the_sample_not_the_scrape():
    m = new_metrics(process=False)
    m.set_models([LoadedVersion("a", "1", "1" * 64, 10.0, lambda: 1 // 0)], default="a")
    assert samples_of(parse_openmetrics(format_openmetrics(m.registry.collect())))["inferd_queue_depth"] == []
    assert m.snapshot_json()["queue_depth"] is None


def test_observe_image_rejects_unknown_outcomes():
    with pytest.raises(ValueError, match="outcome"):
        new_metrics(process=False).for_version("a", "1").observe_image("meh")


# -- promtool -----------------------------------------------------------------------------------



def promtool_check(text):
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                          timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode()


@needs_promtool
def test_promtool_finds_nothing_in_the_text_format():
    assert promtool_check(format_text(populated().registry.collect())) == (0, "")


@needs_promtool
def test_promtool_on_openmetrics_flags_only_what_it_cannot_parse():
    # promtool check metrics only has the 0.0.4 parser (prometheus/prometheus#8932): it reads an
    # OpenMetrics counter's "name_total" samples as a family of their own without HELP. Anything
    # beyond that, or a parse error (exit 1), would be ours.
    code, output = promtool_check(format_openmetrics(populated().registry.collect()))
    counters = ["inferd_http_requests_total", "inferd_images_total", "inferd_reloads_total", "inferd_model_reloads_total",
                "process_cpu_seconds_total", "inferd_cache_requests_total", "inferd_cache_evictions_total",
                "inferd_key_requests_total", "inferd_key_images_total"]
    assert code in (0, 3), output
    assert sorted(output.splitlines()) == sorted(f"{c} no help text" for c in counters)


# -- JSON view ----------------------------------------------------------------------------------


def test_json_agrees_with_the_text_view():
    m = populated()
    view = m.snapshot_json()
    families = samples_of(parse_text(format_text(m.registry.collect())))
    inference = [s for s in families["inferd_http_requests"]
                 if s.labels["route"] in ("/infer", "/infer/batch")]
    assert view["total_requests"] == sum(s.value for s in inference) == 7
    assert view["successful_requests"] == sum(
        s.value for s in inference if s.labels["code"].startswith("2")) == 3
    assert view["failed_requests"] == 4
    assert view["success_rate"] == pytest.approx(3 / 7)
    assert view["all_http_requests"] == sum(s.value for s in families["inferd_http_requests"]) == 12
    durations = {(s.name, s.labels["route"]): s.value
                 for s in families["inferd_http_request_duration_seconds"]
                 if s.labels["route"] in ("/infer", "/infer/batch") and not s.name.endswith("_bucket")}
    count = sum(v for (name, _), v in durations.items() if name.endswith("_count"))
    total = sum(v for (name, _), v in durations.items() if name.endswith("_sum"))
    assert count == view["total_requests"]
    assert view["average_latency_ms"] == pytest.approx(1000 * total / count)
    assert view["images"] == {s.labels["outcome"]: s.value for s in families["inferd_images"]}
    assert view["reloads"] == {s.labels["result"]: s.value for s in families["inferd_reloads"]}
    assert view["queue_depth"] == 7
    assert view["requests_in_flight"] == families["inferd_http_requests_in_flight"][0].value == 1
    batches = {s.name: s.value for s in families["inferd_batch_size"]}
    assert view["batches"]["count"] == batches["inferd_batch_size_count"] == 2
    assert view["batches"]["images"] == batches["inferd_batch_size_sum"] == 4
    assert view["build"]["onnxruntime"] == "1.32.0"
    json.dumps(view, allow_nan=False)


def test_json_before_any_request_has_no_invented_numbers():
    view = new_metrics(clock=FakeClock(), process=False).snapshot_json()
    assert view["total_requests"] == 0
    for key in ("success_rate", "average_latency_ms", "p95_latency_ms", "p99_latency_ms", "model"):
        assert view[key] is None
    assert view["requests_per_second"] == 0.0


def test_json_rate_and_percentiles_use_the_documented_windows():
    clock = FakeClock(1000.0)
    m = new_metrics(clock=clock, process=False)
    for ms in range(1, 2001):  # 2000 inference requests, 1 ms .. 2000 ms
        m.observe_request("/infer", "POST", 200, ms / 1000)
    m.observe_request("/health", "GET", 200, 60.0)  # not an inference request: no effect below
    clock.now += 40.0
    view = m.snapshot_json()
    assert view["uptime_seconds"] == 40.0
    assert view["requests_per_second"] == 2000 / 40.0  # all-time average
    assert view["average_latency_ms"] == pytest.approx(1000.5)  # all time
    # The window holds the last 1024 latencies, 977 .. 2000 ms; nearest rank.
    assert view["latency_window"] == {"size": 1024, "capacity": 1024}
    assert view["p50_latency_ms"] == pytest.approx(977 + 511)
    assert view["p95_latency_ms"] == pytest.approx(977 + 972)
    assert view["p99_latency_ms"] == pytest.approx(977 + 1013)


# -- concurrency --------------------------------------------------------------------------------


def test_exact_counts_under_threads_while_scraping():
    m = new_metrics(process=False)
    m.set_models([LoadedVersion("a", "1", "1" * 64, 10.0)], default="a")
    version = m.for_version("a", "1")
    threads, per_thread = 8, 10_000
    start = threading.Barrier(threads + 1)
    stop = threading.Event()
    scrape_errors = []

    def observe(i):
        start.wait()
        route = "/infer" if i % 2 else "/health"
        for _ in range(per_thread):
            m.observe_request(route, "POST", 200, 0.5)
            version.observe_image("ok")
            version.observe_batch(2, 0.25)

    def scrape():
        start.wait()
        while not stop.is_set():
            try:
                families = samples_of(parse_openmetrics(format_openmetrics(m.registry.collect())))
                # One lock for every family: a scrape never sees a request counted but not timed.
                for s in families["inferd_http_requests"]:
                    count = [c for c in families["inferd_http_request_duration_seconds"]
                             if c.name.endswith("_count") and c.labels["route"] == s.labels["route"]]
                    assert count[0].value == s.value
            except Exception as exc:  # noqa: BLE001 - reported from the main thread
                scrape_errors.append(exc)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave as often as possible
    try:
        workers = [threading.Thread(target=observe, args=(i,)) for i in range(threads)]
        scraper = threading.Thread(target=scrape)
        for t in workers + [scraper]:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        scraper.join()
    finally:
        sys.setswitchinterval(old)

    assert scrape_errors == []
    n = threads * per_thread
    view = m.snapshot_json()
    assert view["total_requests"] == n // 2
    assert view["all_http_requests"] == n
    assert view["average_latency_ms"] == 500.0
    assert view["images"]["ok"] == n
    assert view["batches"] == {"count": n, "images": 2 * n, "average_size": 2.0,
                               "average_inference_ms": 250.0}
    families = samples_of(parse_openmetrics(format_openmetrics(m.registry.collect())))
    sums = {s.labels["route"]: s.value for s in families["inferd_http_request_duration_seconds"]
            if s.name.endswith("_sum")}
    assert sums["/infer"] == sums["/health"] == 0.5 * n / 2


# -- process metrics ----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_metrics_are_plausible():
    values = {f.name: f.samples[0].value for f in metrics.ProcessCollector()()}
    assert values["process_resident_memory_bytes"] > 0
    assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
    assert values["process_cpu_seconds"] > 0
    assert values["process_open_fds"] > 0
    assert values["process_max_fds"] >= values["process_open_fds"]
    assert values["process_start_time_seconds"] <= time.time() + 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_start_time_of_a_fresh_process_is_now():
    code = ("from inferd.metrics import ProcessCollector;"
            "print({f.name: f.samples[0].value for f in ProcessCollector()()}"
            "['process_start_time_seconds'])")
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert abs(float(out) - before) < 60
