"""The model directory: manifest, labels, load-time checks, top-k, and the ResNet-50 preset served."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image

from tests.support import REPO, config_for
from inferd import cpus, model
from inferd.manifest import ModelError, read_manifest


def load(directory: Path, **kwargs) -> model.Model:
    return model.load(directory, directory / "model.onnx", directory / "labels.txt", **kwargs)


def torchvision_tensor(data: bytes) -> np.ndarray:
    """torchvision's ImageNet eval transform, spelt out: Resize(256) bilinear, CenterCrop(224),
    ToTensor (0..1), Normalize(mean, std): what the ONNX Model Zoo's resnet50 expects."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    left, top = round((image.width - 224) / 2), round((image.height - 224) / 2)
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    normal = (pixels - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return normal.transpose(2, 0, 1)[None]


def test_resnet50_preset_is_served_with_torchvision_preprocessing(serve, resnet50_dir, images):
    server = serve(config_for(resnet50_dir))
    answer = requests.post(f"{server.url}/infer?top_k=5", files={"file": ("coffee.png", images["coffee.png"])},
                           timeout=60).json()
    assert answer["model"] == "resnet50"
    session = ort.InferenceSession(str(resnet50_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: torchvision_tensor(images["coffee.png"])})[0][0]
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    got = {p["index"]: p["confidence"] for p in answer["predictions"]}
    best = list(np.argsort(-expected)[:5])
    assert list(got) == best
    for index, confidence in got.items():
        assert confidence == pytest.approx(float(expected[index]), rel=0.05, abs=1e-3)


def test_manifest_is_read(default_model_dir):
    manifest = read_manifest(default_model_dir / "model.ini")
    assert manifest.name == "efficientnet-lite0"
    assert manifest.input.interpolation == "bicubic" and manifest.input.mean == (127.0, 127.0, 127.0)
    preset = read_manifest(REPO / "models" / "resnet50" / "model.ini")
    assert preset.input.value_range == 1.0 and preset.input.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("text, complaint", [
    ("[model]\nname = x\n", "no [input] section"),
    ("[model]\nname = x\n[input]\nsize = 224\ninterpolation = cubic\n", "interpolation 'cubic'"),
    ("[model]\nname = x\n[input]\nsize = 224\nlayout = CHW\n", "layout 'CHW'"),
    ("[model]\nname = x\n[input]\nsize = 224\nmean = 1 2\n", "mean needs three numbers"),
    ("[model]\nname = x\n[input]\nsize = 300\nresize = 256\n", "need 1 <= size <= resize"),
    ("[model]\nname = x\n[input]\nsize = 224\nvalue_range = 100\n", "value_range"),
])
def test_bad_manifests_are_named(tmp_path, text, complaint):
    (tmp_path / "model.ini").write_text(text)
    with pytest.raises(ModelError, match="model.ini") as caught:
        read_manifest(tmp_path / "model.ini")
    assert complaint in str(caught.value)


def test_label_count_must_match_the_graph(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "labels.txt").write_text("just\ntwo\n")
    with pytest.raises(ModelError, match="1000 classes but labels.txt has 2"):
        load(tmp_path / "m")


def test_input_size_must_match_the_manifest(tmp_path, default_model_dir):
    shutil.copytree(default_model_dir, tmp_path / "m")
    ini = (tmp_path / "m" / "model.ini").read_text().replace("size = 224", "size = 192")
    (tmp_path / "m" / "model.ini").write_text(ini)
    with pytest.raises(ModelError, match="does not fit the manifest"):
        load(tmp_path / "m")


def test_unreadable_and_corrupt_models_fail_at_load(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="cannot read model"):
        load(tmp_path / "m")
    (tmp_path / "m" / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError, match="onnxruntime cannot load it"):
        load(tmp_path / "m")


def test_thread_counts_are_applied(tiny_model_dir):
    loaded = load(tiny_model_dir, intra_op_threads=1)
    assert loaded.session.get_session_options().intra_op_num_threads == 1
    assert load(tiny_model_dir).session.get_session_options().intra_op_num_threads == cpus.available()


def test_top_k_is_sorted_and_softmaxed(tiny_model_dir):
    loaded = load(tiny_model_dir)
    batch = np.zeros((2, *loaded.input_shape()), np.float32)
    batch[0, 0] = 1.0  # red
    batch[1, 2] = 1.0  # blue
    scores = loaded.run(batch)
    assert scores.shape == (2, 1000)
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    red, blue = loaded.top_k(scores[0], 3), loaded.top_k(scores[1], 3)
    assert red[0].index == 900 and blue[0].index == 9
    assert red[0].confidence >= red[1].confidence >= red[2].confidence
    assert loaded.top_k(scores[0], 5000)[-1].index in range(1000)
