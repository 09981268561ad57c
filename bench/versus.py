"""Two inferd daemons side by side: this checkout against another tree (an older commit's
worktree), or against itself under other settings, on the same model, images and load, in
alternating rounds, so the box's other work weighs on both alike. Prints images/s of each and the
median of the per-round ratios, then each daemon's peak RSS.

    git worktree add /tmp/before <commit>
    python -m bench.versus /tmp/before
    python -m bench.versus . --after-config $'[batching]\ninference_workers = 2'
    python -m bench.versus /tmp/before --cpu-quota 1    # each daemon in a cgroup allowed one CPU
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from . import images, servers
from inferd.tools import loadclient

CONCURRENCY = (1, 4, 16)


def start(tree: Path | None, model: Path, workdir: Path, config: str = "", cgroup: Path | None = None,
          env: dict[str, str] | None = None) -> servers.Server:
    """inferd from `tree` (its package first on PYTHONPATH), or from this checkout when None."""
    return servers.start_inferd(model, workdir, config, env={**({"PYTHONPATH": str(tree)} if tree else {}),
                                                             **(env or {})}, cgroup=cgroup)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(url: str, body: bytes, content_type: str, connections: int, seconds: float) -> dict:
    """loadclient.summarise of `seconds` of load (throughput, p50_ms, p99_ms...), after a warm-up."""
    loadclient.run_load(url, body, content_type, connections=connections, duration=0.5)  # warm the connections
    return loadclient.summarise(loadclient.run_load(url, body, content_type, connections=connections, duration=seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the other tree (its inferd/ package is started)")
    parser.add_argument("--model", type=Path, default=servers.REPO / "models" / "efficientnet-lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.5, help="of load per tree, round and concurrency")
    parser.add_argument("--before-config", default="", help="INI text added to the first daemon's config")
    parser.add_argument("--after-config", default="", help="INI text added to this checkout's daemon's config")
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of this checkout's daemon (repeatable)")
    parser.add_argument("--cpu-quota", type=float, default=0.0,
                        help="run each daemon in a cgroup (v1 cpu, as root) allowed this many CPUs; 0: none")
    args = parser.parse_args(argv)
    work = servers.scratch_dir()
    groups = {name: servers.cpu_quota_group(f"inferd-versus-{name}", args.cpu_quota) if args.cpu_quota else None
              for name in ("before", "after")}
    daemons = {"before": start(args.before.resolve(), args.model, work / "before", args.before_config,
                               groups["before"]),
               "after": start(None, args.model, work / "after", args.after_config, groups["after"],
                              dict(item.split("=", 1) for item in args.after_env))}
    try:
        for label, path in images.write_images(servers.REPO / "bench-results" / "images").items():
            content_type, body = loadclient.multipart_body(path.read_bytes(), path.name)
            for connections in CONCURRENCY:
                seen = {name: [] for name in daemons}
                for _ in range(args.rounds):
                    for name, daemon in daemons.items():
                        seen[name].append(measure(daemon.url, body, content_type, connections, args.seconds))
                print(_line(label, connections, seen), flush=True)
        print("peak RSS  " + "  ".join(f"{name} {peak_rss_mb(d.proc.pid):.0f} MB" for name, d in daemons.items()))
    finally:
        for daemon in daemons.values():
            daemon.stop()
        for group in filter(None, groups.values()):
            servers.remove_group(group)
    return 0


def _line(label: str, connections: int, seen: dict[str, list[dict]]) -> str:
    """Medians over rounds of images/s and p99 of each daemon, and the median per-round ratio."""
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in seen[name])
    ratio = statistics.median(a["throughput"] / b["throughput"] for a, b in zip(seen["after"], seen["before"]))
    spread = {name: max(r["throughput"] for r in rs) / max(min(r["throughput"] for r in rs), 1e-9) - 1
              for name, rs in seen.items()}
    return (f"{label:14} c={connections:<2}  before {median('before', 'throughput'):6.1f}/s p99 "
            f"{median('before', 'p99_ms'):6.1f} ms  after {median('after', 'throughput'):6.1f}/s p99 "
            f"{median('after', 'p99_ms'):6.1f} ms  after/before {ratio:.2f}  spread over rounds "
            f"{spread['before']:.0%} / {spread['after']:.0%}")


if __name__ == "__main__":
    raise SystemExit(main())
