"""From a configuration to warm models: find the model versions it names (one model directory, or
a repository of them), load and warm each one that is new or changed, keep each one that is not.
Runs on the daemon's main loop only (at start and on reload).

A repository holds one directory per model, named by the directory. A model directory holds
model.ini, labels.txt and model.onnx (version 1), or numbered version directories, each with its
model.onnx and, optionally, its own model.ini and labels.txt (else the model directory's). Which
versions are served: the model.ini's [versions] policy, else [models] version_policy.

A model whose load fails keeps the versions it had (all or nothing, per model), and the failure
is reported; other models load as usual.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import cpus, files, model as model_module, names
from .batcher import Batcher, RunGate
from .bounded import Bounds, TookTooLong
from .config import Config, VersionPolicy
from .manifest import ModelError, read_manifest, read_versions_policy
from .repository import LoadedModel

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Source:
    """Where one version of one model comes from."""

    name: str
    version: str
    manifest: Path
    labels: Path
    onnx: Path

    def fingerprint(self, config: Config) -> str:
        """Changes when anything that makes this version's answers (or how it runs) changes."""
        digest = hashlib.sha256()
        for path in (self.onnx, self.manifest, self.labels):
            try:
                digest.update(files.read_bytes(path))
            except OSError as exc:
                digest.update(f"unreadable {path}: {exc}".encode())
        digest.update(repr((config.model.intra_op_threads, config.model.inter_op_threads, config.model.providers,
                            config.model.provider_fallback, config.batching)).encode())
        return digest.hexdigest()


@dataclass
class Outcome:
    """What a load produced: the models to serve, the default model, and what failed (by model)."""

    models: list[LoadedModel] = field(default_factory=list)
    default: str = ""
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        names = sorted({m.name for m in self.models})
        text = f"serving {', '.join(names) or 'nothing'}"
        problems = "; ".join(f"{name}: {reason}" for name, reason in sorted(self.failures.items()))
        return f"{text}; failed: {problems}" if problems else text


def load(config: Config, metrics, current: list[LoadedModel] = (), only: str | None = None,
         gate: RunGate | None = None, bounds: Bounds | None = None) -> Outcome:
    """The models `config` names, reusing the versions in `current` that did not change. With
    `only`, only that model is looked at again; the others stay as they are in `current`.

    The scan, and each model's load, must end within `bounds` (default: [models] reload_timeout):
    a model that takes longer fails, and the scan raises ModelError; bounded.Interrupted passes.
    """
    bounds = bounds or Bounds(config.models.reload_timeout)
    try:
        sources, failures = bounds.run(lambda: scan(config, only), name="scan-models")
    except TookTooLong:
        raise ModelError(f"reading the model directories took longer than [models] reload_timeout = "
                         f"{bounds.timeout:g} s (a stalled disk or mount?)") from None
    by_key = {(m.name, m.version): m for m in current}
    outcome = Outcome(failures=failures)
    for name in sorted({s.name for s in sources} | set(failures)):
        if only is not None and name != only:
            continue
        kept = [m for m in current if m.name == name]
        mine = [s for s in sources if s.name == name]
        try:
            loaded, reason = bounds.run(lambda: _load_model(mine, by_key, config, metrics, gate),
                                        discard=lambda late: _stop_fresh(late[0], by_key), name=f"load-{name}")
        except TookTooLong:
            loaded, reason = [], (f"loading took longer than [models] reload_timeout = {bounds.timeout:g} s "
                                  "(a model file on a stalled disk or mount?)")
        reason = reason or failures.get(name)  # found but not loadable (its policy, its name)
        if reason is None:
            outcome.models.extend(loaded)
        else:
            outcome.failures[name] = reason
            outcome.models.extend(kept)
    if only is not None:
        outcome.models.extend(m for m in current if m.name != only)
    outcome.default = _default(config, outcome)
    return outcome


def _load_model(sources: list[Source], current: dict, config: Config, metrics, gate):
    """(the loaded versions of one model, None) or ([], the reason its load failed)."""
    loaded: list[LoadedModel] = []
    if not sources:
        return [], None
    try:
        for source in sources:
            fingerprint = source.fingerprint(config)
            old = current.get((source.name, source.version))
            if old is not None and old.fingerprint == fingerprint:
                loaded.append(old)
            else:
                loaded.append(load_version(source, config, metrics, fingerprint, gate))
    except ModelError as exc:
        _stop_fresh(loaded, current)
        return [], str(exc)
    return loaded, None


def _stop_fresh(loaded: list[LoadedModel], current: dict) -> None:
    """Stop the batchers of the versions in `loaded` that `current` does not hold (nobody else will)."""
    for fresh in loaded:
        if current.get((fresh.name, fresh.version)) is not fresh:
            fresh.batcher.stop(0)


def load_version(source: Source, config: Config, metrics, fingerprint: str = "", gate: RunGate | None = None
                 ) -> LoadedModel:
    """Load, check and warm one version and start its batcher; raises ModelError."""
    batching = config.batching
    workers = batching.inference_workers
    intra = config.model.intra_op_threads or max(1, cpus.available() // workers)
    model = model_module.load(
        source.manifest.parent, source.onnx, source.labels, manifest_file=source.manifest,
        intra_op_threads=intra, inter_op_threads=config.model.inter_op_threads,
        warmup_batch=batching.max_batch_size, providers=config.model.providers,
        provider_fallback=config.model.provider_fallback, optimized_cache=config.optimized_cache_dir(),
    )
    observed = metrics.for_version(source.name, source.version) if metrics is not None else None
    batcher = Batcher(model, max_batch_size=batching.max_batch_size, max_queue_delay_ms=batching.max_queue_delay_ms,
                      max_queue_size=batching.max_queue_size, metrics=observed, gate=gate, workers=workers)
    return LoadedModel(source.name, source.version, model, batcher.start(), fingerprint=fingerprint,
                       source=str(source.onnx), metrics=observed)


def scan(config: Config, only: str | None = None) -> tuple[list[Source], dict[str, str]]:
    """Every model version the configuration names, and the models that cannot be served (by name)."""
    repository = config.repository_dir()
    if repository is None:
        manifest = config.model_dir() / "model.ini"
        try:
            name = read_manifest(manifest).name
        except ModelError as exc:
            return [], {"model": str(exc)}
        return [Source(name, "1", manifest, config.labels_path(), config.model_file())], {}
    try:
        directories = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ModelError(f"{repository}: cannot read the model repository: {exc.strerror or exc}") from None
    sources, failures = [], {}
    for directory in directories:
        if only is not None and directory.name != only:
            continue
        if not names.is_name(directory.name):
            failures[directory.name] = f"not a model name ({names.RULE})"
            continue
        try:
            _check_link(directory, repository, config.models.follow_symlinks)
            sources.extend(_versions(directory, config.models.version_policy, repository, config.models.follow_symlinks))
        except ModelError as exc:
            failures[directory.name] = str(exc)
    return sources, failures


def _check_link(path: Path, repository: Path, follow: bool) -> None:
    """Log where a symlinked model or version directory points; with `follow` false, raise
    ModelError for one that points outside the repository."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if target.is_relative_to(repository.resolve()):
        log.info("%s is a symbolic link to %s", path, target)
    elif follow:
        log.info("%s is a symbolic link to %s, outside the repository ([models] follow_symlinks = true)",
                 path, target)
    else:
        raise ModelError(f"{path} is a symbolic link to {target}, outside the repository "
                         "([models] follow_symlinks = false)")


def _versions(directory: Path, default_policy: VersionPolicy, repository: Path, follow: bool) -> list[Source]:
    numbered = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    for version in numbered:
        _check_link(directory / str(version), repository, follow)
    if not numbered:
        return [Source(directory.name, "1", directory / "model.ini", directory / "labels.txt", directory / "model.onnx")]
    policy = read_versions_policy(directory / "model.ini", default_policy)
    chosen = policy.select(numbered)
    missing = sorted(set(chosen) - set(numbered))
    if missing:
        raise ModelError(f"{directory}: version policy {policy} names missing versions {missing}")
    return [_version(directory, version) for version in chosen]


def _version(directory: Path, version: int) -> Source:
    here = directory / str(version)

    def own_or_shared(name: str) -> Path:
        return here / name if (here / name).exists() else directory / name

    return Source(directory.name, str(version), own_or_shared("model.ini"), own_or_shared("labels.txt"),
                  here / "model.onnx")


def _default(config: Config, outcome: Outcome) -> str:
    names = sorted({m.name for m in outcome.models})
    if config.models.default:
        return config.models.default
    return names[0] if names else ""
