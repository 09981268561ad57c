"""LitServe 0.2 peer: an inference worker process per core, each batching its requests.

Configured as LitServe's documentation recommends on the CPU:
- LitServer's docstring (litserve/server.py): `workers_per_device` "For CPU, set to the number of
  cores available on the machine"; `accelerator="cpu"`; `num_api_servers=None` "Uses same count as
  inference workers (recommended)"; `fast_queue` (ZeroMQ) is for ">100 RPS", above these rates,
  so it stays off; `generate_client_file=False` as "Safe to disable in production";
- batching (lightning.ai/docs/litserve/features/batching): `LitAPI(max_batch_size=..., batch_timeout=...)`
  with decode_request per request and predict per batch: batch 8 like inferd, 10 ms window;
- each worker process loads its own session, so onnxruntime gets cores / workers intra-op threads
  (1 here) instead of every worker spawning a thread per core.
Run from the repository root: `python -m bench.peers.litserve_app PORT` (LitServer.run refuses
port 0: "port must be a value from 1024 to 65535"); GET /health answers 200 once workers are ready.
"""

from __future__ import annotations

import os
import sys

import litserve as ls

from bench.peers import classifier

WORKERS = int(classifier.setting("WORKERS", len(os.sched_getaffinity(0))))
MAX_BATCH_SIZE = int(classifier.setting("MAX_BATCH_SIZE", 8))
BATCH_TIMEOUT_S = classifier.setting("MAX_WAIT_MS", 10.0) / 1000


class ClassifierAPI(ls.LitAPI):
    def setup(self, device):
        self.model = classifier.from_environment(default_threads=max(1, len(os.sched_getaffinity(0)) // WORKERS))

    def decode_request(self, request):
        """The multipart form's `file` part -> tensor (runs in the worker, one request at a time)."""
        return self.model.preprocess(request["file"].file.read())

    def predict(self, tensors):
        return self.model.predict(list(tensors))

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    api = ClassifierAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/infer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
