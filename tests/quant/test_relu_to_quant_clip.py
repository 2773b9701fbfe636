"""relu-to-quant-clip: exact against numpy_quant_clip, near-ANN at huge L, no-op without ReLU."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import op_types, run_ort, run_passes, tiny_model

from snncc.context import CompileContext, CompileOptions, QuantClipParams
from snncc.errors import PreconditionError
from snncc.passes.quant_clip import numpy_quant_clip
from snncc.passes.relu_to_quant_clip import ReluToQuantClipPass

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
CONV = f"""{HEAD}
g (float[2,3,6,6] x) => (float[2,4,6,6] y, float[2,4,6,6] t)
<float[4,3,3,3] w = {{{','.join(['0'] * 108)}}}, float[4] b = {{0,0,0,0}}, float zero = {{0.0}},
 float six = {{6.0}}>
{{ t = Conv<pads = [1,1,1,1]>(x, w, b)
   y = {{act}} }}"""
ACTS = {"relu": "Relu(t)", "relu6": "Clip(t, zero, six)"}


def _model(act: str) -> onnx.ModelProto:
    return tiny_model(CONV.replace("{act}", ACTS[act]), dyadic=True,
                      params={"zero": np.float32(0), "six": np.float32(6)})


def _ctx(params: QuantClipParams) -> CompileContext:
    ctx = CompileContext(CompileOptions(target="qann"))
    ctx.quant["y"] = params
    return ctx


def _x(seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(0, scale, (2, 3, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("phi", [0.5, 0.0])
@pytest.mark.parametrize("lam", [np.float32(1.75), np.array([1.0, 0.3, 2.5, 4.0], np.float32)],
                         ids=["layer", "channel"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_qann_matches_numpy_reference_exactly(act, lam, phi):
    model = onnx.shape_inference.infer_shapes(_model(act))
    params = QuantClipParams(lam=lam, levels=8, phi=phi)
    out, report, ctx = run_passes(model, [ReluToQuantClipPass()], ctx=_ctx(params))
    assert report.rows[0].counts[f"{'relu' if act == 'relu' else 'clip'}_replaced"] == 1
    assert op_types(out) == ["Conv", "Mul"] + ["Add"] * (phi != 0) + ["Floor", "Clip", "Mul"]
    y, z = run_ort(out, {"x": _x()})
    assert np.array_equal(y, numpy_quant_clip(z, params))
    assert ctx.quant["y"] is params


def test_huge_levels_approach_the_ann():
    model = _model("relu")
    x = _x(1)
    ann, z = run_ort(model, {"x": x})
    params = QuantClipParams(lam=np.float32(z.max()), levels=2 ** 16)
    out, _, _ = run_passes(model, [ReluToQuantClipPass()], ctx=_ctx(params))
    qann = run_ort(out, {"x": x})[0]
    np.testing.assert_allclose(qann, ann, rtol=0, atol=float(z.max()) / 2 ** 16)


def test_no_op_without_activations():
    model = tiny_model(f"{HEAD}\ng (float[2,3] x) => (float[2,3] y) {{ y = Sigmoid(x) }}")
    out, report, _ = run_passes(model, [ReluToQuantClipPass()])
    assert not report.rows[0].modified and op_types(out) == ["Sigmoid"]


def test_missing_params_raise_listing_all_sites():
    model = tiny_model(f"{HEAD}\ng (float[2,3] x) => (float[2,3] y) "
                       "{ r = Relu(x) \n y = Relu(r) }")
    with pytest.raises(PreconditionError) as err:
        run_passes(model, [ReluToQuantClipPass()])
    assert err.value.code == "SNN-E220" and len(err.value.diagnostics) == 2


def test_existing_pattern_is_kept():
    model = _model("relu")
    params = QuantClipParams(lam=np.float32(2.0), levels=4)
    once, _, ctx = run_passes(model, [ReluToQuantClipPass()], ctx=_ctx(params))
    ctx.quant.clear()
    twice, report, ctx = run_passes(once, [ReluToQuantClipPass()], ctx=ctx)
    assert not report.rows[0].modified and report.rows[0].counts["pattern_kept"] == 1
    assert op_types(twice) == op_types(once)
    assert ctx.quant["y"].levels == 4 and ctx.quant["y"].source == "pattern"
