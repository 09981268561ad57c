"""The model directory: its labels, an onnxruntime session, warm-up and top-k (manifest.py reads
its model.ini).

A model fails at load time, never on its first request: `load()` checks providers, the input and
output shapes against the manifest and the labels, and runs one warm-up batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import cpus, files, libc, optimized, providers as providers_module
from .manifest import Manifest, ModelError, os_reason, read_manifest

@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float

    def as_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "confidence": self.confidence}


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        lines = files.read_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read labels: {os_reason(exc)}") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise ModelError(f"{path}: no labels")
    return labels


class Model:
    """A loaded, warmed-up model. The batcher calls `run` for one batch at a time."""

    def __init__(self, manifest: Manifest, labels: tuple[str, ...], session: ort.InferenceSession,
                 sha256: str, path: Path):
        self.manifest = manifest
        self.labels = labels
        self.sha256 = sha256
        self.path = path
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        # The only reference to the session, in a box the finalizer empties when this Model is
        # collected: the session is freed first, then the heap is trimmed (see _free_and_trim).
        self._session = [session]
        weakref.finalize(self, _free_and_trim, self._session).atexit = False

    @property
    def session(self) -> ort.InferenceSession:
        return self._session[0]

    @property
    def name(self) -> str:
        return self.manifest.name

    @functools.cached_property
    def longest_label(self) -> int:
        """The longest label's length as JSON writes it (quoted and escaped): bounds answer sizes."""
        return max(len(json.dumps(label)) for label in self.labels)

    def input_shape(self) -> tuple[int, int, int]:
        size = self.manifest.input.size
        return (3, size, size) if self.manifest.input.layout == "NCHW" else (size, size, 3)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N, classes) for a float32 batch; probabilities when the manifest asks for softmax."""
        (scores,) = self.session.run([self.output_name], {self.input_name: batch})
        scores = scores.reshape(scores.shape[0], -1)
        return softmax(scores) if self.manifest.softmax else scores

    def top_k(self, scores: np.ndarray, k: int) -> list[Prediction]:
        """The k best classes of one row of `run`'s output, best first."""
        k = min(k, scores.shape[0])
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Prediction(self.labels[i], int(i), round(float(scores[i]), 6)) for i in best]

    def providers(self) -> list[str]:
        """The execution providers the session runs on, in order."""
        return self.session.get_providers()

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "labels": len(self.labels),
                "input": list(self.input_shape()), "layout": self.manifest.input.layout,
                "providers": self.providers(),
                "intra_op_threads": self.session.get_session_options().intra_op_num_threads}


def _free_and_trim(session_box: list) -> None:
    """Free a retired model's session, then hand the freed memory back to the OS.

    glibc keeps memory freed in a thread's arena mapped for reuse, and a session (weights, arena,
    buffers) is ~130 MB on the default model: without the trim, 20 reloads grew RSS by 550 MB;
    with it, RSS stays flat (Triton #4966 is the same bug).
    """
    session_box.clear()
    libc.trim()


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def load(model_dir: Path, model_file: Path, labels_file: Path, *, manifest_file: Path | None = None,
         intra_op_threads: int = 0, inter_op_threads: int = 1, warmup_batch: int = 1,
         providers: tuple[str, ...] = (providers_module.CPU,), provider_fallback: bool = False,
         optimized_cache: Path | None = None) -> Model:
    """Load, check and warm up a model; raises ModelError with a reason an operator can act on.
    With `optimized_cache`, onnxruntime's optimised graph is kept there (optimized.py)."""
    manifest = read_manifest(manifest_file or model_dir / "model.ini")
    labels = read_labels(labels_file)
    data = _read_model_bytes(model_file)
    try:
        choice = providers_module.choose(providers, provider_fallback)
    except providers_module.ProviderError as exc:
        raise ModelError(f"{model_file}: {exc}") from None
    session = _session(data, model_file, intra_op_threads or cpus.available(), inter_op_threads, choice,
                       optimized_cache)
    model = Model(manifest, labels, session, hashlib.sha256(data).hexdigest(), model_file)
    _check_shapes(model, model_file)
    warm_up(model, warmup_batch)
    return model


def _read_model_bytes(path: Path) -> bytes:
    try:
        return files.read_bytes(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {os_reason(exc)}") from None




def _session(data: bytes, path: Path, intra: int, inter: int, choice, cache: Path | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning: they share the cores with the handler
    # threads that decode the next images. On 2 cores spinning burned 30-55% more CPU per image
    # and cost up to a quarter of the throughput under load. The price, a slower first operator
    # after a pause, is smallest when the decoding thread runs the model itself (batcher.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers_module.session_options(options, choice)
    try:
        if cache is not None and providers == [providers_module.CPU]:
            return optimized.session(data, options, providers, optimized.cache_file(cache, data, intra, inter))
        return ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise ModelError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0][:300]}") from None


def _check_shapes(model: Model, path: Path) -> None:
    inputs, outputs = model.session.get_inputs(), model.session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, found {len(inputs)}")
    declared = inputs[0].shape
    if len(declared) != 4:
        raise ModelError(f"{path}: input {inputs[0].name} has shape {declared}; expected rank 4")
    for got, want in zip(declared[1:], model.input_shape()):
        if isinstance(got, int) and got != want:
            raise ModelError(f"{path}: input shape {declared} does not fit the manifest "
                             f"({model.manifest.input.layout}, size {model.manifest.input.size})")
    classes = outputs[0].shape[-1]
    if isinstance(classes, int) and classes != len(model.labels):
        raise ModelError(f"{path}: model has {classes} classes but labels.txt has {len(model.labels)}")


def warm_up(model: Model, batch_size: int) -> None:
    """One run per batch shape that serving will see first; also proves the graph executes."""
    for n in sorted({1, batch_size}):
        try:
            scores = model.run(np.zeros((n, *model.input_shape()), dtype=np.float32))
        except Exception as exc:
            raise ModelError(f"{model.path}: warm-up run failed: {str(exc).splitlines()[0][:300]}") from None
        if scores.shape != (n, len(model.labels)):
            raise ModelError(f"{model.path}: output shape {scores.shape}; expected ({n}, {len(model.labels)})")
