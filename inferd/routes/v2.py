"""The Open Inference Protocol v2 REST routes (KServe, Triton): health, server and model metadata,
and inference, in front of the same service as /infer. An encoded image (JPEG, PNG, WebP...) may
be sent as a BYTES element under the model's input name; it is decoded and preprocessed by the
model's manifest exactly as /infer does it, with the same limits."""

from __future__ import annotations

import contextlib

import numpy as np

from .. import __version__
from ..http.errors import HTTPError
from ..http.grammar import media_type
from ..http.messages import Call, Request, Response
from ..lease import Lease
from . import oip
from .cached import cache_header

EXTENSIONS = ["binary_tensor_data", "classification"]
JSON_BYTES_COST = 16  # bytes of Python objects per byte of JSON at most (a list of "0,")
# Bytes of memory per byte of answer while it is built: Python floats or strings, the JSON text,
# its encoding and the joined body.
RENDER_COST = 5


def server_metadata(request: Request, call: Call, context) -> Response:
    return Response(200, {"name": "inferd", "version": __version__, "extensions": EXTENSIONS})


def live(request: Request, call: Call, context) -> Response:
    return Response(200, {"live": True})


def ready(request: Request, call: Call, context) -> Response:
    """Ready while the default model serves and the daemon is not draining."""
    ok = context.service.describe_default() is not None and not context.control.draining
    return Response(200 if ok else 503, {"ready": ok})


def model_metadata(request: Request, call: Call, context) -> Response:
    signature = context.service.signature(*_names(request))
    return Response(200, {
        "name": signature.name, "versions": context.service.versions(signature.name), "platform": "onnxruntime_onnx",
        "inputs": [{"name": signature.input_name, "datatype": "FP32", "shape": [-1, *signature.input_shape]}],
        "outputs": [{"name": signature.output_name, "datatype": "FP32", "shape": [-1, len(signature.labels)]}],
    })


def model_ready(request: Request, call: Call, context) -> Response:
    signature = context.service.signature(*_names(request))
    return Response(200, {"name": signature.name, "version": signature.version, "ready": not context.control.draining})


def model_config(request: Request, call: Call, context) -> Response:
    """A subset of Triton's model configuration, for clients that ask for it."""
    signature = context.service.signature(*_names(request))
    batching = request.site.config.batching
    return Response(200, {
        "name": signature.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": batching.max_batch_size,
        "input": [{"name": signature.input_name, "data_type": "TYPE_FP32", "dims": list(signature.input_shape)}],
        "output": [{"name": signature.output_name, "data_type": "TYPE_FP32", "dims": [len(signature.labels)],
                    "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000)},
    })


def repository_index(request: Request, call: Call, context) -> Response:
    """Triton's repository index: every loaded version, READY."""
    return Response(200, [{"name": s.name, "version": s.version, "state": "READY"} for s in context.service.index()])


def _names(request: Request) -> tuple[str, str | None]:
    return request.params["model"], request.params.get("version")


@contextlib.contextmanager
def admit_infer(request: Request, caller, context):
    """Before the body: the model's lease (404 naming what is loaded), the content type (415)."""
    content_type = media_type(request.headers.get("Content-Type", ""))
    # x-www-form-urlencoded: what curl --data-binary sends unless told otherwise.
    if content_type not in ("", "application/json", "application/octet-stream", "application/x-www-form-urlencoded"):
        raise HTTPError(415, "expected application/json, or application/octet-stream with "
                             f"{oip.HEADER_LENGTH} (the binary tensor data extension)")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise HTTPError(415, "compressed request bodies are not supported")
    with context.service.lease(request.site.config, *_names(request), caller) as lease:
        yield lease


def infer(request: Request, call: Call[Lease], context) -> Response:
    lease = call.admitted
    parsed = _parse(request, call.body, lease)
    tensor, signature = parsed.input, lease.signature
    answer = oip.answer_bytes(parsed, tensor.shape[0], len(signature.labels), signature.longest_label)
    limit = request.site.config.limits.max_response_bytes
    if answer > limit:
        raise oip.TooLarge(f"the answer to this request could take {answer} bytes; the limit is {limit} "
                           "([limits] max_response_bytes): ask for fewer items or a smaller classification")
    if tensor.datatype == "BYTES":
        results = lease.score_images(tensor.values)
    else:
        results = lease.score_tensors(list(tensor.values))
    item = "image" if tensor.datatype == "BYTES" else f"input {tensor.name!r} item"
    rows = [_scores(f"{item} {i}", result) for i, result in enumerate(results)]
    scores = np.stack(rows) if rows else np.zeros((0, len(signature.labels)), np.float32)
    with lease.reserve(answer * RENDER_COST):  # the answer's memory while it is built
        tensors = [_output(output, scores, lease) for output in parsed.outputs]
        headers, body = oip.render_response(signature.name, signature.version, parsed.id, tensors)
    return Response(200, body, {**headers, **cache_header(results)})


def _parse(request: Request, body: bytes, lease: Lease) -> oip.InferRequest:
    header, binary = oip.split_body(body, request.headers.get(oip.HEADER_LENGTH))
    with lease.reserve(len(header) * JSON_BYTES_COST):
        document = oip.parse_json(header)
        signature = lease.signature
        return oip.parse_request(document, binary, input_name=signature.input_name,
                                 input_shape=signature.input_shape, output_name=signature.output_name,
                                 classes=len(signature.labels), max_items=request.site.config.limits.max_files_per_batch)


def _scores(item: str, result) -> np.ndarray:
    if isinstance(result, Exception):
        raise HTTPError(getattr(result, "http_status", 400), f"{item}: {result}",
                        dict(getattr(result, "headers", {})))
    return result.scores


def _output(output: oip.Output, scores: np.ndarray, lease: Lease) -> tuple:
    if not output.classification:
        return output, "FP32", scores.shape, scores
    rows = [f"{p.confidence:f}:{p.index}:{p.label}" for row in scores for p in lease.top(row, output.classification)]
    return output, "BYTES", (len(scores), output.classification), rows
