"""The site: everything a request sees of the daemon's configuration, in one frozen value. The
main loop builds one at start and at every reload and installs it with one assignment; a request
takes it once, when its head arrives, and every layer below reads that same value.

Restart-only keys (the listening socket, the thread and connection caps) are true by
construction: a reloaded site keeps the values the running one has (config.keep_restart_only).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, keep_restart_only
from .http.settings import HttpSettings
from .keys import Key


@dataclass(frozen=True)
class Site:
    config: Config
    http: HttpSettings  # the HTTP layer's limits and timeouts, read off `config`
    keys: tuple[Key, ...] | None = None  # the keys file's keys; None: inference routes take no key

    @classmethod
    def of(cls, config: Config, keys: list[Key] | None = None, running: "Site | None" = None) -> "Site":
        """The site of `config` and `keys`; with `running`, its restart-only values kept."""
        if running is not None:
            config = keep_restart_only(running.config, config)
        return cls(config, HttpSettings.from_config(config), None if keys is None else tuple(keys))
