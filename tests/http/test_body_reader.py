"""Reading a body without sockets (inferd/http/body.py): a stand-in socket over BytesIO, as
CPython's own HTTP tests do. Sized and chunked bodies, fed in pieces; the bytes after a body left
for the next request; 100 Continue sent before the first read only; every refusal."""

from __future__ import annotations

import io

import pytest

from inferd.http.body import BodyReader, SocketReader
from inferd.http.errors import BodyTooLarge, LengthRequired, ProtocolError, RequestTimeout
from inferd.http.heads import head_length, parse_head
from inferd.http.settings import HttpSettings


class FakeSocket:
    """recv() hands out at most `piece` bytes at a time from `data`; sendall() is recorded."""

    def __init__(self, data: bytes, piece: int = 7):
        self.incoming, self.piece, self.sent = io.BytesIO(data), piece, b""

    def recv(self, limit: int) -> bytes:
        return self.incoming.read(min(limit, self.piece))

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, seconds) -> None:
        pass


def reader_for(request: bytes, piece: int = 7, **limits):
    """(BodyReader, SocketReader, FakeSocket) for a whole request; the head is parsed, the rest
    is on the socket (the first `piece` bytes of it already buffered, as the waiting room leaves them)."""
    length = head_length(request, max_request_line=8192, max_header_bytes=16384)
    head = parse_head(request[:length], max_header_count=64)
    sock = FakeSocket(request[length + piece:], piece)
    socket_reader = SocketReader(sock, request[length:length + piece])
    return BodyReader(socket_reader, head, HttpSettings(**limits)), socket_reader, sock


def test_a_sized_body_is_read_whole_into_one_buffer_of_its_length():
    body, reader, _ = reader_for(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 26\r\n\r\n"
                                 b"abcdefghijklmnopqrstuvwxyzGET / HTTP/1.1\r\n")
    assert not body.complete
    data = body.read()
    assert data == b"abcdefghijklmnopqrstuvwxyz" and type(data) is bytearray and body.complete
    assert reader.take_buffer() == b""  # nothing read past the body: the next request is untouched


def test_a_chunked_body_leaves_what_follows_it_for_the_next_request():
    request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT"
    body, reader, _ = reader_for(request, piece=4)
    assert body.read() == b"hello world" and body.complete
    assert reader.take_buffer() + reader.sock.incoming.read() == b"NEXT"


def test_100_continue_is_sent_at_the_first_read_and_only_when_asked():
    asked = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    body, _, sock = reader_for(asked)
    assert sock.sent == b""  # the head's checks come first; nothing is promised yet
    assert body.read() == b"ok" and sock.sent == b"HTTP/1.1 100 Continue\r\n\r\n"
    body, _, sock = reader_for(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
    assert body.read() == b"ok" and sock.sent == b""


def test_no_body_declared():
    body, _, _ = reader_for(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert body.complete
    with pytest.raises(LengthRequired):
        body.read(required=True)
    assert body.read(required=False) == b""


@pytest.mark.parametrize("request_bytes, error", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\nshort", ProtocolError),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", ProtocolError),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 1024, BodyTooLarge),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n", BodyTooLarge),
])
def test_bodies_cut_short_or_too_large_are_refused(request_bytes, error):
    body, _, _ = reader_for(request_bytes, max_body_bytes=1000)
    with pytest.raises(error):
        body.read()
    assert not body.complete  # the connection must not carry another request


def test_the_body_deadline_grows_with_the_bytes_received():
    reader = SocketReader(FakeSocket(b"x" * 100, piece=10))
    reader.expect(timeout=0.0, min_rate=1000.0)  # no time of its own: only what the bytes earn
    with pytest.raises(RequestTimeout):
        reader.read()
    reader = SocketReader(FakeSocket(b"x" * 100, piece=10))
    reader.expect(timeout=5.0, min_rate=1000.0)
    before = reader.deadline()
    assert reader.read() == b"x" * 10
    assert reader.deadline() == pytest.approx(before + 10 / 1000.0)  # 10 bytes earn 10 ms
