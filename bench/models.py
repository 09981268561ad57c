"""Several models in one daemon (issue 11): how two models under load share the cores, RSS with
three models loaded, and RSS over 50 reloads of one of them.

Sharing: a repository with two copies of EfficientNet-Lite0 ("a" and "b"); in each round, "a" alone
at 4 connections, then "a" and "b" at 2 connections each, at once. Total images/s of the pair over
the single model's, median over rounds: near 1.0 when one run at a time (the RunGate) keeps the
cores busy without oversubscribing them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
from pathlib import Path

from inferd.tools import loadclient

from . import memory, servers
from .progress import progress

SHARE_TARGET = 0.9  # two models' total throughput / one model's
RELOAD_GROWTH_MB = 30.0


def run(images: dict[str, Path], workdir: Path, *, seconds: float = 3.0, rounds: int = 3, reloads: int = 50) -> dict:
    image = next(path for label, path in images.items() if "small" in label)
    content_type, body = loadclient.multipart_body(image.read_bytes(), image.name)
    repository = _repository(workdir / "repository")
    daemon = servers.start_inferd(repository / "a", workdir / "models-daemon",
                                  f"[models]\nrepository = {repository}\ndefault = a\n")
    try:
        share = _share(daemon.url, body, content_type, seconds, rounds)
        with_three = daemon.rss_kib()
        progress(f"models: RSS with three models loaded {with_three / 1024:.1f} MB")
        reloaded = memory._reload_growth(daemon, body, content_type, reloads, repository / "a",
                                         path="/admin/models/a/reload")
    finally:
        daemon.stop()
    checks = [
        {"name": "two models at once / one model, images/s (median of rounds)", "value": share["ratio"],
         "target": f">= {SHARE_TARGET}", "pass": share["ratio"] >= SHARE_TARGET},
        {"name": f"RSS growth over {reloads} reloads of one of three models", "value": reloaded["growth_mb"],
         "target": f"< {RELOAD_GROWTH_MB} MB", "pass": reloaded["growth_mb"] < RELOAD_GROWTH_MB
         and reloaded["failed"] == 0},
    ]
    return {"share": share, "rss_three_models_mb": round(with_three / 1024, 1), "reloads": reloaded, "checks": checks}


def _repository(root: Path) -> Path:
    """a, b: EfficientNet-Lite0 (b's manifest changes on every reload of b); tiny: the test model."""
    lite0 = servers.REPO / "models" / "efficientnet-lite0"
    memory.changeable_copy(lite0, root / "a")
    memory.changeable_copy(lite0, root / "b")
    subprocess.run([sys.executable, str(servers.REPO / "models" / "build.py"), "tiny", "--out", str(root / "tiny")],
                   check=True, stdout=subprocess.DEVNULL)
    return root


def _share(url: str, body: bytes, content_type: str, seconds: float, rounds: int) -> dict:
    alone, together = [], []
    loadclient.run_load(url, body, content_type, connections=4, duration=1.0, path="/infer?model=a")  # warm-up
    for number in range(rounds):
        alone.append(loadclient.summarise(loadclient.run_load(url, body, content_type, connections=4, duration=seconds,
                                                        path="/infer?model=a"))["throughput"])
        together.append(_both(url, body, content_type, seconds))
        progress(f"models: round {number + 1}: one model {alone[-1]:.1f} images/s, two at once {together[-1]:.1f}")
    ratios = [t / a for t, a in zip(together, alone)]
    return {"one_model": max(alone), "two_models": max(together), "ratio": round(statistics.median(ratios), 3),
            "by_round": [round(r, 3) for r in ratios]}


def _both(url: str, body: bytes, content_type: str, seconds: float) -> float:
    results = {}

    def load(model: str) -> None:
        results[model] = loadclient.summarise(loadclient.run_load(url, body, content_type, connections=2,
                                                            duration=seconds, path=f"/infer?model={model}"))
    threads = [threading.Thread(target=load, args=(model,)) for model in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r["throughput"] for r in results.values())
