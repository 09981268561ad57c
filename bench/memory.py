"""Memory: RSS growth of a serving daemon over many requests, and over many reloads in a row.

RSS is VmRSS from /proc/<pid>/status of the daemon process. The request check serves the tiny
model (the HTTP, multipart, preprocessing and batching code is the same; 10,000 requests take
under a minute instead of several); the reload check loads the default model each time.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from inferd.tools import loadclient

from . import servers
from .progress import progress

REQUEST_GROWTH_MB = 20.0  # RSS after 10,000 requests vs after the first 100
RELOAD_GROWTH_MB = 30.0  # RSS after 50 reloads vs before them
CONNECTIONS = 4  # so batches of several sizes run, as in real use


def run(images: dict[str, Path], workdir: Path, *, requests: int = 10_000, reloads: int = 50) -> dict:
    """{"requests": {...}, "reloads": {...}, "checks": [...]}; raises RuntimeError if inferd fails to start."""
    image = next(path for label, path in images.items() if "small" in label)
    content_type, body = loadclient.multipart_body(image.read_bytes(), image.name)
    tiny = workdir / "tiny-model"
    subprocess.run([sys.executable, str(servers.REPO / "models" / "build.py"), "tiny", "--out", str(tiny)],
                   check=True, stdout=subprocess.DEVNULL)
    daemon = servers.start_inferd(tiny, workdir / "memory-requests")
    try:
        by_requests = _request_growth(daemon, body, content_type, requests)
    finally:
        daemon.stop()
    model = changeable_copy(servers.REPO / "models" / "efficientnet-lite0", workdir / "reloaded-model")
    daemon = servers.start_inferd(model, workdir / "memory-reloads")
    try:
        by_reloads = _reload_growth(daemon, body, content_type, reloads, model)
    finally:
        daemon.stop()
    checks = [
        {"name": f"RSS growth from request 100 to {requests}", "value": by_requests["growth_mb"],
         "target": f"<= {REQUEST_GROWTH_MB} MB", "pass": by_requests["growth_mb"] <= REQUEST_GROWTH_MB
         and by_requests["failed"] == 0},
        {"name": f"RSS growth over {reloads} reloads", "value": by_reloads["growth_mb"],
         "target": f"< {RELOAD_GROWTH_MB} MB", "pass": by_reloads["growth_mb"] < RELOAD_GROWTH_MB
         and by_reloads["failed"] == 0},
    ]
    return {"requests": by_requests, "reloads": by_reloads, "checks": checks}


def _request_growth(daemon, body: bytes, content_type: str, total: int) -> dict:
    first = loadclient.run_load(daemon.url, body, content_type, connections=CONNECTIONS, count=100)
    after_100 = daemon.rss_kib()
    progress(f"memory: RSS after 100 requests {after_100 / 1024:.1f} MB; sending {total - 100} more")
    failed = _failed(first)
    done = 100
    while done < total:  # in slices, so progress shows
        step = min(2000, total - done)
        failed += _failed(loadclient.run_load(daemon.url, body, content_type, connections=CONNECTIONS, count=step))
        done += step
        progress(f"memory: {done} requests, RSS {daemon.rss_kib() / 1024:.1f} MB")
    after_all = daemon.rss_kib()
    return {"rss_after_100_mb": round(after_100 / 1024, 1), f"rss_after_{total}_mb": round(after_all / 1024, 1),
            "growth_mb": round((after_all - after_100) / 1024, 1), "failed": failed}


def changeable_copy(model_dir: Path, target: Path) -> Path:
    """A model directory whose model.onnx is `model_dir`'s (a link) and whose manifest can change."""
    target.mkdir(parents=True)
    (target / "model.onnx").symlink_to(model_dir / "model.onnx")
    for name in ("model.ini", "labels.txt"):
        (target / name).write_bytes((model_dir / name).read_bytes())
    return target


def touch_manifest(model_dir: Path, number: int) -> None:
    """A changed manifest: inferd reloads a model whose files changed and keeps one whose did not."""
    manifest = model_dir / "model.ini"
    manifest.write_text(manifest.read_text().split("\n; reload ")[0] + f"\n; reload {number}\n")


def _reload_growth(daemon, body: bytes, content_type: str, reloads: int, model_dir: Path,
                   path: str = "/admin/reload") -> dict:
    """Each reload loads, warms and swaps a new model, then retires the old one; requests in between."""
    loadclient.run_load(daemon.url, body, content_type, connections=CONNECTIONS, count=20)
    before = daemon.rss_kib()
    failed, after_first = 0, None
    for number in range(1, reloads + 1):
        touch_manifest(model_dir, number)
        failed += _reload(daemon.url, path) != 200
        failed += _failed(loadclient.run_load(daemon.url, body, content_type, connections=CONNECTIONS, count=8))
        after_first = after_first or daemon.rss_kib()
        if number % 10 == 0:
            progress(f"memory: {number} reloads, RSS {daemon.rss_kib() / 1024:.1f} MB")
    after = daemon.rss_kib()
    # Growth from the first reload on separates a leak per reload from memory kept once.
    return {"rss_before_mb": round(before / 1024, 1), "rss_after_first_mb": round(after_first / 1024, 1),
            f"rss_after_{reloads}_mb": round(after / 1024, 1), "growth_mb": round((after - before) / 1024, 1),
            "growth_after_first_mb": round((after - after_first) / 1024, 1), "failed": failed}


def _reload(url: str, path: str = "/admin/reload") -> int:
    """POST a reload (loopback is allowed without a token); returns the status."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
    try:
        connection.request("POST", path, b"", {"Content-Length": "0"})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def _failed(tally: loadclient.Tally) -> int:
    summary = loadclient.summarise(tally)
    return summary["requests"] - summary["ok"]
