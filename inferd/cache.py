"""The response cache: answers by content key, least recently used out first, bounded by bytes.

Knows nothing of images, models or HTTP: a key is bytes (the service hashes what changes an
answer into it), a value is any object whose `sys.getsizeof` is its real size (a numpy array
that owns its data), a tag names the context an entry belongs to (so that entries of models no
longer served can be dropped at once). Every operation is O(1) under one short lock, except
`retain` and `resize`, which run on reload.

Single flight: the first `begin` of a key that is neither stored nor being computed makes its
caller the leader; later callers of the same key get the leader's Future and wait for it
instead of computing it again. The leader ends the flight with `fill` (the value is stored and
handed to the waiters) or `fail` (the error is handed to the waiters, nothing is stored).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

# Bytes an entry costs beside its key and value: its OrderedDict node and dict slot (about 100
# bytes on CPython 3.11) and its _Entry object (56); tests/service/test_cache.py checks the total against
# tracemalloc.
ENTRY_OVERHEAD = 160


@dataclass(frozen=True)
class Lookup:
    """What `begin` found: a stored value (`hit`), another caller's Future to wait for
    (`flight`), or neither: the caller leads and must `fill` or `fail` the key."""

    key: bytes
    hit: bool = False
    value: object = None
    flight: Future | None = None

    @property
    def leads(self) -> bool:
        return not self.hit and self.flight is None


@dataclass(frozen=True)
class CacheStats:
    max_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int


class _Entry:
    __slots__ = ("value", "tag", "size")

    def __init__(self, value, tag, size: int):
        self.value, self.tag, self.size = value, tag, size


class ResponseCache:
    """An LRU map from key to value holding at most `max_bytes` (0: nothing is stored; the
    service does not consult a cache that is off). `observer`, when given, has
    `lookup(hit: bool)` and `evicted(count)`."""

    def __init__(self, max_bytes: int = 0, observer=None):
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._flights: dict[bytes, Future] = {}
        self._max_bytes = max_bytes
        self._bytes = 0
        self._counts = {"hits": 0, "misses": 0, "evictions": 0}
        self._observer = observer

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def begin(self, key: bytes) -> Lookup:
        """Look `key` up: a hit moves it to the most recently used end."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                found = Lookup(key, hit=True, value=entry.value)
            else:
                flight = self._flights.get(key)
                if flight is None:
                    self._flights[key] = Future()
                found = Lookup(key, flight=flight)
            self._counts["misses" if found.leads else "hits"] += 1
        if self._observer is not None:
            self._observer.lookup(not found.leads)
        return found

    def fill(self, key: bytes, value, tag=None) -> None:
        """End the flight of `key` with `value`, stored under `tag` unless it is larger than the
        whole cache; least recently used entries leave until the rest fits."""
        size = sys.getsizeof(value) + sys.getsizeof(key) + ENTRY_OVERHEAD
        with self._lock:
            flight = self._flights.pop(key, None)
            if size <= self._max_bytes:
                self._store(key, _Entry(value, tag, size))
            evicted = self._shrink(self._max_bytes)
        self._evicted(evicted)
        if flight is not None:
            flight.set_result(value)

    def fail(self, key: bytes, error: BaseException) -> None:
        """End the flight of `key` with `error`: its waiters get it; nothing is stored."""
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is not None:
            flight.set_exception(error)

    def resize(self, max_bytes: int) -> None:
        """A new budget; entries leave, least recently used first, until the rest fits."""
        with self._lock:
            self._max_bytes = max_bytes
            evicted = self._shrink(max_bytes)
        self._evicted(evicted)

    def retain(self, tags) -> int:
        """Drop every entry whose tag is not in `tags`; returns how many left (not counted as
        evictions: nothing could ever ask for them again)."""
        with self._lock:
            gone = [key for key, entry in self._entries.items() if entry.tag not in tags]
            for key in gone:
                self._bytes -= self._entries.pop(key).size
        return len(gone)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._max_bytes, self._bytes, len(self._entries), **self._counts)

    def _store(self, key: bytes, entry: _Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = entry
        self._bytes += entry.size

    def _shrink(self, budget: int) -> int:
        evicted = 0
        while self._bytes > budget:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            evicted += 1
        self._counts["evictions"] += evicted
        return evicted

    def _evicted(self, count: int) -> None:
        if count and self._observer is not None:
            self._observer.evicted(count)
