"""The route table, declared once: the router dispatches on it, the metrics label by it.

Each route maps HTTP to calls of the service (service.py) and back; `RouteContext` is what every
route is handed: the service, the metrics, and the daemon's control (reloads, draining).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..http.messages import DISCARD, INFERENCE, READ, Route
from ..service import Service
from . import admin, docs, keyed, native, v2

if TYPE_CHECKING:  # the daemon's parts the routes are handed; named for the reader
    from ..control import Control
    from ..metrics import InferdMetrics


@dataclass(frozen=True)
class RouteContext:
    service: Service
    metrics: "InferdMetrics"
    control: "Control"


ROUTES = (
    Route("/infer", {"POST": native.infer}, pool=INFERENCE, body=READ, guard=keyed.guard,
          admit=native.admit_upload),
    Route("/infer/batch", {"POST": native.infer_batch}, pool=INFERENCE, body=READ, guard=keyed.guard,
          admit=native.admit_upload),
    Route("/health", {"GET": native.health}),
    Route("/metrics", {"GET": native.metrics}),
    Route("/models", {"GET": native.models}),
    Route("/admin/reload", {"POST": admin.reload}, body=DISCARD),
    Route("/admin/models/{name}/reload", {"POST": admin.reload_model}, body=DISCARD),
    # The Open Inference Protocol v2 (KServe, Triton)
    Route("/v2", {"GET": v2.server_metadata}),
    Route("/v2/health/live", {"GET": v2.live}),
    Route("/v2/health/ready", {"GET": v2.ready}),
    Route("/v2/repository/index", {"POST": v2.repository_index}, body=DISCARD),
    Route("/v2/models/{model}", {"GET": v2.model_metadata}),
    Route("/v2/models/{model}/versions/{version}", {"GET": v2.model_metadata}),
    Route("/v2/models/{model}/ready", {"GET": v2.model_ready}),
    Route("/v2/models/{model}/versions/{version}/ready", {"GET": v2.model_ready}),
    Route("/v2/models/{model}/config", {"GET": v2.model_config}),
    Route("/v2/models/{model}/versions/{version}/config", {"GET": v2.model_config}),
    Route("/v2/models/{model}/infer", {"POST": v2.infer}, pool=INFERENCE, body=READ, guard=keyed.guard,
          admit=v2.admit_infer),
    Route("/v2/models/{model}/versions/{version}/infer", {"POST": v2.infer}, pool=INFERENCE, body=READ,
          guard=keyed.guard, admit=v2.admit_infer),
    # The API described, and a page to try it ([server] docs)
    Route("/openapi.json", {"GET": docs.openapi_json}),
    Route("/docs", {"GET": docs.page}),
)

GUARDS = (("/admin/", admin.guard), ("/openapi.json", docs.guard), ("/docs", docs.guard))
