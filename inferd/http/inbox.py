"""What other threads hand the waiting room's thread: typed messages on a queue, and a socket
pair whose readable end wakes its selector."""

from __future__ import annotations

import queue
import selectors
import socket
import threading
from dataclasses import dataclass

from .parking import Connection


@dataclass(frozen=True)
class Arrived:
    """A newly accepted connection."""

    sock: socket.socket
    address: tuple


@dataclass(frozen=True)
class Returned:
    """A handler is done with `conn`: KEEP it for its next request, LINGER then close, or CLOSE."""

    conn: Connection
    disposition: str

    @property
    def sock(self) -> socket.socket:
        return self.conn.sock


class Inbox:
    def __init__(self, selector: selectors.BaseSelector):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        selector.register(self._wake_r, selectors.EVENT_READ, None)  # data None: the wake-up socket

    def post(self, message: Arrived | Returned) -> bool:
        """Hand `message` over and wake the selector; False once closed (the caller closes its socket)."""
        with self._lock:
            if self.closed:
                return False
            self._queue.put(message)
        self.wake()
        return True

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the wake-up buffer is full: the room wakes anyway

    def drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def take(self):
        """The messages posted so far, in order."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def shut(self) -> None:
        """Refuse further messages and wake the selector, from any thread."""
        with self._lock:
            self.closed = True
        self.wake()

    def close(self) -> list[Arrived | Returned]:
        """Refuse further messages and close the wake-up sockets; returns the messages still queued
        (their sockets are the caller's to close). The waiting room's thread only."""
        with self._lock:
            self.closed = True
        pending = list(self.take())
        self._wake_r.close()
        self._wake_w.close()
        return pending
