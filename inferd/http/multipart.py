"""Sans-IO, streaming multipart/form-data parser (RFC 7578, RFC 2046 §5.1) with explicit limits.

The caller feeds body bytes and gets typed events; nothing here reads a socket. Every malformed
body raises MultipartError (HTTP 400), every crossed limit LimitExceeded (HTTP 413); no other
exception escapes for any input bytes.

Leniencies, chosen because real clients need them:
- a preamble before the first boundary and an epilogue after the last are ignored (RFC 2046 §5.1.1);
- transport padding (spaces, tabs) between a boundary and its CRLF is skipped;
- header names and Content-Disposition parameter names are case-insensitive;
- quoted parameter values unescape backslash-quote and backslash-backslash (RFC 7230
  quoted-string) but keep any other backslash (old browsers send "C:\\dir\\x.png"); a value that
  only parses without escapes (filename="dir\\") is taken verbatim; then "%22" becomes '"' (how
  browsers, curl, urllib3 and httpx escape a quote: WHATWG HTML "multipart/form-data encoding");
- name*= and filename*= (RFC 5987, UTF-8 or ISO-8859-1) are decoded and preferred;
- a part without Content-Type has content_type None; a body with no parts at all is accepted.

Strict, on purpose: line breaks must be CRLF (every client above sends CRLF; accepting a bare LF
would need a second delimiter search); part headers must be UTF-8, single-line (no obs-fold) and
free of control characters; a line that starts with the delimiter but is not a boundary line is
an error (RFC 2046 §5.1.1 forbids the boundary inside a part); Content-Disposition and
Content-Type must not repeat, and neither may a parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Union
from urllib.parse import unquote_to_bytes

from .grammar import CTL, FieldLineError, field_line

__all__ = [
    "LimitExceeded",
    "MultipartError",
    "MultipartParser",
    "Part",
    "PartData",
    "PartEnd",
    "PartStart",
    "UnsupportedMediaType",
    "iter_parts",
    "parse_boundary",
]


class MultipartError(ValueError):
    """The body is not acceptable multipart/form-data."""

    http_status = 400


class LimitExceeded(MultipartError):
    """A configured size or count limit was crossed; the message names the limit and its value."""

    http_status = 413


class UnsupportedMediaType(MultipartError):
    """The Content-Type is not multipart/form-data at all."""

    http_status = 415


@dataclass(frozen=True)
class PartStart:
    """A part's headers are complete. headers: (lower-cased name, value) pairs in order."""

    name: str
    filename: str | None
    content_type: str | None
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PartData:
    """The next piece of the current part's body; a part may arrive in any number of pieces."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part's body is complete."""


@dataclass(frozen=True)
class Part:
    """A whole part, as assembled by iter_parts()."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


Event = Union[PartStart, PartData, PartEnd]

# RFC 2046 §5.1.1: 1 to 70 bchars, the last one not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# One parameter: key = "quoted-string" or key = bare value, up to the next ';' or the end.
# The second alternative takes a quoted value verbatim when escape-aware reading fails, as for
# filename="dir\" from curl or a browser (WHATWG form encoding never backslash-escapes).
_PARAM = re.compile(
    r'([^\s=;"]+)[ \t]*=[ \t]*'
    r'(?:"((?:[^"\\]|\\.)*)"[ \t]*(?=;|\Z)|"([^"]*)"[ \t]*(?=;|\Z)|([^;"]*)(?=;|\Z))',
    re.S,
)
_QUOTED_PAIR = re.compile(r'\\([\\"])')
_PADDING = re.compile(rb"[ \t]*")

# Parser states.
_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE, _CLOSED, _FAILED = range(7)


def parse_boundary(content_type_header: str) -> str:
    """Return the boundary of a multipart/form-data Content-Type value.

    Raises UnsupportedMediaType (415) for another media type and MultipartError (400) for a
    missing or invalid boundary.
    """
    media_type, params = _parse_header_value(content_type_header)
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(f"expected multipart/form-data, got {_short(media_type)!r}")
    boundary = params.get("boundary")
    if boundary is None:
        raise MultipartError("multipart/form-data without a boundary parameter")
    _check_boundary(boundary)
    return boundary


class MultipartParser:
    """Push parser: feed() the body in pieces of any size, then close().

    After it raises once, every further call raises MultipartError. Not thread-safe.
    """

    def __init__(
        self,
        boundary: str,
        *,
        max_body_bytes: int,
        max_parts: int,
        max_header_bytes: int = 8192,
        max_part_bytes: int,
        max_headers_per_part: int = 16,
    ) -> None:
        _check_boundary(boundary)
        limits = dict(
            max_body_bytes=max_body_bytes,
            max_parts=max_parts,
            max_header_bytes=max_header_bytes,
            max_part_bytes=max_part_bytes,
            max_headers_per_part=max_headers_per_part,
        )
        for key, value in limits.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        self._max_body_bytes = max_body_bytes
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        self._max_part_bytes = max_part_bytes
        self._max_headers_per_part = max_headers_per_part
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._state = _PREAMBLE
        # RFC 2046 §5.1.1: the first boundary may open the body without a CRLF before it; a
        # virtual CRLF lets one delimiter search find it there as well as after a preamble.
        self._tail = b"\r\n"
        self._body_bytes = 0
        self._parts = 0
        self._part_bytes = 0
        self._in_part = False
        self._padded = False
        self._header_scanned = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume the next piece of the body; return the events it completed, in order.

        Raises LimitExceeded when a limit is crossed and MultipartError for a malformed body.
        """
        self._check_usable()
        try:
            self._body_bytes += len(chunk)
            if self._body_bytes > self._max_body_bytes:
                raise LimitExceeded(f"body exceeds max_body_bytes={self._max_body_bytes}")
            if self._state == _EPILOGUE:
                return []
            data = self._tail + chunk if self._tail else bytes(chunk)
            events: list[Event] = []
            self._tail = data[self._parse(data, events):]
            return events
        except MultipartError:
            self._state = _FAILED
            raise

    def close(self) -> list[Event]:
        """Declare the end of the body; raise MultipartError unless the final boundary came."""
        self._check_usable()
        state, self._state = self._state, _FAILED
        if state == _PREAMBLE:
            raise MultipartError("the boundary never appears in the body")
        if state != _EPILOGUE:
            raise MultipartError("body ended before the final boundary")
        self._state = _CLOSED
        return []

    def _check_usable(self) -> None:
        if self._state == _FAILED:
            raise MultipartError("parser already failed on this body")
        if self._state == _CLOSED:
            raise MultipartError("parser is closed")

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Run the state machine over data; return how many leading bytes it consumed."""
        delimiter = self._delimiter
        end = len(data)
        pos = 0
        while True:
            state = self._state
            if state == _BODY or state == _PREAMBLE:
                # Everything before the next delimiter is part data (or ignored preamble).
                found = data.find(delimiter, pos)
                stop = self._safe_end(data, pos) if found < 0 else found
                if state == _BODY and stop > pos:
                    self._part_data(events, data[pos:stop])
                if found < 0:
                    return stop
                pos = found + len(delimiter)
                self._state = _AFTER_DELIMITER
            elif state == _AFTER_DELIMITER:
                # RFC 2046 §5.1.1: "--" right after the boundary closes the body; otherwise
                # optional transport padding, then the CRLF that ends the boundary line.
                if not self._padded:
                    if end - pos < 2:
                        return pos
                    if data.startswith(b"--", pos):
                        self._end_part(events)
                        self._state = _EPILOGUE
                        return end
                padding_end = _PADDING.match(data, pos).end()  # type: ignore[union-attr]
                if padding_end > pos:
                    self._padded, pos = True, padding_end
                if end - pos < 2:
                    return pos
                if not data.startswith(b"\r\n", pos):
                    raise MultipartError("a boundary line does not end with CRLF")
                self._padded = False
                self._end_part(events)
                self._begin_part()
                # pos stays on the boundary line's CRLF, so "\r\n\r\n" also finds an empty
                # header section.
            elif state == _HEADERS:
                # The section runs from pos + 2 to the end of the blank line.
                found = data.find(b"\r\n\r\n", max(pos, pos + self._header_scanned - 3))
                if found < 0:
                    # The section is longer than what is here, so this many bytes already fail.
                    if end - pos - 2 >= self._max_header_bytes:
                        raise self._header_limit()
                    self._header_scanned = end - pos
                    return pos
                if found + 2 - pos > self._max_header_bytes:
                    raise self._header_limit()
                events.append(self._start_part(data[pos + 2 : found]))
                pos = found + 4
                self._state = _BODY
            else:  # _EPILOGUE: ignored (RFC 2046 §5.1.1)
                return end

    def _safe_end(self, data: bytes, pos: int) -> int:
        """Return where the suffix of data that could still begin a delimiter starts."""
        delimiter = self._delimiter
        cr = data.find(b"\r", max(pos, len(data) - len(delimiter) + 1))
        while cr >= 0 and not delimiter.startswith(data[cr:]):
            cr = data.find(b"\r", cr + 1)
        return len(data) if cr < 0 else cr

    def _part_data(self, events: list[Event], data: bytes) -> None:
        self._part_bytes += len(data)
        if self._part_bytes > self._max_part_bytes:
            raise LimitExceeded(f"a part exceeds max_part_bytes={self._max_part_bytes}")
        events.append(PartData(data))

    def _end_part(self, events: list[Event]) -> None:
        if self._in_part:
            events.append(PartEnd())
            self._in_part = False

    def _begin_part(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise LimitExceeded(f"body has more than max_parts={self._max_parts} parts")
        self._state = _HEADERS
        self._header_scanned = 0

    def _header_limit(self) -> LimitExceeded:
        return LimitExceeded(f"part headers exceed max_header_bytes={self._max_header_bytes}")

    def _start_part(self, raw: bytes) -> PartStart:
        """Validate one part's header section (without its final CRLF) and return its event."""
        headers = _parse_header_lines(raw, self._max_headers_per_part)
        disposition = _single_header(headers, "content-disposition")
        if disposition is None:
            raise MultipartError("a part has no Content-Disposition header (RFC 7578 §4.2)")
        kind, params = _parse_header_value(disposition)
        if kind != "form-data":
            raise MultipartError(f"Content-Disposition is {_short(kind)!r}, not form-data")
        name = _disposition_param(params, "name")
        if name is None:
            raise MultipartError("Content-Disposition has no name (RFC 7578 §4.2)")
        filename = _disposition_param(params, "filename")
        content_type = _single_header(headers, "content-type") or None
        self._in_part = True
        self._part_bytes = 0
        return PartStart(name, filename, content_type, tuple(headers))


def iter_parts(chunks: Iterable[bytes], boundary: str, **limits: int) -> Iterator[Part]:
    """Parse a body given as chunks; yield each whole part as soon as its data is complete.

    Takes MultipartParser's limits as keywords. Raises what the parser raises, possibly after
    some parts were yielded: collect them all before acting if the body must be valid as a whole.
    """
    parser = MultipartParser(boundary, **limits)
    start: PartStart | None = None
    pieces: list[bytes] = []
    for event in _events(parser, chunks):
        if isinstance(event, PartStart):
            start, pieces = event, []
        elif isinstance(event, PartData):
            pieces.append(event.data)
        elif start is not None:
            yield Part(start.name, start.filename, start.content_type, b"".join(pieces))


def _events(parser: MultipartParser, chunks: Iterable[bytes]) -> Iterator[Event]:
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


def _check_boundary(boundary: str) -> None:
    if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
        raise MultipartError(
            "invalid multipart boundary (RFC 2046 §5.1.1: 1 to 70 letters, digits or '()+_,-./:=? )"
        )


def _parse_header_lines(raw: bytes, max_headers: int) -> list[tuple[str, str]]:
    """Split a header section into (lower-cased name, value) pairs; raise on any bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError("part headers are not valid UTF-8") from None
    headers: list[tuple[str, str]] = []
    for line in text.split("\r\n") if text else ():
        if len(headers) == max_headers:
            raise LimitExceeded(f"a part has more than max_headers_per_part={max_headers} headers")
        try:
            headers.append(field_line(line, "part header"))
        except FieldLineError as exc:
            raise MultipartError(str(exc)) from None
    return headers


def _single_header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key == name]
    if len(values) > 1:
        raise MultipartError(f"a part repeats the {name} header")
    return values[0] if values else None


def _parse_header_value(value: str) -> tuple[str, dict]:
    """Split 'main; k=v; k="v"' into (lower-cased main, {lower-cased key: unquoted value})."""
    if not isinstance(value, str) or CTL.search(value):
        raise MultipartError("control character in a header value")
    main, _, rest = value.partition(";")
    params: dict = {}
    pos = 0
    while pos < len(rest):
        if rest[pos] in " \t;":
            pos += 1
            continue
        match = _PARAM.match(rest, pos)
        if match is None:
            raise MultipartError(f"malformed header parameter {_short(rest[pos:])!r}")
        key, escaped, verbatim, bare = match.groups()
        key = key.lower()
        if key in params:
            raise MultipartError(f"header parameter {_short(key)!r} given twice")
        if escaped is not None:
            params[key] = _QUOTED_PAIR.sub(r"\1", escaped)
        else:
            params[key] = verbatim if verbatim is not None else bare.strip()
        pos = match.end()
    return main.strip(" \t").lower(), params


def _disposition_param(params: dict, key: str) -> str | None:
    """Return a Content-Disposition parameter, preferring its RFC 5987 form key*=."""
    if key + "*" in params:
        return _decode_ext_value(params[key + "*"])
    value = params.get(key)
    return None if value is None else value.replace("%22", '"')


def _decode_ext_value(value: str) -> str:
    """Decode an RFC 5987 ext-value: charset'language'percent-encoded."""
    charset, _, rest = value.partition("'")
    _language, quote, encoded = rest.partition("'")
    if not quote or charset.lower() not in ("utf-8", "iso-8859-1"):
        raise MultipartError(f"malformed RFC 5987 parameter value {_short(value)!r}")
    try:
        return unquote_to_bytes(encoded).decode(charset)
    except UnicodeDecodeError:
        raise MultipartError(f"RFC 5987 parameter value is not {charset}") from None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
