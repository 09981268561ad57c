"""Defects found by attacking inferd as a hostile client would (issue 17), one regression test each,
over real sockets against a real server or daemon.

Every test here failed against main before the fixes (cb8b6bc), except the two marked "guarantee",
which hold a property the fixes must keep. What each measured before and after is in the closing
note of issue 17 and in README.md, "Reliability and security".
"""

from __future__ import annotations

import io
import shutil
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support import config_for
from tests.test_server import Raw, encode, request_bytes, wait_until

HEALTH = request_bytes("GET", "/health")


def keep_alive_statuses(url: str, data: bytes, count: int) -> list[int]:
    """`count` requests one after another on one connection, each sent after the last answer."""
    raw = Raw(url)
    try:
        return [raw.send(data).response().status for _ in range(count)]
    finally:
        raw.close()


# -- 1. 503s and lost requests at and below the thread caps --------------------------------------

def test_keep_alive_clients_at_the_other_cap_never_get_503(serve, tiny_model_dir):
    """Before: 61 of 3200 answers were 503 with exactly max_other_requests (16) clients."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16}, logging={"access_log": "false"}))
    with ThreadPoolExecutor(16) as pool:
        statuses = [s for batch in pool.map(lambda _: keep_alive_statuses(srv.url, HEALTH, 200), range(16))
                    for s in batch]
    assert len(statuses) == 3200 and statuses.count(200) == 3200, {s: statuses.count(s) for s in set(statuses)}


def test_inference_clients_at_the_inference_cap_never_get_503(serve, tiny_model_dir):
    """Before: 38 of 768 answers were 503 with exactly max_inference_requests (64) clients."""
    srv = serve(config_for(tiny_model_dir, limits={"max_inference_requests": 64}, logging={"access_log": "false"}))
    infer = request_bytes("POST", "/infer", {"Content-Type": "image/png"}, encode((10, 200, 30)))
    with ThreadPoolExecutor(64) as pool:
        statuses = [s for batch in pool.map(lambda _: keep_alive_statuses(srv.url, infer, 12), range(64))
                    for s in batch]
    assert len(statuses) == 768 and statuses.count(200) == 768, {s: statuses.count(s) for s in set(statuses)}


def read_pipelined(raw: Raw, count: int) -> list:
    """Up to `count` responses in order; stops at a response that closes the connection."""
    responses = []
    while len(responses) < count:
        try:
            responses.append(raw.response())
        except (ConnectionError, socket.timeout):
            break
        if responses[-1].headers.get("connection") == "close":
            break
    return responses


def test_pipelined_requests_below_the_cap_are_all_answered(serve, tiny_model_dir):
    """Before: one of 15 pipelining connections got a 503 and 36 requests behind it no answer."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16}, logging={"access_log": "false"}))

    def pipeline(_):
        raw = Raw(srv.url).send(HEALTH * 50)
        try:
            return [r.status for r in read_pipelined(raw, 50)]
        finally:
            raw.close()

    with ThreadPoolExecutor(15) as pool:
        answered = list(pool.map(pipeline, range(15)))
    assert [len(statuses) for statuses in answered] == [50] * 15
    assert all(status == 200 for statuses in answered for status in statuses)


def test_a_refused_pipelined_request_is_answered_before_the_connection_closes(serve, tiny_model_dir):
    """Guarantee: over the cap, a pipelining connection gets every earlier answer in order, then the
    503 with Connection: close, then the close (RFC 9112 §9.3.2); nothing is dropped silently."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 1}, logging={"access_log": "false"}))
    connections = [Raw(srv.url) for _ in range(4)]
    try:
        for raw in connections:
            raw.send(HEALTH * 40)
        for raw in connections:
            statuses = [r.status for r in read_pipelined(raw, 40)]
            assert statuses and set(statuses[:-1]) <= {200}, statuses
            if len(statuses) < 40:  # refused: the refusal is the last answer, then the connection closes
                assert statuses[-1] == 503 and raw.closed()
    finally:
        for raw in connections:
            raw.close()


# -- 2. An absolute-form request target starves /health ------------------------------------------

def test_absolute_form_uploads_do_not_take_the_threads_of_health(serve, tiny_model_dir):
    """Before: 20 slow uploads to http://x/infer took the "other" pool (16) and /health got 503."""
    srv = serve(config_for(tiny_model_dir, limits={"max_other_requests": 16, "body_timeout": 30}))
    head = (b"POST http://x/infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"\x89PNG")
    uploads = [Raw(srv.url).send(head) for _ in range(20)]
    try:
        wait_until(lambda: srv.server.metrics.snapshot_json()["requests_in_flight"] >= 20, what="20 uploads")
        assert [requests.get(f"{srv.url}/health", timeout=5).status_code for _ in range(5)] == [200] * 5
    finally:
        for raw in uploads:
            raw.close()


# -- 3. A reload cuts off a request still in flight ----------------------------------------------

def renamed_copy(model_dir, destination, name: str):
    shutil.copytree(model_dir, destination)
    manifest = destination / "model.ini"
    manifest.write_text(manifest.read_text().replace("name = tiny-10", f"name = {name}"))
    return destination


def test_a_request_that_started_on_the_old_model_finishes_on_it(start_daemon, tiny_model_dir, tmp_path):
    """Before: a steady upload longer than drain_timeout, with a reload during it, got 503
    "the model is being unloaded". Now it is answered by the model it started on."""
    newer = renamed_copy(tiny_model_dir, tmp_path / "newer", "tiny-newer")
    settings = "[server]\ndrain_timeout = 1\n[limits]\nbody_timeout = 10\nmin_body_rate = 16384\n"
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n{settings}")
    image = encode((10, 200, 30), "PNG", size=640)
    body = image + b"\0" * (1_200_000 - len(image))  # a PNG ignores what follows its IEND
    raw = Raw(daemon.url, timeout=30).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                                            "Content-Length": str(len(body))}))
    started = time.monotonic()
    sent = 0
    for offset in range(0, len(body), 40_000):  # 1.2 MB over 3 s: 400 kB/s, well above min_body_rate
        raw.send(body[offset:offset + 40_000])
        sent += 1
        if sent == 5:
            (tmp_path / "inferd.conf").write_text(f"[model]\npath = {newer}\n{settings}")
            reloaded = requests.post(f"{daemon.url}/admin/reload", timeout=30)
            assert reloaded.status_code == 200 and reloaded.json()["model"]["name"] == "tiny-newer"
        time.sleep(max(0.0, started + 0.1 * sent - time.monotonic()))
    answer = raw.response()
    raw.close()
    assert time.monotonic() - started > 2.5  # longer than drain_timeout after the reload
    assert answer.status == 200, answer.body
    assert answer.json()["model"] == "tiny-10"
    assert requests.post(f"{daemon.url}/infer", data=image, headers={"Content-Type": "image/png"},
                         timeout=10).json()["model"] == "tiny-newer"


def test_retired_versions_wait_for_their_leases_up_to_a_cap(tiny_model_dir):
    """Guarantee of the fix: a replaced version serves the leases it has, however long; past
    MAX_RETIRING waiting versions the oldest is stopped (503 for its holders), so memory is bounded."""
    from inferd import loading, repository
    from inferd.batcher import BatcherStopped

    config = config_for(tiny_model_dir)
    repo = repository.Repository()
    tensor = np.zeros((1, 3, 224, 224), np.float32)
    leases, held = [], []
    for generation in range(repository.MAX_RETIRING + 2):
        outcome = loading.load(config, None)
        repo.install(outcome.models, outcome.default)
        lease = repo.lease()
        held.append(lease.__enter__())
        leases.append(lease)
    oldest, *kept = held[:-1]
    try:
        with pytest.raises(BatcherStopped):
            oldest.batcher.submit([tensor[0]])
        for loaded in kept:  # retired but still leased: still serving
            assert loaded.batcher.submit([tensor[0]])[0].result(10).shape == (1000,)
    finally:
        for lease in leases:
            lease.__exit__(None, None, None)
    for loaded in held[:-1]:
        wait_until(lambda: not loaded.batcher.running(), what="a retired version to stop")
    repo.stop(5.0)


# -- 4. Tiny chunks multiply memory and CPU ------------------------------------------------------

def test_a_body_of_tiny_chunks_is_refused_after_the_free_chunks(serve, tiny_model_dir):
    """Before: 16 MiB of 2-byte chunks were all read (RSS 251 -> 1353 MiB over 26 s). Now the body
    is refused once FREE_CHUNKS chunks average less than MIN_AVERAGE_CHUNK bytes."""
    srv = serve(config_for(tiny_model_dir, limits={"max_body_bytes": 16 * 1024 * 1024}))
    raw = Raw(srv.url, timeout=20).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                                         "Transfer-Encoding": "chunked"}))
    try:
        for _ in range(100):  # 100 x 500 two-byte chunks, and no last chunk: only a refusal ends it
            raw.send(b"2\r\nab\r\n" * 500)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = raw.response()
    raw.close()
    assert answer.status == 400 and "per chunk" in answer.json()["error"]


def peak_rss_mb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in MiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmHWM"].split()[0]) // 1024, int(fields["VmRSS"].split()[0]) // 1024


def test_a_chunked_body_costs_its_size_not_its_chunk_count(start_daemon, tiny_model_dir):
    """8 MiB in 256-byte chunks (the smallest average allowed): peak RSS grows by no more than a
    small multiple of the body."""
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n[logging]\naccess_log = false\n")
    before, _ = peak_rss_mb(daemon.proc.pid)
    chunk = b"100\r\n" + b"\xab" * 256 + b"\r\n"
    raw = Raw(daemon.url, timeout=60).send(request_bytes("POST", "/infer", {"Content-Type": "image/png",
                                                                            "Transfer-Encoding": "chunked"}))
    for _ in range(32):
        raw.send(chunk * 1024)  # 32 x 1024 chunks of 256 bytes = 8 MiB
    answer = raw.send(b"0\r\n\r\n").response()
    raw.close()
    assert answer.status == 415  # read whole, then found not to be an image
    after, _ = peak_rss_mb(daemon.proc.pid)
    assert after - before < 3 * 8 + 16, (before, after)


# -- 5. Images under the pixel limit can still take gigabytes -------------------------------------

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


# -- 6, 7. Truncated images ------------------------------------------------------------------------

def jpeg(photo, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def chelsea() -> np.ndarray:
    from skimage import data
    return data.chelsea()


def post_image(url: str, data: bytes, content_type: str = "image/jpeg"):
    return requests.post(f"{url}/infer", data=data, headers={"Content-Type": content_type}, timeout=10)


def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_400(srv_default):
    """Before: chelsea.jpg cut to 2 % and closed with FF D9 got 200 "megalith 0.001"."""
    full = jpeg(chelsea(), quality=92)
    for fraction in (0.02, 0.3, 0.9):
        cut = full[:int(len(full) * fraction)] + b"\xff\xd9"
        answer = post_image(srv_default.url, cut)
        assert answer.status_code == 400 and "cannot decode" in answer.json()["error"], fraction
    assert post_image(srv_default.url, full).status_code == 200


def declared_huge_jpeg() -> bytes:
    """A tiny JPEG whose frame header declares 7999x7999 pixels, closed right after its scan header."""
    small = jpeg(np.zeros((8, 8, 3), np.uint8), quality=50)
    sof = small.find(b"\xff\xc0")
    header = small[:sof + 5] + struct.pack(">HH", 7999, 7999) + small[sof + 9:]
    sos = header.find(b"\xff\xda")
    length = struct.unpack(">H", header[sos + 2:sos + 4])[0]
    return header[:sos + 2 + length] + b"\x00" * 16 + b"\xff\xd9"


def test_a_jpeg_declaring_more_pixels_than_its_data_codes_is_400(srv_default):
    """Before: a 631-byte JPEG declaring 7999x7999 got 200."""
    data = declared_huge_jpeg()
    assert len(data) < 1000
    answer = post_image(srv_default.url, data)
    assert answer.status_code == 400, answer.text


def test_a_progressive_jpeg_cut_before_its_last_scan_is_400_and_whole_ones_decode(srv_default):
    full = jpeg(chelsea(), quality=90, progressive=True)
    scans = [i for i in range(len(full) - 1) if full[i:i + 2] == b"\xff\xda"]
    assert len(scans) > 3
    answer = post_image(srv_default.url, full[:scans[-2] + 200] + b"\xff\xd9")
    assert answer.status_code == 400, answer.text
    assert post_image(srv_default.url, full).status_code == 200


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


def test_a_recognised_format_cut_in_its_header_is_400_not_415(srv_default):
    """Before: the first 40 bytes of a PNG got 415 "not an image in an accepted format"."""
    png = encode((1, 2, 3), "PNG", size=64)
    answer = post_image(srv_default.url, png[:40], "image/png")
    assert answer.status_code == 400 and "cut short or corrupt" in answer.json()["error"]
    assert post_image(srv_default.url, b"hello, plain text", "image/png").status_code == 415


# -- 8. top_k ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1_0", "+3", "%D9%A3", " 3", "3.0", "-1"])
def test_top_k_takes_ascii_digits_only(srv_default, value):
    """Before: top_k=1_0, +3 and %D9%A3 (Arabic-Indic three) were taken as 10, 3 and 3."""
    answer = requests.post(f"{srv_default.url}/infer?top_k={value}", data=encode((1, 2, 3)),
                           headers={"Content-Type": "image/png"}, timeout=10)
    assert answer.status_code == 400 and "top_k" in answer.json()["error"]


# -- 9. Codec messages --------------------------------------------------------------------------------

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


@pytest.fixture
def srv_default(serve, tiny_model_dir):
    return serve(config_for(tiny_model_dir, logging={"access_log": "false"}))

