"""Every metric inferd exports, behind intent-named methods for the layers that observe them, and
the JSON view for people. Uses only the public API of `families` (updates that belong together go
through `Registry.atomically()`), so a scrape never sees half of one event.
"""

from __future__ import annotations

import collections
import platform
import sys
import time
from typing import Callable, Iterable

from .. import __version__
from ..names import version_order
from . import exposition
from .cache import CacheMetrics, cache_json
from .families import Counter, Gauge, Histogram, Registry, nearest_rank
from .keys import KeyMetrics
from .models import IMAGE_OUTCOMES, LoadedVersion, ModelFamilies, VersionMetrics
from .process import ProcessCollector

METHODS = frozenset(("GET", "POST", "HEAD"))
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
        self.models = ModelFamilies(r)
        self.cache = CacheMetrics(r)
        self.keys = KeyMetrics(r)
        self._reloads = Counter(
            "inferd_reloads_total", "Reloads (SIGHUP or POST /admin/reload), by result (success, failure).",
            ("result",), registry=r)
        self._build_info = Gauge(
            "inferd_build_info", "Versions of inferd and what it runs on; the value is always 1.",
            ("version", "python", "onnxruntime", "providers", "cpus"), registry=r)
        if process:
            r.register_collector(ProcessCollector())
        self._create_fixed_series()
        self._build = {"version": __version__, "python": platform.python_version(),
                       "onnxruntime": onnxruntime_version or _onnxruntime_version(), "providers": "", "cpus": ""}
        self._build_info.labels(**self._build).set(1)
        self._default_model = ""
        # Latencies of the most recent LATENCY_WINDOW inference requests, for the JSON percentiles.
        self._window: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def _create_fixed_series(self) -> None:
        """Label values come from fixed sets, so every such series exists from the start at 0."""
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

    # -- called by the daemon ------------------------------------------------------------------

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """What one loaded version observes (images, preprocessing, queue waits, batches)."""
        return VersionMetrics(self.models, model, version)

    def set_models(self, versions: list[LoadedVersion], default: str, cpus: int | None = None) -> None:
        """The loaded versions, replaced in one step: no scrape sees two sets or none. `cpus`: the
        cores the daemon may keep busy (its affinity capped by its cgroup's CPU quota)."""
        providers = ",".join(dict.fromkeys(p for v in versions for p in v.providers))
        with self.registry.atomically():
            self.models.install(versions)
            self._default_model = default
            self._build = {**self._build, "providers": providers, "cpus": "" if cpus is None else str(cpus)}
            self._build_info.clear()
            self._build_info.labels(**self._build).set(1)

    def observe_reload(self, ok: bool) -> None:
        self._reloads.labels(result="success" if ok else "failure").inc()

    def observe_model_reload(self, model: str, ok: bool) -> None:
        self.models.observe_reload(model, ok)

    # -- views ---------------------------------------------------------------------------------

    def render_for(self, accept: str | None, fmt: str | None = None) -> tuple[str, bytes]:
        """(content type, body) of the view an Accept header (or ?format=) asks for; raises
        ValueError for a format that does not exist."""
        return self.render(exposition.negotiate(accept, fmt))

    def render(self, kind: str) -> tuple[str, bytes]:
        """(content type, body) for kind "json", "prometheus" or "openmetrics"."""
        return exposition.render(kind, self.registry, self.snapshot_json() if kind == "json" else None)

    def snapshot_json(self) -> dict:
        """The JSON view. Request figures cover inference requests only, as in the reference
        design; they equal the sums of inferd_http_requests_total and
        inferd_http_request_duration_seconds over those routes. Image, batch and queue figures are
        summed over every loaded model; "models" has them per model and version.

        - total_requests; successful_requests (2xx); failed_requests (everything else).
        - success_rate: successful / total as a fraction in [0, 1]; null before any request.
        - average_latency_ms: all time (histogram sum / count); null before any request.
        - p50/p95/p99_latency_ms: nearest-rank percentiles over the latencies of the most recent
          LATENCY_WINDOW (1024) inference requests (``latency_window`` says how many it holds);
          null while the window is empty.
        - requests_per_second: total_requests / uptime_seconds, i.e. the all-time average rate.
        - cache: response cache lookups (one per image), hit_ratio (null before any), bytes,
          entries, evictions; keys: per API key name, requests by result and images.
        """
        depths = self.models.depths()  # may call the sources: before taking the lock
        sizes = self.cache.sizes()
        now = self._clock()
        with self.registry.atomically():
            copied = self._copy_for_json()
        view = self._json_view(copied, max(now - self._started, 0.0))
        view.update(model_json(copied["models"], depths, self._default_model))
        view["cache"] = cache_json(copied["cache"], sizes)
        view["keys"] = copied["keys"]
        return view

    def _copy_for_json(self) -> dict:
        """The numbers the JSON view needs, copied while the caller holds the registry lock."""
        return {
            "requests": [(key, child.get()) for key, child in self._requests.children()],
            "durations": {key[0]: child.get() for key, child in self._durations.children()},
            "window": sorted(self._window),
            "reloads": {key[0]: child.get() for key, child in self._reloads.children()},
            "in_flight": self._in_flight.get(),
            "models": self.models.copy_for_json(),
            "cache": self.cache.copy_for_json(),
            "keys": self.keys.copy_for_json(),
        }

    def _json_view(self, c: dict, uptime: float) -> dict:
        inference = self.inference_routes
        total = sum(v for (route, _, _), v in c["requests"] if route in inference)
        ok = sum(v for (route, _, code), v in c["requests"] if route in inference and code.startswith("2"))
        count = sum(c["durations"][r][0] for r in inference if r in c["durations"])
        latency_sum = sum(c["durations"][r][1] for r in inference if r in c["durations"])
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
            "reloads": c["reloads"],
            "build": dict(self._build),
        }


def model_json(c: dict, depths: dict, default: str) -> dict:
    """The JSON view's image, batch and queue figures, in all and per model and version."""
    per_version = {}
    for v in c["versions"]:
        key = (v.model, v.version)
        per_version[key] = {"sha256": v.sha256, "loaded_at": v.loaded_at, "queue_depth": depths.get(key),
                            "images": {o: c["images"].get(key, {}).get(o, 0) for o in IMAGE_OUTCOMES},
                            "batches": _batches(*c["batches"].get(key, (0, 0.0)), c["inference"].get(key, 0.0))}
    models: dict[str, dict] = {}
    for (model, version), figures in per_version.items():
        entry = models.setdefault(model, {"versions": {}, "reloads": dict(c["reloads"].get(model, {}))})
        entry["versions"][version] = figures
    count = sum(n for n, _ in c["batches"].values())
    images = sum(s for _, s in c["batches"].values())
    values = list(depths.values())
    default_version = max((v for v in c["versions"] if v.model == default), key=lambda v: version_order(v.version), default=None)
    return {
        "images": {o: sum(f.get(o, 0) for f in c["images"].values()) for o in IMAGE_OUTCOMES},
        "queue_depth": None if any(d is None for d in values) else sum(values),
        "batches": _batches(count, images, sum(c["inference"].values())),
        "model": None if default_version is None else {
            "name": default_version.model, "version": default_version.version,
            "sha256": default_version.sha256, "loaded_at": default_version.loaded_at},
        "models": models,
    }


def _batches(count: int, images: float, inference_seconds: float) -> dict:
    return {"count": count, "images": int(images), "average_size": images / count if count else None,
            "average_inference_ms": 1000.0 * inference_seconds / count if count else None}


def _percentile_ms(ordered: list[float], p: float) -> float | None:
    value = nearest_rank(ordered, p)
    return None if value is None else 1000.0 * value
