"""`systemctl reload inferd` under a real systemd 252: synchronous, lossless under load, and a broken
model leaves the old one serving with the reason in the journal, the exit status and /health.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.system.systemd_machine import DEFAULT_MODEL, set_config

pytestmark = pytest.mark.system

CLIENTS = 8
LOAD_SECONDS = 30


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_model(url: str) -> dict:
    response = requests.get(f"{url}/health", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model"]


def test_reload_returns_once_the_new_model_serves(inferd, tiny_model_dir):
    inferd.systemctl("start", "inferd")
    url = inferd.url()
    pid = inferd.show("inferd", "MainPID")["MainPID"]
    default_sha = served_model(url)["sha256"]
    assert default_sha == sha256(inferd.path(f"{DEFAULT_MODEL}/model.onnx"))

    set_config(inferd, model={"path": inferd.copy_model(tiny_model_dir, "tiny")})
    started = time.monotonic()
    inferd.systemctl("reload", "inferd")
    took = time.monotonic() - started
    assert served_model(url)["sha256"] == sha256(tiny_model_dir / "model.onnx")  # at once, no retry

    set_config(inferd, model={"path": DEFAULT_MODEL})
    inferd.systemctl("reload", "inferd")
    assert served_model(url)["sha256"] == default_sha

    props = inferd.show("inferd", "ActiveState", "MainPID", "NRestarts", "StatusText")
    assert props == {"ActiveState": "active", "MainPID": pid, "NRestarts": "0",
                     "StatusText": "serving efficientnet-lite0"}
    inferd.unit_log("inferd-reload: reloaded (generation 2): serving tiny-10",
                    "inferd-reload: reloaded (generation 3): serving efficientnet-lite0")
    print(f"systemctl reload to the tiny model returned in {took:.2f}s")


def test_reload_under_load_loses_no_request(inferd, tiny_model_dir, images, record_property):
    """8 keep-alive clients POST /infer without pause while `systemctl reload` runs every second
    for 30 s, alternating between two models: every request gets a 200 and no connection drops."""
    tiny = inferd.copy_model(tiny_model_dir, "tiny")
    inferd.systemctl("start", "inferd")
    url = inferd.url()
    image = images["cat.jpg"]
    stop = threading.Event()
    counts = [Counter() for _ in range(CLIENTS)]
    failures: list[str] = []
    sessions = [requests.Session() for _ in range(CLIENTS)]

    def client(number: int) -> None:
        session, count = sessions[number], counts[number]
        while not stop.is_set():
            count["sent"] += 1
            try:
                response = session.post(f"{url}/infer", files={"file": ("cat.jpg", image, "image/jpeg")},
                                        timeout=30)
            except requests.RequestException as exc:
                failures.append(f"client {number}: {exc!r}")
                continue
            if response.status_code == 200:
                count[response.json()["model"]] += 1
            else:
                failures.append(f"client {number}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    reload_seconds, models = [], [tiny, DEFAULT_MODEL]
    started = time.monotonic()
    try:
        while time.monotonic() - started < LOAD_SECONDS:
            tick = time.monotonic()
            set_config(inferd, model={"path": models[len(reload_seconds) % 2]})
            inferd.systemctl("reload", "inferd")
            reload_seconds.append(time.monotonic() - tick)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # pacing: one reload a second
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    elapsed = time.monotonic() - started

    total = sum(counts, Counter())
    connections = sum(pool.num_connections for session in sessions
                      for pool in session.get_adapter(url).poolmanager.pools._container.values())
    figures = {
        "seconds": round(elapsed, 1), "clients": CLIENTS, "requests": total["sent"],
        "ok": total["tiny-10"] + total["efficientnet-lite0"], "failed": len(failures),
        "served_by_tiny": total["tiny-10"], "served_by_efficientnet": total["efficientnet-lite0"],
        "reloads": len(reload_seconds), "reload_median_s": round(statistics.median(reload_seconds), 2),
        "reload_max_s": round(max(reload_seconds), 2), "connections_opened": connections,
    }
    print(f"reload under load: {figures}")
    record_property("reload_under_load", figures)
    assert failures == [], failures[:10]
    assert figures["ok"] == figures["requests"]
    assert connections == CLIENTS, "a keep-alive connection was dropped and reopened"
    assert len(reload_seconds) >= LOAD_SECONDS * 0.5
    assert total["tiny-10"] and total["efficientnet-lite0"]
    props = inferd.show("inferd", "ActiveState", "NRestarts")
    assert props == {"ActiveState": "active", "NRestarts": "0"}


def test_reload_to_a_broken_model_keeps_the_old_one_and_says_why(inferd, tiny_model_dir, images):
    inferd.systemctl("start", "inferd")
    url = inferd.url()
    pid = inferd.show("inferd", "MainPID")["MainPID"]
    before = served_model(url)
    broken = inferd.copy_model(tiny_model_dir, "broken")
    inferd.write(f"{broken}/model.onnx", b"this is not an ONNX file\n")
    set_config(inferd, model={"path": broken})

    result = inferd.systemctl("reload", "inferd", check=False)
    assert result.returncode != 0, result

    assert served_model(url) == before
    response = requests.post(f"{url}/infer", files={"file": ("cat.jpg", images["cat.jpg"], "image/jpeg")},
                             timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "efficientnet-lite0"
    props = inferd.show("inferd", "ActiveState", "MainPID", "StatusText")
    assert props["ActiveState"] == "active" and props["MainPID"] == pid
    assert props["StatusText"].startswith("serving efficientnet-lite0 (last reload failed: ")

    why = f"{broken}/model.onnx: onnxruntime cannot load it"
    daemon_says = f"reload failed, efficientnet-lite0 keeps serving: {why}"
    reload_says = f"inferd-reload: reload failed, the previous model keeps serving: {why}"
    # Priorities come from the "<N>" prefixes: a warning-level query shows the failure, no info line.
    errors = inferd.unit_log(daemon_says, reload_says, args=("-p", "warning"))
    assert "serving efficientnet-lite0 on http" not in errors and "inferd.access:" not in errors
    assert daemon_says in inferd.unit_log(daemon_says, args=("-p", "err"))
    everything = inferd.unit_log("serving efficientnet-lite0 on http://127.0.0.1:", "inferd.access:")
    assert daemon_says in everything
