"""The HTTP layer: a bounded ThreadingHTTPServer and a thin handler that routes, reads bodies within
limits, and renders every outcome (including errors) as one JSON response.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from . import __version__, api, metrics as metrics_module
from .api import HTTPError, Upload
from .batcher import BatcherStopped, QueueFull

log = logging.getLogger(__name__)
access_log = logging.getLogger("inferd.access")

READ_CHUNK = 64 * 1024
JSON_TYPE = "application/json"


class InferdServer(ThreadingHTTPServer):
    """Serves `self.state` (swapped whole on reload) with at most `max_connections` handler threads.

    Handler threads are daemon threads on purpose: a drain waits for requests in flight
    (`wait_idle`), not for idle keep-alive connections, which would otherwise hold up shutdown.
    """

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address, state, metrics, reload_model=None, listen_socket=None):
        self.state = state
        self.metrics = metrics
        self.reload_model = reload_model
        self.draining = False
        self._slots = threading.BoundedSemaphore(state.config.server.max_connections)
        self._busy = 0
        self._busy_changed = threading.Condition()
        if listen_socket is None:
            self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            super().__init__(address, Handler)
        else:
            self.address_family = listen_socket.family
            super().__init__(listen_socket.getsockname()[:2], Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = listen_socket
            self.server_address = listen_socket.getsockname()

    def server_bind(self):
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request):
        """Past the connection cap: a short 503 written without a thread, then close."""
        body = b'{"error":"too many connections; retry shortly"}'
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nRetry-After: 1\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        try:
            request.settimeout(0.5)
            request.sendall(head + body)
        except OSError:
            pass
        self.shutdown_request(request)
        self.metrics.observe_request("", "", 503, 0.0)

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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return f"inferd/{__version__}"

    def setup(self):
        self.timeout = self.server.state.config.server.request_timeout
        super().setup()

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self):
        started = time.monotonic()
        self.server.begin_request()
        self.server.metrics.request_started()
        self._body_left = self._declared_length()
        path, _, query = self.path.partition("?")
        status = 500
        try:
            try:
                status, headers, body = self._respond(path, parse_qs(query))
            except Exception as exc:
                status, headers, body = self._error_response(exc)
            self._send(status, headers, body)
        finally:
            elapsed = time.monotonic() - started
            self.server.metrics.observe_request(path, self.command, status, elapsed)
            self.server.metrics.request_finished()
            self.server.end_request()
            self._log_access(status, elapsed)

    def _respond(self, path: str, query: dict):
        route = ROUTES.get(path)
        if route is None:
            raise HTTPError(404, "not found")
        method = "GET" if self.command == "HEAD" else self.command
        if method not in route:
            raise HTTPError(405, f"method {self.command} is not allowed here", {"Allow": ", ".join(route)})
        return route[method](self, query)

    def _error_response(self, exc: Exception):
        status = getattr(exc, "http_status", None)
        if isinstance(exc, TimeoutError):
            status, exc = 408, HTTPError(408, "timed out reading the request")
        if status is None or (status >= 500 and not isinstance(exc, EXPECTED_5XX)):
            log.error("internal error on %s %s", self.command, _printable(self.path), exc_info=exc)
            return 500, {}, {"error": "internal error"}
        headers = dict(getattr(exc, "headers", {}))
        if status == 503:
            headers.setdefault("Retry-After", "1")
        return status, headers, {"error": str(exc)}

    def _send(self, status: int, headers: dict, payload):
        if isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {"Content-Type": JSON_TYPE, **headers}
        if self._body_left or self.server.draining:
            # Unread body bytes would be parsed as the next request (STYLE.md): close instead.
            self.close_connection = True
            headers["Connection"] = "close"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

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
            kind = metrics_module.negotiate(self.headers.get("Accept"), fmt)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        content_type, body = self.server.metrics.render(kind)
        return 200, {"Content-Type": content_type}, body

    def _reload(self, query):
        self._authorize_admin()
        self._discard_body()
        if self.server.reload_model is None:
            raise HTTPError(503, "reload is not available")
        ok, message = self.server.reload_model()
        if not ok:
            raise HTTPError(500, f"reload failed, the previous model keeps serving: {message}")
        return 200, {}, {"message": "Model reloaded successfully",
                         "model": self.server.state.model.describe()}

    # -- request bodies ---------------------------------------------------------------------------

    def _declared_length(self) -> int:
        raw = self.headers.get("Content-Length", "0")
        return int(raw) if raw.isdigit() else 0

    def _content_length(self, limit: int) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "chunked request bodies are not supported; send Content-Length")
        values = set(self.headers.get_all("Content-Length") or [])
        if not values:
            raise HTTPError(411, "Content-Length is required")
        raw = values.pop()
        if values or not raw.strip().isdigit():
            raise HTTPError(400, "invalid Content-Length")
        length = int(raw)
        if length > limit:
            raise HTTPError(413, f"request body is {length} bytes; the limit is {limit}")
        return length

    def _body_chunks(self, limit: int):
        """The body in chunks of at most READ_CHUNK bytes; never reads past Content-Length."""
        remaining = self._content_length(limit)
        while remaining:
            chunk = self.rfile.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise HTTPError(400, "request body ended before Content-Length bytes")
            remaining -= len(chunk)
            self._body_left = remaining
            yield chunk

    def _discard_body(self):
        if self._body_left:
            for _ in self._body_chunks(self.server.state.config.limits.max_body_bytes):
                pass

    def _read_uploads(self, state, field_names: tuple[str, ...]) -> list[Upload]:
        limits = state.config.limits
        content_type = self.headers.get("Content-Type", "")
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime == "multipart/form-data":
            return api.uploads_from_multipart(content_type, self._body_chunks(limits.max_body_bytes), limits,
                                              field_names, limits.max_files_per_batch)
        if mime.startswith("image/") or mime == "application/octet-stream":
            return [Upload(None, b"".join(self._body_chunks(limits.max_body_bytes)))]
        raise HTTPError(415, "expected multipart/form-data or an image/* body")

    # -- admin ------------------------------------------------------------------------------------

    def _authorize_admin(self):
        token = self.server.state.config.server.admin_token
        if token:
            scheme, _, given = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise HTTPError(401, "a valid bearer token is required",
                                {"WWW-Authenticate": 'Bearer realm="inferd admin"'})
        elif not is_loopback(self.client_address[0]):
            raise HTTPError(403, "admin endpoints answer loopback clients only (set admin_token to allow others)")

    # -- http.server hooks ------------------------------------------------------------------------

    def send_error(self, code, message=None, explain=None):
        """Errors http.server finds itself (bad request line, too many headers...) as JSON too."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        body = json.dumps({"error": text}).encode()
        self.send_response(code, text)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200:
            self.wfile.write(body)
        path = getattr(self, "path", "")
        self.server.metrics.observe_request(path, getattr(self, "command", "") or "", code, 0.0)
        self._log_access(code, 0.0)

    def log_request(self, code="-", size="-"):
        pass  # one line per request comes from _log_access, with its duration

    def log_message(self, format, *args):
        log.debug("%s %s", self.client_address[0], _printable(format % args))

    def _log_access(self, status: int, seconds: float):
        if self.server.state.config.logging.access_log:
            access_log.info("%s %s %s %d %.1fms", self.client_address[0], getattr(self, "command", None) or "-",
                            _printable(getattr(self, "path", "") or "-"), status, seconds * 1000)


ROUTES = {
    "/infer": {"POST": Handler._infer},
    "/infer/batch": {"POST": Handler._infer_batch},
    "/health": {"GET": Handler._health},
    "/metrics": {"GET": Handler._metrics},
    "/admin/reload": {"POST": Handler._reload},
}


EXPECTED_5XX = (HTTPError, QueueFull, BatcherStopped)


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _printable(text: str) -> str:
    """Client-supplied text made safe for one log line: control and non-ASCII characters escaped."""
    return text.encode("unicode_escape").decode("ascii")
