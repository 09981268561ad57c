"""`inferd-bench`: load-test a running inferd (or any server with its API), or measure the in-process limit.

    inferd-bench IMAGE [--url http://127.0.0.1:8000] [-c CONNECTIONS] [-d SECONDS | -n COUNT] [--json]
    inferd-bench IMAGE --limit MODEL_DIR [--threads N] [-d SECONDS | -n COUNT] [--json]
    inferd-bench IMAGE --url URL --paired MODEL_DIR [--threads N] [-d SECONDS | -n COUNT] [--json]
    inferd-bench IMAGE --v2 MODEL[:INPUT[:OUTPUT]] [--url URL] [-c CONNECTIONS] [-d SECONDS | -n COUNT] [--json]

Load mode opens CONNECTIONS keep-alive connections (one thread each) that POST the image as
multipart (field `file`) to /infer back to back, and reports throughput, latency percentiles,
status counts and errors; with --v2 it POSTs the image instead as a BYTES tensor of the Open
Inference Protocol (binary tensor data extension) to /v2/models/MODEL/infer. Limit mode classifies the same image in this process with inferd's own
preprocess and model modules (decode + preprocess + session.run, no HTTP) at several batch sizes and
reports the best. Paired mode takes turns: one request to the server, then the same image classified
once in this process, and again; it reports both medians and their ratio, the server's latency at
concurrency 1 against the in-process time of one image, with the machine in the same state for
both. Standard library only, except what --limit and --paired import from inferd.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import time
from pathlib import Path

from .loadclient import Connection, multipart_body, percentile, prepared_request, run_load, summarise, v2_body

LIMIT_BATCH_SIZES = (1, 2, 4, 8)


# -- the in-process limit -------------------------------------------------------------------------

def measure_limit(model_dir: Path, data: bytes, *, threads: int = 0, duration: float | None = 3.0,
                  count: int | None = None, batch_sizes=LIMIT_BATCH_SIZES) -> dict:
    """Classify `data` in this process, decode + preprocess + session.run, at each batch size.

    Returns {"throughput", "best_batch_size", "single_ms" (median time of one image end to end),
    "by_batch": {size: images/s}}. Each batch size runs for `duration` seconds or `count` images.
    `threads` is onnxruntime's intra-op thread count, 0 = inferd's default. Raises ModelError or
    ImageError as inferd would when loading the model or reading the image.
    """
    classify = limit_runner(model_dir, data, threads=threads, warmup_batch=max(batch_sizes))
    return best_limit([{size: images_per_second(classify, size, duration, count) for size in batch_sizes}])


def limit_runner(model_dir: Path, data: bytes, *, threads: int = 0, warmup_batch: int = 8):
    """Load the model as inferd does; returns classify(batch_size), which decodes and preprocesses
    `data` batch_size times, then runs one batch. Imports inferd's model code only now."""
    import numpy as np

    from .. import model as model_module
    from ..imaging import preprocess
    from ..config import KNOWN_FORMATS

    model_dir = Path(model_dir)
    model = model_module.load(model_dir, model_dir / "model.onnx", model_dir / "labels.txt",
                              intra_op_threads=threads, warmup_batch=warmup_batch)
    spec = model.manifest.input

    def classify(batch_size: int) -> None:
        tensors = [preprocess.to_tensor(data, spec, max_pixels=1 << 62, formats=KNOWN_FORMATS)
                   for _ in range(batch_size)]
        model.run(np.stack(tensors))

    return classify


def images_per_second(classify, batch_size: int, duration: float | None, count: int | None) -> tuple[float, float]:
    """(images per second, median seconds per call) of `classify(batch_size)` after one warm-up call;
    runs until `count` images or `duration` seconds (at least one call)."""
    classify(batch_size)
    calls, started = [], time.perf_counter()
    deadline = started + duration if duration is not None else None
    while not calls or ((count is None or len(calls) * batch_size < count)
                        and (deadline is None or time.perf_counter() < deadline)):
        began = time.perf_counter()
        classify(batch_size)
        calls.append(time.perf_counter() - began)
    return len(calls) * batch_size / sum(calls), sorted(calls)[len(calls) // 2]


def best_limit(rounds: list[dict]) -> dict:
    """Combine rounds of {batch_size: (images/s, median s per call)}: the best rate per batch size,
    the best batch size overall, and the fastest single-image median ("single_ms")."""
    rates = {size: max(r[size][0] for r in rounds) for size in rounds[0]}
    best = max(rates, key=rates.get)
    single = min(r[1][1] for r in rounds) if 1 in rounds[0] else None
    return {"throughput": round(rates[best], 2), "best_batch_size": best,
            "single_ms": round(single * 1000, 2) if single is not None else None,
            "by_batch": {str(size): round(rate, 2) for size, rate in rates.items()}}


# -- one request at a time against one image in process ----------------------------------------------

def measure_paired(url: str, model_dir: Path, data: bytes, filename: str, *, threads: int = 0,
                   duration: float | None = 10.0, count: int | None = None, timeout: float = 60.0) -> dict:
    """Take turns: one POST /infer of `data`, then one in-process classification of it, for
    `duration` seconds or `count` pairs. Returns paired_summary(); raises RuntimeError on an
    answer other than 200, ModelError or ImageError as the limit does."""
    classify = limit_runner(model_dir, data, threads=threads, warmup_batch=1)
    content_type, body = multipart_body(data, filename)
    return paired_summary(*take_turns(url, body, content_type, classify, duration=duration, count=count,
                                      timeout=timeout))


def take_turns(url: str, body: bytes, content_type: str, classify, *, duration: float | None,
               count: int | None, timeout: float = 60.0) -> tuple[list[float], list[float]]:
    """(request seconds, in-process seconds), one of each per turn, after one warm-up turn.

    A shared machine's speed drifts by tens of percent over minutes; measured in turns, both sides
    of the ratio see the same moments. Runs at least one turn."""
    if count is None and duration is None:
        raise ValueError("give a pair count or a duration")
    request = prepared_request(url, "/infer", body, content_type)
    connection = Connection(url, timeout)
    served, local = [], []
    try:
        deadline = None if duration is None else time.monotonic() + duration
        for turn in (itertools.count(-1) if count is None else range(-1, count)):
            started = time.perf_counter()
            status, closes = connection.exchange(request)
            seconds = time.perf_counter() - started
            if status != 200 or closes:
                raise RuntimeError(f"{url}: POST /infer answered {status}" + (", closing" if closes else ""))
            started = time.perf_counter()
            classify(1)
            if turn >= 0:
                served.append(seconds)
                local.append(time.perf_counter() - started)
            if turn >= 0 and deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        connection.close()
    return served, local


def paired_summary(served: list[float], local: list[float]) -> dict:
    """Medians in ms of both sides and their ratio (served / in-process)."""
    served_ms, local_ms = percentile(sorted(served), 50) * 1000, percentile(sorted(local), 50) * 1000
    return {"pairs": len(served), "inferd_p50_ms": round(served_ms, 2), "limit_p50_ms": round(local_ms, 2),
            "ratio": round(served_ms / local_ms, 3)}


# -- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inferd-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the image file every request posts")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("-c", "--connections", type=int, default=1, help="keep-alive connections (default 1)")
    parser.add_argument("-d", "--duration", type=float, help="seconds to run (default 10 unless -n)")
    parser.add_argument("-n", "--count", type=int, help="requests (or images, with --limit) to send")
    parser.add_argument("--warmup", type=int, default=0, help="requests sent and not counted before timing")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--limit", metavar="MODEL_DIR", type=Path,
                        help="measure the in-process limit of this model directory instead (no HTTP)")
    parser.add_argument("--paired", metavar="MODEL_DIR", type=Path,
                        help="take turns: one request to --url, one in-process classification with this model "
                             "directory; report both medians and their ratio")
    parser.add_argument("--threads", type=int, default=0,
                        help="with --limit or --paired: intra-op threads, 0 = cores")
    parser.add_argument("--v2", metavar="MODEL[:INPUT[:OUTPUT]]",
                        help="post to the Open Inference Protocol route of MODEL (input name, default 'input'; "
                             "with OUTPUT, ask for its top 5 classes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.duration is None and args.count is None:
        args.duration = 10.0
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    if args.limit is not None and args.paired is not None:
        parser.error("--limit and --paired do not go together")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every request got a 2xx answer (or the limit was measured), 1 otherwise."""
    args = parse_args(argv)
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        print(f"inferd-bench: {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        result = measure_limit(args.limit, data, threads=args.threads, duration=args.duration, count=args.count)
        print(json.dumps(result) if args.json else _limit_text(result))
        return 0
    if args.paired is not None:
        try:
            result = measure_paired(args.url, args.paired, data, args.image.name, threads=args.threads,
                                    duration=args.duration, count=args.count, timeout=args.timeout)
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            print(f"inferd-bench: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result) if args.json else _paired_text(result))
        return 0
    content_type, body = multipart_body(data, args.image.name)
    target = {"path": "/infer", "headers": None}
    if args.v2:
        model, _, names = args.v2.partition(":")
        input_name, _, output_name = names.partition(":")
        content_type, body, extra = v2_body(data, input_name or "input", output_name)
        target = {"path": f"/v2/models/{model}/infer", "headers": extra}
    if args.warmup:
        run_load(args.url, body, content_type, connections=args.connections, count=args.warmup,
                 timeout=args.timeout, **target)
    result = summarise(run_load(args.url, body, content_type, connections=args.connections,
                                count=args.count, duration=args.duration, timeout=args.timeout, **target))
    print(json.dumps(result) if args.json else _load_text(result))
    return 0 if result["ok"] == result["requests"] and result["requests"] else 1


def _load_text(r: dict) -> str:
    return (f"{r['requests']} requests in {r['seconds']:.2f}s: {r['throughput']:.1f} images/s\n"
            f"latency ms: p50 {r['p50_ms']:.1f}  p90 {r['p90_ms']:.1f}  p99 {r['p99_ms']:.1f}  max {r['max_ms']:.1f}\n"
            f"statuses: {r['statuses'] or '-'}  errors: {r['errors'] or '-'}")


def _paired_text(r: dict) -> str:
    return (f"{r['pairs']} turns: server p50 {r['inferd_p50_ms']:.1f} ms, in-process p50 {r['limit_p50_ms']:.1f} ms, "
            f"ratio {r['ratio']:.3f}")


def _limit_text(r: dict) -> str:
    rates = "  ".join(f"batch {size}: {rate:.1f}/s" for size, rate in r["by_batch"].items())
    return (f"in-process limit: {r['throughput']:.1f} images/s at batch {r['best_batch_size']}; "
            f"one image end to end {r['single_ms']:.1f} ms\n{rates}")


if __name__ == "__main__":
    sys.exit(main())
