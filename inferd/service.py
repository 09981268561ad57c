"""The service boundary every protocol calls: who is calling (keys.py), which loaded version
answers, leases on it (lease.py) for the length of one request, and what the metadata routes show of
the loaded models. Knows nothing of HTTP.

`Service.lease(config, model, version, caller)` holds one version for one request, under the
configuration of the site (site.py) the request began with; the daemon installs each new
configuration and keys with `configure`, and the repository's models with `Repository.install`.
"""

from __future__ import annotations

import contextlib

from . import cpus
from .cache import ResponseCache
from .imaging.budget import DecodeBudget
from .keys import Access, Caller
from .lease import Lease, answer_context
from .config import Config
from .keys import Key
from .repository import Repository, Signature


class Service:
    """Holds what outlives a site (the repository, the decode budget, the response cache, the
    callers' buckets); requests lease from it. `metrics`: InferdMetrics or None."""

    def __init__(self, repository: Repository, config: Config, keys: tuple[Key, ...] | None = None, metrics=None):
        self.repository = repository
        self.decode_budget = DecodeBudget(config.limits.max_decode_bytes)
        self.cache = ResponseCache(config.cache.max_bytes, metrics.cache if metrics else None)
        self.access = Access(config.auth, keys, metrics.keys if metrics else None)
        self.cores = cpus.cores()  # the daemon refreshes it at every reload
        if metrics:
            metrics.cache.watch(self.cache.stats)

    def configure(self, config: Config, keys: tuple[Key, ...] | None) -> None:
        """Take a reloaded configuration and keys: the budgets resized, the keys' buckets carried
        over, and cached answers of versions no longer loaded (or computed under other limits)
        dropped at once."""
        self.decode_budget.resize(config.limits.max_decode_bytes)
        self.cache.resize(config.cache.max_bytes)
        self.cache.retain({answer_context(config, loaded) for loaded in self.repository.loaded()})
        self.access.update(config.auth, keys)

    def admit(self, presented_key: str | None, address: str) -> Caller | None:
        """The caller of an inference request (keys.Access.admit): raises Unauthorized (401) or
        Limited (429); None when no rule applies."""
        return self.access.admit(presented_key, address)

    @contextlib.contextmanager
    def lease(self, config: Config, model: str | None = None, version: str | None = None,
              caller: Caller | None = None):
        """A Lease on the named model (default model, latest version when None) for `caller`,
        under `config` (the request's site's); raises repository.UnknownModel (404)."""
        with self.repository.lease(model, version) as loaded:
            yield Lease(config, loaded, self.decode_budget, self.cache, caller)

    # -- what the metadata routes show ------------------------------------------------------------

    def signature(self, model: str | None, version: str | None = None) -> Signature:
        """The signature of a loaded version (latest when None); raises UnknownModel (404)."""
        return self.repository.find(model, version).signature

    def versions(self, model: str) -> list[str]:
        """The loaded versions of `model`, oldest first."""
        return [loaded.version for loaded in self.repository.loaded() if loaded.name == model]

    def index(self) -> list[Signature]:
        """Every loaded version, by name then version."""
        return [loaded.signature for loaded in self.repository.loaded()]

    def knows(self, model: str) -> bool:
        """True for a model that is loaded, or whose last load failed."""
        return model in {m.name for m in self.repository.loaded()} | set(self.repository.failures)

    @property
    def default_model(self) -> str:
        return self.repository.default

    def describe_default(self) -> dict | None:
        """The default model's description, or None while none is loaded."""
        try:
            return self.repository.find().describe()
        except LookupError:
            return None

    def states(self, detail: bool = False) -> list[dict]:
        """Every model by name: "ready" with its versions (with `detail`, each described with its
        load time), or "failed" with the reason of its last load as `last_error`."""
        by_name: dict[str, dict] = {}
        for loaded in self.repository.loaded():
            entry = by_name.setdefault(loaded.name, {"name": loaded.name, "state": "ready", "versions": []})
            version = {"version": loaded.version, "state": "ready"}
            if detail:
                version.update({**loaded.describe(), "loaded_at": loaded.loaded_at})
            entry["versions"].append(version)
        for name, reason in self.repository.failures.items():
            entry = by_name.setdefault(name, {"name": name, "state": "failed", "versions": []})
            entry["last_error"] = reason
        return [by_name[name] for name in sorted(by_name)]
