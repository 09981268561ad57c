"""The OpenAPI description of admin.py: the guard of every /admin/ path and the reloads."""

from __future__ import annotations

from . import admin
from .openapi import Guard, Operation, answer, error, ref

SECURITY_SCHEMES = {
    "adminToken": {
        "type": "http", "scheme": "bearer",
        "description": "[server] admin_token. When it is set, /admin/* needs `Authorization: Bearer <token>` "
                       "from any client; when it is empty (the default), /admin/* answers loopback clients "
                       "only and takes no credentials.",
    },
}

SCHEMAS = {
    "Reloaded": {
        "type": "object", "required": ["message", "outcome", "model"],
        "properties": {
            "message": {"type": "string"},
            "outcome": {"type": "string", "description": "What is served now, model by model."},
            "model": {"anyOf": [ref("ModelDescription"), {"type": "null"}],
                      "description": "The default model after the reload."},
        },
    },
}

GUARD = Guard(
    responses={
        401: error("admin_token is set and the request has no valid `Authorization: Bearer <token>`.",
                   {"WWW-Authenticate": {"schema": {"type": "string"}}}),
        403: error("admin_token is empty and the client is not on loopback."),
    },
    # A bearer token, or none at all from loopback when no token is configured.
    security=({"adminToken": []}, {}),
)

RELOADED = {
    "message": "Model reloaded successfully", "outcome": "serving efficientnet-lite0",
    "model": {"name": "efficientnet-lite0", "sha256": "44248d27f9ce10d1b451164ed7be722662cc28beb33e17c814ea3ec81d966bb2",
              "labels": 1000, "input": [3, 224, 224], "layout": "NCHW", "version": "1"},
}
RELOAD_FAILED = error("The reload failed; the versions that were serving keep serving. The message says why, "
                      "with file paths shortened to their last component.")
DRAINING = error("The daemon is draining (SIGTERM): no reload now.")

RELOAD = Operation(
    summary="Reload what the configuration names",
    tag="admin",
    description="Rescans the model repository (or the one model), loads and warms what changed, then swaps it "
                "in; the same as SIGHUP and `systemctl reload inferd`. Answers once the reload is done.",
    responses={200: answer("Reloaded.", ref("Reloaded"), RELOADED), 500: RELOAD_FAILED, 503: DRAINING},
)

RELOAD_MODEL = Operation(
    summary="Reload one model",
    tag="admin",
    path_parameters={"name": ("A model's name, loaded or failed (GET /models).", "efficientnet-lite0")},
    responses={200: answer("Reloaded.", ref("Reloaded"), RELOADED),
               404: error("No model of that name is loaded or has failed to load."),
               500: RELOAD_FAILED, 503: DRAINING},
)

OPERATIONS = {admin.guard: GUARD, admin.reload: RELOAD, admin.reload_model: RELOAD_MODEL}
