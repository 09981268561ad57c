"""The loaded models: name and version -> a warm model with its batcher, leased by requests,
replaced whole on reload, retired once the last request that leased it is done.

Only the daemon's main loop changes the repository (`install`); requests only lease from it. A
lease is taken under the repository's lock, so a version that `install` replaces can gain no
lease afterwards, and its retirement waits for the leases it already has, however long their
uploads legitimately take. At most MAX_RETIRING versions of one name wait so; past that, the
oldest is stopped at once and the requests still holding it get 503 (memory stays bounded by
MAX_RETIRING + 1 sessions per model).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass, field

from .batcher import Batcher
from .names import version_order
from .model import Model

log = logging.getLogger(__name__)

MAX_RETIRING = 2


class UnknownModel(LookupError):
    """No loaded model answers to that name (and version)."""

    http_status = 404


@dataclass(frozen=True)
class Signature:
    """What a protocol needs to know of one loaded version: its names, its input and its outputs."""

    name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...]  # one item's, in the manifest's layout
    layout: str
    output_name: str
    labels: tuple[str, ...]
    longest_label: int  # the longest label's length as JSON writes it (bounds answer sizes)



@dataclass(eq=False)
class LoadedModel:
    """One version of one model, warm, with the batcher that runs it."""

    name: str
    version: str
    model: Model
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)
    fingerprint: str = ""  # loading.Source.fingerprint: unchanged files keep the loaded version
    source: str = ""  # the model file, for the log
    metrics: object = None  # InferdMetrics.for_version(name, version): what this version observes

    def describe(self) -> dict:
        return {**self.model.describe(), "name": self.name, "version": self.version}

    @functools.cached_property
    def signature(self) -> Signature:
        model = self.model
        return Signature(self.name, self.version, model.input_name, model.input_shape(), model.manifest.input.layout,
                         model.output_name, model.labels, model.longest_label)

    def retire(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout`; None: for ever) for every lease to end, then let the batcher
        finish what is queued and stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.batcher.wait_unused(timeout)
        self.batcher.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))


class Repository:
    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._default = ""
        self._retiring: dict[str, list[LoadedModel]] = {}
        self.failures: dict[str, str] = {}  # model name -> why its last load failed

    @property
    def default(self) -> str:
        return self._default

    def find(self, name: str | None = None, version: str | None = None) -> LoadedModel:
        """The loaded model `name` (default: the default model) at `version` (default: its
        latest). Raises UnknownModel (404) naming what exists."""
        with self._lock:
            return self._find(name, version)

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | None = None):
        """Hold a loaded model for one request; raises UnknownModel (404)."""
        with self._lock:
            loaded = self._find(name, version)
            user = loaded.batcher.user()
            user.__enter__()
        try:
            yield loaded
        finally:
            user.__exit__(None, None, None)

    def _find(self, name: str | None, version: str | None) -> LoadedModel:
        name = name or self._default
        versions = self._models.get(name)
        if not versions:
            raise UnknownModel(f"no model named {name!r}; loaded: {', '.join(sorted(self._models)) or 'none'}")
        if version is None:
            return versions[max(versions, key=version_order)]
        if version not in versions:
            raise UnknownModel(f"model {name!r} has no version {version!r}; loaded: "
                               f"{', '.join(sorted(versions, key=version_order))}")
        return versions[version]

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version, by name then version."""
        with self._lock:
            return [self._models[n][v] for n in sorted(self._models)
                    for v in sorted(self._models[n], key=version_order)]

    def install(self, models: list[LoadedModel], default: str, failures: dict[str, str] | None = None
                ) -> list[LoadedModel]:
        """Make `models` the loaded set (on the daemon's main loop only) and retire every version
        they replace, in the background; returns the replaced versions. `failures` replaces the
        record of models whose last load failed."""
        table: dict[str, dict[str, LoadedModel]] = {}
        for loaded in models:
            table.setdefault(loaded.name, {})[loaded.version] = loaded
        with self._lock:
            keep = {id(m) for m in models}
            replaced = [m for versions in self._models.values() for m in versions.values() if id(m) not in keep]
            self._models, self._default = table, default
            if failures is not None:
                self.failures = dict(failures)
        for old in replaced:
            self._retire_later(old)
        return replaced

    def _retire_later(self, old: LoadedModel) -> None:
        with self._lock:
            waiting = self._retiring.setdefault(old.name, [])
        if len(waiting) >= MAX_RETIRING:
            oldest = waiting.pop(0)
            log.warning("%s %s: more than %d retired versions still in use; stopping the oldest now",
                        oldest.name, oldest.version, MAX_RETIRING)
            oldest.batcher.stop(0)
        waiting.append(old)
        threading.Thread(target=self._retire, args=(old,), name=f"retire-{old.name}", daemon=True).start()

    def _retire(self, old: LoadedModel) -> None:
        """Retire `old`, then let go of it, so that its session can be freed at once."""
        old.retire()
        with self._lock:
            waiting = self._retiring.get(old.name, [])
            if old in waiting:
                waiting.remove(old)

    def stop(self, timeout: float) -> None:
        """Retire every loaded version within `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        for loaded in self.loaded():
            loaded.retire(max(0.0, deadline - time.monotonic()))

    def running(self) -> bool:
        """True while any loaded version has a batch in its model or an inference thread alive."""
        return any(loaded.batcher.running() for loaded in self.loaded())
