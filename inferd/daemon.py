"""Lifecycle: load, serve, reload, drain and stop; sd_notify throughout.

Everything that changes what the daemon serves happens on its main thread, one event at a time:
SIGHUP, `systemctl reload` (which sends SIGHUP) and `POST /admin/reload` all become events in
`control` (gunicorn's arbiter: a signal handler only does `put_nowait`), and `serve_forever` runs
in its own thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from . import cpus, libc, loading
from .bounded import Bounds, Interrupted, TookTooLong
from .config import Config, ConfigError, restart_only_changes
from .control import Control, Reloaded, ReloadRequest
from .batcher import RunGate
from .http.router import Router
from .keys import configured_keys, no_keys_warnings
from .imaging import codec_log, preprocess
from .http.server import HttpServer
from .metrics import InferdMetrics, LoadedVersion
from .manifest import ModelError
from .repository import Repository
from .routes import GUARDS, ROUTES, RouteContext
from .service import Service
from .site import Site
from .systemd import listen_sockets, monotonic_usec, notify, watchdog_interval

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOAD_TIMEOUT_USEC = 120_000_000  # asked of systemd while a model loads, so slow disks do not fail start
RELOAD_STATUS_FILE = "reload-status.json"
TRIM_INTERVAL = 10.0


class Daemon:
    def __init__(self, load_config: Callable[[], Config]):
        self.load_config = load_config
        self.router = Router(ROUTES, GUARDS)
        self.metrics = InferdMetrics(self.router.labels(), self.router.inference_labels())
        self.control = Control()
        self.repository = Repository()
        self.gate: RunGate | None = None  # batches in a model at once, across models
        self.service: Service | None = None
        self.site: Site | None = None  # what requests see now; replaced whole by each reload
        self.server: HttpServer | None = None
        self._reload_generation = 0
        self._stopped = threading.Event()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code. Raises ConfigError or ModelError at start."""
        codec_log.install()
        libc.limit_arenas(cpus.available())
        self._start(self.load_config())
        self._main_loop()
        return self.stop()

    def _start(self, config: Config) -> None:
        """Load and warm the models, serve them, send READY=1."""
        notify(f"EXTEND_TIMEOUT_USEC={LOAD_TIMEOUT_USEC}",
               f"STATUS=loading models from {config.repository_dir() or config.model_dir()}")
        self.open(config, listen_sockets())
        default = self.repository.default
        self._install_signal_handlers()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="http-accept", daemon=True).start()
        self._start_watchdog()
        threading.Thread(target=self._trim_loop, name="memory-trim", daemon=True).start()
        self._write_reload_status(Reloaded(True, f"serving {default}"))
        host, port = self.server.server_address[:2]
        log.info("serving %s on http://%s:%s", default, host, port)
        notify("READY=1", f"STATUS=serving {default} on {host}:{port}")

    def open(self, config: Config, sockets=()) -> None:
        """Load and warm the models and open the HTTP server on `config`'s address (or the first
        of systemd's sockets); nothing is served until serve_forever runs."""
        preprocess.take_over_pixel_limit()
        keys = configured_keys(config)
        for warning in no_keys_warnings(config, keys):
            log.warning("%s", warning)
        self.site = Site.of(config, keys)
        self.gate = RunGate(config.batching.inference_workers)
        outcome = loading.load(config, self.metrics, gate=self.gate)
        _require_default(outcome)
        for name, reason in sorted(outcome.failures.items()):
            log.error("model %s cannot be served: %s", name, reason)
        self.repository.install(outcome.models, outcome.default, outcome.failures)
        self.service = Service(self.repository, config, self.site.keys, self.metrics)
        self._publish(config)
        if sockets:
            log.info("using %d socket(s) passed by systemd", len(sockets))
        context = RouteContext(self.service, self.metrics, self.control)
        self.server = HttpServer((config.server.host, config.server.port), router=self.router, context=context,
                                 metrics=self.metrics, control=self.control, site=self.site,
                                 listen_socket=sockets[0] if sockets else None)

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, lambda number, frame: self.control.post(number))
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda number, frame: self.control.post_stop(number))

    def _main_loop(self) -> None:
        while True:
            event = self.control.next_event()
            if event == signal.SIGHUP:
                self.reload()
            elif isinstance(event, ReloadRequest):
                answer(event, lambda: self.reload(event.model))
            else:
                log.info("received %s, draining", signal.Signals(event).name)
                self.control.cancel_reloads("the daemon is stopping; the reload was not done")
                return

    def reload(self, model: str | None = None) -> Reloaded:
        """Load what changed and swap it in; a model that fails keeps the versions it had.

        `model`: look at that model alone, under the configuration in force; None: read the
        configuration again and look at every model. Ok when nothing failed. Each reload is
        reported to systemd and to $RUNTIME_DIRECTORY/reload-status.json (read by `inferd-reload`).
        """
        notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading models")
        outcome = self._swap(model)
        self.metrics.observe_reload(outcome.ok)
        notify("READY=1", f"STATUS=serving {self.repository.default}"
               + ("" if outcome.ok else f" (last reload failed: {outcome.message})"))
        # Last: inferd-reload returns on this file, and systemd must have the status by then.
        self._write_reload_status(outcome)
        return outcome

    def _swap(self, only: str | None) -> Reloaded:
        current = self.repository.default
        try:
            site, outcome = self._prepare(only)
        except Interrupted as exc:
            log.warning("reload stopped, %s keeps serving: %s", current, exc)
            return Reloaded(False, str(exc))
        except (ConfigError, ModelError) as exc:
            log.error("reload failed, %s keeps serving: %s", current, exc)
            return Reloaded(False, str(exc))
        except TookTooLong as exc:
            message = f"reading the configuration or the keys file {exc} ([models] reload_timeout)"
            log.error("reload failed, %s keeps serving: %s", current, message)
            return Reloaded(False, message)
        except Exception:
            log.exception("reload failed, %s keeps serving", current)
            return Reloaded(False, "unexpected error (see the daemon's log)")
        failures = outcome.failures if only is None else {
            **{n: r for n, r in self.repository.failures.items() if n != only}, **outcome.failures}
        self.repository.install(outcome.models, outcome.default, failures)
        self.site = site
        self.service.configure(site.config, site.keys)
        self.server.configure(site)
        self._publish(site.config)
        for name in sorted({m.name for m in outcome.models} | set(outcome.failures)):
            if only is None or name == only:
                self.metrics.observe_model_reload(name, name not in outcome.failures)
        for name, reason in sorted(outcome.failures.items()):
            log.error("reload failed for model %s, the versions it had keep serving: %s", name, reason)
        new = self.repository.find()
        log.info("reloaded: now serving %s (sha256 %s); %s", new.name, new.model.sha256[:12], outcome.summary())
        warnings = tuple(no_keys_warnings(site.config, site.keys)) if only is None else ()
        for warning in warnings:
            log.warning("%s", warning)
        return Reloaded(not outcome.failures, outcome.summary(), warnings)

    def _prepare(self, only: str | None) -> tuple[Site, loading.Outcome]:
        """What a reload would install: the new site (the configuration with the running restart-only
        values, and the keys) and the loaded models. Each step that reads the disk is bounded by
        [models] reload_timeout and stops waiting at SIGTERM (bounded.py); nothing is installed here.
        Raises ConfigError, ModelError, TookTooLong, Interrupted."""
        running = self.site
        give_up = lambda: self.control.stop_requested  # noqa: E731
        if only is None:
            bounds = Bounds(running.config.models.reload_timeout, give_up)
            config = bounds.run(self.load_config, name="reload-config")
            # Before any model, so that a bad keys file changes nothing; one model's reload keeps them.
            keys = bounds.run(lambda: configured_keys(config), name="reload-keys")
            for key in restart_only_changes(running.config, config):
                log.warning("%s changes take effect at the next restart, not on reload", key)
            site = Site.of(config, keys, running)
        else:
            site = running
        outcome = loading.load(site.config, self.metrics, self.repository.loaded(), only, self.gate,
                               Bounds(site.config.models.reload_timeout, give_up))
        _require_default(outcome)
        return site, outcome

    def stop(self) -> int:
        """Stop accepting, let requests in flight finish (bounded by drain_timeout), stop inference."""
        server = self.server
        self.control.begin_drain()  # before STOPPING=1: whoever hears it must already see /health 503
        notify("STOPPING=1", "STATUS=draining")
        self._stopped.set()
        server.shutdown()
        server.server_close()
        drain_timeout = self.site.config.server.drain_timeout
        deadline = time.monotonic() + drain_timeout  # the whole stop, retiring the models too
        if not server.wait_idle(drain_timeout):
            log.warning("drain timeout (%.1fs): answering no more requests still in flight", drain_timeout)
        self.repository.stop(max(1.0, deadline - time.monotonic()))  # >= 1 s: an idle batcher's exit
        if self.repository.running():
            # Interpreter shutdown under a running onnxruntime call aborts the process (SIGABRT,
            # seen in tests/system): an inference run past the drain timeout ends with the process.
            log.warning("stopped; abandoning an inference run still going after the drain timeout")
            logging.shutdown()
            os._exit(0)
        log.info("stopped")
        return 0

    def _publish(self, config: Config) -> None:
        versions = [LoadedVersion(m.name, m.version, m.model.sha256, m.loaded_at, m.batcher.depth,
                                  tuple(m.model.providers())) for m in self.repository.loaded()]
        self.service.cores = cpus.cores()
        self.metrics.set_models(versions, self.repository.default, self.service.cores.effective)
        logging.getLogger("inferd").setLevel(config.logging.level.upper())

    def _trim_loop(self) -> None:
        """Give the heaps' free pages back to the system every TRIM_INTERVAL seconds: glibc keeps
        them mapped, and the holes requests leave between long-lived blocks add up (issue 21)."""
        while not self._stopped.wait(TRIM_INTERVAL):
            libc.trim()

    def _start_watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        threading.Thread(target=self._watchdog_loop, args=(interval,), name="watchdog", daemon=True).start()

    def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 only while every inference thread is alive and no batch is stuck in a model."""
        while not self._stopped.wait(interval):
            if all(loaded.batcher.alive(stall_after=2 * interval) for loaded in self.repository.loaded()):
                notify("WATCHDOG=1")
            else:
                log.error("inference is stalled; withholding the watchdog ping")

    def _write_reload_status(self, outcome: Reloaded) -> None:
        directory = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if not directory:
            return
        self._reload_generation += 1
        status = {"generation": self._reload_generation, "pid": os.getpid(), "ok": outcome.ok,
                  "message": outcome.message}
        if outcome.warnings:
            status["warnings"] = list(outcome.warnings)
        target = Path(directory) / RELOAD_STATUS_FILE
        try:
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps(status))
            temporary.replace(target)
        except OSError as exc:
            log.warning("cannot write %s: %s", target, exc)


def _require_default(outcome: loading.Outcome) -> None:
    """Raise ModelError unless the default model is among the loaded ones."""
    if any(m.name == outcome.default for m in outcome.models):
        return
    reason = outcome.failures.get(outcome.default) or (
        next(iter(outcome.failures.values())) if len(outcome.failures) == 1 else None)
    raise ModelError(reason or f"the default model {outcome.default!r} is not in the model repository "
                               f"({outcome.summary()})")


def answer(request: ReloadRequest, reload: Callable[[], Reloaded]) -> None:
    """Run `reload` for a request that waits on it: its outcome, or what it raised."""
    try:
        request.outcome.set_result(reload())
    except Exception as exc:  # handed to the waiting handler, which logs it and answers 500
        request.outcome.set_exception(exc)
