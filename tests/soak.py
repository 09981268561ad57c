"""Soak: a live inferd daemon under a fixed-time mix of good, bad, slow, idle and admin traffic.

    python -m tests.soak --seconds 120            # from the repository root (make soak)
    python -m tests.soak --seconds 30 --model tiny

Starts `python -m inferd` with NOTIFY_SOCKET pointing at a socket of ours (port read from the
READY=1 status), then runs, until the time is up:
  good    keep-alive clients posting real photos (default model) or solid colours (tiny model) in
          six formats: multipart, raw body, chunked, and batches; each answer's label is checked;
  bad     truncated and non-image files, decompression bombs, oversized bodies (sent in full),
          malformed multipart, wrong content types and field names, bad top_k, 404, 405, 411;
  slow    slowloris connections trickling a byte every half second into a request head or body;
  idle    connections that never send anything;
  admin   reloads without a token, with a wrong one, and (every so often, for real) with the right one;
  monitor /health and /metrics twice a second, and the daemon's RSS;
  pipelined two connections each sending 20 GET /health in one write, again and again: every one
          answered, in order (issue 17: a request behind a refused one was once dropped);
  keyed   (issue 13) API keys are on and every inference request above carries the "soak" key; a
          client paced below its key's limit (every answer 200), one sending as fast as it can
          beyond its key's limit (200 within the bucket, 429 with Retry-After beyond it), and one
          guessing keys (401);
  cached  (issue 13) the response cache is on: a client repeating four photos (X-Cache: hit once
          each was seen), while the good clients' photos carry a random trailer after their
          end, so that each is new to the cache and runs the model (and keeps evicting).
It then prints what it sent and what came back, and exits 1 unless: every good request got 200
with the right label, every bad one its 4xx, nothing got a 5xx, well-behaved clients saw no
transport error, slow and idle connections were cut off on time, RSS stayed under --max-rss-mb,
the greedy key got no more 200s than its bucket allows, the cache stayed within its budget, and
the daemon was alive at the end (and exits 0 on SIGTERM). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import itertools
import json
import os
import random
import secrets
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support import DEFAULT_MODEL, EXPECTED_TOP1, REPO, DaemonProcess, NotifyReceiver, model_build

# The keyed rows' keys: "soak" (no limit) for every other inference request, and their limits.
KEYS = {"soak": {}, "paced": {"rate": 4, "burst": 4}, "greedy": {"rate": 2, "burst": 3}}
PACED_INTERVAL = 0.5  # seconds between the paced client's requests: half its key's rate
CACHE_BYTES = 512 * 1024  # ~120 answers of 1000 classes: the good clients' unique photos keep evicting
LIMITS = {"max_body_bytes": 4 * 1024 * 1024, "header_timeout": 2.0, "idle_timeout": 3.0, "body_timeout": 2.0,
          "min_body_rate": 16384, "max_files_per_batch": 8, "max_response_bytes": 512 * 1024}
SLACK = 1.5  # seconds a cut-off may come after its timeout (sweeps every 0.25 s, a loaded box)


# -- what to send ----------------------------------------------------------------------------------

def _encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def good_images(kind: str) -> dict[str, tuple[bytes, set[str]]]:
    """name -> (bytes, acceptable top-1 labels)."""
    from PIL import Image

    formats = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF")]
    if kind == "tiny":
        images = {}
        for n, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (85, 170, 255), (28, 113, 198)]):
            label = "r{}g{}b{}".format(*(round(v / 255 * 9) for v in rgb))
            for ext, fmt in formats:
                images[f"colour{n}.{ext}"] = (_encode(Image.new("RGB", (96, 64), rgb), fmt), {label})
        return images
    from skimage import data

    coffee = Image.fromarray(data.coffee())
    images = {f"coffee.{ext}": (_encode(coffee, fmt), {"espresso"}) for ext, fmt in formats}
    images["cat.jpg"] = (_encode(Image.fromarray(data.chelsea()), "JPEG", quality=92), EXPECTED_TOP1["cat.jpg"])
    images["camera.png"] = (_encode(Image.fromarray(data.camera()), "PNG"), EXPECTED_TOP1["camera.png"])
    images["motorcycle.webp"] = (_encode(Image.fromarray(data.stereo_motorcycle()[0]), "WEBP", quality=90),
                                 EXPECTED_TOP1["motorcycle.webp"])
    return images


def png_bomb(side: int = 20000) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def signed(session, head: bytes) -> bytes:
    """`head` with the session's Authorization line (the soak's API key) after its request line."""
    authorization = session.headers.get("Authorization")
    if not authorization:
        return head
    line, rest = head.split(b"\r\n", 1)
    return line + b"\r\nAuthorization: " + authorization.encode() + b"\r\n" + rest


def bad_requests(images: dict) -> dict[str, tuple[int, callable]]:
    """name -> (expected status, function(session, url) -> response)."""
    jpeg = next(data for name, (data, _) in images.items() if name.endswith(".jpg"))
    png = next(data for name, (data, _) in images.items() if name.endswith(".png"))
    boundary = "soak-boundary"
    malformed = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                 f"Broken header line\r\n\r\nxx\r\n--{boundary}--\r\n").encode()

    def files(name, data, field="file"):
        return lambda s, url: s.post(f"{url}/infer", files={field: (name, data)}, timeout=30)

    return {
        "truncated jpeg": (400, files("half.jpg", jpeg[:len(jpeg) // 2])),
        "truncated png": (400, files("half.png", png[:len(png) // 3])),
        "non-image file": (415, files("notes.txt", b"milk, eggs, flour\n" * 20)),
        "decompression bomb": (413, files("bomb.png", png_bomb())),
        "oversized body": (413, lambda s, url: s.post(f"{url}/infer", data=b"\0" * (LIMITS["max_body_bytes"] + 1_000_000),
                                                      headers={"Content-Type": "image/png"}, timeout=60)),
        "malformed multipart": (400, lambda s, url: s.post(f"{url}/infer", data=malformed, timeout=30, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})),
        "wrong content type": (415, lambda s, url: s.post(f"{url}/infer", data=png, timeout=30,
                                                          headers={"Content-Type": "text/plain"})),
        "wrong field name": (400, files("a.png", png, field="image")),
        "top_k out of range": (400, lambda s, url: s.post(f"{url}/infer?top_k=100000", files={"file": ("a.png", png)},
                                                          timeout=30)),
        "unknown path": (404, lambda s, url: s.get(f"{url}/v1/models", timeout=30)),
        "wrong method": (405, lambda s, url: s.get(f"{url}/infer", timeout=30)),
        "no length": (411, lambda s, url: raw_status(url, signed(s, b"POST /infer HTTP/1.1\r\nHost: soak\r\n"
                                                                   b"Content-Type: image/png\r\n\r\n"))),
        "chunked too big": (413, lambda s, url: raw_status(url, signed(s, b"POST /infer HTTP/1.1\r\nHost: soak\r\n"
                                                                         b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
                                                                         b"\r\n%x\r\n" % (LIMITS["max_body_bytes"] + 1)))),
        "tiny chunks": (400, lambda s, url: raw_status(url, signed(s, CHUNKED_HEAD), [b"2\r\nab\r\n" * 4000],
                                                       complete=False)),
        "jpeg cut and closed": (400, files("cut.jpg", jpeg[:len(jpeg) // 3] + b"\xff\xd9")),
        "png header cut": (400, lambda s, url: s.post(f"{url}/infer", data=png[:40], timeout=30,
                                                      headers={"Content-Type": "image/png"})),
        "top_k not ascii digits": (400, lambda s, url: s.post(f"{url}/infer?top_k=%2B3", files={"file": ("a.png", png)},
                                                              timeout=30)),
        **v2_bad_requests(png),
    }


def v2_bad_requests(png: bytes) -> dict[str, tuple[int, callable]]:
    """The hostile v2 requests of issue 21: amplification, the former 500s, non-finite tensors."""
    def post(document: dict, blob: bytes = b"", header_length: str | None = None):
        head = json.dumps(document).encode()
        headers = {"Inference-Header-Content-Length": header_length or str(len(head))} if blob or header_length else {}
        return lambda s, url: s.post(f"{url}/v2/models/{default_model(url)}/infer", data=head + blob,
                                     headers=headers, timeout=30)

    images = b"".join(struct.pack("<I", len(png)) + png for _ in range(LIMITS["max_files_per_batch"]))
    image_input = {"name": "input", "shape": [LIMITS["max_files_per_batch"]], "datatype": "BYTES",
                   "parameters": {"binary_data_size": len(images)}}
    top = {"name": "logits", "parameters": {"classification": 1000}}
    nan = struct.pack("<f", float("nan")) * (3 * 224 * 224)
    tensor_input = {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(nan)}}
    return {
        "v2 output asked for 100 times": (400, post({"inputs": [image_input], "outputs": [top] * 100}, images)),
        "v2 answer over max_response_bytes": (413, post({"inputs": [image_input], "outputs": [top]}, images)),
        "v2 401-digit number": (400, post({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                                       "data": [10**400] + [0] * (3 * 224 * 224 - 1)}]})),
        "v2 lone surrogate": (400, post({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                                     "data": ["\udc80"]}]})),
        "v2 5000-digit header length": (400, post({"inputs": [image_input]}, images, "9" * 5000)),
        "v2 NaN tensor": (400, post({"inputs": [tensor_input]}, nan)),
    }


@functools.lru_cache(maxsize=None)
def default_model(url: str) -> str:
    return requests.get(f"{url}/models", timeout=30).json()["default"]


CHUNKED_HEAD = b"POST /infer HTTP/1.1\r\nHost: soak\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass
class RawResponse:
    status_code: int
    text: str


def raw_status(url: str, data: bytes, chunks: list[bytes] = (), complete: bool = True) -> RawResponse:
    """One request on a plain socket (for what `requests` will not send); reads the whole answer.
    complete=False: the server may answer (and close) before taking every chunk."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                if complete:
                    raise
                break
        received = b""
        while b"\r\n\r\n" not in received:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError("closed without an answer")
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError("closed before the whole body")
            body += piece
    return RawResponse(int(head.split(b" ")[1]), body.decode(errors="replace"))


def chunked(data: bytes, piece: int = 50_000) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + piece]), data[i:i + piece])
                    for i in range(0, len(data), piece)) + b"0\r\n\r\n"


# -- bookkeeping -----------------------------------------------------------------------------------

@dataclass
class Tally:
    sent: int = 0
    answers: collections.Counter = field(default_factory=collections.Counter)
    transport: collections.Counter = field(default_factory=collections.Counter)
    seconds: list = field(default_factory=list)
    failures: list = field(default_factory=list)


class Book:
    """Thread-safe record of every category: what was sent, what came back, what was wrong."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows: dict[str, Tally] = collections.defaultdict(Tally)

    def record(self, row: str, answer, seconds: float, problem: str | None = None) -> None:
        with self.lock:
            tally = self.rows[row]
            tally.sent += 1
            tally.seconds.append(seconds)
            tally.answers[answer] += 1
            if problem and len(tally.failures) < 5:
                tally.failures.append(problem)
            elif problem:
                tally.failures.append(None)

    def transport_error(self, row: str, exc: BaseException, seconds: float) -> None:
        with self.lock:
            tally = self.rows[row]
            tally.sent += 1
            tally.seconds.append(seconds)
            tally.transport[type(exc).__name__] += 1

    def problems(self) -> list[str]:
        found = []
        for row, tally in sorted(self.rows.items()):
            if tally.failures:
                shown = [f for f in tally.failures if f]
                found.append(f"{row}: {len(tally.failures)} wrong, e.g. {shown[:3]}")
            fives = sum(n for answer, n in tally.answers.items() if isinstance(answer, int) and answer >= 500)
            if fives:
                found.append(f"{row}: {fives} answers with a 5xx status")
            if tally.transport and not row.startswith(("slow", "idle")):
                found.append(f"{row}: transport errors {dict(tally.transport)}")
        return found

    def table(self) -> str:
        lines = [f"{'category':<34} {'sent':>6}  {'what came back':<44} {'p50 ms':>7} {'p99 ms':>7}"]
        for row, tally in sorted(self.rows.items()):
            seconds = sorted(tally.seconds)
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(tally.answers.items(), key=str))
            if tally.transport:
                answers += "; transport " + ", ".join(f"{k}: {v}" for k, v in tally.transport.items())
            p50 = 1000 * seconds[len(seconds) // 2] if seconds else 0.0
            p99 = 1000 * seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] if seconds else 0.0
            lines.append(f"{row:<34} {tally.sent:>6}  {answers:<44} {p50:>7.1f} {p99:>7.1f}")
        return "\n".join(lines)


# -- the traffic -----------------------------------------------------------------------------------

class Soak:
    def __init__(self, url: str, pid: int, images: dict, token: str, deadline: float, seed: int,
                 keys: dict[str, str] | None = None):
        self.url, self.pid, self.images, self.token, self.deadline = url, pid, images, token, deadline
        self.keys = keys or {}  # name -> key; empty: API keys are off
        self.port = int(url.rsplit(":", 1)[1])
        self.book = Book()
        self.rng = random.Random(seed)
        self.bad = bad_requests(images)
        self.rss: list[tuple[float, int]] = []
        self.reload_every = 8

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def session(self, key: str = "soak") -> requests.Session:
        """A keep-alive session sending `key` (when keys are on)."""
        session = requests.Session()
        if key in self.keys:
            session.headers["Authorization"] = f"Bearer {self.keys[key]}"
        return session

    def timed(self, row: str, call, check) -> None:
        started = time.monotonic()
        try:
            response = call()
        except (requests.RequestException, OSError) as exc:
            self.book.transport_error(row, exc, time.monotonic() - started)
            return
        problem = check(response)
        self.book.record(row, response.status_code, time.monotonic() - started, problem)

    def _label_check(self, names: list[str]):
        def check(response) -> str | None:
            if response.status_code != 200:
                return f"{names}: {response.status_code} {response.text[:120]}"
            body = response.json()
            results = body["results"] if "results" in body else [body]
            got = [r["predictions"][0]["label"] if r.get("predictions") else r.get("error") for r in results]
            for name, label in zip(names, got):
                if label not in self.images[name][1]:
                    return f"{name}: expected one of {sorted(self.images[name][1])}, got {label!r}"
            return None if len(got) == len(names) else f"{names}: {len(got)} results"
        return check

    def good(self, seed: int) -> None:
        """Each photo with a random trailer after its end: decoded the same, new to the cache."""
        rng, session, names = random.Random(seed), self.session(), sorted(self.images)

        def unique(name: str) -> bytes:
            return self.images[name][0] + rng.randbytes(8)
        while self.running():
            way = rng.choice(["multipart", "multipart", "raw", "batch", "chunked", "absolute-form"])
            name = rng.choice(names)
            data = unique(name)
            if way == "multipart":
                call = lambda: session.post(f"{self.url}/infer", files={"file": (name, data)}, timeout=60)  # noqa: E731
                self.timed("good /infer multipart", call, self._label_check([name]))
            elif way == "raw":
                ctype = "image/" + name.rsplit(".", 1)[1].replace("jpg", "jpeg")
                call = lambda: session.post(f"{self.url}/infer", data=data, headers={"Content-Type": ctype},  # noqa: E731
                                            timeout=60)
                self.timed("good /infer raw body", call, self._label_check([name]))
            elif way == "absolute-form":  # routed, and counted in the inference pool, like /infer
                head = signed(session, b"POST http://soak/infer HTTP/1.1\r\nHost: soak\r\n"
                              b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(data))
                self.timed("good /infer absolute-form", lambda: raw_status(self.url, head + data),
                           self._chunked_check(name))
            elif way == "chunked":
                head = signed(session, b"POST /infer HTTP/1.1\r\nHost: soak\r\nContent-Type: application/octet-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")
                self.timed("good /infer chunked", lambda: raw_status(self.url, head, [chunked(data)]),
                           self._chunked_check(name))
            else:
                picks = rng.sample(names, rng.randint(2, 4))
                files = [("files", (n, unique(n))) for n in picks]
                call = lambda: session.post(f"{self.url}/infer/batch", files=files, timeout=60)  # noqa: E731
                self.timed("good /infer/batch", call, self._label_check(picks))

    def _chunked_check(self, name: str):
        import json

        def check(response) -> str | None:
            if response.status_code != 200:
                return f"{name}: {response.status_code} {response.text[:120]}"
            label = json.loads(response.text)["predictions"][0]["label"]
            return None if label in self.images[name][1] else f"{name}: got {label!r}"
        return check

    def bad_loop(self, seed: int) -> None:
        rng, session = random.Random(seed), self.session()
        kinds = sorted(self.bad)
        while self.running():
            kind = rng.choice(kinds)
            status, call = self.bad[kind]

            def check(response, status=status, kind=kind) -> str | None:
                if response.status_code != status:
                    return f"{kind}: expected {status}, got {response.status_code} {response.text[:120]}"
                if '"error"' not in response.text:
                    return f"{kind}: no JSON error in {response.text[:120]!r}"
                return None
            self.timed(f"bad {kind}", lambda: call(session, self.url), check)

    def slow(self, count: int) -> None:
        """Slowloris: `count` connections at a time, one byte every 0.5 s into a head or a body."""
        body_head = signed(self.session(), b"POST /infer HTTP/1.1\r\nHost: soak\r\nContent-Type: image/png\r\n"
                                           b"Content-Length: 100000\r\n\r\n")
        selector = selectors.DefaultSelector()
        open_ = {}

        def start(n: int):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if n % 2:
                sock.sendall(body_head)  # the head is complete: the body trickles
                row, drip, limit = "slow body trickle", b"x" * 100000, LIMITS["body_timeout"]
            else:
                row, drip, limit = "slow head trickle", b"POST /infer HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"z" * 5000, \
                    LIMITS["header_timeout"]
            sock.setblocking(False)
            open_[sock] = [row, drip, 0, time.monotonic(), limit]
            selector.register(sock, selectors.EVENT_READ)

        for n in range(count):
            start(n)
        n = count
        while self.running():
            for key, _ in selector.select(0.5):
                sock = key.fileobj
                row, _, _, opened, limit = open_.pop(sock)
                selector.unregister(sock)
                try:
                    answer = sock.recv(65536)
                except OSError:
                    answer = b""
                sock.close()
                seconds = time.monotonic() - opened
                status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else "closed"
                late = seconds > limit + SLACK
                self.book.record(row, f"cut off ({status})", seconds,
                                 f"cut off after {seconds:.1f}s (limit {limit}s)" if late else None)
                if self.running():
                    start(n)
                    n += 1
            for sock, state in list(open_.items()):
                try:
                    sock.send(state[1][state[2]:state[2] + 1])
                    state[2] += 1
                except OSError:
                    pass
            for sock, state in list(open_.items()):  # a connection never cut off is a failure
                if time.monotonic() - state[3] > state[4] + 3 * SLACK:
                    self.book.record(state[0], "still open", time.monotonic() - state[3], "never cut off")
                    selector.unregister(sock)
                    del open_[sock]
                    sock.close()
        for sock in open_:
            sock.close()

    def idle(self, count: int) -> None:
        """`count` connections that send nothing; each must be closed near idle_timeout."""
        selector = selectors.DefaultSelector()
        limit = LIMITS["idle_timeout"]

        def start():
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            selector.register(sock, selectors.EVENT_READ, time.monotonic())

        for _ in range(count):
            start()
        while self.running():
            for key, _ in selector.select(0.2):
                selector.unregister(key.fileobj)
                try:
                    data = key.fileobj.recv(1)
                except OSError:
                    data = b""
                key.fileobj.close()
                seconds = time.monotonic() - key.data
                wrong = data or not limit - 0.1 <= seconds <= limit + SLACK
                self.book.record("idle connection", "closed by server" if not data else "data", seconds,
                                 f"closed after {seconds:.1f}s, sent {data!r}" if wrong else None)
                if self.running():
                    start()
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    def pipelined(self, depth: int = 20) -> None:
        """A keep-alive connection sending `depth` GET /health in one write, again and again: every
        request must be answered, in order, with 200 (well below max_other_requests)."""
        request = b"GET /health HTTP/1.1\r\nHost: soak\r\n\r\n"
        while self.running():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                    sock.sendall(request * depth)
                    statuses = _read_statuses(sock, depth)
            except OSError as exc:
                self.book.transport_error("pipelined /health", exc, time.monotonic() - started)
                continue
            seconds = time.monotonic() - started
            for status in statuses:
                self.book.record("pipelined /health", status, seconds, None if status == 200 else f"{status}")
            for _ in range(depth - len(statuses)):
                self.book.record("pipelined /health", "unanswered", seconds, "a pipelined request got no answer")

    def paced(self) -> None:
        """Below its key's limit: every answer 200."""
        session, names = self.session("paced"), sorted(self.images)
        for n in itertools.count():
            if not self.running():
                return
            name = names[n % len(names)]
            self.timed("keyed below its limit", lambda: session.post(
                f"{self.url}/infer", files={"file": (name, self.images[name][0])}, timeout=60),
                self._label_check([name]))
            time.sleep(PACED_INTERVAL)  # pacing, not readiness: this client keeps to half its rate

    def greedy(self) -> None:
        """Ten times over its key's rate: 200 while the bucket has tokens, 429 with Retry-After and
        RateLimit-* beyond; main() checks the 200s against what the bucket allows."""
        session, name = self.session("greedy"), sorted(self.images)[0]

        def check(response) -> str | None:
            if response.status_code == 429:
                missing = {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining"} - set(response.headers)
                return f"429 without {sorted(missing)}" if missing else None
            return self._label_check([name])(response)
        self.greedy_began = time.monotonic()
        while self.running():
            self.timed("keyed over its limit", lambda: session.post(
                f"{self.url}/infer", files={"file": (name, self.images[name][0])}, timeout=60), check)
            time.sleep(1 / (10 * KEYS["greedy"]["rate"]))
        self.greedy_ended = time.monotonic()

    def guesser(self) -> None:
        """A made-up key on a new connection each time: 401 with WWW-Authenticate, fast."""
        data = self.images[sorted(self.images)[0]][0]
        while self.running():
            headers = {"Authorization": f"Bearer inferd_{secrets.token_urlsafe(32)}", "Connection": "close"}
            self.timed("keyed unknown key", lambda: requests.post(
                f"{self.url}/infer", data=data, headers={**headers, "Content-Type": "image/png"}, timeout=30),
                lambda r: None if r.status_code == 401 and "WWW-Authenticate" in r.headers else f"{r.status_code}")
            time.sleep(0.1)

    def duplicates(self) -> None:
        """Four photos again and again: each answer right, and from the cache once it was seen."""
        session, names = self.session(), sorted(self.images)[:4]
        for n in itertools.count():
            if not self.running():
                return
            name = names[n % len(names)]
            started = time.monotonic()
            try:
                response = session.post(f"{self.url}/infer", files={"file": (name, self.images[name][0])}, timeout=60)
            except (requests.RequestException, OSError) as exc:
                self.book.transport_error("cache duplicates", exc, time.monotonic() - started)
                continue
            problem = self._label_check([name])(response) or (None if "X-Cache" in response.headers else "no X-Cache")
            self.book.record("cache duplicates", f"{response.status_code} {response.headers.get('X-Cache')}",
                             time.monotonic() - started, problem)

    def admin(self) -> None:
        session, n = requests.Session(), 0
        while self.running():
            n += 1
            url = f"{self.url}/admin/reload"
            for row, headers in (("admin reload without token", {}),
                                 ("admin reload with wrong token", {"Authorization": "Bearer nope"})):
                self.timed(row, lambda: session.post(url, headers=headers, timeout=30),
                           lambda r: None if r.status_code == 401 and "WWW-Authenticate" in r.headers
                           else f"{r.status_code} {r.text[:80]}")
            if self.reload_every and n % self.reload_every == 0:
                self.timed("admin reload with token", lambda: session.post(
                    url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120),
                    lambda r: None if r.status_code == 200 else f"{r.status_code} {r.text[:120]}")
            time.sleep(2.0)

    def monitor(self) -> None:
        session = requests.Session()
        while self.running():
            for path in ("/health", "/metrics"):
                self.timed(f"monitor {path}", lambda: session.get(f"{self.url}{path}", timeout=10),
                           lambda r: None if r.status_code == 200 else f"{r.status_code}")
            self.rss.append((time.monotonic(), rss_bytes(self.pid)))
            time.sleep(0.5)

    def run(self, good: int, bad: int, slow: int, idle: int, cache: bool) -> None:
        jobs = ([(self.good, (i,)) for i in range(good)] + [(self.bad_loop, (100 + i,)) for i in range(bad)]
                + [(self.slow, (slow,)), (self.idle, (idle,)), (self.admin, ()), (self.monitor, ()),
                   (self.pipelined, ()), (self.pipelined, ())])
        if self.keys:
            jobs += [(self.paced, ()), (self.greedy, ()), (self.guesser, ())]
        if cache:
            jobs.append((self.duplicates, ()))
        threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, self.deadline - time.monotonic()) + 150)


def _read_statuses(sock: socket.socket, count: int) -> list[int]:
    """The statuses of up to `count` responses read in order (each with a Content-Length body)."""
    buffer, statuses = b"", []
    while len(statuses) < count:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            piece = sock.recv(65536)
            if not piece:
                break
            buffer += piece
            continue
        head = buffer[:end]
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buffer) < end + 4 + length:
            piece = sock.recv(65536)
            if not piece:
                return statuses
            buffer += piece
        statuses.append(int(head.split(b" ")[1]))
        buffer = buffer[end + 4 + length:]
    return statuses


def second_half_growth(samples: list[tuple[float, int]]) -> float | None:
    """How much RSS grew over the second half of a run, as the least-squares line through that
    half's samples says (its rise over the half, over its mean): one request's momentary peak
    moves a line through hundreds of samples by little, a creep moves it by all of it. None for a
    run too short to tell (under 4 minutes)."""
    if not samples or samples[-1][0] - samples[0][0] < 240:
        return None
    middle = (samples[0][0] + samples[-1][0]) / 2
    half = [(t, rss) for t, rss in samples if t >= middle]
    slope = statistics.linear_regression([t for t, _ in half], [rss for _, rss in half]).slope
    return slope * (half[-1][0] - half[0][0]) / statistics.fmean(rss for _, rss in half)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- main ------------------------------------------------------------------------------------------

def write_keys(path: Path) -> dict[str, str]:
    """The keys file of KEYS (mode 0600); returns name -> key."""
    from inferd import keys

    made = {name: keys.new_key() for name in KEYS}
    path.write_text("".join(keys.KeyLine(name, keys.key_hash(made[name]), limits).text() + "\n"
                            for name, limits in KEYS.items()))
    path.chmod(0o600)
    return made


def start_daemon(model_dir: Path, workdir: Path, token: str, keys_file: Path | None = None,
                 cache_bytes: int = 0) -> DaemonProcess:
    limits = "\n".join(f"{k} = {v}" for k, v in LIMITS.items())
    config = (f"[server]\nhost = 127.0.0.1\nport = 0\nadmin_token = {token}\n[model]\npath = {model_dir}\n"
              f"[limits]\n{limits}\n[logging]\naccess_log = false\n[cache]\nmax_bytes = {cache_bytes}\n"
              f"[auth]\nkeys_file = {keys_file or ''}\n")
    (workdir / "inferd.conf").write_text(config)
    notify = NotifyReceiver(workdir)
    env = {**os.environ, "NOTIFY_SOCKET": notify.path,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log_path = workdir / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inferd", "--config", str(workdir / "inferd.conf")],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    return DaemonProcess(proc, notify, log_path).wait_ready(timeout=120)


def keys_and_cache(soak: Soak, metrics: dict, cache_bytes: int) -> list[str]:
    """Print the cache's and the keys' figures; the problems among them."""
    problems = []
    cache = metrics.get("cache", {})
    if cache_bytes:
        print(f"cache: {cache.get('hits')} hits, {cache.get('misses')} misses (hit ratio {cache.get('hit_ratio') or 0:.2f}), "
              f"{cache.get('evictions')} evictions, {cache.get('entries')} entries, {cache.get('bytes')} of "
              f"{cache_bytes} bytes")
        if (cache.get("bytes") or 0) > cache_bytes:
            problems.append(f"the cache holds {cache['bytes']} bytes, over its {cache_bytes}")
        answers = soak.book.rows["cache duplicates"].answers
        if answers["200 hit"] <= answers["200 miss"]:
            problems.append(f"cache duplicates: more misses than hits ({dict(answers)})")
    if soak.keys:
        print("keys: " + "; ".join(f"{name} {counts}" for name, counts in sorted(metrics.get("keys", {}).items())))
        greedy = soak.book.rows["keyed over its limit"].answers
        limits = KEYS["greedy"]
        allowed = limits["burst"] + limits["rate"] * (soak.greedy_ended - soak.greedy_began) + 1
        if greedy[200] > allowed or not greedy[429]:
            problems.append(f"keyed over its limit: {greedy[200]} answered 200 (the bucket allows {allowed:.0f}), "
                            f"{greedy[429]} refused")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--model", default="default", help="'default' (EfficientNet-Lite0), 'tiny', or a directory")
    parser.add_argument("--good", type=int, default=4, help="good clients (keep-alive)")
    parser.add_argument("--bad", type=int, default=2, help="clients sending bad requests")
    parser.add_argument("--slow", type=int, default=40, help="slowloris connections at a time")
    parser.add_argument("--idle", type=int, default=200, help="idle connections at a time")
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    parser.add_argument("--max-growth", type=float, default=None, metavar="PERCENT",
                        help="fail when RSS grows more than this over the second half (make soak-long: 1)")
    parser.add_argument("--reload-every", type=int, default=8, help="token reload every N admin rounds (2 s); 0: never")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--no-keys", action="store_true", help="API keys off (no keyed rows)")
    parser.add_argument("--cache-bytes", type=int, default=CACHE_BYTES, help="[cache] max_bytes; 0: off")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="inferd-soak-") as tmp:
        workdir = Path(tmp)
        if args.model == "default":
            model_build.build_model("efficientnet-lite0", DEFAULT_MODEL)
            model_dir, kind = DEFAULT_MODEL, "photos"
        elif args.model == "tiny":
            model_build.build_model("tiny", workdir / "tiny")
            model_dir, kind = workdir / "tiny", "tiny"
        else:
            model_dir, kind = Path(args.model).resolve(), "photos"
        images = good_images(kind)
        token = secrets.token_urlsafe(16)
        keys = {} if args.no_keys else write_keys(workdir / "keys")
        daemon = start_daemon(model_dir, workdir, token, None if args.no_keys else workdir / "keys", args.cache_bytes)
        print(f"soak: {args.seconds:.0f}s against {daemon.url} (pid {daemon.proc.pid}, model {model_dir.name}); "
              f"{args.good} good, {args.bad} bad clients, {args.slow} slow, {args.idle} idle connections; API keys "
              f"{'off' if args.no_keys else 'on'}, cache {args.cache_bytes} bytes", flush=True)
        soak = Soak(daemon.url, daemon.proc.pid, images, token, time.monotonic() + args.seconds, args.seed, keys)
        soak.reload_every = args.reload_every
        try:
            soak.run(args.good, args.bad, args.slow, args.idle, args.cache_bytes > 0)
            alive = daemon.proc.poll() is None
            final = requests.get(f"{daemon.url}/health", timeout=10).status_code if alive else None
            metrics = requests.get(f"{daemon.url}/metrics", timeout=10).json() if alive else {}
        finally:
            code = daemon.stop(timeout=60) if daemon.proc.poll() is None else daemon.proc.returncode
            daemon.notify.close()
        problems = soak.book.problems()
        peak = max((rss for _, rss in soak.rss), default=0)
        first = soak.rss[len(soak.rss) // 4][1] if soak.rss else 0
        print()
        print(soak.book.table())
        print()
        print(f"daemon RSS: {first / 2**20:.0f} MiB after warm-up, {peak / 2**20:.0f} MiB peak, "
              f"{soak.rss[-1][1] / 2**20 if soak.rss else 0:.0f} MiB at the end; "
              f"requests answered: {metrics.get('all_http_requests')}; exit code on SIGTERM: {code}")
        if soak.rss:
            started = soak.rss[0][0]
            samples = soak.rss[:: max(1, len(soak.rss) // 15)] + soak.rss[-1:]
            print("RSS over time (s: MiB): " + ", ".join(f"{t - started:.0f}: {rss / 2**20:.0f}" for t, rss in samples))
        if not alive or final != 200:
            problems.append(f"daemon not serving at the end (alive={alive}, /health={final})")
        if code != 0:
            problems.append(f"daemon exited {code} on SIGTERM")
        if peak > args.max_rss_mb * 2**20:
            problems.append(f"RSS peak {peak / 2**20:.0f} MiB over --max-rss-mb {args.max_rss_mb:.0f}")
        growth = second_half_growth(soak.rss)
        if growth is not None:
            print(f"RSS growth over the second half: {growth:+.2%} (the rise of the least-squares line "
                  "through its samples, over their mean)")
            if args.max_growth is not None and growth > args.max_growth / 100:
                problems.append(f"RSS grew {growth:.2%} over the second half; --max-growth is {args.max_growth}%")
        if not soak.book.rows["good /infer multipart"].sent:
            problems.append("no good request was sent")
        problems += keys_and_cache(soak, metrics, args.cache_bytes)
        log_text = daemon.log()
        if "Traceback" in log_text or "internal error" in log_text:
            problems.append("the daemon logged an internal error:\n" + log_text[-3000:])
        if problems:
            print("\nSOAK FAILED:\n  " + "\n  ".join(problems))
            return 1
        print("\nsoak passed")
        return 0


if __name__ == "__main__":
    sys.exit(main())
