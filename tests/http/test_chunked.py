"""The chunked decoder (inferd/http/chunked.py) without sockets: each payload fed whole, byte by
byte and split at every offset gives the same body, the same leftover bytes, or the same error
(type and message). Its error paths were uncovered before `make coverage` showed them (issue 14)."""

from __future__ import annotations

import pytest

from inferd.http.chunked import ChunkedDecoder
from inferd.http.errors import BodyTooLarge, HeadersTooLarge, ProtocolError

LIMITS = {"max_body_bytes": 64, "max_trailer_bytes": 32}


def decode(pieces: list[bytes]) -> tuple[bytes, bytes]:
    """(body, the bytes after it) once the decoder is done; raises what the decoder raises."""
    body = bytearray()
    decoder = ChunkedDecoder(body, **LIMITS)
    for piece in pieces:
        decoder.feed(piece)
    assert decoder.done, "the payload ended before the last chunk"
    return bytes(body), decoder.unused


def splits(payload: bytes):
    yield [payload]
    yield [payload[i:i + 1] for i in range(len(payload))]
    for cut in range(1, len(payload)):
        yield [payload[:cut], payload[cut:]]


GOOD = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", b"hello world", b"GET / HTTP/1.1\r\n"),
    (b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\nnext", b"abc", b"next"),
    (b"0\r\n\r\n", b"", b""),
]

BAD = [
    (b"5\r\nhelloXX0\r\n\r\n", ProtocolError, "chunk data not followed by CRLF"),
    (b"zz\r\n", ProtocolError, "malformed chunk-size line"),
    (b"5\r\nhello\r\n-1\r\n", ProtocolError, "malformed chunk-size line"),
    (b"1" * 1100, ProtocolError, "chunk-size line too long"),
    (b"41\r\n", BodyTooLarge, "chunked body exceeds the limit of 64 bytes"),
    (b"0\r\n" + b"X-Long: " + b"a" * 40 + b"\r\n\r\n", HeadersTooLarge, "chunked trailer exceeds 32 bytes"),
    (b"0\r\nX-Long: " + b"a" * 40, HeadersTooLarge, "chunked trailer exceeds 32 bytes"),
    (b"0\r\nbad trailer\r\n\r\n", ProtocolError, "malformed trailer line"),
    (b"0\r\nX-A: b\x01c\r\n\r\n", ProtocolError, "control character in a trailer line"),
]


@pytest.mark.parametrize("payload, body, unused", GOOD)
def test_good_bodies_decode_the_same_however_they_arrive(payload, body, unused):
    for pieces in splits(payload):
        assert decode(pieces) == (body, unused), pieces


@pytest.mark.parametrize("payload, error, message", BAD)
def test_bad_bodies_fail_the_same_however_they_arrive(payload, error, message):
    for pieces in splits(payload):
        with pytest.raises(error) as raised:
            decode(pieces)
        assert str(raised.value).startswith(message), (pieces, str(raised.value))


def test_bytes_fed_after_the_end_are_kept_for_the_next_request():
    body = bytearray()
    decoder = ChunkedDecoder(body, **LIMITS)
    decoder.feed(b"2\r\nok\r\n0\r\n\r\nGE")
    decoder.feed(b"T / HTTP/1.1\r\n")
    assert (bytes(body), decoder.unused) == (b"ok", b"GET / HTTP/1.1\r\n")


def test_an_incomplete_body_is_not_done():
    body = bytearray()
    decoder = ChunkedDecoder(body, **LIMITS)
    for piece in (b"5\r\nhel", b"lo\r\n", b"0\r\nX-A: 1\r\n"):
        decoder.feed(piece)
        assert not decoder.done
    assert bytes(body) == b"hello"
