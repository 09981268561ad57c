"""Throughput and latency: inferd, the in-process limit and the reference design, same images, same run.

For each model, inferd and the reference design run side by side (one idles while the other is
measured) and the limit runs in this process with inferd's own code. For each image, `rounds`
rounds interleave every measurement: the limit at each batch size, then each concurrency against
inferd and against the reference. Each cell keeps its best round (highest throughput, with that
round's latencies) and so does the limit: on a shared machine, noise from other work hits every
system alike instead of whichever happened to run at a bad moment. A warm-up precedes each cell's
first round.

The throughput targets compare systems within each round (inferd's best concurrency in the round
against the limit's best batch size, or the reference's best concurrency, in the same round) and
check the median over rounds: the cells of one round are seconds apart, the rounds up to a minute.
The latency target compares inferd at concurrency 1 with the in-process time of one image, measured
in turns (one request, then one in-process classification, and again: `inferd-bench --paired`), so
that both sides of that ratio see the machine in the same state.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import cpubound, report, servers
from inferd.tools import bench as inprocess
from inferd.tools import loadclient
from .progress import progress

CONCURRENCY = (1, 4, 16)
MODELS = {"efficientnet-lite0": "models/efficientnet-lite0", "resnet50": "models/resnet50"}
TARGET_LIMIT_RATIO = 0.90
TARGET_REFERENCE_RATIO = 2.5
TARGET_LATENCY_RATIO = 1.15
TARGET_BOUND_RATIO = 0.90


@dataclass
class Settings:
    seconds: float = 2.0  # per load cell and round
    limit_seconds: float = 1.0  # per batch size of the limit and round
    rounds: int = 3
    concurrency: tuple[int, ...] = CONCURRENCY
    models: tuple[str, ...] = tuple(MODELS)
    intra_op_threads: int = 0  # what inferd runs with (its default); the limit uses the same
    inferd_config: str = ""  # extra INI text for inferd, e.g. to try other batching settings


@dataclass
class Group:
    """One (model, image): the limit and one load result per (system, concurrency)."""

    model: str
    image: str
    limit: dict
    load: dict = field(default_factory=dict)  # (system, concurrency) -> inferd.bench.summarise() dict
    paired: dict | None = None  # inferd.bench.paired_summary(): inferd at c=1 and one image in process, in turns
    by_round: dict = field(default_factory=dict)  # "limit" / "reference" / "bound" -> inferd's ratio in each round
    bound: list = field(default_factory=list)  # cpubound.measure() of each round

    def checks(self) -> list[dict]:
        """The issue's targets for this group, each {"name", "value", "target", "pass"}."""
        out = [report.check(f"inferd/limit, median of rounds, {self.model}, {self.image}",
                            statistics.median(self.by_round["limit"]), TARGET_LIMIT_RATIO, ">="),
               report.check(f"inferd/CPU bound, median of rounds, {self.model}, {self.image}",
                            statistics.median(self.by_round["bound"]), TARGET_BOUND_RATIO, ">=")]
        if "photo" in self.image and self.by_round.get("reference"):
            out.append(report.check(f"inferd/reference, median of rounds, {self.model}, {self.image}",
                                    statistics.median(self.by_round["reference"]), TARGET_REFERENCE_RATIO, ">="))
        if self.paired is not None:
            out.append(report.check(f"inferd p50 at c=1 / in-process one image, in turns, {self.model}, {self.image}",
                                    self.paired["ratio"], TARGET_LATENCY_RATIO, "<="))
        return out


def run(images: dict[str, Path], settings: Settings, workdir: Path) -> list[Group]:
    """Measure every (model, image, system, concurrency) cell; returns one Group per (model, image)."""
    groups = []
    for model in settings.models:
        model_dir = servers.REPO / MODELS[model]
        ensure_model(model, model_dir)
        progress(f"{model}: starting inferd and the reference design")
        inferd = servers.start_inferd(model_dir, workdir / model / "inferd", settings.inferd_config)
        reference = servers.start_reference(model_dir, workdir / model / "reference", settings.intra_op_threads)
        try:
            for label, path in images.items():
                groups.append(_measure_group(model, model_dir, label, path, (inferd, reference), settings))
        finally:
            inferd.stop()
            reference.stop()
    return groups


def ensure_model(model: str, model_dir: Path) -> None:
    """Build models/<model>/model.onnx when missing (the ResNet-50 graph has random weights)."""
    if (model_dir / "model.onnx").is_file():
        return
    progress(f"{model}: building {model_dir}/model.onnx")
    subprocess.run([sys.executable, str(servers.REPO / "models" / "build.py"), model, "--out", str(model_dir)],
                   check=True, stdout=subprocess.DEVNULL)


def ratios_by_round(limit_rounds: list[dict], rounds: dict, bounds: list[dict]) -> dict:
    """inferd's best throughput in each round over the limit's best batch size, over the
    reference's best concurrency and over the CPU bound in that round:
    {"limit": [...], "reference": [...], "bound": [...]}."""
    def best_in_round(system: str, number: int) -> float:
        return max(results[number]["throughput"] for (name, _), results in rounds.items() if name == system)

    out = {"limit": [], "reference": [], "bound": []}
    for number, limit in enumerate(limit_rounds):
        inferd = best_in_round("inferd", number)
        out["limit"].append(round(inferd / max(rate for rate, _ in limit.values()), 3))
        out["bound"].append(round(inferd / bounds[number]["bound"], 3))
        if any(name == "reference" for name, _ in rounds):
            out["reference"].append(round(inferd / max(best_in_round("reference", number), 1e-9), 3))
    return out


def _measure_group(model: str, model_dir: Path, label: str, path: Path, running, settings: Settings) -> Group:
    data = path.read_bytes()
    classify = inprocess.limit_runner(model_dir, data, threads=settings.intra_op_threads,
                                    warmup_batch=max(inprocess.LIMIT_BATCH_SIZES))
    one_thread = cpubound.runner(model_dir, data)
    content_type, body = loadclient.multipart_body(data, path.name)
    limit_rounds, rounds, bounds = [], {}, []
    for number in range(settings.rounds):
        limit_rounds.append({size: inprocess.images_per_second(classify, size, settings.limit_seconds, None)
                             for size in inprocess.LIMIT_BATCH_SIZES})
        limit = inprocess.best_limit(limit_rounds[-1:])
        bounds.append(cpubound.measure(one_thread, settings.limit_seconds))
        progress(f"{model}, {label}, round {number + 1}: limit {limit['throughput']:.1f} images/s "
                 f"(batch {limit['best_batch_size']}), one image {limit['single_ms']:.1f} ms; CPU bound "
                 f"{bounds[-1]['bound']:.1f} images/s ({bounds[-1]['cpu_ms_per_image']:.1f} ms CPU per image)")
        for concurrency in settings.concurrency:
            for server in running:
                if number == 0:
                    loadclient.run_load(server.url, body, content_type, connections=concurrency,
                                     count=max(2, concurrency))
                result = loadclient.summarise(loadclient.run_load(server.url, body, content_type,
                                                            connections=concurrency, duration=settings.seconds))
                rounds.setdefault((server.name, concurrency), []).append(result)
                progress(f"{model}, {label}, round {number + 1}, c={concurrency:<2} {server.name:9}: "
                         f"{result['throughput']:6.1f} images/s, p50 {result['p50_ms']:.0f} ms, "
                         f"p99 {result['p99_ms']:.0f} ms, statuses {result['statuses']}"
                         + (f", errors {result['errors']}" if result["errors"] else ""))
    group = Group(model, label, inprocess.best_limit(limit_rounds), bound=bounds)
    group.load = {cell: max(results, key=lambda r: r["throughput"]) for cell, results in rounds.items()}
    group.by_round = ratios_by_round(limit_rounds, rounds, bounds)
    if 1 in settings.concurrency:
        inferd = next(server for server in running if server.name == "inferd")
        group.paired = inprocess.paired_summary(*inprocess.take_turns(
            inferd.url, body, content_type, classify, duration=settings.seconds * settings.rounds, count=None))
        progress(f"{model}, {label}, in turns: inferd p50 {group.paired['inferd_p50_ms']:.1f} ms, in-process "
                 f"{group.paired['limit_p50_ms']:.1f} ms over {group.paired['pairs']} turns")
    return group
