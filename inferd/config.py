"""The daemon's configuration: an INI file, overridden by environment variables, then by flags.

`load(path, env, overrides)` returns a frozen `Config` or raises one `ConfigError` that lists every
problem, each naming the file, section, key and bad value.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Mapping

from . import files

KNOWN_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


class ConfigError(ValueError):
    """Every problem found in one configuration, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _ipv6_prefix(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 128:
        raise ValueError("must be 1..128")
    return value


def _boolean(text: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if text.lower() not in states:
        raise ValueError("must be true or false")
    return states[text.lower()]


def _formats(text: str) -> frozenset[str]:
    names = frozenset(text.upper().replace(",", " ").split())
    unknown = names - KNOWN_FORMATS
    if unknown or not names:
        raise ValueError(f"choose from {' '.join(sorted(KNOWN_FORMATS))}")
    return names


def _providers(text: str) -> tuple[str, ...]:
    names = tuple(text.replace(",", " ").split())
    if not names or not all(name.endswith("ExecutionProvider") for name in names):
        raise ValueError("list onnxruntime execution providers, e.g. CUDAExecutionProvider CPUExecutionProvider")
    return names


def _log_level(text: str) -> str:
    if text.lower() not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be debug, info, warning or error")
    return text.lower()


def _text(text: str) -> str:
    return text


@dataclass(frozen=True)
class VersionPolicy:
    """Which numbered versions of a model to serve (Triton's version_policy)."""

    kind: str  # "latest", "all" or "specific"
    values: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of `available`, ascending."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "latest":
            return sorted(available)[-self.values[0]:]
        return sorted(set(self.values))

    def __str__(self) -> str:
        return " ".join([self.kind, *map(str, self.values)])


def version_policy(text: str) -> VersionPolicy:
    """"latest N", "all" or "specific V [V ...]"; raises ValueError otherwise."""
    kind, *values = text.lower().split()
    if kind == "all" and not values:
        return VersionPolicy("all")
    if kind in ("latest", "specific") and values and all(v.isascii() and v.isdigit() for v in values):
        numbers = tuple(int(v) for v in values)
        if (kind == "latest" and len(numbers) == 1 and numbers[0] >= 1) or (kind == "specific" and min(numbers) >= 1):
            return VersionPolicy(kind, numbers)
    raise ValueError('must be "latest N", "all" or "specific V [V ...]"')


def setting(default, parse: Callable[[str], object], *, restart: bool = False, path: bool = False):
    """A config key: its default, the function that turns its text into a value (or raises),
    whether a change needs a restart (a reload keeps the old value in force), and whether it names
    a file (relative to the config file when given there, to the working directory otherwise)."""
    return field(default=default, metadata={"parse": parse, "restart": restart, "path": path})


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting("127.0.0.1", _text, restart=True)
    port: int = setting(8000, _port, restart=True)
    max_connections: int = setting(512, _positive_int, restart=True)
    request_timeout: float = setting(30.0, _positive_float)
    drain_timeout: float = setting(10.0, _non_negative_float)
    admin_token: str = setting("", _text)
    docs: bool = setting(True, _boolean)


@dataclass(frozen=True)
class ModelConfig:
    path: str = setting("models/efficientnet-lite0", _text, path=True)
    onnx_file: str = setting("", _text, path=True)
    labels_file: str = setting("", _text, path=True)
    top_k: int = setting(5, _positive_int)
    intra_op_threads: int = setting(0, _non_negative_int)
    inter_op_threads: int = setting(1, _positive_int)
    providers: tuple = setting(("CPUExecutionProvider",), _providers)
    provider_fallback: bool = setting(False, _boolean)
    optimized_cache: str = setting("", _text, path=True)


@dataclass(frozen=True)
class ModelsConfig:
    # A directory holding one directory per model (optionally with numbered versions); empty:
    # serve the one model of [model] path.
    repository: str = setting("", _text, path=True)
    default: str = setting("", _text)
    version_policy: VersionPolicy = setting(VersionPolicy("latest", (1,)), version_policy)
    # Seconds each step of a start or reload that reads the disk may take: the scan of the
    # repository, and each model's load and warm-up. A model past it fails and keeps the versions
    # it had (a model file on a stalled mount cannot hold the reload, nor SIGTERM, for ever).
    reload_timeout: float = setting(60.0, _positive_float)
    # Model and version directories that are symlinks pointing outside the repository: served
    # (true, logged) or refused as a load failure (false).
    follow_symlinks: bool = setting(True, _boolean)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = setting(8, _positive_int)
    # 0, Triton's default too: a lone request is never delayed (README.md, "Performance").
    max_queue_delay_ms: float = setting(0.0, _non_negative_float)
    max_queue_size: int = setting(128, _positive_int)
    request_timeout: float = setting(30.0, _positive_float)
    # Batches in a model at once, across all models (inference threads per model); each session
    # then gets cores / inference_workers intra-op threads unless [model] intra_op_threads says.
    inference_workers: int = setting(1, _positive_int, restart=True)


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = setting(32 * 1024 * 1024, _positive_int)
    max_files_per_batch: int = setting(32, _positive_int)
    max_parts: int = setting(64, _positive_int)
    max_part_header_bytes: int = setting(8192, _positive_int)
    max_header_count: int = setting(64, _positive_int)
    max_header_bytes: int = setting(16384, _positive_int)
    max_request_line: int = setting(8192, _positive_int)
    max_image_pixels: int = setting(64_000_000, _positive_int)
    # Bytes all images being decoded at once may take (imaging/budget.py): 1 GiB fits one
    # 64-megapixel RGBA image; beyond it a request waits briefly, then gets 503.
    max_decode_bytes: int = setting(1 << 30, _positive_int)
    allowed_formats: frozenset = setting(KNOWN_FORMATS, _formats)
    # The most bytes one answer may take, checked before it is built (a v2 request's outputs, shapes
    # and classification counts; /infer/batch's images and top_k); 413 beyond it.
    max_response_bytes: int = setting(8 * 1024 * 1024, _positive_int)
    max_inference_requests: int = setting(64, _positive_int, restart=True)
    max_other_requests: int = setting(16, _positive_int, restart=True)
    idle_timeout: float = setting(15.0, _positive_float)
    header_timeout: float = setting(10.0, _positive_float)
    body_timeout: float = setting(10.0, _positive_float)
    min_body_rate: int = setting(16384, _positive_int)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("info", _log_level)
    access_log: bool = setting(True, _boolean)


@dataclass(frozen=True)
class CacheConfig:
    # Bytes of answers kept by the response cache (inferd/cache.py); 0: no cache.
    max_bytes: int = setting(0, _non_negative_int)


@dataclass(frozen=True)
class AuthConfig:
    # A keys file (inferd/keys.py, `inferd-keys`); empty: inference routes take no key.
    keys_file: str = setting("", _text, path=True)
    # Defaults of every key (a key's line in the keys file may override them); 0: no limit.
    rate: float = setting(0.0, _non_negative_float)
    burst: int = setting(10, _positive_int)
    images_rate: float = setting(0.0, _non_negative_float)
    images_burst: int = setting(32, _positive_int)
    # Without keys: requests per second per client address (with `burst`); 0: no limit.
    anonymous_rate: float = setting(0.0, _non_negative_float)
    # IPv6 clients share one anonymous bucket per network of this many leading bits (a /64 is what
    # one subscriber usually gets); IPv4 clients have one per address.
    anonymous_ipv6_prefix: int = setting(64, _ipv6_prefix)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    source: str = "<defaults>"

    def model_dir(self) -> Path:
        """The model directory; a relative path is taken from the config file's directory."""
        return _resolve(self.model.path, self.source)

    def model_file(self) -> Path:
        return _resolve(self.model.onnx_file, self.source) if self.model.onnx_file else self.model_dir() / "model.onnx"

    def optimized_cache_dir(self, env: Mapping[str, str] = os.environ) -> Path | None:
        """Where optimised graphs are kept: [model] optimized_cache, else systemd's
        $CACHE_DIRECTORY (CacheDirectory=), else nowhere."""
        if self.model.optimized_cache:
            return _resolve(self.model.optimized_cache, self.source)
        directory = env.get("CACHE_DIRECTORY", "").split(":")[0]
        return Path(directory) if directory else None

    def repository_dir(self) -> Path | None:
        """The model repository, or None when the config serves the one model of [model] path."""
        return _resolve(self.models.repository, self.source) if self.models.repository else None

    def keys_path(self) -> Path | None:
        """The keys file, or None when inference routes take no key."""
        return _resolve(self.auth.keys_file, self.source) if self.auth.keys_file else None

    def labels_path(self) -> Path:
        return _resolve(self.model.labels_file, self.source) if self.model.labels_file else self.model_dir() / "labels.txt"


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "model": ModelConfig,
    "models": ModelsConfig,
    "batching": BatchingConfig,
    "limits": LimitsConfig,
    "logging": LoggingConfig,
    "cache": CacheConfig,
    "auth": AuthConfig,
}

# Every key of every section with its validator, read off the dataclasses above.
PARSERS: dict[tuple[str, str], Callable[[str], object]] = {
    (section, f.name): f.metadata["parse"] for section, cls in SECTIONS.items() for f in fields(cls)
}



def _keys_marked(flag: str) -> tuple[tuple[str, str], ...]:
    return tuple((section, f.name) for section, cls in SECTIONS.items() for f in fields(cls) if f.metadata[flag])


# The keys a reload cannot change: the listening socket and the thread and connection caps.
RESTART_ONLY = _keys_marked("restart")
# The keys that name files.
PATH_KEYS = frozenset(_keys_marked("path"))

# The reference design's variables, kept so its deployments move over unchanged.
LEGACY_ENV = {
    "MODEL_PATH": ("model", "path"),
    "LABELS_PATH": ("model", "labels_file"),
    "TOP_K": ("model", "top_k"),
    "NUM_THREADS": ("model", "intra_op_threads"),
}


def _resolve(path: str, source: str) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or not source.startswith("/"):
        return candidate
    return Path(source).parent / candidate


def env_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """Map INFERD_<SECTION>_<KEY> and the legacy variables to {(section, key): (value, origin)}."""
    found = {}
    for name, where in LEGACY_ENV.items():
        if name in env:
            found[where] = (env[name], f"environment {name}")
    for section, key in PARSERS:
        name = f"INFERD_{section}_{key}".upper()
        if name in env:
            found[(section, key)] = (env[name], f"environment {name}")
    if ("model", "path") in found:
        found.update(_split_model_file(*found[("model", "path")]))
    return found


def _split_model_file(value: str, origin: str) -> dict:
    """MODEL_PATH may name the .onnx file itself (reference design); its directory is the model dir."""
    if not value.endswith(".onnx"):
        return {}
    return {("model", "path"): (str(Path(value).parent), origin), ("model", "onnx_file"): (value, origin)}


def parse(text: str, source: str = "<string>", env: Mapping[str, str] | None = None,
          overrides: Mapping[tuple[str, str], str] | None = None) -> Config:
    """Build a Config from INI text, then env, then overrides ({(section, key): value}).

    Raises ConfigError naming source, section, key and value for every problem found.
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"), strict=True)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    raw, problems = _collect(parser, source)
    outside = env_overrides(env or {})
    outside.update({where: (value, "command line") for where, value in (overrides or {}).items()})
    raw.update(_absolute_paths(outside))
    values = _convert(raw, problems)
    if problems:
        raise ConfigError(problems)
    return Config(source=source, **{
        section: cls(**{key: value for (s, key), value in values.items() if s == section})
        for section, cls in SECTIONS.items()
    })


def _absolute_paths(raw: dict) -> dict:
    """Paths from the environment or flags are relative to the working directory, not the file."""
    return {where: (os.path.abspath(value) if where in PATH_KEYS and value else value, origin)
            for where, (value, origin) in raw.items()}


def _collect(parser: configparser.ConfigParser, source: str) -> tuple[dict, list[str]]:
    raw, problems = {}, []
    for section in parser.sections():
        if section not in SECTIONS:
            problems.append(f"{source}: unknown section [{section}]")
            continue
        for key, value in parser.items(section):
            if (section, key) not in PARSERS:
                problems.append(f"{source}: [{section}] unknown key {key!r}")
            else:
                raw[(section, key)] = (value, source)
    return raw, problems


def _convert(raw: dict, problems: list[str]) -> dict:
    values = {}
    for (section, key), (text, origin) in raw.items():
        try:
            values[(section, key)] = PARSERS[(section, key)](text.strip())
        except ValueError as exc:
            problems.append(f"{origin}: [{section}] {key} = {text!r}: {exc}")
    return values


def load(path: str | os.PathLike, env: Mapping[str, str] | None = None,
         overrides: Mapping[tuple[str, str], str] | None = None) -> Config:
    """Read and parse the file at `path`; a missing or unreadable file is a ConfigError."""
    source = str(Path(path).resolve())
    try:
        text = files.read_text(Path(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read config: {exc}"]) from None
    return parse(text, source, env, overrides)


def keep_restart_only(running: Config, new: Config) -> Config:
    """`new` with the restart-only values of `running`: what a reload may put in force."""
    sections = {}
    for section, key in RESTART_ONLY:
        kept = getattr(getattr(running, section), key)
        sections.setdefault(section, {})[key] = kept
    return replace(new, **{section: replace(getattr(new, section), **values) for section, values in sections.items()})


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The restart-only keys whose value differs between `old` and `new`, as "[section] key"."""
    return [f"[{section}] {key}" for section, key in RESTART_ONLY
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)]
