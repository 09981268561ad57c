"""The CPU bound: cores / CPU-seconds per image for decode + preprocess + inference, in process.

No server can classify faster than the cores can do the work of one image, however it overlaps
decoding with inference. CPU time is time.process_time() of this process (all its threads) over
inferd's own preprocessing and model code (the limit's classify), with one onnxruntime thread,
which spends the least CPU per image, at batch sizes 1 and 8; the bound takes the cheaper.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from inferd.tools import bench as inprocess

BATCH_SIZES = (1, 8)


def runner(model_dir: Path, data: bytes):
    """classify(batch_size) of `data` with inferd's code and one intra-op thread."""
    return inprocess.limit_runner(model_dir, data, threads=1, warmup_batch=max(BATCH_SIZES))


def cpu_seconds_per_image(classify, batch_size: int, seconds: float) -> float:
    """Process CPU seconds per image over `seconds` of classify(batch_size), after one warm-up call."""
    classify(batch_size)
    cpu, started, images = time.process_time(), time.perf_counter(), 0
    while not images or time.perf_counter() - started < seconds:
        classify(batch_size)
        images += batch_size
    return (time.process_time() - cpu) / images


def measure(classify, seconds: float) -> dict:
    """{"cpu_ms_per_image", "bound": images/s the cores allow, "cores"}."""
    cpu = min(cpu_seconds_per_image(classify, size, seconds) for size in BATCH_SIZES)
    cores = len(os.sched_getaffinity(0))
    return {"cpu_ms_per_image": round(cpu * 1000, 2), "bound": round(cores / cpu, 2), "cores": cores}
