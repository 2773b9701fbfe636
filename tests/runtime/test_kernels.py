"""The C++ neuron kernels (runtime/csrc) against docs/neuron-ops.md, bit for bit.

The NumPy functions below are an independent float32 transcription of the spec, written for this
test. When the official references (``snncc.neurons.NEURONS[key].reference``) are importable, the
kernels are also compared with them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from snncc.errors import RuntimeLibraryError
from snncc.runtime import DOMAIN, ENV_VAR, op_names, session_options

pytestmark = pytest.mark.requires_runtime

ROOT = Path(__file__).resolve().parents[2]
F32 = np.float32


# ------------------------------------------------------------------------------------------------
# Independent NumPy float32 references of docs/neuron-ops.md

def _theta(attrs, x):
    """theta broadcast along axis 1 of an [N, C, ...] slice."""
    return np.asarray(attrs["theta"], F32).reshape((1, -1) + (1,) * (x.ndim - 2))


def _slices(x, attrs):
    T = attrs["T"]
    if attrs["const_input"]:
        return [x] * T
    return list(x.reshape((T, -1) + x.shape[1:]))


def _simulate(x, attrs, state, step, init, update):
    """Shared driver: init(shape, th) -> planes; update(planes, x_t, th, g) -> (planes, y_t)."""
    xs = _slices(np.asarray(x, F32), attrs)
    th = _theta(attrs, xs[0])
    if state is not None and step > 0:
        planes = [p.copy() for p in np.asarray(state, F32)]
    else:
        planes = init(xs[0].shape, th)
    ys = []
    for t, xt in enumerate(xs):
        planes, y = update(planes, xt, th, step + t)
        ys.append(np.broadcast_to(y, xt.shape).astype(F32))
    return np.concatenate(ys), np.stack([np.broadcast_to(p, xs[0].shape) for p in planes]).astype(F32)


def _full(shape, value):
    return np.broadcast_to(np.asarray(value, F32), shape).astype(F32)


def ref_if(x, attrs, state=None, step=0):
    def init(shape, th):
        return [_full(shape, F32(attrs["v_init"]) * th)]

    def update(planes, xt, th, g):
        m = planes[0] + xt
        s = m >= th
        return [np.where(s, m - th, m)], np.where(s, th, F32(0))
    return _simulate(x, attrs, state, step, init, update)


def ref_lif(x, attrs, state=None, step=0):
    def init(shape, th):
        return [_full(shape, F32(attrs["v_init"]) * th)]

    def update(planes, xt, th, g):
        u = F32(attrs["leak"]) * planes[0]
        u = u + xt
        s = u > th
        return [np.where(s, u - th, u)], np.where(s, F32(attrs["amplitude"]), F32(0))
    return _simulate(x, attrs, state, step, init, update)


def ref_gn(x, attrs, state=None, step=0):
    tau = F32(attrs["tau"])

    def init(shape, th):
        return [_full(shape, F32(attrs["v_init"]) * (th / tau))]

    def update(planes, xt, th, g):
        u, inv_u = th / tau, tau / th
        v = planes[0] + xt
        c = np.clip(np.floor(v * inv_u), F32(0), tau)
        return [v - c * u], c * u
    return _simulate(x, attrs, state, step, init, update)


def ref_mt(x, attrs, state=None, step=0):
    fractions = [F32(f) for f in attrs["fractions"]]

    def init(shape, th):
        return [_full(shape, F32(attrs["v_init"]) * th)]

    def update(planes, xt, th, g):
        m = planes[0] + xt
        ths = [th * f for f in fractions]
        y = np.zeros_like(m)
        if attrs["mode"] == "parallel":
            for thk in reversed(ths):
                y = np.where(m >= thk, thk, y)
            soft = m - y
        else:
            r = m
            for thk in ths:
                fire = r >= thk
                r = np.where(fire, r - thk, r)
                y = np.where(fire, y + thk, y)
            soft = r
        v = np.where(y > 0, F32(0), m) if attrs["reset"] == "hard" else soft
        return [v], y
    return _simulate(x, attrs, state, step, init, update)


def ref_bitserial(x, attrs, state=None, step=0):
    B = attrs["bits"] or attrs["T"]
    L = F32(2 ** B - 1)
    inv_B = F32(1) / F32(B)

    def quantize(U, th):
        return np.clip(np.floor(U * (L / th)), F32(0), L)

    def emit(q, th, k):
        bit = (q.astype(np.int64) >> k) & 1
        return np.where(bit == 1, F32(B * 2 ** k) * (th / L), F32(0))

    xs = _slices(np.asarray(x, F32), attrs)
    th = _theta(attrs, xs[0])
    shift = F32(attrs["v_init"]) * (th / L)
    if state is None:  # folded: accumulate, quantize, then slice k carries bit k
        if attrs["const_input"]:
            U = xs[0] + shift
        else:
            acc = np.zeros_like(xs[0])
            for xt in xs:
                acc = acc + xt
            U = acc * inv_B + shift
        q = quantize(U, th)
        y = np.concatenate([emit(q, th, k) for k in range(B)])
        return y, np.stack([np.zeros_like(q), q]).astype(F32)
    acc, q = ([p.copy() for p in np.asarray(state, F32)] if step > 0
              else [np.zeros_like(xs[0]), np.zeros_like(xs[0])])
    ys = []
    for t, xt in enumerate(xs):
        k = (step + t) % B
        ys.append(emit(q, th, k))
        acc = acc + xt
        if k == B - 1:
            q = quantize(acc * inv_B + shift, th)
            acc = np.zeros_like(acc)
    return np.concatenate(ys).astype(F32), np.stack([acc, q]).astype(F32)


def ref_srp(x, attrs, state=None, step=0):
    def init(shape, th):
        return [_full(shape, F32(attrs["v_init"]) * th), _full(shape, 1)]

    def update(planes, xt, th, g):
        v, keep = planes
        m = v + xt
        s = m >= th
        v = np.where(s, m - th, m)
        y = np.where(s if g < attrs["tau"] else (s & (keep != 0)), th, F32(0))
        if g == attrs["tau"] - 1:
            keep = np.where(v > F32(attrs["tol"]) * th, F32(1), F32(0))
            v = _full(v.shape, F32(attrs["v_init"]) * th)
        return [v, keep], y
    return _simulate(x, attrs, state, step, init, update)


# ------------------------------------------------------------------------------------------------
# Cases

@dataclass(frozen=True)
class Case:
    key: str
    op_type: str
    planes: int
    ref: Callable
    attrs: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("if", "IFNeuron", 1, ref_if, {"v_init": 0.5}),
    Case("if", "IFNeuron", 1, ref_if, {"v_init": 0.0}),
    Case("lif", "LIFNeuron", 1, ref_lif, {"leak": 0.9, "amplitude": 0.75, "v_init": 0.25}),
    Case("gn", "GroupNeuron", 1, ref_gn, {"tau": 3, "v_init": 0.5}),
    Case("mt", "MTNeuron", 1, ref_mt,
         {"fractions": [1.0, 2 / 3, 1 / 3], "mode": "parallel", "reset": "soft", "v_init": 0.5}),
    Case("mt", "MTNeuron", 1, ref_mt,
         {"fractions": [1.0, 0.5, 0.25], "mode": "cascade", "reset": "soft", "v_init": 0.5}),
    Case("mt", "MTNeuron", 1, ref_mt,
         {"fractions": [1.0, 0.5], "mode": "parallel", "reset": "hard", "v_init": 0.3}),
    Case("mt", "MTNeuron", 1, ref_mt,
         {"fractions": [0.9, 0.6, 0.2], "mode": "cascade", "reset": "hard", "v_init": 0.0}),
    Case("bitserial", "BitSerialNeuron", 2, ref_bitserial, {"bits": 0, "v_init": 0.0}),
    Case("bitserial", "BitSerialNeuron", 2, ref_bitserial, {"bits": 0, "v_init": 0.5}),
    Case("srp", "SRPNeuron", 2, ref_srp, {"tau": 2, "v_init": 0.5, "tol": 0.001}),
]
CASE_IDS = [f"{c.key}-{i}" for i, c in enumerate(CASES)]


def neuron_model(op_type: str, attrs: dict[str, Any], *, streaming: bool = False,
                 state_out: bool = True) -> onnx.ModelProto:
    inputs = ["x", "state", "step"] if streaming else ["x"]
    outputs = ["y", "state_out"] if state_out else ["y"]
    node = helper.make_node(op_type, inputs, outputs, domain=DOMAIN, name=f"n_{op_type}", **attrs)
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    if streaming:
        graph_inputs += [helper.make_tensor_value_info("state", TensorProto.FLOAT, None),
                         helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    graph = helper.make_graph([node], "neuron", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)])


def kernel_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # expected failures are asserted on, not logged
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def full_attrs(case: Case, T: int, const_input: int, theta: list[float], **extra) -> dict[str, Any]:
    return {"T": T, "const_input": const_input, "theta": theta, **case.attrs, **extra}


def make_input(rng, T, const_input, N=2, C=3, spatial=(4, 5), scale=1.0):
    rows = N if const_input else T * N
    return (rng.normal(0.3, scale, size=(rows, C) + spatial)).astype(F32)


def official_reference(case: Case):
    """spec.reference of the registered neuron, or None while snncc.neurons is not importable."""
    try:
        from snncc.neurons import NEURONS
    except Exception:
        return None
    spec = NEURONS.get(case.key)
    if spec is None:
        return None
    assert spec.op_type == case.op_type
    return spec.reference


def check_against_references(case, attrs, x, got_y, got_state, state=None, step=0):
    want_y, want_state = case.ref(x, attrs, state=state, step=step)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_state, want_state)
    official = official_reference(case)
    if official is not None:
        off_y, off_state = official(x, dict(attrs), state=state, step=step)
        np.testing.assert_array_equal(got_y, off_y)
        np.testing.assert_array_equal(got_state, off_state)


# ------------------------------------------------------------------------------------------------
# Exactness

@pytest.mark.parametrize("T", [1, 3, 4])
@pytest.mark.parametrize("const_input", [0, 1])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_folded_matches_reference(case, T, const_input, per_channel, ties):
    """random: arbitrary float32 values (rounding order matters); ties: multiples of 1/8 with
    thresholds 1 and 1.5, so membranes hit thresholds exactly (>= versus > matters)."""
    rng = np.random.default_rng(T * 10 + const_input)
    C = 3
    if ties:
        theta = [1.0, 1.5, 1.0] if per_channel else [1.0]
        x = np.round(make_input(rng, T, const_input, C=C) * 8) / 8
    else:
        theta = [float(t) for t in rng.uniform(0.5, 2.0, size=C).astype(F32)] if per_channel else [1.25]
        x = make_input(rng, T, const_input, C=C)
    attrs = full_attrs(case, T, const_input, theta)
    y, state = kernel_session(neuron_model(case.op_type, attrs)).run(None, {"x": x})
    assert y.shape == (T * 2,) + x.shape[1:]
    assert state.shape == (case.planes, 2) + x.shape[1:]
    assert np.count_nonzero(y) > 0
    check_against_references(case, attrs, x, y, state)


@pytest.mark.parametrize("shape", [(6, 5), (3, 2, 7), (3, 4, 40, 40), (2499, 7)],
                         ids=["rank2", "rank3", "multichunk", "rank2-multichunk"])
@pytest.mark.parametrize("case", CASES[:1] + CASES[3:4] + CASES[5:6], ids=["if", "gn", "mt-cascade"])
def test_any_rank_and_chunking(case, shape):
    rng = np.random.default_rng(7)
    theta = [float(t) for t in rng.uniform(0.5, 2.0, size=shape[1]).astype(F32)]
    attrs = full_attrs(case, 3, 0, theta)
    x = rng.normal(0.3, 1.0, size=shape).astype(F32)
    y, state = kernel_session(neuron_model(case.op_type, attrs)).run(None, {"x": x})
    check_against_references(case, attrs, x, y, state)


@pytest.mark.parametrize("const_input", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_streaming_matches_reference(case, const_input):
    """Calls of T=1 or 2 slices chained through state/step; bit-serial uses bits=2."""
    rng = np.random.default_rng(3)
    theta = [float(t) for t in rng.uniform(0.5, 2.0, size=3).astype(F32)]
    extra = {"bits": 2} if case.key == "bitserial" else {}
    chunks = [1, 2, 1, 2]
    sessions = {T: kernel_session(neuron_model(case.op_type, full_attrs(case, T, const_input, theta, **extra),
                                               streaming=True)) for T in set(chunks)}
    state = np.full((case.planes, 2, 3, 4, 5), 123.0, F32)  # garbage: ignored at step 0
    step = 0
    for T in chunks:
        attrs = full_attrs(case, T, const_input, theta, **extra)
        x = make_input(rng, T, const_input)
        y, new_state = sessions[T].run(None, {"x": x, "state": state, "step": np.array(step, np.int64)})
        check_against_references(case, attrs, x, y, new_state, state=state, step=step)
        state, step = new_state, step + T


@pytest.mark.parametrize("case", [c for c in CASES if c.key != "bitserial"],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if c.key != "bitserial"])
def test_streaming_equals_folded(case):
    """Six slices in one folded call == three streaming calls of two slices."""
    rng = np.random.default_rng(11)
    theta = [0.75, 1.5, 1.0]
    x = make_input(rng, 6, 0)
    y_folded, s_folded = kernel_session(neuron_model(case.op_type, full_attrs(case, 6, 0, theta))).run(
        None, {"x": x})
    sess = kernel_session(neuron_model(case.op_type, full_attrs(case, 2, 0, theta), streaming=True))
    state = np.zeros((case.planes, 2, 3, 4, 5), F32)
    ys = []
    for k in range(3):
        y, state = sess.run(None, {"x": x[4 * k:4 * k + 4], "state": state, "step": np.array(2 * k, np.int64)})
        ys.append(y)
    np.testing.assert_array_equal(np.concatenate(ys), y_folded)
    np.testing.assert_array_equal(state, s_folded)


def test_bitserial_folded_mean_is_qann_value():
    """Mean over the B slices = q * unit (spec), checked on a per-layer theta with const input."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.2, 1.2, size=(4, 3, 2, 2)).astype(F32)
    attrs = {"T": 4, "const_input": 1, "theta": [1.0], "bits": 0, "v_init": 0.0}
    y, state = kernel_session(neuron_model("BitSerialNeuron", attrs)).run(None, {"x": x})
    unit = F32(1.0) / F32(15)
    q = state[1]
    np.testing.assert_array_equal(y.reshape(4, *x.shape).mean(axis=0, dtype=np.float64), q * np.float64(unit))


@pytest.mark.parametrize("T", [1, 3, 4])
@pytest.mark.parametrize("const_input", [0, 1])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
def test_bitserial_decoded_writes_the_window_mean(T, const_input, per_channel):
    """decoded=1 (the window-collapsed schedule): y = q * unit, one row per sample, the same q
    as the slices of decoded=0, and events = popcount(q) = the nonzero slice elements."""
    from snncc.neurons import NEURONS

    rng = np.random.default_rng(T + 7 * const_input)
    theta = [float(t) for t in rng.uniform(0.5, 2.0, size=3).astype(F32)] if per_channel else [1.25]
    x = make_input(rng, T, const_input, C=3)
    attrs = {"T": T, "const_input": const_input, "theta": theta, "bits": 0, "v_init": 0.5}
    slices, s_slices = kernel_session(neuron_model("BitSerialNeuron", attrs)).run(None, {"x": x})
    dec_attrs = {**attrs, "decoded": 1}
    y, state = kernel_session(neuron_model("BitSerialNeuron", dec_attrs)).run(None, {"x": x})
    assert y.shape == (2,) + x.shape[1:]
    np.testing.assert_array_equal(state, s_slices)
    unit = (np.asarray(theta, F32) / F32(2 ** T - 1)).reshape(-1, 1, 1)
    np.testing.assert_array_equal(y, state[1] * unit)
    np.testing.assert_allclose(y, slices.reshape((T, 2) + x.shape[1:]).mean(axis=0), rtol=1e-6)
    off_y, off_state = NEURONS["bitserial"].reference(x, dict(dec_attrs))
    np.testing.assert_array_equal(y, off_y)
    np.testing.assert_array_equal(state, off_state)
    events = NEURONS["bitserial"].events(y, dec_attrs)
    np.testing.assert_array_equal(events, (slices != 0).reshape((T, 2) + x.shape[1:]).sum(axis=0))
    assert events.sum() > 0


@pytest.mark.parametrize("const_input", [0, 1])
def test_bitserial_decoded_dense_layer_per_channel(const_input):
    """A dense layer's [N, C] input (runs of one channel are one element long) with one theta
    per channel, over several parallel work items that start mid-row: the NumPy reference."""
    from snncc.neurons import NEURONS

    rng = np.random.default_rng(11)
    T, C = 4, 7
    theta = [float(t) for t in rng.uniform(0.5, 2.0, size=C).astype(F32)]
    n = 2400 if const_input else 4 * 2400
    x = rng.normal(0.5, 1.0, size=(n, C)).astype(F32)
    attrs = {"T": T, "const_input": const_input, "theta": theta, "bits": 0, "v_init": 0.5,
             "decoded": 1}
    y, state = kernel_session(neuron_model("BitSerialNeuron", attrs)).run(None, {"x": x})
    want_y, want_state = NEURONS["bitserial"].reference(x, dict(attrs))
    assert y.shape == (2400, C) and np.count_nonzero(y) > 0
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(state, want_state)


@pytest.mark.parametrize("block", [0, 16])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4)])
def test_bitserial_decoded_nan_gives_zero_everywhere(hw, block):
    """A NaN current decodes to 0 in the scalar tails and the vector bodies alike (FloorClip sends
    it to -1), so layouts and builds agree; finite neighbours are untouched."""
    from snncc.runtime import run_neuron

    x = np.full((2, 16, *hw), np.nan, F32)
    x[:, ::2] = 0.8
    attrs = {"T": 3, "const_input": 1, "theta": [1.0], "decoded": 1, "v_init": 0.5}
    if block:
        attrs["channel_block"] = block
    y = run_neuron("BitSerialNeuron", x, attrs)
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[:, 1::2], 0.0)
    np.testing.assert_array_equal(y[:, ::2], np.float32(np.floor(0.8 * 7 + 0.5)) * np.float32(1 / 7))


def test_bitserial_decoded_refuses_streaming():
    attrs = {"T": 2, "bits": 2, "decoded": 1}
    sess = kernel_session(neuron_model("BitSerialNeuron", attrs, streaming=True))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="decoded=1"):
        sess.run(None, {"x": np.ones((2, 3), F32), "state": np.zeros((2, 1, 3), F32),
                        "step": np.array(0, np.int64)})


def test_optional_state_output_may_be_absent():
    rng = np.random.default_rng(2)
    x = make_input(rng, 3, 0)
    attrs = full_attrs(CASES[0], 3, 0, [1.0])
    (y,) = kernel_session(neuron_model("IFNeuron", attrs, state_out=False)).run(None, {"x": x})
    np.testing.assert_array_equal(y, ref_if(x, attrs)[0])


# ------------------------------------------------------------------------------------------------
# In-place reuse and output shapes (runtime/csrc/ops.cc: MayInplace, InferShape)

def _behind_an_add(op_type: str, attrs: dict[str, Any], shape: list, *, streaming: bool = False):
    """x -> Add(x, 0) -> neuron -> Add(., 0) -> y: the neuron reads an intermediate with one
    reader and a known shape and writes one that is not a graph output, so ORT lets its output
    reuse its input's buffer (it never does for a graph output)."""
    inputs = ["pre", "state", "step"] if streaming else ["pre"]
    nodes = [helper.make_node("Add", ["x", "zero"], ["pre"]),
             helper.make_node(op_type, inputs, ["spikes", "state_out"], domain=DOMAIN, **attrs),
             helper.make_node("Add", ["spikes", "zero"], ["y"])]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if streaming:
        graph_inputs += [helper.make_tensor_value_info("state", TensorProto.FLOAT, None),
                         helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    graph = helper.make_graph(nodes, "inplace", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in ("y", "state_out")],
                              initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)])


@pytest.mark.parametrize("streaming", [False, True], ids=["folded", "streaming"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_output_written_over_its_input_equals_reference(case, streaming):
    """Every kernel reads an element before it writes the same element of y, so y may take x's
    buffer: the outputs stay exact, at a size of several chunks."""
    rng = np.random.default_rng(11)
    T, C = 3, 5
    theta = [float(t) for t in rng.uniform(0.5, 2.0, size=C).astype(F32)]
    extra = {"bits": 3} if case.key == "bitserial" else {}
    attrs = full_attrs(case, T, 0, theta, **extra)
    x = make_input(rng, T, 0, N=4, C=C, spatial=(20, 30))
    model = _behind_an_add(case.op_type, attrs, ["rows", C, 20, 30], streaming=streaming)
    sess = kernel_session(model)
    assert sess.get_outputs()[0].shape == ["rows", C, 20, 30]  # the precondition of the reuse
    feeds = {"x": x}
    if streaming:
        feeds.update(state=np.zeros((case.planes,) + (4,) + x.shape[1:], F32), step=np.array(0))
    y, state = sess.run(None, feeds)
    check_against_references(case, attrs, x, y, state, state=feeds.get("state"))


@pytest.mark.parametrize("attrs, shape, want", [
    ({"T": 4}, ["n", 3, 5], ["n", 3, 5]),
    ({"T": 4, "const_input": 1}, ["n", 3, 5], ["4*n", 3, 5]),
    ({"T": 4, "const_input": 1}, [2, 3, 5], [8, 3, 5]),
    ({"T": 4}, [None, 3, 5], []),          # an unnamed dimension: the output's shape is unknown
    ({"T": 4}, None, []),
], ids=["same", "repeat-symbolic", "repeat-static", "unnamed", "unknown-rank"])
def test_output_shape_follows_the_input(attrs, shape, want):
    model = neuron_model("IFNeuron", {**attrs, "theta": [1.0]})
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, shape))
    assert kernel_session(model).get_outputs()[0].shape == want


def test_decoded_output_shape_undoes_the_repeat():
    nodes = [helper.make_node("IFNeuron", ["x"], ["h"], domain=DOMAIN, T=4, const_input=1, theta=[1.0]),
             helper.make_node("BitSerialNeuron", ["h"], ["y"], domain=DOMAIN, T=4, decoded=1, theta=[1.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    sess = kernel_session(model)
    assert sess.get_outputs()[0].shape == ["n", 3]
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(F32)
    assert sess.run(None, {"x": x})[0].shape == (2, 3)


DEFAULTS = {  # the registry's AttrSpec defaults (docs/neuron-ops.md), which the kernels must share
    "IFNeuron": (ref_if, {"theta": [1.0], "v_init": 0.5}),
    "LIFNeuron": (ref_lif, {"theta": [1.0], "leak": 1.0, "amplitude": 1.0, "v_init": 0.0}),
    "GroupNeuron": (ref_gn, {"theta": [1.0], "tau": 4, "v_init": 0.5}),
    "MTNeuron": (ref_mt, {"theta": [1.0], "fractions": [1.0], "mode": "parallel", "reset": "soft",
                          "v_init": 0.5}),
    "BitSerialNeuron": (ref_bitserial, {"theta": [1.0], "v_init": 0.5, "bits": 0, "decoded": 0}),
    "SRPNeuron": (ref_srp, {"theta": [1.0], "tau": 4, "v_init": 0.5, "tol": 0.001}),
}


@pytest.mark.parametrize("op_type", sorted(DEFAULTS))
def test_attribute_defaults(op_type):
    """Only T given: the kernel uses the defaults (and they are the registry's, when importable)."""
    ref, defaults = DEFAULTS[op_type]
    x = make_input(np.random.default_rng(8), 4, 0)
    y, state = kernel_session(neuron_model(op_type, {"T": 4})).run(None, {"x": x})
    want_y, want_state = ref(x, {"T": 4, "const_input": 0, **defaults})
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(state, want_state)
    try:
        from snncc.neurons import NEURONS
    except Exception:
        return
    spec = next((s for s in NEURONS.values() if s.op_type == op_type), None)
    if spec is not None:
        registry = {a.name: list(a.default) if isinstance(a.default, tuple) else a.default for a in spec.attributes}
        assert registry == defaults


# ------------------------------------------------------------------------------------------------
# Errors: an ORT exception with a message naming the op and the problem, never a crash

BAD_SHAPES = [
    ("rank 1 x", {"x": np.zeros(6, F32)}, "rank >= 2"),
    ("T does not divide dim 0", {"x": np.zeros((5, 3), F32)}, "not a multiple of T"),
    ("theta length", {"x": np.zeros((4, 2), F32)}, "'theta' has 3 values"),
    ("state shape", {"x": np.zeros((4, 3), F32), "state": np.zeros((1, 3, 3), F32),
                     "step": np.array(1, np.int64)}, "input state must have shape [1, 2, 3]"),
    ("step not scalar", {"x": np.zeros((4, 3), F32), "state": np.zeros((1, 2, 3), F32),
                         "step": np.array([1, 2], np.int64)}, "step must be an int64 scalar"),
    ("negative step", {"x": np.zeros((4, 3), F32), "state": np.zeros((1, 2, 3), F32),
                       "step": np.array(-1, np.int64)}, "step must be >= 0"),
]


@pytest.mark.parametrize("what, feeds, message", BAD_SHAPES, ids=[b[0] for b in BAD_SHAPES])
def test_bad_shapes_give_invalid_argument(what, feeds, message):
    model = neuron_model("IFNeuron", {"T": 2, "theta": [1.0, 1.0, 1.0]}, streaming="state" in feeds)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        kernel_session(model).run(None, feeds)
    assert "snncc.ops::IFNeuron node 'n_IFNeuron'" in str(info.value)
    assert message in str(info.value)


def test_bitserial_folded_needs_bits_equal_T():
    model = neuron_model("BitSerialNeuron", {"T": 3, "bits": 2})
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="bits == T"):
        kernel_session(model).run(None, {"x": np.zeros((3, 2), F32)})


BAD_ATTRS = [
    ("IFNeuron", {"T": 0}, "'T' must be an integer >= 1"),
    ("IFNeuron", {"T": 2.5}, "'T' must be an int"),
    ("IFNeuron", {"const_input": 2}, "'const_input' must be 0 or 1"),
    ("IFNeuron", {"theta": [1.0, -1.0]}, "'theta' must be > 0"),
    ("IFNeuron", {"theta": [1, 2]}, "'theta' must be a list of floats"),
    ("IFNeuron", {"v_init": float("nan")}, "'v_init' must be finite"),
    ("LIFNeuron", {"leak": "0.9"}, "'leak' must be a float"),
    ("GroupNeuron", {"tau": 0}, "'tau' must be an integer in [1, 2^23]"),
    ("MTNeuron", {"fractions": [1.5, 1.0]}, "'fractions' must be in (0, 1]"),
    ("LIFNeuron", {"leak": 1.5}, "'leak' must be in (0, 1]"),
    ("LIFNeuron", {"amplitude": 0.0}, "'amplitude' must be > 0"),
    ("SRPNeuron", {"tol": -0.5}, "'tol' must be >= 0"),
    ("MTNeuron", {"fractions": [0.5, 1.0]}, "strictly descending"),
    ("MTNeuron", {"fractions": [1.0], "mode": "serial"}, "'mode' must be 'parallel' or 'cascade'"),
    ("MTNeuron", {"fractions": [1.0], "reset": "zero"}, "'reset' must be 'soft' or 'hard'"),
    ("BitSerialNeuron", {"bits": 17}, "'bits' must be in [0, 16]"),
    ("BitSerialNeuron", {"decoded": 2}, "'decoded' must be 0 or 1"),
    ("BitSerialNeuron", {"T": 17}, "'T' must be <= 16"),
    ("SRPNeuron", {"tau": -1}, "'tau' must be an integer >= 0"),
]


@pytest.mark.parametrize("op_type, attrs, message", BAD_ATTRS, ids=[f"{b[0]}-{b[2][:20]}" for b in BAD_ATTRS])
def test_bad_attributes_fail_session_creation(op_type, attrs, message):
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.RuntimeException) as info:
        kernel_session(neuron_model(op_type, attrs))
    assert f"snncc.ops::{op_type} node 'n_{op_type}'" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("inputs, outputs, message", [
    (["x", "", "step"], ["y"], "input 1 has an empty name"),
    (["x", "state", ""], ["y"], "input 2 has an empty name"),
    (["x", "state"], ["y"], "inputs must be (x) or (x, state, step)"),
    (["x"], ["y", ""], "output 1 has an empty name"),
])
def test_bad_arity_fails_session_creation(inputs, outputs, message):
    node = helper.make_node("IFNeuron", inputs, outputs, domain=DOMAIN, T=1)
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64 if n == "step" else TensorProto.FLOAT, None)
                    for n in inputs if n]
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.RuntimeException, match=re.escape(message)):
        kernel_session(model)


# ------------------------------------------------------------------------------------------------
# Library, loader, threads

def test_op_table_matches_loader_list():
    source = (ROOT / "runtime" / "csrc" / "ops.cc").read_text()
    table = re.search(r"#define SNNCC_NEURON_OPS\(X\)(.*?)\n\n", source, re.S).group(1)
    assert re.findall(r"X\((\w+)\)", table) == op_names()


@pytest.mark.parametrize("op_type", op_names())
def test_library_provides_each_op(op_type):
    model = neuron_model(op_type, {"T": 1})
    y, state = kernel_session(model).run(None, {"x": np.ones((2, 3), F32)})
    assert y.shape == (2, 3)
    plain = ort.SessionOptions()
    plain.log_severity_level = 4
    with pytest.raises(Exception, match="not a registered function/op"):
        ort.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"])


def test_missing_library_raises_E701(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.so"))
    with pytest.raises(RuntimeLibraryError) as info:
        session_options()
    assert info.value.code == "SNN-E701"


def test_unloadable_library_raises_E702(monkeypatch, tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not an ELF file")
    monkeypatch.setenv(ENV_VAR, str(bogus))
    with pytest.raises(RuntimeLibraryError) as info:
        session_options()
    assert info.value.code == "SNN-E702"


def test_concurrent_runs_are_identical():
    """Four threads run one session (streaming, own state each); results equal the serial runs."""
    attrs = {"T": 4, "const_input": 0, "theta": [0.5 + c / 16 for c in range(8)]}
    sess = kernel_session(neuron_model("IFNeuron", attrs, streaming=True))
    rng = np.random.default_rng(9)
    xs = [rng.normal(0.3, 1.0, size=(8, 8, 16, 16)).astype(F32) for _ in range(4)]

    def chain(x):
        state, outs = np.zeros((1, 2, 8, 16, 16), F32), []
        for step in range(0, 12, 4):
            y, state = sess.run(None, {"x": x, "state": state, "step": np.array(step, np.int64)})
            outs.append(y)
        return np.concatenate(outs), state

    serial = [chain(x) for x in xs]
    results: dict[int, list] = {i: [] for i in range(4)}

    def worker(i):
        for _ in range(5):
            results[i].append(chain(xs[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert len(results[i]) == 5
        for y, state in results[i]:
            np.testing.assert_array_equal(y, serial[i][0])
            np.testing.assert_array_equal(state, serial[i][1])


# ------------------------------------------------------------------------------------------------
# C++ example

def tiny_classifier() -> onnx.ModelProto:
    """Conv -> IFNeuron(T=4, const_input=1) -> Flatten -> Gemm -> ReduceMean over the 4 slices."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array((np.round(rng.normal(0, 0.5, (4, 1, 3, 3)) * 64) / 64).astype(F32), "W"),
             onnx.numpy_helper.from_array((np.round(rng.normal(0, 0.5, (256, 10)) * 64) / 64).astype(F32), "G"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("IFNeuron", ["c"], ["s"], domain=DOMAIN, T=4, const_input=1, theta=[1.0]),
             helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "G"], ["l"]),
             helper.make_node("ReduceMean", ["l", "axis0"], ["logits"], keepdims=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None, reason="needs cmake and g++")
def test_cpp_example_builds_and_runs(tmp_path):
    model = tiny_classifier()
    model_path, input_path = tmp_path / "tiny.onnx", tmp_path / "input.f32"
    onnx.save(model, model_path)
    x = np.random.default_rng(4).normal(0, 1, size=(1, 1, 8, 8)).astype(F32)
    x.tofile(input_path)
    env = dict(os.environ, BUILD_DIR=str(tmp_path / "build"))
    proc = subprocess.run([str(ROOT / "examples" / "cpp" / "build_and_run.sh"), str(model_path), str(input_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no snncc.schedule metadata" in proc.stderr   # not from snncc compile: said, then run
    logits = np.array(re.search(r"logits:(.*)", proc.stdout).group(1).split(), F32)
    cls = int(re.search(r"class: (\d+)", proc.stdout).group(1))
    (want,) = kernel_session(model).run(None, {"x": x})
    np.testing.assert_array_equal(logits, want.ravel())
    assert cls == int(np.argmax(want))
    # a streaming model (states and a step besides the image) is refused by name, up front (it
    # failed inside a kernel with "the ort_value must contain a constructed tensor")
    onnx.helper.set_model_props(model, {"snncc.schedule": "streaming"})
    onnx.save(model, model_path)
    proc = subprocess.run([str(ROOT / "examples" / "cpp" / "build_and_run.sh"), str(model_path), str(input_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "is a streaming model" in proc.stderr, proc.stderr
    # an int64 head (ArgMax) was printed as float garbage, read past its buffer
    head = tiny_classifier()
    head.graph.node.append(helper.make_node("ArgMax", ["logits"], ["cls"], axis=1))
    del head.graph.output[:]
    head.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.INT64, [1, 1]))
    onnx.save(head, model_path)
    proc = subprocess.run([str(ROOT / "examples" / "cpp" / "build_and_run.sh"), str(model_path), str(input_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "is not float32 logits" in proc.stderr, proc.stderr
