"""Every metric inferd exports, behind intent-named methods for the layers that observe them, and
the JSON view for people. Uses only the public API of `families` (updates that belong together go
through `Registry.atomically()`), so a scrape never sees half of one event.
"""

from __future__ import annotations

import collections
import math
import platform
import sys
import time
from typing import Callable, Iterable

from .. import __version__
from . import exposition
from .families import Counter, Gauge, Histogram, Registry
from .process import ProcessCollector

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
METHODS = frozenset(("GET", "POST", "HEAD"))
IMAGE_OUTCOMES = ("ok", "bad_input", "error")
LATENCY_WINDOW = 1024
OTHER_ROUTE = "other"


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

    routes: the route labels (the route table's paths); inference_routes: those whose requests the
    JSON view counts. clock: monotonic seconds, injectable for tests; uptime counts from construction.
    """

    def __init__(self, routes: Iterable[str], inference_routes: Iterable[str], *,
                 clock: Callable[[], float] = time.monotonic, onnxruntime_version: str | None = None,
                 process: bool = True):
        self.routes = tuple(routes)
        self.inference_routes = frozenset(inference_routes)
        self._clock = clock
        self._started = clock()
        self.registry = r = Registry()
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
        self._create_fixed_series()
        self._build = {"version": __version__, "python": platform.python_version(),
                       "onnxruntime": onnxruntime_version or _onnxruntime_version()}
        self._build_info.labels(**self._build).set(1)
        self._model: dict | None = None
        # Latencies of the most recent LATENCY_WINDOW inference requests, for the JSON percentiles.
        self._window: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def _create_fixed_series(self) -> None:
        """Label values come from fixed sets, so every such series exists from the start at 0."""
        for outcome in IMAGE_OUTCOMES:
            self._images.labels(outcome=outcome)
        for result in ("success", "failure"):
            self._reloads.labels(result=result)
        for route in self.routes + (OTHER_ROUTE,):
            self._durations.labels(route=route)

    def route_label(self, path: str) -> str:
        """One of the routes, or "other" for any other path, so that unknown paths never create
        series of their own. The query string is ignored."""
        path = path.split("?", 1)[0]
        return path if path in self.routes else OTHER_ROUTE

    # -- called by the HTTP layer --------------------------------------------------------------

    def observe_request(self, route_path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration. route_path may be any path (unknown ones
        count as "other"); method outside GET/POST/HEAD counts as "other". Raises ValueError if
        seconds is negative or NaN."""
        if not seconds >= 0:
            raise ValueError(f"durations are >= 0; got {seconds!r}")
        route = self.route_label(route_path)
        method = method if method in METHODS else "other"
        # int() so that an HTTPStatus member gives "200", not "HTTPStatus.OK" (str() on 3.10).
        code = str(int(status)) if isinstance(status, int) and 100 <= status <= 599 else "other"
        counter = self._requests.labels(route=route, method=method, code=code)
        histogram = self._durations.labels(route=route)
        with self.registry.atomically():
            counter.inc()
            histogram.observe(seconds)
            if route in self.inference_routes:
                self._window.append(seconds)

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(self) -> None:
        self._in_flight.dec()

    # -- called by the service and the batcher -------------------------------------------------

    def observe_image(self, outcome: str) -> None:
        """Count one image by outcome: "ok", "bad_input" or "error". Raises ValueError otherwise."""
        if outcome not in IMAGE_OUTCOMES:
            raise ValueError(f"image outcome must be one of {IMAGE_OUTCOMES}; got {outcome!r}")
        self._images.labels(outcome=outcome).inc()

    def observe_preprocess(self, seconds: float) -> None:
        self._preprocess.observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One session.run over size images that took seconds."""
        if not (size >= 0 and seconds >= 0):
            raise ValueError(f"batch size and duration are >= 0; got {size!r}, {seconds!r}")
        with self.registry.atomically():
            self._batch_size.observe(size)
            self._inference.observe(seconds)

    def set_queue_depth_source(self, source: Callable[[], int] | None) -> None:
        """Read the queue depth by calling source() at render time (outside the metrics lock)."""
        self._queue_depth.set_function(source)

    # -- called by the daemon ------------------------------------------------------------------

    def set_model(self, name: str, sha256: str, loaded_at: float) -> None:
        """Replace the model_info sample (the old one disappears) and the load time (Unix seconds),
        in one step: no scrape sees two models or none."""
        with self.registry.atomically():
            self._model_info.clear()
            self._model_info.labels(name=str(name), sha256=str(sha256)).set(1)
            self._model_loaded.set(loaded_at)
            self._model = {"name": name, "sha256": sha256, "loaded_at": loaded_at}

    def observe_reload(self, ok: bool) -> None:
        self._reloads.labels(result="success" if ok else "failure").inc()

    # -- views ---------------------------------------------------------------------------------

    def render(self, kind: str) -> tuple[str, bytes]:
        """(content type, body) for kind "json", "prometheus" or "openmetrics"."""
        return exposition.render(kind, self.registry, self.snapshot_json() if kind == "json" else None)

    def snapshot_json(self) -> dict:
        """The JSON view. Request figures cover inference requests only, as in the reference
        design; they equal the sums of inferd_http_requests_total and
        inferd_http_request_duration_seconds over those routes.

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
        with self.registry.atomically():
            copied = self._copy_for_json()
        return self._json_view(copied, depth, max(now - self._started, 0.0))

    def _copy_for_json(self) -> dict:
        """The numbers the JSON view needs, copied while the caller holds the registry lock."""
        return {
            "requests": [(key, child.get()) for key, child in self._requests.children()],
            "durations": {key[0]: child.get() for key, child in self._durations.children()},
            "window": sorted(self._window),
            "images": {key[0]: child.get() for key, child in self._images.children()},
            "reloads": {key[0]: child.get() for key, child in self._reloads.children()},
            "batches": self._batch_size.children()[0][1].get(),
            "inference_sum": self._inference.children()[0][1].get()[1],
            "in_flight": self._in_flight.get(),
            "model": dict(self._model) if self._model else None,
        }

    def _json_view(self, c: dict, depth, uptime: float) -> dict:
        inference = self.inference_routes
        total = sum(v for (route, _, _), v in c["requests"] if route in inference)
        ok = sum(v for (route, _, code), v in c["requests"] if route in inference and code.startswith("2"))
        count = sum(c["durations"][r][0] for r in inference if r in c["durations"])
        latency_sum = sum(c["durations"][r][1] for r in inference if r in c["durations"])
        batch_count, batch_images = c["batches"]
        return {
            "uptime_seconds": uptime,
            "total_requests": total,
            "successful_requests": ok,
            "failed_requests": total - ok,
            "success_rate": ok / total if total else None,
            "average_latency_ms": 1000.0 * latency_sum / count if count else None,
            "p50_latency_ms": _percentile_ms(c["window"], 50),
            "p95_latency_ms": _percentile_ms(c["window"], 95),
            "p99_latency_ms": _percentile_ms(c["window"], 99),
            "latency_window": {"size": len(c["window"]), "capacity": LATENCY_WINDOW},
            "requests_per_second": total / uptime if uptime > 0 else 0.0,
            "all_http_requests": sum(v for _, v in c["requests"]),
            "requests_in_flight": c["in_flight"],
            "images": c["images"],
            "queue_depth": depth,
            "batches": {"count": batch_count, "images": int(batch_images),
                        "average_size": batch_images / batch_count if batch_count else None,
                        "average_inference_ms":
                            1000.0 * c["inference_sum"] / batch_count if batch_count else None},
            "model": c["model"],
            "reloads": c["reloads"],
            "build": dict(self._build),
        }


def _percentile_ms(ordered: list[float], p: float) -> float | None:
    # Nearest rank: the smallest value with at least p% of the window at or below it.
    if not ordered:
        return None
    rank = max(math.ceil(p / 100.0 * len(ordered)), 1)
    return 1000.0 * ordered[rank - 1]
