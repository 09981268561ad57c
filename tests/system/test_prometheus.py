"""A real Prometheus server (Debian's /usr/bin/prometheus) scrapes a live inferd; its HTTP API must
then answer the README's queries with numbers.

Prometheus is started by the `prometheus` fixture (tests/system/prometheus_server.py): loopback
only, scrape interval 1 s, no alerting, no rules. About 10 s, most of it Prometheus' fixed 5 s delay
between loading its config and handing the first targets to the scrape manager.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from tests.system.prometheus_server import PROMETHEUS, SKIP_REASON, number, send_traffic

pytestmark = [pytest.mark.system, pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)]

REPO = Path(__file__).resolve().parents[2]

# The three queries of the README's "Monitoring" section, verbatim (test_the_readme_shows_...).
REQUEST_RATE = 'sum by (route) (rate(inferd_http_requests_total[5m]))'
P99_LATENCY = ('histogram_quantile(0.99, sum by (le) '
               '(rate(inferd_http_request_duration_seconds_bucket{route=~"/infer|/infer/batch"}[5m])))')
ERROR_RATIO = ('(sum(rate(inferd_http_requests_total{route=~"/infer|/infer/batch",code=~"5.."}[5m]))'
               ' or vector(0))\n  / sum(rate(inferd_http_requests_total{route=~"/infer|/infer/batch"}[5m]))')
# The README's variant that counts client errors (4xx) too.
FAILURE_RATIO = ERROR_RATIO.replace('code=~"5.."', 'code=~"4..|5.."')


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
