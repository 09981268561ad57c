"""Shared test helpers (tests/conftest.py holds the fixtures built on them).

Import as `from tests.support import ...`: tests/ is a package, so pytest and `python -m tests.soak`
both see it from the repository root.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "efficientnet-lite0"
if str(REPO / "models") not in sys.path:
    sys.path.insert(0, str(REPO / "models"))

import build as model_build  # noqa: E402,F401  (models/build.py, re-exported for fixtures)
from inferd.tools.notify import NotifyReceiver  # noqa: E402,F401  (re-exported for fixtures)


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; `make system-deps`)")

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


# -- raw HTTP and images, for the tests of every layer (were tests/http/test_requests.py's) ------------

SMALL_LIMITS = {"max_body_bytes": 2_000_000, "max_files_per_batch": 4, "max_parts": 8,
                "max_header_count": 20, "max_header_bytes": 2048, "max_request_line": 512,
                "allowed_formats": "PNG JPEG WEBP GIF"}


LEVELS = 10


def grid_colour(i: int, j: int, k: int) -> tuple[int, int, int]:
    return tuple(round(v * 255 / (LEVELS - 1)) for v in (i, j, k))


def tiny_label(rgb) -> str:
    """The tiny model's top-1 label for a solid colour (models/onnx_graphs.py: tiny_class)."""
    i, j, k = (min(max(round(v / 255 * (LEVELS - 1)), 0), LEVELS - 1) for v in rgb)
    return f"r{i}g{j}b{k}"


def encode(rgb, fmt: str = "PNG", size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A 60-odd byte PNG whose header declares width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def noise_png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), random.Random(1).randbytes(size * size * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(parts, boundary: str = "inferd-test-boundary") -> tuple[str, bytes]:
    """(content type, body) for parts of (field name, filename, data)."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def request_bytes(method: str, target: str, headers: dict | None = None, body: bytes = b"",
                  length: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    headers = dict(headers or {})
    if length and body and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Raw:
    """A client on a plain socket: sends bytes, reads whole responses, tells whether it was closed."""

    def __init__(self, url: str, timeout: float = 10.0):
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> "Raw":
        self.sock.sendall(data)
        return self

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a whole response")
        self.buffer += data

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(status, headers, body)

    def closed(self, within: float = 3.0) -> bool:
        """True if the server closes the connection within `within` seconds (FIN or reset)."""
        self.sock.settimeout(within)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def exchange(url: str, data: bytes) -> tuple[Response, bool]:
    """Send one request on a new connection; the response and whether the server closed after it."""
    raw = Raw(url)
    try:
        response = raw.send(data).response()
        return response, raw.closed(within=0.3)
    finally:
        raw.close()


def counted(url: str, route: str, method: str, code: int) -> float:
    """inferd_http_requests_total for one series, from a Prometheus scrape."""
    text = requests.get(f"{url}/metrics?format=prometheus", timeout=10).text
    pattern = (rf'^inferd_http_requests_total\{{route="{re.escape(route)}",method="{method}",'
               rf'code="{code}"\}} (\S+)$')
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def peak_rss_mb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in MiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmHWM"].split()[0]) // 1024, int(fields["VmRSS"].split()[0]) // 1024
