"""Per API key metrics: requests by result and images, labelled by the names the access rules
install: those of the keys file (and "unknown" for a key nobody has), never client input."""

from __future__ import annotations

from typing import Iterable

from .families import Counter, Registry

RESULTS = ("ok", "unauthorized", "limited")


class KeyMetrics:
    def __init__(self, registry: Registry):
        self._registry = registry
        self._requests = Counter("inferd_key_requests_total", "Inference requests by API key name and result (ok: "
                                 "admitted; unauthorized: 401; limited: 429).", ("key", "result"), registry=registry)
        self._images = Counter("inferd_key_images_total", "Images charged to an API key.", ("key",),
                               registry=registry)
        self._names: frozenset[str] = frozenset()

    def install(self, names: Iterable[str]) -> None:
        """The names now in force: the series of names no longer among them disappear, those of
        new names start at 0."""
        names = frozenset(names)
        with self._registry.atomically():
            for family in (self._requests, self._images):
                for key, _ in family.children():
                    if key[0] not in names:
                        family.remove(**dict(zip(family.labelnames, key)))
            for name in names:
                self._images.labels(key=name)
                for result in RESULTS:
                    self._requests.labels(key=name, result=result)
            self._names = names

    def observe(self, name: str, result: str) -> None:
        """One request of key `name` by result; a name outside the installed set is not counted
        (a request that began before its key was removed)."""
        if name in self._names and result in RESULTS:
            self._requests.labels(key=name, result=result).inc()

    def observe_images(self, name: str, count: int) -> None:
        if name in self._names:
            self._images.labels(key=name).inc(count)

    def copy_for_json(self) -> dict:
        """{name: {result: count, "images": count}}; the caller holds the registry lock."""
        view: dict[str, dict] = {}
        for (name, result), child in self._requests.children():
            view.setdefault(name, {})[result] = child.get()
        for (name,), child in self._images.children():
            view.setdefault(name, {})["images"] = child.get()
        return view
