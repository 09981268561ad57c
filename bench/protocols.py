"""The Open Inference Protocol next to /infer (issue 11): the same image, the same daemon, rounds.

- throughput at 4 connections: /infer (multipart) and /v2/models/M/infer (a BYTES tensor in the
  binary extension), both sent by inferd-bench's lean client so that client costs match; v2 over
  /infer within each round, median over rounds. tritonclient's own `infer` is timed too (threads of
  one client each), as what a Triton user would see; its client CPU shares the 2 cores.
- parsing 32 images: the v2 body parser against the multipart parser, in process, same images.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from inferd.tools import loadclient

from . import servers
from .progress import progress

V2_TARGET = 0.95  # v2 throughput / /infer throughput
PARSE_TARGET = 1.10  # 32-image v2 parse time / multipart parse time
MODEL = "efficientnet-lite0"


def run(images: dict[str, Path], workdir: Path, *, seconds: float = 3.0, rounds: int = 3) -> dict:
    image = next(path for label, path in images.items() if "small" in label)
    data = image.read_bytes()
    daemon = servers.start_inferd(servers.REPO / "models" / MODEL, workdir / "protocols")
    try:
        throughput = _throughput(daemon.url, data, seconds, rounds)
    finally:
        daemon.stop()
    parsing = _parsing(data)
    checks = [
        {"name": "v2 BYTES / multipart /infer, images/s at c=4 (median of rounds)", "value": throughput["ratio"],
         "target": f">= {V2_TARGET}", "pass": throughput["ratio"] >= V2_TARGET},
        {"name": "parse 32 images: v2 binary / multipart", "value": parsing["ratio"],
         "target": f"<= {PARSE_TARGET}", "pass": parsing["ratio"] <= PARSE_TARGET},
    ]
    return {"throughput": throughput, "parsing": parsing, "checks": checks}


def _throughput(url: str, data: bytes, seconds: float, rounds: int) -> dict:
    multipart = loadclient.multipart_body(data, "small.jpg")
    v2_type, v2, v2_headers = loadclient.v2_body(data, "input", "logits")  # the top 5, as /infer answers
    cells = {"infer": [], "v2": [], "tritonclient": []}
    for number in range(rounds + 1):  # the first round warms up and is not counted
        infer = loadclient.summarise(loadclient.run_load(url, multipart[1], multipart[0], connections=4, duration=seconds))
        v2_run = loadclient.summarise(loadclient.run_load(url, v2, v2_type, connections=4, duration=seconds,
                                                    path=f"/v2/models/{MODEL}/infer", headers=v2_headers))
        triton = _tritonclient(url, data, seconds)
        if number:
            for name, result in (("infer", infer["throughput"]), ("v2", v2_run["throughput"]), ("tritonclient", triton)):
                cells[name].append(result)
            progress(f"protocols: round {number}: /infer {infer['throughput']:.1f}, v2 {v2_run['throughput']:.1f}, "
                     f"tritonclient {triton:.1f} images/s")
    ratios = [v / i for v, i in zip(cells["v2"], cells["infer"])]
    return {"infer": max(cells["infer"]), "v2": max(cells["v2"]), "tritonclient": max(cells["tritonclient"]),
            "ratio": round(statistics.median(ratios), 3), "by_round": [round(r, 3) for r in ratios],
            "tritonclient_ratio": round(statistics.median(t / i for t, i in zip(cells["tritonclient"],
                                                                                cells["infer"])), 3)}


def _tritonclient(url: str, data: bytes, seconds: float, connections: int = 4) -> float:
    import numpy as np
    import tritonclient.http as triton

    done = []

    def client() -> None:
        connection = triton.InferenceServerClient(url.removeprefix("http://"))
        tensor = triton.InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
        wanted = [triton.InferRequestedOutput("logits", binary_data=True, class_count=5)]
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            connection.infer(MODEL, [tensor], outputs=wanted)
            count += 1
        done.append(count)
        connection.close()

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def _parsing(data: bytes, count: int = 32, repeats: int = 50) -> dict:
    """Seconds to turn one 32-image body into its images, best of `repeats`, for each protocol."""
    import struct

    from inferd.http import multipart as form_parser
    from inferd.routes import oip

    parts = b"".join(struct.pack("<I", len(data)) + data for _ in range(count))
    header = (b'{"inputs":[{"name":"input","shape":[%d],"datatype":"BYTES","parameters":{"binary_data_size":%d}}]}'
              % (count, len(parts)))
    v2_body = header + parts
    boundary = "bench-boundary"
    form = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.jpg\"\r\n"
                    f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for i in range(count))
    form += f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"

    def v2() -> int:
        head, rest = oip.split_body(v2_body, str(len(header)))
        parsed = oip.parse_request(oip.parse_json(head), rest, input_name="input", input_shape=(3, 224, 224),
                                   output_name="logits", classes=1000, max_items=64)
        return len(parsed.input.values)

    def multipart() -> int:
        parts = form_parser.iter_parts([form], form_parser.parse_boundary(content_type), max_body_bytes=1 << 30,
                                       max_parts=64, max_header_bytes=8192, max_part_bytes=1 << 30)
        return sum(1 for part in parts if part.name == "files")

    timings = {}
    for name, parse in (("v2", v2), ("multipart", multipart)):
        assert parse() == count
        best = min(_timed(parse) for _ in range(repeats))
        timings[name] = best
    return {"v2_ms": round(timings["v2"] * 1000, 3), "multipart_ms": round(timings["multipart"] * 1000, 3),
            "ratio": round(timings["v2"] / timings["multipart"], 3), "images": count}


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began
