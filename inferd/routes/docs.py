"""/openapi.json and /docs: the API described from the route table, and a page to try it.

The page is one file of package data (docs.html) whose inline script and style are allowed by
their hashes in a strict Content-Security-Policy: it can load nothing and talk to nothing but this
server. Both routes answer 404 when [server] docs = false (the guard runs for every method).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from importlib import resources

from .. import __version__
from ..http.errors import HTTPError
from ..http.messages import Request, Response
from . import admin_spec, keyed_spec, native_spec, openapi, v2_spec

PAGE = "docs.html"
INFO = {
    "title": "inferd",
    "summary": "A small image-classification daemon: ONNX Runtime classifiers behind a standard-library HTTP server.",
    "description": "Every error is `{\"error\": \"<message>\"}`. Every GET also answers HEAD. /v2/... is the "
                   "Open Inference Protocol (KServe, Triton). A person can try the API at /docs.",
    "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
}
TAGS = (
    {"name": "native", "description": "inferd's own API: multipart or raw image uploads."},
    {"name": "oip", "description": "The Open Inference Protocol v2 REST API (KServe, Triton)."},
    {"name": "admin", "description": "Reloads; loopback only, or a bearer token ([server] admin_token)."},
    {"name": "docs", "description": "This document and the /docs page; off with [server] docs = false."},
)


def guard(request: Request, context) -> None:
    """404 for /docs and /openapi.json, whatever the method, when [server] docs = false."""
    if not request.site.config.server.docs:
        raise HTTPError(404, "not found")


def openapi_json(request: Request, call, context) -> Response:
    return Response(200, _document_bytes(), {"Content-Type": "application/json"})


def page(request: Request, call, context) -> Response:
    body, policy = _page()
    return Response(200, body, {
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
    })


def openapi_document(routes=None, guards=None) -> dict:
    """The OpenAPI document of the route table (or of `routes` and `guards`). Raises
    openapi.Undocumented for a route or guard that has no description."""
    from . import GUARDS, ROUTES  # the table that lists these routes: complete once the package is imported

    return openapi.document(
        ROUTES if routes is None else routes, GUARDS if guards is None else guards, _described(),
        version=__version__, info=INFO, tags=TAGS, security_schemes={**admin_spec.SECURITY_SCHEMES, **keyed_spec.SECURITY_SCHEMES},
        schemas={**native_spec.SCHEMAS, **admin_spec.SCHEMAS, **v2_spec.SCHEMAS},
    )


def _described() -> dict:
    return {**native_spec.OPERATIONS, **admin_spec.OPERATIONS, **keyed_spec.OPERATIONS, **v2_spec.OPERATIONS,
            **OPERATIONS}


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode()


@functools.cache
def _page() -> tuple[bytes, str]:
    html = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")
    return html.encode("utf-8"), content_security_policy(html)


def content_security_policy(html: str) -> str:
    """Nothing but this page's own inline script and style (by their sha256), requests to this
    origin, and images the page makes itself (blob:, data:)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    return "; ".join((
        "default-src 'none'", f"script-src {_hashes(scripts)}", f"style-src {_hashes(styles)}",
        "connect-src 'self'", "img-src 'self' blob: data:", "base-uri 'none'", "form-action 'none'",
        "frame-ancestors 'none'",
    ))


def _hashes(blocks: list[str]) -> str:
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks) \
        or "'none'"


OPENAPI_JSON = openapi.Operation(
    summary="This OpenAPI 3.1 document", tag="docs",
    description="Generated from the route table the server dispatches on.",
    responses={200: openapi.answer("The document.", {"type": "object", "required": ["openapi", "paths"]})},
)
PAGE_DOC = openapi.Operation(
    summary="A page to read the API and try it", tag="docs",
    description="Self-contained HTML (no external request of any kind, a strict Content-Security-Policy): "
                "the endpoints, an upload form with the top-k as bars, /health and live figures.",
    responses={200: {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
)
GUARD = openapi.Guard(responses={404: openapi.error("[server] docs = false: /docs and /openapi.json are off.")})
OPERATIONS = {openapi_json: OPENAPI_JSON, page: PAGE_DOC, guard: GUARD}
