"""KServe 0.21 peer: its Python model server (kserve.ModelServer) with a custom kserve.Model.

Configured as KServe's documentation describes a custom Python model server:
- "Deploy Custom Python Model Server" (kserve.github.io, modelserving/v1beta1/custom/custom_model):
  subclass kserve.Model, load in load() at start-up, `predict(payload, headers)`,
  `kserve.ModelServer().start([model])`; images travel in the V1 protocol as
  {"instances": [{"image": {"b64": ...}}]} to POST /v1/models/<name>:predict;
- one process, the ModelServer default (`--workers` 1: "The number of uvicorn workers for
  multi-processing"; kserve PR #1106 set the default to 1 for memory), onnxruntime with its
  default threads (one per core) inside it;
- KServe's batching lives in its Kubernetes agent sidecar (InferenceService `batcher:`
  maxBatchSize/maxLatency), not in the Python server: there is none to turn on here, so each
  request's instances run as one batch;
- gRPC off (the bench speaks HTTP) and the per-request latency log line off, as inferd's access
  log is off in the bench.
Run from the repository root: `python -m bench.peers.kserve_app --http_port N`; GET
/v1/models/<name> answers 200 once the model is ready.
"""

from __future__ import annotations

import base64

import kserve

from bench.peers import classifier

NAME = "classifier"


class ONNXClassifier(kserve.Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = classifier.from_environment()
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        images = [base64.b64decode(instance["image"]["b64"]) for instance in payload["instances"]]
        return {"predictions": self.model.classify(images)}


if __name__ == "__main__":
    kserve.ModelServer(enable_grpc=False, enable_latency_logging=False).start([ONNXClassifier(NAME)])
