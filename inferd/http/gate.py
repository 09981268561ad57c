"""The head gate: the bytes a connection sent so far -> a complete, parsed request head and the
route it names, or None while the head is incomplete. Sans-IO: the waiting room feeds it its
buffer; the route it finds is the one the handler runs (the route is looked up once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .heads import RequestHead, head_length, parse_head
from .messages import OTHER, Route
from .router import Router
from .settings import HttpSettings


@dataclass(frozen=True)
class Routed:
    """A parsed head and the route of its path (None: no route has it), with the path's parameters."""

    head: RequestHead
    route: Route | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        """The handler pool that answers it: its route's, or the other requests' pool."""
        return self.route.pool if self.route is not None else OTHER


class HeadGate:
    def __init__(self, router: Router):
        self.router = router

    def check(self, buffer: bytes, settings: HttpSettings) -> tuple[int, Routed] | None:
        """(the head's length, the routed head) once `buffer` starts with a complete head; None
        before. Raises ProtocolError (400, 414, 431) for a head that breaks the grammar or a limit."""
        length = head_length(buffer, max_request_line=settings.max_request_line,
                             max_header_bytes=settings.max_header_bytes)
        if not length:
            return None
        head = parse_head(buffer[:length], max_header_count=settings.max_header_count)
        found = self.router.find(head.path)
        return length, Routed(head, *found) if found else Routed(head)
