"""Which execution providers a session gets ([model] providers, in order of preference).

A provider built into the installed onnxruntime (CPUExecutionProvider; CUDAExecutionProvider with
the onnxruntime-gpu wheel) is checked against `onnxruntime.get_available_providers()`. A plugin
provider (OpenVINOExecutionProvider from the onnxruntime-ep-openvino package) is registered from
its package, `onnxruntime_ep_<name>`, and must then offer a device. A provider that cannot be had
is an error (ModelError), or with `[model] provider_fallback = true` a warning, and the next one in
the list is used; onnxruntime runs on the CPU whatever a provider leaves out.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
_registered: set[str] = set()


class ProviderError(RuntimeError):
    """A configured provider is not available; the message says what is."""


@dataclass
class Choice:
    """What a session is given: built-in providers by name, or plugin devices."""

    builtin: list[str] = field(default_factory=list)
    plugin: str | None = None
    devices: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def choose(wanted: tuple[str, ...], fallback: bool) -> Choice:
    """The providers a session will use, in order. Raises ProviderError for one that cannot be had
    unless `fallback`, in which case it is skipped with a warning (CPU remains)."""
    choice = Choice()
    for name in wanted:
        reason = _add(choice, name)
        if reason is None:
            continue
        if not fallback:
            raise ProviderError(reason)
        log.warning("%s; falling back to the next provider ([model] provider_fallback = true)", reason)
        choice.skipped.append(name)
    if not choice.builtin and choice.plugin is None:
        choice.builtin.append(CPU)
    return choice


def _add(choice: Choice, name: str) -> str | None:
    """Add `name` to `choice`; the reason it cannot be had, or None."""
    # Once registered, a plugin is listed among the available providers too, but a session gets it
    # only through its devices: asked for by name, onnxruntime quietly runs on the CPU instead.
    if name in ort.get_available_providers() and name not in _registered:
        if choice.plugin is None:
            choice.builtin.append(name)
        return None
    devices = _plugin_devices(name)
    if isinstance(devices, str):
        return devices
    if choice.plugin is not None or choice.builtin:
        return f"{name}: a plugin provider must come first in [model] providers"
    choice.plugin, choice.devices = name, devices
    return None


def _plugin_devices(name: str):
    """The devices a plugin provider offers, or the reason there are none."""
    available = ", ".join(ort.get_available_providers())
    module_name = "onnxruntime_ep_" + name.removesuffix("ExecutionProvider").lower()
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return (f"{name} is not available in this onnxruntime (available: {available}; a plugin provider "
                f"comes from a package named {module_name.replace('_', '-')})")
    if name not in _registered:
        try:
            ort.register_execution_provider_library(name, module.get_library_path())
        except Exception as exc:  # onnxruntime's own error types
            return f"{name}: its plugin library does not load: {str(exc).splitlines()[0][:200]}"
        _registered.add(name)
    devices = [device for device in ort.get_ep_devices() if device.ep_name == name]
    return devices or f"{name} is installed but offers no device on this machine"


def session_options(options: ort.SessionOptions, choice: Choice) -> list[str] | None:
    """Apply a plugin choice to `options`; returns the `providers` argument for InferenceSession."""
    if choice.plugin is not None:
        options.add_provider_for_devices(choice.devices, {})
        return None
    return choice.builtin
