"""Request bodies over real sockets: 100 Continue, chunked uploads, sizes decided before the
body arrives, tiny chunks, bodies cut short, a client that resets mid-upload."""

from __future__ import annotations


import socket
import struct
import time
import requests
from tests.support import (config_for, counted, encode, exchange, grid_colour, multipart, peak_rss_mb, Raw,
    request_bytes)


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


def test_a_body_of_tiny_chunks_is_refused_after_the_free_chunks(serve, tiny_model_dir):
    """Before: 16 MiB of 2-byte chunks were all read (RSS 251 -> 1353 MiB over 26 s). Now the body
    is refused once FREE_CHUNKS chunks average less than MIN_AVERAGE_CHUNK bytes."""
    srv = serve(config_for(tiny_model_dir, limits={"max_body_bytes": 16 * 1024 * 1024}))
    raw = Raw(srv.url, timeout=20).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                                         "Transfer-Encoding": "chunked"}))
    try:
        for _ in range(100):  # 100 x 500 two-byte chunks, and no last chunk: only a refusal ends it
            raw.send(b"2\r\nab\r\n" * 500)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = raw.response()
    raw.close()
    assert answer.status == 400 and "per chunk" in answer.json()["error"]




def test_a_chunked_body_costs_its_size_not_its_chunk_count(start_daemon, tiny_model_dir):
    """8 MiB in 256-byte chunks (the smallest average allowed): peak RSS grows by no more than a
    small multiple of the body."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[logging]\naccess_log = false\n")
    before, _ = peak_rss_mb(daemon.proc.pid)
    chunk = b"100\r\n" + b"\xab" * 256 + b"\r\n"
    raw = Raw(daemon.url, timeout=60).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                                            "Transfer-Encoding": "chunked"}))
    for _ in range(32):
        raw.send(chunk * 1024)  # 32 x 1024 chunks of 256 bytes = 8 MiB
    answer = raw.send(b"0\r\n\r\n").response()
    raw.close()
    assert answer.status == 415  # read whole, then found not to be an image
    after, _ = peak_rss_mb(daemon.proc.pid)
    assert after - before < 3 * 8 + 16, (before, after)


def in_flight(url: str) -> int:
    return requests.get(f"{url}/metrics?format=json", timeout=10).json()["requests_in_flight"]


def test_a_client_that_resets_mid_upload_costs_nothing_and_is_not_counted(tiny_srv):
    before = counted(tiny_srv.url, "/infer", "POST", 400)
    port = int(tiny_srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                 + b"\x89PNG" * 100)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the server's read fails with ECONNRESET
    deadline = time.monotonic() + 10
    while in_flight(tiny_srv.url) != 1:  # the metrics request itself
        assert time.monotonic() < deadline, "the reset request is still in flight"
        time.sleep(0.05)
    assert counted(tiny_srv.url, "/infer", "POST", 400) == before
    assert requests.get(f"{tiny_srv.url}/health", timeout=10).status_code == 200


def test_a_chunked_body_that_ends_early_is_400(tiny_srv):
    raw = Raw(tiny_srv.url)
    try:
        raw.send(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"10\r\n\x89PNG")
        raw.sock.shutdown(socket.SHUT_WR)
        answer = raw.response()
    finally:
        raw.close()
    assert answer.status == 400 and answer.json() == {"error": "chunked request body ended before its last chunk"}


def test_transfer_encoding_in_an_http_10_request_is_400(tiny_srv):
    """RFC 9112 §6.1: an HTTP/1.0 recipient cannot know chunked framing; the request is refused."""
    raw = Raw(tiny_srv.url)
    try:
        answer = raw.send(b"POST /infer HTTP/1.0\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"0\r\n\r\n").response()
    finally:
        raw.close()
    assert (answer.status, answer.json()) == (400, {"error": "Transfer-Encoding in an HTTP/1.0 request"})
