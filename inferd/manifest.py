"""A model's manifest, model.ini: its name, how to feed it (the [input] section every model and
the preprocessing read), and whether its output needs a softmax. Parsed once, checked whole; every
problem is a ModelError naming the file, section and key.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .config import VersionPolicy, version_policy

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
LAYOUTS = ("NCHW", "NHWC")


class ModelError(RuntimeError):
    """The model directory cannot be served (its manifest, labels or graph); the message says
    which file and why."""


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input: the [input] section of model.ini."""

    size: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    value_range: float = 255.0

    def scale_and_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 a, b with tensor = pixel * a + b, pixel on the 0..255 scale."""
        pixel_to_range = np.float32(self.value_range / 255.0)
        std = np.asarray(self.std, dtype=np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        return (pixel_to_range / std).astype(np.float32), (-mean / std).astype(np.float32)



@dataclass(frozen=True)
class Manifest:
    name: str
    input: InputSpec
    softmax: bool


def read_ini(path: Path) -> configparser.ConfigParser | None:
    """model.ini parsed (None when there is none); raises ModelError naming the file otherwise."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        parser.read_string(files.read_text(path), source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the manifest: {os_reason(exc)}") from None
    except configparser.Error as exc:
        raise ModelError(f"{path}: {exc}") from None
    return parser


def read_versions_policy(path: Path, default: VersionPolicy) -> VersionPolicy:
    """A model directory's [versions] policy, or `default` without one (or without model.ini)."""
    parser = read_ini(path)
    try:
        text = parser.get("versions", "policy", fallback=None) if parser is not None else None
        return version_policy(text) if text else default
    except (configparser.Error, ValueError) as exc:
        raise ModelError(f"{path}: [versions] policy: {exc}") from None


def read_manifest(path: Path) -> Manifest:
    """Parse model.ini; raises ModelError naming the file, section and key."""
    parser = read_ini(path)
    if parser is None:
        raise ModelError(f"{path}: missing (a model directory needs model.ini)")
    try:
        return Manifest(
            name=parser.get("model", "name"),
            input=_input_spec(parser, path),
            softmax=parser.getboolean("output", "softmax", fallback=True),
        )
    except (configparser.Error, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None


def _input_spec(parser: configparser.ConfigParser, path: Path) -> InputSpec:
    if not parser.has_section("input"):
        raise ValueError("no [input] section")
    section = parser["input"]
    spec = InputSpec(
        size=section.getint("size"),
        resize=section.getint("resize", fallback=section.getint("size")),
        interpolation=section.get("interpolation", "bilinear").lower(),
        mean=_triple(section.get("mean", "0 0 0"), "mean"),
        std=_triple(section.get("std", "1 1 1"), "std"),
        layout=section.get("layout", "NCHW").upper(),
        value_range=section.getfloat("value_range", fallback=255.0),
    )
    problems = []
    if spec.interpolation not in INTERPOLATIONS:
        problems.append(f"[input] interpolation {spec.interpolation!r}: choose from {', '.join(INTERPOLATIONS)}")
    if spec.layout not in LAYOUTS:
        problems.append(f"[input] layout {spec.layout!r}: must be NCHW or NHWC")
    if spec.size < 1 or spec.resize < spec.size:
        problems.append(f"[input] size {spec.size} / resize {spec.resize}: need 1 <= size <= resize")
    if spec.value_range not in (1.0, 255.0):
        problems.append(f"[input] value_range {spec.value_range}: must be 1 or 255")
    if any(s == 0 for s in spec.std):
        problems.append("[input] std: must not be 0")
    if problems:
        raise ModelError(f"{path}: " + "; ".join(problems))
    return spec


def _triple(text: str, key: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.replace(",", " ").split())
    if len(values) != 3:
        raise ValueError(f"[input] {key} needs three numbers (R G B), got {text!r}")
    return values


def os_reason(exc: Exception) -> str:
    """Why a file could not be read, without repeating its path."""
    return getattr(exc, "strerror", None) or str(exc)
