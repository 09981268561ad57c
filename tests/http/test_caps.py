"""Slow and idle clients, the connection and thread caps, and overload, over real sockets: every
phase cut off on time, caps that displace the connection that matters least, no 503 at or
below a cap, pipelined requests all answered, /health answering under full load."""

from __future__ import annotations


import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import pytest
import requests
from tests.support import config_for, encode, exchange, grid_colour, Raw, request_bytes, wait_until


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


HEALTH = request_bytes("GET", "/health")


def keep_alive_statuses(url: str, data: bytes, count: int) -> list[int]:
    """`count` requests one after another on one connection, each sent after the last answer."""
    raw = Raw(url)
    try:
        return [raw.send(data).response().status for _ in range(count)]
    finally:
        raw.close()


def test_keep_alive_clients_at_the_other_cap_never_get_503(serve, tiny_model_dir):
    """Before: 61 of 3200 answers were 503 with exactly max_other_requests (16) clients."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16}, logging={"access_log": "false"}))
    with ThreadPoolExecutor(16) as pool:
        statuses = [s for batch in pool.map(lambda _: keep_alive_statuses(srv.url, HEALTH, 200), range(16))
                    for s in batch]
    assert len(statuses) == 3200 and statuses.count(200) == 3200, {s: statuses.count(s) for s in set(statuses)}


def test_inference_clients_at_the_inference_cap_never_get_503(serve, tiny_model_dir):
    """Before: 38 of 768 answers were 503 with exactly max_inference_requests (64) clients."""
    srv = serve(config_for(tiny_model_dir, limits={"max_inference_requests": 64}, logging={"access_log": "false"}))
    infer = request_bytes("POST", "/infer", {"Content-Type": "image/png"}, encode((10, 200, 30)))
    with ThreadPoolExecutor(64) as pool:
        statuses = [s for batch in pool.map(lambda _: keep_alive_statuses(srv.url, infer, 12), range(64))
                    for s in batch]
    assert len(statuses) == 768 and statuses.count(200) == 768, {s: statuses.count(s) for s in set(statuses)}


def read_pipelined(raw: Raw, count: int) -> list:
    """Up to `count` responses in order; stops at a response that closes the connection."""
    responses = []
    while len(responses) < count:
        try:
            responses.append(raw.response())
        except (ConnectionError, socket.timeout):
            break
        if responses[-1].headers.get("connection") == "close":
            break
    return responses


def test_pipelined_requests_below_the_cap_are_all_answered(serve, tiny_model_dir):
    """Before: one of 15 pipelining connections got a 503 and 36 requests behind it no answer."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16}, logging={"access_log": "false"}))

    def pipeline(_):
        raw = Raw(srv.url).send(HEALTH * 50)
        try:
            return [r.status for r in read_pipelined(raw, 50)]
        finally:
            raw.close()

    with ThreadPoolExecutor(15) as pool:
        answered = list(pool.map(pipeline, range(15)))
    assert [len(statuses) for statuses in answered] == [50] * 15
    assert all(status == 200 for statuses in answered for status in statuses)


def test_a_refused_pipelined_request_is_answered_before_the_connection_closes(serve, tiny_model_dir):
    """Guarantee: over the cap, a pipelining connection gets every earlier answer in order, then the
    503 with Connection: close, then the close (RFC 9112 §9.3.2); nothing is dropped silently."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 1}, logging={"access_log": "false"}))
    connections = [Raw(srv.url) for _ in range(4)]
    try:
        for raw in connections:
            raw.send(HEALTH * 40)
        for raw in connections:
            statuses = [r.status for r in read_pipelined(raw, 40)]
            assert statuses and set(statuses[:-1]) <= {200}, statuses
            if len(statuses) < 40:  # refused: the refusal is the last answer, then the connection closes
                assert statuses[-1] == 503 and raw.closed()
    finally:
        for raw in connections:
            raw.close()


def test_absolute_form_uploads_do_not_take_the_threads_of_health(serve, tiny_model_dir):
    """Before: 20 slow uploads to http://x/infer took the "other" pool (16) and /health got 503."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16, "body_timeout": 30}))
    head = (b"POST http://x/infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"\x89PNG")
    uploads = [Raw(srv.url).send(head) for _ in range(20)]
    try:
        wait_until(lambda: srv.server.metrics.snapshot_json()["requests_in_flight"] >= 20, what="20 uploads")
        assert [requests.get(f"{srv.url}/health", timeout=5).status_code for _ in range(5)] == [200] * 5
    finally:
        for raw in uploads:
            raw.close()
