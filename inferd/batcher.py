"""Dynamic batching in front of the session: a bounded queue, one batch at a time, futures back to handlers.

A batch starts with the first queued item and closes when it holds `max_batch_size` items or
`max_queue_delay` has passed since that first item was queued (not since the thread woke up).
The inference thread runs the batches, except one from a user that is alone (no other user holds
the batcher, nothing is queued or running, no delay to wait for company): its submitter runs it.
Handing a lone image to a sleeping thread costs a wake-up, and on 2 cores onnxruntime's worker
then often lands on the caller's core and the two share it: up to 7 ms more for one
EfficientNet-Lite0 run (README.md, "Performance"). Under load the inference threads keep running
batch after batch without a hand-off. At most `workers` batches are in `model.run` at once (one
per inference thread; the lone submitter's run only when none is).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The inference queue is at its bound; the client should retry later."""

    http_status = 503


class BatcherStopped(RuntimeError):
    http_status = 503


@dataclass
class _Item:
    tensor: np.ndarray
    future: Future
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects tensors into batches for `model.run`; resolves each future with its row of scores."""

    def __init__(self, model, *, max_batch_size: int, max_queue_delay_ms: float, max_queue_size: int,
                 metrics=None, gate: "RunGate | None" = None, workers: int = 1):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.metrics = metrics  # observe_queue_wait(seconds), observe_batch(size, seconds)
        self.gate = gate or RunGate(workers)
        self.workers = workers
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running = 0  # batches in model.run, on inference threads or a submitter's
        self._in_model: dict[int, float] = {}  # thread id -> when its batch entered model.run
        self._users = 0  # holders of user(): requests that may submit
        self._users_changed = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, name=f"inference-{model.name}", daemon=True)
                         for _ in range(workers)]

    def start(self) -> "Batcher":
        for thread in self._threads:
            thread.start()
        return self

    def depth(self) -> int:
        return len(self._queue)

    @contextlib.contextmanager
    def user(self):
        """Hold the batcher as one user (a request that may submit). A user that is alone gets
        its batch run on its own thread (see the module docstring); `wait_unused` waits for none."""
        with self._users_changed:
            self._users += 1
        try:
            yield self
        finally:
            with self._users_changed:
                self._users -= 1
                self._users_changed.notify_all()

    def users(self) -> int:
        return self._users

    def wait_unused(self, timeout: float | None = None) -> bool:
        """Block until no user holds the batcher (or `timeout` passes); True when none does."""
        with self._users_changed:
            return self._users_changed.wait_for(lambda: self._users == 0, timeout)

    def submit(self, tensors: list[np.ndarray]) -> list[Future]:
        """Queue all tensors or none: raises QueueFull when they do not fit, BatcherStopped after stop().

        When the caller is the batcher's only user and the tensors make a batch that closes at
        once, they run here, on the caller's thread, and the futures are already resolved on return.
        The user count is read without its lock: a stale answer only picks the other thread.
        """
        alone = self._users == 1
        items = [_Item(t, Future()) for t in tensors]
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the model is being unloaded")
            if len(self._queue) + len(items) > self.max_queue_size:
                raise QueueFull(f"inference queue is full ({self.max_queue_size} images)")
            run_here = alone and self._closes_at_once(len(items))
            if run_here:
                self._running += 1
            else:
                self._queue.extend(items)
                self._cond.notify()
        if run_here:
            self._run_and_release(items)
        return [item.future for item in items]

    def _closes_at_once(self, count: int) -> bool:
        full = count == self.max_batch_size
        return not self._queue and not self._running and count <= self.max_batch_size and (full or not self.max_delay)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish everything queued, and end the threads (within `timeout`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def alive(self, stall_after: float) -> bool:
        """True while the threads run and no batch has been in model.run for `stall_after` seconds."""
        now = time.monotonic()
        stuck = any(now - since >= stall_after for since in list(self._in_model.values()))
        return all(thread.is_alive() for thread in self._threads) and not stuck

    def running(self) -> bool:
        """True while a batch is in model.run, or an inference thread has not ended."""
        return bool(self._running) or any(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_and_release(batch)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue or self._running >= self.workers:
                if self._stopping and not self._queue:
                    return None
                self._cond.wait(timeout=1.0)
            deadline = self._queue[0].queued_at + self.max_delay
            while len(self._queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            count = min(self.max_batch_size, len(self._queue))
            self._running += 1
            return [self._queue.popleft() for _ in range(count)]

    def _run_and_release(self, batch: list[_Item]) -> None:
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _run(self, batch: list[_Item]) -> None:
        tensors = np.stack([item.tensor for item in batch])
        me = threading.get_ident()
        try:
            with self.gate.turn():
                started = time.monotonic()
                self._in_model[me] = started
                try:
                    scores = self.model.run(tensors)
                finally:
                    del self._in_model[me]
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                item.future.set_exception(exc)
            return
        finished = time.monotonic()
        self._observe(batch, started, finished)
        for item, row in zip(batch, scores):
            item.future.set_result(row)

    def _observe(self, batch: list[_Item], started: float, finished: float) -> None:
        if self.metrics is None:
            return
        for item in batch:
            self.metrics.observe_queue_wait(started - item.queued_at)
        self.metrics.observe_batch(len(batch), finished - started)


class RunGate:
    """At most `permits` batches in a model at once across every batcher that shares the gate, in
    the order they asked (a ticket lock): sessions use the cores they are given, so two models under
    load take turns instead of oversubscribing the cores, and neither can starve the other."""

    def __init__(self, permits: int = 1):
        self._changed = threading.Condition()
        self._permits = permits
        self._next = 0  # the next ticket to hand out
        self._admitted = 0  # tickets below this have been let in
        self._inside = 0

    @contextlib.contextmanager
    def turn(self):
        with self._changed:
            ticket = self._next
            self._next += 1
            self._changed.wait_for(lambda: ticket == self._admitted and self._inside < self._permits)
            self._admitted += 1
            self._inside += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()
