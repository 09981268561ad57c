"""Shared test helpers (tests/conftest.py holds the fixtures built on them).

Import as `from tests.support import ...`: tests/ is a package, so pytest and `python -m tests.soak`
both see it from the repository root.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "efficientnet-lite0"
if str(REPO / "models") not in sys.path:
    sys.path.insert(0, str(REPO / "models"))

import build as model_build  # noqa: E402,F401  (models/build.py, re-exported for fixtures)
from inferd.tools.notify import NotifyReceiver  # noqa: E402,F401  (re-exported for fixtures)


EXPECTED_TOP1 = {
    "cat.jpg": {"tiger cat", "Egyptian cat", "tabby"},
    "coffee.png": {"espresso"},
    "camera.png": {"tripod"},
    "motorcycle.webp": {"moped", "motor scooter"},
}


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    notify: NotifyReceiver
    log_path: Path
    url: str = ""
    _consumed: int = field(default=0)

    def wait_ready(self, timeout: float = 60.0) -> "DaemonProcess":
        try:
            ready = self.notify.wait_for("READY", "1", timeout)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"daemon not ready; log:\n{self.log()}") from None
        port = re.search(r" on (\S+):(\d+)", ready.get("STATUS", "")).group(2)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class InProcessServer:
    """An inferd HTTP server in this process, assembled as the daemon assembles it; a thread stands
    in for the daemon's main loop and answers reload requests (with `reload`, or a real reload)."""

    daemon: object
    thread: threading.Thread
    url: str

    @property
    def server(self):
        return self.daemon.server

    def close(self) -> None:
        self.daemon.control.post(None)  # ends the main loop
        self.server.shutdown()
        self.server.server_close()
        self.daemon.repository.stop(5.0)


def start_in_process(config, reload=None, address=("127.0.0.1", 0)) -> InProcessServer:
    """serve_forever and a main loop on threads of their own; no signal handlers are installed."""
    from inferd.daemon import Daemon, answer

    daemon = Daemon(lambda: config)
    daemon.open(_at(config, address))
    reload = reload or daemon.reload

    def main_loop():
        while (event := daemon.control.next_event()) is not None:
            answer(event, reload)

    threading.Thread(target=main_loop, name="test-main-loop", daemon=True).start()
    thread = threading.Thread(target=daemon.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = daemon.server.server_address[:2]
    return InProcessServer(daemon, thread, f"http://{host}:{port}")


def _at(config, address):
    """`config` listening on `address` (host, port)."""
    from dataclasses import replace

    return replace(config, server=replace(config.server, host=address[0], port=address[1]))


def config_for(model_dir: Path, **sections) -> "object":
    """A Config for `model_dir` with section overrides, e.g. batching={"max_batch_size": 4}."""
    from inferd import config

    sections.setdefault("model", {})
    sections["model"] = {"path": model_dir, **sections["model"]}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    return config.parse("\n".join(lines), "<test>")


def new_metrics(**options):
    """InferdMetrics over the route table."""
    from inferd.http.router import Router
    from inferd.metrics import InferdMetrics
    from inferd.routes import ROUTES

    router = Router(ROUTES)
    return InferdMetrics(router.labels(), router.inference_labels(), **options)


def nan_model(directory: Path) -> Path:
    """The tiny model whose scores are all NaN (its logits divided by zero, times zero): a model
    that loads and warms up like any other and answers nothing a JSON number can carry."""
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    model_build.build_model("tiny", directory, force=True)  # force: never the graph this edits
    graph_model = onnx.load(str(directory / "model.onnx"))
    graph = graph_model.graph
    final = next(node for node in graph.node if "logits" in node.output)
    final.output[:] = ["raw_logits"]
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    graph.node.extend([helper.make_node("Div", ["raw_logits", "zero"], ["infinite"]),
                       helper.make_node("Mul", ["infinite", "zero"], ["logits"])])
    onnx.save(graph_model, str(directory / "model.onnx"))
    return directory


def slow_model(directory: Path, convolutions: int = 100, upscale: int = 1) -> Path:
    """The tiny model with extra work beside it that does not change its answers: `convolutions`
    3x3 convolutions of 64 channels over the input scaled up `upscale` times on each side, added to
    the logits times zero (about 10 ms per convolution at upscale 1 on 2 Zen 5 cores, 16 times
    that at 4). Warm-up runs it once, so its load takes that long too."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model_build.build_model("tiny", directory, force=True)  # force: never the graph this edits
    graph_model = onnx.load(str(directory / "model.onnx"))
    graph = graph_model.graph
    final = next(node for node in graph.node if "logits" in node.output)
    final.output[:] = ["fast_logits"]
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple) -> str:
        graph.initializer.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name))
        return name

    previous, nodes = "input", []
    if upscale > 1:
        graph.initializer.extend([numpy_helper.from_array(np.zeros(0, np.float32), "no_roi"),
                                  numpy_helper.from_array(np.array([1, 1, upscale, upscale], np.float32), "scales")])
        nodes.append(helper.make_node("Resize", ["input", "no_roi", "scales"], ["scaled"], mode="nearest"))
        previous = "scaled"
    for n in range(convolutions):
        channels = 3 if n == 0 else 64
        nodes.append(helper.make_node("Conv", [previous, weight(f"w{n}", (64, channels, 3, 3))], [f"c{n}"],
                                      pads=[1, 1, 1, 1]))
        previous = f"c{n}"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "nothing"))
    nodes += [helper.make_node("ReduceMean", [previous], ["pooled"], axes=[2, 3], keepdims=1),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("ReduceMean", ["flat"], ["work"], axes=[1], keepdims=1),
              helper.make_node("Mul", ["work", "nothing"], ["zero_work"]),
              helper.make_node("Add", ["fast_logits", "zero_work"], ["logits"])]
    graph.node.extend(nodes)
    onnx.save(graph_model, str(directory / "model.onnx"))
    return directory
