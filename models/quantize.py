"""The opt-in int8 build: onnxruntime static quantization, QDQ, calibrated on scikit-image photos.

Follows onnxruntime's quantization guide (docs/performance/model-optimizations/quantization.md):
- pre-process first (`quant_pre_process`: shape inference and graph optimisation);
- static quantization in the QDQ format with S8S8, "the default setting [that] balances
  performance and accuracy. It should be the first choice";
- per-channel weights (depthwise convolutions have very different ranges per channel), and
  `reduce_range` where the CPU lacks VNNI: "On AVX2 and AVX512 machines, you will generally need to
  enable reduce-range as well if per-channel is enabled", "not needed on machines supporting VNNI"
  (the U8S8 kernels' VPMADDUBSW can saturate without VNNI);
- MinMax calibration over 28 photos (models/photos.py), preprocessed by the model's manifest with
  inferd's own preprocessing (what the daemon will feed the model), so this needs scikit-image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path



def cpu_has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags name AVX-512 VNNI or AVX-VNNI (False when they cannot be read)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as lines:
            flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def recipe_suffix(reduce_range: bool) -> str:
    """What the int8 build adds to the float recipe (stored in the model, so a rebuild is noticed)."""
    return (f" int8 v2 qdq s8s8 per-channel minmax reduce_range={reduce_range} "
            f"calib=skimage-{_calibration_count()}-inferd-preprocessing")


def _calibration_count() -> int:
    import photos
    return 4 * len(photos.CALIBRATION)


def calibration_tensors(model_dir: Path):
    """The calibration photos as float32 input tensors, one (1, C, H, W) array each."""
    import photos
    from inferd.imaging.preprocess import to_tensor
    from inferd.manifest import read_manifest

    spec = read_manifest(model_dir / "model.ini").input
    return [to_tensor(data, spec, max_pixels=1 << 30, formats=frozenset({"JPEG"}))[None]
            for data in photos.calibration_jpegs()]


def quantize(float_model: Path, out: Path, model_dir: Path, reduce_range: bool, **overrides) -> None:
    """Write the int8 QDQ model of `float_model` to `out`; `overrides` replace quantize_static's
    arguments (bench/int8_variants.py tries the guide's alternatives that way)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Photos(CalibrationDataReader):
        def __init__(self, name: str):
            self.feeds = iter({name: tensor} for tensor in calibration_tensors(model_dir))

        def get_next(self):
            return next(self.feeds, None)

    import onnx
    input_name = onnx.load(str(float_model), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX's own shape inference covers these CNNs; the symbolic one (for transformers) needs sympy.
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        options = {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QInt8,
                   "weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": reduce_range,
                   "calibrate_method": CalibrationMethod.MinMax, **overrides}
        quantize_static(str(prepared), str(out), Photos(input_name), **options)
