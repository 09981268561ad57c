"""A reload never cuts a request off: a request that leased the old model finishes on it, and
retired versions wait for their leases, up to a cap."""

from __future__ import annotations


import shutil
import time
import numpy as np
import pytest
import requests
from tests.support import config_for, encode, Raw, request_bytes, wait_until


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
