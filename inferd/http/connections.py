"""Connections between requests, and the threads that answer requests.

`WaitingRoom`: one selector thread holds every connection that is idle (before its first request
or between keep-alive requests), still sending its request head, or being closed. Such a
connection costs a file descriptor and a small buffer, not a thread, so hundreds of idle or
slowloris connections cannot take the threads well-behaved clients need; each phase has its own
deadline (idle_timeout, header_timeout). Once a head is complete it is parsed, here and only here;
the router says which pool answers its path, and a handler thread of that pool runs the exchange
(exchange.py). The thread frees its pool slot, then hands the connection back to wait for its
next request, to be closed gracefully (lingering close), or to be closed.

At the connection cap a new connection displaces the longest-waiting parked one (closing first,
then idle, then those still sending a head), as nginx reuses idle keep-alive connections; only
when every connection is busy in a handler does the new one get an immediate 503.

`HandlerThreads`: reusable daemon threads with a separate cap per kind of request.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import ProtocolError
from .exchange import CLOSE, KEEP, LINGER, Exchange
from .heads import head_length, parse_head

log = logging.getLogger(__name__)

IDLE, HEAD, CLOSING = "idle", "head", "closing"  # phases of a parked connection
EVICTION_ORDER = {CLOSING: 0, IDLE: 1, HEAD: 2}
LINGER_SECONDS = 2.0  # lingering close: how long unread request bytes are drained (RFC 9112 §9.6)
SWEEP_INTERVAL = 0.25  # deadlines are checked this often; timeouts are precise to this much
READ_SIZE = 64 * 1024


@dataclass(eq=False)
class Connection:
    """A client connection; owned by the waiting room or by one handler thread at a time."""

    sock: socket.socket
    address: tuple
    buffer: bytes = b""  # received, not yet consumed: the start of the next request
    head_length: int = 0  # set when a complete head is at the start of `buffer`
    phase: str = IDLE
    deadline: float = 0.0
    since: float = field(default_factory=time.monotonic)


class WaitingRoom:
    """Parks connections between requests on one selector thread; a connection whose head is
    complete goes to a thread of `threads` (the pool its route names) to be served by `exchange`.
    Errors answered from here (a malformed head, 408, 414, 431, 503) come from exchange.refuse."""

    def __init__(self, *, max_connections: int, exchange: Exchange, threads: "HandlerThreads"):
        self.max_connections = max_connections
        self.exchange = exchange
        self.threads = threads
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._parked: dict[Connection, None] = {}  # insertion order: longest parked first
        self._open = 0  # parked + in handlers; only the room's thread changes it
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="http-connections", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def open_connections(self) -> int:
        return self._open

    def parked(self) -> int:
        return len(self._parked)

    # -- called from other threads ----------------------------------------------------------------

    def admit(self, sock: socket.socket, address: tuple) -> None:
        """A newly accepted connection."""
        self._post(("admit", sock, address), sock)

    def give_back(self, conn: Connection, disposition: str) -> None:
        """A handler is done with `conn`: KEEP it for its next request, LINGER then close, or CLOSE."""
        self._post((disposition, conn), conn.sock)

    def close(self) -> None:
        """Close every parked connection and stop; connections given back later are closed."""
        with self._lock:
            self._closed = True
        self._wake()
        if self._thread.ident is None:  # never started (the server failed to bind)
            self._shutdown()
        elif self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _post(self, item: tuple, sock: socket.socket) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._inbox.put(item)
        if closed:
            _close_socket(sock)
        else:
            self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the wake-up buffer is full: the room wakes anyway

    # -- the room's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_sweep = 0.0
        try:
            while not self._closed:
                try:
                    next_sweep = self._turn(next_sweep)
                except Exception:  # a bug; stopping would strand every parked connection
                    log.exception("connection waiting room: unexpected error")
                    time.sleep(SWEEP_INTERVAL)
        finally:
            self._shutdown()

    @property
    def _settings(self):
        return self.exchange.site[1]

    def _turn(self, next_sweep: float) -> float:
        """One pass: read what is readable, take what other threads sent, expire deadlines."""
        for key, _ in self._selector.select(SWEEP_INTERVAL):
            if key.data is None:
                self._drain_wake()
            else:
                self._readable(key.data)
        self._take_inbox()
        now = time.monotonic()
        if now >= next_sweep:
            self._sweep(now)
            next_sweep = now + SWEEP_INTERVAL
        return next_sweep

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "admit":
                self._admit(item[1], item[2])
            elif item[0] == KEEP:
                self._await_next_request(item[1])
            elif item[0] == LINGER:
                self._linger(item[1])
            else:
                self._close(item[1])

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        if self._open >= self.max_connections and not self._evict():
            self._send(sock, self.exchange.refuse(address, 503, "too many connections; retry shortly"))
            _close_socket(sock)
            return
        self._open += 1
        conn = Connection(sock, address)
        try:
            sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        self._park(conn, IDLE, time.monotonic() + self._settings.idle_timeout)

    def _evict(self) -> bool:
        """Close the parked connection that matters least (see the module docstring)."""
        if not self._parked:
            return False
        victim = min(self._parked, key=lambda c: (EVICTION_ORDER[c.phase], c.since))
        log.debug("connection cap (%d) reached: closing a %s connection from %s",
                  self.max_connections, victim.phase, victim.address[0])
        self._close(victim)
        return True

    def _park(self, conn: Connection, phase: str, deadline: float) -> None:
        conn.phase, conn.deadline, conn.since = phase, deadline, time.monotonic()
        if conn not in self._parked:
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):  # closed under us
                self._close(conn)
                return
            self._parked[conn] = None

    def _unpark(self, conn: Connection) -> None:
        if self._parked.pop(conn, False) is None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, conn: Connection) -> None:
        self._unpark(conn)
        _close_socket(conn.sock)
        self._open -= 1

    def _await_next_request(self, conn: Connection) -> None:
        try:
            conn.sock.setblocking(False)
        except OSError:
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
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.buffer = b""
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
        settings = self._settings
        try:
            length = head_length(conn.buffer, max_request_line=settings.max_request_line,
                                 max_header_bytes=settings.max_header_bytes)
            head = parse_head(conn.buffer[:length], max_header_count=settings.max_header_count) if length else None
        except ProtocolError as exc:
            self._refuse(conn, exc.http_status, str(exc))
            return
        if head is None:
            return
        self._unpark(conn)
        conn.head_length = length
        try:
            started = self.threads.try_run(self.exchange.router.pool_for(head.path), lambda: self._serve(conn, head))
        except Exception:  # e.g. no thread could be started
            log.exception("cannot start a request handler")
            started = False
        if not started:
            self._refuse(conn, 503, "too many requests in progress; retry shortly", head)

    def _serve(self, conn: Connection, head) -> Callable[[], None]:
        """On a handler thread: one request. Returns the give-back, which HandlerThreads runs once
        this request's slot is free, so the connection's next request can never find its own
        previous request still counted against the cap."""
        try:
            disposition = self.exchange.serve(conn, head)
        except Exception:  # a bug in the exchange: the connection must still be given back
            log.exception("request handler failed")
            disposition = CLOSE
        return lambda: self.give_back(conn, disposition)

    def _refuse(self, conn: Connection, status: int, message: str, head=None) -> None:
        self._send(conn.sock, self.exchange.refuse(conn.address, status, message, head))
        self._linger(conn)

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self._parked if c.deadline <= now]:
            if conn.phase == HEAD:
                self._send(conn.sock, self.exchange.refuse(conn.address, 408, "timed out reading the request head"))
            self._close(conn)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        """Best effort, never blocking: an error answer is small and the send buffer is empty."""
        try:
            sock.setblocking(False)
            sock.send(data)
        except OSError:
            pass

    def _shutdown(self) -> None:
        for conn in list(self._parked):
            self._close(conn)
        with self._lock:
            self._closed = True
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            _close_socket(item[1] if item[0] == "admit" else item[1].sock)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class HandlerThreads:
    """Runs jobs on reusable daemon threads, at most caps[kind] jobs of each kind at once.

    Daemon threads on purpose: a drain waits for requests in flight (the server's wait_idle),
    not for threads. A thread idle for IDLE_EXIT seconds ends.
    """

    IDLE_EXIT = 30.0

    def __init__(self, caps: dict[str, int]):
        self._slots = {kind: threading.BoundedSemaphore(n) for kind, n in caps.items()}
        self._max_threads = sum(caps.values())
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job minus jobs queued; may dip below 0 briefly

    def try_run(self, kind: str, job: Callable[[], Callable[[], None] | None]) -> bool:
        """Start `job` on a thread, or return False at once when `kind` is at its cap. What the job
        returns, if anything, is called after its slot is released."""
        if not self._slots[kind].acquire(blocking=False):
            return False
        with self._lock:
            self._jobs.put((kind, job))
            self._idle -= 1
            start = self._idle < 0 and self._threads < self._max_threads
            if start:
                self._threads += 1
                self._idle += 1
        if start:
            threading.Thread(target=self._work, name="http-handler", daemon=True).start()
        return True

    def threads(self) -> int:
        return self._threads

    def _work(self) -> None:
        while True:
            try:
                kind, job = self._jobs.get(timeout=self.IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            follow_up = None
            try:
                follow_up = job()
            except BaseException:  # jobs handle their own errors; this is a bug, not a client
                log.exception("request handler failed")
            finally:
                self._slots[kind].release()
                with self._lock:
                    self._idle += 1
            if follow_up is not None:
                follow_up()
