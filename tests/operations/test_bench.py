"""inferd-bench: the load generator against a real in-process server, and --limit on a real tiny model."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time

import pytest

from inferd.http import multipart
from inferd.tools import bench, loadclient
from tests.support import config_for


@pytest.fixture
def server(serve, tiny_model_dir):
    return serve(config_for(tiny_model_dir))


@pytest.fixture
def cat(images, tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(images["cat.jpg"])
    return path


def test_multipart_body_is_one_file_part_named_file(images):
    content_type, body = loadclient.multipart_body(images["cat.jpg"], "cat.jpg")
    parts = list(multipart.iter_parts([body], multipart.parse_boundary(content_type), max_body_bytes=len(body),
                                      max_parts=4, max_header_bytes=1024, max_part_bytes=len(body)))
    assert [(p.name, p.filename, p.data) for p in parts] == [("file", "cat.jpg", images["cat.jpg"])]


def test_count_mode_sends_exactly_count_requests_over_keep_alive(server, images):
    content_type, body = loadclient.multipart_body(images["cat.jpg"], "cat.jpg")
    tally = loadclient.run_load(server.url, body, content_type, connections=4, count=25)
    result = loadclient.summarise(tally)
    assert result["requests"] == result["ok"] == 25
    assert result["statuses"] == {"200": 25} and result["errors"] == {}
    assert len(tally.latencies) == 25 and result["throughput"] > 0
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert _served(server, 25) == 25  # and the server answered exactly those


def test_a_list_of_bodies_is_sent_in_turn(serve, tiny_model_dir):
    """Three photos under one boundary, nine requests: each photo three times (the cache counts
    three misses and six hits), the bench's cache part in small."""
    from bench.cache import changed_pixels, distinct_photos

    photos = distinct_photos(3)
    assert len(set(photos + changed_pixels(photos[0], 5))) == 8
    bodies = [loadclient.multipart_body(photo, "p.jpg", boundary="b0undary") for photo in photos]
    server = serve(config_for(tiny_model_dir, cache={"max_bytes": 1 << 20}))
    tally = loadclient.run_load(server.url, [body for _, body in bodies], bodies[0][0], connections=3, count=9)
    assert tally.statuses == {200: 9}
    view = server.daemon.metrics.snapshot_json()["cache"]
    assert (view["misses"], view["hits"]) == (3, 6)


def test_duration_mode_stops_after_the_duration(server, images):
    content_type, body = loadclient.multipart_body(images["cat.jpg"], "cat.jpg")
    tally = loadclient.run_load(server.url, body, content_type, connections=2, duration=0.5)
    assert tally.statuses[200] >= 1 and not tally.errors
    assert 0.5 <= tally.elapsed < 10


def test_error_statuses_are_tallied_not_counted_as_throughput(server):
    content_type, body = loadclient.multipart_body(b"not an image at all", "notes.txt")
    result = loadclient.summarise(loadclient.run_load(server.url, body, content_type, connections=2, count=6))
    assert result["statuses"] == {"415": 6}
    assert result["requests"] == 6 and result["ok"] == 0 and result["throughput"] == 0


def test_connection_errors_are_counted_by_type():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
    try:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        tally = loadclient.run_load(url, b"x", "image/jpeg", connections=2, count=5, timeout=5)
    finally:
        closed.close()
    assert tally.errors == {"ConnectionRefusedError": 5} and not tally.statuses
    assert loadclient.summarise(tally)["requests"] == 5


def test_run_load_needs_a_count_or_a_duration():
    with pytest.raises(ValueError):
        loadclient.run_load("http://127.0.0.1:1", b"", "image/jpeg")


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert loadclient.percentile(values, 50) == 50.0
    assert loadclient.percentile(values, 99) == 99.0
    assert loadclient.percentile(values, 100) == 100.0
    assert loadclient.percentile([7.0], 90) == 7.0
    assert loadclient.percentile([], 50) == 0.0


def test_command_line_json_against_a_server(server, cat, capsys):
    assert bench.main([str(cat), "--url", server.url, "-c", "3", "-n", "12", "--warmup", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["requests"] == result["ok"] == 12 and result["statuses"] == {"200": 12}
    assert _served(server, 15) == 15  # warm-up requests are sent but not reported


def test_command_line_exits_1_when_a_request_fails(server, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello")
    assert bench.main([str(notes), "--url", server.url, "-n", "2"]) == 1
    assert "statuses: {'415': 2}" in capsys.readouterr().out


def test_limit_on_the_tiny_model(tiny_model_dir, cat, capsys):
    assert bench.main([str(cat), "--limit", str(tiny_model_dir), "-n", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["by_batch"]) == {"1", "2", "4", "8"}
    assert result["throughput"] == max(result["by_batch"].values()) > 0
    assert result["by_batch"][str(result["best_batch_size"])] == result["throughput"]
    assert result["single_ms"] > 0


def test_limit_counts_images_not_calls(tiny_model_dir, images):
    calls, spent = [], []

    def classify(size):
        began = time.perf_counter()
        calls.append(size)
        time.sleep(0.002 * len(calls))  # calls of 2, 4, 6 and 8 ms
        spent.append(time.perf_counter() - began)
    rate, median = bench.images_per_second(classify, 4, None, 10)
    assert calls == [4, 4, 4, 4]  # one warm-up call, then ceil(10 / 4) timed calls
    timed = spent[1:]  # the warm-up is not timed
    assert rate == pytest.approx(12 / sum(timed), rel=0.05)  # images per second, not calls
    assert median == pytest.approx(sorted(timed)[1], rel=0.05)


def _served(server, expected: int = 0, timeout: float = 5.0) -> int:
    """2xx answers to /infer the server itself counted, once it has counted `expected` (or after
    `timeout`): it counts a request before sending its answer (exchange.py), so the poll only waits
    for a request whose answer this test has not read yet."""
    deadline = time.monotonic() + timeout
    while True:
        served = server.server.metrics.snapshot_json()["successful_requests"]
        if served >= expected or time.monotonic() > deadline:
            return served
        time.sleep(0.01)


def test_paired_takes_turns_one_request_then_one_in_process_image(server, tiny_model_dir, images):
    content_type, body = loadclient.multipart_body(images["cat.jpg"], "cat.jpg")
    order = []
    served_before = _served(server)

    def classify(size):
        order.append(("local", size, _served(server, served_before + len(order) + 1)))

    served, local = bench.take_turns(server.url, body, content_type, classify, duration=None, count=5)
    assert len(served) == len(local) == 5 and all(s > 0 for s in served) and all(s >= 0 for s in local)
    # one warm-up turn, then five: each classification comes after exactly one more answered request
    assert [(size, seen - served_before) for _, size, seen in order] == [(1, n) for n in range(1, 7)]


def test_paired_summary_is_the_ratio_of_medians():
    result = bench.paired_summary([0.012, 0.010, 0.011], [0.010, 0.009, 0.008])
    assert result == {"pairs": 3, "inferd_p50_ms": 11.0, "limit_p50_ms": 9.0, "ratio": round(11 / 9, 3)}


def test_command_line_paired_against_a_server(server, tiny_model_dir, cat, capsys):
    assert bench.main([str(cat), "--url", server.url, "--paired", str(tiny_model_dir), "-n", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 4 and result["inferd_p50_ms"] > 0 and result["limit_p50_ms"] > 0
    assert result["ratio"] == round(result["inferd_p50_ms"] / result["limit_p50_ms"], 3) or abs(
        result["ratio"] - result["inferd_p50_ms"] / result["limit_p50_ms"]) < 0.01
    assert _served(server, 5) == 5  # a warm-up turn and four counted ones


def test_command_line_paired_exits_1_when_the_server_refuses_the_image(server, tiny_model_dir, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello")
    assert bench.main([str(notes), "--url", server.url, "--paired", str(tiny_model_dir), "-n", "2"]) == 1
    assert "answered 415" in capsys.readouterr().err


@pytest.mark.parametrize("head, expected", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json", (200, 12, False)),
    (b"HTTP/1.1 503 Service Unavailable\r\nconnection: Close\r\ncontent-length: 40", (503, 40, True)),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 3", (200, 3, True)),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3", (200, 3, False)),
    (b"HTTP/1.1 200 OK\r\nConnection: close", (200, None, True)),
])
def test_answer_heads_give_status_length_and_whether_the_connection_closes(head, expected):
    assert loadclient.parse_answer_head(head) == expected


@pytest.mark.parametrize("head", [b"garbage", b"HTTP/1.1 OK", b"SPDY/3 200 OK"])
def test_a_malformed_status_line_is_an_error(head):
    with pytest.raises(http.client.BadStatusLine):
        loadclient.parse_answer_head(head)


def test_a_chunked_answer_is_an_error_not_a_misread_connection():
    with pytest.raises(http.client.HTTPException):
        loadclient.parse_answer_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "IncompleteRead"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "RemoteDisconnected"),
    (b"", "RemoteDisconnected"),
])
def test_a_server_that_hangs_up_early_is_counted_by_error_type(answer, error):
    with _one_answer_server(answer) as url:
        tally = loadclient.run_load(url, b"x", "image/jpeg", count=1, timeout=5)
    assert tally.errors == {error: 1} and not tally.statuses


def test_an_answer_ended_by_closing_the_connection_is_read_whole():
    with _one_answer_server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 200_000) as url:
        tally = loadclient.run_load(url, b"x", "image/jpeg", count=1, timeout=5)
    assert tally.statuses == {200: 1} and not tally.errors


@contextlib.contextmanager
def _one_answer_server(answer: bytes):
    """A real socket that reads one request, writes `answer` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        thread.join(5)
        listener.close()


def test_make_bench_divides_within_each_round_then_takes_the_median():
    from bench.throughput import ratios_by_round

    limit_rounds = [{1: (10.0, 0.1), 4: (12.0, 0.3)}, {1: (20.0, 0.05), 4: (18.0, 0.2)},
                    {1: (16.0, 0.06), 4: (15.0, 0.3)}]
    rounds = {("inferd", 1): [{"throughput": 9.0}, {"throughput": 19.0}, {"throughput": 15.0}],
              ("inferd", 4): [{"throughput": 12.0}, {"throughput": 17.0}, {"throughput": 16.0}],
              ("reference", 1): [{"throughput": 4.0}, {"throughput": 5.0}, {"throughput": 8.0}]}
    bounds = [{"bound": 24.0}, {"bound": 38.0}, {"bound": 20.0}]
    ratios = ratios_by_round(limit_rounds, rounds, bounds)
    assert ratios == {"limit": [1.0, 0.95, 1.0], "reference": [3.0, 3.8, 2.0], "bound": [0.5, 0.5, 0.8]}
