"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks) in tests/protocols/test_openapi.py.

What a static document cannot say about inferd's inputs, told to the generator here:
- which bytes are an image: image/* parts and bodies are real PNG and JPEG files of drawn sizes
  and colours (random bytes would only ever reach the 415 for "not an image");
- the binary tensor data extension of POST /v2/.../infer (application/octet-stream): its body is a
  JSON header plus tensor bytes, described in text only; those cases are not generated here
  (tests/protocols/test_v2.py drives it with tritonclient);
- top_k's upper bound, the model's label count (1000 for the default model, 10 for the tiny one):
  a drawn top_k above it is brought down to it, so a valid request stays valid.
Everything else is generated from /openapi.json as it is.
"""

from __future__ import annotations

import io
import os

import schemathesis
from hypothesis import strategies as st
from PIL import Image

LABELS = int(os.environ.get("INFERD_TEST_LABELS", "1000"))


@st.composite
def encoded_images(draw, fmt: str) -> bytes:
    size = (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
for subtype, fmt in FORMATS.items():
    schemathesis.openapi.media_type(f"image/{subtype}", encoded_images(fmt))
# /infer takes an image as a raw application/octet-stream body too.
schemathesis.openapi.media_type("application/octet-stream", st.one_of(*(encoded_images(f) for f in FORMATS.values())))


@schemathesis.hook
def filter_case(context, case):
    return not (case.operation.path.startswith("/v2/") and case.media_type == "application/octet-stream")


@schemathesis.hook
def map_query(context, query):
    top_k = (query or {}).get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > LABELS:
        query["top_k"] = LABELS
    return query
