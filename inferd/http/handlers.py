"""The threads that answer requests: reusable daemon threads, with a separate cap per kind of
request (the route table's pools), so that /health answers while inference is saturated."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


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
