"""The Open Inference Protocol v2 over REST (KServe's predict protocol v2, Triton's HTTP API),
sans-IO: an inference request's bytes -> a checked `InferRequest`; outputs -> a response's bytes.

Covers the JSON body, Triton's binary tensor data extension (the JSON header's length in
Inference-Header-Content-Length, tensors after it; BYTES elements as a 4-byte little-endian
length and the bytes) and its classification extension (a BYTES [N, k] tensor of
"score:index:label"). Every malformed or oversized input raises TensorError (400) or a
413 subclass; nothing here touches a socket or a model.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.float32, "BYTES": None}
MAX_LENGTH_DIGITS = 20  # more digits than any body can have; int() of 4,301 raises (CPython's digit limit)
NUMBERS = frozenset({int, float})  # JSON numbers as json.loads gives them (bool is not among them)


class TensorError(ValueError):
    """The request does not describe tensors inferd can take."""

    http_status = 400


class TooLarge(TensorError):
    http_status = 413


@dataclass(frozen=True)
class Input:
    name: str
    datatype: str  # "FP32" (a preprocessed tensor) or "BYTES" (encoded images)
    shape: tuple[int, ...]
    values: object  # np.ndarray for FP32, list[bytes] for BYTES


@dataclass(frozen=True)
class Output:
    name: str
    classification: int = 0  # k > 0: the top-k as "score:index:label" instead of the scores
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    input: Input
    outputs: tuple[Output, ...]
    parameters: dict = field(default_factory=dict)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a body; raises TensorError for a length that is not
    a number within the body."""
    if header_length is None:
        return body, b""
    if (not (header_length.isascii() and header_length.isdigit()) or len(header_length) > MAX_LENGTH_DIGITS
            or int(header_length) > len(body)):
        raise TensorError(f"{HEADER_LENGTH} must be the JSON header's length, at most the body's {len(body)} bytes")
    length = int(header_length)
    return body[:length], body[length:]


def parse_json(header: bytes) -> dict:
    """The JSON object of a request; TensorError for anything else, nesting included."""
    try:
        document = json.loads(header)
    except RecursionError:
        raise TensorError("the JSON header is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensorError(f"the body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise TensorError("the body must be a JSON object")
    return document


def parse_request(document: dict, binary: bytes, *, input_name: str, input_shape: tuple[int, ...],
                  output_name: str, classes: int, max_items: int) -> InferRequest:
    """Check an inference request against one model: one input named `input_name`, FP32 of shape
    [N, *input_shape] or BYTES of shape [N] (or [N, 1]), at most `max_items` items; outputs named
    `output_name`. Raises TensorError (400) or TooLarge (413)."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError('"id" must be a string')
    parameters = _object(document.get("parameters", {}), '"parameters"')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise TensorError(f'"inputs" must list exactly one tensor, named {input_name!r}')
    tensor = _input(_object(inputs[0], "an input"), binary, input_name, input_shape, max_items)
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise TensorError("binary_data_output must be true or false")
    outputs = _outputs(document.get("outputs"), output_name, classes, binary_default)
    return InferRequest(request_id, tensor, outputs, parameters)


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise TensorError(f"{what} must be a JSON object")
    return value


def _input(spec: dict, binary: bytes, name: str, model_shape: tuple[int, ...], max_items: int) -> Input:
    if spec.get("name") != name:
        raise TensorError(f"the input must be named {name!r}, got {spec.get('name')!r}")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise TensorError(f"input datatype must be FP32 (a preprocessed tensor) or BYTES (encoded images), "
                          f"got {datatype!r}")
    shape = _shape(spec.get("shape"))
    items = shape[0] if shape else 0
    if items > max_items:
        raise TooLarge(f"{items} items in one request; the limit is {max_items}")
    expected = (items,) + tuple(model_shape) if datatype == "FP32" else None
    if datatype == "FP32" and shape != expected:
        raise TensorError(f"FP32 input shape must be [N, {', '.join(map(str, model_shape))}], got {list(shape)}")
    if datatype == "BYTES" and shape not in ((items,), (items, 1)):
        raise TensorError(f"BYTES input shape must be [N] or [N, 1] (one encoded image each), got {list(shape)}")
    size = _binary_size(_object(spec.get("parameters", {}), "input parameters"))
    data = binary[:size] if size is not None else spec.get("data")
    if size is not None and len(data) != size:
        raise TensorError(f"binary_data_size {size} is past the end of the body ({len(binary)} bytes of tensor data)")
    if datatype == "FP32":
        return Input(name, datatype, shape, _fp32(data, shape, size is not None))
    return Input(name, datatype, shape, _bytes_elements(data, items, size is not None))


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(type(d) is int for d in value):
        raise TensorError('"shape" must be a non-empty list of integers')
    if any(d < 0 or d > 2**31 for d in value):
        raise TensorError(f'"shape" dimensions must be between 0 and 2^31, got {value}')
    return tuple(value)


def _binary_size(parameters: dict) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise TensorError("binary_data_size must be a non-negative integer")
    return size


def _fp32(data, shape: tuple[int, ...], binary: bool) -> np.ndarray:
    count = math.prod(shape)
    if binary:
        if len(data) != 4 * count:
            raise TensorError(f"FP32 tensor of shape {list(shape)} needs {4 * count} bytes, got {len(data)}")
        return _finite(np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False).reshape(shape))
    if not isinstance(data, list):
        raise TensorError('an input needs "data" (a JSON array) or binary_data_size')
    if not _all_numbers(data):  # np.asarray would take "1e3" and true as numbers
        raise TensorError("FP32 data must be numbers (flat or nested as the shape), not strings or booleans")
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf, refused below
            values = np.asarray(data, dtype=np.float32)
    except OverflowError:  # an integer beyond any float (a 401-digit one)
        raise TensorError("FP32 data must be finite numbers within FP32's range") from None
    except (ValueError, TypeError):
        raise TensorError("FP32 data must be numbers (flat or nested as the shape)") from None
    if values.size != count:
        raise TensorError(f"FP32 data has {values.size} elements; shape {list(shape)} needs {count}")
    return _finite(values.reshape(shape))


def _all_numbers(data: list) -> bool:
    """True when every leaf of these nested lists is a JSON number (int or float, never bool)."""
    pending = [data]
    while pending:
        items = pending.pop()
        kinds = set(map(type, items))
        if list in kinds:
            if kinds != {list}:
                return False  # numbers beside lists: not the shape of any tensor
            pending.extend(items)
        elif not kinds <= NUMBERS:
            return False
    return True


def _finite(values: np.ndarray) -> np.ndarray:
    """The same refusal for JSON and binary tensors: NaN and infinities are not inputs."""
    if not np.isfinite(values).all():
        raise TensorError("FP32 data must be finite numbers (no NaN or infinity)")
    return values


def _bytes_elements(data, count: int, binary: bool) -> list[bytes]:
    if binary:
        return _unpack_bytes(data, count)
    if not isinstance(data, list):
        raise TensorError('an input needs "data" (a JSON array) or binary_data_size')
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise TensorError(f"BYTES data has {len(flat)} elements; the shape says {count}")
    return [_json_bytes(item) for item in flat]


def _unpack_bytes(data: bytes, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then the bytes."""
    elements, position = [], 0
    view = memoryview(data)
    while position < len(data):
        if position + 4 > len(data):
            raise TensorError("a BYTES element's length is cut off")
        (length,) = struct.unpack_from("<I", data, position)
        position += 4
        if position + length > len(data):
            raise TensorError(f"BYTES element {len(elements)} claims {length} bytes past the end of its tensor")
        elements.append(bytes(view[position:position + length]))
        position += length
        if len(elements) > count:
            break
    if len(elements) != count:
        raise TensorError(f"BYTES data has {len(elements)} elements; the shape says {count}")
    return elements


def _json_bytes(item) -> bytes:
    """A BYTES element in JSON: a string (its UTF-8 bytes) or {"b64": "<base64>"} for binary."""
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:  # "\udc80": JSON can escape a lone surrogate, UTF-8 cannot hold it
            raise TensorError("a BYTES element in JSON must be valid Unicode (it holds a lone surrogate); "
                              'send binary data as {"b64": "<base64>"}') from None
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise TensorError("a BYTES element's b64 is not base64") from None
    raise TensorError('BYTES elements in JSON must be strings or {"b64": "<base64>"} objects')


def _outputs(value, output_name: str, classes: int, binary_default: bool) -> tuple[Output, ...]:
    if value is None:
        return (Output(output_name, 0, binary_default),)
    if not isinstance(value, list) or not value:
        raise TensorError('"outputs" must be a non-empty list')
    outputs = []
    for item in value:
        spec = _object(item, "an output")
        if spec.get("name") != output_name:
            raise TensorError(f"the model has one output, {output_name!r}; got {spec.get('name')!r}")
        if outputs:  # each repeat would render the whole answer again (a 9 KB request, a 70 MB answer)
            raise TensorError(f"output {output_name!r} is requested more than once; ask for each output once")
        parameters = _object(spec.get("parameters", {}), "output parameters")
        k = parameters.get("classification", 0)
        if type(k) is not int or not 0 <= k <= classes:
            raise TensorError(f"classification must be an integer between 1 and {classes}")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise TensorError("binary_data must be true or false")
        outputs.append(Output(output_name, k, binary))
    return tuple(outputs)


# Upper bounds of one value in a JSON answer: a float32 as Python's repr writes it with its comma
# ("-1.2345678901234567e-05,"), and a classification's score as "%f" writes a logit (3.4e38 has 39
# digits before the point) with the separators and quotes of its "score:index:label" string.
FLOAT_JSON_BYTES = 25
SCORE_TEXT_BYTES = 48
ANSWER_OVERHEAD = 512  # the JSON around the tensors: names, datatype, shape, model name and version


def answer_bytes(request: InferRequest, items: int, classes: int, longest_label: int) -> int:
    """The most bytes the answer to `request` can take, before any of it is built: `items` rows of
    `classes` scores; `longest_label` is the longest label's length as JSON writes it (quoted, escaped)."""
    total = ANSWER_OVERHEAD + (6 * len(request.id) + 2 if request.id is not None else 0)
    for output in request.outputs:
        if not output.classification:
            total += items * classes * (4 if output.binary else FLOAT_JSON_BYTES)
        else:
            entry = SCORE_TEXT_BYTES + len(str(classes)) + longest_label + (4 if output.binary else 3)
            total += items * output.classification * entry
    return total


def render_response(model: str, version: str, request_id: str | None, tensors: list[tuple[Output, str, list, object]]
                    ) -> tuple[dict, bytes]:
    """(headers, body) of a response; tensors: (requested output, datatype, shape, values) with
    values an np.ndarray (FP32) or a list of str (BYTES). Binary outputs follow the JSON."""
    outputs, blobs = [], []
    for output, datatype, shape, values in tensors:
        entry = {"name": output.name, "datatype": datatype, "shape": list(shape)}
        if output.binary:
            blob = _pack(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values.reshape(-1).tolist() if datatype == "FP32" else list(values)
        outputs.append(entry)
    document = {"model_name": model, "model_version": version, "outputs": outputs}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return {"Content-Type": "application/json"}, header
    return ({"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
            header + b"".join(blobs))


def _pack(datatype: str, values) -> bytes:
    if datatype == "FP32":
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    encoded = [value.encode("utf-8") for value in values]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
