"""What every peer app runs: inferd's manifest, the same preprocessing written the plain way, onnxruntime.

decode with Pillow (a full decode, no JPEG draft mode: what a user of these frameworks writes),
RGB, shorter side to the manifest's `resize`, centre crop `size` with its interpolation, mean/std
on its `value_range` scale, its layout; then softmax and the top-k labels. The manifest is read
with configparser as bench/reference_app.py reads it, so every server feeds the model the same.

numpy, Pillow, onnxruntime and the standard library only: it is imported in each peer's own venv
(bench/peers/requirements/), never by inferd.
"""

from __future__ import annotations

import configparser
import io
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime loads; see DESIGN.md

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Manifest:
    """The [input] section of inferd's model.ini."""

    size: int
    resize: int
    interpolation: str
    mean: np.ndarray
    std: np.ndarray
    value_range: float
    layout: str


def read_manifest(path: Path) -> Manifest:
    """Parse model.ini's [input] section (raises KeyError/ValueError on a broken file)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    if not parser.read(path, encoding="utf-8"):
        raise FileNotFoundError(path)
    section = parser["input"]
    return Manifest(
        size=section.getint("size"), resize=section.getint("resize", fallback=section.getint("size")),
        interpolation=section.get("interpolation", "bilinear").lower(),
        mean=np.array([float(v) for v in section.get("mean", "0 0 0").split()], np.float32),
        std=np.array([float(v) for v in section.get("std", "1 1 1").split()], np.float32),
        value_range=section.getfloat("value_range", fallback=255.0), layout=section.get("layout", "NCHW").upper())


def preprocess(data: bytes, spec: Manifest) -> np.ndarray:
    """Encoded image -> float32 tensor of one image, (3, S, S) for NCHW or (S, S, 3)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = spec.resize / min(width, height)
    image = image.resize((max(spec.size, round(width * scale)), max(spec.size, round(height * scale))),
                         FILTERS[spec.interpolation])
    left, top = (image.width - spec.size) // 2, (image.height - spec.size) // 2
    image = image.crop((left, top, left + spec.size, top + spec.size))
    pixels = np.asarray(image, np.float32) * np.float32(spec.value_range / 255.0)
    pixels = (pixels - spec.mean) / spec.std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if spec.layout == "NCHW" else pixels)


class Classifier:
    """One onnxruntime session over a model directory (model.onnx, labels.txt, model.ini)."""

    def __init__(self, model_dir: str | Path, threads: int = 0):
        model_dir = Path(model_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.spec = read_manifest(model_dir / "model.ini")
        self.labels = [line.strip() for line in (model_dir / "labels.txt").read_text("utf-8").splitlines()
                       if line.strip()]
        self.name = model_dir.name

    def preprocess(self, data: bytes) -> np.ndarray:
        return preprocess(data, self.spec)

    def predict(self, tensors: list[np.ndarray], top_k: int = 5) -> list[dict]:
        """One session.run over the stacked tensors; one {"predictions": [...]} per image."""
        logits = self.session.run(None, {self.input: np.stack(tensors)})[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return [{"predictions": [{"label": self.labels[i], "index": int(i), "confidence": float(row[i])}
                                 for i in np.argsort(row)[::-1][:top_k]], "model": self.name}
                for row in probabilities]

    def classify(self, images: list[bytes], top_k: int = 5) -> list[dict]:
        return self.predict([self.preprocess(data) for data in images], top_k)


def model_dir() -> Path:
    """The model directory the bench gives every peer app (PEER_MODEL_DIR)."""
    return Path(os.environ["PEER_MODEL_DIR"])


def from_environment(default_threads: int = 0) -> Classifier:
    """The classifier every peer app loads: PEER_MODEL_DIR, with PEER_THREADS intra-op threads
    (0 = onnxruntime's default, one per physical core)."""
    return Classifier(model_dir(), int(setting("THREADS", default_threads)))


def setting(name: str, default: int | float) -> int | float:
    """A number from the environment (PEER_<NAME>), so the bench can state what each peer ran with."""
    return type(default)(os.environ.get(f"PEER_{name}", default))
