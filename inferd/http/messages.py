"""The vocabulary the HTTP layer and the routes share: a Route in the table, the Request a route
answers and the Response it returns. Plain values; nothing here reads or writes a socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .heads import RequestHead

# Thread pools (their caps are [limits] max_inference_requests and max_other_requests).
INFERENCE, OTHER = "inference", "other"
# What happens to a request body before the route runs.
READ = "read"  # read whole, within the limits, and handed to the route
DISCARD = "discard"  # read and dropped, so the connection can be kept
NO_BODY = "no-body"  # not read; a request that sends one gets its answer and a closed connection


@dataclass(frozen=True)
class Request:
    """What a route sees: the parsed head, the client, path parameters, the query, the frozen
    settings of the moment its head arrived, and (once read) the body."""

    head: RequestHead
    client: tuple
    settings: Any  # the daemon's Config snapshot for this request
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    admitted: Any = None  # what the route's `admit` yielded
    caller: Any = None  # who the route's `guard` admitted (its str() names it in the access log)

    @property
    def headers(self):
        return self.head.headers


@dataclass(frozen=True)
class Response:
    """status, extra headers, and a body: bytes as they are, anything else rendered as JSON."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request, Any], Response]


@dataclass(frozen=True)
class Route:
    """One entry of the route table.

    path: "/infer", or a pattern whose "{name}" segments become `Request.params`.
    methods: method -> handler(request, context) -> Response; HEAD is served by GET.
    guard: (request, context) -> who is calling (`Request.caller`, or None), run once the route
    is matched and before `admit`; it raises to refuse the request (401, 429).
    admit: (request, context) -> a context manager entered before the body is read (checks that
    need no body, a lease on a model); what it yields is `Request.admitted`, and it is left after
    the answer is built.
    """

    path: str
    methods: Mapping[str, Handler]
    pool: str = OTHER  # INFERENCE: an inference request (its own thread cap, the JSON view's counts)
    body: str = NO_BODY
    guard: Callable | None = None
    admit: Callable | None = None
