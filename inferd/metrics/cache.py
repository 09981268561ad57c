"""The response cache's metrics: lookups by result, evictions, and its size, read on demand."""

from __future__ import annotations

from typing import Callable

from .families import Counter, Gauge, Registry

RESULTS = ("hit", "miss")


class CacheMetrics:
    """What the cache observes (`lookup`, `evicted`) and its size gauges (`watch`)."""

    def __init__(self, registry: Registry):
        r = registry
        self._requests = Counter("inferd_cache_requests_total", "Response cache lookups, one per image, by result "
                                 "(hit: answered without decode or inference, a shared computation "
                                 "included; miss).", ("result",), registry=r)
        self._evictions = Counter("inferd_cache_evictions_total", "Entries the response cache let go to stay "
                                  "within max_bytes.", registry=r)
        self._bytes = Gauge("inferd_cache_bytes", "Bytes the response cache holds, entries' overhead included.",
                            unit="bytes", registry=r)
        self._entries = Gauge("inferd_cache_entries", "Entries in the response cache.", registry=r)
        self._results = {result: self._requests.labels(result=result) for result in RESULTS}
        ((_, self._evicted),) = self._evictions.children()  # the unlabelled family's one child

    def lookup(self, hit: bool) -> None:
        self._results["hit" if hit else "miss"].inc()

    def evicted(self, count: int) -> None:
        self._evicted.inc(count)

    def watch(self, stats: Callable[[], object]) -> None:
        """Read the size gauges from `stats()` (anything with `bytes` and `entries`) at render time."""
        self._bytes.set_function(lambda: stats().bytes)
        self._entries.set_function(lambda: stats().entries)

    def sizes(self) -> tuple[float | None, float | None]:
        """(bytes, entries) now; read outside the registry lock (their source takes its own)."""
        return self._bytes.get(), self._entries.get()

    def copy_for_json(self) -> dict:
        """Lookups by result and evictions; the caller holds the registry lock."""
        return {**{result: child.get() for result, child in self._results.items()},
                "evictions": self._evicted.get()}


def cache_json(counts: dict, sizes: tuple) -> dict:
    """The JSON view's "cache" section: hits, misses, hit_ratio (null before any lookup), size."""
    looked_up = counts["hit"] + counts["miss"]
    return {"hits": counts["hit"], "misses": counts["miss"],
            "hit_ratio": counts["hit"] / looked_up if looked_up else None,
            "bytes": sizes[0], "entries": sizes[1], "evictions": counts["evictions"]}
