"""The Open Inference Protocol v2 REST routes (KServe, Triton): health, server and model metadata,
and inference, in front of the same service as /infer. An encoded image (JPEG, PNG, WebP...) may
be sent as a BYTES element under the model's input name; it is decoded and preprocessed by the
model's manifest exactly as /infer does it, with the same limits."""

from __future__ import annotations

import contextlib

import numpy as np

from .. import __version__
from ..http.errors import HTTPError
from ..http.messages import Request, Response
from ..repository import LoadedModel
from . import oip
from .cached import cache_header

EXTENSIONS = ["binary_tensor_data", "classification"]
JSON_BYTES_COST = 16  # bytes of Python objects per byte of JSON at most (a list of "0,")
# Bytes of memory per byte of answer while it is built: Python floats or strings, the JSON text,
# its encoding and the joined body.
RENDER_COST = 5


def server_metadata(request: Request, context) -> Response:
    return Response(200, {"name": "inferd", "version": __version__, "extensions": EXTENSIONS})


def live(request: Request, context) -> Response:
    return Response(200, {"live": True})


def ready(request: Request, context) -> Response:
    """Ready while the default model serves and the daemon is not draining."""
    ok = context.service.describe_default() is not None and not context.control.draining
    return Response(200 if ok else 503, {"ready": ok})


def model_metadata(request: Request, context) -> Response:
    loaded = _find(request, context)
    model = loaded.model
    versions = [m.version for m in context.service.repository.loaded() if m.name == loaded.name]
    return Response(200, {
        "name": loaded.name, "versions": versions, "platform": "onnxruntime_onnx",
        "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape()]}],
        "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": [-1, len(model.labels)]}],
    })


def model_ready(request: Request, context) -> Response:
    loaded = _find(request, context)
    return Response(200, {"name": loaded.name, "version": loaded.version, "ready": not context.control.draining})


def model_config(request: Request, context) -> Response:
    """A subset of Triton's model configuration, for clients that ask for it."""
    loaded = _find(request, context)
    model, batching = loaded.model, request.settings.batching
    return Response(200, {
        "name": loaded.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": batching.max_batch_size,
        "input": [{"name": model.input_name, "data_type": "TYPE_FP32", "dims": list(model.input_shape())}],
        "output": [{"name": model.output_name, "data_type": "TYPE_FP32", "dims": [len(model.labels)],
                    "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000)},
    })


def repository_index(request: Request, context) -> Response:
    """Triton's repository index: every loaded version, READY."""
    return Response(200, [{"name": m.name, "version": m.version, "state": "READY"}
                          for m in context.service.repository.loaded()])


def _find(request: Request, context) -> LoadedModel:
    name, version = _names(request)
    return context.service.repository.find(name, version)


def _names(request: Request) -> tuple[str, str | None]:
    return request.params["model"], request.params.get("version")


@contextlib.contextmanager
def admit_infer(request: Request, context):
    """Before the body: the model's lease (404 naming what is loaded), the content type (415)."""
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    # x-www-form-urlencoded: what curl --data-binary sends unless told otherwise.
    if content_type not in ("", "application/json", "application/octet-stream", "application/x-www-form-urlencoded"):
        raise HTTPError(415, "expected application/json, or application/octet-stream with "
                             f"{oip.HEADER_LENGTH} (the binary tensor data extension)")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise HTTPError(415, "compressed request bodies are not supported")
    with context.service.lease(*_names(request), request.caller) as lease:
        yield lease


def infer(request: Request, context) -> Response:
    lease = request.admitted
    parsed = _parse(request, context, lease)
    tensor = parsed.input
    model = lease.loaded.model
    answer = oip.answer_bytes(parsed, tensor.shape[0], len(model.labels), model.longest_label)
    limit = request.settings.limits.max_response_bytes
    if answer > limit:
        raise oip.TooLarge(f"the answer to this request could take {answer} bytes; the limit is {limit} "
                           "([limits] max_response_bytes): ask for fewer items or a smaller classification")
    if tensor.datatype == "BYTES":
        results = lease.score_images(tensor.values)
    else:
        results = lease.score_tensors(list(tensor.values))
    item = "image" if tensor.datatype == "BYTES" else f"input {tensor.name!r} item"
    rows = [_scores(f"{item} {i}", result) for i, result in enumerate(results)]
    scores = np.stack(rows) if rows else np.zeros((0, len(lease.labels)), np.float32)
    with context.service.decode_budget.reserve(answer * RENDER_COST):  # the answer's memory while it is built
        tensors = [_output(output, scores, lease) for output in parsed.outputs]
        headers, body = oip.render_response(lease.loaded.name, lease.loaded.version, parsed.id, tensors)
    return Response(200, body, {**headers, **cache_header(results)})


def _parse(request: Request, context, lease) -> oip.InferRequest:
    header, binary = oip.split_body(request.body, request.headers.get(oip.HEADER_LENGTH))
    with context.service.decode_budget.reserve(len(header) * JSON_BYTES_COST):
        document = oip.parse_json(header)
        model = lease.loaded.model
        return oip.parse_request(document, binary, input_name=model.input_name, input_shape=model.input_shape(),
                                 output_name=model.output_name, classes=len(model.labels),
                                 max_items=request.settings.limits.max_files_per_batch)


def _scores(item: str, result) -> np.ndarray:
    if isinstance(result, Exception):
        raise HTTPError(getattr(result, "http_status", 400), f"{item}: {result}",
                        dict(getattr(result, "headers", {})))
    return result.scores


def _output(output: oip.Output, scores: np.ndarray, lease) -> tuple:
    if not output.classification:
        return output, "FP32", scores.shape, scores
    top = lease.loaded.model.top_k
    rows = [f"{p.confidence:f}:{p.index}:{p.label}" for row in scores for p in top(row, output.classification)]
    return output, "BYTES", (len(scores), output.classification), rows
