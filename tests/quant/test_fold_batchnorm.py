"""fold-batchnorm: ORT equivalence of every fold, typed declines, and the exact bias shift."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from helpers import (assert_pass_declines, assert_pass_equivalent, op_types, run_ort,
                     run_passes, tiny_model)

from snncc.context import CompileContext, CompileOptions, QuantClipParams
from snncc.passes.fold_batchnorm import FoldBatchNormPass
from snncc.passes.relu_to_quant_clip import ReluToQuantClipPass

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def init(name: str, *shape: int) -> str:
    return f"float[{','.join(map(str, shape))}] {name} = {{{','.join(['0'] * math.prod(shape))}}}"


def bn_inits(c: int) -> list[str]:
    return [init(n, c) for n in ("gamma", "beta", "mean", "var")]


def model(signature: str, inits: list[str], body: str, **kw) -> onnx.ModelProto:
    return tiny_model(f"{HEAD}\n{signature}\n<{', '.join(inits)}>\n{{ {body} }}", **kw)


BN = "y = BatchNormalization<epsilon = 0.001>(t, gamma, beta, mean, var)"
CASES = {
    "conv_bias": ("g (float[2,4,5,5] x) => (float[2,6,5,5] y)",
                  [init("w", 6, 4, 3, 3), init("b", 6)] + bn_inits(6),
                  f"t = Conv<pads = [1,1,1,1]>(x, w, b)\n{BN}", ["Conv"]),
    "conv_no_bias": ("g (float[2,4,5,5] x) => (float[2,6,5,5] y)",
                     [init("w", 6, 4, 3, 3)] + bn_inits(6),
                     f"t = Conv<pads = [1,1,1,1]>(x, w)\n{BN}", ["Conv"]),
    "grouped_conv": ("g (float[2,4,5,5] x) => (float[2,6,5,5] y)",
                     [init("w", 6, 2, 3, 3), init("b", 6)] + bn_inits(6),
                     f"t = Conv<group = 2, pads = [1,1,1,1]>(x, w, b)\n{BN}", ["Conv"]),
    "gemm_transB0": ("g (float[3,5] x) => (float[3,6] y)",
                     [init("w", 5, 6), init("b", 6)] + bn_inits(6),
                     f"t = Gemm<beta = 0.5>(x, w, b)\n{BN}", ["Gemm"]),
    "gemm_transB1": ("g (float[3,5] x) => (float[3,6] y)",
                     [init("w", 6, 5)] + bn_inits(6),
                     f"t = Gemm<transB = 1>(x, w)\n{BN}", ["Gemm"]),
    "matmul_add": ("g (float[3,5] x) => (float[3,6] y)",
                   [init("w", 5, 6), init("b", 6)] + bn_inits(6),
                   f"m = MatMul(x, w)\nt = Add(m, b)\n{BN}", ["MatMul", "Add"]),
    "matmul": ("g (float[3,5] x) => (float[3,6] y)",
               [init("w", 5, 6)] + bn_inits(6),
               f"t = MatMul(x, w)\n{BN}", ["MatMul", "Add"]),
    "conv_mul_add_form": ("g (float[2,4,5,5] x) => (float[2,6,5,5] y)",
                          [init("w", 6, 4, 3, 3), init("b", 6), init("s", 6, 1, 1),
                           init("h", 1, 6, 1, 1)],
                          "t = Conv<pads = [1,1,1,1]>(x, w, b)\nu = Mul(s, t)\ny = Add(u, h)",
                          ["Conv"]),
    "matmul_mul_add_form": ("g (float[3,5] x) => (float[3,6] y)",
                            [init("w", 5, 6), init("s", 6), init("h", 1, 6)],
                            "t = MatMul(x, w)\nu = Mul(t, s)\ny = Add(u, h)",
                            ["MatMul", "Add"]),
    "conv_bn_bn": ("g (float[2,4,5,5] x) => (float[2,6,5,5] y)",
                   [init("w", 6, 4, 3, 3)] + bn_inits(6),
                   "t = Conv<pads = [1,1,1,1]>(x, w)\n"
                   "u = BatchNormalization(t, gamma, beta, mean, var)\n"
                   "y = BatchNormalization(u, gamma, beta, mean, var)", ["Conv"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_is_equivalent(case):
    sig, inits, body, ops = CASES[case]
    out, report, _ = assert_pass_equivalent(model(sig, inits, body), [FoldBatchNormPass()],
                                            expect_ops=ops)
    row = report.rows[0]
    assert row.modified and not row.declines
    assert [o.name for o in out.graph.output] == ["y"]


def test_shared_weight_declines():
    m = model("g (float[2,4,5,5] x) => (float[2,6,5,5] y, float[2,6,5,5] z)",
              [init("w", 6, 4, 3, 3), init("s", 6, 1, 1)],
              "t = Conv<pads = [1,1,1,1]>(x, w)\ny = Mul(t, s)\nz = Conv<pads = [1,1,1,1]>(x, w)")
    assert_pass_declines(m, FoldBatchNormPass(), code=FoldBatchNormPass.SHARED_WEIGHT)


@pytest.mark.parametrize("code, body", [
    ("NO_LINEAR_PRODUCER", "u = Mul(x, s)\ny = Add(u, h)"),
    ("PRODUCER_HAS_OTHER_USERS", "t = Conv(x, w)\ny = Mul(t, s)\nz = Relu(t)"),
    ("NOT_PER_CHANNEL", "t = Conv(x, w)\ny = Mul(t, p)"),
])
def test_mul_add_form_declines(code, body):
    outs = "float[2,6,5,5] y" + (", float[2,6,5,5] z" if "z =" in body else "")
    shapes = {"w": (6, 6, 1, 1), "s": (6, 1, 1), "h": (6, 1, 1), "p": (1, 6, 5, 5)}
    inits = [init(n, *shape) for n, shape in shapes.items() if f", {n})" in body]
    m = model(f"g (float[2,6,5,5] x) => ({outs})", inits, body)
    assert_pass_declines(m, FoldBatchNormPass(), code=getattr(FoldBatchNormPass, code))


def test_bn_on_graph_input_becomes_mul_add():
    m = model("g (float[2,6,5,5] t) => (float[2,6,5,5] y)", bn_inits(6), BN)
    out, report, _ = assert_pass_equivalent(m, [FoldBatchNormPass()], expect_ops=["Mul", "Add"])
    assert [d["code"] for d in report.rows[0].declines] == ["NO_LINEAR_PRODUCER"]
    assert report.rows[0].counts == {"bn_to_affine": 1}


def test_qcfs_pattern_after_conv_is_untouched():
    inits = [init("w", 6, 4, 1, 1), "float lam = {2.0}", "float L = {8.0}", "float half = {0.5}",
             "float zero = {0.0}", "float one = {1.0}"]
    body = ("t = Conv(x, w)\na = Div(t, lam)\nb = Mul(a, L)\nc = Add(b, half)\nd = Floor(c)\n"
            "e = Div(d, L)\nf = Clip(e, zero, one)\ny = Mul(f, lam)")
    params = {"lam": np.float32(2), "L": np.float32(8), "half": np.float32(0.5),
              "zero": np.float32(0), "one": np.float32(1)}
    m = model("g (float[2,4,5,5] x) => (float[2,6,5,5] y)", inits, body, params=params)
    out, report, _ = run_passes(m, [FoldBatchNormPass()])
    assert not report.rows[0].modified and not report.rows[0].declines
    assert op_types(out) == op_types(m)


# ---------------------------------------------------------------- bias shift (exact)

LAM, LEVELS = 2.0, 8  # shift = lam/(2L) = 1/8: dyadic, so the shifted sums stay exact
SHIFT_CASES = {
    # case: (body, activation outputs, expected bias_shifted, expected shift_add_inserted)
    # BN with eps=0, var=1/4 folds exactly: g = 2*gamma
    "conv_bn_relu": ("t = Conv<pads = [1,1,1,1]>(x, w1, b1)\n"
                     "u = BatchNormalization<epsilon = 0.0>(t, gamma, beta, mean, var)\n"
                     "y = Relu(u)", ("y",), 1, 0),
    "residual": ("a = Conv<pads = [1,1,1,1]>(x, w1, b1)\nr = Relu(a)\n"
                 "c = Conv<pads = [1,1,1,1]>(r, w2, b2)\nd = Conv(x, w3, b3)\n"
                 "s = Add(c, d)\ny = Relu(s)", ("r", "y"), 2, 0),
    "residual_identity_first": ("a = Conv<pads = [1,1,1,1]>(x, w1, b1)\nr = Relu(a)\n"
                                "c = Conv<pads = [1,1,1,1]>(r, w2)\ns = Add(r, c)\ny = Relu(s)",
                                ("r", "y"), 2, 0),
    "no_bias_owner": ("r = Relu(x)\ns = Add(x, r)\ny = Relu(s)", ("r", "y"), 0, 2),
}


def _shift_model(body: str) -> onnx.ModelProto:
    c = 4
    inits = [init(n, c, c, 3, 3) for n in ("w1", "w2")] + [init("w3", c, c, 1, 1)] + \
        [init(n, c) for n in ("b1", "b2", "b3", "gamma", "beta", "mean")] + \
        [f"float[{c}] var = {{{','.join(['0.25'] * c)}}}"]
    params = {"var": np.full(c, 0.25, np.float32)}
    return model(f"g (float[2,{c},6,6] x) => (float[2,{c},6,6] y)", inits, body, dyadic=True,
                 params=params)


def _qann(m, *, shift: bool, sites, lam):
    ctx = CompileContext(CompileOptions(target="qann", bias_shift=shift))
    ctx.quant = {y: QuantClipParams(lam=lam, levels=LEVELS, phi=0.5) for y in sites}
    return run_passes(m, [FoldBatchNormPass(), ReluToQuantClipPass()], ctx=ctx)


@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("case", sorted(SHIFT_CASES))
def test_bias_shift_is_exact(case, per_channel):
    body, sites, shifted, inserted = SHIFT_CASES[case]
    m = onnx.shape_inference.infer_shapes(_shift_model(body))
    lam = np.array([2.0, 1.0, 4.0, 0.5], np.float32) if per_channel else np.float32(LAM)
    plain, _, ctx0 = _qann(m, shift=False, sites=sites, lam=lam)
    moved, report, ctx1 = _qann(m, shift=True, sites=sites, lam=lam)
    counts = report.rows[0].counts
    assert counts.get("bias_shifted", 0) == shifted
    assert counts.get("shift_add_inserted", 0) == inserted
    assert all(ctx1.quant[y].phi == 0.0 for y in sites)
    assert all(ctx0.quant[y].phi == 0.5 for y in sites)
    assert "Add" not in [n.op_type for n in moved.graph.node if "quant" in n.name]
    x = np.round(np.random.default_rng(3).normal(0, 2, (2, 4, 6, 6)) * 64) / 64
    feeds = {"x": x.astype(np.float32)}
    assert np.array_equal(run_ort(moved, feeds)[0], run_ort(plain, feeds)[0])


def test_residual_shifts_exactly_one_branch():
    m = _shift_model(SHIFT_CASES["residual"][0])
    moved, _, _ = _qann(m, shift=True, sites=("r", "y"), lam=np.float32(LAM))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in moved.graph.initializer}
    orig = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    convs = {n.input[0] + "->" + n.output[0]: inits.get(n.input[2], orig.get(n.input[2]))
             for n in moved.graph.node if n.op_type == "Conv"}
    assert np.array_equal(convs["r->c"], orig["b2"] + np.float32(LAM / (2 * LEVELS)))
    assert np.array_equal(convs["x->d"], orig["b3"])


def test_bias_shift_rewrites_qcfs_pattern_with_phi_zero():
    from snncc.passes.calibrate import CalibratePass

    inits = [init("w", 4, 4, 1, 1), init("b", 4), "float lam = {2.0}", "float L = {8.0}",
             "float half = {0.5}", "float zero = {0.0}", "float one = {1.0}"]
    body = ("t = Conv(x, w, b)\na = Div(t, lam)\nb2 = Mul(a, L)\nc = Add(b2, half)\n"
            "d = Floor(c)\ne = Div(d, L)\nf = Clip(e, zero, one)\ny = Mul(f, lam)")
    params = {"lam": np.float32(LAM), "L": np.float32(LEVELS), "half": np.float32(0.5),
              "zero": np.float32(0), "one": np.float32(1)}
    m = model("g (float[2,4,6,6] x) => (float[2,4,6,6] y)", inits, body, params=params,
              dyadic=True)
    ctx = CompileContext(CompileOptions(target="qann", bias_shift=True))
    out, report, ctx = run_passes(m, [CalibratePass(), FoldBatchNormPass(),
                                      ReluToQuantClipPass()], ctx=ctx)
    assert report.rows[1].counts == {"bias_shifted": 1}
    assert report.rows[2].counts["pattern_kept"] == 1
    assert ctx.quant["y"].phi == 0.0 and ctx.quant["y"].source == "pattern"
    assert op_types(out) == ["Conv", "Mul", "Floor", "Clip", "Mul"]
    x = {"x": (np.round(np.random.default_rng(0).normal(0, 2, (2, 4, 6, 6)) * 64) / 64)
         .astype(np.float32)}
    assert np.array_equal(run_ort(out, x)[0], run_ort(m, x)[0])


def test_bn_with_shared_weight_declines_and_becomes_mul_add():
    m = model("g (float[2,4,5,5] x) => (float[2,6,5,5] y, float[2,6,5,5] z)",
              [init("w", 6, 4, 3, 3)] + bn_inits(6),
              f"t = Conv<pads = [1,1,1,1]>(x, w)\n{BN}\nz = Conv<pads = [1,1,1,1]>(x, w)")
    m = onnx.shape_inference.infer_shapes(m)
    out, report, _ = assert_pass_equivalent(m, [FoldBatchNormPass()],
                                            expect_ops=["Conv", "Conv", "Mul", "Add"])
    assert [d["code"] for d in report.rows[0].declines] == ["SHARED_WEIGHT"]
