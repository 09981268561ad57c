"""What each route does, as plain functions of (state, inputs) -> JSON-able dict; no sockets here.

Errors are raised with an `http_status` attribute and rendered once by the server.
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Iterable

from . import multipart, preprocess
from .preprocess import ImageError


class HTTPError(Exception):
    """An error answer: status, message for the client, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.http_status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def uploads_from_multipart(content_type: str, chunks: Iterable[bytes], limits, field_names: tuple[str, ...],
                           max_files: int) -> list[Upload]:
    """The file parts of a multipart body whose field is one of `field_names` (other fields are ignored).

    Raises MultipartError (400/413) for a malformed or oversized body, HTTPError 413 past `max_files`.
    """
    boundary = multipart.parse_boundary(content_type)
    uploads = []
    for part in multipart.iter_parts(
        chunks, boundary, max_body_bytes=limits.max_body_bytes, max_parts=limits.max_parts,
        max_header_bytes=limits.max_part_header_bytes, max_part_bytes=limits.max_body_bytes,
    ):
        if part.name not in field_names:
            continue
        if len(uploads) == max_files:
            raise HTTPError(413, f"too many files: the limit is {max_files} per request")
        uploads.append(Upload(part.filename, part.data))
    return uploads


def parse_top_k(query: dict[str, list[str]], default: int, classes: int) -> int:
    values = query.get("top_k")
    if not values:
        return min(default, classes)
    try:
        k = int(values[-1])
    except ValueError:
        raise HTTPError(400, "top_k must be an integer") from None
    if not 1 <= k <= classes:
        raise HTTPError(400, f"top_k must be between 1 and {classes}")
    return k


def infer(state, metrics, upload: Upload, top_k: int) -> dict:
    """One image -> predictions. Bad images raise ImageError (4xx); a full queue raises QueueFull."""
    (result,) = classify(state, metrics, [upload], top_k)
    if isinstance(result, Exception):
        raise result
    return {"predictions": result["predictions"], "inference_time_ms": result["inference_time_ms"],
            "model": state.model.name}


def infer_batch(state, metrics, uploads: list[Upload], top_k: int) -> dict:
    """Every upload gets an entry; a bad image fails only its own entry."""
    started = time.monotonic()
    results = classify(state, metrics, uploads, top_k)
    entries = [_batch_entry(upload, result) for upload, result in zip(uploads, results)]
    failed = sum(1 for entry in entries if entry["error"] is not None)
    return {
        "total_images": len(entries), "successful": len(entries) - failed, "failed": failed,
        "total_time_ms": _ms(time.monotonic() - started), "model": state.model.name, "results": entries,
    }


def _batch_entry(upload: Upload, result) -> dict:
    if isinstance(result, Exception):
        return {"filename": upload.filename, "predictions": None, "inference_time_ms": None,
                "error": str(result), "status": getattr(result, "http_status", 500)}
    return {"filename": upload.filename, **result, "error": None, "status": 200}


def classify(state, metrics, uploads: list[Upload], top_k: int) -> list:
    """Preprocess here, infer in the batcher; returns per upload a result dict or its ImageError."""
    tensors, results = [], []
    for upload in uploads:
        results.append(_preprocess(state, metrics, upload))
        if not isinstance(results[-1], Exception):
            tensors.append(results[-1])
    submitted = time.monotonic()
    try:
        outputs = iter(_infer_all(state, tensors, submitted))
    except Exception:
        for _ in tensors:
            metrics.observe_image("error")
        raise
    for i, result in enumerate(results):
        if not isinstance(result, Exception):
            scores, seconds = next(outputs)
            results[i] = {"predictions": [p.as_dict() for p in state.model.top_k(scores, top_k)],
                          "inference_time_ms": _ms(seconds)}
            metrics.observe_image("ok")
    return results


def _infer_all(state, tensors: list, submitted: float) -> list:
    """(scores, seconds since submit) per tensor; raises QueueFull, BatcherStopped, HTTPError 503."""
    futures = state.batcher.submit(tensors, alone=state.leased_once()) if tensors else []
    timeout = state.config.batching.request_timeout
    return [(_wait(future, submitted, timeout), time.monotonic() - submitted) for future in futures]


def _preprocess(state, metrics, upload: Upload):
    started = time.monotonic()
    limits = state.config.limits
    try:
        tensor = preprocess.to_tensor(upload.data, state.model.manifest.input,
                                      max_pixels=limits.max_image_pixels, formats=limits.allowed_formats)
    except ImageError as exc:
        metrics.observe_image("bad_input")
        return exc
    metrics.observe_preprocess(time.monotonic() - started)
    return tensor


def _wait(future, submitted: float, timeout: float):
    try:
        return future.result(timeout=max(0.0, submitted + timeout - time.monotonic()))
    except FutureTimeout:
        raise HTTPError(503, "inference timed out", {"Retry-After": "1"}) from None


def health(state, draining: bool) -> tuple[int, dict]:
    if draining:
        return 503, {"status": "draining", "model_loaded": state is not None}
    if state is None:
        return 503, {"status": "loading", "model_loaded": False}
    return 200, {"status": "ok", "model_loaded": True, "model": state.model.describe()}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
