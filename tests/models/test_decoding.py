"""Decoding hostile images over real sockets: 16-bit images within the decode budget (and their
memory given back), images that could never fit, JPEGs cut short or lying about their size,
headers cut short, and codec messages that reach the log once, without paths."""

from __future__ import annotations


import io
import struct
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import pytest
import requests
from PIL import Image
from tests.support import config_for, encode, peak_rss_mb, wait_until


def grey16_png(side: int = 8000) -> bytes:
    pixels = np.zeros((side, side), np.uint16)
    pixels[::97, ::89] = 65535
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_large_16_bit_images_decode_within_the_budget_and_give_memory_back(start_daemon, tiny_model_dir):
    """Before: 4 concurrent 8000x8000 16-bit PNGs (130 kB each) took +3.6 GB peak RSS, 8 took
    +7.0 GB and RSS stayed at 1.4 GB. Now the decode budget (1 GiB) bounds the peak, and RSS returns."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[logging]\naccess_log = false\n")
    png = grey16_png()
    assert len(png) < 200_000
    hwm_before, rss_before = peak_rss_mb(daemon.proc.pid)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: requests.post(f"{daemon.url}/infer", data=png, timeout=120,
                                                         headers={"Content-Type": "image/png"}).status_code,
                                 range(8)))
    hwm_after, _ = peak_rss_mb(daemon.proc.pid)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2, statuses
    assert hwm_after - hwm_before < 1024 + 128, (hwm_before, hwm_after)
    wait_until(lambda: peak_rss_mb(daemon.proc.pid)[1] - rss_before < 64, what="memory to be given back")


def test_an_image_that_could_never_fit_the_budget_is_413_and_a_busy_budget_503(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, limits={"max_decode_bytes": 8 * 1024 * 1024}))
    big = encode((1, 2, 3), "PNG", size=2000)  # 2000x2000 RGB: 16 MB as Pillow stores it
    answer = requests.post(f"{srv.url}/infer", data=big, headers={"Content-Type": "image/png"}, timeout=10)
    assert answer.status_code == 413 and "max_decode_bytes" in answer.json()["error"]
    from inferd.imaging.budget import DecodeBudget
    from inferd.imaging.errors import DecodeBusy

    budget = DecodeBudget(100, wait=0.1)
    with budget.reserve(80):
        with pytest.raises(DecodeBusy) as busy:
            with budget.reserve(40):
                pass
        assert busy.value.http_status == 503 and budget.used() == 80
    assert budget.used() == 0


def jpeg(photo, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def chelsea() -> np.ndarray:
    from skimage import data
    return data.chelsea()


def post_image(url: str, data: bytes, content_type: str = "image/jpeg"):
    return requests.post(f"{url}/infer", data=data, headers={"Content-Type": content_type}, timeout=10)


def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_400(tiny_srv):
    """Before: chelsea.jpg cut to 2 % and closed with FF D9 got 200 "megalith 0.001"."""
    full = jpeg(chelsea(), quality=92)
    for fraction in (0.02, 0.3, 0.9):
        cut = full[:int(len(full) * fraction)] + b"\xff\xd9"
        answer = post_image(tiny_srv.url, cut)
        assert answer.status_code == 400 and "cannot decode" in answer.json()["error"], fraction
    assert post_image(tiny_srv.url, full).status_code == 200


def declared_huge_jpeg() -> bytes:
    """A tiny JPEG whose frame header declares 7999x7999 pixels, closed right after its scan header."""
    small = jpeg(np.zeros((8, 8, 3), np.uint8), quality=50)
    sof = small.find(b"\xff\xc0")
    header = small[:sof + 5] + struct.pack(">HH", 7999, 7999) + small[sof + 9:]
    sos = header.find(b"\xff\xda")
    length = struct.unpack(">H", header[sos + 2:sos + 4])[0]
    return header[:sos + 2 + length] + b"\x00" * 16 + b"\xff\xd9"


def test_a_jpeg_declaring_more_pixels_than_its_data_codes_is_400(tiny_srv):
    """Before: a 631-byte JPEG declaring 7999x7999 got 200."""
    data = declared_huge_jpeg()
    assert len(data) < 1000
    answer = post_image(tiny_srv.url, data)
    assert answer.status_code == 400, answer.text


def test_a_progressive_jpeg_cut_before_its_last_scan_is_400_and_whole_ones_decode(tiny_srv):
    full = jpeg(chelsea(), quality=90, progressive=True)
    scans = [i for i in range(len(full) - 1) if full[i:i + 2] == b"\xff\xda"]
    assert len(scans) > 3
    answer = post_image(tiny_srv.url, full[:scans[-2] + 200] + b"\xff\xd9")
    assert answer.status_code == 400, answer.text
    assert post_image(tiny_srv.url, full).status_code == 200


def test_every_encoding_of_a_whole_jpeg_still_decodes_exactly():
    """The check feeds the decoder without the end marker: whole files must decode bit for bit."""
    from inferd.imaging import jpeg as structure

    photo = chelsea()
    for options in ({"quality": 30}, {"quality": 95, "subsampling": 0}, {"quality": 75, "optimize": True},
                    {"quality": 100}, {"quality": 90, "progressive": True}):
        data = jpeg(photo, **options)
        whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        checked = np.asarray(Image.open(io.BytesIO(structure.for_decoder(data))).convert("RGB"))
        assert np.array_equal(whole, checked), options


def test_a_recognised_format_cut_in_its_header_is_400_not_415(tiny_srv):
    """Before: the first 40 bytes of a PNG got 415 "not an image in an accepted format"."""
    png = encode((1, 2, 3), "PNG", size=64)
    answer = post_image(tiny_srv.url, png[:40], "image/png")
    assert answer.status_code == 400 and "cut short or corrupt" in answer.json()["error"]
    assert post_image(tiny_srv.url, b"hello, plain text", "image/png").status_code == 415


def corrupt_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "x" * 100
    data = bytearray(jpeg(np.zeros((64, 64, 3), np.uint8), exif=exif))
    start = data.find(b"Exif\0\0")
    data[start + 20:start + 40] = b"\xff" * 20  # the IFD now points past the end of the block
    return bytes(data)


def corrupt_g4_tiff() -> bytes:
    bits = np.random.default_rng(0).random((200, 300)) > 0.5
    buffer = io.BytesIO()
    Image.fromarray(bits).convert("1").save(buffer, "TIFF", compression="group4")
    data = bytearray(buffer.getvalue())
    for i in range(200, len(data) - 200, 7):
        data[i] ^= 0x5A
    return bytes(data)


def test_codec_messages_reach_the_log_once_each_with_a_priority_and_no_paths(start_daemon, tiny_model_dir):
    """Before: corrupt EXIF wrote two raw stderr lines (with the venv's path) on every request, and
    one corrupt G4 TIFF 331 raw libtiff lines."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[logging]\nlevel = debug\naccess_log = false\n",
                          env={"JOURNAL_STREAM": "8:1234"})
    for data, content_type in [(corrupt_exif_jpeg(), "image/jpeg")] * 3 + [(corrupt_g4_tiff(), "image/tiff")] * 3:
        assert post_image(daemon.url, data, content_type).status_code in (200, 400)
    assert daemon.stop() == 0
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert all(line.startswith("<") and line[1].isdigit() and line[2] == ">" for line in lines), lines[:5]
    assert not any("site-packages" in line or ".py:" in line for line in lines)
    exif = [line for line in lines if "Pillow" in line]
    tiff = [line for line in lines if "libtiff" in line]
    assert len(exif) == 1 and 1 <= len(tiff) <= 10, (exif, tiff)
