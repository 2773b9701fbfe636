"""A window-decoded bit-serial neuron and its AveragePool as one kernel (runtime/csrc/avgpool.cc,
runtime/pools.py), bit for bit.

* kernel: ``BitSerialAveragePool`` equals the NumPy reference (the neuron's decoded value, the
  window added in row-major order, divided by its size), plain and in ORT's blocked layout;
* against ORT itself: a Conv -> neuron -> AveragePool -> Conv model in
  :func:`snncc.runtime.layout.session` (pair fused, blocked) gives exactly the outputs of ORT's
  own session (its NCHWc AveragePool), for constant and T-slice inputs, one theta or one per
  channel, several pool geometries; so does a compiled bit-serial window MNIST CNN;
* the fusion takes exactly the pattern it can compute.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from snncc.runtime import DOMAIN, layout, session_options
from snncc.runtime.pools import fuse_avg_pools

pytestmark = pytest.mark.requires_runtime

F32 = np.float32
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]


def _session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    so = session_options()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _pair_model(neuron: dict, pool: dict, C: int = 16, *, extra_reader: bool = False,
                state: bool = False) -> onnx.ModelProto:
    """x -> Conv(C) -> BitSerialNeuron(decoded=1) -> AveragePool -> Conv -> z: ORT runs the
    convs, and with them the pool, in its blocked layout."""
    rng = np.random.default_rng(C)
    S = 1 if neuron["const_input"] else neuron["T"]
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [C, 3, 3, 3], rng.normal(0, 0.5, (C, 3, 3, 3)).astype(F32).ravel())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [8, C, 1, 1], rng.normal(0, 0.5, (8, C, 1, 1)).astype(F32).ravel())
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BitSerialNeuron", ["c"], ["y"], name="n", domain=DOMAIN, decoded=1,
                              **neuron),
             helper.make_node("AveragePool", ["y"], ["p"], name="p", **pool),
             helper.make_node("Conv", ["p", "w2"], ["z"])]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["y"], ["m"]))
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [S * 3, 3, 10, 12])],
                              outputs, [w1, w2])
    return helper.make_model(graph, opset_imports=OPSETS)


def _kernel(neuron: dict, pool: dict, block: int = 1) -> ort.InferenceSession:
    attrs = {**neuron, "kernel_shape": pool["kernel_shape"], "strides": pool.get("strides", [1, 1])}
    if block > 1:
        attrs["channel_block"] = block
    node = helper.make_node("BitSerialAveragePool", ["x"], ["z"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    return _session(helper.make_model(graph, opset_imports=OPSETS))


def _reference(x: np.ndarray, neuron: dict, pool: dict) -> np.ndarray:
    from snncc.neurons import NEURONS

    y, _ = NEURONS["bitserial"].reference(x, {**neuron, "decoded": 1})
    y = np.asarray(y, F32)
    (kh, kw), (sh, sw) = pool["kernel_shape"], pool.get("strides", [1, 1])
    Ho, Wo = (y.shape[2] - kh) // sh + 1, (y.shape[3] - kw) // sw + 1
    total = None
    for a in range(kh):
        for b in range(kw):
            v = y[:, :, a:a + (Ho - 1) * sh + 1:sh, b:b + (Wo - 1) * sw + 1:sw]
            total = v.copy() if total is None else (total + v).astype(F32)
    return (total / F32(kh * kw)).astype(F32)


def _blocked(a: np.ndarray, block: int) -> np.ndarray:
    r, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(r, c // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(r, c, h, w)


POOLS = {
    "2x2s2": {"kernel_shape": [2, 2], "strides": [2, 2]},  # the VGG-style nets' pool
    "3x3s1": {"kernel_shape": [3, 3]},
    "3x3s2": {"kernel_shape": [3, 3], "strides": [2, 2]},
    "2x3s12": {"kernel_shape": [2, 3], "strides": [1, 2]},
}
NEURON_CASES = [(1, 1, False), (3, 0, True), (4, 0, False), (4, 1, True)]  # T, const_input, per channel


def _neuron(rng, T, const_input, per_channel, C=16):
    theta = [float(t) for t in rng.uniform(0.3, 2.5, C).astype(F32)] if per_channel else [1.3]
    return {"T": T, "const_input": const_input, "theta": theta, "v_init": 0.5, "bits": 0}


@pytest.mark.parametrize("T, const_input, per_channel", NEURON_CASES)
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_kernel_equals_reference(pool, T, const_input, per_channel):
    rng = np.random.default_rng(T * 5 + const_input + len(pool))
    N, C, H, W = 3, 48, 9, 11  # three channel blocks of 16, six of 8: per-block constants
    neuron = _neuron(rng, T, const_input, per_channel, C)
    x = rng.normal(0.6, 1.0, ((1 if const_input else T) * N, C, H, W)).astype(F32)
    want = _reference(x, neuron, POOLS[pool])
    assert np.count_nonzero(want) > 0
    np.testing.assert_array_equal(_kernel(neuron, POOLS[pool]).run(None, {"x": x})[0], want)
    for block in (8, 16):  # ORT's NCHWc order in and out
        inside = _kernel(neuron, POOLS[pool], block).run(None, {"x": _blocked(x, block)})[0]
        np.testing.assert_array_equal(inside, _blocked(want, block))


@pytest.mark.skipif(layout.block_size() <= 1, reason="ORT uses no blocked layout on this machine")
@pytest.mark.parametrize("T, const_input, per_channel", NEURON_CASES)
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_fused_session_equals_orts_own(pool, T, const_input, per_channel):
    rng = np.random.default_rng(T * 3 + const_input + len(pool))
    neuron = _neuron(rng, T, const_input, per_channel)
    model = _pair_model(neuron, POOLS[pool])
    blocked, moved = layout.blocked_model(model)
    assert moved == 1 and fuse_avg_pools(blocked)[1] == 1
    x = rng.normal(0.3, 1.0, ((1 if const_input else T) * 3, 3, 10, 12)).astype(F32)
    got = layout.session(model).run(None, {"x": x})[0]
    want = layout.session(model, blocked=False).run(None, {"x": x})[0]
    assert np.count_nonzero(want) > 0
    np.testing.assert_array_equal(got, want)


def test_kernel_refuses_bad_input():
    neuron = {"T": 4, "const_input": 0, "theta": [1.0, 2.0]}
    with pytest.raises(Exception, match="not a multiple of T=4"):
        _kernel(neuron, POOLS["2x2s2"]).run(None, {"x": np.zeros((6, 2, 4, 4), F32)})
    with pytest.raises(Exception, match="theta has 2 values for C=3"):
        _kernel(neuron, POOLS["2x2s2"]).run(None, {"x": np.zeros((4, 3, 4, 4), F32)})
    with pytest.raises(Exception, match="does not fit"):
        _kernel(neuron, POOLS["3x3s1"]).run(None, {"x": np.zeros((4, 2, 2, 4), F32)})
    for bad, match in (({"T": 17}, "must be <= 16"), ({"T": 4, "bits": 3}, "'bits' must be 0 or T"),
                       ({"T": 4, "const_input": 2}, "'const_input' must be 0 or 1")):
        with pytest.raises(Exception, match=match):
            _kernel({**neuron, **bad}, POOLS["2x2s2"])


@pytest.mark.skipif(layout.block_size() <= 1, reason="ORT uses no blocked layout on this machine")
def test_fusion_takes_the_pattern_only():
    neuron = {"T": 4, "const_input": 1, "theta": [0.7], "v_init": 0.5, "bits": 0}
    blocked, _ = layout.blocked_model(_pair_model(neuron, POOLS["2x2s2"]))
    fused, count = fuse_avg_pools(blocked)
    assert count == 1 and "BitSerialAveragePool" in [n.op_type for n in fused.graph.node]
    assert "BitSerialAveragePool" not in [n.op_type for n in blocked.graph.node]  # unchanged
    assert fuse_avg_pools(_pair_model(neuron, POOLS["2x2s2"]))[1] == 0  # plain layout: ORT's
    # NCHW pool adds column sums, a different order
    left = [
        _pair_model(neuron, {**POOLS["2x2s2"], "pads": [1, 1, 1, 1]}),
        _pair_model(neuron, {**POOLS["2x2s2"], "ceil_mode": 1}),
        _pair_model(neuron, POOLS["2x2s2"], extra_reader=True),  # the spike output read elsewhere
    ]
    shown = _pair_model(neuron, POOLS["2x2s2"])  # the neuron output fetched (spike counts)
    shown.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    for m in left + [shown]:
        assert fuse_avg_pools(layout.blocked_model(m)[0])[1] == 0


@pytest.mark.skipif(layout.block_size() <= 1, reason="ORT uses no blocked layout on this machine")
def test_compiled_window_model_in_the_blocked_session(compiled_bitserial_window):
    """The bundled MNIST CNN, bit-serial window schedule: both neuron + pool pairs fuse, and
    the session (fused, blocked) gives exactly the outputs of ORT's own session."""
    model, x = compiled_bitserial_window
    assert fuse_avg_pools(layout.blocked_model(model)[0])[1] == 2
    got = layout.session(model).run(None, {model.graph.input[0].name: x})
    want = layout.session(model, blocked=False).run(None, {model.graph.input[0].name: x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def compiled_bitserial_window(tmp_path_factory):
    from snncc.driver import compile_model, make_options

    examples = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"
    out = tmp_path_factory.mktemp("pools") / "cnn.onnx"
    compile_model(str(examples / "mnist_cnn.onnx"), out,
                  make_options(target="ort", timesteps=4, neuron="bitserial",
                               calib_path=str(examples / "mnist_calib.npz"), fidelity_samples=0))
    x = np.load(examples / "mnist_test.npz")["x"][:40].astype(F32)
    return onnx.load(str(out)), x


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("T, const_input", [(1, 1), (4, 0), (16, 0)])
def test_blocked_kernel_equals_plain_bit_for_bit_at_level_edges(T, const_input, block):
    """Currents on the quantizer's level edges (the slice sums' order decides the level), NaN,
    +-inf, +-0 and a zero level from -0.0 (v_init = 0): the blocked pool kernel gives the plain
    kernel's bits (uint32), over several work items."""
    rng = np.random.default_rng(29 + T + block)
    N, C, H, W = 4, 32, 13, 17
    L = (1 << T) - 1
    theta = rng.uniform(0.3, 2.5, C).astype(F32)
    neuron = {"T": T, "const_input": const_input, "theta": [float(t) for t in theta],
              "v_init": 0.0 if const_input else 0.5, "bits": 0}
    shape = ((1 if const_input else T) * N, C, H, W)
    x = (rng.integers(-2, L + 3, shape) * theta.reshape(1, -1, 1, 1) / F32(L)).astype(F32)
    x = (x + rng.normal(0, 1e-6, shape)).astype(F32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, 96, replace=False)
    flat[picks[:8]], flat[picks[8:16]], flat[picks[16:24]] = np.nan, np.inf, -np.inf
    flat[picks[24:60]], flat[picks[60:]] = -0.0, -1e-45
    for pool in POOLS.values():
        plain = _kernel(neuron, pool).run(None, {"x": x})[0]
        inside = _kernel(neuron, pool, block).run(None, {"x": _blocked(x, block)})[0]
        np.testing.assert_array_equal(inside.view(np.uint32),
                                      _blocked(plain, block).view(np.uint32))
