"""HTTP/1.1 request framing with explicit limits (RFC 9112), and a socket reader with a deadline.

Sans-IO where it can be: `head_length`, `parse_head`, `body_framing` and `ChunkedDecoder` take
bytes and return values; only `SocketReader` touches a socket. Every malformed or oversized input
raises a `ProtocolError` carrying its HTTP status; a reader past its deadline raises
`RequestTimeout` (408). Imports nothing of inferd.

Strict on purpose, because a lenient parser in front of nothing is how requests get smuggled:
one SP between the parts of the request line; header names are tokens with no space before the
colon; no obs-fold, no bare CR, no control characters in values; Content-Length is digits only
and may repeat only with the same value; Transfer-Encoding must be exactly "chunked" and may not
come with Content-Length. Lenient where RFC 9112 asks for it: empty lines before a request line are
skipped (§2.2) and a bare LF ends a line of the head (§2.2).
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Iterator

CHUNKED = -1  # body_framing(): the body is chunked; its length is known at its end
READ_SIZE = 64 * 1024
MAX_CHUNK_LINE = 1024  # chunk-size line with extensions; real clients send a few bytes

_HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.I)
# Control characters other than HTAB (RFC 9110 §5.5): never valid in a field value.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


class ProtocolError(ValueError):
    """The request cannot be read as HTTP/1.1; the connection must be closed after the answer."""

    http_status = 400


class RequestLineTooLong(ProtocolError):
    http_status = 414


class HeadersTooLarge(ProtocolError):
    http_status = 431


class LengthRequired(ProtocolError):
    http_status = 411


class BodyTooLarge(ProtocolError):
    http_status = 413


class ExpectationFailed(ProtocolError):
    http_status = 417


class ClientDisconnected(ConnectionError):
    """The client closed or reset the connection while we were reading; nobody to answer."""


class RequestTimeout(TimeoutError):
    """The client did not send its request (head or body) in the time allowed."""

    http_status = 408


def head_length(buffer: bytes | bytearray, *, max_request_line: int, max_header_bytes: int) -> int:
    """Length of the complete request head (request line, fields, empty line) at the start of
    `buffer`, or 0 while more bytes are needed.

    Raises RequestLineTooLong (414) or HeadersTooLarge (431) as soon as the bytes present prove a
    limit is crossed, so a client never gets to send more than the limits allow.
    """
    line_end = buffer.find(b"\n")
    if line_end < 0:
        if len(buffer) > max_request_line + 1:
            raise RequestLineTooLong(f"request line longer than {max_request_line} bytes")
        return 0
    if line_end - (buffer[line_end - 1:line_end] == b"\r") > max_request_line:
        raise RequestLineTooLong(f"request line longer than {max_request_line} bytes")
    found = _HEAD_END.search(buffer, line_end)
    fields_end = found.start() if found else len(buffer)
    if fields_end - line_end > max_header_bytes + 1:
        raise HeadersTooLarge(f"request header fields exceed {max_header_bytes} bytes")
    return found.end() if found else 0


class Headers:
    """Request header fields in order; names compare case-insensitively."""

    def __init__(self, fields: list[tuple[str, str]]):
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        name = name.lower()
        for key, value in self._fields:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._fields if key == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # as sent, absolute-form reduced to its path and query
    version: tuple[int, int]
    headers: Headers

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def keep_alive(self) -> bool:
        """RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"."""
        tokens = {t.strip().lower() for v in self.headers.get_all("connection") for t in v.split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens and "close" not in tokens

    @property
    def expects_continue(self) -> bool:
        return self.version >= (1, 1) and self.headers.get("expect", "").lower() == "100-continue"


# Fields whose repetition would let two parsers disagree about the request (RFC 9110 §5.3).
_SINGLE = ("host", "content-type", "authorization", "expect")


def parse_head(head: bytes, *, max_header_count: int) -> RequestHead:
    """Parse a complete head as `head_length` delimits it.

    Raises ProtocolError (400) for anything malformed and HeadersTooLarge (431) past
    max_header_count fields.
    """
    lines = [line[:-1] if line.endswith("\r") else line for line in head.decode("latin-1").split("\n")]
    lines = lines[:-2]  # the empty line that ends the head, and what follows its LF
    request_line, field_lines = lines[0], lines[1:]
    if len(field_lines) > max_header_count:
        raise HeadersTooLarge(f"more than {max_header_count} request header fields")
    method, target, version = _request_line(request_line)
    headers = Headers([_field(line) for line in field_lines])
    for name in _SINGLE:
        if len(headers.get_all(name)) > 1:
            raise ProtocolError(f"{name} header given more than once")
    if version >= (1, 1) and headers.get("host") is None:
        raise ProtocolError("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")
    expect = headers.get("expect")
    if expect is not None and version >= (1, 1) and expect.lower() != "100-continue":
        raise ExpectationFailed("only 'Expect: 100-continue' is understood")
    return RequestHead(method, target, version, headers)


def _request_line(line: str) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line (expected: METHOD target HTTP/1.1)")
    method, target, version_text = parts
    if not _TOKEN.match(method):
        raise ProtocolError("malformed request method")
    version = _VERSION.match(version_text)
    if version is None:
        raise ProtocolError("malformed HTTP version")
    if version.group(1, 2) not in (("1", "0"), ("1", "1")):
        raise ProtocolError("unsupported HTTP version: inferd speaks HTTP/1.0 and HTTP/1.1")
    if not _TARGET.match(target):
        raise ProtocolError("malformed request target")
    absolute = _ABSOLUTE.match(target)
    if absolute:  # absolute-form (RFC 9112 §3.2.2): keep the path and query
        target = target[absolute.end():] or "/"
        target = target if target.startswith("/") else "/" + target
    elif not target.startswith("/") and target != "*":
        raise ProtocolError("malformed request target")
    return method, target, (int(version.group(1)), int(version.group(2)))


def _field(line: str) -> tuple[str, str]:
    if line[:1] in (" ", "\t"):
        raise ProtocolError("folded header line (obs-fold, RFC 9112 §5.2)")
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.match(name):
        raise ProtocolError("malformed header line")
    value = value.strip(" \t")
    if _CTL.search(value):
        raise ProtocolError("control character in a header value")
    return name.lower(), value


def body_framing(head: RequestHead, max_body_bytes: int) -> int | None:
    """The body's length from the head (RFC 9112 §6.3): bytes, CHUNKED, or None when the request
    declares no body.

    Raises BodyTooLarge (413) when Content-Length exceeds `max_body_bytes`, ProtocolError (400)
    for conflicting or malformed framing.
    """
    codings = [c.strip().lower() for v in head.headers.get_all("transfer-encoding") for c in v.split(",")]
    lengths = head.headers.get_all("content-length")
    if codings:
        if head.version < (1, 1):
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise ProtocolError("both Transfer-Encoding and Content-Length (RFC 9112 §6.3)")
        if codings != ["chunked"]:
            raise ProtocolError("unsupported Transfer-Encoding: only 'chunked' is accepted")
        return CHUNKED
    if not lengths:
        return None
    values = {value for value in lengths}
    value = values.pop()
    if values or not value.isascii() or not value.isdigit():
        raise ProtocolError("invalid Content-Length")
    if len(value.lstrip("0")) > 18 or int(value) > max_body_bytes:
        raise BodyTooLarge(f"request body is {value.lstrip('0')} bytes; the limit is {max_body_bytes}")
    return int(value)


class ChunkedDecoder:
    """Push decoder for the chunked transfer coding (RFC 9112 §7.1); extensions and trailer
    fields are read and discarded.

    feed() returns the data it completed; after `done`, `unused` holds the bytes that followed
    the body (the next request on the connection). Raises BodyTooLarge (413) once the chunk sizes
    exceed max_body_bytes (before their data is read), HeadersTooLarge (431) for a trailer section
    over max_trailer_bytes, ProtocolError (400) for anything malformed.
    """

    def __init__(self, *, max_body_bytes: int, max_trailer_bytes: int):
        self.max_body_bytes = max_body_bytes
        self.max_trailer_bytes = max_trailer_bytes
        self.total = 0
        self.done = False
        self.unused = b""
        self._pending = b""
        self._left = 0  # data bytes still to come in the current chunk
        self._state = "size"  # size -> data -> crlf -> size ... -> trailer -> done

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.unused += data
            return []
        buffer, self._pending = self._pending + data, b""
        out: list[bytes] = []
        pos = 0
        while not self.done:
            if self._state == "data":
                if pos == len(buffer):
                    break
                piece = buffer[pos:pos + self._left]
                out.append(piece)
                pos += len(piece)
                self._left -= len(piece)
                if not self._left:
                    self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) - pos < 2:
                    break
                if buffer[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = "size"
            elif self._state == "size":
                end = buffer.find(b"\n", pos, pos + MAX_CHUNK_LINE)
                if end < 0:
                    if len(buffer) - pos >= MAX_CHUNK_LINE:
                        raise ProtocolError("chunk-size line too long")
                    break
                pos = self._size_line(buffer[pos:end + 1], pos)
            else:
                end = self._trailer(buffer, pos)
                if end is None:
                    break
                pos = end
        if self.done:
            self.unused = buffer[pos:]
        else:
            self._pending = buffer[pos:]
        return out

    def _size_line(self, line: bytes, pos: int) -> int:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError("malformed chunk-size line")
        size = int(match.group(1), 16)
        self.total += size
        if self.total > self.max_body_bytes:
            raise BodyTooLarge(f"chunked body exceeds the limit of {self.max_body_bytes} bytes")
        self._left = size
        self._state = "data" if size else "trailer"
        return pos + len(line)

    def _trailer(self, buffer: bytes, pos: int) -> int | None:
        """Consume the trailer section (field lines, then an empty line) from pos; None while
        it is incomplete."""
        if buffer.startswith(b"\r\n", pos):
            self.done = True
            return pos + 2
        found = buffer.find(b"\r\n\r\n", pos)
        if (found < 0 and len(buffer) - pos > self.max_trailer_bytes) or found - pos > self.max_trailer_bytes:
            raise HeadersTooLarge(f"chunked trailer exceeds {self.max_trailer_bytes} bytes")
        if found < 0:
            return None
        for line in buffer[pos:found].decode("latin-1").split("\r\n"):
            _field(line)
        self.done = True
        return found + 4


class SocketReader:
    """Reads a socket through its own buffer, under a deadline that can grow with the bytes read.

    `expect(timeout, min_rate)` starts a clock: the reads that follow must end by
    now + timeout + (bytes received since) / min_rate, and no single read may wait longer than
    `stall`. Past either, read() raises RequestTimeout.
    """

    def __init__(self, sock: socket.socket, buffered: bytes = b""):
        self.sock = sock
        self._buffer = bytes(buffered)
        self._started = time.monotonic()
        self._timeout = None
        self._rate = 0.0
        self._stall = None
        self._received = 0

    def expect(self, timeout: float, min_rate: float = 0.0, stall: float | None = None) -> None:
        self._started, self._timeout, self._rate, self._stall = time.monotonic(), timeout, min_rate, stall
        self._received = 0

    def deadline(self) -> float | None:
        if self._timeout is None:
            return None
        grace = self._received / self._rate if self._rate > 0 else 0.0
        return self._started + self._timeout + grace

    def read(self, limit: int = READ_SIZE) -> bytes:
        """Up to `limit` bytes (at least one), or b"" once the peer has closed its side."""
        if self._buffer:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        deadline = self.deadline()
        wait = None if deadline is None else deadline - time.monotonic()
        if self._stall is not None:
            wait = self._stall if wait is None else min(wait, self._stall)
        if wait is not None and wait <= 0:
            raise RequestTimeout("timed out reading the request")
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(limit)
        except (socket.timeout, BlockingIOError):
            raise RequestTimeout("timed out reading the request") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None
        self._received += len(data)
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (what followed a chunked body)."""
        self._buffer = bytes(data) + self._buffer

    def take_buffer(self) -> bytes:
        """The bytes read but not consumed: the start of the next request on this connection."""
        data, self._buffer = self._buffer, b""
        return data


class Body:
    """A request body read from a SocketReader, Content-Length or chunked; `complete` once all of
    it (and nothing after it) was consumed."""

    def __init__(self, reader: SocketReader, framing: int, *, max_body_bytes: int, max_trailer_bytes: int):
        self.reader = reader
        self.framing = framing
        self.max_body_bytes = max_body_bytes
        self.max_trailer_bytes = max_trailer_bytes
        self.complete = framing == 0

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces of at most READ_SIZE bytes. Raises ProtocolError (400) if the client
        closes early, RequestTimeout past the reader's deadline, BodyTooLarge for a chunked body
        over the limit."""
        if self.framing == CHUNKED:
            yield from self._chunked()
            return
        remaining = self.framing
        while remaining:
            data = self.reader.read(min(READ_SIZE, remaining))
            if not data:
                raise ProtocolError("request body ended before Content-Length bytes")
            remaining -= len(data)
            if not remaining:
                self.complete = True
            yield data

    def _chunked(self) -> Iterator[bytes]:
        decoder = ChunkedDecoder(max_body_bytes=self.max_body_bytes, max_trailer_bytes=self.max_trailer_bytes)
        while not decoder.done:
            data = self.reader.read()
            if not data:
                raise ProtocolError("chunked request body ended before its last chunk")
            pieces = decoder.feed(data)
            if decoder.done:
                self.reader.unread(decoder.unused)
                self.complete = True
            yield from pieces

    def discard(self) -> None:
        for _ in self.chunks():
            pass
