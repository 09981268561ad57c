"""One request's hold on one loaded model version, and what it can do with it: classify images,
score images or preprocessed tensors. Each image is looked up in the response cache (cache.py) by
its bytes; the others are decoded and preprocessed on the caller's thread and sent to the model's
batcher together. Knows nothing of HTTP: every refusal is an error that carries its status.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

import numpy as np

from .cache import Lookup, ResponseCache
from .config import Config
from .imaging import preprocess
from .imaging.budget import DecodeBudget
from .imaging.errors import DecodeBusy, ImageError
from .keys import Caller
from .model import Prediction
from .repository import LoadedModel, Signature


class NonFiniteScores(ImageError):
    """The model gave NaN or infinite scores for this input (an FP32 tensor far out of the range it
    was trained on, or a broken model): no JSON number can carry them, so no answer is made."""

    http_status = 422

    def __init__(self):
        super().__init__("the model produced non-finite scores (NaN or infinity) for this input")


class InferenceTimeout(RuntimeError):
    """No result within [batching] request_timeout; the client should retry later."""

    http_status = 503
    headers = {"Retry-After": "1"}


@dataclass(frozen=True)
class Scores:
    """One image's row of model output (probabilities when the manifest asks for softmax)."""

    scores: np.ndarray
    inference_time_ms: float
    cached: bool | None = None  # from the response cache (or another request's computation); None: no cache


@dataclass(frozen=True)
class Classification:
    predictions: list[Prediction]
    inference_time_ms: float
    cached: bool | None = None


def cache_state(results: list) -> str | None:
    """What the cache did for a request's answered images: "hit" (all from it), "miss" (none),
    "partial"; None when the cache is off or nothing was answered."""
    flags = {r.cached for r in results if not isinstance(r, Exception) and r.cached is not None}
    if not flags:
        return None
    return "partial" if len(flags) == 2 else ("hit" if flags == {True} else "miss")


class Lease:
    """One request's hold on (config, loaded model), for one caller."""

    def __init__(self, config: Config, loaded: LoadedModel, decode_budget: DecodeBudget | None = None,
                 cache: ResponseCache | None = None, caller: Caller | None = None):
        self.config = config
        self.loaded = loaded
        self.metrics = loaded.metrics  # this version's VersionMetrics
        self.decode_budget = decode_budget
        self.cache = cache if cache is not None and cache.enabled else None
        self.caller = caller

    @property
    def labels(self) -> tuple[str, ...]:
        return self.loaded.model.labels

    @property
    def signature(self) -> Signature:
        return self.loaded.signature

    def top(self, scores: np.ndarray, k: int) -> list[Prediction]:
        """The k best classes of one row of scores, best first: the one top-k of every protocol."""
        return self.loaded.model.top_k(scores, k)

    def reserve(self, nbytes: int):
        """Hold `nbytes` of the decode budget (memory that a request's JSON or answer takes while
        it is built) for the length of a with block; raises ImageTooLarge (413), DecodeBusy (503)."""
        return self.decode_budget.reserve(nbytes) if self.decode_budget is not None else contextlib.nullcontext()

    def classify(self, images: list[bytes], top_k: int) -> list[Classification | ImageError]:
        """Per image, its top_k predictions or the ImageError (4xx) that refused it. Raises for the
        whole request: QueueFull or BatcherStopped (503), InferenceTimeout (503)."""
        return [r if isinstance(r, Exception) else Classification(self.top(r.scores, top_k), r.inference_time_ms,
                                                                  r.cached)
                for r in self.score_images(images)]

    def score_images(self, images: list[bytes]) -> list[Scores | ImageError]:
        """Per image, its scores or the ImageError (4xx) that refused it; the images the cache
        does not answer go to the batcher together. Raises as classify does, and the caller's
        keys.Limited (429) or TooManyImages (413) before any image is looked at."""
        self._charge(len(images))
        return self._compute(images) if self.cache is None else self._through_cache(images)

    def score_tensors(self, tensors) -> list[Scores | NonFiniteScores]:
        """Scores of preprocessed tensors (each in the model's input shape), through the batcher;
        never cached. Raises as score_images does."""
        self._charge(len(tensors))
        return self._score_tensors(tensors)

    def _charge(self, count: int) -> None:
        if self.caller is not None:
            self.caller.charge_images(count)

    def _compute(self, images: list[bytes]) -> list[Scores | ImageError]:
        results: list = [self._preprocess(data) for data in images]
        scored = iter(self._score_tensors([r for r in results if not isinstance(r, Exception)]))
        return [r if isinstance(r, Exception) else next(scored) for r in results]

    def _through_cache(self, images: list[bytes]) -> list[Scores | ImageError]:
        """Each image looked up by its bytes (and what else decides its answer) before any is
        decoded; this request computes the ones nobody has or is computing, together."""
        started = time.monotonic()
        context = answer_context(self.config, self.loaded)
        lookups = [self.cache.begin(_image_key(context, data)) for data in images]
        leading = [i for i, lookup in enumerate(lookups) if lookup.leads]
        led = self._lead([lookups[i] for i in leading], [images[i] for i in leading], context)
        computed = dict(zip(leading, led))
        return [computed[i] if i in computed else self._follow(lookup, started) for i, lookup in enumerate(lookups)]

    def _lead(self, lookups: list[Lookup], images: list[bytes], context: bytes) -> list[Scores | ImageError]:
        """Compute the images this request leads and end their flights: scores are stored,
        errors only handed to the requests waiting on them (never cached)."""
        try:
            results = self._compute(images)
        except BaseException as exc:
            for lookup in lookups:
                self.cache.fail(lookup.key, exc)
            raise
        for lookup, result in zip(lookups, results):
            if isinstance(result, Exception):
                self.cache.fail(lookup.key, result)
            else:
                self.cache.fill(lookup.key, _frozen(result.scores), context)
        return [r if isinstance(r, Exception) else replace(r, cached=False) for r in results]

    def _follow(self, lookup: Lookup, started: float) -> Scores | ImageError:
        """A stored answer, or the one another request is computing (waited for within the
        request timeout: InferenceTimeout beyond)."""
        if lookup.hit:
            return Scores(lookup.value, 0.0, cached=True)
        try:
            value = _wait(lookup.flight, started, self.config.batching.request_timeout)
        except ImageError as exc:
            return exc
        return Scores(value, round((time.monotonic() - started) * 1000.0, 3), cached=True)

    def _score_tensors(self, tensors) -> list[Scores | NonFiniteScores]:
        submitted = time.monotonic()
        try:
            outputs = self._infer(list(tensors), submitted)
        except Exception:
            for _ in tensors:
                self.metrics.observe_image("error")
            raise
        results = [Scores(scores, round(seconds * 1000.0, 3)) if np.isfinite(scores).all() else NonFiniteScores()
                   for scores, seconds in outputs]
        for result in results:
            self.metrics.observe_image("error" if isinstance(result, NonFiniteScores) else "ok")
        return results

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


def answer_context(config: Config, loaded: LoadedModel) -> bytes:
    """What, beside an image's bytes, decides its cached answer: the model version and its file's
    sha256, the manifest (preprocessing, softmax), the execution providers (their arithmetic
    differs in the last digits), and the limits that could refuse the image."""
    limits = config.limits
    model = loaded.model
    decided_by = (loaded.name, loaded.version, model.sha256, model.manifest, tuple(model.providers()),
                  sorted(limits.allowed_formats), limits.max_image_pixels, limits.max_decode_bytes)
    return hashlib.sha256(repr(decided_by).encode()).digest()


def _image_key(context: bytes, data: bytes) -> bytes:
    digest = hashlib.sha256(context)
    digest.update(data)  # not context + data: that would copy the image
    return digest.digest()


def _frozen(scores: np.ndarray) -> np.ndarray:
    """A read-only copy that owns its data: not a view keeping the whole batch's output alive,
    and sys.getsizeof counts its real size."""
    row = np.array(scores, copy=True)
    row.flags.writeable = False
    return row


def _wait(future, submitted: float, timeout: float):
    try:
        return future.result(timeout=max(0.0, submitted + timeout - time.monotonic()))
    except FutureTimeout:
        raise InferenceTimeout("inference timed out") from None
