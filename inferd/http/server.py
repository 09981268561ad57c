"""The listening socket: accept connections into the waiting room, count requests in flight for
a drain, and take a new configuration whole on reload.

`socketserver.TCPServer` accepts (its serve_forever/shutdown loop is what the daemon drives); the
waiting room (connections.py) and its handler threads do the rest.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import socketserver
import time

from .connections import WaitingRoom
from .exchange import Exchange
from .handlers import HandlerThreads
from .messages import INFERENCE, OTHER
from .router import Router

log = logging.getLogger(__name__)


class HttpServer(socketserver.TCPServer):
    """Serves `routes` with `context` handed to every route.

    `control.draining` (set by the daemon before shutdown()) makes every answer close its
    connection, and makes server_close() leave parked keep-alive connections to be answered until
    the process exits; without it server_close() closes them too.
    """

    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address, *, router: Router, context, metrics, control, site, listen_socket=None):
        self.control = control
        self.metrics = metrics
        config = site.config
        limits = config.limits
        _raise_fd_limit(config.server.max_connections + 256)
        self.exchange = Exchange(router, context, metrics, control, site)
        self.threads = HandlerThreads({INFERENCE: limits.max_inference_requests, OTHER: limits.max_other_requests})
        self.room = WaitingRoom(max_connections=config.server.max_connections, exchange=self.exchange,
                                threads=self.threads)
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

    def configure(self, site) -> None:
        """Take a reloaded site: every request from now on reads its limits."""
        self.exchange.configure(site)

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
        if not self.control.draining:
            self.room.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight or `timeout` passes; True when idle."""
        return self.exchange.wait_idle(timeout)


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
