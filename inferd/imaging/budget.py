"""How much memory images being decoded may take at once, across all requests.

The pixel limit alone does not bound memory: a 124 KB PNG can declare 8000x8000 16-bit pixels
(128 MB decoded). Each image's cost is estimated from its header before any pixel is decoded
(`preprocess.decode_cost`); an image that costs more than the whole budget is refused (413), one
that does not fit now waits up to `wait` seconds for room and is then refused with 503. At most
`max_images` images decode at once (decoding is CPU-bound: more than a few per core only hold more
memory at once, not finish sooner); the others wait their turn within the same `wait`.

glibc keeps memory freed in its heaps mapped, so after a large image RSS would stay where the
decode took it; the heaps are trimmed after each image that cost `TRIM_AFTER` bytes or more.
(A fixed mmap threshold would also give such memory back, but every large block a request
allocates would then be a fresh mapping: 18-24% fewer 12 MP photos per second.)
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading

from .. import cpus, libc
from .errors import DecodeBusy, ImageTooLarge

MB = 1024 * 1024
TRIM_AFTER = 64 * MB


class DecodeBudget:
    def __init__(self, max_bytes: int, wait: float = 5.0, max_images: int = 0):
        self.max_bytes = max_bytes
        self.max_images = max_images or 2 * cpus.available()
        self.wait = wait
        self._used = 0
        self._images = 0
        self._changed = threading.Condition()
        self._waiting: collections.deque[int] = collections.deque()  # tickets, first come first
        self._tickets = itertools.count()

    def resize(self, max_bytes: int) -> None:
        with self._changed:
            self.max_bytes = max_bytes
            self._changed.notify_all()

    def used(self) -> int:
        return self._used

    @contextlib.contextmanager
    def reserve(self, cost: int):
        """Hold `cost` bytes of the budget while decoding. Raises ImageTooLarge (413) when the
        image could never fit, DecodeBusy (503) when it did not fit within `wait` seconds."""
        with self._changed:
            if cost > self.max_bytes:
                raise ImageTooLarge(f"decoding this image needs {cost / MB:.0f} MB; the limit is "
                                    f"{self.max_bytes / MB:.0f} MB ([limits] max_decode_bytes)")
            self._wait_turn(cost)
            self._used += cost
            self._images += 1
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._images -= 1
                self._changed.notify_all()
            if cost >= TRIM_AFTER:
                libc.trim()

    def _wait_turn(self, cost: int) -> None:
        """Wait (holding the lock) until this image is the first in line and fits; in the order
        they came, so that under load no image waits behind ones that came after it (12 MP photos
        at 16 connections under a 1-CPU quota, AMD EPYC Zen 5: p99 1.85 s in wake-up order, 0.67 s
        in this one; `python -m bench.versus TREE --cpu-quota 1`)."""
        ticket = next(self._tickets)
        self._waiting.append(ticket)
        turn = lambda: (self._waiting[0] == ticket and self._used + cost <= self.max_bytes  # noqa: E731
                        and self._images < self.max_images)
        try:
            if not self._changed.wait_for(turn, self.wait):
                raise DecodeBusy("too many large images are being decoded; retry shortly")
        finally:
            self._waiting.remove(ticket)
            self._changed.notify_all()
