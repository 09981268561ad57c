"""The load client of `inferd-bench` and `make bench`: request bodies (multipart, Open Inference
Protocol), a lean keep-alive HTTP/1.1 connection that sends a prepared request and reads the answer
by Content-Length, and `run_load`, which drives N such connections for a count or a duration and
tallies statuses, errors and latencies. Standard library only.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..metrics.families import nearest_rank

MAX_ANSWER_HEAD = 65536


# -- requests -------------------------------------------------------------------------------------

def multipart_body(data: bytes, filename: str, field_name: str = "file", boundary: str = "") -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data request carrying `data` as one file part
    (bodies sent under one Content-Type by run_load share a `boundary`; default: a new one)."""
    boundary = boundary or uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


def v2_body(data: bytes, input_name: str = "input", output_name: str = "", top: int = 5) -> tuple[str, bytes, dict]:
    """(Content-Type, body, extra headers) of an Open Inference Protocol request carrying `data` as
    a BYTES tensor of one element, in the binary tensor data extension; with `output_name`, it asks
    for the top `top` classes (the classification extension), as /infer answers."""
    element = len(data).to_bytes(4, "little") + data
    document = {"inputs": [{"name": input_name, "shape": [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(element)}}]}
    if output_name:
        document["outputs"] = [{"name": output_name, "parameters": {"classification": top}}]
    header = json.dumps(document).encode()
    return "application/octet-stream", header + element, {"Inference-Header-Content-Length": str(len(header))}


def prepared_request(url: str, path: str, body: bytes, content_type: str, headers: dict | None = None) -> bytes:
    """The whole POST request, head and body, to send as is on every turn."""
    target = urlsplit(url)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"POST {target.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
            f"Content-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads the whole answer.

    Not http.client: it parses every answer's headers through email.parser, ~0.25 ms per request
    here, which a latency figure would charge to the server. An answer must carry Content-Length
    or end with the connection; anything else raises http.client.HTTPException.
    """

    def __init__(self, url: str, timeout: float):
        target = urlsplit(url)
        self.sock = socket.create_connection((target.hostname or "127.0.0.1", target.port or 80), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send `request`, read the answer; returns (status, whether the server closes the connection)."""
        self.sock.sendall(request)
        status, length, closes = parse_answer_head(self._read_head())
        if length is None:
            while self.sock.recv(65536):
                pass
            return status, True
        while len(self.buffer) < length:
            self._fill(http.client.IncompleteRead(self.buffer, length - len(self.buffer)))
        self.buffer = self.buffer[length:]
        return status, closes

    def close(self) -> None:
        self.sock.close()

    def _read_head(self) -> bytes:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_ANSWER_HEAD:
                raise http.client.LineTooLong("answer head")
            self._fill(http.client.RemoteDisconnected("the server closed the connection without an answer"))
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        return head

    def _fill(self, at_end: Exception) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise at_end
        self.buffer += data


def parse_answer_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, Content-Length or None, whether the connection closes after this answer)."""
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
        raise http.client.BadStatusLine(status_line.decode("latin-1"))
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"transfer-encoding" in fields:
        raise http.client.HTTPException("a chunked answer (this client needs Content-Length)")
    connection = fields.get(b"connection", b"")
    closes = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
    length = fields.get(b"content-length")
    return int(rest[:3]), (int(length) if length is not None else None), closes


@dataclass
class Tally:
    """What the connections saw: one latency per answered request, statuses and error kinds."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seconds: float, status: int | None, error: str | None = None) -> None:
        with self.lock:
            if status is not None:
                self.latencies.append(seconds)
                self.statuses[status] += 1
            if error is not None:
                self.errors[error] += 1


class _Budget:
    """Hands out requests to the connections: `count` of them, or as many as fit before `deadline`."""

    def __init__(self, count: int | None, duration: float | None):
        self.left = count
        self.deadline = None if duration is None else time.monotonic() + duration
        self.lock = threading.Lock()

    def take(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if self.left is None:
            return True
        with self.lock:
            self.left -= 1
            return self.left >= 0


def run_load(url: str, body: bytes | list[bytes], content_type: str, *, connections: int = 1,
             count: int | None = None, duration: float | None = None, path: str = "/infer", timeout: float = 60.0,
             headers: dict | None = None) -> Tally:
    """POST `body` (or each of a list of bodies in turn, across the connections, round and round)
    over `connections` keep-alive connections until `count` requests were sent or `duration`
    seconds passed (whichever is given; both: whichever comes first).

    Never raises for a failed request: connection errors are counted by exception type (and the
    connection is reopened), HTTP errors by status. Raises ValueError without count and duration.
    """
    if count is None and duration is None:
        raise ValueError("give a request count or a duration")
    budget, tally = _Budget(count, duration), Tally()
    bodies = body if isinstance(body, list) else [body]
    prepared = _Turns([prepared_request(url, path, b, content_type, headers) for b in bodies])
    args = (url, prepared, timeout, budget, tally)
    threads = [threading.Thread(target=_connection_loop, args=args, daemon=True) for _ in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.elapsed = time.monotonic() - started
    return tally


class _Turns:
    """Prepared requests handed out in turn to every connection (itertools.count is atomic)."""

    def __init__(self, requests: list[bytes]):
        self.requests = requests
        self._next = itertools.count()

    def take(self) -> bytes:
        return self.requests[next(self._next) % len(self.requests)]


def _connection_loop(url: str, turns: _Turns, timeout, budget: _Budget, tally: Tally) -> None:
    """One client connection: send, read the whole answer, repeat; reconnect after any error.
    A request's time includes connecting when it opened the connection."""
    connection = None
    while budget.take():
        request = turns.take()
        started = time.perf_counter()
        try:
            connection = connection or Connection(url, timeout)
            status, closes = connection.exchange(request)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.add(0.0, None, type(exc).__name__)
            if connection is not None:
                connection.close()
            connection = None
            continue
        tally.add(time.perf_counter() - started, status)
        if closes:
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


# -- summaries ------------------------------------------------------------------------------------

def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile (0..100) of an ascending list by the nearest-rank method; 0.0 when empty."""
    value = nearest_rank(ordered, q)
    return 0.0 if value is None else value


def summarise(tally: Tally) -> dict:
    """Throughput (2xx answers per second), latency percentiles in ms, status and error counts."""
    ordered = sorted(tally.latencies)
    ok = sum(n for status, n in tally.statuses.items() if 200 <= status < 300)
    elapsed = tally.elapsed or float("nan")
    return {
        "requests": len(ordered) + sum(tally.errors.values()), "ok": ok, "seconds": round(tally.elapsed, 3),
        "throughput": round(ok / elapsed, 2), "requests_per_second": round(len(ordered) / elapsed, 2),
        **{f"{name}_ms": round(percentile(ordered, q) * 1000, 2)
           for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "statuses": {str(status): n for status, n in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
    }
