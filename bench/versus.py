"""Two inferd trees side by side: this checkout against another (an older commit's worktree), on
the same model, images and load, in alternating rounds, so the box's other work weighs on both
alike. Prints images/s per tree and the median of the per-round ratios.

    git worktree add /tmp/before <commit>
    python -m bench.versus /tmp/before
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from . import images, servers
from .loadgen import loadgen

CONCURRENCY = (1, 4, 16)


def start(tree: Path | None, model: Path, workdir: Path) -> servers.Server:
    """inferd from `tree` (its package first on PYTHONPATH), or from this checkout when None."""
    saved = dict(os.environ)
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
    try:
        return servers.start_inferd(model, workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def images_per_second(url: str, body: bytes, content_type: str, connections: int, seconds: float) -> float:
    loadgen.run_load(url, body, content_type, connections=connections, duration=0.5)  # warm the connections
    return loadgen.summarise(loadgen.run_load(url, body, content_type, connections=connections,
                                              duration=seconds))["throughput"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the other tree (its inferd/ package is started)")
    parser.add_argument("--model", type=Path, default=servers.REPO / "models" / "efficientnet-lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.5, help="of load per tree, round and concurrency")
    args = parser.parse_args(argv)
    work = servers.scratch_dir()
    daemons = {"before": start(args.before.resolve(), args.model, work / "before"),
               "after": start(None, args.model, work / "after")}
    try:
        for label, path in images.write_images(servers.REPO / "bench-results" / "images").items():
            content_type, body = loadgen.multipart_body(path.read_bytes(), path.name)
            for connections in CONCURRENCY:
                seen = {name: [] for name in daemons}
                for _ in range(args.rounds):
                    for name, daemon in daemons.items():
                        seen[name].append(images_per_second(daemon.url, body, content_type, connections, args.seconds))
                ratio = statistics.median(a / b for a, b in zip(seen["after"], seen["before"]))
                print(f"{label:14} c={connections:<2}  before {statistics.median(seen['before']):6.1f}/s  "
                      f"after {statistics.median(seen['after']):6.1f}/s  after/before {ratio:.2f}", flush=True)
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
