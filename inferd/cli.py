"""`inferd`: parse flags, set up logging, build the Config, run the Daemon; exit codes 0, 1, 2.

0: stopped cleanly; 1: the model could not be served; 2: bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__, config
from .config import ConfigError

log = logging.getLogger("inferd")

# Journald reads a "<N>" prefix as the syslog priority of the line (sd-daemon(3)).
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """One line per event with a priority prefix and no timestamp: the journal adds its own."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inferd", description="Image-classification daemon (ONNX Runtime).")
    parser.add_argument("--config", help="INI file (see inferd.conf.example); defaults apply without it")
    parser.add_argument("--host", help="address to bind (overrides [server] host)")
    parser.add_argument("--port", help="port to bind (overrides [server] port)")
    parser.add_argument("--model", help="model directory (overrides [model] path)")
    parser.add_argument("--log-level", help="debug, info, warning or error (overrides [logging] level)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    flags = {("server", "host"): args.host, ("server", "port"): args.port,
             ("model", "path"): args.model, ("logging", "level"): args.log_level}
    return {where: value for where, value in flags.items() if value is not None}


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = flag_overrides(args)

    def load() -> config.Config:
        if args.config:
            return config.load(args.config, os.environ, overrides)
        return config.parse("", "<defaults>", os.environ, overrides)

    try:
        first = load()
    except ConfigError as exc:
        print(f"inferd: configuration error:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(first.logging.level)
    if args.check_config:
        return check(first)
    return run(load)


def check(settings: config.Config) -> int:
    """--check-config: the configuration and the keys file it names; 0 when both are usable."""
    from .keys import configured_keys

    try:
        keys = configured_keys(settings)
    except ConfigError as exc:
        print(f"inferd: keys file error:\n{exc}", file=sys.stderr)
        return 2
    found = "" if keys is None else f", {len(keys)} API keys"
    print(f"inferd: configuration OK ({settings.source}{found})")
    return 0


def run(load) -> int:
    from .daemon import Daemon  # imports onnxruntime: after the environment is settled
    from .manifest import ModelError

    try:
        return Daemon(load).run()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except ModelError as exc:
        log.error("cannot serve the model: %s", exc)
        return 1
