"""Neuron registry entries: worked examples, QCFS exactness, function body vs reference, streaming,
validation. Values are dyadic (or far from bin edges) so that float32 results are exact."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import run_ort
from snncc.context import CompileOptions, QuantClipParams
from snncc.errors import OptionError, api_wording
from snncc.ir import SNN_DOMAIN, SNN_DOMAIN_VERSION
from snncc.neurons import NEURONS, get_neuron
from snncc.neurons.registry import validate_attrs

F32 = np.float32
KEYS = sorted(NEURONS)
# extra attribute sets exercised per neuron (a new neuron gets its defaults only)
VARIANTS = {
    "if": [{}, {"v_init": 0.25}],
    "lif": [{"leak": 0.9, "amplitude": 0.75}, {"v_init": 0.5}],
    "gn": [{"tau": 4}, {"tau": 3, "v_init": 0.0}],
    "mt": [{"fractions": [1.0, 0.75, 0.5, 0.25]},
           {"fractions": [1.0, 0.5, 0.25], "mode": "cascade"},
           {"fractions": [1.0, 0.6, 0.3], "mode": "cascade", "reset": "hard"},
           {"fractions": [0.9, 0.4], "reset": "hard"}],
    "bitserial": [{}, {"v_init": 0.0}, {"decoded": 1}],
    "srp": [{"tau": 2}, {"tau": 0}, {"tau": 5, "tol": 0.1}],
}
CASES = [(k, v) for k in KEYS for v in VARIANTS.get(k, [{}])]


def ref(key, x, **attrs):
    return NEURONS[key].reference(np.asarray(x, F32), attrs)


def const_column(values):
    """[N, 1] constant-input current from a list of per-neuron values."""
    return np.asarray(values, F32).reshape(-1, 1)


def qcfs_level(z, lam, L, phi=0.5):
    return np.clip(np.floor(np.asarray(z, np.float64) * L / lam + phi), 0, L)


def options(T, levels=None, **params):
    return CompileOptions(timesteps=T, levels=levels, neuron_params=params)


# odd multiples of 1/128 never sit on a QCFS bin edge for the L and dyadic λ used below
GRID = (2 * np.arange(-32, 320) + 1) / 128.0


# ----------------------------------------------------------------------------- registry

def test_registry_holds_the_six_neurons():
    ops = {k: s.op_type for k, s in NEURONS.items()}
    assert ops == {"if": "IFNeuron", "lif": "LIFNeuron", "gn": "GroupNeuron", "mt": "MTNeuron",
                   "bitserial": "BitSerialNeuron", "srp": "SRPNeuron"}
    assert get_neuron("gn") is NEURONS["gn"]


@pytest.mark.parametrize("key", KEYS)
def test_defaults_validate_and_match_the_function_schema(key):
    spec = NEURONS[key]
    filled = validate_attrs(spec, {})
    assert set(filled) == {a.name for a in spec.all_attributes}
    fn = spec.function_proto()
    assert (fn.domain, fn.name, list(fn.input), list(fn.output)) == \
        (SNN_DOMAIN, spec.op_type, ["x"], ["y"])
    assert [a.name for a in fn.attribute_proto] == [a.name for a in spec.all_attributes]
    assert spec.loihi.spike in ("binary", "graded") and spec.loihi.note


# ----------------------------------------------------------------------------- worked examples

def test_if_constant_input_example():  # neurons.md §1.3
    y, v = ref("if", const_column([0.6]), T=4, const_input=1, theta=[1.0])
    assert y.ravel().tolist() == [1, 0, 1, 0] and y.mean() == 0.5
    assert np.isclose(v.item(), 0.9)


def test_if_uneven_input_example():  # neurons.md §1.3: the unevenness error SRP targets
    y, v = ref("if", np.array([[0.9], [-0.3], [-0.1], [-0.1]]), T=4, theta=[1.0])
    assert y.ravel().tolist() == [1, 0, 0, 0] and y.mean() == 0.25
    assert np.isclose(v.item(), -0.1)


@pytest.mark.parametrize("T, mean", [(2, 0.5), (4, 0.25), (8, 0.25)])
def test_if_t_not_equal_l_example(T, mean):  # neurons.md §1.3: L = 4, z = 0.3
    y, _ = ref("if", const_column([0.3]), T=T, const_input=1, theta=[1.0])
    assert y.mean() == mean


@pytest.mark.parametrize("v_init, shift", [(0.5, 0.0), (0.0, 1 / 30)])  # rounding or bias shift
@pytest.mark.parametrize("z, q", [(0.6, 9), (-0.2, 0), (1.3, 15), (0.05, 1)])
def test_bitserial_example(z, q, v_init, shift):  # neurons.md §2.5: λ = 1, T = 4, L = 15
    y, state = ref("bitserial", const_column([z + shift]), T=4, const_input=1, theta=[1.0],
                   v_init=v_init)
    bits = [(q >> k) & 1 for k in range(4)]
    assert (y.ravel() != 0).astype(int).tolist() == bits
    np.testing.assert_array_equal(y.ravel(), [b * F32(4 * 2 ** k) * (F32(1) / F32(15))
                                              for k, b in enumerate(bits)])
    assert state[1].item() == q and np.isclose(y.mean(), q / 15)


@pytest.mark.parametrize("T, x, spikes", [(3, [0.6], [0, 1, 0]), (1, [1.2], [1]),
                                          (1, [0.7], [0])])
def test_lif_example(T, x, spikes):  # neurons.md §3.4: leak 0.9, θ = 1
    y, _ = ref("lif", const_column(x), T=T, const_input=1, theta=[1.0], leak=0.9)
    assert y.ravel().tolist() == spikes


@pytest.mark.parametrize("x, const_input, counts", [([0.6], 1, [2, 3]), ([1.2, 0.0], 0, [4, 1])])
def test_gn_examples(x, const_input, counts):  # neurons.md §4.3: θ = 1, τ = 4, T = 2
    attrs = dict(T=2, const_input=const_input, theta=[1.0], tau=4)
    y, _ = ref("gn", const_column(x), **attrs)
    assert NEURONS["gn"].events(y, attrs).ravel().tolist() == counts
    assert y.mean() == 0.625 == qcfs_level(0.6, 1.0, 8) / 8


def test_srp_example():  # neurons.md §6.3: θ = 1, τ = T = 4, input repeated in both phases
    x = np.tile([0.9, -0.3, -0.1, -0.1], 2).reshape(-1, 1)
    y, state = ref("srp", x, T=8, theta=[1.0], tau=4)
    assert y.ravel().tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert state[1].item() == 0  # suppressed for phase B
    plain, _ = ref("if", x[4:], T=4, theta=[1.0])
    assert plain.mean() == 0.25  # what QCFS-IF would output instead of the ANN's 0


# ----------------------------------------------------------------------------- QCFS exactness

LAMBDAS = ([1.0], [0.75, 1.5, 2.0])


def grid_input(lam):
    """[N, C] currents: the grid for every channel, as z (const_input) rows."""
    return np.repeat(GRID[:, None], len(lam), axis=1).astype(F32)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_if_with_t_equal_l_is_qcfs(T, lam):
    x = grid_input(lam)
    attrs = NEURONS["if"].from_quant_clip(QuantClipParams(np.array(lam, F32), T), options(T))
    y, _ = ref("if", x, T=T, const_input=1, **attrs)
    q = qcfs_level(x, np.array(lam), T)
    np.testing.assert_array_equal(NEURONS["if"].events(y, attrs).reshape(T, *x.shape).sum(0), q)
    np.testing.assert_array_equal(y.reshape(T, *x.shape).astype(np.float64).mean(0),
                                  np.array(lam) * q / T)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("tau, T", [(4, 2), (8, 1), (2, 4), (4, 4)])
def test_gn_with_tau_t_equal_l_is_qcfs(tau, T, lam):
    L = tau * T
    x = grid_input(lam)
    attrs = NEURONS["gn"].from_quant_clip(QuantClipParams(np.array(lam, F32), L), options(T))
    assert attrs["tau"] == tau
    y, _ = ref("gn", x, T=T, const_input=1, **attrs)
    counts = NEURONS["gn"].events(y, attrs).reshape(T, *x.shape).sum(0)
    np.testing.assert_array_equal(counts, qcfs_level(x, np.array(lam), L))


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("L", [1, 2, 3, 4, 8])
def test_mt_equidistant_t1_is_qcfs(L, lam):
    x = grid_input(lam)
    attrs = NEURONS["mt"].from_quant_clip(QuantClipParams(np.array(lam, F32), L), options(1))
    assert (attrs["mode"], len(attrs["fractions"])) == ("parallel", L)
    y, _ = ref("mt", x, T=1, const_input=1, **attrs)
    q = qcfs_level(x, np.array(lam), L)
    np.testing.assert_array_equal(NEURONS["mt"].events(y, attrs), q)
    if L & (L - 1) == 0:  # power-of-two fractions are exact in float32
        np.testing.assert_array_equal(y, (np.array(lam) * q / L).astype(F32))


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_mt_pow2_t1_is_qcfs(n, lam):
    L = 2 ** n - 1
    x = grid_input(lam)
    attrs = NEURONS["mt"].from_quant_clip(QuantClipParams(np.array(lam, F32), L),
                                          options(1, preset="pow2"))
    y, _ = ref("mt", x, T=1, const_input=1, **attrs)
    unit = np.array(attrs["theta"]) * 2.0 ** (1 - n)
    np.testing.assert_allclose(y / unit, np.rint(y / unit), rtol=1e-6)  # whole units only
    np.testing.assert_array_equal(np.rint(y / unit), qcfs_level(x, np.array(lam), L))


@pytest.mark.parametrize("phi", [0.5, 0.0])
@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5])
def test_bitserial_is_qcfs_with_l_2_pow_t_minus_1(T, lam, phi):
    L = 2 ** T - 1
    lam_arr = np.array(lam, F32)
    attrs = NEURONS["bitserial"].from_quant_clip(QuantClipParams(lam_arr, L, phi), options(T))
    z = grid_input(lam)
    x = z + (lam_arr / F32(2 * L) if phi == 0 else F32(0))  # the folded bias shift
    # uneven arrival: slices z + d_t with sum(d_t) = 0 (dyadic, so the sum is exact)
    d = (np.arange(T) - (T - 1) / 2)[:, None, None] / 4.0
    y, _ = ref("bitserial", (x[None] + d).reshape(-1, len(lam)), T=T, **attrs)
    slices = y.reshape(T, *x.shape)
    q = sum((slices[k] != 0).astype(np.int64) << k for k in range(T))
    np.testing.assert_array_equal(q, qcfs_level(z, np.array(lam), L))
    unit = (lam_arr / F32(L)).astype(np.float64)
    mean = slices.astype(np.float64).mean(0)
    if T & (T - 1) == 0:
        np.testing.assert_array_equal(mean, q * unit)
    np.testing.assert_allclose(mean, q * unit, rtol=1e-6)


def test_srp_with_t_equal_l_is_qcfs_for_constant_input():
    T, tau, lam = 4, 4, [0.75, 1.5, 2.0]
    x = grid_input(lam)
    attrs = NEURONS["srp"].from_quant_clip(QuantClipParams(np.array(lam, F32), T),
                                           options(T, tau=tau))
    y, _ = ref("srp", x, T=tau + T, const_input=1, **attrs)
    counted = NEURONS["srp"].events(y, attrs).reshape(tau + T, *x.shape)[-T:].sum(0)
    np.testing.assert_array_equal(counted, qcfs_level(x, np.array(lam), T))


# ----------------------------------------------------------------------------- function body

def function_model(spec, attrs, shape, opset=17):
    node = helper.make_node(spec.op_type, ["x"], ["y"], domain=SNN_DOMAIN, **attrs)
    dims = [f"d{i}" for i in range(len(shape))]
    graph = helper.make_graph([node], "neuron",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, ir_version=8, functions=[spec.function_proto(opset)],
                              opset_imports=[helper.make_opsetid("", opset),
                                             helper.make_opsetid(SNN_DOMAIN, SNN_DOMAIN_VERSION)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("const_input", [0, 1])
@pytest.mark.parametrize("T", [1, 3, 4])
@pytest.mark.parametrize("key, extra", CASES, ids=[f"{k}-{i}" for k, i in
                                                    ((k, VARIANTS.get(k, [{}]).index(v))
                                                     for k, v in CASES)])
def test_function_matches_reference_bit_for_bit(key, extra, T, const_input, per_channel):
    spec = NEURONS[key]
    rng = np.random.default_rng(T * 10 + const_input)
    shape = (2, 3, 4, 2) if T != 3 else (2, 3)
    theta = rng.uniform(0.5, 1.5, 3).astype(F32).tolist() if per_channel else [0.8]
    attrs = dict(T=T, const_input=const_input, theta=theta, **extra)
    rows = shape[0] * (1 if const_input else T)
    x = rng.normal(0.3, 0.8, (rows,) + shape[1:]).astype(F32)
    (y,) = run_ort(function_model(spec, attrs, list(x.shape)), {"x": x})
    expected, _ = spec.reference(x, attrs)
    assert y.shape == expected.shape
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("key", KEYS)
def test_function_defaults_and_opsets(key, opset):
    spec = NEURONS[key]
    x = np.random.default_rng(5).normal(0.5, 1.0, (6, 4)).astype(F32)
    (y,) = run_ort(function_model(spec, {"T": 3}, [6, 4], opset), {"x": x})
    assert np.array_equal(y, spec.reference(x, {"T": 3})[0])


def test_function_needs_opset_13():
    with pytest.raises(OptionError) as err:
        NEURONS["if"].function_proto(12)
    assert err.value.code == "SNN-E313"


# ----------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("const_input", [0, 1])
@pytest.mark.parametrize("key, extra", [c for c in CASES if c[0] != "bitserial"])
def test_streaming_equals_folded(key, extra, const_input, chunk):
    spec, T = NEURONS[key], 6
    rng = np.random.default_rng(7)
    x = rng.normal(0.3, 0.8, ((1 if const_input else T) * 2, 3, 2)).astype(F32)
    attrs = dict(const_input=const_input, theta=[0.5, 1.0, 1.25], **extra)
    folded, folded_state = spec.reference(x, dict(attrs, T=T))
    state = rng.normal(size=(spec.state_planes, 2, 3, 2))  # ignored at step 0
    parts = []
    for step in range(0, T, chunk):
        x_part = x if const_input else x[step * 2:(step + chunk) * 2]
        y, state = spec.reference(x_part, dict(attrs, T=chunk), state, step)
        parts.append(y)
    assert np.array_equal(np.concatenate(parts), folded)
    assert np.array_equal(state, folded_state)


@pytest.mark.parametrize("B", [1, 3, 4])
def test_bitserial_streaming_is_folded_one_epoch_later(B):
    spec = NEURONS["bitserial"]
    rng = np.random.default_rng(B)
    x = rng.normal(0.4, 0.6, (B * 2, 3)).astype(F32)
    attrs = dict(theta=[0.5, 1.0, 1.5])
    folded, folded_state = spec.reference(x, dict(attrs, T=B))
    stream = np.concatenate([x, rng.normal(size=x.shape).astype(F32)])  # epoch 1: anything
    state, ys = np.zeros((2, 2, 3), F32), []
    for g in range(2 * B):
        y, state = spec.reference(stream[g * 2:(g + 1) * 2], dict(attrs, T=1, bits=B), state, g)
        ys.append(y)
        if g == B - 1:
            assert np.array_equal(state, folded_state)
    assert not np.any(np.concatenate(ys[:B]))
    assert np.array_equal(np.concatenate(ys[B:]), folded)


# ----------------------------------------------------------------------------- hooks

@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("T", [1, 2, 3])
def test_from_quant_clip_gives_valid_attributes(key, T):
    spec = NEURONS[key]
    opts = options(T)
    L = spec.levels_for(T, opts)
    attrs = spec.from_quant_clip(QuantClipParams(np.array(1.5, F32), L), opts)
    filled = validate_attrs(spec, dict(attrs, T=spec.total_steps(T, attrs)))
    assert spec.counted_steps(T, filled) == T


@pytest.mark.parametrize("key, T, params, levels", [
    ("if", 4, {}, 4), ("lif", 4, {}, 4), ("srp", 4, {"tau": 8}, 4), ("bitserial", 3, {}, 7),
    ("gn", 2, {}, 8), ("gn", 2, {"tau": 6}, 12), ("mt", 2, {}, 8),
    ("mt", 2, {"preset": "pow2", "n": 2}, 6)])
def test_levels_for(key, T, params, levels):
    assert NEURONS[key].levels_for(T, options(T, **params)) == levels


def test_step_counts_and_flags():
    srp = NEURONS["srp"]
    assert (srp.total_steps(4, {"tau": 3}), srp.counted_steps(4, {"tau": 3})) == (7, 4)
    assert [k for k, s in NEURONS.items() if s.needs_bias_shift] == ["bitserial"]
    assert not srp.maxpool_exact(1, {"tau": 0})


@pytest.mark.parametrize("key", KEYS)
def test_maxpool_exact_means_maxpool_commutes(key):
    spec = NEURONS[key]
    x = np.random.default_rng(3).normal(0.5, 1.0, (4, 3, 5)).astype(F32)
    attrs = dict(T=1, const_input=1, theta=[0.5, 1.0, 1.5])
    if not spec.maxpool_exact(1, attrs):
        pytest.skip(f"{key} does not claim exactness")
    pooled_after = spec.reference(x, attrs)[0].max(axis=-1)
    pooled_before = spec.reference(x.max(axis=-1, keepdims=True), attrs)[0][..., 0]
    assert np.array_equal(pooled_after, pooled_before)


def test_bitserial_maxpool_is_not_exact_for_t_above_1():
    spec = NEURONS["bitserial"]
    attrs = dict(T=2, const_input=1, theta=[1.0], v_init=0.0)
    y, _ = spec.reference(np.array([[2 / 3], [1 / 3]], F32) + F32(0.01), attrs)
    per_slice_max = y.reshape(2, 2).max(axis=1)  # q = 2 and q = 1 pool to 0b11
    assert np.isclose(per_slice_max.mean(), 1.0) and not spec.maxpool_exact(2, attrs)


@pytest.mark.parametrize("key, attrs, y, events", [
    ("mt", {"fractions": [1.0, 0.5, 0.25], "mode": "cascade"}, [1.75, 0.5, 1.25, 0], [3, 1, 2, 0]),
    ("mt", {"fractions": [1.0, 0.5, 0.25]}, [1.0, 0.5, 0.25, 0], [3, 2, 1, 0]),
    ("gn", {"tau": 4}, [1.0, 0.5, 0.25, 0], [4, 2, 1, 0]),
    ("bitserial", {}, [4.0, 2 / 3, 0.25, 0], [1, 1, 1, 0]),
])
def test_events(key, attrs, y, events):
    y = np.array(y, F32).reshape(-1, 1)
    assert NEURONS[key].events(y, dict(attrs, theta=[1.0])).ravel().tolist() == events


@pytest.mark.parametrize("fractions", [[1.0, 0.5, 0.25, 0.125], [1.0, 0.6, 0.3], [1.0, 0.75]])
def test_cascade_events_are_the_thresholds_fired(fractions):
    """A cascade's y is the float32 sum of the thresholds it fired; decoding by subtraction
    missed the last one whenever that sum rounded down (a calibrated theta such as 0.7: 195 of
    300 random cases, 2.3 % of a compiled pow2 layer's events). The count here is the neuron's
    own, taken step by step from its fire rule."""
    from snncc.neurons import multi_threshold as mt

    rng = np.random.default_rng(3)
    theta = rng.uniform(0.1, 3.0, 6).astype(F32)           # full-mantissa, per channel
    attrs = validate_attrs(NEURONS["mt"], {"T": 4, "theta": theta.tolist(),
                                                "fractions": fractions, "mode": "cascade"})
    x = (rng.uniform(-0.2, 1.6, (4 * 50, 6)) * theta).astype(F32)
    y, _ = NEURONS["mt"].reference(x, attrs)
    th = np.asarray(attrs["theta"], F32)
    v = np.broadcast_to(F32(attrs["v_init"]) * th, (50, 6)).astype(F32)
    fired = []
    for t in range(4):
        r = (v + x[t * 50:(t + 1) * 50]).astype(F32)
        n = np.zeros(r.shape, np.int64)
        for f in mt._thresholds(attrs, th):
            passed = r >= f
            r = np.where(passed, r - f, r).astype(F32)
            n += passed
        v = r
        fired.append(n)
    np.testing.assert_array_equal(NEURONS["mt"].events(y, attrs), np.concatenate(fired))


# ----------------------------------------------------------------------------- validation

def expect_code(code, fn, *args, **kwargs):
    with pytest.raises(OptionError) as err:
        fn(*args, **kwargs)
    assert err.value.code == code, err.value
    return err.value


@pytest.mark.parametrize("key, attrs", [
    ("if", {"theta": []}), ("if", {"theta": [1.0, 0.0]}), ("if", {"theta": 1.0}),
    ("if", {"T": 0}), ("if", {"const_input": 2}), ("if", {"v_init": float("nan")}),
    ("lif", {"leak": 0.0}), ("lif", {"leak": 1.5}), ("lif", {"amplitude": 0.0}),
    ("gn", {"tau": 0}), ("gn", {"tau": 2.0}), ("srp", {"tau": -1}), ("srp", {"tol": -0.1}),
    ("mt", {"fractions": [0.5, 1.0]}), ("mt", {"fractions": [1.0, 1.0]}),
    ("mt", {"fractions": [1.2]}), ("mt", {"fractions": []}), ("mt", {"mode": "serial"}),
    ("mt", {"reset": "zero"}), ("bitserial", {"bits": 17}),
])
def test_bad_attribute_values(key, attrs):
    x = np.zeros((4, 2), F32)
    expect_code("SNN-E303", NEURONS[key].reference, x, attrs)


@pytest.mark.parametrize("key", KEYS)
def test_unknown_attribute_is_reported(key):
    err = expect_code("SNN-E302", NEURONS[key].reference, np.zeros((1, 1), F32), {"thta": [1.0]})
    assert "thta" in err.message


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("code, x, attrs, state, step", [
    ("SNN-E304", np.zeros((2, 3)), {"theta": [1.0, 1.0]}, None, 0),
    ("SNN-E305", np.zeros(4), {}, None, 0),
    ("SNN-E305", np.zeros((5, 2)), {"T": 2}, None, 0),
    ("SNN-E306", np.zeros((2, 3)), {}, None, 1),
    ("SNN-E306", np.zeros((2, 3)), {}, np.zeros((2, 1, 3)), -1),
    ("SNN-E306", np.zeros((2, 3)), {}, np.zeros((3, 2, 4)), 1),
])
def test_bad_shapes_and_state(key, code, x, attrs, state, step):
    expect_code(code, NEURONS[key].reference, x, attrs, state, step)


@pytest.mark.parametrize("key, L, T, params, code, hint", [
    ("gn", 10, 4, {"levels": 10}, "SNN-E307", "-L 16"),
    ("mt", 10, 4, {"levels": 10}, "SNN-E307", "-L 16"),
    # a QCFS-trained clip keeps its L: only -T helps (-L and --neuron-param had led to errors)
    ("mt", 10, 4, {}, "SNN-E307", "QCFS-trained with L = 10: use a -T that divides it (-T 1, 2, 5"),
    ("gn", 10, 4, {"levels": 8}, "SNN-E307", "fine-tune with -L a multiple of T"),
    ("bitserial", 7, 4, {}, "SNN-E308", "-T 3"),
    ("bitserial", 8, 3, {}, "SNN-E308", "L = 2^T - 1"),
    ("bitserial", 5, 3, {"levels": 5}, "SNN-E308", "drop -L (bitserial takes L = 7 at T = 3)"),
    ("bitserial", 15, 3, {"levels": 15}, "SNN-E308", "drop -L (bitserial takes L = 7 at T = 3), "
     "or use -T 4"),
    ("bitserial", 4, 3, {"levels": 5}, "SNN-E308", "retrain the QCFS model"),  # L from the graph
    ("mt", 4, 1, {"preset": "octal"}, "SNN-E309", "pow2"),
    ("gn", 8, 2, {"tau": 0}, "SNN-E309", "tau"),
    ("mt", 8, 1, {"preset": "pow2"}, "SNN-E310", "2^n - 1"),
])
def test_from_quant_clip_errors(key, L, T, params, code, hint):
    err = expect_code(code, NEURONS[key].from_quant_clip,
                      QuantClipParams(np.array(1.0, F32), L), options(T, **params))
    assert api_wording(hint) in err.hint   # raised to Python: keywords (-L 16 -> levels=16)


def test_lif_refuses_distinct_per_channel_lambda():
    lif = NEURONS["lif"]
    expect_code("SNN-E311", lif.from_quant_clip, QuantClipParams(np.array([1.0, 2.0], F32), 4),
                options(4))
    same = lif.from_quant_clip(QuantClipParams(np.array([2.0, 2.0], F32), 4), options(4))
    assert same == {"theta": [2.0], "amplitude": 2.0, "leak": 1.0, "v_init": 0.0}


def test_bitserial_folded_bits_must_match_t():
    expect_code("SNN-E312", NEURONS["bitserial"].reference, np.zeros((4, 1), F32),
                {"T": 4, "bits": 3})


def test_mt_refuses_nan_fractions():
    """NaN passed every comparison of the fractions check: the reference ran with them while
    the kernel refused them, as a bad input shape (a helper's edge-case audit)."""
    expect_code("SNN-E303", NEURONS["mt"].reference, np.zeros((4, 2), F32),
                {"fractions": [float("nan")], "T": 4}, None, 0)
