"""The daemon's inbox and its one flag: signals and admin reload requests become events that the
main loop acts on, one at a time (so every reload runs on the main loop), and `draining` says the
daemon is on its way out.

Signal handlers only call `post` (put_nowait on a SimpleQueue: no locks, no I/O). A handler thread
asking for a reload calls `reload()`, which posts a ReloadRequest and waits for its outcome.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple


WAKE_SECONDS = 0.25


class Reloaded(NamedTuple):
    """What a reload did: ok when nothing failed; what it serves now (or why it failed); and what
    an operator should know although nothing failed (a keys file with no keys)."""

    ok: bool
    message: str
    warnings: tuple[str, ...] = ()


@dataclass(eq=False)
class ReloadRequest:
    """A reload asked for over HTTP (of every model, or of `model` alone); the main loop resolves
    `outcome` with a Reloaded."""

    model: str | None = None
    outcome: Future = field(default_factory=Future)


class Control:
    def __init__(self):
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.draining = False
        self.stop_requested = False  # set by a stop signal's handler, read by work that waits (bounded.py)

    def post(self, event) -> None:
        """Queue an event for the main loop (a signal number or a ReloadRequest); signal-safe."""
        self._events.put_nowait(event)

    def post_stop(self, signum: int) -> None:
        """A stop signal: queued like any event, and flagged at once, so that a reload in progress
        stops waiting for its models and the main loop gets to it; signal-safe."""
        self.stop_requested = True
        self._events.put_nowait(signum)

    def cancel_reloads(self, message: str) -> None:
        """Answer every reload request still queued with a failure (the daemon is stopping)."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, ReloadRequest):
                event.outcome.set_result(Reloaded(False, message))

    def next_event(self, timeout: float | None = None):
        """The next event, in order; raises queue.Empty after `timeout`.

        Waits in slices of WAKE_SECONDS: a signal that lands after the main thread last ran Python
        but before it blocks in the queue's lock only runs its handler (which posts the event)
        once the main thread runs Python again. Blocking without a timeout lost a SIGHUP in 2 of
        30 reloads that followed a POST /admin/reload (tests/service/test_keys.py found it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = WAKE_SECONDS if deadline is None else min(WAKE_SECONDS, max(0.0, deadline - time.monotonic()))
            try:
                return self._events.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def reload(self, model: str | None = None, timeout: float | None = None) -> Reloaded:
        """Ask the main loop for a reload (of `model` alone, or of everything) and wait for what it
        did. Raises what the reload raised, or concurrent.futures.TimeoutError."""
        request = ReloadRequest(model)
        self.post(request)
        return Reloaded(*request.outcome.result(timeout))

    def begin_drain(self) -> None:
        self.draining = True
