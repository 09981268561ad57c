"""The native API under concurrency, over real sockets: every answer is its own image's, with the
tiny model's known colours and the real model's photos; top_k takes ASCII digits only."""

from __future__ import annotations


import random
from concurrent.futures import ThreadPoolExecutor
import pytest
import requests
from tests.support import EXPECTED_TOP1, config_for, encode, grid_colour, tiny_label


def test_every_answer_belongs_to_its_own_request(serve, tiny_model_dir):
    srv = serve(config_for(tiny_model_dir, batching={"max_batch_size": 8, "max_queue_delay_ms": 5}))
    palette = [grid_colour(i, j, k) for i in range(0, 10, 3) for j in range(0, 10, 3) for k in range(0, 10, 4)]
    formats = ["PNG", "JPEG", "WEBP", "GIF"]
    encoded = {(c, f): encode(c, f) for c in palette for f in ("PNG", "WEBP", "GIF")}
    encoded.update({(c, "JPEG"): encode(c, "JPEG") for c in palette})

    def client(seed: int) -> list[str]:
        rng = random.Random(seed)
        session = requests.Session()
        problems = []
        for n in range(12):
            picks = [(rng.choice(palette), rng.choice(formats)) for _ in range(rng.randint(1, 3))]
            if len(picks) == 1 and n % 2:
                (colour, fmt), = picks
                body = session.post(f"{srv.url}/infer", data=encoded[colour, fmt],
                                    headers={"Content-Type": f"image/{fmt.lower()}"}, timeout=30).json()
                got = [body["predictions"][0]["label"]]
            elif len(picks) == 1:
                (colour, fmt), = picks
                body = requests.post(f"{srv.url}/infer", files={"file": ("x", encoded[colour, fmt])}, timeout=30).json()
                got = [body["predictions"][0]["label"]]
            else:
                files = [("files", (f"{i}", encoded[p])) for i, p in enumerate(picks)]
                body = session.post(f"{srv.url}/infer/batch", files=files, timeout=30).json()
                got = [r["predictions"][0]["label"] for r in body["results"]]
            want = [tiny_label(colour) for colour, _ in picks]
            if got != want:
                problems.append(f"client {seed} request {n}: sent {want}, got {got}")
        return problems

    with ThreadPoolExecutor(32) as pool:
        problems = [p for result in pool.map(client, range(32)) for p in result]
    assert problems == []
    batches = requests.get(f"{srv.url}/metrics", timeout=5).json()["batches"]
    assert batches["average_size"] > 1.0  # the answers were really computed in shared batches


@pytest.mark.slow
def test_real_photos_under_concurrency_keep_their_labels(serve, default_model_dir, images):
    srv = serve(config_for(default_model_dir))
    names = sorted(EXPECTED_TOP1)

    def client(seed: int) -> list[str]:
        rng = random.Random(seed)
        problems = []
        session = requests.Session()
        for _ in range(3):
            name = rng.choice(names)
            top = session.post(f"{srv.url}/infer", files={"file": (name, images[name])},
                               timeout=60).json()["predictions"][0]["label"]
            if top not in EXPECTED_TOP1[name]:
                problems.append(f"{name}: {top}")
        return problems

    with ThreadPoolExecutor(12) as pool:
        assert [p for result in pool.map(client, range(12)) for p in result] == []


@pytest.mark.parametrize("value", ["1_0", "+3", "%D9%A3", " 3", "3.0", "-1"])
def test_top_k_takes_ascii_digits_only(tiny_srv, value):
    """Before: top_k=1_0, +3 and %D9%A3 (Arabic-Indic three) were taken as 10, 3 and 3."""
    answer = requests.post(f"{tiny_srv.url}/infer?top_k={value}", data=encode((1, 2, 3)),
                           headers={"Content-Type": "image/png"}, timeout=10)
    assert answer.status_code == 400 and "top_k" in answer.json()["error"]
