"""The OpenAPI description of keyed.py: the API-key check of the inference routes ([auth])."""

from __future__ import annotations

from . import keyed
from .openapi import Guard, error

SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `inferd-keys add` when [auth] keys_file is set: "
                       "`Authorization: Bearer <key>`. Without a keys file, no key is needed.",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "The same key in X-API-Key."},
}

RATE_LIMIT_HEADERS = {name: {"schema": {"type": "integer"}} for name in
                      ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")}

GUARD = Guard(
    responses={
        401: error("[auth] keys_file is set and the request carries no key the file holds.",
                   {"WWW-Authenticate": {"schema": {"type": "string"}}}),
        429: error("The key's request or image bucket is empty (or, without keys, [auth] anonymous_rate for "
                   "the client's address); retry after Retry-After seconds.", RATE_LIMIT_HEADERS),
    },
    # A key when a keys file is configured; none otherwise.
    security=({"apiKey": []}, {"apiKeyHeader": []}, {}),
)

OPERATIONS = {keyed.guard: GUARD}
