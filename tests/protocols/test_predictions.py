"""Real predictions from the real default model, through a real daemon, with real clients (curl, requests)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests

from tests.support import EXPECTED_TOP1


@pytest.fixture(scope="module")
def photos(images, tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    for name, data in images.items():
        (directory / name).write_bytes(data)
    (directory / "notes.txt").write_text("shopping: milk, eggs\n")
    return directory


@pytest.fixture
def daemon(start_daemon, default_model_dir):
    return start_daemon(f"[model]\npath = {default_model_dir}\n")


def curl(*args: str) -> dict:
    result = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_curl_infer_names_the_photo(daemon, photos, name):
    body = curl("-F", f"file=@{photos / name}", f"{daemon.url}/infer")
    top = body["predictions"][0]
    assert top["label"] in EXPECTED_TOP1[name], body
    assert body["model"] == "efficientnet-lite0"
    assert len(body["predictions"]) == 5
    assert body["inference_time_ms"] > 0


def test_confidences_match_the_reference_figures(daemon, photos):
    cat = curl("-F", f"file=@{photos / 'cat.jpg'}", f"{daemon.url}/infer")["predictions"]
    assert [p["label"] for p in cat[:3]] == ["tiger cat", "Egyptian cat", "tabby"]
    assert cat[0]["confidence"] == pytest.approx(0.38, abs=0.03)
    assert [p["index"] for p in cat[:3]] == [282, 285, 281]
    coffee = curl("-F", f"file=@{photos / 'coffee.png'}", f"{daemon.url}/infer")["predictions"]
    assert coffee[0] == {"label": "espresso", "index": 967, "confidence": pytest.approx(0.95, abs=0.02)}
    assert sum(p["confidence"] for p in coffee) <= 1.0 + 1e-6


def test_every_allowed_format_gives_the_same_answer(daemon, photos):
    for name in ("coffee.png", "coffee.bmp", "coffee.tiff"):
        top = curl("-F", f"file=@{photos / name}", f"{daemon.url}/infer")["predictions"][0]
        assert top["label"] == "espresso", name
    assert curl("-F", f"file=@{photos / 'cat.gif'}", f"{daemon.url}/infer")["predictions"][0]["label"] in \
        EXPECTED_TOP1["cat.jpg"]


def test_curl_batch_answers_every_file(daemon, photos):
    body = curl("-F", f"files=@{photos / 'cat.jpg'}", "-F", f"files=@{photos / 'coffee.png'}",
                "-F", f"files=@{photos / 'notes.txt'}", f"{daemon.url}/infer/batch")
    assert (body["total_images"], body["successful"], body["failed"]) == (3, 2, 1)
    cat, coffee, notes = body["results"]
    assert cat["filename"] == "cat.jpg" and cat["predictions"][0]["label"] in EXPECTED_TOP1["cat.jpg"]
    assert coffee["predictions"][0]["label"] == "espresso" and coffee["error"] is None
    assert notes["filename"] == "notes.txt" and notes["predictions"] is None
    assert "not an image" in notes["error"] and notes["status"] == 415
    assert body["total_time_ms"] > 0


def test_top_k_and_raw_image_body(daemon, photos):
    body = curl("-H", "Content-Type: image/jpeg", "--data-binary", f"@{photos / 'cat.jpg'}",
                f"{daemon.url}/infer?top_k=2")
    assert len(body["predictions"]) == 2
    assert body["predictions"][0]["label"] in EXPECTED_TOP1["cat.jpg"]


def test_requests_client_and_keep_alive(daemon, images):
    with requests.Session() as session:
        for name in ("cat.jpg", "coffee.png", "cat.jpg"):
            response = session.post(f"{daemon.url}/infer", files={"file": (name, images[name])}, timeout=60)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "application/json"
            assert response.json()["predictions"][0]["label"] in EXPECTED_TOP1[name]


def test_health_and_metrics_json(daemon, images):
    requests.post(f"{daemon.url}/infer", files={"file": ("cat.jpg", images["cat.jpg"])}, timeout=60)
    requests.post(f"{daemon.url}/infer", files={"file": ("x.txt", b"not an image")}, timeout=60)
    health = requests.get(f"{daemon.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["model"]["name"] == "efficientnet-lite0" and len(health["model"]["sha256"]) == 64
    metrics = requests.get(f"{daemon.url}/metrics", timeout=10).json()
    assert metrics["total_requests"] == 2
    assert metrics["successful_requests"] == 1 and metrics["failed_requests"] == 1
    assert metrics["success_rate"] == pytest.approx(0.5)
    # Two requests: the nearest-rank p95 and p99 of two latencies are both the slower one.
    assert metrics["p99_latency_ms"] == metrics["p95_latency_ms"] >= metrics["average_latency_ms"] > 0
    assert metrics["average_latency_ms"] >= metrics["p50_latency_ms"]
    assert metrics["requests_per_second"] == pytest.approx(2 / metrics["uptime_seconds"])  # one snapshot
