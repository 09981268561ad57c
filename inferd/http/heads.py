"""Request heads (RFC 9112 §2-§6), sans-IO: where a head ends, what it says, how long its body is.

Strict on purpose, because a lenient parser in front of nothing is how requests get smuggled:
one SP between the parts of the request line; header names are tokens with no space before the
colon; no obs-fold, no bare CR, no control characters in values; Content-Length is digits only
and may repeat only with the same value; Transfer-Encoding must be exactly "chunked" and may not
come with Content-Length. Lenient where RFC 9112 asks for it: empty lines before a request line are
skipped (§2.2, by the caller) and a bare LF ends a line of the head (§2.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BodyTooLarge, ExpectationFailed, HeadersTooLarge, ProtocolError, RequestLineTooLong
from .grammar import TOKEN, FieldLineError, field_line

CHUNKED = -1  # body_framing(): the body is chunked; its length is known at its end

_HEAD_END = re.compile(rb"\n\r?\n")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.I)
# Fields whose repetition would let two parsers disagree about the request (RFC 9110 §5.3).
_SINGLE = ("host", "content-type", "authorization", "expect")


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

    @property
    def declares_body(self) -> bool:
        """True when the head announces body bytes (chunked, or a non-zero Content-Length)."""
        lengths = self.headers.get_all("content-length")
        return bool(self.headers.get_all("transfer-encoding")) or any(v.strip("0 \t") for v in lengths)


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
    try:
        headers = Headers([field_line(line) for line in field_lines])
    except FieldLineError as exc:
        raise ProtocolError(str(exc)) from None
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
    if not TOKEN.fullmatch(method):
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
    values = set(lengths)
    value = values.pop()
    if values or not value.isascii() or not value.isdigit():
        raise ProtocolError("invalid Content-Length")
    if len(value.lstrip("0")) > 18 or int(value) > max_body_bytes:
        raise BodyTooLarge(f"request body is {value.lstrip('0')} bytes; the limit is {max_body_bytes}")
    return int(value)
