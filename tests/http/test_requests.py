"""Requests and their answers over real sockets, against an in-process server with the tiny model:
every endpoint, keep-alive and pipelining, the table of bad inputs, internal errors that
show nothing, draining, and what reaches the logs."""

from __future__ import annotations


import logging
import requests
from inferd.http.errors import HTTPError
from inferd.http.exchange import printable
from tests.support import (config_for, counted, encode, exchange, grid_colour, multipart, noise_png, png_bomb, Raw,
    request_bytes, tiny_label, wait_until)
from inferd.http.responses import error_response, render
from inferd.http.messages import Response


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
    first = requests.get(f"{srv.url}/metrics", timeout=5).json()["uptime_seconds"]
    second = requests.get(f"{srv.url}/metrics", timeout=5).json()["uptime_seconds"]
    assert 0 < first < second < 60  # this test's own server, counting from its start
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


def test_server_errors_expose_no_internals(serve, tiny_model_dir, caplog):
    def broken_reload():
        raise RuntimeError("/secret/place/model.onnx exploded in libfoo.so")
    srv = serve(config_for(tiny_model_dir), reload_model=broken_reload)
    with caplog.at_level(logging.ERROR, logger="inferd"):
        answer = requests.post(f"{srv.url}/admin/reload", timeout=10)
    assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
    assert "exploded" in caplog.text and "Traceback" in caplog.text  # the operator still sees it all


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


def test_a_status_without_a_reason_phrase_and_a_bare_timeout():
    head = render(Response(599, {"error": "x"}), close=True).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 599 "
    timed_out = error_response(TimeoutError("socket read timed out"))
    assert (timed_out.status, timed_out.body) == (408, {"error": "socket read timed out"})
    busy = error_response(HTTPError(503, "later"))
    assert busy.headers["Retry-After"] == "1"
