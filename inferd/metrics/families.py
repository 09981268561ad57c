"""Counter, Gauge and Histogram families and the Registry that holds them.

In the shape of prometheus client_python, but small: families have fixed label names and
``labels(**kv)`` returns a cached child. Every family of a Registry shares the registry's one
re-entrant lock, so one update is one short critical section, ``registry.atomically()`` makes
several updates one (a scrape sees all or none of them), and ``collect()`` copies the numbers of
one consistent moment into snapshots that the exposition formats render outside the lock.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

_log = logging.getLogger("inferd.metrics")

# Upper bounds in seconds: from half a millisecond (a queue wait, a small resize) to ten seconds
# (a large batch on a slow CPU). +Inf is added by Histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# ---------------------------------------------------------------------------------------------
# Snapshots: what a family looks like at one instant, independent of the output format.


@dataclass(frozen=True)
class Sample:
    """One line of output: ``family name + suffix{labels} value``."""

    suffix: str  # "", "_total", "_bucket", "_count" or "_sum"
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class FamilySnapshot:
    """A family at one instant. ``name`` is the OpenMetrics family name: no ``_total`` on counters."""

    name: str
    documentation: str
    type: str  # "counter", "gauge" or "histogram"
    unit: str
    samples: tuple[Sample, ...]


# ---------------------------------------------------------------------------------------------
# Families and their children.


class _Family:
    """A metric family: a name, help text, fixed label names and one child per label-value tuple."""

    type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 *, unit: str = "", registry: Registry | None = None):
        if not _METRIC_NAME_RE.match(name):
            raise ValueError(f"invalid metric name: {name!r}")
        for label in labelnames:
            if not _LABEL_NAME_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name: {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label name in {labelnames!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.unit = unit
        if unit and not self._base_name().endswith("_" + unit):
            raise ValueError(f"metric {name!r} must end with its unit {unit!r}")
        self._lock = registry.lock if registry is not None else threading.RLock()
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def _base_name(self) -> str:
        return self.name

    def exposed_names(self) -> tuple[str, ...]:
        """Every name this family puts on the wire, in either format (for clash detection)."""
        return (self.name,)

    def _key(self, labelvalues: dict[str, str]) -> tuple[str, ...]:
        if len(labelvalues) != len(self.labelnames) or not all(n in labelvalues for n in self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {tuple(labelvalues)}")
        return tuple(str(labelvalues[n]) for n in self.labelnames)

    def labels(self, **labelvalues: str):
        """Return the child for these label values, creating it on first use. Raises ValueError
        unless exactly the family's label names are given."""
        key = self._key(labelvalues)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._new_child())
        return child

    def remove(self, **labelvalues: str) -> None:
        """Forget the child for these label values (it disappears from the output)."""
        key = self._key(labelvalues)
        with self._lock:
            self._children.pop(key, None)

    def children(self) -> list[tuple[tuple[str, ...], object]]:
        """(label values, child) for every child, in creation order."""
        with self._lock:
            return list(self._children.items())

    def clear(self) -> None:
        """Forget every child of a labelled family."""
        if self.labelnames:
            with self._lock:
                self._children.clear()

    def _unlabelled(self):
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._children[()]

    def _new_child(self):
        raise NotImplementedError

    def _copy_locked(self) -> list[tuple[tuple[str, ...], object]]:
        """Copy every child's state; the caller holds the lock."""
        return [(key, child._copy_locked()) for key, child in self._children.items()]

    def _snapshot(self, copied: list[tuple[tuple[str, ...], object]]) -> FamilySnapshot:
        """Turn copied state into samples; runs outside the lock."""
        samples: list[Sample] = []
        for key, state in sorted(copied, key=lambda item: item[0]):
            labels = tuple(zip(self.labelnames, key))
            samples.extend(self._samples(labels, state))
        return FamilySnapshot(self._base_name(), self.documentation, self.type, self.unit,
                              tuple(samples))

    def _samples(self, labels, state) -> Iterable[Sample]:
        raise NotImplementedError


class _CounterChild:
    __slots__ = ("_lock", "_value")

    def __init__(self, lock):
        self._lock = lock
        self._value = 0

    def inc(self, amount: float = 1) -> None:
        """Add amount (>= 0; a counter never goes down). Raises ValueError otherwise."""
        if not amount >= 0:
            raise ValueError(f"counters only go up; got {amount!r}")
        with self._lock:
            self._value += amount

    def get(self) -> float:
        return self._value

    def _copy_locked(self):
        return self._value


class Counter(_Family):
    """A monotonically increasing count. The name must end in ``_total``."""

    type = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), **kw):
        if not name.endswith("_total"):
            raise ValueError(f"counter names end in _total: {name!r}")
        super().__init__(name, documentation, labelnames, **kw)

    def _base_name(self) -> str:
        return self.name[: -len("_total")]

    def exposed_names(self):
        return (self._base_name(), self.name)

    def _new_child(self):
        return _CounterChild(self._lock)

    def inc(self, amount: float = 1) -> None:
        self._unlabelled().inc(amount)

    def _samples(self, labels, state):
        yield Sample("_total", labels, state)


class _GaugeChild:
    __slots__ = ("_lock", "_value", "_function")

    def __init__(self, lock):
        self._lock = lock
        self._value = 0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self._value -= amount

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Compute the value on demand by calling function at render time, outside the registry
        lock (it may take locks of its own). If it raises, the sample is left out of that render."""
        with self._lock:
            self._function = function

    def get(self) -> float | None:
        function = self._function
        return _call_source(function) if function is not None else self._value

    def _copy_locked(self):
        return self._function if self._function is not None else self._value


def _call_source(function: Callable[[], float]) -> float | None:
    try:
        return function()
    except Exception:  # noqa: BLE001 - a broken source must not break /metrics
        _log.warning("metrics: gauge source %r failed", function, exc_info=True)
        return None


class Gauge(_Family):
    """A value that goes up and down, set directly or computed on demand by a callable."""

    type = "gauge"

    def _new_child(self):
        return _GaugeChild(self._lock)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._unlabelled().dec(amount)

    def set_function(self, function: Callable[[], float] | None) -> None:
        self._unlabelled().set_function(function)

    def get(self) -> float | None:
        return self._unlabelled().get()

    def _samples(self, labels, state):
        # A callable was copied under the lock; it is called here, after the lock is released.
        value = _call_source(state) if callable(state) else state
        if value is not None:
            yield Sample("", labels, value)


class _HistogramChild:
    __slots__ = ("_lock", "_upper", "_counts", "_sum")

    def __init__(self, lock, upper: tuple[float, ...]):
        self._lock = lock
        self._upper = upper
        self._counts = [0] * len(upper)  # per bucket, not cumulative: made cumulative at render
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (>= 0: these are durations and sizes, and OpenMetrics forbids a
        negative _sum). Raises ValueError for a negative value or NaN."""
        if not value >= 0:
            raise ValueError(f"histogram observations must be >= 0; got {value!r}")
        index = bisect.bisect_left(self._upper, value)  # first bucket with value <= le
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def get(self) -> tuple[int, float]:
        """(count, sum) of the observations so far."""
        with self._lock:
            return sum(self._counts), self._sum

    def _copy_locked(self):
        return list(self._counts), self._sum


class Histogram(_Family):
    """Observations counted into fixed buckets (``le`` = upper bound, inclusive), plus sum and count."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 *, buckets: Sequence[float] = LATENCY_BUCKETS, **kw):
        upper = sorted(float(b) for b in buckets)
        if not upper or len(set(upper)) != len(upper) or any(math.isnan(b) for b in upper):
            raise ValueError(f"buckets must be distinct numbers: {buckets!r}")
        if upper[0] < 0:
            raise ValueError("bucket bounds must be >= 0")
        if upper[-1] != math.inf:
            upper.append(math.inf)
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        self.buckets = tuple(upper)
        super().__init__(name, documentation, labelnames, **kw)

    def exposed_names(self):
        return (self.name, self.name + "_bucket", self.name + "_count", self.name + "_sum")

    def _new_child(self):
        return _HistogramChild(self._lock, self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _samples(self, labels, state):
        counts, total = state
        cumulative = 0
        for bound, count in zip(self.buckets, counts):
            cumulative += count
            yield Sample("_bucket", labels + (("le", format_value(bound, le=True)),), cumulative)
        yield Sample("_count", labels, cumulative)  # equals the +Inf bucket by construction
        yield Sample("_sum", labels, total)


# ---------------------------------------------------------------------------------------------
# The registry.


class Registry:
    """Families in registration order plus collector callables (for values read elsewhere, such as
    /proc). All families share ``self.lock``; hold it only to copy numbers."""

    def __init__(self):
        self.lock = threading.RLock()
        self._families: list[_Family] = []
        self._names: set[str] = set()
        self._collectors: list[Callable[[], Iterable[FamilySnapshot]]] = []

    def register(self, family: _Family) -> None:
        """Add a family. Raises ValueError if any name it exposes is already taken."""
        names = set(family.exposed_names())
        if names & self._names:
            raise ValueError(f"metric name clash: {sorted(names & self._names)}")
        self._names |= names
        self._families.append(family)

    @contextlib.contextmanager
    def atomically(self):
        """Hold the registry's lock around several updates: a scrape sees all of them or none."""
        with self.lock:
            yield

    def register_collector(self, collector: Callable[[], Iterable[FamilySnapshot]]) -> None:
        """Add a callable returning FamilySnapshots; it is called on every render, outside the lock."""
        self._collectors.append(collector)

    def collect(self) -> list[FamilySnapshot]:
        """One consistent snapshot of every family, then whatever the collectors report."""
        with self.lock:
            copied = [(family, family._copy_locked()) for family in self._families]
        snapshots = [family._snapshot(state) for family, state in copied]
        for collector in self._collectors:
            snapshots.extend(collector())
        return snapshots


def format_value(value: float, le: bool = False) -> str:
    """Go-compatible float text: ``+Inf``, ``-Inf``, ``NaN``; ints stay ints (``3``). Bucket bounds
    are always floats (``1.0``), as client_python writes them, so ``le`` is the same in every scrape."""
    if isinstance(value, int) and not isinstance(value, bool) and not le:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def nearest_rank(ordered, q: float):
    """The q-th percentile (0..100) of an ascending sequence by the nearest-rank method: the
    smallest value with at least q% of the values at or below it; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100) without float rounding, at least 1
    return ordered[int(rank) - 1]
