"""inferd's own API: /infer, /infer/batch, /health, /models, /metrics. Each route maps HTTP to one
call of the service (or the metrics) and back; no I/O of its own."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from ..http.errors import HTTPError
from ..http.messages import Call, Request, Response
from ..lease import Classification, Lease
from .cached import cache_header
from .uploads import UploadForm, parse_top_k, upload_form, uploads


@dataclass(frozen=True)
class Admitted:
    """What an inference request settled before its body was read."""

    lease: Lease
    top_k: int
    form: UploadForm


@contextlib.contextmanager
def admit_upload(request: Request, caller, context):
    """Before the body: the model lease (?model, ?version; held until the answer; 404 for one not
    loaded) for the guard's caller, ?top_k (400), the content type (415)."""
    with context.service.lease(request.site.config, _query(request, "model"), _query(request, "version"),
                               caller) as lease:
        top_k = parse_top_k(request.query, request.site.config.model.top_k, len(lease.signature.labels))
        yield Admitted(lease, top_k, upload_form(request.headers.get("Content-Type", "")))


def infer(request: Request, call: Call[Admitted], context) -> Response:
    admitted = call.admitted
    images = uploads(admitted.form, call.body, request.site.config.limits, ("file",))
    if len(images) != 1:
        raise HTTPError(400, f"expected one file part named 'file', got {len(images)}")
    (result,) = admitted.lease.classify([images[0].data], admitted.top_k)
    if isinstance(result, Exception):
        raise result
    return Response(200, {**_prediction(result), **_served_by(admitted.lease)}, cache_header([result]))


def infer_batch(request: Request, call: Call[Admitted], context) -> Response:
    """Every image gets an entry; a bad image fails only its own entry."""
    admitted = call.admitted
    started = time.monotonic()
    limits = request.site.config.limits
    images = uploads(admitted.form, call.body, limits, ("files", "file"))
    if not images:
        raise HTTPError(400, "expected one or more file parts named 'files'")
    _check_answer_size(images, admitted, limits.max_response_bytes)
    results = admitted.lease.classify([image.data for image in images], admitted.top_k)
    entries = [_batch_entry(image.filename, result) for image, result in zip(images, results)]
    failed = sum(1 for entry in entries if entry["error"] is not None)
    return Response(200, {
        "total_images": len(entries), "successful": len(entries) - failed, "failed": failed,
        "total_time_ms": round((time.monotonic() - started) * 1000.0, 3),
        **_served_by(admitted.lease), "results": entries,
    }, cache_header(results))


# Upper bounds of the JSON of one prediction beside its label ({"label":,"index":N,"confidence":F})
# and of one batch entry beside its predictions and filename.
PREDICTION_JSON_BYTES = 64
ENTRY_JSON_BYTES = 160


def _check_answer_size(images: list, admitted: Admitted, limit: int) -> None:
    """413 before any image is decoded when the answer could exceed [limits] max_response_bytes."""
    per_image = ENTRY_JSON_BYTES + admitted.top_k * (PREDICTION_JSON_BYTES + admitted.lease.signature.longest_label)
    answer = sum(per_image + 6 * len(image.filename or "") for image in images)
    if answer > limit:
        raise HTTPError(413, f"the answer to this request could take {answer} bytes; the limit is {limit} "
                             "([limits] max_response_bytes): send fewer images or ask for a smaller top_k")


def _served_by(lease: Lease) -> dict:
    return {"model": lease.signature.name, "version": lease.signature.version}


def _query(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[-1] if values else None


def _prediction(result: Classification) -> dict:
    return {"predictions": [p.as_dict() for p in result.predictions], "inference_time_ms": result.inference_time_ms}


def _batch_entry(filename: str | None, result) -> dict:
    if isinstance(result, Exception):
        return {"filename": filename, "predictions": None, "inference_time_ms": None,
                "error": str(result), "status": getattr(result, "http_status", 500)}
    return {"filename": filename, **_prediction(result), "error": None, "status": 200}


def health(request: Request, call: Call, context) -> Response:
    """200 while the default model serves; every model and version with its state."""
    service = context.service
    model = service.describe_default()
    models = service.states()
    if context.control.draining:
        return Response(503, {"status": "draining", "model_loaded": model is not None, "models": models})
    if model is None:
        return Response(503, {"status": "loading", "model_loaded": False, "models": models})
    return Response(200, {"status": "ok", "model_loaded": True, "model": model, "models": models,
                          "cpus": service.cores.describe()})


def models(request: Request, call: Call, context) -> Response:
    """Every model: its versions with inputs, labels count and sha256; the default model."""
    return Response(200, {"default": context.service.default_model, "models": context.service.states(detail=True)})


def metrics(request: Request, call: Call, context) -> Response:
    fmt = request.query.get("format", [None])[-1]
    try:
        content_type, body = context.metrics.render_for(request.headers.get("Accept"), fmt)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    return Response(200, body, {"Content-Type": content_type})
