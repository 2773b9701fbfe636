"""A zoo of tiny ONNX CNNs in the older and odder forms real exports come in.

Every builder returns a checked ``onnx.ModelProto`` (3 input channels, 8x8 images, a few
channels, seeded weights), written by hand with ``onnx.helper`` so no torch is needed.
``ZOO`` maps a name to its builder; tests parametrize over it. ``INPUT_SHAPES`` gives the
``--input-shape`` a model needs, and ``UNSUPPORTED`` names the activation each ``act_*`` model
is expected to be rejected for. All but ``dynamic_*`` are exported with a hard-coded batch of 1.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ZOO", "INPUT_SHAPES", "UNSUPPORTED"]

F = TensorProto.FLOAT


class _Builder:
    """Collects nodes and seeded initializers; names are made unique with a counter."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def rand(self, shape, hint: str = "w", scale: float = 0.5) -> str:
        return self.const(self.rng.normal(0, scale, size=shape), hint)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.name(f"/{op_type}_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, **attrs) -> str:
        ins = [x, self.rand((cout, cin // attrs.get("group", 1), k, k), "conv_w")]
        if bias:
            ins.append(self.rand((cout,), "conv_b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, **attrs)

    def bn(self, x: str, c: int, **attrs) -> str:
        params = [self.rand((c,), "bn_scale"), self.rand((c,), "bn_bias"),
                  self.rand((c,), "bn_mean"),
                  self.const(np.abs(self.rng.normal(0, 0.5, c)) + 0.5, "bn_var")]
        return self.op("BatchNormalization", [x, *params], **attrs)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        return self.op("Gemm", [x, self.rand((cout, cin), "fc_w"), self.rand((cout,), "fc_b")],
                       transB=1)

    def model(self, out: str, *, opset: int = 17, ir_version: int | None = None,
              input_shape: Sequence = (1, 3, 8, 8), inits_as_inputs: bool = False,
              extra_outputs: Sequence[str] = ()) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("x", F, list(input_shape))]
        if inits_as_inputs:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        outputs = [helper.make_tensor_value_info(o, F, None) for o in (out, *extra_outputs)]
        graph = helper.make_graph(self.nodes, "zoo", inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="snncc-zoo")
        if ir_version is not None:
            model.ir_version = ir_version
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.graph.ClearField("output")
        model.graph.output.extend(inferred.graph.output)  # exporters declare output shapes
        onnx.checker.check_model(model, full_check=True)
        return model


def _stem(b: _Builder, cout: int = 4) -> str:
    return b.op("Relu", [b.conv("x", 3, cout)])


def _head(b: _Builder, x: str, c: int, classes: int = 5) -> str:
    """GlobalAveragePool -> Flatten -> Gemm(transB=1)."""
    return b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1), c, classes)


# ----------------------------------------------------------------------- opset / IR variants

def ir3_opset7_inits_as_inputs() -> onnx.ModelProto:
    b = _Builder(1)
    h = b.op("Relu", [b.bn(b.conv("x", 3, 4, bias=False), 4)])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Dropout", [b.op("Flatten", [h], axis=1)], ratio=0.5)
    return b.model(b.gemm(h, 4 * 4 * 4, 5), opset=7, ir_version=3, inits_as_inputs=True)


def opset9() -> onnx.ModelProto:
    b = _Builder(2)
    h = b.op("Clip", [b.bn(b.conv("x", 3, 4), 4)], min=0.0, max=6.0)
    h = b.op("AveragePool", [b.op("Dropout", [h], ratio=0.1)], kernel_shape=[2, 2],
             strides=[2, 2])
    return b.model(b.gemm(b.op("Flatten", [h]), 64, 5), opset=9)


def opset11() -> onnx.ModelProto:
    b = _Builder(3)
    h = b.op("Clip", [b.conv("x", 3, 4), b.const(0.0, "lo"), b.const(6.0, "hi")])
    h = b.op("Squeeze", [b.op("GlobalAveragePool", [h])], axes=[2, 3])
    return b.model(b.gemm(h, 4, 5), opset=11)


def opset13() -> onnx.ModelProto:
    b = _Builder(4)
    h = b.op("ReduceMean", [_stem(b)], axes=[2, 3], keepdims=0)
    h = b.op("Unsqueeze", [h, b.const([2], "axes", np.int64)])
    h = b.op("Squeeze", [h, b.const([2], "axes", np.int64)])
    return b.model(b.op("Softmax", [b.gemm(h, 4, 5)], axis=-1), opset=13)


def opset21() -> onnx.ModelProto:
    b = _Builder(5)
    h = b.op("Relu", [b.bn(b.conv("x", 3, 4), 4)])
    h = b.op("ReduceMean", [h, b.const([2, 3], "axes", np.int64)], keepdims=1)
    return b.model(b.gemm(b.op("Flatten", [h]), 4, 5), opset=21)


# ----------------------------------------------------------------------- constant subgraphs

def constant_weights() -> onnx.ModelProto:
    """Conv weight from a Constant node, bias from ConstantOfShape, Reshape target from Shape."""
    b = _Builder(6)
    w = b.op("Constant", [], value=numpy_helper.from_array(
        b.rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "wv"))
    n_out = b.op("Constant", [], value=numpy_helper.from_array(np.array([4], np.int64), "nv"))
    bias = b.op("ConstantOfShape", [n_out],
                value=numpy_helper.from_array(np.array([0.25], np.float32), "bv"))
    h = b.op("Relu", [b.op("Conv", ["x", w, bias], kernel_shape=[3, 3], pads=[1] * 4)])
    per_sample = b.op("ReduceProd", [b.op("Gather", [b.op("Shape", [h]),
                                                     b.const([1, 2, 3], "idx", np.int64)])],
                      keepdims=1)
    target = b.op("Concat", [b.const([-1], "minus1", np.int64), per_sample], axis=0)
    return b.model(b.gemm(b.op("Reshape", [h, target]), 256, 5))


# ----------------------------------------------------------------------- removable / rewritable

def dropout_identity() -> onnx.ModelProto:
    b = _Builder(7)
    w = b.op("Identity", [b.rand((4, 3, 3, 3), "conv_w")])
    h = b.op("Identity", [b.op("Conv", ["x", w], kernel_shape=[3, 3], pads=[1] * 4)])
    h = b.op("Dropout", [b.op("Relu", [h]), b.const(0.3, "ratio")])
    return b.model(b.op("Identity", [_head(b, h, 4)]))


def sum3() -> onnx.ModelProto:
    b = _Builder(8)
    branches = [b.conv("x", 3, 4, k=k) for k in (1, 3, 3)]
    return b.model(_head(b, b.op("Relu", [b.op("Sum", branches)]), 4))


def bn_node() -> onnx.ModelProto:
    b = _Builder(9)
    return b.model(_head(b, b.op("Relu", [b.bn(b.conv("x", 3, 4, bias=False), 4)]), 4))


def bn_mul_add() -> onnx.ModelProto:
    b = _Builder(10)
    h = b.op("Mul", [b.conv("x", 3, 4), b.rand((1, 4, 1, 1), "bn_mul")])
    h = b.op("Add", [h, b.rand((1, 4, 1, 1), "bn_add")])
    return b.model(_head(b, b.op("Relu", [h]), 4))


def sub_div_const() -> onnx.ModelProto:
    """(conv - m) / s, the input-normalisation form: canonicalize makes it Add / Mul, which the
    backends fold (the Loihi lowering refused Sub/Div with E270)."""
    b = _Builder(11)
    h = b.op("Sub", [b.conv("x", 3, 4), b.rand((1, 4, 1, 1), "norm_m")])
    h = b.op("Div", [h, b.const(np.abs(b.rng.normal(0, 0.5, (1, 4, 1, 1))) + 0.5, "norm_s")])
    return b.model(_head(b, b.op("Relu", [h]), 4))


def stem_net(act: str = "Relu", *, extra_reader: bool = False, indices: bool = False,
             second_pool: bool = True, bn: bool = True):
    """conv [-> BN] -> act -> MaxPool(3, 2, pad 1) -> conv -> Relu [-> MaxPool 2] -> head."""
    b = _Builder(7)
    h = b.conv("x", 3, 4)
    if bn:
        h = b.bn(h, 4)
    h = b.op("Relu", [h]) if act == "Relu" else \
        b.op("Clip", [h, b.const(0.0, "lo"), b.const(6.0, "hi")])
    a = h
    if indices:
        h, idx = b.op("MaxPool", [h], n_out=2, kernel_shape=[3, 3], strides=[2, 2],
                      pads=[1, 1, 1, 1])
    else:
        h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.op("Relu", [b.conv(h, 4, 4)])
    if second_pool:
        h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    if indices:
        idx = b.op("Cast", [idx], to=1)  # read (the zoo declares float outputs)
    outs = [a] if extra_reader else ([idx] if indices else [])
    return b.model(_head(b, h, 4), input_shape=(1, 3, 12, 12), extra_outputs=outs)



# ----------------------------------------------------------------------- batch hard-coded to 1

def reshape_batch1() -> onnx.ModelProto:
    b = _Builder(11)
    h = b.op("Reshape", [_stem(b), b.const([1, 256], "shape", np.int64)])
    return b.model(b.gemm(h, 256, 5))


def reshape_batch1_minus1() -> onnx.ModelProto:
    b = _Builder(12)
    h = b.op("Reshape", [_stem(b), b.const([1, -1], "shape", np.int64)])
    return b.model(b.gemm(h, 256, 5))


def flatten_axis0() -> onnx.ModelProto:
    b = _Builder(13)
    h = b.op("Flatten", [b.op("MaxPool", [_stem(b)], kernel_shape=[4, 4], strides=[4, 4])],
             axis=0)
    return b.model(b.gemm(h, 16, 5))


def channel_shuffle() -> onnx.ModelProto:
    """ShuffleNet's shuffle: Reshape [1,g,C/g,H,W] -> Transpose -> Reshape [1,C,H,W]."""
    b = _Builder(14)
    h = b.op("Relu", [b.conv("x", 3, 8)])
    h = b.op("Reshape", [h, b.const([1, 2, 4, 8, 8], "shape", np.int64)])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.const([1, 8, 8, 8], "shape", np.int64)])
    return b.model(_head(b, b.conv(h, 8, 4, group=2), 4))


def view_batch_from_shape() -> onnx.ModelProto:
    """torch's x.view(x.size(0), -1): the batch comes from Shape->Gather(0), must stay dynamic."""
    b = _Builder(22)
    h = _stem(b)
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h]), b.const(0, "i0", np.int64)]),
                           b.const([0], "axes", np.int64)])
    target = b.op("Concat", [n, b.const([-1], "minus1", np.int64)], axis=0)
    return b.model(b.gemm(b.op("Reshape", [h, target]), 256, 5))


# ----------------------------------------------------------------------- heads and plumbing

def matmul_add_head() -> onnx.ModelProto:
    b = _Builder(15)
    h = b.op("Flatten", [b.op("GlobalAveragePool", [_stem(b)])])
    h = b.op("Add", [b.op("MatMul", [h, b.rand((4, 5), "fc_w")]), b.rand((5,), "fc_b")])
    return b.model(h)


def concat() -> onnx.ModelProto:
    b = _Builder(16)
    h = b.op("Concat", [_stem(b, 4), b.op("Relu", [b.conv("x", 3, 2, k=1)])], axis=1)
    return b.model(_head(b, b.conv(h, 6, 4), 4))


def pools() -> onnx.ModelProto:
    b = _Builder(17)
    h = b.op("AveragePool", [_stem(b)], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("MaxPool", [b.op("Relu", [b.conv(h, 4, 4)])], kernel_shape=[3, 3], strides=[1, 1],
             pads=[1, 1, 1, 1])
    return b.model(_head(b, h, 4))


def softmax_output() -> onnx.ModelProto:
    b = _Builder(18)
    return b.model(b.op("Softmax", [_head(b, _stem(b), 4)], axis=1))


def logsoftmax_output() -> onnx.ModelProto:
    b = _Builder(19)
    return b.model(b.op("LogSoftmax", [_head(b, _stem(b), 4)], axis=1))


def dynamic_batch() -> onnx.ModelProto:
    b = _Builder(20)
    return b.model(_head(b, _stem(b), 4), input_shape=("N", 3, 8, 8))


def dynamic_hw() -> onnx.ModelProto:
    """Dynamic height and width: needs --input-shape."""
    b = _Builder(21)
    return b.model(_head(b, _stem(b), 4), input_shape=("batch", 3, "height", "width"))


# ----------------------------------------------------------------------- unsupported activations

def _act_model(act: Callable[[_Builder, str], str], *, opset: int = 17, seed: int = 30):
    """The activation between two spiking (ReLU) layers, where it needs a spiking form (in the
    analog prefix, before the first ReLU, it would run once on the input and convert)."""
    def build() -> onnx.ModelProto:
        b = _Builder(seed)
        h = act(b, b.conv(_stem(b), 4, 4))
        return b.model(_head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4), opset=opset)
    return build


def _silu(b: _Builder, x: str) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x])])


def _hardswish_pattern(b: _Builder, x: str) -> str:
    return b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])


def _gelu_erf(b: _Builder, x: str) -> str:
    e = b.op("Erf", [b.op("Div", [x, b.const(math.sqrt(2.0), "sqrt2")])])
    h = b.op("Mul", [x, b.op("Add", [e, b.const(1.0, "one")])])
    return b.op("Mul", [h, b.const(0.5, "half")])


def _mish_pattern(b: _Builder, x: str) -> str:
    return b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])


def _single(op_type: str, **attrs) -> Callable[[_Builder, str], str]:
    return lambda b, x: b.op(op_type, [x], **attrs)


#: zoo name -> (builder, the activation name the unsupported-node report must carry)
_ACTS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "act_sigmoid": (_act_model(_single("Sigmoid")), "Sigmoid"),
    "act_silu_pattern": (_act_model(_silu), "SiLU"),
    "act_swish_op": (_act_model(_single("Swish"), opset=24), "Swish"),
    "act_hardswish": (_act_model(_single("HardSwish")), "HardSwish"),
    "act_hardswish_pattern": (_act_model(_hardswish_pattern), "HardSwish"),
    "act_hardsigmoid": (_act_model(_single("HardSigmoid")), "HardSigmoid"),
    "act_gelu_erf": (_act_model(_gelu_erf), "GELU"),
    "act_gelu_op": (_act_model(_single("Gelu"), opset=20), "Gelu"),
    "act_gelu_tanh_op": (_act_model(_single("Gelu", approximate="tanh"), opset=20), "Gelu"),
    "act_leakyrelu": (_act_model(_single("LeakyRelu", alpha=0.1)), "LeakyRelu"),
    "act_prelu": (_act_model(lambda b, x: b.op("PRelu", [x, b.rand((4, 1, 1), "slope")])),
                  "PRelu"),
    "act_tanh": (_act_model(_single("Tanh")), "Tanh"),
    "act_elu": (_act_model(_single("Elu")), "Elu"),
    "act_selu": (_act_model(_single("Selu")), "Selu"),
    "act_celu": (_act_model(_single("Celu"), opset=17), "Celu"),
    "act_softplus": (_act_model(_single("Softplus")), "Softplus"),
    "act_softsign": (_act_model(_single("Softsign")), "Softsign"),
    "act_lrn": (_act_model(_single("LRN", size=3)), "LRN"),
    "act_mish_op": (_act_model(_single("Mish"), opset=18), "Mish"),
    "act_mish_pattern": (_act_model(_mish_pattern), "Mish"),
    "act_thresholdedrelu": (_act_model(_single("ThresholdedRelu", alpha=0.1)),
                            "ThresholdedRelu"),
    "act_softmax_inside": (_act_model(_single("Softmax", axis=1)), "Softmax"),
}


def act_many() -> onnx.ModelProto:
    """Three different unsupported activations in one model: all must be reported at once."""
    b = _Builder(40)
    h = b.op("Sigmoid", [b.conv("x", 3, 4)])
    h = b.op("LeakyRelu", [b.conv(h, 4, 4)], alpha=0.2)
    h = b.op("Tanh", [b.conv(h, 4, 4)])
    return b.model(_head(b, h, 4))


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    f.__name__: f for f in (
        ir3_opset7_inits_as_inputs, opset9, opset11, opset13, opset21, constant_weights,
        dropout_identity, sum3, bn_node, bn_mul_add, reshape_batch1, reshape_batch1_minus1,
        flatten_axis0, channel_shuffle, view_batch_from_shape, matmul_add_head, concat, pools,
        softmax_output, logsoftmax_output, dynamic_batch, dynamic_hw, act_many, sub_div_const)
}
ZOO.update({name: build for name, (build, _) in _ACTS.items()})

INPUT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {"dynamic_hw": {"x": (1, 3, 8, 8)}}

UNSUPPORTED: dict[str, str] = {name: act for name, (_, act) in _ACTS.items()}
