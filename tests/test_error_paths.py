"""Error paths a client can meet that `make coverage` showed unreached (issue 14): a client that
resets its connection mid-upload, ends a chunked body early, or frames an HTTP/1.0 body as
chunked; an empty path segment where a name belongs; an admin client address that is not an IP
address; statuses without a reason phrase."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import requests

from inferd.http.errors import HTTPError
from inferd.http.responses import error_response, render
from inferd.http.messages import Response
from inferd.routes.admin import is_loopback
from tests.support import config_for
from tests.test_server import Raw, counted


@pytest.fixture
def srv(serve, tiny_model_dir):
    return serve(config_for(tiny_model_dir, logging={"access_log": "false"}))


def in_flight(url: str) -> int:
    return requests.get(f"{url}/metrics?format=json", timeout=10).json()["requests_in_flight"]


def test_a_client_that_resets_mid_upload_costs_nothing_and_is_not_counted(srv):
    before = counted(srv.url, "/infer", "POST", 400)
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                 + b"\x89PNG" * 100)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the server's read fails with ECONNRESET
    deadline = time.monotonic() + 10
    while in_flight(srv.url) != 1:  # the metrics request itself
        assert time.monotonic() < deadline, "the reset request is still in flight"
        time.sleep(0.05)
    assert counted(srv.url, "/infer", "POST", 400) == before
    assert requests.get(f"{srv.url}/health", timeout=10).status_code == 200


def test_a_chunked_body_that_ends_early_is_400(srv):
    raw = Raw(srv.url)
    try:
        raw.send(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"10\r\n\x89PNG")
        raw.sock.shutdown(socket.SHUT_WR)
        answer = raw.response()
    finally:
        raw.close()
    assert answer.status == 400 and answer.json() == {"error": "chunked request body ended before its last chunk"}


@pytest.mark.parametrize("path", ["/v2/models//ready", "/v2/models/tiny/versions//config", "/admin/models//reload"])
def test_an_empty_segment_where_a_name_belongs_is_404(srv, path):
    method = "POST" if path.startswith("/admin/") else "GET"
    answer = requests.request(method, f"{srv.url}{path}", timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"error": "not found"})


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True), ("fe80::1%lo", False),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False), ("localhost", False), ("/run/inferd.sock", False),
])
def test_only_loopback_addresses_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_a_status_without_a_reason_phrase_and_a_bare_timeout():
    head = render(Response(599, {"error": "x"}), close=True).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 599 "
    timed_out = error_response(TimeoutError("socket read timed out"))
    assert (timed_out.status, timed_out.body) == (408, {"error": "socket read timed out"})
    busy = error_response(HTTPError(503, "later"))
    assert busy.headers["Retry-After"] == "1"


def test_transfer_encoding_in_an_http_10_request_is_400(srv):
    """RFC 9112 §6.1: an HTTP/1.0 recipient cannot know chunked framing; the request is refused."""
    raw = Raw(srv.url)
    try:
        answer = raw.send(b"POST /infer HTTP/1.0\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"0\r\n\r\n").response()
    finally:
        raw.close()
    assert (answer.status, answer.json()) == (400, {"error": "Transfer-Encoding in an HTTP/1.0 request"})
