"""The service boundary every protocol calls: lease a model, classify images with it.

`Service.lease(model, version)` takes one snapshot for a request, the configuration and a
loaded model, held until the request is answered. `Lease.classify(images, top_k)` decodes and
preprocesses each image on the caller's thread, sends the tensors to the model's batcher together,
and returns per image its predictions or its ImageError; it knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from .config import Config
from .imaging import preprocess
from .imaging.budget import DecodeBudget
from .imaging.errors import DecodeBusy, ImageError
from .model import Prediction
from .repository import LoadedModel, Repository


class InferenceTimeout(RuntimeError):
    """No result within [batching] request_timeout; the client should retry later."""

    http_status = 503
    headers = {"Retry-After": "1"}


@dataclass(frozen=True)
class Scores:
    """One image's row of model output (probabilities when the manifest asks for softmax)."""

    scores: np.ndarray
    inference_time_ms: float


@dataclass(frozen=True)
class Classification:
    predictions: list[Prediction]
    inference_time_ms: float


class Service:
    """Holds the configuration and the repository the daemon installs; requests lease from it."""

    def __init__(self, repository: Repository, config: Config):
        self.repository = repository
        self.config = config
        self.decode_budget = DecodeBudget(config.limits.max_decode_bytes)

    def configure(self, config: Config) -> None:
        self.config = config
        self.decode_budget.resize(config.limits.max_decode_bytes)

    @contextlib.contextmanager
    def lease(self, model: str | None = None, version: str | None = None):
        """A Lease on the named model (default model, latest version when None); raises
        repository.UnknownModel (404)."""
        config = self.config
        with self.repository.lease(model, version) as loaded:
            yield Lease(config, loaded, self.decode_budget)

    def describe_default(self) -> dict | None:
        """The default model's description, or None while none is loaded."""
        try:
            return self.repository.find().describe()
        except LookupError:
            return None


class Lease:
    """One request's hold on (config, loaded model)."""

    def __init__(self, config: Config, loaded: LoadedModel, decode_budget: DecodeBudget | None = None):
        self.config = config
        self.loaded = loaded
        self.metrics = loaded.metrics  # this version's VersionMetrics
        self.decode_budget = decode_budget

    @property
    def labels(self) -> tuple[str, ...]:
        return self.loaded.model.labels

    def classify(self, images: list[bytes], top_k: int) -> list[Classification | ImageError]:
        """Per image, its top_k predictions or the ImageError (4xx) that refused it. Raises for the
        whole request: QueueFull or BatcherStopped (503), InferenceTimeout (503)."""
        top = self.loaded.model.top_k
        return [r if isinstance(r, Exception) else Classification(top(r.scores, top_k), r.inference_time_ms)
                for r in self.score_images(images)]

    def score_images(self, images: list[bytes]) -> list[Scores | ImageError]:
        """Per image, its scores or the ImageError (4xx) that refused it; all of a request's images
        go to the batcher together. Raises as classify does."""
        results: list = [self._preprocess(data) for data in images]
        scored = iter(self.score_tensors([r for r in results if not isinstance(r, Exception)]))
        return [r if isinstance(r, Exception) else next(scored) for r in results]

    def score_tensors(self, tensors) -> list[Scores]:
        """Scores of preprocessed tensors (each in the model's input shape), through the batcher."""
        submitted = time.monotonic()
        try:
            outputs = self._infer(list(tensors), submitted)
        except Exception:
            for _ in tensors:
                self.metrics.observe_image("error")
            raise
        for _ in outputs:
            self.metrics.observe_image("ok")
        return [Scores(scores, round(seconds * 1000.0, 3)) for scores, seconds in outputs]

    def _preprocess(self, data: bytes) -> np.ndarray | ImageError:
        started = time.monotonic()
        limits = self.config.limits
        try:
            tensor = preprocess.to_tensor(data, self.loaded.model.manifest.input, max_pixels=limits.max_image_pixels,
                                          formats=limits.allowed_formats, budget=self.decode_budget)
        except ImageError as exc:
            self.metrics.observe_image("error" if isinstance(exc, DecodeBusy) else "bad_input")
            return exc
        self.metrics.observe_preprocess(time.monotonic() - started)
        return tensor

    def _infer(self, tensors: list[np.ndarray], submitted: float) -> list[tuple[np.ndarray, float]]:
        """(scores, seconds since submit) per tensor."""
        futures = self.loaded.batcher.submit(tensors) if tensors else []
        timeout = self.config.batching.request_timeout
        return [(_wait(future, submitted, timeout), time.monotonic() - submitted) for future in futures]


def _wait(future, submitted: float, timeout: float):
    try:
        return future.result(timeout=max(0.0, submitted + timeout - time.monotonic()))
    except FutureTimeout:
        raise InferenceTimeout("inference timed out") from None
