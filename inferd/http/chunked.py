"""The chunked transfer coding (RFC 9112 §7.1), sans-IO: a push decoder that appends the body's
data to one bytearray, so memory stays bounded by the body's size however small the chunks.

Tiny chunks cost CPU per chunk (a size line parsed for each), so after the first FREE_CHUNKS a
body must average at least MIN_AVERAGE_CHUNK bytes of data per chunk; real clients send kilobytes.
"""

from __future__ import annotations

import re

from .errors import BodyTooLarge, HeadersTooLarge, ProtocolError
from .grammar import FieldLineError, field_line

MAX_CHUNK_LINE = 1024  # chunk-size line with extensions; real clients send a few bytes
FREE_CHUNKS = 1024
MIN_AVERAGE_CHUNK = 256

_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


class ChunkedDecoder:
    """feed() appends the data it completes to `sink`; after `done`, `unused` holds the bytes that
    followed the body (the next request on the connection). Extensions and trailer fields are read
    and discarded.

    Raises BodyTooLarge (413) once the chunk sizes exceed max_body_bytes (before their data is
    read), HeadersTooLarge (431) for a trailer section over max_trailer_bytes, ProtocolError (400)
    for anything malformed or for chunks too small on average.
    """

    def __init__(self, sink: bytearray, *, max_body_bytes: int, max_trailer_bytes: int):
        self.sink = sink
        self.max_body_bytes = max_body_bytes
        self.max_trailer_bytes = max_trailer_bytes
        self.total = 0
        self.chunks = 0
        self.done = False
        self.unused = b""
        self._pending = b""
        self._left = 0  # data bytes still to come in the current chunk
        self._state = "size"  # size -> data -> crlf -> size ... -> trailer -> done

    def feed(self, data: bytes) -> None:
        if self.done:
            self.unused += data
            return
        buffer = self._pending + data if self._pending else data
        self._pending = b""
        pos = self._consume(buffer)
        if self.done:
            self.unused = buffer[pos:]
        else:
            self._pending = buffer[pos:]

    def _consume(self, buffer: bytes) -> int:
        """Advance through `buffer` as far as it allows; returns the position reached."""
        pos = 0
        while not self.done:
            if self._state == "data":
                if pos == len(buffer):
                    break
                end = min(len(buffer), pos + self._left)
                self.sink += memoryview(buffer)[pos:end]
                self._left -= end - pos
                pos = end
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
        return pos

    def _size_line(self, line: bytes, pos: int) -> int:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError("malformed chunk-size line")
        size = int(match.group(1), 16)
        self.total += size
        if self.total > self.max_body_bytes:
            raise BodyTooLarge(f"chunked body exceeds the limit of {self.max_body_bytes} bytes")
        if size:
            self.chunks += 1
            if self.chunks > FREE_CHUNKS and self.total < MIN_AVERAGE_CHUNK * self.chunks:
                raise ProtocolError(f"chunked body in chunks of {self.total // self.chunks} bytes on average; "
                                    f"send at least {MIN_AVERAGE_CHUNK} bytes per chunk")
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
        try:
            for line in buffer[pos:found].decode("latin-1").split("\r\n"):
                field_line(line, "trailer")
        except FieldLineError as exc:
            raise ProtocolError(str(exc)) from None
        self.done = True
        return found + 4
