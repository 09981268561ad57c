"""The metrics of each loaded model version: labelled by model and version, values bounded by the
repository (never by client input), replaced as versions are loaded and unloaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import names
from .families import Counter, Gauge, Histogram, Registry

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
IMAGE_OUTCOMES = ("ok", "bad_input", "error")
VERSION = ("model", "version")


@dataclass(frozen=True)
class LoadedVersion:
    """What the metrics show of one loaded version."""

    model: str
    version: str
    sha256: str
    loaded_at: float  # Unix time
    queue_depth: Callable[[], int] | None = None
    providers: tuple[str, ...] = ()  # the execution providers its session runs on


class VersionMetrics:
    """What one loaded version observes: its images, preprocessing, queue waits and batches."""

    def __init__(self, families: "ModelFamilies", model: str, version: str):
        self._registry = families.registry
        labels = {"model": model, "version": version}
        self._images = {o: families.images.labels(**labels, outcome=o) for o in IMAGE_OUTCOMES}
        self._preprocess = families.preprocess.labels(**labels)
        self._queue_wait = families.queue_wait.labels(**labels)
        self._inference = families.inference.labels(**labels)
        self._batch_size = families.batch_size.labels(**labels)

    def observe_image(self, outcome: str) -> None:
        """Count one image by outcome: "ok", "bad_input" or "error". Raises ValueError otherwise."""
        child = self._images.get(outcome)
        if child is None:
            raise ValueError(f"image outcome must be one of {IMAGE_OUTCOMES}; got {outcome!r}")
        child.inc()

    def observe_preprocess(self, seconds: float) -> None:
        self._preprocess.observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One session.run over size images that took seconds."""
        if not (size >= 0 and seconds >= 0):
            raise ValueError(f"batch size and duration are >= 0; got {size!r}, {seconds!r}")
        with self._registry.atomically():
            self._batch_size.observe(size)
            self._inference.observe(seconds)


class ModelFamilies:
    def __init__(self, registry: Registry):
        self.registry = r = registry
        self.images = Counter("inferd_images_total", "Images classified, by model, version and outcome "
                              "(ok, bad_input, error).", VERSION + ("outcome",), registry=r)
        self.preprocess = Histogram("inferd_preprocess_seconds", "Time to decode and preprocess one image.",
                                    VERSION, unit="seconds", registry=r)
        self.queue_wait = Histogram("inferd_queue_wait_seconds", "Time an image waited in the batch queue.",
                                    VERSION, unit="seconds", registry=r)
        self.inference = Histogram("inferd_inference_seconds", "Time of one session.run, per batch.",
                                   VERSION, unit="seconds", registry=r)
        self.batch_size = Histogram("inferd_batch_size", "Images per session.run.", VERSION,
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queue_depth = Gauge("inferd_queue_depth", "Images waiting in the batch queue.", VERSION, registry=r)
        self.info = Gauge("inferd_model_info", "A loaded model version; the value is always 1.",
                          ("name", "version", "sha256"), registry=r)
        self.loaded = Gauge("inferd_model_loaded_timestamp_seconds", "Unix time the model version was loaded.",
                            VERSION, unit="seconds", registry=r)
        self.reloads = Counter("inferd_model_reloads_total", "Reloads that looked at a model, by result "
                               "(success, failure).", ("model", "result"), registry=r)
        self.versions: tuple[LoadedVersion, ...] = ()

    def install(self, versions: list[LoadedVersion]) -> None:
        """Make `versions` the loaded ones in one step: their info, load time and queue depth appear,
        and every series of a version no longer loaded disappears."""
        keep = {(v.model, v.version) for v in versions}
        with self.registry.atomically():
            for family in (self.images, self.preprocess, self.queue_wait, self.inference, self.batch_size,
                           self.queue_depth, self.loaded):
                for key, _ in family.children():
                    if tuple(key[:2]) not in keep:
                        family.remove(**dict(zip(family.labelnames, key)))
            self.info.clear()
            for v in versions:
                self.info.labels(name=v.model, version=v.version, sha256=v.sha256).set(1)
                self.loaded.labels(model=v.model, version=v.version).set(v.loaded_at)
                self.queue_depth.labels(model=v.model, version=v.version).set_function(v.queue_depth)
                for result in ("success", "failure"):
                    self.reloads.labels(model=v.model, result=result)
            self.versions = tuple(versions)

    def observe_reload(self, model: str, ok: bool) -> None:
        """Count a reload that looked at `model`; a directory name that is not a model name counts
        under "(invalid)", so that what an operator (or a stray directory) names stays bounded."""
        self.reloads.labels(model=names.label(model), result="success" if ok else "failure").inc()

    def copy_for_json(self) -> dict:
        """Per (model, version): images by outcome, batches (count, images), inference seconds; and
        reloads by model. The caller holds the registry lock."""
        batches = {key: child.get() for key, child in self.batch_size.children()}
        inference = {key: child.get()[1] for key, child in self.inference.children()}
        images: dict[tuple, dict] = {}
        for (model, version, outcome), child in self.images.children():
            images.setdefault((model, version), {})[outcome] = child.get()
        reloads: dict[str, dict] = {}
        for (model, result), child in self.reloads.children():
            reloads.setdefault(model, {})[result] = child.get()
        return {"batches": batches, "inference": inference, "images": images, "reloads": reloads,
                "versions": self.versions}

    def depths(self) -> dict[tuple[str, str], int | None]:
        """Each loaded version's queue depth, read outside the lock (None where its source failed)."""
        return {(v.model, v.version): self.queue_depth.labels(model=v.model, version=v.version).get()
                for v in self.versions}
