"""The connections parked on the waiting room's selector, each in a phase with its deadline: which
one makes room at the connection cap, and which are past their deadline. Only the waiting room's
thread uses it."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field

IDLE, HEAD, CLOSING = "idle", "head", "closing"  # before a request (or between two), sending a head, being closed
EVICTION_ORDER = {CLOSING: 0, IDLE: 1, HEAD: 2}  # who makes room first at the cap, as nginx reuses idle ones


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

    def send_now(self, data: bytes) -> None:
        send_now(self.sock, data)

    def half_close(self) -> bool:
        """Send FIN and go on reading (a lingering close); False when the socket is gone."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.setblocking(False)
        except OSError:
            return False
        self.buffer = b""
        return True

    def nonblocking(self) -> bool:
        """Back to non-blocking reads for the selector; False when the socket is gone."""
        try:
            self.sock.setblocking(False)
        except OSError:
            return False
        return True


def send_now(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: an error answer is small and the send buffer is empty."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass


def close_socket(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class Parking:
    def __init__(self, selector: selectors.BaseSelector):
        self._selector = selector
        self._parked: dict[Connection, None] = {}  # insertion order: longest parked first

    def __len__(self) -> int:
        return len(self._parked)

    def __iter__(self):
        return iter(list(self._parked))

    def park(self, conn: Connection, phase: str, deadline: float) -> bool:
        """Watch `conn` for reading in `phase` until `deadline`; False when its socket is closed."""
        conn.phase, conn.deadline, conn.since = phase, deadline, time.monotonic()
        if conn in self._parked:
            return True
        try:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):  # closed under us
            return False
        self._parked[conn] = None
        return True

    def unpark(self, conn: Connection) -> None:
        if self._parked.pop(conn, False) is None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def expired(self, now: float) -> list[Connection]:
        return [conn for conn in self._parked if conn.deadline <= now]

    def least_needed(self) -> Connection | None:
        """The connection to close to make room: one being closed, else the longest idle one, else
        the one that has been sending its head the longest; None when none is parked."""
        return min(self._parked, key=lambda c: (EVICTION_ORDER[c.phase], c.since), default=None)
