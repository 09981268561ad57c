"""Two inferd daemons side by side: this checkout against another tree (an older commit's
worktree), or against itself under other settings, on the same model, images and load, in
alternating rounds, so the box's other work weighs on both alike. Prints images/s of each and the
median of the per-round ratios, then each daemon's peak RSS.

    git worktree add /tmp/before <commit>
    python -m bench.versus /tmp/before
    python -m bench.versus . --after-config $'[batching]\ninference_workers = 2'
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from . import images, servers
from .loadgen import loadgen

CONCURRENCY = (1, 4, 16)


def start(tree: Path | None, model: Path, workdir: Path, config: str = "") -> servers.Server:
    """inferd from `tree` (its package first on PYTHONPATH), or from this checkout when None."""
    return servers.start_inferd(model, workdir, config, env={"PYTHONPATH": str(tree)} if tree else None)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    parser.add_argument("--before-config", default="", help="INI text added to the first daemon's config")
    parser.add_argument("--after-config", default="", help="INI text added to this checkout's daemon's config")
    args = parser.parse_args(argv)
    work = servers.scratch_dir()
    daemons = {"before": start(args.before.resolve(), args.model, work / "before", args.before_config),
               "after": start(None, args.model, work / "after", args.after_config)}
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
        print("peak RSS  " + "  ".join(f"{name} {peak_rss_mb(d.proc.pid):.0f} MB" for name, d in daemons.items()))
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
