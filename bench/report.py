"""The one table `make bench` prints, and the same results as JSON and CSV under bench-results/."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

COLUMNS = ("model", "image", "c", "inferd img/s", "p50 ms", "p99 ms", "limit img/s", "1-img ms",
           "ref img/s", "ref p50 ms", "inferd/limit", "inferd/ref")
BOUND_COLUMNS = ("model", "image", "CPU ms/img by round", "bound img/s by round", "inferd/bound by round", "median")
PAIRED_COLUMNS = ("model", "image", "turns", "inferd p50 ms", "in-process p50 ms", "ratio")


def machine() -> dict:
    """Cores, CPU model and Python/onnxruntime versions, for the header of the table."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "-"
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model, "python": platform.python_version(),
            "onnxruntime": ort_version, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def rows(groups) -> list[dict]:
    """One row per (model, image, concurrency) with both systems, the limit and the ratios."""
    out = []
    for group in groups:
        limit = group.limit
        for (system, c), result in sorted(group.load.items(), key=lambda item: item[0][1]):
            if system != "inferd":
                continue
            reference = group.load.get(("reference", c), {})
            out.append({
                "model": group.model, "image": group.image, "c": c,
                "inferd img/s": result["throughput"], "p50 ms": result["p50_ms"], "p99 ms": result["p99_ms"],
                "limit img/s": limit["throughput"], "1-img ms": limit["single_ms"],
                "ref img/s": reference.get("throughput", ""), "ref p50 ms": reference.get("p50_ms", ""),
                "inferd/limit": round(result["throughput"] / limit["throughput"], 2),
                "inferd/ref": round(result["throughput"] / reference["throughput"], 2)
                if reference.get("throughput") else "",
            })
    return out


ROUND_COLUMNS = ("model", "image", "inferd/limit by round", "limit median", "inferd/ref by round", "ref median")


def round_rows(groups) -> list[dict]:
    """One row per (model, image): inferd's throughput ratios within each round, and their medians."""
    rows = []
    for g in groups:
        limit, reference = g.by_round.get("limit", []), g.by_round.get("reference", [])
        rows.append({"model": g.model, "image": g.image, "inferd/limit by round": " ".join(map(str, limit)),
                     "limit median": round(statistics.median(limit), 3) if limit else "",
                     "inferd/ref by round": " ".join(map(str, reference)),
                     "ref median": round(statistics.median(reference), 3) if reference else ""})
    return rows


def bound_rows(groups) -> list[dict]:
    """One row per (model, image): CPU per image, the bound it gives and inferd's best over it, by round."""
    def joined(values):
        return " ".join(str(v) for v in values)
    return [{"model": g.model, "image": g.image, "CPU ms/img by round": joined(b["cpu_ms_per_image"] for b in g.bound),
             "bound img/s by round": joined(b["bound"] for b in g.bound),
             "inferd/bound by round": joined(g.by_round["bound"]), "median": round(statistics.median(g.by_round["bound"]), 3)}
            for g in groups if g.bound]


def paired_rows(groups) -> list[dict]:
    """One row per (model, image) measured in turns: inferd at c=1 against one image in process."""
    return [{"model": g.model, "image": g.image, "turns": g.paired["pairs"], "inferd p50 ms": g.paired["inferd_p50_ms"],
             "in-process p50 ms": g.paired["limit_p50_ms"], "ratio": g.paired["ratio"]}
            for g in groups if g.paired is not None]


def check(name: str, value: float, target: float, sense: str) -> dict:
    """One target: {"name", "value", "target", "pass"}; `sense` is ">=", "<=" or "<"."""
    ok = {">=": value >= target, "<=": value <= target, "<": value < target}[sense]
    return {"name": name, "value": round(value, 3), "target": f"{sense} {round(target, 3)}", "pass": ok}


def render(table: list[dict], by_round: list[dict], paired: list[dict], checks: list[dict], info: dict,
           sections: tuple = ()) -> str:
    """The table, the ratios within rounds, the latencies measured in turns, any further
    (title, rows, columns) sections, then one PASS/FAIL line per target."""
    lines = [f"inferd benchmark, {info['date']}: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
             f"onnxruntime {info['onnxruntime']}"]
    lines += _columns(table, COLUMNS)
    if by_round:
        lines += ["", "throughput ratios within each round (best concurrency or batch size of that round):"]
        lines += _columns(by_round, ROUND_COLUMNS)
    if paired:
        lines += ["", "concurrency 1 against one image in process, in turns:"] + _columns(paired, PAIRED_COLUMNS)
    for title, rows, columns in sections:
        if rows:
            lines += ["", title] + _columns(rows, columns)
    if checks:
        lines.append("")
    width = max((len(check["name"]) for check in checks), default=0)
    lines.extend(f"{'PASS' if check['pass'] else 'FAIL'}  {check['name'].ljust(width)}  {check['value']} "
                 f"(target {check['target']})" for check in checks)
    return "\n".join(lines)


def _columns(table: list[dict], columns: tuple[str, ...]) -> list[str]:
    if not table:
        return []
    cells = [[_text(row[column]) for column in columns] for row in table]
    widths = [max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(columns)]
    return (["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
            + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells])


def _text(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) and abs(value) >= 10 else str(value)


def write(directory: Path, table: list[dict], checks: list[dict], info: dict, extra: dict) -> tuple[Path, Path]:
    """bench-results/bench-<stamp>.json (everything) and .csv (the table); also latest.json/latest.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {"machine": info, "table": table, "checks": checks, **extra}
    json_path, csv_path = directory / f"bench-{stamp}.json", directory / f"bench-{stamp}.csv"
    for target in (json_path, directory / "latest.json"):
        target.write_text(json.dumps(document, indent=2, default=str))
    for target in (csv_path, directory / "latest.csv"):
        with open(target, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(table)
    return json_path, csv_path
