"""One request on a handler thread: guard it, admit it, read its body, run the route, send the
answer, record it; and the answers refused before any route saw the request.

The head arrives parsed and routed (the head gate, gate.py, did both once). What the connection
does next is returned: KEEP it for its next request, LINGER (close, draining unread bytes first)
or CLOSE.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from urllib.parse import parse_qs

from .body import BodyReader, SocketReader
from .errors import ClientDisconnected, ProtocolError
from .gate import Routed
from .heads import RequestHead
from .messages import DISCARD, READ, Call, Request, Response, Route
from .responses import error_bytes, error_response, render

access_log = logging.getLogger("inferd.access")

KEEP, LINGER, CLOSE = "keep", "linger", "close"


class Exchange:
    """Serves requests for one server: its router, the routes' context, its metrics, and the
    current site (site.py), replaced whole by `configure`."""

    def __init__(self, router, context, metrics, control, site):
        self.router = router
        self.context = context
        self.metrics = metrics
        self.control = control
        self.site = site
        self._busy = 0
        self._busy_changed = threading.Condition()

    def configure(self, site) -> None:
        self.site = site  # one assignment: a request sees the old site or the new, never half of each

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight or `timeout` passes; True when idle."""
        with self._busy_changed:
            return self._busy_changed.wait_for(lambda: self._busy == 0, timeout)

    def _in_flight(self, change: int) -> None:
        with self._busy_changed:
            self._busy += change
            self._busy_changed.notify_all()

    def serve(self, conn, routed: Routed) -> str:
        """Answer the request whose head is at the start of conn.buffer; returns the disposition."""
        site = self.site  # one snapshot for the whole request
        settings, head = site.http, routed.head
        started = time.monotonic()
        self._in_flight(+1)
        self.metrics.request_started()
        reader = SocketReader(conn.sock, conn.buffer[conn.head_length:])
        body = BodyReader(reader, head, settings)
        try:
            answered = self._answer(conn, routed, site, body)
            if answered is None:
                return CLOSE
            response, failure, label, caller = answered
            disposition = self._disposition(head, body, failure)
            # Counted before it is sent: a client that has its answer finds it in the metrics.
            self._record(conn.address, head.method, label, head.target, response.status,
                         time.monotonic() - started, settings, caller)
            if not self._send(conn, head, response, disposition, settings):
                return CLOSE
            if disposition == KEEP:
                conn.buffer, conn.head_length = reader.take_buffer(), 0
            return disposition
        finally:
            self.metrics.request_finished()
            self._in_flight(-1)

    def _answer(self, conn, routed: Routed, site, body: BodyReader):
        """(response, the exception it answers or None, route label, caller), or None when the
        client went away. Every outcome, errors included, becomes one response."""
        head, route = routed.head, routed.route
        label, caller = route.path if route is not None else head.path, None
        try:
            request = Request(head, conn.address, site, routed.params, parse_qs(head.query))
            for check in self.router.guards_for(head.path):
                check(request, self.context)
            handler = self.router.handler(route, head.method)
            caller = route.guard(request, self.context) if route.guard else None
            return self._run(route, handler, request, caller, body), None, label, caller
        except ClientDisconnected:
            return None
        except Exception as exc:
            response = error_response(exc, f"{head.method} {printable(head.target)}")
            return response, exc, label, caller or getattr(exc, "caller", None)

    def _run(self, route: Route, handler, request: Request, caller, body: BodyReader) -> Response:
        admission = route.admit(request, caller, self.context) if route.admit else contextlib.nullcontext()
        with admission as admitted:
            data = body.read(required=True) if route.body == READ else b""
            if route.body == DISCARD and body.head.declares_body:
                body.read(required=False)
            return handler(request, Call(caller, admitted, data), self.context)

    def _disposition(self, head: RequestHead, body: BodyReader, failure: Exception | None) -> str:
        if isinstance(failure, TimeoutError):
            return CLOSE  # a client too slow to send its request is not worth draining
        if isinstance(failure, ProtocolError) or not body.complete:
            return LINGER  # unread or unframed body bytes would be parsed as the next request
        if self.control.draining or not head.keep_alive:
            return LINGER
        return KEEP

    @staticmethod
    def _send(conn, head: RequestHead, response: Response, disposition: str, settings) -> bool:
        keep_alive_10 = disposition == KEEP and head.version < (1, 1)
        try:
            data = render(response, close=disposition != KEEP, keep_alive=keep_alive_10,
                          head_only=head.method == "HEAD")
        except ValueError as exc:  # a body JSON cannot carry (NaN): our bug, never the client's
            data = render(error_response(exc, f"{head.method} {printable(head.target)}"), close=True)
        try:
            conn.sock.settimeout(settings.request_timeout)
            conn.sock.sendall(data)
        except OSError:
            return False
        return True

    def refuse(self, address: tuple, status: int, message: str, routed: Routed | None = None) -> bytes:
        """The bytes of an error answered before any route saw the request (400 for a malformed
        head, 408, 414, 431, 503), recorded like any other answer: under its route when the head
        was routed (a 503 at the thread cap), else under "other"."""
        settings = self.site.http
        if routed is None:
            self._record(address, "-", "-", "-", status, 0.0, settings)
        else:
            head = routed.head
            label = routed.route.path if routed.route is not None else head.path
            self._record(address, head.method, label, head.target, status, 0.0, settings)
        return error_bytes(status, message)

    def _record(self, address, method: str, label: str, target: str, status: int, seconds: float,
                settings, caller=None) -> None:
        """Metrics and the access log line; `caller` (an API key's name, never the key) ends the
        line as "key=NAME" when the route has a guard that named one."""
        self.metrics.observe_request(label if method != "-" else "", method if method != "-" else "",
                                     status, seconds)
        if settings.access_log:
            access_log.info("%s %s %s %d %.1fms%s", address[0] if address else "-", printable(method),
                            printable(target), status, seconds * 1000, f" key={caller}" if caller else "")


def printable(text: str) -> str:
    """Client-supplied text made safe for one log line: control and non-ASCII characters escaped."""
    return text.encode("unicode_escape").decode("ascii")
