"""Where a server's memory goes: RSS of its tree when ready and after each kind of load, and what
one Python process holds after each import. A one-off study for the peer table's RSS target.

    python -m bench.memory_steps [inferd kserve ...]

For each server (default inferd and KServe, the smallest single-process peer): RSS when it first
answered, then the peak during and the RSS after 3 s of load, small photo then 12 MP photo, at 1
and at 16 connections. Then, in this process: RSS after importing numpy, Pillow and onnxruntime,
after creating a session of the default model and after one run of a batch of 8.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import contenders, images, proctree, servers
from inferd.tools import loadclient

MODEL_DIR = servers.REPO / "models" / "efficientnet-lite0"


def server_steps(contender: contenders.Contender, pictures: dict[str, Path]) -> list[str]:
    small = next(iter(pictures.values()))
    server = contenders.start(contender, MODEL_DIR, Path(tempfile.mkdtemp(prefix="inferd-memory-")),
                              contender.body(small.read_bytes(), small.name))
    try:
        steps = [f"ready {_mb(server.proc.pid)}"]
        for label, path in pictures.items():
            content_type, body = contender.body(path.read_bytes(), path.name)
            for connections in (1, 16):
                with proctree.PeakMemory(server.proc.pid, 0.05) as peak:
                    loadclient.run_load(server.url, body, content_type, connections=connections, duration=3,
                                     path=contender.infer)
                steps.append(f"{label} c={connections}: peak {peak.rss / 1024:.0f}, after {_mb(server.proc.pid)}")
        return steps
    finally:
        server.stop()


def import_steps() -> list[str]:
    def rss() -> str:
        return f"{proctree.memory_kib(os.getpid())[0] / 1024:.0f}"
    steps = [f"python + bench {rss()}"]
    import PIL.Image  # noqa: F401
    steps.append(f"+ Pillow {rss()}")
    import onnxruntime as ort
    steps.append(f"+ onnxruntime {rss()}")
    session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    steps.append(f"+ session {rss()}")
    session.run(None, {session.get_inputs()[0].name: np.zeros((8, 3, 224, 224), np.float32)})
    steps.append(f"+ one batch of 8 {rss()}")
    return steps


def _mb(pid: int) -> str:
    return f"{proctree.memory_kib(pid)[0] / 1024:.0f}"


def main(argv: list[str]) -> int:
    pictures = images.write_images(servers.REPO / "bench-results" / "images")
    by_name = {c.name: c for c in contenders.ALL}
    for name in argv or ["inferd", "kserve"]:
        if reason := by_name[name].missing():
            print(f"{name}: not run ({reason})")
            continue
        print(f"{name} (RSS MB of the process tree): " + "; ".join(server_steps(by_name[name], pictures)), flush=True)
    print("one process (RSS MB): " + "; ".join(import_steps()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
