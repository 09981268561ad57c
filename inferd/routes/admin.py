"""/admin/*: who may call it (loopback, or a bearer token), and the reload it asks the daemon for."""

from __future__ import annotations

import hashlib
import hmac
import re

from ..http.errors import HTTPError
from ..http.grammar import bearer
from ..http.messages import Request, Response
from ..names import client_address


def guard(request: Request, context) -> None:
    """Before routing, for every path under /admin/: with a token configured, only
    "Authorization: Bearer <token>" (from anywhere; 401 otherwise); without one, loopback clients
    only (403 otherwise)."""
    authorize_admin(request.site.config.server.admin_token, request.headers.get("Authorization"), request.client[0])


def authorize_admin(token: str, authorization: str | None, client_host: str) -> None:
    """Admit an /admin/* request or raise HTTPError (401, 403). The token is compared in constant
    time, lengths included."""
    if token:
        given = bearer(authorization)
        expected = hashlib.sha256(token.encode()).digest()
        if given is None or not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
            raise HTTPError(401, "a valid bearer token is required",
                            {"WWW-Authenticate": 'Bearer realm="inferd admin"'})
    elif not is_loopback(client_host):
        raise HTTPError(403, "admin endpoints answer loopback clients only (set admin_token to allow others)")


def is_loopback(host: str) -> bool:
    address = client_address(host)
    return address is not None and address.is_loopback


def reload(request: Request, call, context) -> Response:
    """Asks the daemon's main loop to reload what its configuration names and waits for the
    outcome; nothing in the request can choose a file."""
    return _reload(context, None)


def reload_model(request: Request, call, context) -> Response:
    """POST /admin/models/{name}/reload: look at that model alone; 404 for a name that is neither
    loaded nor failed."""
    name = request.params["name"]
    if not context.service.knows(name):
        raise HTTPError(404, f"no model named {name!r}")
    return _reload(context, name)


def _reload(context, model: str | None) -> Response:
    if context.control.draining:
        raise HTTPError(503, "reload is not available now")
    outcome = context.control.reload(model)
    if not outcome.ok:
        raise HTTPError(500, f"reload failed, the previous model keeps serving: {redact_paths(outcome.message)}")
    answer = {"message": "Model reloaded successfully", "outcome": outcome.message,
              "model": context.service.describe_default()}
    if outcome.warnings:
        answer["warnings"] = [redact_paths(warning) for warning in outcome.warnings]
    return Response(200, answer)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/:;,'\"()\[\]]+)+/?")


def redact_paths(message: str) -> str:
    """A reload failure for a client: every absolute path shortened to its last component, so the
    reason stays useful ("model.onnx: onnxruntime cannot load it") without the file system layout."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", message)
