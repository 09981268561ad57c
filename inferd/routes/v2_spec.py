"""The OpenAPI description of v2.py: the Open Inference Protocol v2 REST routes (KServe, Triton).
The JSON schemas follow the protocol's; the binary tensor data extension is described in text,
since its body is a JSON header followed by raw tensor bytes."""

from __future__ import annotations

from . import oip, v2
from .openapi import RETRY_AFTER, Operation, answer, error, json_content, ref

STRINGS = {"type": "array", "items": {"type": "string"}}
SHAPE = {"type": "array", "items": {"type": "integer"}}
TENSOR_METADATA = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": SHAPE}}
ELEMENT = {"anyOf": [{"type": "number"}, {"type": "string"},
                     {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}}]}

SCHEMAS = {
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "extensions": STRINGS}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"}, "versions": STRINGS, "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": TENSOR_METADATA},
                       "outputs": {"type": "array", "items": TENSOR_METADATA}},
    },
    "ModelReady": {"type": "object", "required": ["name", "version", "ready"],
                   "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                  "ready": {"type": "boolean"}}},
    "ModelConfig": {
        "type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"],
        "description": "A subset of Triton's model configuration.",
        "properties": {"name": {"type": "string"}, "platform": {"type": "string"}, "backend": {"type": "string"},
                       "max_batch_size": {"type": "integer"}, "input": {"type": "array", "items": {"type": "object"}},
                       "output": {"type": "array", "items": {"type": "object"}},
                       "dynamic_batching": {"type": "object"}},
    },
    "RepositoryIndex": {"type": "array", "items": {
        "type": "object", "required": ["name", "version", "state"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "state": {"type": "string", "enum": ["READY"]}}}},
    "InferenceRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"], "description": "Echoed in the response (null: none)."},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string", "description": "The model's input name (GET /v2/models/{model})."},
                    "datatype": {"type": "string", "enum": list(oip.DATATYPES),
                                 "description": "FP32: a preprocessed tensor [N, *input]. BYTES: N encoded images, "
                                                "shape [N] or [N, 1], preprocessed by the model's manifest."},
                    "shape": SHAPE,
                    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                    "data": {"type": "array", "items": {"anyOf": [ELEMENT, {"type": "array"}]},
                             "description": 'Flat or nested as the shape; a BYTES element is a string or {"b64": "..."}.'},
                },
            }},
            "outputs": {"type": ["array", "null"], "minItems": 1, "description": "Absent or null: every output.",
                        "items": {
                "type": "object", "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {
                        "classification": {"type": "integer", "minimum": 0,
                                           "description": 'k > 0: the top k as BYTES "score:index:label".'},
                        "binary_data": {"type": "boolean"}}},
                },
            }},
        },
    },
    "InferenceResponse": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"}, "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                               "shape": SHAPE, "data": {"type": "array"},
                               "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}},
            }},
        },
    },
}

MODEL_PARAMETERS = {"model": ("A loaded model's name (GET /models); percent-encoded.", "efficientnet-lite0"),
                    "version": ("One of its versions; the newest when the path names none.", "1")}
NO_MODEL = {404: error("No model (or version) of that name is loaded; the message lists those that are.")}

BINARY_EXTENSION = (
    "Triton's binary tensor data extension: send `Content-Type: application/octet-stream` and "
    f"`{oip.HEADER_LENGTH}: <n>`; the first n bytes are the JSON request, the rest the tensors' bytes "
    "in input order, each input naming its size in `parameters.binary_data_size` (FP32 little-endian; "
    "BYTES elements as a 4-byte little-endian length and the bytes). Outputs asked with "
    "`parameters.binary_data` (or `binary_data_output` for all) come back the same way, the JSON "
    f"header's length in the response's {oip.HEADER_LENGTH} header.")
BINARY_BODY = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}

# scikit-image's cat as a 72x48 JPEG (quality 30), and the default model's real answer to it.
SMALL_CAT_JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABsSFBcUERsXFhceHBsgKEIrKCUlKFE6PTBCYFVlZF9VXVtqeJmBanGQc1tdhbWGkJ6j"
    "q62rZ4C8ybqmx5moq6T/2wBDARweHigjKE4rK06kbl1upKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSkpKSk"
    "pKSkpKSkpKT/wAARCAAwAEgDASIAAhEBAxEB/8QAGQAAAwEBAQAAAAAAAAAAAAAAAAMEAQIF/8QAJxAAAgIBAwMEAgMAAAAAAAAA"
    "AQIAAxESITEEQVETImFxFIE0YvD/xAAXAQEBAQEAAAAAAAAAAAAAAAACAQAD/8QAGREBAQEBAQEAAAAAAAAAAAAAAAERITES/9oA"
    "DAMBAAIRAxEAPwDrqsVplfMVUCg1MMseJX1xXSoI2zImuUEKQf1OV9dZ46dySf8ACKABbAG/mNJrWvVZkL9bmKFtItUaip/sMZkV"
    "rDLAnjSQfAi1UoxOrAXY78yla8+tnvsJi0knJ7MP3NrY6pOVJPInFzEphe/eNUEAjw2Jw9bncY0iKMhPTjxCVgA8QlENZZ1C6yQv"
    "j4jE6da6yd2J5Ji668LpHHBmo1oTQrA47GClAzFkCHlSCue8juQDqGssfbGykbyoBwPcM/QnYLFSucD5k8azWdETZ0SknJXbeO1Y"
    "r35klD+kzJn2sZTd/HLKd+Jt6uJKbr7rGIYphwAJ6Pp2OhAKgyRQqHKA6uxJziBawbAn7ig1p6W6rJ06vqEZV+S65D7fMI0L6V8u"
    "VPeMtqOcrjPmK6cA2Bs7S/AIgnSTUtq9pGDMu24I/e0Y6AnPeLcE7gyWLKR1VT+mLUXIHPxOUvN1YqVc53jjZZjGIumo014GBnkm"
    "b5bTawVAbG/zKVsQodSgNiKrqZwANgO83qUSusEk88xTgU6g5QYhCtxoGlTjzCJH/9k="
)
SMALL_CAT_TOP3 = ["0.316569:281:tabby", "0.207830:282:tiger cat", "0.148923:285:Egyptian cat"]

INFER = Operation(
    summary="Run inference (Open Inference Protocol v2)",
    tag="oip",
    description="One input under the model's input name: FP32 (preprocessed) or BYTES (encoded images, "
                "decoded and preprocessed as /infer does). The classification extension returns the top k "
                "as \"score:index:label\".\n\n" + BINARY_EXTENSION,
    path_parameters=MODEL_PARAMETERS,
    request_body={"required": True, "content": {
        **json_content(ref("InferenceRequest"), {
            "id": "cat-1", "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                       "data": [{"b64": SMALL_CAT_JPEG}]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}),
        "application/octet-stream": BINARY_BODY}},
    responses={
        200: {"description": "The outputs asked for (all of them when none is named).",
              "headers": {oip.HEADER_LENGTH: {"schema": {"type": "integer"},
                                              "description": "With binary outputs: the JSON header's length."}},
              "content": {**json_content(ref("InferenceResponse"), {
                  "model_name": "efficientnet-lite0", "model_version": "1", "id": "cat-1",
                  "outputs": [{"name": "logits", "datatype": "BYTES", "shape": [1, 3], "data": SMALL_CAT_TOP3}]}),
                  "application/octet-stream": BINARY_BODY}},
        400: error("The request does not describe tensors this model takes (names, datatype, shape, data), "
                   "or an image cannot be decoded."),
        **NO_MODEL,
        413: error("More items than [limits] max_files_per_batch, an image over a size limit, or an answer "
                   "that could exceed [limits] max_response_bytes (items x outputs x classification)."),
        415: error("A Content-Type other than application/json or application/octet-stream, a compressed "
                   "body, or an image in a format that is not accepted."),
        422: error("The model produced NaN or infinite scores for an item (an FP32 tensor far outside the "
                   "range it takes): no JSON number can carry them."),
        503: error("The inference queue is full, the decode budget is taken, or no result came in time.",
                   RETRY_AFTER),
    },
)

SERVER_METADATA = Operation(
    summary="Server metadata", tag="oip",
    responses={200: answer("Name, version and extensions.", ref("ServerMetadata"),
                           {"name": "inferd", "version": "0.1.0", "extensions": list(v2.EXTENSIONS)})})
LIVE = Operation(summary="Server liveness", tag="oip",
                 responses={200: answer("The server answers.", ref("Live"), {"live": True})})
READY = Operation(
    summary="Server readiness", tag="oip",
    responses={200: answer("The default model serves.", ref("Ready"), {"ready": True}),
               503: answer("No model is loaded yet, or the daemon is draining.", ref("Ready"), {"ready": False})})
MODEL_METADATA = Operation(
    summary="Model metadata", tag="oip", path_parameters=MODEL_PARAMETERS,
    responses={200: answer("Inputs, outputs and versions.", ref("ModelMetadata"), {
        "name": "efficientnet-lite0", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]}), **NO_MODEL})
MODEL_READY = Operation(
    summary="Model readiness", tag="oip", path_parameters=MODEL_PARAMETERS,
    responses={200: answer("Whether it takes requests (false while draining).", ref("ModelReady"),
                           {"name": "efficientnet-lite0", "version": "1", "ready": True}), **NO_MODEL})
MODEL_CONFIG = Operation(
    summary="Model configuration (Triton)", tag="oip", path_parameters=MODEL_PARAMETERS,
    responses={200: answer("Triton's model configuration, in part.", ref("ModelConfig"), {
        "name": "efficientnet-lite0", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 8,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [1000], "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": 0}}), **NO_MODEL})
REPOSITORY_INDEX = Operation(
    summary="Repository index (Triton)", tag="oip",
    responses={200: answer("Every loaded version.", ref("RepositoryIndex"),
                           [{"name": "efficientnet-lite0", "version": "1", "state": "READY"}])})

OPERATIONS = {v2.server_metadata: SERVER_METADATA, v2.live: LIVE, v2.ready: READY, v2.model_metadata: MODEL_METADATA,
              v2.model_ready: MODEL_READY, v2.model_config: MODEL_CONFIG, v2.repository_index: REPOSITORY_INDEX,
              v2.infer: INFER}
