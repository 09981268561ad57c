"""mosec 0.9 peer: a Rust HTTP front end, 2 preprocessing processes, 1 batching inference process.

Configured as mosec's own documentation does for an image classifier on the CPU:
- the ResNet-50 example (mosec examples/resnet50_msgpack/server.py) splits decoding from inference:
  `append_worker(Preprocess, num=2)`, then `append_worker(Inference, num=1,
  max_batch_size=INFERENCE_BATCH_SIZE)`, with MsgpackMixin so the client sends {"image": bytes};
- dynamic batching "will enable ... if max_batch_size > 1", waiting at most `max_wait_time` ms
  (Server.append_worker docstring; the CLI default `--wait` is 10 ms): batch 8, like inferd, 10 ms;
- the route is configurable (`route=`), so it answers POST /infer like the others.
onnxruntime keeps its default threads in the one inference process. Run from the repository root:
`python -m bench.peers.mosec_app --port N --timeout 30000` (its CLI; `--timeout` is per request).
"""

from __future__ import annotations

from mosec import Server, Worker
from mosec.errors import ValidationError
from mosec.mixin import MsgpackMixin

from bench.peers import classifier

MAX_BATCH_SIZE = int(classifier.setting("MAX_BATCH_SIZE", 8))
MAX_WAIT_MS = int(classifier.setting("MAX_WAIT_MS", 10))
PREPROCESS_WORKERS = int(classifier.setting("WORKERS", 2))


class Preprocess(MsgpackMixin, Worker):
    """Client request {"image": <encoded bytes>} -> float32 tensor."""

    def __init__(self):
        super().__init__()
        self.spec = classifier.read_manifest(classifier.model_dir() / "model.ini")

    def forward(self, data: dict):
        try:
            return classifier.preprocess(data["image"], self.spec)
        except Exception as exc:
            raise ValidationError(f"cannot decode as image data: {exc}") from exc


class Inference(Worker):
    """A batch of tensors -> one session.run -> a JSON answer per image."""

    def __init__(self):
        super().__init__()
        self.model = classifier.from_environment()

    def forward(self, data: list) -> list:
        return self.model.predict(data)


if __name__ == "__main__":
    server = Server()
    server.append_worker(Preprocess, num=PREPROCESS_WORKERS, route="/infer")
    server.append_worker(Inference, num=1, max_batch_size=MAX_BATCH_SIZE, max_wait_time=MAX_WAIT_MS, route="/infer")
    server.run()
