"""Models refused at load time with a reason an operator can act on (inferd/model.py,
inferd/loading.py), one case each: graphs built here with onnx.helper. `make coverage` showed
these branches unreached (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd import config, loading, model
from inferd.manifest import ModelError

MANIFEST = "[model]\nname = {name}\n[input]\nsize = 8\nresize = 8\nmean = 0 0 0\nstd = 1 1 1\n"
CLASSES = 4


def classifier(input_shape: list, extra_input: bool = False, reshape_to: list | None = None) -> onnx.ModelProto:
    """input -> ReduceMean over all but the batch axis -> a 1 x CLASSES MatMul; or a Reshape to
    `reshape_to` at the end, which the graph accepts and the run refuses."""
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 1]))
    axes = list(range(1, len(input_shape)))
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
             helper.make_node("Reshape", ["mean", "flat"], ["column"]),
             helper.make_node("MatMul", ["column", "weights"], ["logits" if reshape_to is None else "scores"])]
    initializers = [numpy_helper.from_array(np.array(axes, np.int64), "axes"),
                    numpy_helper.from_array(np.array([-1, 1], np.int64), "flat"),
                    numpy_helper.from_array(np.ones((1, CLASSES), np.float32), "weights")]
    if reshape_to is not None:
        nodes.append(helper.make_node("Reshape", ["scores", "bad_shape"], ["logits"]))
        initializers.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "bad_shape"))
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "refusal", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def model_dir(directory: Path, graph: onnx.ModelProto | None, manifest: str = MANIFEST,
              labels: str = "a\nb\nc\nd\n") -> Path:
    directory.mkdir(parents=True)
    (directory / "model.ini").write_text(manifest.format(name=directory.name))
    (directory / "labels.txt").write_text(labels)
    if graph is not None:
        onnx.save(graph, directory / "model.onnx")
    return directory


def load(directory: Path) -> model.Model:
    return model.load(directory, directory / "model.onnx", directory / "labels.txt", intra_op_threads=1)


def test_the_builder_makes_a_model_that_loads(tmp_path):
    loaded = load(model_dir(tmp_path / "good", classifier(["N", 3, 8, 8])))
    assert loaded.run(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, CLASSES)


@pytest.mark.parametrize("graph, labels, manifest, complaint", [
    (classifier(["N", 3, 8, 8], extra_input=True), None, None, "expected one input, found 2"),
    (classifier(["N", 3, 8]), None, None, "has shape ['N', 3, 8]; expected rank 4"),
    (classifier(["N", 3, 8, 8], reshape_to=[5, -1]), None, None, "warm-up run failed"),
    (classifier(["N", 3, 8, 8], reshape_to=[-1]), None, None, "output shape (4, 1); expected (1, 4)"),
    (classifier(["N", 3, 8, 8]), "\n \n", None, "labels.txt: no labels"),
    (classifier(["N", 3, 8, 8]), None, MANIFEST.replace("std = 1 1 1", "std = 1 0 1"), "[input] std: must not be 0"),
])
def test_a_model_that_cannot_serve_is_refused_at_load(tmp_path, graph, labels, manifest, complaint):
    directory = model_dir(tmp_path / "m", graph, manifest or MANIFEST, labels if labels is not None else "a\nb\nc\nd\n")
    with pytest.raises(ModelError) as caught:
        load(directory)
    assert complaint in str(caught.value)


def test_a_bad_version_policy_in_a_models_manifest_fails_that_model_alone(tmp_path):
    repository = tmp_path / "repo"
    model_dir(repository / "good", None)
    (repository / "good" / "1").mkdir()
    model_dir(repository / "odd", None, MANIFEST + "[versions]\npolicy = newest\n")
    (repository / "odd" / "1").mkdir()
    sources, failures = loading.scan(config.parse(f"[models]\nrepository = {repository}\n"))
    assert [(s.name, s.version) for s in sources] == [("good", "1")]
    assert "[versions] policy" in failures["odd"] and "latest N" in failures["odd"]


def test_a_repository_that_is_not_a_directory_is_refused(tmp_path):
    (tmp_path / "repo").write_text("not a directory")
    with pytest.raises(ModelError, match="cannot read the model repository"):
        loading.scan(config.parse(f"[models]\nrepository = {tmp_path / 'repo'}\n"))
