"""The HTTP layer: accept connections, park them between requests (connections.WaitingRoom), answer
each complete request on a handler thread: route, read the body within limits, render every
outcome (errors included) as one JSON response.

Threads are spent only on requests whose head has arrived in full; idle and slow connections wait
on one selector thread. Inference requests and the rest (health, metrics, admin) have separate
thread caps, so /health and /metrics answer while inference is saturated.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import resource
import socket
import socketserver
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from . import __version__, api, httpio
from .metrics import negotiate
from .api import HTTPError, Upload
from .batcher import BatcherStopped, QueueFull
from .connections import CLOSE, KEEP, LINGER, Connection, HandlerThreads, WaitingRoom

log = logging.getLogger(__name__)
access_log = logging.getLogger("inferd.access")

JSON_TYPE = "application/json"
SERVER_HEADER = f"inferd/{__version__}"
INFERENCE_PATHS = frozenset((b"/infer", b"/infer/batch"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class InferdServer(socketserver.TCPServer):
    """Serves `self.state` (swapped whole on reload).

    `draining` (set by the daemon before shutdown()) makes every answer close its connection, and
    makes server_close() leave parked keep-alive connections to be answered until the process
    exits; without it server_close() closes them too.
    """

    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address, state, metrics, reload_model=None, listen_socket=None):
        self.state = state
        self.metrics = metrics
        self.reload_model = reload_model
        self.draining = False
        self._busy = 0
        self._busy_changed = threading.Condition()
        config = state.config
        _raise_fd_limit(config.server.max_connections + 256)
        self.handlers = HandlerThreads({"inference": config.limits.max_inference_requests,
                                        "other": config.limits.max_other_requests})
        self.room = WaitingRoom(max_connections=config.server.max_connections,
                                settings=lambda: self.state.config.limits,
                                dispatch=self._dispatch, answer=self._early_answer)
        if listen_socket is None:
            self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            super().__init__(address, None)
        else:
            self.address_family = listen_socket.family
            super().__init__(listen_socket.getsockname()[:2], None, bind_and_activate=False)
            self.socket.close()
            self.socket = listen_socket
            self.server_address = listen_socket.getsockname()
        self.room.start()

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: the listening socket stays readable, so pause instead of spinning.
                log.warning("cannot accept a connection: %s", exc.strerror)
                time.sleep(0.1)
            raise

    def process_request(self, request, client_address):
        self.room.admit(request, client_address)

    def server_close(self):
        super().server_close()
        if not self.draining:
            self.room.close()

    def _dispatch(self, conn: Connection) -> bool:
        """On the waiting room's thread: start a handler for a complete head, if one is free."""
        target = conn.buffer[:conn.head_length].split(b" ", 2)[1:2]
        kind = "inference" if target and target[0].split(b"?", 1)[0] in INFERENCE_PATHS else "other"
        return self.handlers.try_run(kind, lambda: self._serve(conn))

    def _serve(self, conn: Connection) -> None:
        """On a handler thread: one request, then the connection goes back to the waiting room."""
        disposition = CLOSE
        try:
            disposition = Handler(self, conn).handle()
        finally:
            self.room.give_back(conn, disposition)

    def _early_answer(self, address: tuple, status: int, message: str) -> bytes:
        """An error answered before any handler saw the request (408, 414, 431, 503)."""
        self.metrics.observe_request("", "", status, 0.0)
        _log_access(self, address, "-", "-", status, 0.0)
        headers = {"Retry-After": "1"} if status == 503 else {}
        return render(status, headers, {"error": message}, close=True)

    def begin_request(self):
        with self._busy_changed:
            self._busy += 1

    def end_request(self):
        with self._busy_changed:
            self._busy -= 1
            self._busy_changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight or `timeout` passes; True when idle."""
        with self._busy_changed:
            return self._busy_changed.wait_for(lambda: self._busy == 0, timeout)


class Handler:
    """One request on one connection, on a handler thread.

    handle() parses the head, routes, answers, and returns what the connection does next: KEEP
    (wait for the next request), LINGER (close, draining unread bytes first) or CLOSE.
    """

    def __init__(self, server: InferdServer, conn: Connection):
        self.server = server
        self.conn = conn
        self.client_address = conn.address
        self.reader = httpio.SocketReader(conn.sock, conn.buffer[conn.head_length:])
        self.head: httpio.RequestHead | None = None
        self.body: httpio.Body | None = None
        self.command = ""
        self.path = ""
        self.headers = httpio.Headers([])

    def handle(self) -> str:
        started = time.monotonic()
        server = self.server
        server.begin_request()
        server.metrics.request_started()
        status, failure = None, None
        try:
            try:
                self._parse(self.conn.buffer[:self.conn.head_length])
                status, headers, body = self._respond()
            except httpio.ClientDisconnected:
                return CLOSE
            except Exception as exc:
                status, headers, body = self._error_response(exc)
                failure = exc
            disposition = self._disposition(failure)
            try:
                self._send(status, headers, body, disposition)
            except OSError:
                return CLOSE
            if disposition == KEEP:
                self.conn.buffer, self.conn.head_length = self.reader.take_buffer(), 0
            return disposition
        finally:
            elapsed = time.monotonic() - started
            if status is not None:
                server.metrics.observe_request(self.path, self.command, status, elapsed)
                _log_access(server, self.client_address, self.command or "-", self.path or "-", status, elapsed)
            server.metrics.request_finished()
            server.end_request()

    def _parse(self, head: bytes) -> None:
        self.head = httpio.parse_head(head, max_header_count=self.server.state.config.limits.max_header_count)
        self.command, self.path, self.headers = self.head.method, self.head.target, self.head.headers

    # -- dispatch ---------------------------------------------------------------------------------

    def _respond(self):
        path = self.head.path
        if path.startswith("/admin/"):
            self._authorize_admin()
        route = ROUTES.get(path)
        if route is None:
            raise HTTPError(404, "not found")
        method = "GET" if self.command == "HEAD" else self.command
        if method not in route:
            raise HTTPError(405, f"method {self.command} is not allowed here", {"Allow": ", ".join(route)})
        return route[method](self, parse_qs(self.head.query))

    def _error_response(self, exc: Exception):
        status = getattr(exc, "http_status", None)
        if status is None and isinstance(exc, TimeoutError):
            status = 408
        if status is None or (status >= 500 and not isinstance(exc, EXPECTED_5XX)):
            log.error("internal error on %s %s", self.command or "-", printable(self.path), exc_info=exc)
            return 500, {}, {"error": "internal error"}
        headers = dict(getattr(exc, "headers", {}))
        if status == 503:
            headers.setdefault("Retry-After", "1")
        return status, headers, {"error": str(exc)}

    def _disposition(self, failure: Exception | None) -> str:
        if isinstance(failure, TimeoutError):
            return CLOSE  # a client too slow to send its request is not worth draining
        if self.head is None or isinstance(failure, httpio.ProtocolError):
            return LINGER  # no trustworthy framing: nothing after this can be parsed
        if self._body_pending():
            return LINGER  # unread body bytes would be parsed as the next request (STYLE.md)
        if self.server.draining or not self.head.keep_alive:
            return LINGER
        return KEEP

    def _body_pending(self) -> bool:
        if self.body is not None:
            return not self.body.complete
        headers = self.head.headers
        return bool(headers.get_all("transfer-encoding")) or any(v.strip("0 \t") for v in headers.get_all("content-length"))

    def _send(self, status: int, headers: dict, payload, disposition: str) -> None:
        keep_alive_10 = disposition == KEEP and self.head is not None and self.head.version < (1, 1)
        data = render(status, headers, payload, close=disposition != KEEP, keep_alive=keep_alive_10,
                      head_only=self.command == "HEAD")
        self.conn.sock.settimeout(self.server.state.config.server.request_timeout)
        self.conn.sock.sendall(data)

    # -- routes -----------------------------------------------------------------------------------

    def _infer(self, query):
        with self.server.state.lease() as state:
            top_k = api.parse_top_k(query, state.config.model.top_k, len(state.model.labels))
            uploads = self._read_uploads(state, ("file",))
            if len(uploads) != 1:
                raise HTTPError(400, f"expected one file part named 'file', got {len(uploads)}")
            return 200, {}, api.infer(state, self.server.metrics, uploads[0], top_k)

    def _infer_batch(self, query):
        with self.server.state.lease() as state:
            top_k = api.parse_top_k(query, state.config.model.top_k, len(state.model.labels))
            uploads = self._read_uploads(state, ("files", "file"))
            if not uploads:
                raise HTTPError(400, "expected one or more file parts named 'files'")
            return 200, {}, api.infer_batch(state, self.server.metrics, uploads, top_k)

    def _health(self, query):
        status, body = api.health(self.server.state, self.server.draining)
        return status, {}, body

    def _metrics(self, query):
        fmt = query.get("format", [None])[-1]
        try:
            kind = negotiate(self.headers.get("Accept"), fmt)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        content_type, body = self.server.metrics.render(kind)
        return 200, {"Content-Type": content_type}, body

    def _reload(self, query):
        """Reloads what the daemon's configuration names; nothing in the request can choose a model."""
        self._discard_body()
        if self.server.reload_model is None or self.server.draining:
            raise HTTPError(503, "reload is not available now")
        ok, message = self.server.reload_model()
        if not ok:
            raise HTTPError(500, f"reload failed, the previous model keeps serving: {redact_paths(message)}")
        return 200, {}, {"message": "Model reloaded successfully", "model": self.server.state.model.describe()}

    # -- request bodies ---------------------------------------------------------------------------

    def _body_chunks(self, limits):
        """The body as an iterator of chunks. Framing is checked now (411, 413, 400) before any
        byte is read; 100 Continue is sent, and the body deadline starts, at the first read."""
        framing = httpio.body_framing(self.head, limits.max_body_bytes)
        if framing is None:
            raise HTTPError(411, "Content-Length is required (or Transfer-Encoding: chunked)")
        self.body = httpio.Body(self.reader, framing, max_body_bytes=limits.max_body_bytes,
                                max_trailer_bytes=limits.max_header_bytes)
        return self._read_body(limits)

    def _read_body(self, limits):
        if self.head.expects_continue and not self.body.complete:
            try:
                self.conn.sock.settimeout(self.server.state.config.server.request_timeout)
                self.conn.sock.sendall(CONTINUE)
            except OSError:
                raise httpio.ClientDisconnected("cannot send 100 Continue") from None
        self.reader.expect(limits.body_timeout, limits.min_body_rate,
                           stall=self.server.state.config.server.request_timeout)
        yield from self.body.chunks()

    def _discard_body(self):
        if self._body_pending():
            for _ in self._body_chunks(self.server.state.config.limits):
                pass

    def _read_uploads(self, state, field_names: tuple[str, ...]) -> list[Upload]:
        limits = state.config.limits
        content_type = self.headers.get("Content-Type", "")
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime == "multipart/form-data":
            return api.uploads_from_multipart(content_type, self._body_chunks(limits), limits,
                                              field_names, limits.max_files_per_batch)
        if mime.startswith("image/") or mime == "application/octet-stream":
            return [Upload(None, b"".join(self._body_chunks(limits)))]
        raise HTTPError(415, "expected multipart/form-data or an image/* body")

    # -- admin ------------------------------------------------------------------------------------

    def _authorize_admin(self):
        authorize_admin(self.server.state.config.server.admin_token, self.headers.get("Authorization"),
                        self.client_address[0])


ROUTES = {
    "/infer": {"POST": Handler._infer},
    "/infer/batch": {"POST": Handler._infer_batch},
    "/health": {"GET": Handler._health},
    "/metrics": {"GET": Handler._metrics},
    "/admin/reload": {"POST": Handler._reload},
}

EXPECTED_5XX = (HTTPError, QueueFull, BatcherStopped)
ROUTE_LABELS = tuple(ROUTES)
INFERENCE_ROUTE_LABELS = tuple(path.decode() for path in INFERENCE_PATHS)


def authorize_admin(token: str, authorization: str | None, client_host: str) -> None:
    """Admit an /admin/* request or raise HTTPError: with a token configured, only
    "Authorization: Bearer <token>" (from anywhere; 401 otherwise); without one, loopback clients
    only (403 otherwise). The token is compared in constant time, lengths included."""
    if token:
        scheme, _, given = (authorization or "").strip().partition(" ")
        expected = hashlib.sha256(token.encode()).digest()
        if not (scheme.lower() == "bearer"
                and hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), expected)):
            raise HTTPError(401, "a valid bearer token is required",
                            {"WWW-Authenticate": 'Bearer realm="inferd admin"'})
    elif not is_loopback(client_host):
        raise HTTPError(403, "admin endpoints answer loopback clients only (set admin_token to allow others)")


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def render(status: int, headers: dict, payload, *, close: bool, keep_alive: bool = False,
           head_only: bool = False) -> bytes:
    """One whole response: bytes payloads as they are, anything else as JSON."""
    if isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": JSON_TYPE, **headers}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {SERVER_HEADER}", f"Date: {_http_date()}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    elif keep_alive:
        lines.append("Connection: keep-alive")
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


_date_cache = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _log_access(server, address: tuple, method: str, path: str, status: int, seconds: float) -> None:
    if server.state.config.logging.access_log:
        access_log.info("%s %s %s %d %.1fms", address[0] if address else "-", printable(method),
                        printable(path), status, seconds * 1000)


def printable(text: str) -> str:
    """Client-supplied text made safe for one log line: control and non-ASCII characters escaped."""
    return text.encode("unicode_escape").decode("ascii")


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/:;,'\"()\[\]]+)+/?")


def redact_paths(message: str) -> str:
    """A reload failure for a client: every absolute path shortened to its last component, so the
    reason stays useful ("model.onnx: onnxruntime cannot load it") without the file system layout."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", message)


def _raise_fd_limit(wanted: int) -> None:
    """Every connection is a descriptor: raise the soft limit toward `wanted` (systemd's default
    soft limit is 1024 and services are expected to raise it themselves)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < wanted:
        log.warning("open file limit %d is below max_connections + 256 = %d", target, wanted)
