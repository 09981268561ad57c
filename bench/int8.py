"""The opt-in int8 models against the float ones: speed in process, and top-1 agreement.

For each model, `models/build.py <kind> --int8` (built when missing or stale) is compared with the
float model in interleaved rounds: inferd's in-process limit (decode + preprocess + session.run,
best batch size) on each bench image, and session.run alone on a batch of 1 and of 8. The ratio
int8 / float is taken within each round; the table gives the median. Agreement: the top-1 label
of both models on the 104 check photos of models/photos.py (variants of 13 scikit-image photos,
none of them used for calibration). Issue 12's rule for shipping int8 as the default: >= 1.3x
faster and >= 97/100 agreeing; this part reports, it does not decide (no PASS/FAIL line).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import servers, throughput
from inferd.tools import bench as inprocess
from .progress import progress

SPEEDUP_TO_SHIP = 1.3
AGREEMENT_TO_SHIP = 0.97
COLUMNS = ("model", "measure", "float", "int8", "int8/float by round", "speed-up")
AGREEMENT_COLUMNS = ("model", "photos", "top-1 agree", "agreement", "ships by issue 12's rule")


def run(images: dict[str, Path], models: tuple[str, ...], rounds: int, seconds: float) -> dict:
    """{"rows", "agreement"}: speed rows per (model, measure) and one agreement row per model."""
    rows, agreement = [], []
    for model in models:
        float_dir = servers.REPO / throughput.MODELS[model]
        throughput.ensure_model(model, float_dir)
        int8_dir = _ensure_int8(model)
        speed = _speed(model, float_dir, int8_dir, images, rounds, seconds)
        agree = _agreement(float_dir, int8_dir)
        rows += speed
        fastest_end_to_end = min(row["speed-up"] for row in speed if row["measure"].startswith("limit"))
        agreement.append({"model": model, "photos": agree["photos"], "top-1 agree": agree["agree"],
                          "agreement": agree["agreement"],
                          "ships by issue 12's rule": "yes" if fastest_end_to_end >= SPEEDUP_TO_SHIP
                          and agree["agreement"] >= AGREEMENT_TO_SHIP else "no"})
        progress(f"int8, {model}: top-1 agrees on {agree['agree']}/{agree['photos']} photos")
    return {"rows": rows, "agreement": agreement}


def _ensure_int8(model: str) -> Path:
    out = servers.REPO / "models" / f"{model}-int8"
    progress(f"int8, {model}: building (or checking) {out.relative_to(servers.REPO)}")
    subprocess.run([sys.executable, str(servers.REPO / "models" / "build.py"), model, "--int8", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def _speed(model: str, float_dir: Path, int8_dir: Path, images: dict[str, Path], rounds: int,
           seconds: float) -> list[dict]:
    measures = {}  # name -> {"float": [per round], "int8": [per round]}
    runners = {}
    for label, path in images.items():
        data = path.read_bytes()
        for kind, directory in (("float", float_dir), ("int8", int8_dir)):
            runners[(f"limit, {label}", kind)] = inprocess.limit_runner(directory, data, warmup_batch=8)
    for kind, directory in (("float", float_dir), ("int8", int8_dir)):
        for size in (1, 8):
            runners[(f"session.run, batch {size}", kind)] = _session_runner(directory, size)
    for number in range(rounds):
        for (name, kind), classify in runners.items():
            rate = _rate(classify, name, seconds)
            measures.setdefault(name, {"float": [], "int8": []})[kind].append(rate)
        progress(f"int8, {model}, round {number + 1}: " + ", ".join(
            f"{name} {m['int8'][-1] / m['float'][-1]:.2f}x" for name, m in measures.items()))
    rows = []
    for name, m in measures.items():
        ratios = [round(i / f, 3) for f, i in zip(m["float"], m["int8"])]
        rows.append({"model": model, "measure": f"{name}, images/s", "float": round(statistics.median(m["float"]), 1),
                     "int8": round(statistics.median(m["int8"]), 1), "int8/float by round": " ".join(map(str, ratios)),
                     "speed-up": statistics.median(ratios)})
    return rows


def _rate(classify, name: str, seconds: float) -> float:
    if name.startswith("limit"):
        return max(inprocess.images_per_second(classify, size, seconds / 2, None)[0] for size in (1, 8))
    return classify(seconds)


def _session_runner(model_dir: Path, batch_size: int):
    """run(seconds) -> images/s of session.run alone on a zero batch, one intra-op thread per core."""
    from .peers import classifier
    model = classifier.Classifier(model_dir, threads=len(os.sched_getaffinity(0)))
    batch = [np.zeros(model.session.get_inputs()[0].shape[1:], np.float32)] * batch_size

    def run(seconds: float) -> float:
        model.predict(batch)
        count, started = 0, time.perf_counter()
        while not count or time.perf_counter() - started < seconds:
            model.predict(batch)
            count += batch_size
        return count / (time.perf_counter() - started)

    return run


def _agreement(float_dir: Path, int8_dir: Path) -> dict:
    sys.path.insert(0, str(servers.REPO / "models"))
    import photos
    from .peers import classifier
    float_model, int8_model = classifier.Classifier(float_dir), classifier.Classifier(int8_dir)
    agree = total = 0
    for _, data in photos.check_jpegs():
        tensor = [float_model.preprocess(data)]
        total += 1
        agree += float_model.predict(tensor, 1)[0]["predictions"][0]["index"] == \
            int8_model.predict(tensor, 1)[0]["predictions"][0]["index"]
    return {"photos": total, "agree": agree, "agreement": round(agree / total, 3)}
