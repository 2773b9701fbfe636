"""quant_clip: emit == NumPy reference bit for bit; find_quant_clips round-trips, reads exports."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_ort, tiny_model

from snncc import ir
from snncc.context import QuantClipParams
from snncc.passes.quant_clip import (activation_sites, emit_quant_clip, find_quant_clips,
                                     numpy_quant_clip)

LAM_C = np.array([1.5, 2.0, 0.75, 3.25], np.float32)

# name -> (body, initializer names -> values, expected lam, L, phi)
VARIANTS = {
    "old_repo": ("""
        a = Div(x, lam)
        b = Mul(a, L)
        c = Add(b, half)
        d = Floor(c)
        e = Div(d, L)
        f = Clip(e, zero, one)
        y = Mul(f, lam)""", 8),
    "new_repo": ("""
        a = Div(x, lam)
        b = Clip(a, zero, one)
        c = Mul(b, L)
        d = Add(c, half)
        e = Floor(d)
        f = Div(e, L)
        y = Mul(f, lam)""", 4),
    "gn": ("""
        a = Mul(x, L)
        b = Div(a, lam)
        c = Add(b, half)
        d = Floor(c)
        e = Clip(d, zero, L)
        f = Mul(e, lam)
        y = Div(f, L)""", 8),
    "reciprocal_minmax": ("""
        a = Mul(x, inv_lam)
        b = Mul(a, L)
        c = Add(b, half)
        d = Floor(c)
        e = Mul(d, inv_L)
        f = Max(e, zero)
        g = Min(f, one)
        y = Mul(g, lam)""", 16),
    "straight_through": ("""
        a = Div(x, lam)
        b = Mul(a, L)
        c = Add(b, half)
        d = Floor(c)
        s = Sub(d, c)
        t = Add(c, s)
        e = Div(t, L)
        f = Clip(e, zero, one)
        y = Mul(f, lam)""", 8),
}


def _model(body: str, levels: int, lam: np.ndarray, *, lead: str = "") -> onnx.ModelProto:
    lam_shape = "" if lam.ndim == 0 else "[1,4,1,1]"
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,4,3,3] x) => (float[2,4,3,3] y)
    <float{lam_shape} lam = {{{', '.join(['1.0'] * lam.size)}}},
     float{lam_shape} inv_lam = {{{', '.join(['1.0'] * lam.size)}}},
     float L = {{1.0}}, float inv_L = {{1.0}}, float half = {{0.5}}, float zero = {{0.0}},
     float one = {{1.0}}, float six = {{6.0}}>
    {{ {lead} {body} }}"""
    lam4 = lam if lam.ndim == 0 else lam.reshape(1, 4, 1, 1)
    params = {"lam": lam4, "inv_lam": (1 / lam4).astype(np.float32), "L": np.float32(levels),
              "inv_L": np.float32(1 / levels), "half": np.float32(0.5), "zero": np.float32(0),
              "one": np.float32(1), "six": np.float32(6)}
    return tiny_model(text, params=params)


@pytest.mark.parametrize("lam", [np.array(2.5, np.float32), LAM_C], ids=["layer", "channel"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recognises_qcfs_exports(variant, lam):
    body, levels = VARIANTS[variant]
    model = _model(body, levels, lam)
    graph = ir.load(model).graph
    (site,) = find_quant_clips(graph)
    assert (site.z.name, site.y.name) == ("x", "y")
    assert site.params.levels == levels and site.params.phi == 0.5
    assert site.params.source == "pattern"
    assert site.params.lam.shape == lam.shape
    np.testing.assert_allclose(site.params.lam, lam, rtol=1e-6)
    assert len(site.nodes) == len(model.graph.node)
    x = np.random.default_rng(0).uniform(-1, 4, (2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], numpy_quant_clip(x, site.params),
                               atol=1e-6)


@pytest.mark.parametrize("levels", [3, 5, 6, 7, 15])
@pytest.mark.parametrize("variant", ["old_repo", "reciprocal_minmax"])
def test_levels_whose_reciprocal_float32_rounds(variant, levels):
    """Div(L) as Mul(float32(1/L)) (written so, or after canonicalize, which rewrites every
    Div by a constant): Clip(0, 1) then sits at 1/c = 7.0000003 floor units for L = 7, and the
    chain was no QCFS site for any L but a power of two (bit-serial L = 2**T - 1 >= 3, IF at odd
    T): compile asked for --calib, or with it kept Floor in the network and recalibrated."""
    from snncc.context import CompileContext
    from snncc.driver import make_options
    from snncc.passes.canonicalize import CanonicalizePass

    model = _model(VARIANTS[variant][0], levels, np.array(0.7, np.float32))
    m = ir.load(model)
    CanonicalizePass().run(m, CompileContext(make_options(timesteps=1, fidelity_samples=0)))
    (site,) = find_quant_clips(m.graph)
    assert site.params.levels == levels and site.params.source == "pattern"
    np.testing.assert_allclose(site.params.lam, 0.7, rtol=1e-6)
    x = np.random.default_rng(0).uniform(-1, 2, (2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], numpy_quant_clip(x, site.params),
                               atol=1e-6)


@pytest.mark.parametrize("phi", [0.5, 0.0])
@pytest.mark.parametrize("lam", [np.array(0.3, np.float32), LAM_C * np.float32(1.1)],
                         ids=["layer", "channel"])
def test_emit_round_trips_and_matches_numpy(lam, phi):
    model = _model("y = Relu(x)", 8, lam)
    m = ir.load(model)
    relu = m.graph.nodes[0]
    x, y = relu.inputs[0], relu.outputs[0]
    relu.inputs.clear()
    relu.outputs.clear()
    params = QuantClipParams(lam=lam, levels=7, phi=phi)
    nodes = emit_quant_clip(m.graph, x, y, params)
    assert [n.op for n in nodes] == ["Mul"] + ["Add"] * (phi != 0) + ["Floor", "Clip", "Mul"]
    m.graph.cleanup().toposort()
    (site,) = find_quant_clips(m.graph)
    assert site.z is x and site.y is y and site.nodes == nodes
    assert np.array_equal(site.params.lam, lam) and site.params.lam.dtype == np.float32
    assert (site.params.levels, site.params.phi) == (7, phi)
    proto = ir.to_proto(m)
    xs = np.random.default_rng(1).uniform(-1, 4, (2, 4, 3, 3)).astype(np.float32)
    assert np.array_equal(run_ort(proto, {"x": xs})[0], numpy_quant_clip(xs, params))


@pytest.mark.parametrize("lead, lam, z", [
    ("bn = Mul(x, half)", 2.0, "bn"),   # a BatchNorm scale in front stays outside
    ("bn = Add(x, half)", 2.0, "bn"),   # so does a bias / bias-shift Add
    ("bn = Relu(x)", 8.0, "bn"),        # lam == L: the whole head is still taken
])
def test_site_boundaries(lead, lam, z):
    body, levels = VARIANTS["old_repo"]
    model = _model(body.replace("Div(x, lam)", "Div(bn, lam)"), levels, np.array(lam, np.float32),
                   lead=lead)
    (site,) = find_quant_clips(ir.load(model).graph)
    assert site.z.name == z and len(site.nodes) == 7 and site.params.phi == 0.5


def test_back_to_back_sites_stay_apart():
    """Two chains in a row (e.g. Relu then Relu6): the second chain's head stops at the first
    chain's output scale instead of taking it, so the sites share no node."""
    body, levels = VARIANTS["old_repo"]
    second = body.replace("Div(x, lam)", "Div(y1, lam)")
    for name in "abcdef":
        second = second.replace(f"{name} = ", f"{name}2 = ").replace(f"({name},", f"({name}2,") \
            .replace(f"({name})", f"({name}2)")
    model = _model(second, levels, np.array(2.0, np.float32),
                   lead=body.replace("y = Mul(f, lam)", "y1 = Mul(f, lam)"))
    first, last = find_quant_clips(ir.load(model).graph)
    assert (first.z.name, first.y.name, last.z.name, last.y.name) == ("x", "y1", "y1", "y")
    assert not {id(n) for n in first.nodes} & {id(n) for n in last.nodes}
    assert len(first.nodes) == len(last.nodes) == 7


@pytest.mark.parametrize("body, levels", [
    ("a = Div(x, lam) \n b = Mul(a, L) \n c = Add(b, half) \n d = Floor(c) \n y = Div(d, L)", 8),
    ("b = Floor(x) \n c = Mul(b, half) \n y = Clip(c, zero, L)", 8),
    ("a = Mul(x, half) \n b = Floor(a) \n c = Clip(b, zero, L) \n y = Mul(c, L)", 2.5),
], ids=["no_clamp", "scale_mismatch", "non_integer_levels"])
def test_rejects_non_quant_clips(body, levels):
    model = _model(body, levels, np.array(2.0, np.float32))
    assert find_quant_clips(ir.load(model).graph) == []


def test_activation_sites_skip_pattern_clip():
    body, levels = VARIANTS["old_repo"]
    body = body.replace("y = Mul(f, lam)", "m = Mul(f, lam)\n r = Relu(m)\n y = Clip(r, zero, six)")
    graph = ir.load(_model(body, levels, np.array(2.0, np.float32))).graph
    kinds = [(s.kind, s.y.name, s.clip_max) for s in activation_sites(graph)]
    assert kinds == [("pattern", "m", None), ("relu", "r", None), ("clip", "y", 6.0)]
