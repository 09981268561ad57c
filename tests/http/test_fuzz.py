"""Property tests on raw HTTP over a real socket: whatever bytes a client sends, inferd answers
with a status below 500 or closes the connection, promptly, and keeps serving.

Each example is sent on a new connection, followed by a half-close (SHUT_WR), so an incomplete
request ends at once instead of waiting for a timeout; the server must then finish within
STUCK_AFTER seconds. Cases that once failed live byte-exact in tests/data/http-regressions/ and
are replayed first.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import time

import pytest
from hypothesis import given, HealthCheck, settings, strategies as st
from PIL import Image

from inferd.http import multipart
from inferd.http.errors import HTTPError
from inferd.routes import uploads
from tests.support import REPO, config_for, start_in_process

REGRESSIONS = REPO / "tests" / "data" / "http-regressions"
STUCK_AFTER = 5.0
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


class ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir):
    """One server for every example: small limits and short timeouts, errors logged are collected."""
    config = config_for(tiny_model_dir, limits={
        "max_body_bytes": 200_000, "max_files_per_batch": 3, "max_parts": 6, "max_header_count": 16,
        "max_header_bytes": 4096, "max_request_line": 1024, "header_timeout": 2, "idle_timeout": 2,
        "body_timeout": 2}, logging={"access_log": "false"})
    served = start_in_process(config, reload=lambda: (True, "ok"))
    errors = ErrorLog()
    logging.getLogger("inferd").addHandler(errors)
    yield served.server, errors
    logging.getLogger("inferd").removeHandler(errors)
    served.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send, half-close, and read until the server closes; AssertionError if it never does."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STUCK_AFTER)
    received = b""
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: allowed
        deadline = time.monotonic() + STUCK_AFTER
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"connection stuck after {STUCK_AFTER}s; got {received[:300]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return received


def statuses(received: bytes) -> list[int]:
    """The status codes of a stream of responses, walked by Content-Length (HEAD is never sent)."""
    found, pos = [], 0
    while pos < len(received):
        match = _STATUS.match(received, pos)
        assert match, f"not a response at byte {pos}: {received[pos:pos + 200]!r}"
        end = received.index(b"\r\n\r\n", pos) + 4
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", received[pos:end])
        status = int(match.group(1))
        found.append(status)
        pos = end + (int(length.group(1)) if length and status >= 200 else 0)
    return found


def check(server_and_errors, data: bytes) -> list[int]:
    server, errors = server_and_errors
    codes = statuses(exchange(server.server_address[1], data))
    assert all(100 <= code < 500 for code in codes), codes
    assert not errors.records, [r.getMessage() for r in errors.records]
    return codes


# -- strategies ------------------------------------------------------------------------------------

def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()
def mostly(common: list, rare: st.SearchStrategy, rare_share: int = 8) -> st.SearchStrategy:
    """Values from `common`, and about one draw in `rare_share` from `rare`."""
    return st.sampled_from(range(rare_share)).flatmap(lambda n: rare if n == 0 else st.sampled_from(common))


EOL = mostly([b"\r\n"], st.sampled_from([b"\n", b"\r", b"\r\r\n", b""]))
METHODS = mostly([b"GET", b"POST", b"POST", b"POST", b"PUT", b"OPTIONS"],
                 st.sampled_from([b"BREW", b"G ET", b"", b"get", b"POST\x00"])
                 | st.binary(max_size=6).filter(lambda b: b.upper() != b"HEAD"))
TARGETS = mostly([b"/infer", b"/infer", b"/infer/batch", b"/infer/batch", b"/health", b"/metrics",
                  b"/admin/reload", b"/infer?top_k=3", b"http://h:1/infer"],
                 st.sampled_from([b"/", b"*", b"/infer?top_k=-1&top_k=", b"/metrics?format=x", b"/%00",
                                  b"/infer/../health", b"//", b"/health#x"]) | st.binary(max_size=40), 4)
VERSIONS = mostly([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
                  st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1", b"HTTP/1.1 ", b"HTTP/11.1", b""]))
BOUNDARY = b"fuzzb"
NUMBERS = st.integers(-3, 250_000).map(lambda n: str(n).encode())
FIELD_VALUES = {
    b"Host": mostly([b"x"], st.sampled_from([b"", b"a b", b"x\x00"])),
    b"Content-Length": NUMBERS | st.sampled_from([b"", b"abc", b"1e3", b"0x10", "\u00b2".encode(), b"9" * 5000,
                                                 b"5, 5", b" 7 ", b"-0", b"00000000000000000000001"]),
    b"Transfer-Encoding": st.sampled_from([b"chunked", b"gzip", b"chunked, chunked", b"identity", b" chunked ",
                                           b"gzip, chunked", b"CHUNKED", b"chunked;x=1"]),
    b"Content-Type": st.sampled_from([b"image/png", b"multipart/form-data; boundary=" + BOUNDARY,
                                      b"multipart/form-data", b"multipart/form-data; boundary=", b"text/plain",
                                      b'multipart/form-data; boundary="' + BOUNDARY + b'"', b"image/",
                                      b"multipart/form-data; boundary=" + b"b" * 80,
                                      b"application/octet-stream"]),
    b"Expect": st.sampled_from([b"100-continue", b"100-Continue", b"nope", b""]),
    b"Connection": st.sampled_from([b"close", b"keep-alive", b"Upgrade, close", b""]),
    b"Authorization": st.sampled_from([b"Bearer x", b"Bearer", b"Basic eDp5", b"\xff\xfe"]),
    b"Accept": st.sampled_from([b"*/*", b"text/plain;version=0.0.4", b"application/openmetrics-text;q=0.5,;;",
                                b"application/json;q=abc"]),
}
FIELD_NAMES = mostly([name for name in FIELD_VALUES if name != b"Host"] + [b"X-A", b"Host"],
                     st.sampled_from([b"Host ", b" Host", b"X\x7f", b"", b"Content-Length"]) | st.binary(max_size=10))


def _part(name: bytes, filename: bytes, data: bytes) -> bytes:
    return (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name + b'"; filename="'
            + filename + b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n")


MULTIPART = st.lists(st.tuples(st.sampled_from([b"file", b"files", b"x", b""]), st.binary(max_size=8),
                               st.sampled_from([PNG, PNG[:40], b"", b"not an image"]) | st.binary(max_size=60)),
                     max_size=5).map(lambda parts: b"".join(_part(*p) for p in parts) + b"--" + BOUNDARY + b"--\r\n")


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in sizes:
        piece, pos = body[pos:pos + size], pos + size
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


BODIES = (st.binary(max_size=300) | MULTIPART | st.just(PNG)
          | st.builds(_chunked, MULTIPART | st.just(PNG), st.lists(st.integers(1, 200), min_size=1, max_size=6)))


@st.composite
def requests_(draw) -> bytes:
    eol = draw(EOL)
    fields = draw(st.lists(st.tuples(FIELD_NAMES, st.data()), max_size=6))
    lines = [draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)]
    if draw(st.integers(0, 5)):
        lines.append(b"Host: x")
    if draw(st.integers(0, 2)):
        lines.append(b"Content-Type: " + draw(st.sampled_from([b"image/png", b"multipart/form-data; boundary=fuzzb"])))
    for name, data in fields:
        value = data.draw(FIELD_VALUES.get(name, st.binary(max_size=20)))
        lines.append(name + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + value)
    body = draw(BODIES)
    if draw(st.booleans()):  # a Content-Length that matches, most of the time
        lines.append(b"Content-Length: " + str(len(body) + draw(st.sampled_from([0, 0, 0, -1, 1]))).encode())
    return eol.join(lines) + eol + eol + body


@st.composite
def mutated(draw) -> bytes:
    """A request with a few bytes flipped, inserted or cut, maybe followed by another request."""
    data = bytearray(draw(requests_()))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\x00", b" ", b":", b";", b"\r\n\r\n", b"0\r\n"]))
        elif action == "delete":
            del data[at]
        else:
            del data[at:]
    if draw(st.integers(0, 3)) == 0:
        data += draw(requests_())
    return bytes(data)


@st.composite
def well_formed_heads(draw) -> bytes:
    """A valid head in front of a body that may be anything: reaches framing, multipart and images."""
    body = draw(BODIES)
    cut = draw(st.sampled_from([None] * 6 + [0, 1, 7, 40]))
    if cut is not None:
        body = body[:cut] + draw(st.binary(max_size=20))
    framing = draw(st.sampled_from(["length", "length", "chunked", "off-by-one", "none"]))
    fields = [b"Host: x", b"Content-Type: " + draw(FIELD_VALUES[b"Content-Type"])]
    if framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        body = _chunked(body, draw(st.lists(st.integers(1, 300), min_size=1, max_size=4)))
    elif framing != "none":
        fields.append(b"Content-Length: %d" % (len(body) + (framing == "off-by-one") * draw(st.sampled_from([-1, 1]))))
    if draw(st.integers(0, 4)) == 0:
        fields.append(b"Expect: 100-continue")
    target = draw(st.sampled_from([b"/infer", b"/infer/batch", b"/infer?top_k=2", b"/infer/batch?top_k=1000",
                                   b"/admin/reload", b"/health"]))
    return b"\r\n".join([b"POST " + target + b" HTTP/1.1", *fields]) + b"\r\n\r\n" + body


# -- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(p.name for p in REGRESSIONS.glob("*.http")))
def test_regressions_replay(fuzz_server, case):
    check(fuzz_server, (REGRESSIONS / case).read_bytes())


FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


@FUZZ
@given(data=mutated())
def test_any_request_gets_a_4xx_or_less_and_never_hangs(fuzz_server, data):
    check(fuzz_server, data)


@settings(FUZZ, max_examples=500)
@given(data=well_formed_heads())
def test_any_body_behind_a_valid_head_gets_a_4xx_or_less(fuzz_server, data):
    check(fuzz_server, data)


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_yield_5xx(fuzz_server, data):
    check(fuzz_server, data)


def test_the_server_still_serves_after_the_fuzzing(fuzz_server):
    codes = check(fuzz_server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(PNG) + PNG)
    assert codes == [200, 200]
    server, _ = fuzz_server
    assert server.room.open_connections() <= 1


class _Limits:
    max_body_bytes = 10_000
    max_parts = 4
    max_part_header_bytes = 200
    max_files_per_batch = 3


@settings(max_examples=300, deadline=None)
@given(content_type=st.text(max_size=80) | st.just("multipart/form-data; boundary=fuzzb"),
       body=MULTIPART | st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_the_server_side_multipart_reader_raises_only_typed_errors(content_type, body, cuts):
    """What the routes call (routes.uploads.uploads): MultipartError or HTTPError, each with a 4xx
    status, and nothing else for any Content-Type and body (cut anywhere)."""
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    body = b"".join(body[a:b] for a, b in zip(points, points[1:]))
    try:
        uploads.uploads(uploads.upload_form(content_type), body, _Limits, ("file", "files"))
    except (multipart.MultipartError, HTTPError) as exc:
        assert 400 <= exc.http_status < 500
