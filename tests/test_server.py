"""The HTTP layer over real sockets: every endpoint, every bad input, slow and idle clients, caps,
overload, admin authorization, integrity under concurrency, and what reaches the logs.

Servers run in this process on 127.0.0.1:0 (the `serve` fixture); the tiny model answers with
the grid colour nearest an image's mean colour, so every solid-colour image has a known label.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from PIL import Image

from inferd.http.errors import HTTPError
from inferd.http.exchange import printable
from inferd.routes.admin import authorize_admin
from tests.support import EXPECTED_TOP1, config_for, start_in_process

LEVELS = 10


# -- helpers ---------------------------------------------------------------------------------------

def grid_colour(i: int, j: int, k: int) -> tuple[int, int, int]:
    return tuple(round(v * 255 / (LEVELS - 1)) for v in (i, j, k))


def tiny_label(rgb) -> str:
    """The tiny model's top-1 label for a solid colour (models/onnx_graphs.py: tiny_class)."""
    i, j, k = (min(max(round(v / 255 * (LEVELS - 1)), 0), LEVELS - 1) for v in rgb)
    return f"r{i}g{j}b{k}"


def encode(rgb, fmt: str = "PNG", size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A 60-odd byte PNG whose header declares width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def noise_png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), random.Random(1).randbytes(size * size * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(parts, boundary: str = "inferd-test-boundary") -> tuple[str, bytes]:
    """(content type, body) for parts of (field name, filename, data)."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def request_bytes(method: str, target: str, headers: dict | None = None, body: bytes = b"",
                  length: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    headers = dict(headers or {})
    if length and body and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Raw:
    """A client on a plain socket: sends bytes, reads whole responses, tells whether it was closed."""

    def __init__(self, url: str, timeout: float = 10.0):
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> "Raw":
        self.sock.sendall(data)
        return self

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a whole response")
        self.buffer += data

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(status, headers, body)

    def closed(self, within: float = 3.0) -> bool:
        """True if the server closes the connection within `within` seconds (FIN or reset)."""
        self.sock.settimeout(within)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def exchange(url: str, data: bytes) -> tuple[Response, bool]:
    """Send one request on a new connection; the response and whether the server closed after it."""
    raw = Raw(url)
    try:
        response = raw.send(data).response()
        return response, raw.closed(within=0.3)
    finally:
        raw.close()


def counted(url: str, route: str, method: str, code: int) -> float:
    """inferd_http_requests_total for one series, from a Prometheus scrape."""
    text = requests.get(f"{url}/metrics?format=prometheus", timeout=10).text
    pattern = (rf'^inferd_http_requests_total\{{route="{re.escape(route)}",method="{method}",'
               rf'code="{code}"\}} (\S+)$')
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


SMALL_LIMITS = {"max_body_bytes": 2_000_000, "max_files_per_batch": 4, "max_parts": 8,
                "max_header_count": 20, "max_header_bytes": 2048, "max_request_line": 512,
                "allowed_formats": "PNG JPEG WEBP GIF"}


@pytest.fixture
def srv(serve, tiny_model_dir):
    return serve(config_for(tiny_model_dir, limits=SMALL_LIMITS))


# -- endpoints -------------------------------------------------------------------------------------

def test_infer_multipart_and_raw_body_name_the_colour(srv):
    red, teal = grid_colour(9, 0, 0), grid_colour(0, 5, 5)
    answer = requests.post(f"{srv.url}/infer", files={"file": ("red.png", encode(red))}, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["predictions"][0]["label"] == tiny_label(red) == "r9g0b0"
    assert len(body["predictions"]) == 5 and body["model"] == "tiny-10"
    raw = requests.post(f"{srv.url}/infer?top_k=3", data=encode(teal, "JPEG"),
                        headers={"Content-Type": "image/jpeg"}, timeout=10).json()
    assert [p["label"] for p in raw["predictions"]][:1] == [tiny_label(teal)] and len(raw["predictions"]) == 3


def test_batch_keeps_order_and_fails_only_bad_entries(srv):
    colours = [grid_colour(1, 2, 3), grid_colour(9, 9, 0), grid_colour(0, 0, 9)]
    files = [("files", (f"{i}.png", encode(c))) for i, c in enumerate(colours)]
    files.insert(1, ("files", ("notes.txt", b"not an image")))
    body = requests.post(f"{srv.url}/infer/batch", files=files, timeout=10).json()
    assert (body["total_images"], body["successful"], body["failed"]) == (4, 3, 1)
    labels = [r["predictions"][0]["label"] if r["predictions"] else None for r in body["results"]]
    assert labels == [tiny_label(colours[0]), None, tiny_label(colours[1]), tiny_label(colours[2])]
    assert body["results"][1]["status"] == 415 and body["results"][1]["filename"] == "notes.txt"


def test_health_metrics_and_head(srv):
    health = requests.get(f"{srv.url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    head = Raw(srv.url).send(request_bytes("HEAD", "/health"))
    response = head.response(head_only=True)
    assert response.status == 200 and response.body == b"" and int(response.headers["content-length"]) > 0
    head.close()
    assert requests.get(f"{srv.url}/metrics", timeout=5).json()["uptime_seconds"] >= 0
    text = requests.get(f"{srv.url}/metrics", headers={"Accept": "text/plain;version=0.0.4"}, timeout=5)
    assert text.headers["Content-Type"].startswith("text/plain") and "inferd_http_requests_total" in text.text
    bad = requests.get(f"{srv.url}/metrics?format=xml", timeout=5)
    assert bad.status_code == 400 and "error" in bad.json()


def test_keep_alive_pipelining_and_http10(srv):
    raw = Raw(srv.url).send(request_bytes("GET", "/health") + request_bytes("GET", "/nowhere")
                            + request_bytes("GET", "/health"))
    assert [raw.response().status for _ in range(3)] == [200, 404, 200]
    assert not raw.closed(within=0.3)
    raw.close()
    old, closed = exchange(srv.url, b"GET /health HTTP/1.0\r\n\r\n")
    assert old.status == 200 and old.headers["connection"] == "close" and closed
    kept = Raw(srv.url).send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert kept.response().headers["connection"] == "keep-alive" and not kept.closed(within=0.3)
    kept.close()


def test_expect_100_continue(srv):
    data = encode(grid_colour(0, 9, 0))
    raw = Raw(srv.url).send(request_bytes("POST", "/infer", {"Content-Type": "image/png", "Expect": "100-continue",
                                                            "Content-Length": str(len(data))}))
    assert raw.response().status == 100
    raw.send(data)
    assert raw.response().json()["predictions"][0]["label"] == "r0g9b0"
    raw.close()
    refused, closed = exchange(srv.url, request_bytes("POST", "/infer", {
        "Content-Type": "image/png", "Expect": "100-continue", "Content-Length": "999999999"}))
    assert refused.status == 413 and closed  # no 100: the client never has to send the body


def test_chunked_upload_works_within_the_same_limits(srv):
    ctype, body = multipart([("file", "b.png", encode(grid_colour(0, 0, 9)))])
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    request = request_bytes("POST", "/infer", {"Content-Type": ctype, "Transfer-Encoding": "chunked"},
                            chunks + b"0\r\nX-Trailer: yes\r\n\r\n")
    raw = Raw(srv.url).send(request + request_bytes("GET", "/health"))
    assert raw.response().json()["predictions"][0]["label"] == "r0g0b9"
    assert raw.response().status == 200  # the pipelined request after the chunked body
    raw.close()
    too_big = request_bytes("POST", "/infer", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                            b"%x\r\n" % 3_000_000)
    response, closed = exchange(srv.url, too_big)
    assert response.status == 413 and closed


# -- the bad-input table ---------------------------------------------------------------------------

def _bad_inputs():
    image = encode(grid_colour(3, 3, 3))
    ctype, one = multipart([("file", "a.png", image)])
    wrong_field_type, wrong_field = multipart([("image", "a.png", image)])
    text_type, text_part = multipart([("file", "notes.txt", b"shopping list\n")])
    trunc_type, truncated = multipart([("file", "t.png", noise_png()[:600])])
    bomb_type, bomb = multipart([("file", "bomb.png", png_bomb())])
    bmp_type, bmp = multipart([("file", "a.bmp", encode((1, 2, 3), "BMP"))])
    files_type, five_files = multipart([("files", f"{i}.png", image) for i in range(5)])
    parts_type, nine_parts = multipart([("note", None, b"x")] * 9)
    post = lambda target, headers, body=b"", **kw: request_bytes("POST", target, headers, body, **kw)  # noqa: E731
    # (id, request, status, substring of the error, route label, method label, connection closed:
    # True when body bytes may be left unread, None when that depends on how the bytes arrived)
    return [
        ("no-body", post("/infer", {"Content-Type": "image/png", "Content-Length": "0"}), 400, "empty image",
         "/infer", "POST", False),
        ("no-body-multipart", post("/infer", {"Content-Type": ctype, "Content-Length": "0"}), 400, "boundary",
         "/infer", "POST", False),
        ("wrong-content-type", post("/infer", {"Content-Type": "text/plain"}, b"hello"), 415, "multipart/form-data",
         "/infer", "POST", True),
        ("no-boundary", post("/infer", {"Content-Type": "multipart/form-data"}, one), 400, "boundary",
         "/infer", "POST", True),
        ("malformed-multipart", post("/infer", {"Content-Type": ctype}, b"--inferd-test-boundary\r\nNo-Colon\r\n\r\nx"),
         400, "header", "/infer", "POST", None),
        ("unterminated-multipart", post("/infer", {"Content-Type": ctype}, one[:-30]), 400, "final boundary",
         "/infer", "POST", False),
        ("truncated-image", post("/infer", {"Content-Type": trunc_type}, truncated), 400, "image",
         "/infer", "POST", False),
        ("non-image", post("/infer", {"Content-Type": text_type}, text_part), 415, "not an image",
         "/infer", "POST", False),
        ("format-not-allowed", post("/infer", {"Content-Type": bmp_type}, bmp), 415, "not an image",
         "/infer", "POST", False),
        ("decompression-bomb", post("/infer", {"Content-Type": bomb_type}, bomb), 413, "20000x20000",
         "/infer", "POST", False),
        ("wrong-field-name", post("/infer", {"Content-Type": wrong_field_type}, wrong_field), 400, "named 'file'",
         "/infer", "POST", False),
        ("top-k-zero", post("/infer?top_k=0", {"Content-Type": ctype}, one), 400, "top_k", "/infer", "POST", True),
        ("top-k-huge", post("/infer?top_k=1001", {"Content-Type": ctype}, one), 400, "top_k", "/infer", "POST", True),
        ("top-k-text", post("/infer?top_k=five", {"Content-Type": ctype}, one), 400, "top_k", "/infer", "POST", True),
        ("not-found", request_bytes("GET", "/v2/models"), 404, "not found", "other", "GET", False),
        ("method-not-allowed", request_bytes("GET", "/infer"), 405, "not allowed", "/infer", "GET", False),
        ("length-required", post("/infer", {"Content-Type": "image/png"}), 411, "Content-Length", "/infer", "POST",
         False),
        ("body-too-large", post("/infer", {"Content-Type": "image/png", "Content-Length": "2000001"}), 413,
         "limit is 2000000", "/infer", "POST", True),
        ("content-length-huge", post("/infer", {"Content-Type": "image/png", "Content-Length": "9" * 40}), 413,
         "limit", "/infer", "POST", True),
        ("too-many-files", post("/infer/batch", {"Content-Type": files_type}, five_files), 413, "too many files",
         "/infer/batch", "POST", None),
        ("too-many-parts", post("/infer/batch", {"Content-Type": parts_type}, nine_parts), 413, "max_parts",
         "/infer/batch", "POST", None),
        ("content-length-invalid", post("/infer", {"Content-Type": "image/png", "Content-Length": "12abc"}, b"x"),
         400, "Content-Length", "/infer", "POST", True),
        ("content-length-conflict", b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
         b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, "Content-Length", "/infer", "POST", True),
        ("te-and-cl", post("/infer", {"Content-Type": "image/png", "Transfer-Encoding": "chunked",
                                      "Content-Length": "5"}, b"0\r\n\r\n", length=False), 400, "both",
         "/infer", "POST", True),
        ("te-gzip", post("/infer", {"Content-Type": "image/png", "Transfer-Encoding": "gzip, chunked"},
                         b"0\r\n\r\n", length=False), 400, "Transfer-Encoding", "/infer", "POST", True),
        ("bad-chunk", post("/infer", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                           b"zz\r\nhello\r\n0\r\n\r\n", length=False), 400, "chunk", "/infer", "POST", True),
        ("bad-request-line", b"GET /health\r\n\r\n", 400, "request line", "other", "other", True),
        ("bad-version", b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 400, "version", "other", "other", True),
        ("no-host", b"GET /health HTTP/1.1\r\n\r\n", 400, "Host", "other", "other", True),
        ("obs-fold", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n continued\r\n\r\n", 400, "folded",
         "other", "other", True),
        ("space-before-colon", b"GET /health HTTP/1.1\r\nHost : t\r\n\r\n", 400, "header", "other", "other", True),
        ("control-char", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400, "control",
         "other", "other", True),
        ("expect-other", b"GET /health HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417, "Expect",
         "other", "other", True),
        ("request-line-too-long", b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "request line",
         "other", "other", True),
        ("request-line-endless", b"GET /" + b"a" * 2000, 414, "request line", "other", "other", True),
        ("too-many-headers", request_bytes("GET", "/health", {f"X-H{i}": "1" for i in range(25)}), 431,
         "more than 20", "other", "other", True),
        ("headers-too-large", request_bytes("GET", "/health", {"X-Big": "a" * 3000}), 431, "2048 bytes",
         "other", "other", True),
    ]


BAD_INPUTS = _bad_inputs()


def test_bad_input_table_answers_json_counts_and_closes(srv):
    for case, request, status, message, route, method, closed in BAD_INPUTS:
        before = counted(srv.url, route, method, status)
        response, was_closed = exchange(srv.url, request)
        assert response.status == status, (case, response)
        assert response.headers["content-type"] == "application/json", case
        error = response.json()["error"]
        assert message.lower() in error.lower(), (case, error)
        assert "Traceback" not in error and "/tmp" not in error and "site-packages" not in error, case
        if closed is not None:
            assert was_closed == closed, (case, "closed" if was_closed else "kept open")
            assert response.headers.get("connection") == ("close" if closed else None), case
        if status == 405:
            assert response.headers["allow"] == "POST"
        wait_until(lambda: counted(srv.url, route, method, status) == before + 1, what=f"{case} counted")
    assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200


def test_oversized_body_sent_in_full_still_gets_its_413(srv):
    """The client writes the whole body before reading: a lingering close lets it read the 413."""
    answer = requests.post(f"{srv.url}/infer", data=b"\0" * 5_000_000, headers={"Content-Type": "image/png"},
                           timeout=30)
    assert answer.status_code == 413 and answer.headers["Connection"] == "close"
    session = requests.Session()
    for _ in range(3):
        unread = session.post(f"{srv.url}/infer?top_k=0", files={"file": ("a.png", encode((0, 0, 0)))}, timeout=10)
        assert unread.status_code == 400
        assert session.get(f"{srv.url}/health", timeout=5).status_code == 200


def test_413_from_limits_are_decided_before_the_body_arrives(srv):
    raw = Raw(srv.url).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                            "Content-Length": "2000001"}))
    started = time.monotonic()
    assert raw.response().status == 413 and time.monotonic() - started < 2.0
    assert raw.closed()
    raw.close()


def test_server_errors_expose_no_internals(serve, tiny_model_dir, caplog):
    def broken_reload():
        raise RuntimeError("/secret/place/model.onnx exploded in libfoo.so")
    srv = serve(config_for(tiny_model_dir), reload_model=broken_reload)
    with caplog.at_level(logging.ERROR, logger="inferd"):
        answer = requests.post(f"{srv.url}/admin/reload", timeout=10)
    assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
    assert "exploded" in caplog.text and "Traceback" in caplog.text  # the operator still sees it all


# -- admin -----------------------------------------------------------------------------------------

@pytest.fixture
def reloadable(serve, tiny_model_dir):
    """A server whose reloads run for real (on the stand-in main loop); calls are recorded."""
    calls = []
    config = config_for(tiny_model_dir, server={"admin_token": "s3cret-token"})

    def reload_model(*args, **kwargs):
        calls.append((args, kwargs))
        return srv.daemon.reload()

    srv = serve(config, reload_model=reload_model)
    srv.calls = calls
    return srv


def test_admin_token_required_with_bearer(reloadable):
    url = f"{reloadable.url}/admin/reload"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"},
                    {"Authorization": "s3cret-token"}, {"Authorization": "Bearer s3cret-token-and-more"}):
        denied = requests.post(url, headers=headers, timeout=10)
        assert denied.status_code == 401, headers
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.post(f"{reloadable.url}/admin/other", timeout=10).status_code == 401
    assert reloadable.calls == []
    allowed = requests.post(url, headers={"Authorization": "bearer  s3cret-token "}, timeout=60)
    assert allowed.status_code == 200 and allowed.json()["message"] == "Model reloaded successfully"


def test_reload_takes_nothing_from_the_request(reloadable, tmp_path):
    answer = requests.post(f"{reloadable.url}/admin/reload?path=/etc&model=/tmp/evil",
                           json={"path": str(tmp_path), "model": "/tmp/evil.onnx"},
                           headers={"Authorization": "Bearer s3cret-token"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["model"]["name"] == "tiny-10"
    assert reloadable.calls == [((), {})]


def test_failed_reload_answer_names_no_paths(serve, tiny_model_dir):
    message = (f"{tiny_model_dir}/model.onnx: onnxruntime cannot load it: [ONNXRuntimeError] : 7 : "
               f"INVALID_PROTOBUF; see /etc/inferd/inferd.conf")
    srv = serve(config_for(tiny_model_dir), reload_model=lambda: (False, message))
    answer = requests.post(f"{srv.url}/admin/reload", timeout=10)
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert "previous model keeps serving" in error and "model.onnx: onnxruntime cannot load it" in error
    assert str(tiny_model_dir) not in error and "/etc" not in error and "inferd.conf" in error


@pytest.mark.parametrize("token, authorization, host, status", [
    ("", None, "127.0.0.1", None),
    ("", None, "127.8.9.10", None),
    ("", None, "::1", None),
    ("", None, "::ffff:127.0.0.1", None),
    ("", None, "10.1.2.3", 403),
    ("", None, "::ffff:10.1.2.3", 403),
    ("", None, "fe80::1%eth0", 403),
    ("", "Bearer anything", "192.0.2.7", 403),
    ("tok", None, "127.0.0.1", 401),
    ("tok", "Bearer tok", "10.1.2.3", None),
    ("tok", "Bearer tok2", "10.1.2.3", 401),
    ("tok", "Bearer", "10.1.2.3", 401),
    ("tok", "BEARER tok", "2001:db8::1", None),
])
def test_authorize_admin(token, authorization, host, status):
    if status is None:
        authorize_admin(token, authorization, host)
    else:
        with pytest.raises(HTTPError) as raised:
            authorize_admin(token, authorization, host)
        assert raised.value.http_status == status
        assert ("WWW-Authenticate" in raised.value.headers) == (status == 401)


NETNS_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(sys.argv[3].encode().decode("unicode_escape").encode("latin-1"))
data = b""
while b"\\r\\n\\r\\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\\r\\n", 1)[0].decode())
"""


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair: (host-side address, run(argv)).

    Proves the loopback rule with a real non-loopback peer, without exposing a port to any
    real network: the server binds the host end of the veth only."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name, tag = f"inferd-t{os.getpid()}", f"{os.getpid() % 200 + 20}"
    host_if, ns_if, host_ip, ns_ip = f"ifdh{tag}", f"ifdn{tag}", f"10.231.{tag}.1", f"10.231.{tag}.2"
    setup = [["ip", "netns", "add", name],
             ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name],
             ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
             ["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if],
             ["ip", "-n", name, "link", "set", ns_if, "up"]]
    try:
        for command in setup:
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                pytest.skip(f"cannot set up a network namespace: {result.stderr.strip()}")

        def run(*argv: str) -> str:
            return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.strip()
        yield host_ip, run
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_admin_from_a_real_non_loopback_address(netns, tiny_model_dir):
    host_ip, run = netns
    for token, expected in (("", "403"), ("tok", "401")):
        config = config_for(tiny_model_dir, server={"admin_token": token})
        served = start_in_process(config, reload=lambda: (True, "ok"), address=(host_ip, 0))
        try:
            port = str(served.server.server_address[1])
            status = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port,
                         r"POST /admin/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            assert status.split(" ")[1] == expected, status
            health = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port, r"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert health.split(" ")[1] == "200"
            if token:
                allowed = run(sys.executable, "-c", NETNS_CLIENT, host_ip, port,
                              r"POST /admin/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer tok\r\n"
                              r"Content-Length: 0\r\n\r\n")
                assert allowed.split(" ")[1] == "200"
        finally:
            served.close()


# -- slow and idle clients -------------------------------------------------------------------------

FAST_TIMEOUTS = {"header_timeout": 1.0, "idle_timeout": 1.0, "body_timeout": 1.0, "min_body_rate": 1000}


def trickle(raw: Raw, data: bytes, every: float, stop_after: float) -> tuple[float, bool]:
    """Send one byte every `every` seconds until the server cuts us off; (seconds, cut off)."""
    started = time.monotonic()
    raw.sock.settimeout(every)
    for byte in data:
        if time.monotonic() - started > stop_after:
            break
        try:
            raw.sock.send(bytes([byte]))
            raw.sock.recv(1, socket.MSG_PEEK)  # an answer (408) or EOF: we were cut off
            return time.monotonic() - started, True
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started, True
    return time.monotonic() - started, False


@pytest.mark.parametrize("where", ["request-line", "headers", "body"])
def test_slowloris_is_cut_off(serve, tiny_model_dir, where):
    srv = serve(config_for(tiny_model_dir, limits=FAST_TIMEOUTS))
    request = request_bytes("POST", "/infer", {"Content-Type": "image/png", "X-Padding": "p" * 50},
                            encode((0, 0, 0)))
    split = {"request-line": 3, "headers": request.index(b"X-Padding"), "body": request.index(b"\r\n\r\n") + 6}[where]
    raw = Raw(srv.url).send(request[:split])
    seconds, cut = trickle(raw, request[split:], every=0.3, stop_after=6.0)
    assert cut and seconds < 3.5, (where, seconds)
    raw.sock.settimeout(2)
    answer = raw.sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer
    assert raw.closed()
    raw.close()
    assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200


def test_idle_connections_are_closed_after_idle_timeout(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, limits=FAST_TIMEOUTS))
    silent = Raw(srv.url)
    used = Raw(srv.url).send(request_bytes("GET", "/health"))
    assert used.response().status == 200
    started = time.monotonic()
    assert silent.closed(within=4) and used.closed(within=4)
    assert time.monotonic() - started < 3.0
    wait_until(lambda: srv.server.room.open_connections() == 0, what="connections to be released")


def test_steady_slow_upload_is_not_cut_off(serve, tiny_model_dir):
    """min_body_rate extends the body deadline: 1000 B/s at least 1 s + bytes/1000 s."""
    srv = serve(config_for(tiny_model_dir, limits=FAST_TIMEOUTS))
    data = encode((255, 255, 255), "BMP", size=40)  # 4854 bytes
    raw = Raw(srv.url).send(request_bytes("POST", "/infer", {"Content-Type": "image/bmp",
                                                            "Content-Length": str(len(data))}))
    started = time.monotonic()
    for i in range(0, len(data), 200):  # 2000 B/s for ~2.4 s: past body_timeout, above min_body_rate
        raw.send(data[i:i + 200])
        time.sleep(0.1)
    assert time.monotonic() - started > 2.0
    assert raw.response().json()["predictions"][0]["label"] == "r9g9b9"
    raw.close()


def test_hundreds_of_idle_and_slow_connections_do_not_delay_good_clients(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, limits={"header_timeout": 60, "idle_timeout": 60}))
    port = int(srv.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    stop = threading.Event()

    def drip():
        i = 0
        while not stop.wait(0.2):
            for sock in slow:
                try:
                    sock.send(b"POST /infer HTTP/1.1\r\nX: "[i:i + 1] or b"a")
                except OSError:
                    pass
            i += 1
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        wait_until(lambda: srv.server.room.parked() >= 450, what="450 parked connections")
        image = encode(grid_colour(4, 5, 6))
        latencies = []
        session = requests.Session()
        for i in range(40):
            client = session if i % 2 else requests
            started = time.monotonic()
            answer = client.post(f"{srv.url}/infer", files={"file": ("x.png", image)}, timeout=10)
            latencies.append(time.monotonic() - started)
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "r4g5b6"
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.25 and latencies[-1] < 1.0, latencies
        assert srv.server.room.open_connections() >= 450
        assert srv.server.threads.threads() <= 80  # threads follow requests, not connections
    finally:
        stop.set()
        dripper.join()
        for sock in idle + slow:
            sock.close()


def test_connection_cap_displaces_idle_connections_first(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, server={"max_connections": 20}, limits={"idle_timeout": 60}))
    idle = [Raw(srv.url) for _ in range(20)]
    wait_until(lambda: srv.server.room.parked() == 20, what="20 parked connections")
    answer = requests.get(f"{srv.url}/health", timeout=5)
    assert answer.status_code == 200
    assert idle[0].closed(within=3)  # the longest idle made room
    assert srv.server.room.open_connections() <= 20
    for raw in idle:
        raw.close()


def hold(url: str) -> Raw:
    """A request whose head is complete and whose body is not: it keeps a handler busy."""
    return Raw(url).send(request_bytes("POST", "/infer", {"Content-Type": "image/png", "Content-Length": "100"},
                                       b"x"))


def test_beyond_the_request_cap_503_with_retry_after_and_health_still_answers(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, limits={"max_inference_requests": 2, "max_other_requests": 2,
                                                   "body_timeout": 30}))
    holders = [hold(srv.url) for _ in range(2)]
    wait_until(lambda: srv.server.metrics.snapshot_json()["requests_in_flight"] == 2, what="two held requests")
    busy, closed = exchange(srv.url, request_bytes("POST", "/infer", {"Content-Type": "image/png"}, b"x"))
    assert busy.status == 503 and busy.headers["retry-after"] == "1" and closed
    assert "requests in progress" in busy.json()["error"]
    for _ in range(3):
        assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200  # threads of its own
    for raw in holders:
        raw.send(b"y" * 99)
        assert raw.response().status == 415
        raw.close()


def test_when_every_connection_is_busy_a_new_one_gets_503(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, server={"max_connections": 2}, limits={"body_timeout": 30}))
    holders = [hold(srv.url) for _ in range(2)]
    wait_until(lambda: srv.server.metrics.snapshot_json()["requests_in_flight"] == 2, what="two held requests")
    refused = Raw(srv.url)
    response = refused.response()
    assert response.status == 503 and "too many connections" in response.json()["error"]
    assert response.headers["retry-after"] == "1" and refused.closed()
    for raw in holders:
        raw.send(b"y" * 99)
        assert raw.response().status == 415
        raw.close()
    assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200


# -- overload --------------------------------------------------------------------------------------

def test_full_queue_gives_503_at_once(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, batching={"max_queue_size": 1}))
    files = [("files", (f"{i}.png", encode((i, i, i)))) for i in range(2)]
    started = time.monotonic()
    answer = requests.post(f"{srv.url}/infer/batch", files=files, timeout=10)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert "queue is full" in answer.json()["error"] and time.monotonic() - started < 1.0


@pytest.mark.slow
def test_health_and_metrics_stay_fast_under_full_load(serve, default_model_dir, images):
    srv = serve(config_for(default_model_dir, batching={"max_queue_size": 4, "max_batch_size": 4},
                           limits={"max_inference_requests": 8}))
    photo = images["cat.jpg"]
    stop = threading.Event()
    outcomes: list[int] = []

    def hammer():
        session = requests.Session()
        while not stop.is_set():
            outcomes.append(session.post(f"{srv.url}/infer", files={"file": ("c.jpg", photo)}, timeout=30).status_code)
    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(12)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: 503 in outcomes, timeout=30, what="the queue to overflow")
        slowest = 0.0
        for _ in range(20):
            for path in ("/health", "/metrics", "/metrics?format=prometheus"):
                started = time.monotonic()
                assert requests.get(f"{srv.url}{path}", timeout=5).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, slowest
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert set(outcomes) <= {200, 503} and outcomes.count(200) > 0


# -- integrity -------------------------------------------------------------------------------------

def test_every_answer_belongs_to_its_own_request(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, batching={"max_batch_size": 8, "max_queue_delay_ms": 5}))
    palette = [grid_colour(i, j, k) for i in range(0, 10, 3) for j in range(0, 10, 3) for k in range(0, 10, 4)]
    formats = ["PNG", "JPEG", "WEBP", "GIF"]
    encoded = {(c, f): encode(c, f) for c in palette for f in ("PNG", "WEBP", "GIF")}
    encoded.update({(c, "JPEG"): encode(c, "JPEG") for c in palette})

    def client(seed: int) -> list[str]:
        rng = random.Random(seed)
        session = requests.Session()
        problems = []
        for n in range(12):
            picks = [(rng.choice(palette), rng.choice(formats)) for _ in range(rng.randint(1, 3))]
            if len(picks) == 1 and n % 2:
                (colour, fmt), = picks
                body = session.post(f"{srv.url}/infer", data=encoded[colour, fmt],
                                    headers={"Content-Type": f"image/{fmt.lower()}"}, timeout=30).json()
                got = [body["predictions"][0]["label"]]
            elif len(picks) == 1:
                (colour, fmt), = picks
                body = requests.post(f"{srv.url}/infer", files={"file": ("x", encoded[colour, fmt])}, timeout=30).json()
                got = [body["predictions"][0]["label"]]
            else:
                files = [("files", (f"{i}", encoded[p])) for i, p in enumerate(picks)]
                body = session.post(f"{srv.url}/infer/batch", files=files, timeout=30).json()
                got = [r["predictions"][0]["label"] for r in body["results"]]
            want = [tiny_label(colour) for colour, _ in picks]
            if got != want:
                problems.append(f"client {seed} request {n}: sent {want}, got {got}")
        return problems

    with ThreadPoolExecutor(32) as pool:
        problems = [p for result in pool.map(client, range(32)) for p in result]
    assert problems == []
    batches = requests.get(f"{srv.url}/metrics", timeout=5).json()["batches"]
    assert batches["average_size"] > 1.0  # the answers were really computed in shared batches


@pytest.mark.slow
def test_real_photos_under_concurrency_keep_their_labels(serve, default_model_dir, images):
    srv = serve(config_for(default_model_dir))
    names = sorted(EXPECTED_TOP1)

    def client(seed: int) -> list[str]:
        rng = random.Random(seed)
        problems = []
        session = requests.Session()
        for _ in range(3):
            name = rng.choice(names)
            top = session.post(f"{srv.url}/infer", files={"file": (name, images[name])},
                               timeout=60).json()["predictions"][0]["label"]
            if top not in EXPECTED_TOP1[name]:
                problems.append(f"{name}: {top}")
        return problems

    with ThreadPoolExecutor(12) as pool:
        assert [p for result in pool.map(client, range(12)) for p in result] == []


# -- logs ------------------------------------------------------------------------------------------

def test_client_strings_cannot_forge_log_lines(srv, caplog):
    caplog.set_level(logging.INFO, logger="inferd.access")
    exchange(srv.url, b"GET /x\x1b[31m HTTP/1.1\r\nHost: t\r\n\r\n")
    exchange(srv.url, request_bytes("GET", "/a%0D%0AINFO%20forged?q=\\x"))
    ctype, body = multipart([("file", 'evil\r\n2026 INFO forged.png', b"\x00")])
    requests.post(f"{srv.url}/infer", data=body, headers={"Content-Type": ctype}, timeout=10)
    def access_lines():  # a line is logged just after its answer is sent
        return [record.getMessage() for record in caplog.records if record.name == "inferd.access"]
    wait_until(lambda: len(access_lines()) >= 3, what="three access log lines")
    lines = access_lines()
    assert len(lines) == 3
    assert all("\n" not in line and "\r" not in line and "\x1b" not in line for line in lines)
    assert "/a%0D%0AINFO%20forged?q=\\\\x" in lines[1]
    assert printable("a\nb\x1b[0m\u00e9\\") == "a\\nb\\x1b[0m\\xe9\\\\"


def test_draining_closes_each_connection_after_its_answer(srv):
    srv.server.control.draining = True
    raw = Raw(srv.url).send(request_bytes("GET", "/health"))
    response = raw.response()
    assert response.status == 503 and response.json()["status"] == "draining"
    assert response.headers["connection"] == "close" and raw.closed()
    raw.close()
    srv.server.control.draining = False
