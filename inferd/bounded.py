"""Work that may hang run on a thread of its own and waited for with a deadline, so that the waiter
can give up and go on: reading and loading models from a disk or mount that stalls (issue 21).

Python cannot stop a thread, so work the waiter gave up on runs to its end unobserved, and what
it returns then is handed to `discard` (a loaded model's batcher is stopped, not leaked).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.1  # how often the waiter asks `give_up` while it waits


class TookTooLong(TimeoutError):
    """The work did not finish within its deadline."""


class Interrupted(RuntimeError):
    """The waiter gave up (the daemon is stopping)."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Bounds:
    """How long each piece of bounded work may take, and when to stop waiting for any of it."""

    timeout: float
    give_up: Callable[[], bool] = _never

    def run(self, work: Callable[[], T], *, discard: Callable[[T], None] | None = None, name: str = "bounded") -> T:
        """work() within these bounds; see `run`."""
        return run(work, timeout=self.timeout, give_up=self.give_up, discard=discard, name=name)


def run(work: Callable[[], T], *, timeout: float, give_up: Callable[[], bool] = _never,
        discard: Callable[[T], None] | None = None, name: str = "bounded") -> T:
    """What work() returns (or raise what it raises), run on a daemon thread named `name`. Raises
    TookTooLong after `timeout` seconds, Interrupted as soon as give_up() is true; a result that
    comes after either goes to `discard`."""
    job = _Job(work, discard)
    threading.Thread(target=job.run, name=name, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        wait([job.future], timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
        if job.future.done():
            return job.future.result()
        if give_up() and job.abandon():
            raise Interrupted("interrupted: the daemon is stopping")
        if time.monotonic() >= deadline and job.abandon():
            raise TookTooLong(f"took longer than {timeout:g} s")


class _Job:
    def __init__(self, work: Callable, discard: Callable | None):
        self.work, self.discard = work, discard
        self.future: Future = Future()
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        try:
            result = self.work()
        except BaseException as exc:  # handed to the waiter, who raises it
            with self._lock:
                if not self._abandoned:
                    self.future.set_exception(exc)
            return
        with self._lock:
            abandoned = self._abandoned
            if not abandoned:
                self.future.set_result(result)
        if abandoned and self.discard is not None:
            self.discard(result)

    def abandon(self) -> bool:
        """Stop waiting; False when the work finished just now (its result is then in `future`)."""
        with self._lock:
            if self.future.done():
                return False
            self._abandoned = True
            return True
