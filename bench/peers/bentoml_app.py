"""BentoML 1.4 peer: one Service, a worker process per core, adaptive batching on the endpoint.

Configured as BentoML's documentation recommends for a CPU-bound model:
- "Parallelize requests handling" (docs/source/build-with-bentoml/parallelize-requests.rst): the GIL
  keeps one process from using several cores, so "start multiple workers", "setting workers to
  cpu_count"; each worker loads its own copy of the model, so onnxruntime gets cores / workers
  intra-op threads (1 here) instead of every worker spawning a thread per core;
- "Adaptive batching" (docs/source/get-started/adaptive-batching.rst): `@bentoml.api(batchable=True,
  max_batch_size=..., max_latency_ms=...)` with one list parameter; batch 8 like inferd. Its docs
  say a batch that cannot meet max_latency_ms is answered 503 and to raise it: 10 s, so that 16
  clients sending 12 MP photos queue instead of failing (the dispatcher still minimises latency).
The upload is a multipart file field named `file`, a `pathlib.Path` parameter (docs: "Input and
output types"). Run from the repository root: `bentoml serve bench.peers.bentoml_app:Classifier
--host 127.0.0.1 --port N`; /readyz answers 200 once the workers are up.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml

from bench.peers import classifier

WORKERS = os.environ.get("PEER_WORKERS", "cpu_count")
MAX_BATCH_SIZE = int(classifier.setting("MAX_BATCH_SIZE", 8))
MAX_LATENCY_MS = int(classifier.setting("MAX_WAIT_MS", 10_000))


# The access log is off, as it is for inferd in the bench (one line per request costs CPU).
@bentoml.service(workers=WORKERS if WORKERS == "cpu_count" else int(WORKERS), traffic={"timeout": 60},
                 logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self) -> None:
        workers = os.cpu_count() if WORKERS == "cpu_count" else int(WORKERS)
        self.model = classifier.from_environment(default_threads=max(1, len(os.sched_getaffinity(0)) // workers))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, file: list[Path]) -> list[dict]:
        return self.model.classify([path.read_bytes() for path in file])
