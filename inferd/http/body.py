"""Reading a request body off its socket, within the limits and the body deadline.

`SocketReader` reads a socket through its own buffer under a deadline that grows with the bytes
received; `BodyReader.read` sends 100 Continue when asked for it, then reads a Content-Length body
into a bytearray of its length, or a chunked one into a bytearray that grows as it comes (never a
list of pieces), and hands that bytearray on as it is: a body costs its size in memory once.
"""

from __future__ import annotations

import socket
import time

from .chunked import ChunkedDecoder
from .errors import ClientDisconnected, LengthRequired, ProtocolError, RequestTimeout
from .heads import CHUNKED, RequestHead, body_framing
from .responses import CONTINUE
from .settings import READ_SIZE


class SocketReader:
    """Reads a socket through its own buffer, under a deadline that can grow with the bytes read.

    `expect(timeout, min_rate, stall)` starts a clock: the reads that follow must end by
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
        self.sock.settimeout(self._wait())
        try:
            data = self.sock.recv(limit)
        except (socket.timeout, BlockingIOError):
            raise RequestTimeout("timed out reading the request") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None
        self._received += len(data)
        return data

    def _wait(self) -> float | None:
        deadline = self.deadline()
        wait = None if deadline is None else deadline - time.monotonic()
        if self._stall is not None:
            wait = self._stall if wait is None else min(wait, self._stall)
        if wait is not None and wait <= 0:
            raise RequestTimeout("timed out reading the request")
        return wait

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (what followed a chunked body)."""
        self._buffer = bytes(data) + self._buffer

    def take_buffer(self) -> bytes:
        """The bytes read but not consumed: the start of the next request on this connection."""
        data, self._buffer = self._buffer, b""
        return data


class BodyReader:
    """One request's body: `read()` returns it whole; `complete` once all of it (and nothing
    after it) was consumed, so the connection can carry the next request."""

    def __init__(self, reader: SocketReader, head: RequestHead, limits):
        self.reader = reader
        self.head = head
        self.limits = limits
        self.framing = None
        self.complete = not head.declares_body

    def read(self, *, required: bool = True) -> bytes | bytearray:
        """The body. Framing is checked before any byte is read (411 when `required` and no length
        is declared, 413, 400); 100 Continue is sent, and the body deadline starts, at the first
        read. Raises ProtocolError (400) if the client closes early, RequestTimeout past the
        deadline, BodyTooLarge for a chunked body over the limit."""
        limits = self.limits
        self.framing = body_framing(self.head, limits.max_body_bytes)
        if self.framing is None:
            if required:
                raise LengthRequired("Content-Length is required (or Transfer-Encoding: chunked)")
            return b""
        if self.framing == 0:
            self.complete = True
            return b""
        self._send_continue()
        self.reader.expect(limits.body_timeout, limits.min_body_rate, stall=limits.request_timeout)
        body = self._chunked() if self.framing == CHUNKED else self._sized(self.framing)
        self.complete = True
        return body

    def _send_continue(self) -> None:
        if not self.head.expects_continue:
            return
        try:
            self.reader.sock.settimeout(self.limits.request_timeout)
            self.reader.sock.sendall(CONTINUE)
        except OSError:
            raise ClientDisconnected("cannot send 100 Continue") from None

    def _sized(self, length: int) -> bytearray:
        body = bytearray(length)
        view, filled = memoryview(body), 0
        while filled < length:
            data = self.reader.read(min(READ_SIZE, length - filled))
            if not data:
                raise ProtocolError("request body ended before Content-Length bytes")
            view[filled:filled + len(data)] = data
            filled += len(data)
        view.release()
        return body

    def _chunked(self) -> bytearray:
        body = bytearray()
        decoder = ChunkedDecoder(body, max_body_bytes=self.limits.max_body_bytes,
                                 max_trailer_bytes=self.limits.max_header_bytes)
        while not decoder.done:
            data = self.reader.read()
            if not data:
                raise ProtocolError("chunked request body ended before its last chunk")
            decoder.feed(data)
        self.reader.unread(decoder.unused)
        return body
