"""Execution providers ([model] providers, provider_fallback), with real daemons: the provider in
use is named, one that cannot be had fails clearly or falls back as configured. CUDA and OpenVINO
themselves need their own onnxruntime builds (onnxruntime-gpu, onnxruntime-ep-openvino) and a
device; these tests run everywhere and cover the configuration and fallback paths."""

from __future__ import annotations

import pytest
import requests

from inferd import config
from inferd.manifest import ModelError
from inferd.providers import choose


def test_the_provider_in_use_is_named_in_health_and_build_info(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\n")
    model = requests.get(f"{daemon.url}/health", timeout=10).json()["model"]
    assert model["providers"] == ["CPUExecutionProvider"]
    text = requests.get(f"{daemon.url}/metrics?format=prometheus", timeout=10).text
    assert 'providers="CPUExecutionProvider"' in next(line for line in text.splitlines()
                                                      if line.startswith("inferd_build_info{"))


def test_an_unavailable_provider_fails_the_model_and_says_what_is_there(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\nproviders = CUDAExecutionProvider CPUExecutionProvider\n",
                          wait=False)
    assert daemon.proc.wait(60) == 1
    log = daemon.log()
    assert "CUDAExecutionProvider is not available in this onnxruntime" in log and "CPUExecutionProvider" in log


def test_with_fallback_an_unavailable_provider_is_skipped_with_a_warning(start_daemon, tiny_model_dir):
    daemon = start_daemon(f"[model]\npath = {tiny_model_dir}\nproviders = CUDAExecutionProvider CPUExecutionProvider\n"
                          "provider_fallback = true\n")
    assert requests.get(f"{daemon.url}/health", timeout=10).json()["model"]["providers"] == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in daemon.log() and "falling back" in daemon.log()
    answer = requests.post(f"{daemon.url}/infer", files={"file": ("a.png", b"")}, timeout=10)
    assert answer.status_code == 400  # it serves


def test_a_plugin_provider_names_the_package_it_comes_from():
    with pytest.raises(Exception) as missing:
        choose(("ExampleExecutionProvider",), fallback=False)
    assert "onnxruntime-ep-example" in str(missing.value)
    assert choose(("ExampleExecutionProvider",), fallback=True).builtin == ["CPUExecutionProvider"]


def test_every_model_loaded_with_the_openvino_plugin_gets_it(tiny_model_dir):
    """The plugin is registered once per process; the second model (or a reload) must still get
    its devices, not a session that quietly runs on the CPU. Where OpenVINO offers no device (it
    did not on an AMD EPYC), every load is refused alike."""
    pytest.importorskip("onnxruntime_ep_openvino", reason="the test extra onnxruntime-ep-openvino is not installed")
    from inferd import model

    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(model.load(tiny_model_dir, tiny_model_dir / "model.onnx", tiny_model_dir / "labels.txt",
                                       providers=("OpenVINOExecutionProvider",)).providers())
        except ModelError as refused:
            outcomes.append(str(refused).split(": ", 1)[1])
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
    assert outcomes[0][0] == "OpenVINOExecutionProvider" or "offers no device" in outcomes[0]


def test_providers_must_be_provider_names():
    with pytest.raises(config.ConfigError, match="providers"):
        config.parse("[model]\nproviders = gpu\n", "<test>")
    assert config.parse("[model]\nproviders = A_ExecutionProvider, CPUExecutionProvider\n").model.providers == (
        "A_ExecutionProvider", "CPUExecutionProvider")


def test_model_error_is_what_a_provider_failure_raises(tiny_model_dir):
    from inferd import model

    with pytest.raises(ModelError, match="is not available"):
        model.load(tiny_model_dir, tiny_model_dir / "model.onnx", tiny_model_dir / "labels.txt",
                   providers=("TensorrtExecutionProvider",))
