"""The snapshot a request serves from: one (config, model, batcher), built whole and retired whole.

A reload builds a new State and swaps the server's reference; the old one is retired once the
requests that hold it have let go, so nothing queued on it is lost.
"""

from __future__ import annotations

import contextlib
import threading
import time

from . import model as model_module
from .batcher import Batcher
from .config import Config


class State:
    """Read-only after construction; `lease()` marks a request as using it."""

    def __init__(self, config: Config, model: model_module.Model, batcher: Batcher):
        self.config = config
        self.model = model
        self.batcher = batcher
        self.loaded_at = time.time()
        self._leases = 0
        self._changed = threading.Condition()

    def leased_once(self) -> bool:
        """True when exactly one request holds this state (the caller's, under its lease).
        Read without the lock: a stale answer only makes the batcher pick the other thread."""
        return self._leases == 1

    @contextlib.contextmanager
    def lease(self):
        with self._changed:
            self._leases += 1
        try:
            yield self
        finally:
            with self._changed:
                self._leases -= 1
                self._changed.notify_all()

    def retire(self, timeout: float) -> None:
        """Wait (up to `timeout`) for every lease to end, then let the batcher finish and stop."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(lambda: self._leases == 0, timeout)
        self.batcher.stop(max(0.0, deadline - time.monotonic()))


def build(config: Config, metrics=None) -> State:
    """Load and warm the model the config names and start its inference thread.

    Raises model.ModelError when the model cannot be served; nothing is left running then.
    """
    batching = config.batching
    model = model_module.load(
        config.model_dir(), config.model_file(), config.labels_path(),
        intra_op_threads=config.model.intra_op_threads, inter_op_threads=config.model.inter_op_threads,
        warmup_batch=batching.max_batch_size,
    )
    batcher = Batcher(model, max_batch_size=batching.max_batch_size,
                      max_queue_delay_ms=batching.max_queue_delay_ms,
                      max_queue_size=batching.max_queue_size, metrics=metrics)
    return State(config, model, batcher.start())
