"""inferd.multipart: bodies captured from real clients, every chunking of every payload, one test
per limit, a table of malformed bodies, hypothesis round trips and fuzzing, a regression corpus.

Fixtures live in tests/data/multipart/: `<client>-<case>.body` captured byte-exact by capture.py,
described by manifest.json; regressions/*.bin hold inputs that once broke something (first line:
the request's Content-Type; the rest: the body, byte-exact).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import time
from urllib.parse import quote

import pytest
from hypothesis import assume, given, HealthCheck, settings, strategies as st

from inferd.http import multipart
from inferd.http.multipart import (
    LimitExceeded,
    MultipartError,
    MultipartParser,
    Part,
    PartData,
    PartEnd,
    PartStart,
    UnsupportedMediaType,
    iter_parts,
    parse_boundary,
)
from tests.support import REPO

DATA = REPO / "tests" / "data" / "multipart"
MANIFEST = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
REGRESSIONS = sorted((DATA / "regressions").glob("*.bin"))
ROOMY = dict(max_body_bytes=1 << 30, max_parts=1000, max_part_bytes=1 << 30)


# -- helpers ---------------------------------------------------------------------------------


def split_at(body: bytes, offsets) -> list[bytes]:
    """body cut at the given offsets (any order, repeats allowed: empty chunks are fed too)."""
    cuts = [0, *sorted(offsets), len(body)]
    return [body[a:b] for a, b in zip(cuts, cuts[1:])]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def events(boundary: str, chunks, **limits) -> list:
    """Feed chunks then close; return the events with runs of PartData merged into one."""
    parser = MultipartParser(boundary, **{**ROOMY, **limits})
    out: list = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    merged: list = []
    for event in out:
        assert not isinstance(event, PartData) or event.data, "empty PartData"
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def outcome(boundary: str, chunks, **limits):
    """events(), or ("raised", type, message) for a MultipartError; any other exception escapes."""
    try:
        return events(boundary, chunks, **limits)
    except MultipartError as exc:
        return ("raised", type(exc), str(exc))


def parts_of(boundary: str, chunks, **limits) -> list[tuple]:
    return [
        (p.name, p.filename, p.content_type, p.data)
        for p in iter_parts(chunks, boundary, **{**ROOMY, **limits})
    ]


def summary(part: Part) -> dict:
    """A part as manifest.json describes it."""
    return {
        "name": part.name,
        "filename": part.filename,
        "content_type": part.content_type,
        "size": len(part.data),
        "sha256": hashlib.sha256(part.data).hexdigest(),
    }


def form(boundary: str, *parts: tuple[bytes, bytes], close: bool = True) -> bytes:
    """A body from (header section, data) pairs; header lines are CRLF-joined by the caller."""
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return body + (b"--" + b + b"--\r\n" if close else b"")


def cd(name: str = "f", extra: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}'.encode()


# -- payloads that must parse ------------------------------------------------------------------

# Hand-written in the shapes real clients use; captured bodies come from manifest.json.
WEBKIT = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
VALID = {
    # A browser's form: WHATWG escapes '"' as %22 and sends backslashes raw.
    "browser-style": (
        f"multipart/form-data; boundary={WEBKIT}",
        form(
            WEBKIT,
            (cd("file", '; filename="a %22cat%22 C:\\x.png"') + b"\r\nContent-Type: image/png", b"\x89PNG\r\n\x1a\n"),
            (cd("note"), b"hello"),
        ),
        [("file", 'a "cat" C:\\x.png', "image/png", b"\x89PNG\r\n\x1a\n"), ("note", None, None, b"hello")],
    ),
    "quoted-boundary-all-bchars": (
        "multipart/form-data; boundary=\"a'()+_,-./:=? z\"",
        form("a'()+_,-./:=? z", (cd(), b"x")),
        [("f", None, None, b"x")],
    ),
    "preamble-and-epilogue": (
        "multipart/form-data; boundary=b",
        b"This is a preamble.\r\n-- b is not a delimiter\r\n--\r\n" + form("b", (cd(), b"x")) + b"epilogue\r\n--b\r\n",
        [("f", None, None, b"x")],
    ),
    "transport-padding": (
        "multipart/form-data; boundary=b",
        b"--b \t \r\n" + cd() + b"\r\n\r\nx\r\n--b\t\r\n" + cd("g") + b"\r\n\r\ny\r\n--b--  \r\n",
        [("f", None, None, b"x"), ("g", None, None, b"y")],
    ),
    "rfc5987-filename-preferred": (
        "multipart/form-data; boundary=b",
        form("b", (cd("file", "; filename=\"fallback.png\"; filename*=UTF-8''%E5%90%8D%20%C3%BC.png"), b"x")),
        [("file", "名 ü.png", None, b"x")],
    ),
    "rfc5987-latin1-name": (
        "multipart/form-data; boundary=b",
        form("b", (b"Content-Disposition: form-data; name*=iso-8859-1'en'%FCber", b"x")),
        [("\u00fcber", None, None, b"x")],
    ),
    "header-case-insensitive": (
        "Multipart/Form-Data; BOUNDARY=b",
        form("b", (b'CONTENT-DISPOSITION: Form-Data; NAME="f"; FileName="y.txt"\r\ncontent-TYPE: text/plain', b"x")),
        [("f", "y.txt", "text/plain", b"x")],
    ),
    "backslash-escapes": (
        "multipart/form-data; boundary=b",
        form("b", (cd("file", '; filename="say \\"hi\\" back\\\\slash.png"'), b"x")),
        [("file", 'say "hi" back\\slash.png', None, b"x")],
    ),
    "filename-ending-in-backslash": (
        "multipart/form-data; boundary=b",
        form("b", (cd("file", '; filename="dir\\"'), b"x")),
        [("file", "dir\\", None, b"x")],
    ),
    "unquoted-params-extra-semicolons": (
        "multipart/form-data; boundary=b",
        form("b", (b"Content-Disposition: form-data;name=f; ;filename=a.png;", b"x")),
        [("f", "a.png", None, b"x")],
    ),
    "empty-filename-and-empty-data": (
        "multipart/form-data; boundary=b",
        form("b", (cd("file", '; filename=""') + b"\r\nContent-Type: application/octet-stream", b"")),
        [("file", "", "application/octet-stream", b"")],
    ),
    "no-parts": ("multipart/form-data; boundary=b", b"--b--", []),
    "data-like-delimiters": (
        "multipart/form-data; boundary=bound",
        form("bound", (cd(), b"\r\n--boun\r\n--bou\r\r\n\r\n-\r\n--\r\n--bounD\r"), (cd("g"), b"\r")),
        [("f", None, None, b"\r\n--boun\r\n--bou\r\r\n\r\n-\r\n--\r\n--bounD\r"), ("g", None, None, b"\r")],
    ),
    "extra-part-headers": (
        "multipart/form-data; boundary=b",
        form("b", (cd() + b"\r\nX-Custom:  spaced value \t\r\nContent-Transfer-Encoding: binary", b"x")),
        [("f", None, None, b"x")],
    ),
}

PAYLOADS = {
    **{name: (ctype, body) for name, (ctype, body, _) in VALID.items()},
    **{
        name: (entry["content_type"], (DATA / f"{name}.body").read_bytes())
        for name, entry in MANIFEST.items()
    },
}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_captured_body_gives_the_parts_the_client_sent(name):
    entry = MANIFEST[name]
    body = (DATA / f"{name}.body").read_bytes()
    assert len(body) < 20_000
    boundary = parse_boundary(entry["content_type"])
    got = [summary(p) for p in iter_parts([body], boundary, **ROOMY)]
    assert got == entry["parts"], entry["client"]


def test_captures_cover_the_clients():
    clients = {entry["client"].split()[0] for entry in MANIFEST.values()}
    assert {"curl", "requests", "urllib3"} <= clients


@pytest.mark.parametrize("name", sorted(VALID))
def test_lenient_payload_parses(name):
    ctype, body, expected = VALID[name]
    assert parts_of(parse_boundary(ctype), [body]) == expected


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_chunking_gives_the_same_events(name):
    ctype, body = PAYLOADS[name]
    boundary = parse_boundary(ctype)
    whole = events(boundary, [body])
    assert any(isinstance(e, PartEnd) for e in whole) or name == "no-parts"
    assert events(boundary, bytewise(body)) == whole
    for offset in range(len(body) + 1):
        assert events(boundary, split_at(body, [offset])) == whole, offset


def test_part_start_carries_all_headers_lowercased():
    body = form("b", (cd("f", '; filename="a.png"') + b"\r\nContent-Type: image/png\r\nX-Y: z", b"x"))
    start = events("b", [body])[0]
    assert start == PartStart(
        name="f",
        filename="a.png",
        content_type="image/png",
        headers=(
            ("content-disposition", 'form-data; name="f"; filename="a.png"'),
            ("content-type", "image/png"),
            ("x-y", "z"),
        ),
    )


def test_epilogue_is_ignored_whatever_it_holds():
    parser = MultipartParser("b", **ROOMY)
    assert len(parser.feed(form("b", (cd(), b"x")))) == 3
    assert parser.feed(b"\xff\x00 --b\r\n garbage") == []
    assert parser.close() == []


def test_iter_parts_yields_parts_before_a_later_error():
    body = form("b", (cd("a"), b"1"), (cd("b"), b"2"), close=False) + b"--b\r\nContent-Disp"
    parts = iter_parts([body], "b", **ROOMY)
    assert next(parts) == Part("a", None, None, b"1")
    assert next(parts) == Part("b", None, None, b"2")
    with pytest.raises(MultipartError, match="final boundary"):
        next(parts)


def test_feed_accepts_bytearray_and_memoryview():
    body = form("b", (cd(), b"xyz"))
    chunks = [bytearray(body[:7]), memoryview(body[7:20]), body[20:]]
    assert events("b", chunks) == events("b", [body])


# -- limits: one test each, type and message ---------------------------------------------------

FEEDS = {"whole": lambda body: [body], "bytewise": bytewise}


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_limit_max_body_bytes(feed):
    body = form("b", (cd(), b"x" * 50))
    assert events("b", FEEDS[feed](body), max_body_bytes=len(body))
    with pytest.raises(LimitExceeded, match=rf"^body exceeds max_body_bytes={len(body) - 1}$") as info:
        events("b", FEEDS[feed](body), max_body_bytes=len(body) - 1)
    assert info.value.http_status == 413


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_limit_max_parts(feed):
    body = form("b", (cd("a"), b"1"), (cd("b"), b"2"), (cd("c"), b"3"))
    assert len(parts_of("b", FEEDS[feed](body), max_parts=3)) == 3
    with pytest.raises(LimitExceeded, match=r"^body has more than max_parts=2 parts$") as info:
        events("b", FEEDS[feed](body), max_parts=2)
    assert info.value.http_status == 413


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_limit_max_header_bytes(feed):
    head = cd("f", '; filename="' + "n" * 100 + '"') + b"\r\nContent-Type: image/png"
    body = form("b", (head, b"x"))
    size = len(head) + 4  # the header lines with their CRLFs, and the blank line
    assert parts_of("b", FEEDS[feed](body), max_header_bytes=size)
    with pytest.raises(LimitExceeded, match=rf"^part headers exceed max_header_bytes={size - 1}$") as info:
        events("b", FEEDS[feed](body), max_header_bytes=size - 1)
    assert info.value.http_status == 413


def test_limit_max_header_bytes_stops_an_endless_header_section():
    parser = MultipartParser("b", **{**ROOMY, "max_header_bytes": 100})
    parser.feed(b"--b\r\n" + b"X-A: b\r\n" * 12)
    with pytest.raises(LimitExceeded, match="max_header_bytes=100"):
        parser.feed(b"X-A: b\r\n")


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_limit_max_headers_per_part(feed):
    body = form("b", (cd() + b"\r\nX-A: 1\r\nX-B: 2", b"x"))
    assert parts_of("b", FEEDS[feed](body), max_headers_per_part=3)
    with pytest.raises(LimitExceeded, match=r"^a part has more than max_headers_per_part=2 headers$") as info:
        events("b", FEEDS[feed](body), max_headers_per_part=2)
    assert info.value.http_status == 413


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_limit_max_part_bytes(feed):
    body = form("b", (cd("small"), b"x"), (cd("big"), b"\r\n--" + b"y" * 96))
    assert parts_of("b", FEEDS[feed](body), max_part_bytes=100)
    with pytest.raises(LimitExceeded, match=r"^a part exceeds max_part_bytes=99$") as info:
        events("b", FEEDS[feed](body), max_part_bytes=99)
    assert info.value.http_status == 413


def test_limits_must_be_positive_ints():
    with pytest.raises(ValueError, match="max_parts"):
        MultipartParser("b", max_body_bytes=1, max_parts=0, max_part_bytes=1)


# -- malformed bodies --------------------------------------------------------------------------

MALFORMED = {
    "empty body": (b"", "boundary never appears"),
    "boundary never appears": (b"hello world\r\n--c\r\n", "boundary never appears"),
    "missing final boundary": (form("b", (cd(), b"data"), close=False), "final boundary"),
    "ends inside part data": (b"--b\r\n" + cd() + b"\r\n\r\ndata\r\n--", "final boundary"),
    "ends inside headers": (b"--b\r\nContent-Disposition: form-da", "final boundary"),
    "ends right after the boundary": (b"--b", "final boundary"),
    "header line without colon": (form("b", (cd() + b"\r\nno colon here", b"x")), "malformed part header"),
    "space before colon": (form("b", (b'Content-Disposition : form-data; name="f"', b"x")), "malformed part header"),
    "folded header": (form("b", (cd() + b"\r\n  continued", b"x")), "obs-fold"),
    "missing content-disposition": (form("b", (b"Content-Type: text/plain", b"x")), "no Content-Disposition"),
    "no headers at all": (b"--b\r\n\r\nx\r\n--b--", "no Content-Disposition"),
    "not form-data": (form("b", (b'Content-Disposition: attachment; name="f"', b"x")), "not form-data"),
    "no name": (form("b", (b'Content-Disposition: form-data; filename="a.png"', b"x")), "no name"),
    "duplicate content-disposition": (form("b", (cd() + b"\r\n" + cd(), b"x")), "repeats"),
    "duplicate content-type": (form("b", (cd() + b"\r\nContent-Type: a/b\r\nContent-type: a/b", b"x")), "repeats"),
    "duplicate parameter": (form("b", (cd("f", '; NAME="g"'), b"x")), "given twice"),
    "unterminated quote": (form("b", (b'Content-Disposition: form-data; name="f', b"x")), "malformed header"),
    "junk after quoted value": (form("b", (b'Content-Disposition: form-data; name="f"x', b"x")), "malformed header"),
    "non-utf8 header bytes": (form("b", (cd() + b"\r\nX-Name: caf\xe9", b"x")), "not valid UTF-8"),
    "nul in header": (form("b", (cd() + b"\r\nX-A: a\x00b", b"x")), "control character"),
    "bare cr in header": (form("b", (cd() + b"\r\nX-A: a\rb", b"x")), "control character"),
    "bare lf line endings": (b'--b\nContent-Disposition: form-data; name="f"\n\nx\n--b--\n', "CRLF"),
    "bare lf inside headers": (form("b", (cd() + b"\nX: y", b"x")), "control character"),
    "boundary followed by other chars": (b"--bX\r\n" + cd() + b"\r\n\r\nx\r\n--b--", "CRLF"),
    "boundary in part data": (form("b", (cd(), b"x\r\n--bb\r\ny")), "CRLF"),
    "single dash after boundary": (b"--b-x\r\n", "CRLF"),
    "dashes after padding": (b"--b\r\n" + cd() + b"\r\n\r\nx\r\n--b --", "CRLF"),
    "rfc5987 not utf-8": (form("b", (cd("f", "; filename*=UTF-8''%FF.png"), b"x")), "is not UTF-8"),
    "rfc5987 unknown charset": (form("b", (cd("f", "; filename*=koi8-r''x"), b"x")), "RFC 5987"),
    "rfc5987 without quotes": (form("b", (cd("f", "; filename*=x.png"), b"x")), "RFC 5987"),
    "header section too large": (b"--b\r\n" + cd("f" * 9000) + b"\r\n\r\nx\r\n--b--", "max_header_bytes=8192"),
}


@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_body_raises_multipart_error(case, feed):
    body, message = MALFORMED[case]
    with pytest.raises(MultipartError, match=message) as info:
        events("b", FEEDS[feed](body))
    expected_status = 413 if "too large" in case else 400
    assert info.value.http_status == expected_status
    assert isinstance(info.value, LimitExceeded) == (expected_status == 413)


def test_a_failed_parser_stays_failed():
    parser = MultipartParser("b", **ROOMY)
    with pytest.raises(MultipartError):
        parser.feed(b"--bXY")
    for call in (lambda: parser.feed(b"--b--"), parser.close):
        with pytest.raises(MultipartError, match="already failed"):
            call()


def test_a_closed_parser_takes_no_more_bytes():
    parser = MultipartParser("b", **ROOMY)
    parser.feed(b"--b--")
    assert parser.close() == []
    with pytest.raises(MultipartError, match="closed"):
        parser.feed(b"x")


# -- parse_boundary ----------------------------------------------------------------------------

MAX_BOUNDARY = "x" * 69 + "?"


@pytest.mark.parametrize(
    "header, boundary",
    [
        ("multipart/form-data; boundary=abc", "abc"),
        ("multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", "----WebKitFormBoundary7MA4YWxkTrZu0gW"),
        ('Multipart/Form-Data; BOUNDARY="a b:c"', "a b:c"),
        ('multipart/form-data; charset=utf-8; boundary="(quoted)=?,/\'"', "(quoted)=?,/'"),
        ("multipart/form-data; boundary=abc ; charset=utf-8", "abc"),
        (f"multipart/form-data; boundary={MAX_BOUNDARY}", MAX_BOUNDARY),
    ],
)
def test_parse_boundary_accepts(header, boundary):
    assert parse_boundary(header) == boundary


@pytest.mark.parametrize(
    "header, status",
    [
        ("application/json", 415),
        ("multipart/mixed; boundary=abc", 415),
        ("", 415),
        ("image/png; boundary=abc", 415),
        ("multipart/form-data", 400),
        ("multipart/form-data; charset=utf-8", 400),
        ('multipart/form-data; boundary=""', 400),
        ("multipart/form-data; boundary=", 400),
        (f"multipart/form-data; boundary={MAX_BOUNDARY}x", 400),
        ('multipart/form-data; boundary="ends with space "', 400),
        ("multipart/form-data; boundary=a@b", 400),
        ("multipart/form-data; boundary=\u00fc", 400),
        ("multipart/form-data; boundary=a; boundary=b", 400),
        ('multipart/form-data; boundary="unterminated', 400),
        ("multipart/form-data; boundary=a\r\nX: y", 400),
    ],
)
def test_parse_boundary_rejects(header, status):
    with pytest.raises(MultipartError) as info:
        parse_boundary(header)
    assert info.value.http_status == status
    assert isinstance(info.value, UnsupportedMediaType) == (status == 415)


@pytest.mark.parametrize("boundary", ["", "x" * 71, "a\r\n", "trailing ", "é"])
def test_parser_rejects_an_invalid_boundary(boundary):
    with pytest.raises(MultipartError, match="invalid multipart boundary"):
        MultipartParser(boundary, **ROOMY)


# -- speed and bounded buffering ---------------------------------------------------------------


def test_five_megabytes_in_64k_chunks_parse_fast():
    data = os.urandom(5 << 20)
    body = form("b" * 40, (cd("file", '; filename="big.bin"'), data), (cd("note"), b"x"))
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parts = list(iter_parts(chunks, "b" * 40, **ROOMY))
        best = min(best, time.perf_counter() - started)
    assert parts[0].data == data and parts[1].data == b"x"
    assert best < 0.25, f"{best * 1000:.1f} ms"  # a few ms on a laptop; generous for slow CI


def test_near_miss_delimiters_stay_linear():
    # Every line almost matches the delimiter: the worst case for the tail logic.
    boundary = "boundary-with-a-long-name"
    data = (b"\r\n--" + boundary[:-1].encode() + b"\r") * 40_000  # ~1.2 MB
    body = form(boundary, (cd(), data))
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    started = time.perf_counter()
    assert parts_of(boundary, chunks)[0][3] == data
    assert time.perf_counter() - started < 1.0


def test_only_a_delimiter_length_tail_is_kept_between_chunks():
    boundary = "b" * 20
    body = form(boundary, (cd(), b"\r\n-\r\r\n--bbb" * 500))
    parser = MultipartParser(boundary, **ROOMY)
    for chunk in split_at(body, range(0, len(body), 7)):
        parser.feed(chunk)
        # _tail is private; it is the one buffer carried between feed() calls.
        assert len(parser._tail) < len(boundary) + 4 or parser._state != multipart._BODY
    assert parser.close() == []


# -- hypothesis --------------------------------------------------------------------------------

BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="%"), max_size=12
)
CONTENT_TYPES = st.sampled_from([None, "image/png", "text/plain; charset=utf-8", "application/octet-stream"])


BOUNDARIES = st.text(BCHARS + " ", min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))


def tricky_bytes(boundary: str):
    """Bytes made of random runs and pieces of the delimiter, CRs and LFs."""
    delimiter = b"\r\n--" + boundary.encode()
    pieces = [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n\r\n"] + [delimiter[:k] for k in range(1, len(delimiter))]
    return st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(pieces)), max_size=8).map(b"".join)


def quote_param(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def forms(draw):
    """(boundary, body, expected parts) for a well-formed body with a random shape."""
    boundary = draw(BOUNDARIES)
    b = boundary.encode()
    delimiter = b"\r\n--" + b
    preamble = draw(st.one_of(st.just(b""), tricky_bytes(boundary)))
    assume(delimiter not in b"\r\n" + preamble)
    body = [preamble + b"\r\n" if preamble else b""]
    expected = []
    for _ in range(draw(st.integers(0, 4))):
        name, filename = draw(NAMES), draw(st.none() | NAMES)
        content_type, data = draw(CONTENT_TYPES), draw(tricky_bytes(boundary))
        assume(delimiter not in data)
        params = f"form-data; name={quote_param(name)}"
        if filename is not None:
            if draw(st.booleans()):
                params += f"; filename={quote_param(filename)}"
            else:
                params += f"; filename=\"ignored\"; filename*=UTF-8''{quote(filename, safe='')}"
        lines = [draw(st.sampled_from(["Content-Disposition", "content-disposition"])) + ": " + params]
        if content_type is not None:
            lines.append("Content-Type: " + content_type)
        padding = draw(st.sampled_from([b"", b" ", b"\t \t"]))
        body.append(b"--" + b + padding + b"\r\n" + "\r\n".join(lines).encode() + b"\r\n\r\n" + data + b"\r\n")
        expected.append((name, filename, content_type, data))
    body.append(b"--" + b + b"--" + draw(st.binary(max_size=20)))
    return boundary, b"".join(body), expected


def offsets(body_size: int):
    return st.lists(st.integers(0, body_size), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(forms(), st.data())
def test_encoded_parts_come_back_under_any_chunking(form_, data):
    boundary, body, expected = form_
    cuts = data.draw(offsets(len(body)))
    assert parts_of(boundary, split_at(body, cuts)) == expected
    assert parse_boundary(f"multipart/form-data; boundary={quote_param(boundary)}") == boundary


def mutate(body: bytes, ops) -> bytes:
    for kind, at, blob in ops:
        at = at % (len(body) + 1)
        if kind == "flip" and at < len(body):
            body = body[:at] + bytes([body[at] ^ (blob[0] if blob else 1)]) + body[at + 1 :]
        elif kind == "insert":
            body = body[:at] + blob + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + len(blob) + 1 :]
        elif kind == "truncate":
            body = body[:at]
    return body


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 1 << 16), st.binary(max_size=6)),
    min_size=1,
    max_size=4,
)
SMALL = dict(max_parts=3, max_header_bytes=80, max_part_bytes=64, max_headers_per_part=2)


MUTATED_FORMS = forms().flatmap(lambda f: MUTATIONS.map(lambda m: (f[0], mutate(f[1], m))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(st.binary(max_size=200), MUTATED_FORMS), st.data())
def test_any_bytes_raise_only_multipart_error_whatever_the_chunking(sample, data):
    boundary, body = sample if isinstance(sample, tuple) else ("b", sample)
    limits = SMALL if data.draw(st.booleans()) else {}
    whole = outcome(boundary, [body], **limits)
    assert outcome(boundary, split_at(body, data.draw(offsets(len(body)))), **limits) == whole
    assert outcome(boundary, bytewise(body), **limits) == whole


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_parse_boundary_raises_only_multipart_error(header):
    try:
        boundary = parse_boundary(header)
    except MultipartError:
        return
    MultipartParser(boundary, **ROOMY)


# -- regression corpus -------------------------------------------------------------------------


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_corpus(path):
    ctype, _, body = path.read_bytes().partition(b"\n")
    boundary = parse_boundary(ctype.decode("latin-1").rstrip("\r"))
    for limits in ({}, SMALL):
        whole = outcome(boundary, [body], **limits)
        assert outcome(boundary, bytewise(body), **limits) == whole
        assert outcome(boundary, split_at(body, [len(body) // 2]), **limits) == whole


def test_regression_corpus_is_not_empty():
    assert len(REGRESSIONS) >= 3
