"""An execution provider against the default CPU provider, in process, through inferd's own
model.load and preprocessing: images/s of decode + preprocess + session.run at batch 1 and 8 on
both bench photos, in alternating rounds (the ratio taken within each round, the median shown);
the largest score difference; and top-1 agreement on the 104 check photos of models/photos.py.

    .venv/bin/pip install onnxruntime-ep-openvino     # the OpenVINO plugin (a test extra)
    python -m bench.providers                         # OpenVINOExecutionProvider, both models
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from inferd import model as model_module
from inferd.imaging import preprocess

from . import images, servers

CPU = "CPUExecutionProvider"
FORMATS = frozenset({"JPEG"})
MAX_PIXELS = 64_000_000


def load(name: str, provider: str) -> model_module.Model:
    directory = servers.REPO / "models" / name
    return model_module.load(directory, directory / "model.onnx", directory / "labels.txt", providers=(provider,))


def tensor(model: model_module.Model, data: bytes) -> np.ndarray:
    return preprocess.to_tensor(data, model.manifest.input, max_pixels=MAX_PIXELS, formats=FORMATS)


def images_per_second(model: model_module.Model, data: bytes, batch: int, seconds: float) -> float:
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.run(np.stack([tensor(model, data) for _ in range(batch)]))
        done += batch
    return done / (time.perf_counter() - began)


def compare_speed(models: dict, name: str, rounds: int, seconds: float) -> None:
    provider = next(p for p in models if p != CPU)
    for label, path in images.write_images(servers.REPO / "bench-results" / "images").items():
        data = path.read_bytes()
        one = tensor(models[CPU], data)[None]
        difference = float(np.abs(models[CPU].run(one) - models[provider].run(one)).max())
        for batch in (1, 8):
            seen = {p: [] for p in models}
            for _ in range(rounds):
                for p, model in models.items():
                    seen[p].append(images_per_second(model, data, batch, seconds))
            ratio = statistics.median(o / c for o, c in zip(seen[provider], seen[CPU]))
            print(f"{name:19} {label:14} batch {batch}: CPU {statistics.median(seen[CPU]):6.1f}/s  {provider} "
                  f"{statistics.median(seen[provider]):6.1f}/s  ratio {ratio:.2f}  largest score difference "
                  f"{difference:.1e}", flush=True)


def agreement(models: dict, name: str) -> None:
    sys.path.insert(0, str(servers.REPO / "models"))
    import photos

    agree = total = 0
    for _, data in photos.check_jpegs():
        scores = [model.run(tensor(model, data)[None])[0] for model in models.values()]
        agree += int(scores[0].argmax() == scores[1].argmax())
        total += 1
    print(f"{name:19} top-1 agrees with the CPU provider on {agree}/{total} check photos", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="OpenVINOExecutionProvider")
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "resnet50"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    for name in args.models:
        models = {CPU: load(name, CPU), args.provider: load(name, args.provider)}
        print(f"{name}: sessions run on {[model.providers() for model in models.values()]}", flush=True)
        compare_speed(models, name, args.rounds, args.seconds)
        agreement(models, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
