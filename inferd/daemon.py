"""Lifecycle: load, serve, reload on SIGHUP or request, drain and stop on SIGTERM; sd_notify throughout.

Signals are queued by their handlers and acted on in the main thread (gunicorn's arbiter): the
handler only does `events.put_nowait(signum)`, and `serve_forever` runs in its own thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from . import state as state_module
from .config import Config, ConfigError
from .metrics import InferdMetrics
from .model import ModelError
from .server import INFERENCE_ROUTE_LABELS, ROUTE_LABELS, InferdServer
from .systemd import listen_sockets, monotonic_usec, notify, watchdog_interval

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOAD_TIMEOUT_USEC = 120_000_000  # asked of systemd while a model loads, so slow disks do not fail start
RELOAD_STATUS_FILE = "reload-status.json"


class Daemon:
    def __init__(self, load_config: Callable[[], Config]):
        self.load_config = load_config
        self.metrics = InferdMetrics(ROUTE_LABELS, INFERENCE_ROUTE_LABELS)
        self.events: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.server: InferdServer | None = None
        self._reload_lock = threading.Lock()
        self._reload_generation = 0
        self._stopped = threading.Event()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code. Raises ConfigError or ModelError at start."""
        self._start(self.load_config())
        self._main_loop()
        return self.stop()

    def _start(self, config: Config) -> None:
        """Load and warm the model, serve it, send READY=1. The state is referenced only by the
        server from here on, so the first reload can free it (a local in run() kept it for life)."""
        notify(f"EXTEND_TIMEOUT_USEC={LOAD_TIMEOUT_USEC}", f"STATUS=loading model from {config.model_dir()}")
        state = state_module.build(config, self.metrics)
        self._publish_model(state)
        self.server = self._make_server(config, state)
        self._install_signal_handlers()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="http-accept", daemon=True).start()
        self._start_watchdog()
        self._write_reload_status(True, f"serving {state.model.name}")
        host, port = self.server.server_address[:2]
        log.info("serving %s on http://%s:%s", state.model.name, host, port)
        notify("READY=1", f"STATUS=serving {state.model.name} on {host}:{port}")

    def _make_server(self, config: Config, state) -> InferdServer:
        sockets = listen_sockets()
        address = (config.server.host, config.server.port)
        if sockets:
            log.info("using %d socket(s) passed by systemd", len(sockets))
        return InferdServer(address, state, self.metrics, reload_model=self.reload,
                            listen_socket=sockets[0] if sockets else None)

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGHUP, *STOP_SIGNALS):
            signal.signal(signum, lambda number, frame: self.events.put_nowait(number))

    def _main_loop(self) -> None:
        while True:
            signum = self.events.get()
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("received %s, draining", signal.Signals(signum).name)
                return

    def reload(self) -> tuple[bool, str]:
        """Build a complete new state and swap it in; on any failure the old state keeps serving.

        Returns (ok, message). Reloads are serialised; each is reported to systemd and to
        $RUNTIME_DIRECTORY/reload-status.json (read by `inferd-reload`).
        """
        with self._reload_lock:
            notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading model")
            old = self.server.state
            ok, message = self._swap_state(old)
            self.metrics.observe_reload(ok)
            current = self.server.state.model.name
            notify("READY=1", f"STATUS=serving {current}" + ("" if ok else f" (last reload failed: {message})"))
            # Last: inferd-reload returns on this file, and systemd must have the status by then.
            self._write_reload_status(ok, message)
            return ok, message

    def _swap_state(self, old) -> tuple[bool, str]:
        try:
            config = self.load_config()
            _warn_unchangeable(old.config, config)
            new = state_module.build(config, self.metrics)
        except (ConfigError, ModelError) as exc:
            log.error("reload failed, %s keeps serving: %s", old.model.name, exc)
            return False, str(exc)
        except Exception:
            log.exception("reload failed, %s keeps serving", old.model.name)
            return False, "unexpected error (see the daemon's log)"
        self.server.state = new
        self._publish_model(new)
        threading.Thread(target=old.retire, args=(old.config.server.drain_timeout,),
                         name="retire-state", daemon=True).start()
        log.info("reloaded: now serving %s (sha256 %s)", new.model.name, new.model.sha256[:12])
        return True, f"serving {new.model.name}"

    def stop(self) -> int:
        """Stop accepting, let requests in flight finish (bounded by drain_timeout), stop inference."""
        server = self.server
        server.draining = True  # before STOPPING=1: whoever hears it must already see /health 503
        notify("STOPPING=1", "STATUS=draining")
        self._stopped.set()
        server.shutdown()
        server.server_close()
        drain_timeout = server.state.config.server.drain_timeout
        deadline = time.monotonic() + drain_timeout  # the whole stop, retiring the model too
        if not server.wait_idle(drain_timeout):
            log.warning("drain timeout (%.1fs): answering no more requests still in flight", drain_timeout)
        server.state.retire(max(1.0, deadline - time.monotonic()))  # >= 1 s: an idle batcher's exit
        if server.state.batcher.running():
            # Interpreter shutdown under a running onnxruntime call aborts the process (SIGABRT,
            # seen in tests/system): an inference run past the drain timeout ends with the process.
            log.warning("stopped; abandoning an inference run still going after the drain timeout")
            logging.shutdown()
            os._exit(0)
        log.info("stopped")
        return 0

    def _publish_model(self, state) -> None:
        self.metrics.set_model(state.model.name, state.model.sha256, state.loaded_at)
        self.metrics.set_queue_depth_source(lambda: self.server.state.batcher.depth() if self.server else 0)
        logging.getLogger("inferd").setLevel(state.config.logging.level.upper())

    def _start_watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        threading.Thread(target=self._watchdog_loop, args=(interval,), name="watchdog", daemon=True).start()

    def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 only while the inference thread is alive and no batch is stuck in the model."""
        while not self._stopped.wait(interval):
            if self.server.state.batcher.alive(stall_after=2 * interval):
                notify("WATCHDOG=1")
            else:
                log.error("inference is stalled; withholding the watchdog ping")

    def _write_reload_status(self, ok: bool, message: str) -> None:
        directory = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if not directory:
            return
        self._reload_generation += 1
        status = {"generation": self._reload_generation, "pid": os.getpid(), "ok": ok, "message": message}
        target = Path(directory) / RELOAD_STATUS_FILE
        try:
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps(status))
            temporary.replace(target)
        except OSError as exc:
            log.warning("cannot write %s: %s", target, exc)


def _warn_unchangeable(old: Config, new: Config) -> None:
    if (old.server.host, old.server.port) != (new.server.host, new.server.port):
        log.warning("host/port changes take effect at the next restart, not on reload")
