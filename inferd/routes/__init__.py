"""The route table, declared once: the router dispatches on it, the metrics label by it.

Each route maps HTTP to calls of the service (service.py) and back; `RouteContext` is what every
route is handed: the service, the metrics, and the daemon's control (reloads, draining).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..http.messages import DISCARD, INFERENCE, READ, Route
from . import admin, native


@dataclass(frozen=True)
class RouteContext:
    service: object
    metrics: object
    control: object


ROUTES = (
    Route("/infer", {"POST": native.infer}, pool=INFERENCE, body=READ, admit=native.admit_upload),
    Route("/infer/batch", {"POST": native.infer_batch}, pool=INFERENCE, body=READ, admit=native.admit_upload),
    Route("/health", {"GET": native.health}),
    Route("/metrics", {"GET": native.metrics}),
    Route("/models", {"GET": native.models}),
    Route("/admin/reload", {"POST": admin.reload}, body=DISCARD),
    Route("/admin/models/{name}/reload", {"POST": admin.reload_model}, body=DISCARD),
)

GUARDS = (("/admin/", admin.guard),)
