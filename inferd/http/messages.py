"""The vocabulary the HTTP layer and the routes share: a Route in the table, the Request a route
answers, the Call its handler gets, and the Response it returns. Plain values; nothing here reads
or writes a socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ContextManager, Generic, Mapping, TypeVar

from .heads import RequestHead

if TYPE_CHECKING:  # the layers below, named for the reader; never imported at run time from here
    from ..keys import Caller
    from ..site import Site

# Thread pools (their caps are [limits] max_inference_requests and max_other_requests).
INFERENCE, OTHER = "inference", "other"
# What happens to a request body before the route runs.
READ = "read"  # read whole, within the limits, and handed to the route
DISCARD = "discard"  # read and dropped, so the connection can be kept
NO_BODY = "no-body"  # not read; a request that sends one gets its answer and a closed connection

Admitted = TypeVar("Admitted")


@dataclass(frozen=True)
class Request:
    """What every step of a route sees, built once its head is routed: the parsed head, the client,
    the site taken when the head arrived (the frozen configuration, swapped whole on reload), the
    path parameters (percent-decoded) and the query."""

    head: RequestHead
    client: tuple
    site: "Site"
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)

    @property
    def headers(self):
        return self.head.headers


@dataclass(frozen=True)
class Call(Generic[Admitted]):
    """What a handler gets beside the request: who the route's guard admitted (None: no rule
    applies), what its admission settled before the body was read, and the body (when the route
    reads one)."""

    caller: "Caller | None" = None
    admitted: Admitted | None = None
    body: bytes | bytearray = b""


@dataclass(frozen=True)
class Response:
    """status, extra headers, and a body: bytes as they are, anything else rendered as JSON."""

    status: int
    body: object
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request, Call, object], Response]


@dataclass(frozen=True)
class Route(Generic[Admitted]):
    """One entry of the route table.

    path: "/infer", or a pattern whose "{name}" segments become `Request.params`.
    methods: method -> handler(request, call, context) -> Response; HEAD is served by GET.
    guard: (request, context) -> who is calling (`Call.caller`, or None), run once the route is
    matched and before `admit`; it raises to refuse the request (401, 429).
    admit: (request, caller, context) -> a context manager entered before the body is read (checks
    that need no body, a lease on a model); what it yields is `Call.admitted`, and it is left after
    the answer is built.
    """

    path: str
    methods: Mapping[str, Handler]
    pool: str = OTHER  # INFERENCE: an inference request (its own thread cap, the JSON view's counts)
    body: str = NO_BODY
    guard: Callable[[Request, object], "Caller | None"] | None = None
    admit: Callable[[Request, "Caller | None", object], ContextManager[Admitted]] | None = None
