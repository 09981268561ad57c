"""Counters, gauges and histograms, and the three views of them served on GET /metrics.

Written by hand on the standard library, in the shape of prometheus client_python but small:

* ``Counter``, ``Gauge``, ``Histogram``: families with fixed label names; ``labels(**kv)`` returns a
  cached child. Every family of a ``Registry`` shares the registry's one lock, so an update is one
  short critical section and a scrape sees one consistent moment.
* ``Registry.render_text()`` (Prometheus text 0.0.4) and ``Registry.render_openmetrics()``
  (OpenMetrics 1.0.0): the lock is held only to copy numbers; formatting happens outside it.
* ``InferdMetrics``: every family inferd exports, behind intent-named methods for the server and
  the batcher, plus ``snapshot_json()``, the JSON view for people.
* ``negotiate(accept, fmt)`` and ``render(obj, kind)``: pure functions for the HTTP layer.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import math
import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from . import __version__

_log = logging.getLogger(__name__)

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONTENT_TYPE_JSON = "application/json"
KINDS = ("json", "prometheus", "openmetrics")

# Upper bounds in seconds: from half a millisecond (a queue wait, a small resize) to ten seconds
# (a large batch on a slow CPU). +Inf is added by Histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

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
        self._lock = registry.lock if registry is not None else threading.Lock()
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

    def _observe_locked(self, index: int, value: float) -> None:
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
            yield Sample("_bucket", labels + (("le", _format_value(bound, le=True)),), cumulative)
        yield Sample("_count", labels, cumulative)  # equals the +Inf bucket by construction
        yield Sample("_sum", labels, total)


# ---------------------------------------------------------------------------------------------
# The registry and the two text formats.


class Registry:
    """Families in registration order plus collector callables (for values read elsewhere, such as
    /proc). All families share ``self.lock``; hold it only to copy numbers."""

    def __init__(self):
        self.lock = threading.Lock()
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

    def render_text(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        return format_text(self.collect())

    def render_openmetrics(self) -> str:
        """OpenMetrics 1.0.0 text, ending with ``# EOF``."""
        return format_openmetrics(self.collect())


def _format_value(value: float, le: bool = False) -> str:
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


def _escape_label_value(value: str) -> str:
    # Both formats: backslash, double quote and line feed are escaped in label values.
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help_text(text: str) -> str:
    # Prometheus 0.0.4 escapes only backslash and line feed in HELP; the Go parser rejects \".
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_help_openmetrics(text: str) -> str:
    # OpenMetrics HELP is an escaped-string: double quote is escaped too.
    return _escape_label_value(text)


def _sample_lines(family: FamilySnapshot, out: list[str]) -> None:
    for sample in family.samples:
        if sample.labels:
            labels = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in sample.labels)
            out.append(f"{family.name}{sample.suffix}{{{labels}}} {_format_value(sample.value)}\n")
        else:
            out.append(f"{family.name}{sample.suffix} {_format_value(sample.value)}\n")


def format_text(families: Iterable[FamilySnapshot]) -> str:
    """Prometheus text 0.0.4: a counter's HELP/TYPE name carries ``_total``, as its samples do."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        out.append(f"# HELP {name} {_escape_help_text(family.documentation)}\n")
        out.append(f"# TYPE {name} {family.type}\n")
        _sample_lines(family, out)
    return "".join(out)


def format_openmetrics(families: Iterable[FamilySnapshot]) -> str:
    """OpenMetrics 1.0.0: the family name has no ``_total``; ``# UNIT`` when a unit is declared."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help_openmetrics(family.documentation)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        if family.unit:
            out.append(f"# UNIT {family.name} {family.unit}\n")
        _sample_lines(family, out)
    out.append("# EOF\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Process metrics, with the semantics of client_python's ProcessCollector (Linux /proc).


class ProcessCollector:
    """Reads ``process_*`` metrics from /proc/<pid>; reports nothing where /proc is missing."""

    def __init__(self, proc: str = "/proc", pid: str = "self"):
        self._dir = os.path.join(proc, pid)
        try:
            self._ticks = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError, AttributeError):
            self._ticks = 100
        try:
            self._pagesize = os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            self._pagesize = 4096
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def __call__(self) -> list[FamilySnapshot]:
        if not self._btime:
            return []
        result = []

        def gauge(name, doc, value, unit=""):
            result.append(FamilySnapshot(name, doc, "gauge", unit, (Sample("", (), value),)))

        try:
            with open(os.path.join(self._dir, "stat"), "rb") as f:
                # Fields after the ")" that closes comm, which may itself contain spaces.
                parts = f.read().rsplit(b")", 1)[-1].split()
            cpu = (float(parts[11]) + float(parts[12])) / self._ticks  # utime + stime
            result.append(FamilySnapshot("process_cpu_seconds", "Total user and system CPU time "
                                         "spent in seconds.", "counter", "seconds",
                                         (Sample("_total", (), cpu),)))
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                  float(parts[20]), "bytes")
            gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                  float(parts[21]) * self._pagesize, "bytes")
            gauge("process_start_time_seconds", "Start time of the process since unix epoch "
                  "in seconds.", float(parts[19]) / self._ticks + self._btime, "seconds")
        except (OSError, IndexError, ValueError):
            pass
        try:
            gauge("process_open_fds", "Number of open file descriptors.",
                  len(os.listdir(os.path.join(self._dir, "fd"))))
            with open(os.path.join(self._dir, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open files"):
                        soft = line.split()[3]
                        gauge("process_max_fds", "Maximum number of open file descriptors.",
                              math.inf if soft == b"unlimited" else float(soft))
                        break
        except (OSError, IndexError, ValueError):
            pass
        return result


# ---------------------------------------------------------------------------------------------
# inferd's metrics.

ROUTES = ("/infer", "/infer/batch", "/health", "/metrics", "/admin/reload")
INFERENCE_ROUTES = frozenset(("/infer", "/infer/batch"))
METHODS = frozenset(("GET", "POST", "HEAD"))
IMAGE_OUTCOMES = ("ok", "bad_input", "error")
LATENCY_WINDOW = 1024


def route_label(path: str) -> str:
    """The route label for a request path: one of ROUTES, or "other" for anything else, so that
    unknown paths never create series of their own. The query string is ignored."""
    path = path.split("?", 1)[0]
    return path if path in _ROUTE_SET else "other"


_ROUTE_SET = frozenset(ROUTES)


def _onnxruntime_version() -> str:
    # Never imports onnxruntime: asks the module if already loaded, else the installed metadata.
    module = sys.modules.get("onnxruntime")
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    from importlib import metadata
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


class InferdMetrics:
    """Every metric inferd exports. Observing methods cost O(1) and take one short lock.

    clock: monotonic seconds, injectable for tests; uptime counts from construction.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 onnxruntime_version: str | None = None, process: bool = True):
        self._clock = clock
        self._started = clock()
        self.registry = r = Registry()
        self._lock = r.lock
        self._requests = Counter(
            "inferd_http_requests_total", "HTTP requests answered, by route, method and status code.",
            ("route", "method", "code"), registry=r)
        self._durations = Histogram(
            "inferd_http_request_duration_seconds", "Time from request line to response sent.",
            ("route",), unit="seconds", registry=r)
        self._in_flight = Gauge(
            "inferd_http_requests_in_flight", "HTTP requests being handled now.", registry=r)
        self._images = Counter(
            "inferd_images_total", "Images classified, by outcome (ok, bad_input, error).",
            ("outcome",), registry=r)
        self._preprocess = Histogram(
            "inferd_preprocess_seconds", "Time to decode and preprocess one image.",
            unit="seconds", registry=r)
        self._queue_wait = Histogram(
            "inferd_queue_wait_seconds", "Time an image waited in the batch queue.",
            unit="seconds", registry=r)
        self._inference = Histogram(
            "inferd_inference_seconds", "Time of one session.run, per batch.",
            unit="seconds", registry=r)
        self._batch_size = Histogram(
            "inferd_batch_size", "Images per session.run.", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self._queue_depth = Gauge(
            "inferd_queue_depth", "Images waiting in the batch queue.", registry=r)
        self._model_info = Gauge(
            "inferd_model_info", "The model being served; the value is always 1.",
            ("name", "sha256"), registry=r)
        self._model_loaded = Gauge(
            "inferd_model_loaded_timestamp_seconds",
            "Unix time the served model was loaded; 0 before the first load.",
            unit="seconds", registry=r)
        self._reloads = Counter(
            "inferd_reloads_total", "Model reloads, by result (success, failure).",
            ("result",), registry=r)
        self._build_info = Gauge(
            "inferd_build_info", "Versions of inferd and what it runs on; the value is always 1.",
            ("version", "python", "onnxruntime"), registry=r)
        if process:
            r.register_collector(ProcessCollector())

        # Label values come from fixed sets, so every series can exist from the start at 0.
        self._image_children = {o: self._images.labels(outcome=o) for o in IMAGE_OUTCOMES}
        self._reload_children = {True: self._reloads.labels(result="success"),
                                 False: self._reloads.labels(result="failure")}
        self._duration_children = {route: self._durations.labels(route=route)
                                   for route in ROUTES + ("other",)}
        self._request_children: dict[tuple[str, str, str], _CounterChild] = {}
        self._build = {"version": __version__, "python": platform.python_version(),
                       "onnxruntime": onnxruntime_version or _onnxruntime_version()}
        self._build_info.labels(**self._build).set(1)
        self._model: dict | None = None
        # Latencies of the most recent LATENCY_WINDOW inference requests, for the JSON percentiles.
        self._window: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    # -- called by the server ------------------------------------------------------------------

    def observe_request(self, route_path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration. route_path may be any path (unknown ones
        count as "other"); method outside GET/POST/HEAD counts as "other". Raises ValueError if
        seconds is negative or NaN."""
        route = route_label(route_path)
        method = method if method in METHODS else "other"
        # int() so that an HTTPStatus member gives "200", not "HTTPStatus.OK" (str() on 3.10).
        code = str(int(status)) if isinstance(status, int) and 100 <= status <= 599 else "other"
        key = (route, method, code)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children.setdefault(
                key, self._requests.labels(route=route, method=method, code=code))
        histogram = self._duration_children[route]
        if not seconds >= 0:
            raise ValueError(f"durations are >= 0; got {seconds!r}")
        index = bisect.bisect_left(histogram._upper, seconds)
        with self._lock:
            counter._value += 1
            histogram._observe_locked(index, seconds)
            if route in INFERENCE_ROUTES:
                self._window.append(seconds)

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(self) -> None:
        self._in_flight.dec()

    # -- called by the handlers and the batcher ------------------------------------------------

    def observe_image(self, outcome: str) -> None:
        """Count one image by outcome: "ok", "bad_input" or "error". Raises ValueError otherwise."""
        child = self._image_children.get(outcome)
        if child is None:
            raise ValueError(f"image outcome must be one of {IMAGE_OUTCOMES}; got {outcome!r}")
        child.inc()

    def observe_preprocess(self, seconds: float) -> None:
        self._preprocess.observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One session.run over size images that took seconds."""
        size_child = self._batch_size._unlabelled()
        time_child = self._inference._unlabelled()
        if not (size >= 0 and seconds >= 0):
            raise ValueError(f"batch size and duration are >= 0; got {size!r}, {seconds!r}")
        size_index = bisect.bisect_left(size_child._upper, size)
        time_index = bisect.bisect_left(time_child._upper, seconds)
        with self._lock:
            size_child._observe_locked(size_index, size)
            time_child._observe_locked(time_index, seconds)

    def set_queue_depth_source(self, source: Callable[[], int] | None) -> None:
        """Read the queue depth by calling source() at render time (outside the metrics lock)."""
        self._queue_depth.set_function(source)

    # -- called by the daemon ------------------------------------------------------------------

    def set_model(self, name: str, sha256: str, loaded_at: float) -> None:
        """Replace the model_info sample (the old one disappears) and the load time (Unix seconds),
        in one step: no scrape sees two models or none."""
        child = self._model_info._new_child()
        child._value = 1
        with self._lock:
            self._model_info._children = {(str(name), str(sha256)): child}
            self._model_loaded._children[()]._value = loaded_at
            self._model = {"name": name, "sha256": sha256, "loaded_at": loaded_at}

    def observe_reload(self, ok: bool) -> None:
        self._reload_children[bool(ok)].inc()

    # -- views ---------------------------------------------------------------------------------

    def render(self, kind: str) -> tuple[str, bytes]:
        """(content type, body) for kind "json", "prometheus" or "openmetrics"."""
        return render(self, kind)

    def snapshot_json(self) -> dict:
        """The JSON view. Request figures cover inference requests only (routes /infer and
        /infer/batch), as in the reference design; they equal the sums of
        inferd_http_requests_total and inferd_http_request_duration_seconds over those routes.

        - total_requests; successful_requests (2xx); failed_requests (everything else).
        - success_rate: successful / total as a fraction in [0, 1]; null before any request.
        - average_latency_ms: all time (histogram sum / count); null before any request.
        - p50/p95/p99_latency_ms: nearest-rank percentiles over the latencies of the most recent
          LATENCY_WINDOW (1024) inference requests (``latency_window`` says how many it holds);
          null while the window is empty.
        - requests_per_second: total_requests / uptime_seconds, i.e. the all-time average rate.
        """
        depth = self._queue_depth.get()  # may call the source: before taking the lock
        now = self._clock()
        with self._lock:
            requests = [(key, child._value) for key, child in self._requests._children.items()]
            durations = {route: (sum(child._counts), child._sum)
                         for route, child in self._duration_children.items()}
            window = list(self._window)
            images = {o: c._value for o, c in self._image_children.items()}
            reloads = {"success": self._reload_children[True]._value,
                       "failure": self._reload_children[False]._value}
            batch_count = sum(self._batch_size._unlabelled()._counts)
            batch_images = self._batch_size._unlabelled()._sum
            inference_sum = self._inference._unlabelled()._sum
            in_flight = self._in_flight._unlabelled()._value
            model = dict(self._model) if self._model else None

        uptime = max(now - self._started, 0.0)
        total = sum(v for (route, _, _), v in requests if route in INFERENCE_ROUTES)
        ok = sum(v for (route, _, code), v in requests
                 if route in INFERENCE_ROUTES and code.startswith("2"))
        all_requests = sum(v for _, v in requests)
        count = sum(durations[r][0] for r in INFERENCE_ROUTES)
        latency_sum = sum(durations[r][1] for r in INFERENCE_ROUTES)
        window.sort()
        return {
            "uptime_seconds": uptime,
            "total_requests": total,
            "successful_requests": ok,
            "failed_requests": total - ok,
            "success_rate": ok / total if total else None,
            "average_latency_ms": 1000.0 * latency_sum / count if count else None,
            "p50_latency_ms": _percentile_ms(window, 50),
            "p95_latency_ms": _percentile_ms(window, 95),
            "p99_latency_ms": _percentile_ms(window, 99),
            "latency_window": {"size": len(window), "capacity": LATENCY_WINDOW},
            "requests_per_second": total / uptime if uptime > 0 else 0.0,
            "all_http_requests": all_requests,
            "requests_in_flight": in_flight,
            "images": images,
            "queue_depth": depth,
            "batches": {"count": batch_count, "images": int(batch_images),
                        "average_size": batch_images / batch_count if batch_count else None,
                        "average_inference_ms":
                            1000.0 * inference_sum / batch_count if batch_count else None},
            "model": model,
            "reloads": reloads,
            "build": dict(self._build),
        }


def _percentile_ms(ordered: list[float], p: float) -> float | None:
    # Nearest rank: the smallest value with at least p% of the window at or below it.
    if not ordered:
        return None
    rank = max(math.ceil(p / 100.0 * len(ordered)), 1)
    return 1000.0 * ordered[rank - 1]


# ---------------------------------------------------------------------------------------------
# Content negotiation and rendering: pure functions for the HTTP layer.

_FORMATS = {"json": "json", "prometheus": "prometheus", "openmetrics": "openmetrics"}
# (kind, type, subtype, versions we serve under that media type; None = no version parameter)
_OFFERS = (
    ("json", "application", "json", None),
    ("openmetrics", "application", "openmetrics-text", {"1.0.0", "0.0.1"}),
    ("prometheus", "text", "plain", {"0.0.4", "1.0.0"}),
)
# On a full tie (same q, same specificity, same position) prefer JSON: `*/*` and browsers get it.
_SERVER_PREFERENCE = {"json": 2, "openmetrics": 1, "prometheus": 0}


def _parse_accept(accept: str) -> list[tuple[str, str, dict[str, str], float]]:
    ranges = []
    for item in accept.split(","):
        mime, *params = item.split(";")
        type_, _, subtype = mime.strip().lower().partition("/")
        if not type_ or not subtype:
            continue  # malformed range: ignore it rather than fail the scrape
        options = {}
        for param in params:
            key, _, value = param.partition("=")
            options[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(options.pop("q", "1"))
        except ValueError:
            continue
        if not 0 <= q <= 1:
            continue
        ranges.append((type_, subtype, options, q))
    return ranges


def negotiate(accept: str | None, fmt: str | None) -> str:
    """Choose "json", "prometheus" or "openmetrics" for GET /metrics.

    ``fmt`` (the ?format= value) wins when given; an unknown value raises ValueError (the server
    answers 400). Otherwise the Accept header decides per RFC 9110 §12.5.1: the highest q wins,
    q=0 excludes, the most specific matching range sets an offer's q; ties go to the more specific
    range, then the range listed first, then JSON. A missing header, or one that accepts none of the
    three, gives JSON (the view for people; Prometheus always sends Accept).
    """
    if fmt is not None:
        kind = _FORMATS.get(fmt.strip().lower())
        if kind is None:
            raise ValueError(f"unknown format {fmt!r}; expected json, prometheus or openmetrics")
        return kind
    if not accept or not accept.strip():
        return "json"
    ranges = _parse_accept(accept)
    best = None
    for kind, type_, subtype, versions in _OFFERS:
        match = None  # (specificity, -position, q) of the most specific matching range
        for position, (rtype, rsubtype, options, q) in enumerate(ranges):
            if rtype == "*" and rsubtype == "*":
                specificity = 0
            elif rtype == type_ and rsubtype == "*":
                specificity = 1
            elif rtype == type_ and rsubtype == subtype:
                version = options.get("version")
                if version is not None and (versions is None or version not in versions):
                    continue  # a version we do not serve
                specificity = 2
            else:
                continue
            if match is None or (specificity, -position) > match[:2]:
                match = (specificity, -position, q)
        if match is None or match[2] <= 0:
            continue
        key = (match[2], match[0], match[1], _SERVER_PREFERENCE[kind])
        if best is None or key > best[0]:
            best = (key, kind)
    return best[1] if best else "json"


def render(registry_or_metrics: Registry | InferdMetrics, kind: str) -> tuple[str, bytes]:
    """(content type, body) of one view. JSON needs an InferdMetrics; raises ValueError for an
    unknown kind and TypeError for JSON of a bare Registry."""
    registry = getattr(registry_or_metrics, "registry", registry_or_metrics)
    if kind == "prometheus":
        return CONTENT_TYPE_TEXT, registry.render_text().encode("utf-8")
    if kind == "openmetrics":
        return CONTENT_TYPE_OPENMETRICS, registry.render_openmetrics().encode("utf-8")
    if kind == "json":
        if not isinstance(registry_or_metrics, InferdMetrics):
            raise TypeError("the JSON view needs an InferdMetrics")
        body = json.dumps(registry_or_metrics.snapshot_json(), allow_nan=False)
        return CONTENT_TYPE_JSON, body.encode("utf-8")
    raise ValueError(f"unknown metrics kind {kind!r}")
