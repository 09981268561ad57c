"""Responses as bytes, and the one place an exception becomes a response.

`error_response` trusts an exception's `http_status` (every error inferd raises on purpose carries
one); anything else is a bug: logged with its traceback and answered 500 without internals.
"""

from __future__ import annotations

import json
import logging
import time
from email.utils import formatdate
from http import HTTPStatus

from .. import __version__
from .messages import Response

log = logging.getLogger("inferd.http")

JSON_TYPE = "application/json"
SERVER_HEADER = f"inferd/{__version__}"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def render(response: Response, *, close: bool, keep_alive: bool = False, head_only: bool = False) -> bytes:
    """One whole response: status line, Server, Date, the response's headers, Connection when it
    closes (or an HTTP/1.0 connection stays open), Content-Length, and the body."""
    headers = dict(response.headers)
    if isinstance(response.body, bytes):
        body = response.body
    else:
        body = json.dumps(response.body, separators=(",", ":"), allow_nan=False).encode()
        headers = {"Content-Type": JSON_TYPE, **headers}
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {response.status} {phrase}", f"Server: {SERVER_HEADER}", f"Date: {_http_date()}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    elif keep_alive:
        lines.append("Connection: keep-alive")
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(exc: BaseException, context: str = "-") -> Response:
    """The JSON error answer for `exc`. A TimeoutError without a status is a 408 (a socket read
    ran out of time); an exception without `http_status` is logged with `context` and gets 500."""
    status = getattr(exc, "http_status", None)
    if status is None and isinstance(exc, TimeoutError):
        status = 408
    if status is None:
        log.error("internal error on %s", context, exc_info=exc)
        return Response(500, {"error": "internal error"})
    headers = dict(getattr(exc, "headers", {}))
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return Response(status, {"error": str(exc)}, headers)


def error_bytes(status: int, message: str) -> bytes:
    """A whole error answer that closes the connection (408, 414, 431, 503 before any route)."""
    headers = {"Retry-After": "1"} if status == 503 else {}
    return render(Response(status, {"error": message}, headers), close=True)


_date_cache = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
