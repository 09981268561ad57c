"""Connections between requests: one selector thread holds every connection that is idle (before
its first request or between keep-alive requests), still sending its request head, or being
closed. Such a connection costs a file descriptor and a small buffer, not a thread, so hundreds of
idle or slowloris connections cannot take the threads well-behaved clients need; each phase has
its own deadline (idle_timeout, header_timeout).

The room's parts: the inbox (what other threads hand it), the parking (who waits, till when, who
makes room at the cap), the head gate (a complete head, parsed here and only here, and its route),
and the handler threads of the pool the route names, which run the exchange (exchange.py). A
handler frees its pool slot, then hands the connection back to wait for its next request, to be
closed gracefully (lingering close), or to be closed.

At the connection cap a new connection displaces the parked one that matters least (parking.py);
only when every connection is busy in a handler does the new one get an immediate 503.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Callable

from .errors import ProtocolError
from .exchange import CLOSE, KEEP, LINGER, Exchange
from .gate import HeadGate, Routed
from .handlers import HandlerThreads
from .inbox import Arrived, Inbox, Returned
from .parking import CLOSING, HEAD, IDLE, Connection, Parking, close_socket, send_now
from .settings import READ_SIZE

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # lingering close: how long unread request bytes are drained (RFC 9112 §9.6)
SWEEP_INTERVAL = 0.25  # deadlines are checked this often; timeouts are precise to this much

class WaitingRoom:
    """Parks connections between requests on one selector thread; a connection whose head is
    complete goes to a thread of `threads` (the pool its route names) to be served by `exchange`.
    Errors answered from here (a malformed head, 408, 414, 431, 503) come from exchange.refuse."""

    def __init__(self, *, max_connections: int, exchange: Exchange, threads: HandlerThreads):
        self.max_connections = max_connections
        self.exchange = exchange
        self.threads = threads
        self._selector = selectors.DefaultSelector()
        self._inbox = Inbox(self._selector)
        self._parking = Parking(self._selector)
        self._gate = HeadGate(exchange.router)
        self._open = 0  # parked + in handlers; only the room's thread changes it
        self._thread = threading.Thread(target=self._run, name="http-connections", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def open_connections(self) -> int:
        return self._open

    def parked(self) -> int:
        return len(self._parking)

    # -- called from other threads ----------------------------------------------------------------

    def admit(self, sock: socket.socket, address: tuple) -> None:
        """A newly accepted connection."""
        self._post(Arrived(sock, address))

    def give_back(self, conn: Connection, disposition: str) -> None:
        """A handler is done with `conn`: KEEP it for its next request, LINGER then close, or CLOSE."""
        self._post(Returned(conn, disposition))

    def close(self) -> None:
        """Close every parked connection and stop; connections given back later are closed."""
        self._inbox.shut()
        if self._thread.ident is None:  # never started (the server failed to bind)
            self._shutdown()
        elif self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _post(self, message: Arrived | Returned) -> None:
        if not self._inbox.post(message):
            close_socket(message.sock)

    # -- the room's thread ------------------------------------------------------------------------

    @property
    def _settings(self):
        return self.exchange.site.http

    def _run(self) -> None:
        next_sweep = 0.0
        try:
            while not self._inbox.closed:
                try:
                    next_sweep = self._turn(next_sweep)
                except Exception:  # a bug; stopping would strand every parked connection
                    log.exception("connection waiting room: unexpected error")
                    time.sleep(SWEEP_INTERVAL)
        finally:
            self._shutdown()

    def _turn(self, next_sweep: float) -> float:
        """One pass: read what is readable, take what other threads sent, expire deadlines."""
        for key, _ in self._selector.select(SWEEP_INTERVAL):
            if key.data is None:
                self._inbox.drain_wake()
            else:
                self._readable(key.data)
        for message in self._inbox.take():
            if isinstance(message, Arrived):
                self._arrived(message.sock, message.address)
            elif message.disposition == KEEP:
                self._await_next_request(message.conn)
            elif message.disposition == LINGER:
                self._linger(message.conn)
            else:
                self._close(message.conn)
        now = time.monotonic()
        if now >= next_sweep:
            self._sweep(now)
            next_sweep = now + SWEEP_INTERVAL
        return next_sweep

    def _arrived(self, sock: socket.socket, address: tuple) -> None:
        if self._open >= self.max_connections and not self._evict():
            send_now(sock, self.exchange.refuse(address, 503, "too many connections; retry shortly"))
            close_socket(sock)
            return
        self._open += 1
        conn = Connection(sock, address)
        if not conn.nonblocking():
            self._close(conn)
            return
        self._park(conn, IDLE, time.monotonic() + self._settings.idle_timeout)

    def _evict(self) -> bool:
        victim = self._parking.least_needed()
        if victim is None:
            return False
        log.debug("connection cap (%d) reached: closing a %s connection from %s",
                  self.max_connections, victim.phase, victim.address[0])
        self._close(victim)
        return True

    def _park(self, conn: Connection, phase: str, deadline: float) -> None:
        if not self._parking.park(conn, phase, deadline):
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        self._parking.unpark(conn)
        close_socket(conn.sock)
        self._open -= 1

    def _await_next_request(self, conn: Connection) -> None:
        if not conn.nonblocking():
            self._close(conn)
            return
        now = time.monotonic()
        if conn.buffer:  # pipelined: the next request has begun already
            self._park(conn, HEAD, now + self._settings.header_timeout)
            self._check_head(conn)
        else:
            self._park(conn, IDLE, now + self._settings.idle_timeout)

    def _linger(self, conn: Connection) -> None:
        """Send FIN, then read and drop what the client still sends, so that our answer is not
        destroyed by a reset when the client has unread bytes in flight (RFC 9112 §9.6)."""
        if not conn.half_close():
            self._close(conn)
            return
        self._park(conn, CLOSING, time.monotonic() + LINGER_SECONDS)

    def _readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if conn.phase == CLOSING:
            return
        if conn.phase == IDLE:  # the head's clock starts with its first byte
            conn.phase, conn.deadline = HEAD, time.monotonic() + self._settings.header_timeout
        conn.buffer += data
        self._check_head(conn)

    def _check_head(self, conn: Connection) -> None:
        conn.buffer = conn.buffer.lstrip(b"\r\n")  # empty lines before a request line (RFC 9112 §2.2)
        if not conn.buffer:
            return
        try:
            checked = self._gate.check(conn.buffer, self._settings)
        except ProtocolError as exc:
            self._refuse(conn, exc.http_status, str(exc))
            return
        if checked is None:
            return
        self._parking.unpark(conn)
        conn.head_length, routed = checked
        try:
            started = self.threads.try_run(routed.pool, lambda: self._serve(conn, routed))
        except Exception:  # e.g. no thread could be started
            log.exception("cannot start a request handler")
            started = False
        if not started:
            self._refuse(conn, 503, "too many requests in progress; retry shortly", routed)

    def _serve(self, conn: Connection, routed: Routed) -> Callable[[], None]:
        """On a handler thread: one request. Returns the give-back, which HandlerThreads runs once
        this request's slot is free, so the connection's next request can never find its own
        previous request still counted against the cap."""
        try:
            disposition = self.exchange.serve(conn, routed)
        except Exception:  # a bug in the exchange: the connection must still be given back
            log.exception("request handler failed")
            disposition = CLOSE
        return lambda: self.give_back(conn, disposition)

    def _refuse(self, conn: Connection, status: int, message: str, routed: Routed | None = None) -> None:
        conn.send_now(self.exchange.refuse(conn.address, status, message, routed))
        self._linger(conn)

    def _sweep(self, now: float) -> None:
        for conn in self._parking.expired(now):
            if conn.phase == HEAD:
                conn.send_now(self.exchange.refuse(conn.address, 408, "timed out reading the request head"))
            self._close(conn)

    def _shutdown(self) -> None:
        for conn in self._parking:
            self._close(conn)
        for message in self._inbox.close():
            close_socket(message.sock)
        self._selector.close()
