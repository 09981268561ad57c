"""The response cache (issue 13): the LRU by bytes on its own, then through a real server with the
tiny model: a hit costs neither decode nor inference, batches hit per image, /infer and the v2
protocol share entries, concurrent identical misses run one inference, errors are not cached,
a stream of unique images stays within the budget, and a reload never serves a stale answer."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import requests

from inferd.cache import ResponseCache
from tests.support import config_for

ROW_BYTES = 4000 + 112 + 65 + 160  # a 1000-class float32 row (owning), a 32-byte key, the entry


def row(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(1000, dtype=np.float32)


def key(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def filled(cache: ResponseCache, n: int, tag=None) -> None:
    lookup = cache.begin(key(n))
    assert lookup.leads
    cache.fill(key(n), row(n), tag)


# -- the LRU on its own --------------------------------------------------------------------------

def test_least_recently_used_leaves_first_and_bytes_stay_within_the_budget():
    cache = ResponseCache(3 * ROW_BYTES)
    for n in range(3):
        filled(cache, n)
    assert cache.begin(key(0)).hit  # 0 is now the most recently used: 1 is the oldest
    filled(cache, 3)
    assert [cache.begin(key(n)).hit for n in (0, 2, 3)] == [True, True, True]
    assert cache.begin(key(1)).leads
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes == 3 * ROW_BYTES <= stats.max_bytes and stats.evictions == 1


def test_entries_count_their_real_size():
    """What the cache counts is what the process allocates for it, within 10% (tracemalloc)."""
    cache = ResponseCache(1 << 30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2000):
            filled(cache, n)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = cache.stats().bytes
    assert abs(allocated - counted) / allocated < 0.10, (allocated, counted)


def test_a_lookup_costs_no_more_with_100_times_the_entries():
    """O(1): an OrderedDict, no scan. Best of five batches of 2000 hits at each size; a scan would
    cost 100 times more at 100,000 entries. Measured here: 0.6 us at 1000, 1.4 us at 100,000
    (a table that no longer fits the CPU's caches); the bound leaves room for a busy box."""
    def best_hit_seconds(entries: int) -> float:
        cache = ResponseCache(1 << 40)
        value = row(0)
        for n in range(entries):
            cache.begin(key(n))
            cache.fill(key(n), value)
        probes = [key(n) for n in range(0, entries, max(1, entries // 2000))][:2000]
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for probe in probes:
                cache.begin(probe)
            best = min(best, time.perf_counter() - began)
        return best
    small, large = best_hit_seconds(1000), best_hit_seconds(100_000)
    assert large < 10 * small, (small, large)


def test_a_second_caller_of_a_key_being_computed_waits_for_the_first():
    cache = ResponseCache(1 << 20)
    leader, follower = cache.begin(b"k"), cache.begin(b"k")
    assert leader.leads and not follower.leads and not follower.hit
    cache.fill(b"k", row(1))
    assert np.array_equal(follower.flight.result(0), row(1))
    assert cache.begin(b"k").hit
    assert (cache.stats().hits, cache.stats().misses) == (2, 1)  # a shared flight counts as a hit


def test_a_failed_flight_hands_its_error_to_the_waiters_and_stores_nothing():
    cache = ResponseCache(1 << 20)
    cache.begin(b"k")
    follower = cache.begin(b"k")
    cache.fail(b"k", ValueError("undecodable"))
    with pytest.raises(ValueError, match="undecodable"):
        follower.flight.result(0)
    assert cache.stats().entries == 0 and cache.begin(b"k").leads  # the next caller computes again


def test_a_value_larger_than_the_budget_is_handed_over_but_not_stored():
    cache = ResponseCache(ROW_BYTES - 1)
    cache.begin(key(1))
    follower = cache.begin(key(1))
    cache.fill(key(1), row(1))
    assert follower.flight.result(0) is not None and cache.stats().entries == 0


def test_resize_evicts_and_retain_drops_other_tags():
    cache = ResponseCache(10 * ROW_BYTES)
    for n in range(6):
        filled(cache, n, tag="old" if n < 3 else "new")
    assert cache.retain({"new"}) == 3
    cache.resize(2 * ROW_BYTES)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 2 * ROW_BYTES, 1)
    assert [cache.begin(key(n)).hit for n in (4, 5)] == [True, True]


# -- through a real server ------------------------------------------------------------------------

def png(rgb=(255, 0, 0), size=(64, 48), seed: int | None = None) -> bytes:
    """A solid colour, or (with `seed`) that colour with one pixel changed: other bytes, same answer."""
    from PIL import Image

    image = Image.new("RGB", size, rgb)
    if seed is not None:
        image.putpixel((seed % size[0], seed // size[0] % size[1]), ((seed * 7) % 256, (seed * 13) % 256, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def cached(serve, tiny_model_dir):
    """A server on the tiny model with a 1 MiB cache."""
    return serve(config_for(tiny_model_dir, cache={"max_bytes": 1 << 20}))


def infer(url: str, data: bytes, query: str = "") -> requests.Response:
    return requests.post(f"{url}/infer{query}", files={"file": ("x.png", data)}, timeout=30)


def batch(url: str, images: list[bytes]) -> requests.Response:
    return requests.post(f"{url}/infer/batch", files=[("files", (f"{i}.png", d)) for i, d in enumerate(images)],
                         timeout=30)


def counts(url: str) -> dict:
    """Decode and inference work done so far: images preprocessed, model runs, images run."""
    text = requests.get(f"{url}/metrics", headers={"Accept": "text/plain"}, timeout=10).text
    view = requests.get(f"{url}/metrics", timeout=10).json()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return {"preprocessed": total("inferd_preprocess_seconds_count"), "runs": view["batches"]["count"],
            "images_run": view["batches"]["images"], "cache": view["cache"]}


def test_a_hit_costs_neither_decode_nor_inference(cached):
    red = png((255, 0, 0))
    first = infer(cached.url, red)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    before = counts(cached.url)
    again = infer(cached.url, red, "?top_k=3")  # another top_k: the same entry (the scores row)
    after = counts(cached.url)
    assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
    assert again.json()["predictions"] == first.json()["predictions"][:3]
    assert again.json()["inference_time_ms"] == 0.0
    assert (after["preprocessed"], after["runs"], after["images_run"]) == (
        before["preprocessed"], before["runs"], before["images_run"])
    assert (after["cache"]["hits"], after["cache"]["misses"]) == (1, 1) and after["cache"]["hit_ratio"] == 0.5


def test_a_batch_hits_per_image(cached):
    red, green, blue = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))
    assert infer(cached.url, red).headers["X-Cache"] == "miss"
    before = counts(cached.url)
    answer = batch(cached.url, [red, green, blue, green])  # green twice: computed once
    after = counts(cached.url)
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "partial"
    assert [r["predictions"][0]["label"] for r in answer.json()["results"]] == ["r9g0b0", "r0g9b0", "r0g0b9", "r0g9b0"]
    assert after["images_run"] - before["images_run"] == 2 and after["preprocessed"] - before["preprocessed"] == 2
    assert batch(cached.url, [blue, red]).headers["X-Cache"] == "hit"


def test_infer_and_the_v2_protocol_share_entries(cached):
    red = png((255, 0, 0))
    assert infer(cached.url, red).headers["X-Cache"] == "miss"
    before = counts(cached.url)
    body = {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES",
                        "data": [{"b64": base64.b64encode(red).decode()}] * 2}],
            "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}
    model = requests.get(f"{cached.url}/models", timeout=10).json()["default"]
    answer = requests.post(f"{cached.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "hit", answer.text
    assert answer.json()["outputs"][0]["data"][0].endswith(":r9g0b0")
    raw = requests.post(f"{cached.url}/v2/models/{model}/infer", json={"inputs": body["inputs"]}, timeout=30)
    assert raw.headers["X-Cache"] == "hit" and len(raw.json()["outputs"][0]["data"]) == 2 * 1000
    assert counts(cached.url)["images_run"] == before["images_run"]
    tensor = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                          "data": [0.5] * (3 * 224 * 224)}]}
    fp32 = requests.post(f"{cached.url}/v2/models/{model}/infer", json=tensor, timeout=30)
    assert fp32.status_code == 200 and "X-Cache" not in fp32.headers  # preprocessed tensors are not cached


def test_concurrent_identical_misses_run_one_inference(cached):
    """Eight requests for one image while the model is held (the daemon's RunGate): one leads,
    seven wait for its result; the model runs once, on one image."""
    image, before = png((0, 0, 255)), counts(cached.url)
    with ThreadPoolExecutor(8) as pool:
        with cached.daemon.gate.turn():
            futures = [pool.submit(infer, cached.url, image) for _ in range(8)]
            deadline = time.monotonic() + 20
            while cached.daemon.service.cache.stats().hits + cached.daemon.service.cache.stats().misses < 8:
                assert time.monotonic() < deadline, "the eight lookups did not happen"
                time.sleep(0.01)
        answers = [f.result(30) for f in futures]
    after = counts(cached.url)
    assert [a.status_code for a in answers] == [200] * 8
    assert sorted(a.headers["X-Cache"] for a in answers) == ["hit"] * 7 + ["miss"]
    assert {a.json()["predictions"][0]["label"] for a in answers} == {"r0g0b9"}
    assert (after["runs"] - before["runs"], after["images_run"] - before["images_run"]) == (1, 1)
    assert after["preprocessed"] - before["preprocessed"] == 1


def test_errors_are_not_cached(cached):
    broken = png()[:60]
    before = counts(cached.url)
    assert [infer(cached.url, broken).status_code for _ in range(2)] == [400, 400]
    after = counts(cached.url)
    assert after["cache"]["misses"] - before["cache"]["misses"] == 2 and after["cache"]["entries"] == 0
    text = requests.get(f"{cached.url}/metrics", headers={"Accept": "text/plain"}, timeout=10).text
    assert re.search(r'inferd_images_total\{[^}]*outcome="bad_input"\} 2', text)


def test_a_stream_of_unique_images_stays_within_the_budget(serve, tiny_model_dir):
    budget = 20 * ROW_BYTES
    server = serve(config_for(tiny_model_dir, cache={"max_bytes": budget}))
    session, sizes = requests.Session(), []
    for n in range(150):
        answer = session.post(f"{server.url}/infer", files={"file": ("u.png", png((200, 40, 40), seed=n))}, timeout=30)
        assert answer.status_code == 200 and answer.headers["X-Cache"] == "miss"
        if n % 10 == 0:
            sizes.append(requests.get(f"{server.url}/metrics", timeout=10).json()["cache"]["bytes"])
    cache = requests.get(f"{server.url}/metrics", timeout=10).json()["cache"]
    assert max(sizes + [cache["bytes"]]) <= budget
    assert (cache["entries"], cache["evictions"], cache["misses"]) == (20, 130, 150)


def test_off_by_default_no_header_nothing_stored(serve, tiny_model_dir):
    server = serve(config_for(tiny_model_dir))
    answers = [infer(server.url, png()) for _ in range(2)]
    assert all(a.status_code == 200 and "X-Cache" not in a.headers for a in answers)
    assert counts(server.url)["cache"] == {"hits": 0, "misses": 0, "hit_ratio": None, "bytes": 0, "entries": 0,
                                           "evictions": 0}


# -- never stale ----------------------------------------------------------------------------------

def favour_class_zero(model_file) -> None:
    """Rewrite the tiny graph so that class 0 wins for every input: another file, another answer."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(model_file)
    for index, tensor in enumerate(graph.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.shape == (1000,):  # the output bias
            values = values.copy()
            values[0] += 1e6
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(graph, model_file)


def test_a_changed_model_file_never_gets_the_old_answer(serve, tiny_model_dir, tmp_path):
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    server = serve(config_for(model_dir, cache={"max_bytes": 1 << 20}))
    green = png((0, 255, 0))
    assert infer(server.url, green).json()["predictions"][0]["label"] == "r0g9b0"
    assert infer(server.url, green).headers["X-Cache"] == "hit"
    favour_class_zero(model_dir / "model.onnx")
    assert requests.post(f"{server.url}/admin/reload", timeout=60).status_code == 200
    assert counts(server.url)["cache"]["entries"] == 0  # the old version's entries left with it
    answer = infer(server.url, green)
    assert answer.headers["X-Cache"] == "miss" and answer.json()["predictions"][0]["label"] == "r0g0b0"


def test_tighter_limits_after_a_reload_are_not_bypassed_by_a_cached_answer(serve, tiny_model_dir):
    config = config_for(tiny_model_dir, cache={"max_bytes": 1 << 20})
    server = serve(config)
    red = png()
    assert infer(server.url, red).status_code == 200 and infer(server.url, red).headers["X-Cache"] == "hit"
    server.daemon.load_config = lambda: replace(config, limits=replace(config.limits,
                                                                       allowed_formats=frozenset({"JPEG"})))
    assert requests.post(f"{server.url}/admin/reload", timeout=60).status_code == 200
    assert infer(server.url, red).status_code == 415


def test_entries_of_unloaded_versions_leave_at_reload_in_milliseconds(tiny_model_dir):
    """What Service.configure pays on reload: a scan of the entries (15,000: a 64 MiB cache full of
    1000-class rows), measured here."""
    cache = ResponseCache(64 << 20)
    for n in range(15_000):
        filled(cache, n, tag="old")
    began = time.perf_counter()
    assert cache.retain({"new"}) == 15_000
    seconds = time.perf_counter() - began
    print(f"retain over 15000 entries: {seconds * 1000:.1f} ms")
    assert seconds < 0.5 and cache.stats().bytes == 0


def test_threads_filling_and_reading_at_once_keep_the_books_straight():
    budget = 50 * ROW_BYTES
    cache = ResponseCache(budget)

    def work(offset: int) -> None:
        for n in range(400):
            lookup = cache.begin(key((n + offset) % 120))
            if lookup.leads:
                cache.fill(lookup.key, row(n))
            elif not lookup.hit:
                lookup.flight.result(5)
    threads = [threading.Thread(target=work, args=(i * 17,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stats = cache.stats()
    assert stats.bytes == stats.entries * ROW_BYTES <= budget and stats.hits + stats.misses == 2400
