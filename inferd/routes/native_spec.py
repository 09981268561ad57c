"""The OpenAPI description of native.py's routes: /infer, /infer/batch, /health, /models, /metrics.
The examples are real answers of the default model (EfficientNet-Lite0) to scikit-image's cat."""

from __future__ import annotations

from . import native
from .openapi import RETRY_AFTER, Operation, answer, error, json_content, query, ref

NULLABLE_NUMBER = {"type": ["number", "null"]}
SCHEMAS = {
    "Prediction": {
        "type": "object", "required": ["label", "index", "confidence"],
        "properties": {"label": {"type": "string"}, "index": {"type": "integer", "minimum": 0},
                       "confidence": {"type": "number", "description": "The model's score for the label (a probability for softmax models)."}},
    },
    "Classification": {
        "type": "object", "required": ["predictions", "inference_time_ms", "model", "version"],
        "properties": {
            "predictions": {"type": "array", "items": ref("Prediction"), "description": "Best first."},
            "inference_time_ms": {"type": "number", "description": "From handing the image to the batcher to its "
                                  "result: the queue wait and the model's run (decoding not included)."},
            "model": {"type": "string"}, "version": {"type": "string"},
        },
    },
    "BatchEntry": {
        "type": "object", "required": ["filename", "predictions", "inference_time_ms", "error", "status"],
        "properties": {
            "filename": {"type": ["string", "null"]},
            "predictions": {"type": ["array", "null"], "items": ref("Prediction")},
            "inference_time_ms": NULLABLE_NUMBER,
            "error": {"type": ["string", "null"], "description": "Why this image failed, as /infer would word it."},
            "status": {"type": "integer", "description": "The status /infer would answer for this image alone."},
        },
    },
    "BatchClassification": {
        "type": "object",
        "required": ["total_images", "successful", "failed", "total_time_ms", "model", "version", "results"],
        "properties": {
            "total_images": {"type": "integer", "minimum": 1}, "successful": {"type": "integer", "minimum": 0},
            "failed": {"type": "integer", "minimum": 0}, "total_time_ms": {"type": "number"},
            "model": {"type": "string"}, "version": {"type": "string"},
            "results": {"type": "array", "items": ref("BatchEntry"), "description": "In the order of the parts."},
        },
    },
    "ModelDescription": {
        "type": "object", "required": ["name", "version", "sha256", "labels", "input", "layout"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "sha256": {"type": "string", "description": "Of model.onnx."},
            "labels": {"type": "integer", "description": "How many classes the model tells apart."},
            "input": {"type": "array", "items": {"type": "integer"}, "description": "One image's input shape."},
            "layout": {"type": "string", "enum": ["NCHW", "NHWC"]},
            "intra_op_threads": {"type": "integer", "description": "Threads each run of its session may use."},
        },
    },
    "ModelState": {
        "type": "object", "required": ["name", "state", "versions"],
        "properties": {
            "name": {"type": "string"}, "state": {"type": "string", "enum": ["ready", "failed"]},
            "versions": {"type": "array", "items": {
                "type": "object", "required": ["version", "state"],
                "properties": {"version": {"type": "string"}, "state": {"type": "string", "enum": ["ready"]}},
            }},
            "last_error": {"type": "string", "description": "Why the model (or its newest version) failed to load."},
        },
    },
    "Health": {
        "type": "object", "required": ["status", "model_loaded", "models"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "loading", "draining"]},
            "model_loaded": {"type": "boolean"},
            "model": ref("ModelDescription"),
            "models": {"type": "array", "items": ref("ModelState")},
            "cpus": {"type": "object", "description": "The cores the daemon may keep busy: its CPU affinity, capped "
                     "by its cgroup's CPU quota (rounded up), as measured at the last start or reload.",
                     "properties": {"effective": {"type": "integer"}, "affinity": {"type": "integer"},
                                    "quota": {"type": ["number", "null"],
                                              "description": "Cores' worth of CPU time per period; null: none."}}},
        },
    },
    "Models": {
        "type": "object", "required": ["default", "models"],
        "properties": {
            "default": {"type": "string", "description": "The model of requests that name none."},
            "models": {"type": "array", "items": {"allOf": [ref("ModelState"), {"properties": {"versions": {
                "type": "array", "items": {"allOf": [ref("ModelDescription"), {
                    "required": ["loaded_at"], "properties": {"loaded_at": {"type": "number", "description": "Unix time."}},
                }]},
            }}}]}},
        },
    },
    "MetricsJSON": {
        "type": "object",
        "required": ["uptime_seconds", "total_requests", "successful_requests", "failed_requests", "success_rate",
                     "average_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                     "requests_per_second"],
        "description": "Request figures count inference requests (/infer, /infer/batch, v2 infer) only; "
                       "the rest are summed over every loaded model, and given per model under \"models\".",
        "properties": {
            "uptime_seconds": {"type": "number"}, "total_requests": {"type": "integer"},
            "successful_requests": {"type": "integer"}, "failed_requests": {"type": "integer"},
            "success_rate": {**NULLABLE_NUMBER, "description": "null before the first request."},
            "average_latency_ms": NULLABLE_NUMBER, "p50_latency_ms": NULLABLE_NUMBER,
            "p95_latency_ms": NULLABLE_NUMBER, "p99_latency_ms": NULLABLE_NUMBER,
            "requests_per_second": {"type": "number"}, "requests_in_flight": {"type": "integer"},
            "queue_depth": {"type": "integer"},
        },
    },
}

CAT = [{"label": "tiger cat", "index": 282, "confidence": 0.380452},
       {"label": "Egyptian cat", "index": 285, "confidence": 0.355795},
       {"label": "tabby", "index": 281, "confidence": 0.177971}]
MODEL = {"name": "efficientnet-lite0", "sha256": "44248d27f9ce10d1b451164ed7be722662cc28beb33e17c814ea3ec81d966bb2",
         "labels": 1000, "input": [3, 224, 224], "layout": "NCHW", "version": "1"}
STATES = [{"name": "efficientnet-lite0", "state": "ready", "versions": [{"version": "1", "state": "ready"}]}]
NOT_AN_IMAGE = "not an image in an accepted format (BMP, GIF, JPEG, PNG, TIFF, WEBP)"

CHOOSE_MODEL = (
    query("model", "The model to ask (GET /models); the default model when absent.", {"type": "string"}),
    query("version", "One of its versions; the newest when absent.", {"type": "string"}),
    query("top_k", "Predictions to return, 1 to the model's label count; [model] top_k when absent.",
          {"type": "integer", "minimum": 1}),
)
IMAGE = "An encoded image: JPEG, PNG, WebP, GIF, BMP or TIFF ([limits] allowed_formats)."
FILE_PART = {"type": "string", "contentMediaType": "application/octet-stream", "description": IMAGE}
RAW_BODY = {"type": "string", "description": IMAGE}
# Other fields are ignored, but every part's headers are checked: no control characters but HTAB
# (RFC 9110 §5.5), in a field's name as anywhere else (400).
FIELD_NAME = {"pattern": "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$"}


def _upload(field: str, schema: dict, description: str) -> dict:
    """Multipart with the images in `field` parts, or one image as the whole body."""
    return {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [field], "properties": {field: schema},
                                           "propertyNames": FIELD_NAME},
                                "encoding": {field: {"contentType": "image/*"}}},
        "image/*": {"schema": RAW_BODY},
        "application/octet-stream": {"schema": RAW_BODY},
    }}


IMAGE_ERRORS = {
    400: error("Malformed multipart form, no part named as required, an image that cannot be decoded "
               "(cut short, corrupt), or top_k outside 1 to the model's label count."),
    404: error("No model (or version) of that name is loaded."),
    413: error("Over a size limit: the body ([limits] max_body_bytes), multipart parts or part headers, "
               "an image's pixels ([limits] max_image_pixels), files per request ([limits] "
               "max_files_per_batch), an image that could never fit [limits] max_decode_bytes, or (/infer/batch) "
               "an answer that could exceed [limits] max_response_bytes (images x top_k)."),
    415: error("The body is neither multipart/form-data nor an image; or (/infer) the file is not an image "
               "in an accepted format ([limits] allowed_formats)."),
    422: error("The model produced NaN or infinite scores for the image (a broken model): no JSON number "
               "can carry them."),
    503: error("The inference queue is full, the images being decoded hold the decode budget, or no result "
               "came within [batching] request_timeout; retry after Retry-After seconds.",
               RETRY_AFTER),
}

INFER = Operation(
    summary="Classify one image",
    tag="native",
    description="The image is a multipart file part named `file`, or the whole body with an `image/*` "
                "Content-Type. The model, version and top_k are checked before the body is read.",
    parameters=CHOOSE_MODEL,
    request_body=_upload("file", FILE_PART, "One image."),
    responses={200: answer("The top-k predictions.", ref("Classification"),
                           {"predictions": CAT, "inference_time_ms": 9.382, "model": "efficientnet-lite0",
                            "version": "1"}),
               **IMAGE_ERRORS},
)

INFER_BATCH = Operation(
    summary="Classify several images",
    tag="native",
    description="One or more file parts named `files` (or `file`). An image that fails gets its error in its "
                "own entry; the others are classified.",
    parameters=CHOOSE_MODEL,
    request_body=_upload("files", {"type": "array", "minItems": 1, "items": FILE_PART},
                         "One or more images ([limits] max_files_per_batch at most)."),
    responses={200: answer("An entry per image, in order.", ref("BatchClassification"), {
        "total_images": 2, "successful": 1, "failed": 1, "total_time_ms": 32.445, "model": "efficientnet-lite0",
        "version": "1", "results": [
            {"filename": "cat.jpg", "predictions": CAT[:2], "inference_time_ms": 7.901, "error": None, "status": 200},
            {"filename": "notes.txt", "predictions": None, "inference_time_ms": None, "error": NOT_AN_IMAGE,
             "status": 415}]}),
        **IMAGE_ERRORS},
)

HEALTH = Operation(
    summary="Is the default model serving?",
    tag="native",
    responses={
        200: answer("The default model serves.", ref("Health"),
                    {"status": "ok", "model_loaded": True, "model": MODEL, "models": STATES}),
        503: answer('No model is loaded yet ("loading"), or the daemon is draining after SIGTERM ("draining").',
                    ref("Health"), {"status": "draining", "model_loaded": True, "models": STATES}),
    },
)

MODELS = Operation(
    summary="Every model and version",
    tag="native",
    description="Loaded versions with their input, label count and sha256; models that failed to load with "
                "the reason.",
    responses={200: answer("The model repository.", ref("Models"), {"default": "efficientnet-lite0", "models": [
        {"name": "efficientnet-lite0", "state": "ready", "versions": [
            {"version": "1", "state": "ready", **MODEL, "loaded_at": 1796227962.4505372}]}]})},
)

METRICS = Operation(
    summary="Metrics: JSON for people, Prometheus or OpenMetrics text for scrapers",
    tag="native",
    description="?format= wins; otherwise the Accept header chooses (RFC 9110 §12.5.1): "
                "`application/openmetrics-text` or `text/plain` ask for the scrape formats; JSON by default.",
    parameters=(
        query("format", "json, prometheus or openmetrics.", {"type": "string", "enum": ["json", "prometheus", "openmetrics"]}),
    ),
    responses={
        200: {"description": "The metrics in the chosen format.", "content": {
            **json_content(ref("MetricsJSON"), {
                "uptime_seconds": 0.866, "total_requests": 5, "successful_requests": 2, "failed_requests": 3,
                "success_rate": 0.4, "average_latency_ms": 10.93, "p50_latency_ms": 0.47, "p95_latency_ms": 32.9,
                "p99_latency_ms": 32.9, "requests_per_second": 5.77, "requests_in_flight": 1, "queue_depth": 0}),
            "text/plain": {"schema": {"type": "string"}, "example": "inferd_http_requests_in_flight 1\n"},
            "application/openmetrics-text": {"schema": {"type": "string"}},
        }},
        400: error("An unknown ?format= value."),
    },
)

OPERATIONS = {native.infer: INFER, native.infer_batch: INFER_BATCH, native.health: HEALTH,
              native.models: MODELS, native.metrics: METRICS}
