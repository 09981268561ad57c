"""The router without sockets (method + path -> the route of the table, its parameters
percent-decoded, 404 and 405), and an empty segment over a socket."""

from __future__ import annotations

import pytest
import requests

from inferd.http.errors import HTTPError
from inferd.http.gate import HeadGate
from inferd.http.heads import parse_head
from inferd.http.messages import INFERENCE, OTHER, Route
from inferd.http.router import Router
from inferd.http.settings import HttpSettings


def handler(request, call, context):
    return None


TABLE = Router([
    Route("/infer", {"POST": handler}, pool=INFERENCE),
    Route("/v2/models/{model}", {"GET": handler}),
    Route("/v2/models/{model}/versions/{version}/infer", {"POST": handler}, pool=INFERENCE),
], guards=[("/admin/", handler)])


def test_exact_paths_then_patterns_segment_by_segment():
    assert TABLE.find("/infer") == (TABLE.routes[0], {})
    assert TABLE.find("/v2/models/lite0") == (TABLE.routes[1], {"model": "lite0"})
    assert TABLE.find("/v2/models/lite0/versions/2/infer") == (TABLE.routes[2], {"model": "lite0", "version": "2"})
    assert TABLE.find("/v2/models/lite0/versions/2") is None
    assert TABLE.find("/infer/") is None and TABLE.find("/v2/models/") is None  # "{name}" needs a segment


def test_parameters_are_percent_decoded_after_the_match():
    assert TABLE.find("/v2/models/tin%79")[1] == {"model": "tiny"}
    assert TABLE.find("/v2/models/a%2Fb")[1] == {"model": "a/b"}  # one segment, never two
    assert TABLE.find("/v2/models/a%2Fb/versions/1/infer")[1]["model"] == "a/b"


def test_404_405_with_allow_and_head_served_by_get():
    with pytest.raises(HTTPError) as unknown:
        Router.handler(None, "GET")
    assert unknown.value.http_status == 404
    with pytest.raises(HTTPError) as method:
        Router.handler(TABLE.routes[0], "GET")
    assert method.value.http_status == 405 and method.value.headers == {"Allow": "POST"}
    assert Router.handler(TABLE.routes[1], "HEAD") is handler


def test_guards_cover_their_prefix_known_or_not():
    assert TABLE.guards_for("/admin/anything") == [handler] and TABLE.guards_for("/infer") == []


def test_the_head_gate_routes_a_complete_head_once_and_picks_its_pool():
    gate, settings = HeadGate(TABLE), HttpSettings()
    assert gate.check(b"POST /infer HTTP/1.1\r\nHost: a\r\n", settings) is None  # not complete yet
    data = b"POST /v2/models/m/versions/1/infer HTTP/1.1\r\nHost: a\r\n\r\nbody"
    length, routed = gate.check(data, settings)
    assert length == len(data) - len(b"body") and routed.head.method == "POST"
    assert (routed.route, routed.params, routed.pool) == (TABLE.routes[2], {"model": "m", "version": "1"}, INFERENCE)
    _, unknown = gate.check(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n", settings)
    assert unknown.route is None and unknown.pool == OTHER
    assert parse_head(data[:length], max_header_count=8).path == routed.head.path


@pytest.mark.parametrize("path", ["/v2/models//ready", "/v2/models/tiny/versions//config", "/admin/models//reload"])
def test_an_empty_segment_where_a_name_belongs_is_404(tiny_srv, path):
    method = "POST" if path.startswith("/admin/") else "GET"
    answer = requests.request(method, f"{tiny_srv.url}{path}", timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"error": "not found"})
