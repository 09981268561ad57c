"""Every way an Open Inference Protocol request can be refused (inferd/routes/oip.py), one case
each, without sockets: the error's status and message. `make coverage` showed most of these
branches unreached by the fuzz test of tests/protocols/test_v2.py, which draws mostly well-formed shapes
(issue 14)."""

from __future__ import annotations

import struct

import pytest

from inferd.routes import oip

MODEL = {"input_name": "input", "input_shape": (1, 2, 2), "output_name": "logits", "classes": 10, "max_items": 4}


def fp32(**fields) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.0] * 4, **fields}]}


def as_bytes(**fields) -> dict:
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"], **fields}]}


def packed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


CASES = [
    ("id not a string", {**fp32(), "id": 7}, b"", 400, '"id" must be a string'),
    ("parameters not an object", {**fp32(), "parameters": []}, b"", 400, '"parameters" must be a JSON object'),
    ("binary_data_output not a boolean", {**fp32(), "parameters": {"binary_data_output": "yes"}}, b"", 400,
     "binary_data_output must be true or false"),
    ("two inputs", {"inputs": fp32()["inputs"] * 2}, b"", 400, '"inputs" must list exactly one tensor'),
    ("input not an object", {"inputs": [3]}, b"", 400, "an input must be a JSON object"),
    ("wrong input name", fp32(name="x"), b"", 400, "the input must be named 'input', got 'x'"),
    ("unknown datatype", fp32(datatype="INT8"), b"", 400, "input datatype must be FP32"),
    # Was a 500: a list is not hashable, and `in DATATYPES` raised TypeError (found by
    # tests/protocols/test_v2.py's fuzz during `make coverage`).
    ("datatype a list", fp32(datatype=["FP32"]), b"", 400, "input datatype must be FP32"),
    ("datatype an object", fp32(datatype={"FP32": 1}), b"", 400, "input datatype must be FP32"),
    ("shape not a list", fp32(shape="1,1,2,2"), b"", 400, '"shape" must be a non-empty list of integers'),
    ("negative dimension", fp32(shape=[1, -1, 2, 2]), b"", 400, '"shape" dimensions must be between 0 and 2^31'),
    ("too many items", fp32(shape=[5, 1, 2, 2]), b"", 413, "5 items in one request; the limit is 4"),
    ("FP32 of the wrong shape", fp32(shape=[1, 2, 2]), b"", 400, "FP32 input shape must be [N, 1, 2, 2]"),
    ("BYTES of the wrong shape", as_bytes(shape=[1, 2]), b"", 400, "BYTES input shape must be [N] or [N, 1]"),
    ("input parameters not an object", fp32(parameters=1), b"", 400, "input parameters must be a JSON object"),
    ("negative binary size", fp32(parameters={"binary_data_size": -1}), b"", 400,
     "binary_data_size must be a non-negative integer"),
    ("binary size past the body", fp32(parameters={"binary_data_size": 16}), b"\0" * 8, 400,
     "binary_data_size 16 is past the end of the body"),
    ("binary FP32 of the wrong size", fp32(shape=[1, 1, 2, 2], parameters={"binary_data_size": 8}), b"\0" * 8, 400,
     "FP32 tensor of shape [1, 1, 2, 2] needs 16 bytes, got 8"),
    ("FP32 without data", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2, 2]}]}, b"", 400,
     'an input needs "data" (a JSON array) or binary_data_size'),
    ("FP32 data not numbers", fp32(data=["a", "b", "c", "d"]), b"", 400, "FP32 data must be numbers"),
    ("FP32 data of the wrong size", fp32(data=[0.0] * 3), b"", 400, "FP32 data has 3 elements; shape [1, 1, 2, 2] needs 4"),
    ("FP32 data not finite", fp32(data=[0.0, 0.0, 0.0, float("inf")]), b"", 400, "FP32 data must be finite numbers"),
    ("BYTES without data", {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1]}]}, b"", 400,
     'an input needs "data" (a JSON array) or binary_data_size'),
    ("BYTES count against the shape", as_bytes(data=["a", "b"]), b"", 400, "BYTES data has 2 elements; the shape says 1"),
    ("BYTES element neither string nor b64", as_bytes(data=[5]), b"", 400, "BYTES elements in JSON must be strings"),
    ("BYTES b64 not base64", as_bytes(data=[{"b64": "%%%"}]), b"", 400, "a BYTES element's b64 is not base64"),
    ("binary BYTES length cut off", as_bytes(parameters={"binary_data_size": 2}), b"\1\0", 400,
     "a BYTES element's length is cut off"),
    ("binary BYTES past its tensor", as_bytes(parameters={"binary_data_size": 5}), struct.pack("<I", 9) + b"x", 400,
     "BYTES element 0 claims 9 bytes past the end of its tensor"),
    ("binary BYTES more than the shape", as_bytes(parameters={"binary_data_size": 10}), packed(b"a", b"b"), 400,
     "BYTES data has 2 elements; the shape says 1"),
    ("outputs not a list", {**fp32(), "outputs": {}}, b"", 400, '"outputs" must be a non-empty list'),
    ("output not an object", {**fp32(), "outputs": ["logits"]}, b"", 400, "an output must be a JSON object"),
    ("unknown output", {**fp32(), "outputs": [{"name": "y"}]}, b"", 400, "the model has one output, 'logits'"),
    ("output parameters not an object", {**fp32(), "outputs": [{"name": "logits", "parameters": 1}]}, b"", 400,
     "output parameters must be a JSON object"),
    ("classification past the classes", {**fp32(), "outputs": [{"name": "logits", "parameters": {"classification": 11}}]},
     b"", 400, "classification must be an integer between 1 and 10"),
    ("binary_data not a boolean", {**fp32(), "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, b"", 400,
     "binary_data must be true or false"),
]


@pytest.mark.parametrize("document, binary, status, message", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_each_refusal_has_its_status_and_message(document, binary, status, message):
    with pytest.raises(oip.TensorError) as raised:
        oip.parse_request(document, binary, **MODEL)
    assert raised.value.http_status == status
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize("header, length, message", [
    (b"[1]", None, "the body must be a JSON object"),
    (b"{", None, "the body is not JSON"),
    (b"[" * 100_000, None, "the JSON header is nested too deeply"),
    (b"{}", "x", "Inference-Header-Content-Length must be the JSON header's length"),
    (b"{}", "3", "Inference-Header-Content-Length must be the JSON header's length, at most the body's 2 bytes"),
])
def test_a_body_that_is_not_a_json_object_is_400(header, length, message):
    with pytest.raises(oip.TensorError) as raised:
        oip.parse_json(oip.split_body(header, length)[0])
    assert raised.value.http_status == 400 and str(raised.value).startswith(message)


def test_binary_bytes_elements_and_outputs_parse():
    document = as_bytes(shape=[2, 1], parameters={"binary_data_size": 11})
    document["outputs"] = [{"name": "logits", "parameters": {"classification": 3, "binary_data": True}}]
    parsed = oip.parse_request(document, packed(b"ab", b"c") + b"tail", **MODEL)
    assert parsed.input.values == [b"ab", b"c"]
    assert parsed.outputs == (oip.Output("logits", 3, True),)
