"""The quantization guide's alternatives, tried on one model: top-1 agreement of each with float.

    python -m bench.int8_variants [efficientnet-lite0|resnet50]

onnxruntime's guide suggests, when int8 loses accuracy: another calibration method (Percentile,
Entropy), U8U8 with reduce_range, or U8S8. Each variant is built like models/build.py --int8
(same pre-processing, calibration photos and per-channel weights) into a scratch directory and
checked on the same 104 photos as bench/int8.py. A one-off study: nothing here is used by default.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from . import int8, servers, throughput

sys.path.insert(0, str(servers.REPO / "models"))
import quantize  # noqa: E402  (models/quantize.py)


def variants() -> dict[str, dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantType
    return {
        "S8S8 MinMax (the build's)": {},
        "S8S8 Percentile": {"calibrate_method": CalibrationMethod.Percentile},
        "S8S8 Entropy": {"calibrate_method": CalibrationMethod.Entropy},
        "U8S8 MinMax": {"activation_type": QuantType.QUInt8},
        "U8U8 MinMax, reduce_range": {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8,
                                      "reduce_range": True},
    }


def main(argv: list[str]) -> int:
    model = argv[0] if argv else "efficientnet-lite0"
    float_dir = servers.REPO / throughput.MODELS[model]
    throughput.ensure_model(model, float_dir)
    for name, overrides in variants().items():
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch)
            for companion in ("model.ini", "labels.txt"):
                shutil.copyfile(float_dir / companion, out / companion)
            quantize.quantize(float_dir / "model.onnx", out / "model.onnx", float_dir,
                              **{"reduce_range": not quantize.cpu_has_vnni(), **overrides})
            agree = int8._agreement(float_dir, out)
        print(f"{model}: {name}: top-1 agrees on {agree['agree']}/{agree['photos']} photos", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
