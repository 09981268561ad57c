"""The guard of the inference routes: the API key a request presents, checked by the service's
access rules (inferd/keys.py) once the route is known and before the body is read."""

from __future__ import annotations

from ..http.grammar import bearer
from ..http.messages import Request


def guard(request: Request, context):
    """The request's keys.Caller (None when no rule applies); raises keys.Unauthorized (401),
    keys.Limited (429)."""
    return context.service.admit(presented_key(request.headers), request.client[0] if request.client else "")


def presented_key(headers) -> str | None:
    """"Authorization: Bearer <key>" (RFC 6750), else "X-API-Key: <key>"; None without either."""
    return bearer(headers.get("Authorization")) or (headers.get("X-API-Key") or "").strip() or None
