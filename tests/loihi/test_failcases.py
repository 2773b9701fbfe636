"""Bad input gives clear, coded errors, all collected, and nothing is written."""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph
from snncc.backends.loihi.backend import LoihiBackend
from snncc.backends.loihi.mapping import CoreLimits
from snncc.backends.registry import get_backend
from snncc.context import CompileContext, CompileOptions
from snncc.errors import SnnccError

CTX = CompileContext(CompileOptions(target="loihi", timesteps=4))


def unsupported_ops():
    g = Graph((2, 8, 8))
    s = g.neuron(g.conv("x", 2, 4))
    m = g.op("MaxPool", [s], kernel_shape=[3, 3], pads=[1] * 4)
    prod = g.op("Mul", [s, s])
    return g.model(g.neuron(g.conv(g.op("Add", [m, prod]), 4, 4)))


def saturating_weights(theta: float = 2.0 ** -14):
    """One input spike worth 2 / theta thresholds: at 2**-14 even the fewest fraction bits
    (vth_exp) leave the 8-bit mantissa over the largest exponent."""
    g = Graph((2, 8, 8))
    s = g.neuron(g.conv("x", 2, 4))
    return g.model(g.neuron(g.conv(s, 4, 4, weight=np.full((4, 4, 3, 3), 2.0, np.float32),
                                   bias=False),
                            theta=[theta]))


def test_large_weights_lower_the_fraction_bits_instead_of_saturating():
    """2 / 2**-6 = 128 thresholds per spike is 2**23 state integers at the default F = 16: with
    mantissas up to 127 that needs exponent 17, 4 above Loihi's 13, so the quantizer lowers that
    group's F to 12 and the weights stay exact."""
    from snncc.backends.loihi.lowering import lower
    from snncc.backends.loihi.quantize import quantize

    net = lower(saturating_weights(2.0 ** -6), 4)
    report, diags = quantize(net)
    assert not diags and report["all_exact"]
    assert [g.frac_bits for g in net.groups if g.kind == "neuron"] == [16, 12]


def saturating_bias():
    g = Graph((1, 4, 4))
    conv = g.conv("x", 1, 2, bias=False)
    return g.model(g.neuron(g.op("Add", [conv, g.const(np.full((2, 1, 1), 3e4,
                                                                np.float32))]), theta=[1.0]))


def too_many_levels():
    """GN with tau = 2**18: its largest threshold is 2**18 state units, more than the 16-bit
    threshold target leaves fraction bits for (a crash, 'negative shift count', before)."""
    g = Graph((1, 4, 4))
    return g.model(g.neuron(g.conv("x", 1, 2), "GroupNeuron", tau=1 << 18))


def wide_dense():
    g = Graph((8, 8, 8))
    s = g.neuron(g.conv("x", 8, 8))
    return g.model(g.neuron(g.gemm(g.op("Flatten", [s], axis=1), 512, 4)))


def dilated_conv_and_reshape():
    g = Graph((2, 8, 8))
    s = g.neuron(g.conv("x", 2, 4))
    d = g.op("Conv", [s, g.const(g.dyadic((4, 4, 3, 3)))], kernel_shape=[3, 3], pads=[2] * 4,
             dilations=[2, 2])
    r = g.op("Reshape", [s, g.const(np.array([-1, 4, 64], np.int64))])
    back = g.op("Reshape", [r, g.const(np.array([-1, 4, 8, 8], np.int64))])
    return g.model(g.neuron(g.op("Add", [d, back])))


def chained_pool_problems():
    """Two ceil_mode pools in a chain: the second is downstream of the first's error and is
    still reported (its attribute is wrong whatever its input)."""
    g = Graph((2, 8, 8))
    s = g.neuron(g.conv("x", 2, 4))
    p = g.op("AveragePool", [s], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    s2 = g.neuron(g.conv(p, 4, 4))
    return g.model(g.op("AveragePool", [s2], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))


def non_constant_weight():
    g = Graph((2, 8, 8))
    w = g.op("Identity", [g.const(g.dyadic((4, 2, 3, 3)))])
    return g.model(g.neuron(g.op("Conv", ["x", w], kernel_shape=[3, 3], pads=[1] * 4)))


CASES = {  # builder, backend, expected codes (all collected)
    "maxpool_and_product": (unsupported_ops, LoihiBackend(), {"SNN-E270"}, 2),
    "weights_saturate": (saturating_weights, LoihiBackend(), {"SNN-E630"}, 1),
    "bias_saturates": (saturating_bias, LoihiBackend(), {"SNN-E631"}, 1),
    "threshold_too_large": (too_many_levels, LoihiBackend(), {"SNN-E632"}, 1),
    "fan_in_exceeds_core": (wide_dense, LoihiBackend(limits=CoreLimits(in_axons=256)),
                            {"SNN-E640"}, 1),
    "dilation_and_reshape": (dilated_conv_and_reshape, LoihiBackend(), {"SNN-E271"}, 2),
    "non_constant_weight": (non_constant_weight, LoihiBackend(), {"SNN-E272"}, 1),
    "chained_pool_problems": (chained_pool_problems, LoihiBackend(), {"SNN-E271"}, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_check_collects_and_emit_writes_nothing(tmp_path, case):
    build, backend, codes, count = CASES[case]
    model = build()
    diags = backend.check(model, CTX)
    assert {d.code for d in diags} == codes and len(diags) >= count
    assert all(d.hint and d.node for d in diags if d.code != "SNN-E641")
    with pytest.raises(SnnccError) as err:
        backend.emit(model, CTX, tmp_path / "out")
    assert codes <= err.value.codes
    assert not (tmp_path / "out").exists()


def test_saturation_reports_the_error_introduced():
    (diag,) = LoihiBackend().check(saturating_weights(), CTX)
    assert "max relative error" in diag.message


def test_registry_returns_this_backend():
    backend = get_backend("loihi")
    assert isinstance(backend, LoihiBackend) and backend.output_kind == "dir"


def test_two_inputs_are_rejected():
    g = Graph((2, 4, 4))
    model = g.model(g.neuron(g.op("Add", ["x", "x"])))
    model.graph.input.append(model.graph.input[0])
    model.graph.input[1].name = "x2"
    (diag,) = LoihiBackend().check(model, CTX)
    assert diag.code == "SNN-E276"


def test_saturation_hints_name_per_layer_calibration():
    """A sweep's random-weight ResNet-18 hit E631 through dead channels (per-channel lambda down
    to 7e-6); 'recalibrate (a larger theta)' named no option, and --per-layer compiled it."""
    for build in (saturating_weights, saturating_bias):
        (diag,) = LoihiBackend().check(build(), CTX)
        assert "--per-layer" in diag.hint


def test_a_dense_fan_in_no_core_takes_fails_before_calibration(tmp_path):
    """A helper's LeNet with --maxpool avg failed with E640 only after calibrating (the folded
    pool makes its Gemm read 12544 spikes; a core takes 8192 input axons)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from snncc.driver import compile_model, make_options

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n)
             for n, s in (("w", (64, 1, 3, 3)), ("g1", (10, 64 * 12 * 12)), ("g2", (10, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "g1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "g2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 12, 12])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "wide.onnx"))
    np.savez(tmp_path / "c.npz", x=rng.random((40, 1, 12, 12)).astype(np.float32))
    with pytest.raises(SnnccError) as err:
        compile_model(tmp_path / "wide.onnx", tmp_path / "o.loihi",
                      make_options(target="loihi", calib_path=str(tmp_path / "c.npz")))
    assert "SNN-E640" in err.value.codes and "found before calibration" in str(err.value)
    assert "9216 neurons" in str(err.value)


def test_a_capability_error_is_headed_by_its_own_code_with_or_without_calibration(tmp_path,
                                                                                  capsys):
    """A Softmax head on Loihi was headed SNN-E270 when the model needed --calib (the
    precheck), but SNN-E600 (documented as the ort backend's) for a QCFS graph that needs none."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    from snncc.cli import main

    rng = np.random.default_rng(0)
    c = {"w": rng.normal(0, 0.5, (4, 1, 3, 3)), "fc": rng.normal(0, 0.5, (3, 4 * 8 * 8)),
         "lam": 1.0, "L": 4.0, "half": 0.5, "zero": 0.0, "one": 1.0}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in c.items()]
    chain = [("Conv", ["x", "w"], "z"), ("Div", ["z", "lam"], "a"), ("Mul", ["a", "L"], "b"),
             ("Add", ["b", "half"], "d"), ("Floor", ["d"], "e"), ("Div", ["e", "L"], "f"),
             ("Clip", ["f", "zero", "one"], "g"), ("Mul", ["g", "lam"], "h"),
             ("Flatten", ["h"], "i"), ("Gemm", ["i", "fc"], "j"), ("Softmax", ["j"], "y")]
    nodes = [helper.make_node(op, ins, [out], **({"pads": [1] * 4} if op == "Conv" else
                                                 {"transB": 1} if op == "Gemm" else {}))
             for op, ins, out in chain]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "q.onnx")
    assert main(["compile", str(tmp_path / "q.onnx"), "-T", "4", "--target", "loihi", "-o",
                 str(tmp_path / "lo")]) == 2
    err = capsys.readouterr().err
    assert "error: [SNN-E270] the loihi backend cannot express this model" in err, err
    assert not (tmp_path / "lo").exists()


def test_a_block_whose_every_weight_rounds_to_zero_is_warned_about_as_such(tmp_path):
    """A fuzzer's net (a global pool over 144 input positions folded into its first conv) lost
    all of its block's weights and was told about one large weight setting a shared exponent,
    and to try --per-layer; the layer never spiked."""
    g = Graph((2, 8, 8))
    s1 = g.neuron(g.conv("x", 2, 4, weight=np.full((4, 2, 3, 3), 2.0 ** -20, np.float32)))
    model = g.model(g.gemm(g.op("Flatten", [s1], axis=1), 4 * 8 * 8, 3))
    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    LoihiBackend().emit(model, ctx, tmp_path / "out")
    (warned,) = [w for w in ctx.warnings if "weights to 0" in w]
    assert "rounds all 72 of its weights to 0" in warned and "never spikes" in warned
    assert "--per-layer" not in warned


@pytest.mark.parametrize("target", ["loihi", "nir"])
def test_a_channels_last_input_names_the_fix(target):
    """A model that permutes its NHWC input to NCHW: the refused Transpose says so and how to
    re-export it (both backends had listed the ops they map)."""
    g = Graph((8, 8, 2))
    t = g.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    model = g.model(g.neuron(g.conv(t, 2, 4)))
    ctx = CompileContext(CompileOptions(target=target, timesteps=4))
    diags = get_backend(target).check(model, ctx)
    (diag,) = [d for d in diags if "Transpose" in d.node]
    assert diag.code in ("SNN-E270", "SNN-E692") and "channels-last" in diag.hint \
        and "x.transpose(0, 3, 1, 2)" in diag.hint
