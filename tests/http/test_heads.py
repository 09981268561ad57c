"""The request-head parser without sockets (inferd/http/heads.py), as h11's and CPython's suites
test theirs: where a head ends, what it says, and every refusal with its status and reason."""

from __future__ import annotations

import pytest

from inferd.http.errors import BodyTooLarge, ExpectationFailed, HeadersTooLarge, ProtocolError, RequestLineTooLong
from inferd.http.heads import CHUNKED, body_framing, head_length, parse_head

LIMITS = {"max_request_line": 64, "max_header_bytes": 256}


def parsed(text: str, max_header_count: int = 8):
    data = text.encode("latin-1")
    length = head_length(data, **LIMITS)
    assert length, "the head is complete"
    return parse_head(data[:length], max_header_count=max_header_count)


def test_a_head_ends_at_its_first_empty_line_crlf_or_bare_lf():
    assert head_length(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", **LIMITS) == len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head_length(b"GET / HTTP/1.1\nHost: a\n\n", **LIMITS) == len(b"GET / HTTP/1.1\nHost: a\n\n")
    assert head_length(b"GET / HTTP/1.1\r\nHost: a\r\n", **LIMITS) == 0  # not yet


def test_the_request_line_and_the_fields_have_limits():
    with pytest.raises(RequestLineTooLong) as line:
        head_length(b"GET /" + b"a" * 80, **LIMITS)  # no line end within the limit: refused at once
    assert line.value.http_status == 414
    with pytest.raises(HeadersTooLarge) as fields:
        head_length(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 60, **LIMITS)
    assert fields.value.http_status == 431
    with pytest.raises(HeadersTooLarge, match="more than 2 request header fields"):
        parsed("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", max_header_count=2)


def test_what_a_head_says():
    head = parsed("POST http://example.com/infer?top_k=3 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n"
                  "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert (head.method, head.target, head.path, head.query) == ("POST", "/infer?top_k=3", "/infer", "top_k=3")
    assert head.version == (1, 1) and head.keep_alive and head.expects_continue and head.declares_body
    assert head.headers.get("HOST") == "a"
    old = parsed("GET / HTTP/1.0\r\n\r\n")
    assert not old.keep_alive and not old.expects_continue and not old.declares_body
    assert parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not parsed("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive


@pytest.mark.parametrize("text, error, reason", [
    ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", ProtocolError, "malformed request line"),
    ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", ProtocolError, "malformed request method"),
    ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", ProtocolError, "unsupported HTTP version"),
    ("GET / HTTP/1.x\r\nHost: a\r\n\r\n", ProtocolError, "malformed HTTP version"),
    ("GET nowhere HTTP/1.1\r\nHost: a\r\n\r\n", ProtocolError, "malformed request target"),
    ("GET / HTTP/1.1\r\n\r\n", ProtocolError, "needs a Host header"),
    ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ProtocolError, "host header given more than once"),
    ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", ProtocolError, "obs-fold"),
    ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", ProtocolError, "malformed header line"),
    ("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", ProtocolError, "control character"),
    ("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", ExpectationFailed, "100-continue"),
])
def test_each_malformed_head_is_refused_with_its_reason(text, error, reason):
    with pytest.raises(error, match=reason) as refused:
        parsed(text)
    assert refused.value.http_status == (417 if error is ExpectationFailed else 400)


@pytest.mark.parametrize("fields, framing", [
    ("", None), ("Content-Length: 0\r\n", 0), ("Content-Length: 12\r\n", 12),
    ("Content-Length: 12\r\nContent-Length: 12\r\n", 12), ("Transfer-Encoding: chunked\r\n", CHUNKED),
])
def test_body_framing_from_the_head(fields, framing):
    assert body_framing(parsed(f"POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"), max_body_bytes=100) == framing


@pytest.mark.parametrize("head, error, reason", [
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", BodyTooLarge, "the limit is 100"),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", BodyTooLarge, "limit"),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ProtocolError, "invalid Content-Length"),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", ProtocolError, "invalid Content-Length"),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \u00b2\r\n\r\n", ProtocolError, "invalid Content-Length"),  # "²".isdigit()
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", ProtocolError, "only 'chunked'"),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ProtocolError, "both"),
    ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ProtocolError, "HTTP/1.0"),
])
def test_conflicting_or_oversized_framing_is_refused(head, error, reason):
    with pytest.raises(error, match=reason):
        body_framing(parsed(head), max_body_bytes=100)
