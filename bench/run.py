"""`make bench` = `python -m bench.run`: the whole comparison, one table, results under bench-results/.

    python -m bench.run [--only throughput|memory|startup|models|protocols|cache|peers|int8 ...] [--seconds 2] [--rounds 3]
                        [--models resnet50 ...] [--peer-seconds 3]

`make bench-peers` = `python -m bench.run --only peers`: the peer table alone (bench/peer_table.py).

Progress goes to stderr; the table (with one PASS/FAIL line per target) to stdout. Exit status 0
when every target passed, 1 otherwise (the table is printed either way).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # the limit runs onnxruntime in-process; DESIGN.md

from . import images, report, servers, throughput  # noqa: E402
from .progress import progress  # noqa: E402

PARTS = ("throughput", "memory", "startup", "models", "protocols", "cache", "peers", "int8")
RESULTS = servers.REPO / "bench-results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per load cell and round (default 2)")
    parser.add_argument("--limit-seconds", type=float, default=1.0,
                        help="seconds per batch size of the limit and round (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each cell keeps its best")
    parser.add_argument("--models", nargs="+", choices=tuple(throughput.MODELS), default=list(throughput.MODELS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(throughput.CONCURRENCY))
    parser.add_argument("--inferd-config", default="", help="extra INI text for inferd (experiments)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness increment for the bench and every server it starts (default -10: "
                             "higher priority, when allowed, so other work on a shared machine disturbs "
                             "the figures less; 0 leaves it)")
    parser.add_argument("--peer-seconds", type=float, default=3.0,
                        help="peers: seconds per load cell, server and round (default 3)")
    parser.add_argument("--requests", type=int, default=10_000, help="memory: requests in the leak check")
    parser.add_argument("--reloads", type=int, default=50, help="memory: reloads in the reload check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    _raise_priority(args.nice)
    workdir = servers.scratch_dir()
    table, by_round, paired, checks, extra, sections = [], [], [], [], {}, []
    try:
        pictures = images.write_images(RESULTS / "images")
        if "throughput" in args.only:
            settings = throughput.Settings(seconds=args.seconds, limit_seconds=args.limit_seconds, rounds=args.rounds,
                                           concurrency=tuple(args.concurrency), models=tuple(args.models),
                                           inferd_config=args.inferd_config.replace("\\n", "\n"))
            groups = throughput.run(pictures, settings, workdir)
            table, by_round, paired = report.rows(groups), report.round_rows(groups), report.paired_rows(groups)
            sections.append(("the CPU bound: cores / CPU-seconds per image in process, and inferd against it:",
                             report.bound_rows(groups), report.BOUND_COLUMNS))
            checks += [check for group in groups for check in group.checks()]
            extra["limits"] = {f"{g.model} / {g.image}": g.limit for g in groups}
            extra["paired"] = paired
            extra["by_round"] = by_round
        if "memory" in args.only:
            from . import memory
            result = memory.run(pictures, workdir, requests=args.requests, reloads=args.reloads)
            checks += result.pop("checks")
            extra["memory"] = result
        if "startup" in args.only:
            from . import startup
            result = startup.run(workdir)
            checks += result.pop("checks")
            extra["startup"] = result
            sections.append(("startup to READY=1 with EfficientNet-Lite0 and ResNet-50 loaded, median of 3 (s):",
                             [result["repository"]], tuple(result["repository"])))
        for part in ("models", "protocols", "cache"):
            if part in args.only:
                module = importlib.import_module(f"bench.{part}")
                result = module.run(pictures, workdir, seconds=args.seconds + 1.0, rounds=args.rounds)
                checks += result.pop("checks")
                extra[part] = result
        if "cache" in args.only:
            from . import cache
            sections.append(("the response cache, off and on, 4 connections (median of rounds):",
                             cache.rows(extra["cache"]), cache.COLUMNS))
        if "peers" in args.only:
            from . import peer_table
            settings = peer_table.Settings(seconds=args.peer_seconds, rounds=args.rounds,
                                           concurrency=tuple(args.concurrency))
            model_dir = servers.REPO / throughput.MODELS[settings.model]
            throughput.ensure_model(settings.model, model_dir)
            result = peer_table.run(pictures, model_dir, settings, workdir)
            checks += result["checks"]
            sections += peer_table.sections(result, settings)
            extra["peers"] = result
        if "int8" in args.only:
            from . import int8
            result = int8.run(pictures, tuple(args.models), args.rounds, args.limit_seconds)
            sections += [("int8 (models/build.py --int8) against float, in process, median of rounds:",
                          result["rows"], int8.COLUMNS),
                         ("int8 top-1 against float on the check photos (models/photos.py):",
                          result["agreement"], int8.AGREEMENT_COLUMNS)]
            extra["int8"] = result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    extra["total_seconds"] = round(time.monotonic() - began, 1)
    info = report.machine()
    print(report.render(table, by_round, paired, checks, info, tuple(sections)))
    json_path, csv_path = report.write(RESULTS, table, checks, info, extra)
    progress(f"done in {extra['total_seconds']:.0f}s; wrote {json_path.relative_to(servers.REPO)} and "
             f"{csv_path.relative_to(servers.REPO)}")
    return 0 if all(check["pass"] for check in checks) else 1


def _raise_priority(increment: int) -> None:
    """Renice this process (servers inherit it); without the privilege, say so and go on."""
    if not increment:
        return
    try:
        os.nice(increment)
    except OSError as exc:
        progress(f"cannot change priority by {increment} ({exc.strerror}); measuring at normal priority")


if __name__ == "__main__":
    sys.exit(main())
