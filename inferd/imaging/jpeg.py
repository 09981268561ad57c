"""JPEG structure (ITU T.81 Annex B), sans-IO: enough to tell whether the entropy-coded data of a
file is complete before it is decoded.

libjpeg treats a marker found in the middle of a scan as the end of the data and fills the rest
of the image with zeros, without an error: a file cut anywhere and closed with an EOI marker
(FF D9) decodes to a picture. So, for a file of one scan (sequential JPEG, nearly every camera
photo), `for_decoder` hands the decoder the scan's data WITHOUT its closing EOI and with zero
padding after it: a complete scan is decoded in full (the padding only satisfies libjpeg's
look-ahead), and a cut one makes the decoder ask for more data, which Pillow reports as a
truncated file. A cut within the last few bytes of the scan (a few blocks) is not detected.
A progressive file must be decoded with its EOI (its scans are read to the end before any pixel
is produced), so for it `for_decoder` checks instead that its scans bring every component's
coefficients 0..63 to full precision: a file cut before its last scan fails that; a cut inside
the last scan does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
SOF = {0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF} | SOF_PROGRESSIVE
PADDING = b"\0" * 16
# The end of entropy-coded data: FF followed by anything but a stuffed 00, a restart marker or fill.
_DATA_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class IncompleteJpeg(ValueError):
    """The file's scans end before its declared pixels are coded."""


@dataclass(frozen=True)
class Scan:
    components: tuple[int, ...]
    first: int  # Ss: first coefficient of the spectral band
    last: int  # Se
    low_bit: int  # Al: the scan brings its coefficients to this bit; 0 is full precision


@dataclass(frozen=True)
class Layout:
    progressive: bool
    components: tuple[int, ...]
    scans: tuple[Scan, ...]
    end: int  # offset of the EOI marker that closes the image


def layout(data: bytes) -> Layout | None:
    """The markers of a JPEG from SOI to the EOI after its last scan; None when the structure
    cannot be walked (left to the decoder to judge)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, frame, scans = 2, None, []
    while True:
        marker, pos = _next_marker(data, pos)
        if marker is None:
            return None
        if marker == EOI:
            return Layout(frame[0], frame[1], tuple(scans), pos - 2) if frame and scans else None
        length = int.from_bytes(data[pos:pos + 2], "big")
        segment = data[pos + 2:pos + length]
        if length < 2 or len(segment) != length - 2:
            return None
        pos += length
        if marker in SOF:
            frame = (marker in SOF_PROGRESSIVE, tuple(segment[6 + 3 * i] for i in range(segment[5]))
                     if len(segment) >= 6 + 3 * segment[5] else ())
        elif marker == SOS:
            scans.append(_scan(segment))
            if frame and not frame[0] and set(scans[0].components) >= set(frame[1]):
                # One sequential scan of every component: the image's only scan. FF D9 cannot occur
                # inside entropy-coded data (an FF there is followed by 00 or a restart marker), so
                # the first one after the scan header is where the scan ends (memchr-fast).
                end = data.find(b"\xff\xd9", pos)
                return Layout(frame[0], frame[1], tuple(scans), end) if end >= 0 else None
            found = _DATA_END.search(data, pos)
            if found is None:
                return None
            pos = found.start()


def _next_marker(data: bytes, pos: int) -> tuple[int | None, int]:
    """(marker code, position after it) at pos, skipping fill bytes (FF FF ...)."""
    while data[pos:pos + 1] == b"\xff" and data[pos + 1:pos + 2] == b"\xff":
        pos += 1
    if data[pos:pos + 1] != b"\xff" or pos + 1 >= len(data):
        return None, pos
    return data[pos + 1], pos + 2


def _scan(segment: bytes) -> Scan:
    count = segment[0] if segment else 0
    tail = segment[1 + 2 * count:1 + 2 * count + 3]
    if len(tail) != 3:
        return Scan((), 0, 0, 0)
    return Scan(tuple(segment[1 + 2 * i] for i in range(count)), tail[0], tail[1], tail[2] & 0x0F)


def for_decoder(data: bytes) -> bytes:
    """The bytes to decode a JPEG from (see the module docstring). Raises IncompleteJpeg when a
    progressive file's scans stop short of full precision."""
    found = layout(data)
    if found is None:
        return data
    if len(found.scans) == 1 and set(found.scans[0].components) >= set(found.components):
        return data[:found.end] + PADDING
    if found.progressive and not _complete(found):
        raise IncompleteJpeg("the image data ends before every coefficient is coded (truncated file)")
    return data[:found.end + 2]


def _complete(found: Layout) -> bool:
    for component in found.components:
        covered = set()
        for scan in found.scans:
            if component in scan.components and scan.low_bit == 0:
                covered.update(range(scan.first, min(scan.last, 63) + 1))
        if len(covered) < 64:
            return False
    return True
