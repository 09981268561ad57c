"""The peer table: inferd against BentoML, LitServe, mosec and KServe, same model, images and client.

One server runs at a time. Each round starts every server in turn (in an order rotated from round
to round), times its start, sends each image at each concurrency for `seconds` after a warm-up
burst, samples the memory of its whole process tree meanwhile, and stops it. Targets compare
servers within each round and check the median over rounds (issue 12):

- throughput: inferd's best concurrency >= 1.3x the best peer's best concurrency, on each image;
- p99 at the highest concurrency: inferd's <= the lowest p99 any peer reached there;
- peak RSS of the tree under load <= 2/3 of the smallest single-process peer's (max over rounds);
- install size (bench/install_size.py) smaller than every peer's;
- start to first classification <= 1/2 of the fastest peer's (median over rounds).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import contenders, install_size, proctree, report
from inferd.tools import loadclient
from .progress import progress

CONCURRENCY = (1, 4, 16)
THROUGHPUT_RATIO = 1.3
P99_RATIO = 1.0
RSS_RATIO = 2 / 3
START_RATIO = 0.5


@dataclass
class Settings:
    seconds: float = 3.0  # per load cell and round
    rounds: int = 3
    concurrency: tuple[int, ...] = CONCURRENCY
    model: str = "efficientnet-lite0"


@dataclass
class Record:
    """Everything measured of one server over the rounds."""

    load: dict = field(default_factory=dict)  # (image, c) -> [summary per round]
    rss_kib: list = field(default_factory=list)  # peak tree RSS per round
    pss_kib: list = field(default_factory=list)
    processes: int = 0
    to_health: list = field(default_factory=list)
    to_answer: list = field(default_factory=list)
    top1: str = ""
    failure: str = ""  # why it did not run, when it did not


def run(images: dict[str, Path], model_dir: Path, settings: Settings, workdir: Path) -> dict:
    """{"rows", "servers", "by_round", "checks", "skipped"}; a peer that cannot start is skipped with its reason."""
    records = {c.name: Record() for c in contenders.ALL}
    for c in contenders.ALL:
        if reason := c.missing():
            records[c.name].failure = reason
    probe = next(iter(images.values()))
    for number in range(settings.rounds):
        order = [c for c in contenders.ALL if not records[c.name].failure]
        shift = number % max(1, len(order))
        for contender in order[shift:] + order[:shift]:
            _measure_round(contender, records[contender.name], images, model_dir, probe, settings,
                           workdir / f"round{number}", number)
    return summarise(records, list(images), settings)


def _measure_round(contender, record: Record, images, model_dir, probe: Path, settings: Settings,
                   workdir: Path, number: int) -> None:
    try:
        server = contenders.start(contender, model_dir, workdir, contender.body(probe.read_bytes(), probe.name))
    except RuntimeError as exc:
        record.failure = str(exc).splitlines()[0]
        progress(f"peers, round {number + 1}: {contender.name} did not start: {exc}")
        return
    try:
        record.to_health.append(server.to_health)
        record.to_answer.append(server.to_answer)
        record.top1 = server.top1
        progress(f"peers, round {number + 1}, {contender.name}: healthy after {server.to_health:.2f}s, first answer "
                 f"after {server.to_answer:.2f}s ({server.top1})")
        with proctree.PeakMemory(server.proc.pid) as memory:
            for label, path in images.items():
                content_type, body = contender.body(path.read_bytes(), path.name)
                top = max(settings.concurrency)
                loadclient.run_load(server.url, body, content_type, connections=top, count=top, path=contender.infer)
                for concurrency in settings.concurrency:
                    result = loadclient.summarise(loadclient.run_load(server.url, body, content_type, path=contender.infer,
                                                                connections=concurrency, duration=settings.seconds))
                    record.load.setdefault((label, concurrency), []).append(result)
                    progress(f"peers, round {number + 1}, {label}, c={concurrency:<2} {contender.name:8}: "
                             f"{result['throughput']:6.1f} images/s, p50 {result['p50_ms']:.0f} ms, p99 "
                             f"{result['p99_ms']:.0f} ms, statuses {result['statuses']}"
                             + (f", errors {result['errors']}" if result["errors"] else ""))
        record.rss_kib.append(memory.rss)
        record.pss_kib.append(memory.pss)
        record.processes = max(record.processes, memory.processes)
    finally:
        server.stop()


# -- the table and the targets --------------------------------------------------------------------

COLUMNS = ("image", "c", "server", "img/s", "p50 ms", "p99 ms", "errors")
SERVER_COLUMNS = ("server", "processes", "peak RSS MB", "peak PSS MB", "to health s", "to 1st answer s",
                  "install MB", "top-1")
ROUND_COLUMNS = ("image", "inferd/best peer by round", "median", "best peer", "p99 inferd/lowest peer by round",
                 "p99 median")


def sections(result: dict, settings: Settings) -> list[tuple]:
    """(title, rows, columns) of the peer tables, for report.render."""
    skipped = "; ".join(f"{name}: {why}" for name, why in result["skipped"].items())
    return [(f"peers, {settings.model}, the median of {settings.rounds} rounds by throughput"
             + (f" (not run: {skipped})" if skipped else "") + ":", result["rows"], COLUMNS),
            ("peers: memory of the whole process tree under load (max over rounds), start-up (median), "
             "install size, top-1 label:", result["servers"], SERVER_COLUMNS),
            ("peers: inferd against the best peer within each round (best concurrency of each):",
             result["by_round"], ROUND_COLUMNS)]


def summarise(records: dict[str, Record], labels: list[str], settings: Settings) -> dict:
    ran = {name: r for name, r in records.items() if not r.failure and r.load}
    peers = [name for name in ran if name != "inferd"]
    rows = [_row(label, c, name, record) for label in labels for c in settings.concurrency
            for name, record in ran.items()]
    servers = [_server_row(name, record) for name, record in ran.items()]
    by_round = [_round_row(label, ran, peers, settings) for label in labels] if "inferd" in ran and peers else []
    checks = _checks(by_round, servers, peers) if by_round else []
    skipped = {name: r.failure for name, r in records.items() if r.failure}
    return {"rows": rows, "servers": servers, "by_round": by_round, "checks": checks, "skipped": skipped}


def _median_round(results: list[dict]) -> dict:
    """The round whose throughput is the median (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r["throughput"])
    return ordered[(len(ordered) - 1) // 2]


def _row(label: str, c: int, name: str, record: Record) -> dict:
    result = _median_round(record.load[(label, c)])
    errors = sum(r["requests"] - r["ok"] for r in record.load[(label, c)])
    return {"image": label, "c": c, "server": name, "img/s": result["throughput"], "p50 ms": result["p50_ms"],
            "p99 ms": result["p99_ms"], "errors": errors}


def _server_row(name: str, record: Record) -> dict:
    return {"server": name, "processes": record.processes,
            "peak RSS MB": round(max(record.rss_kib) / 1024, 1), "peak PSS MB": round(max(record.pss_kib) / 1024, 1),
            "to health s": round(statistics.median(record.to_health), 2),
            "to 1st answer s": round(statistics.median(record.to_answer), 2),
            "install MB": install_size.installed_mb(name) or "", "top-1": record.top1}


def _best_in_round(record: Record, label: str, number: int) -> float:
    return max(results[number]["throughput"] for (image, _), results in record.load.items()
               if image == label and len(results) > number)


def _round_row(label: str, ran: dict[str, Record], peers: list[str], settings: Settings) -> dict:
    """inferd's best concurrency over the best peer's best concurrency in each round, and p99s at the top c."""
    top = max(settings.concurrency)
    rounds = min(len(ran[name].load[(label, top)]) for name in ran)
    ratios, p99s, winners = [], [], []
    for number in range(rounds):
        best = max(peers, key=lambda name: _best_in_round(ran[name], label, number))
        winners.append(best)
        ratios.append(round(_best_in_round(ran["inferd"], label, number) / _best_in_round(ran[best], label, number), 3))
        lowest = min(ran[name].load[(label, top)][number]["p99_ms"] for name in peers)
        p99s.append(round(ran["inferd"].load[(label, top)][number]["p99_ms"] / lowest, 3))
    return {"image": label, "inferd/best peer by round": " ".join(map(str, ratios)),
            "median": statistics.median(ratios), "best peer": max(set(winners), key=winners.count),
            "p99 inferd/lowest peer by round": " ".join(map(str, p99s)), "p99 median": statistics.median(p99s),
            "top": top}


def _checks(by_round: list[dict], servers: list[dict], peers: list[str]) -> list[dict]:
    out = []
    for row in by_round:
        out.append(report.check(f"peers: inferd / best peer throughput, median of rounds, {row['image']}", row["median"],
                          THROUGHPUT_RATIO, ">="))
        out.append(report.check(f"peers: inferd p99 / lowest peer p99 at c={row['top']}, median of rounds, {row['image']}",
                          row["p99 median"], P99_RATIO, "<="))
    by_name = {row["server"]: row for row in servers}
    inferd, others = by_name["inferd"], [by_name[name] for name in peers]
    single = [row for row in others if row["processes"] == 1]
    if single:
        smallest = min(single, key=lambda row: row["peak RSS MB"])
        out.append(report.check(f"peers: inferd peak RSS / smallest single-process peer's ({smallest['server']})",
                          inferd["peak RSS MB"] / smallest["peak RSS MB"], RSS_RATIO, "<="))
    sizes = [row["install MB"] for row in others if row["install MB"]]
    if inferd["install MB"] and sizes:
        out.append(report.check("peers: inferd install size / smallest peer's", inferd["install MB"] / min(sizes), 1.0, "<"))
    fastest = min(others, key=lambda row: row["to 1st answer s"])
    out.append(report.check(f"peers: inferd start to first answer / fastest peer's ({fastest['server']})",
                      inferd["to 1st answer s"] / fastest["to 1st answer s"], START_RATIO, "<="))
    return out

