"""The spike gate as one kernel (runtime/csrc/gate.cc, runtime/gates.py), bit for bit.

* kernel: ``SpikeGateMaxPool`` equals the schedule-timesteps pass's standard-op gate (cumulative
  MatMul, MaxPool with indices, GatherElements) under ORT, for binary and graded spike trains,
  ties, several pool geometries and T, in the plain layout and in ORT's blocked one;
* model: a compiled net with a gated max-pool stem runs in :func:`snncc.runtime.layout.session`
  with the gate fused (and, where this machine has NCHWc, moved into the blocked layout together
  with the neuron before it), and gives exactly the outputs of ORT's own session.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from snncc.runtime import DOMAIN, RUNTIME_OP_NAMES, layout, session_options
from snncc.runtime.gates import fuse_gates

pytestmark = pytest.mark.requires_runtime

F32 = np.float32


def _session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    so = session_options()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _keys(T: int, key_from: int) -> np.ndarray:
    """The window gate's product: every row [0 ... 0, 1 ... 1], ones from ``key_from``."""
    return np.broadcast_to(np.arange(T) >= key_from, (T, T)).astype(F32)


def _gate_model(T: int, pool: dict, window: bool = False, key_from: int = 0) -> onnx.ModelProto:
    """x -> the pass's standard-op gate -> y (passes/schedule_timesteps.py, ``gate``); with
    ``window`` the window gate (every slice keyed by the total from slice ``key_from``)."""
    keys = _keys(T, key_from) if window else np.tril(np.ones((T, T), F32))
    tril = helper.make_tensor("tril", TensorProto.FLOAT, [T, T], keys.ravel())
    window = helper.make_tensor("window", TensorProto.INT64, [2], [T, -1])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    nodes = [
        helper.make_node("Reshape", ["x", "window"], ["v"]),
        helper.make_node("MatMul", ["tril", "v"], ["c"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Reshape", ["c", "xs"], ["c4"]),
        helper.make_node("MaxPool", ["c4"], ["pooled", "idx"], **pool),
        helper.make_node("Reshape", ["x", "flat"], ["xf"]),
        helper.make_node("Reshape", ["idx", "flat"], ["idxf"]),
        helper.make_node("GatherElements", ["xf", "idxf"], ["g"]),
        helper.make_node("Shape", ["idx"], ["is"]),
        helper.make_node("Reshape", ["g", "is"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [tril, window, flat])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _kernel(T: int, pool: dict, block: int = 1, window: bool = False,
            key_from: int = 0) -> ort.InferenceSession:
    attrs = {"kernel_shape": pool["kernel_shape"], "strides": pool.get("strides", [1, 1]),
             "pads": pool.get("pads", [0, 0, 0, 0]), "dilations": pool.get("dilations", [1, 1]),
             "ceil_mode": pool.get("ceil_mode", 0)}
    if block > 1:
        attrs["channel_block"] = block
    if window:
        attrs["key_from"] = key_from
    op = "SpikeGateWindowMaxPool" if window else "SpikeGateMaxPool"
    node = helper.make_node(op, ["x"], ["y"], domain=DOMAIN, T=T, **attrs)
    graph = helper.make_graph([node], "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid(DOMAIN, 1)]))


def _trains(rng, T, N, C, H, W, kind):
    if kind == "binary":  # IF: theta per channel or nothing
        theta = rng.uniform(0.3, 2.0, C).astype(F32)[None, :, None, None]
        return ((rng.random((T * N, C, H, W)) < 0.4) * theta).astype(F32)
    if kind == "graded":  # MT: several spike sizes per channel
        sizes = rng.uniform(0.1, 1.5, (4, C)).astype(F32)
        pick = rng.integers(0, 5, (T * N, C, H, W))
        out = np.zeros((T * N, C, H, W), F32)
        for k in range(4):
            out = np.where(pick == k + 1, sizes[k][None, :, None, None], out)
        return out.astype(F32)
    return rng.normal(0.0, 1.0, (T * N, C, H, W)).astype(F32)  # any float values


def _blocked(a: np.ndarray, block: int) -> np.ndarray:
    r, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(r, c // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(r, c, h, w)


POOLS = {
    "3x3s2p1": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},  # torchvision stem
    "2x2s2": {"kernel_shape": [2, 2], "strides": [2, 2]},
    "3x3s1": {"kernel_shape": [3, 3]},
    "3x2-ceil-asym": {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [0, 1, 1, 0], "ceil_mode": 1},
    "dilated": {"kernel_shape": [2, 3], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 2, 1, 2]},
}


@pytest.mark.parametrize("window", [False, True], ids=["running", "window"])
@pytest.mark.parametrize("kind", ["binary", "graded", "float"])
@pytest.mark.parametrize("T", [1, 3, 4, 8])
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_kernel_equals_standard_op_gate(pool, T, kind, window):
    rng = np.random.default_rng(T * 7 + len(pool))
    N, C, H, W = 2, 16, 9, 11
    x = _trains(rng, T, N, C, H, W, kind)
    key_from = T // 3 if window else 0   # SRP-like: the first slices are not decoded
    want = _session(_gate_model(T, POOLS[pool], window, key_from)).run(None, {"x": x})[0]
    got = _kernel(T, POOLS[pool], window=window, key_from=key_from).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    for block in (8, 16):  # ORT's NCHWc order in and out
        inside = _kernel(T, POOLS[pool], block, window, key_from).run(
            None, {"x": _blocked(x, block)})[0]
        np.testing.assert_array_equal(inside, _blocked(want, block))


@pytest.mark.parametrize("T", [2, 4, 8])
def test_the_window_gate_passes_the_train_of_the_largest_total(T):
    """Its pooled train's total is the largest total of its window (the max pooling of the
    decoded values), and it is one input unit's whole train."""
    rng = np.random.default_rng(T)
    N, C, H, W = 3, 8, 6, 6
    x = _trains(rng, T, N, C, H, W, "graded")
    y = _kernel(T, POOLS["2x2s2"], window=True).run(None, {"x": x})[0]
    xs, ys = x.reshape(T, N, C, H, W), y.reshape(T, N, C, H // 2, W // 2)
    totals = xs.sum(axis=0)
    pooled = totals.reshape(N, C, H // 2, 2, W // 2, 2).max(axis=(3, 5))
    np.testing.assert_allclose(ys.sum(axis=0), pooled, rtol=1e-6)
    windows = xs.reshape(T, N, C, H // 2, 2, W // 2, 2).transpose(1, 2, 3, 5, 4, 6, 0)
    for n, c, i, j in np.ndindex(N, C, H // 2, W // 2):
        units = windows[n, c, i, j].reshape(4, T)
        assert any(np.array_equal(u, ys[:, n, c, i, j]) for u in units)


def test_kernel_refuses_bad_input():
    sess = _kernel(4, POOLS["2x2s2"])
    with pytest.raises(Exception, match="not a multiple of T=4"):
        sess.run(None, {"x": np.zeros((6, 2, 4, 4), F32)})
    with pytest.raises(Exception, match="channel_block"):
        _kernel(4, POOLS["2x2s2"], 8).run(None, {"x": np.zeros((4, 12, 4, 4), F32)})


def test_fuse_gates_replaces_the_pattern_only():
    model = _gate_model(4, POOLS["3x3s2p1"])
    fused, count = fuse_gates(model)
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["SpikeGateMaxPool"]
    assert not fused.graph.initializer  # the pattern's constants went with it
    assert len(model.graph.node) == 10  # the caller's model is not changed
    x = _trains(np.random.default_rng(0), 4, 2, 8, 12, 12, "graded")
    np.testing.assert_array_equal(_session(fused).run(None, {"x": x})[0],
                                  _session(model).run(None, {"x": x})[0])
    # a reader of the cumulative sum outside the pattern, or another ceil of the tril: left alone
    other = _gate_model(4, POOLS["3x3s2p1"])
    other.graph.output.append(helper.make_tensor_value_info("c4", TensorProto.FLOAT, None))
    assert fuse_gates(other)[1] == 0
    assert fuse_gates(_gate_model(4, POOLS["dilated"]))[1] == 0  # windows of padding only possible
    wrong = _gate_model(4, POOLS["3x3s2p1"])  # the window Reshape to [-1, T] instead of [T, -1]
    wrong.graph.initializer[1].CopyFrom(helper.make_tensor("window", TensorProto.INT64, [2], [-1, 4]))
    assert fuse_gates(wrong)[1] == 0
    twice = _gate_model(4, POOLS["3x3s2p1"])  # two unnamed gates get two names
    second = onnx.ModelProto()
    second.CopyFrom(twice)
    for n in second.graph.node:
        n.input[:] = [i + "2" if i not in ("tril", "window", "flat") else i for i in n.input]
        n.output[:] = [o + "2" for o in n.output]
    twice.graph.node.extend(second.graph.node)
    twice.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, None))
    twice.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    fused2, count = fuse_gates(twice)
    assert count == 2 and len({n.name for n in fused2.graph.node}) == 2
    np.testing.assert_array_equal(_session(fused2).run(None, {"x": x, "x2": x})[1],
                                  _session(model).run(None, {"x": x})[0])
    upper = _gate_model(4, POOLS["3x3s2p1"])
    upper.graph.initializer[0].CopyFrom(helper.make_tensor(
        "tril", TensorProto.FLOAT, [4, 4], np.triu(np.ones((4, 4), F32)).ravel()))
    assert fuse_gates(upper)[1] == 0


def test_runtime_op_table_matches_loader_list():
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "runtime" / "csrc" / "ops.cc").read_text()
    table = re.search(r"#define SNNCC_RUNTIME_OPS\(X\)(.*?)\n", source).group(1)
    assert tuple(re.findall(r"X\((\w+)\)", table)) == RUNTIME_OP_NAMES


@pytest.fixture(scope="module")
def stem_nets(tmp_path_factory):
    """A small ResNet-18 with the torchvision stem (7x7/2 conv, 3x3/2 max-pool), compiled with
    the stem pool spike-gated (--maxpool gate; by default pool-first moves it in front of the
    stem neuron, and the gate serves pools after deeper neurons)."""
    import torch

    from examples.export_models import build, export, model_kwargs
    from snncc.driver import compile_model, make_options

    tmp = tmp_path_factory.mktemp("gates")
    shape = (1, 3, 48, 48)
    torch.manual_seed(0)
    src = tmp / "r18.onnx"
    export(build("resnet18", **model_kwargs("resnet18", shape, 10), stem="torchvision"), src, shape,
           dynamic_batch=True)
    calib = tmp / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((16, 3, 48, 48), dtype=F32))
    out = {}
    for neuron in ("if", "mt"):
        path = tmp / f"r18_{neuron}.onnx"
        compile_model(str(src), path, make_options(neuron=neuron, timesteps=4, calib_method="max",
                                                   calib_path=str(calib), maxpool="gate"))
        out[neuron] = onnx.load(path)
    return out


@pytest.mark.parametrize("fetch_trains", [False, True])
@pytest.mark.parametrize("neuron", ["if", "mt"])
def test_session_with_fused_gate_equals_ort_session(stem_nets, neuron, fetch_trains):
    from snncc.simulate import with_neuron_outputs

    model = stem_nets[neuron]
    if fetch_trains:  # the stem neuron's train is also a graph output: the gate stays in NCHW
        model, _ = with_neuron_outputs(model)
    assert fuse_gates(model)[1] == 1
    x = np.random.default_rng(1).random((6, 3, 48, 48), dtype=F32)
    want = _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"input": x})
    got = layout.session(model).run(None, {"input": x})
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    if layout.block_size() > 1 and not fetch_trains:  # gate and stem neuron in the blocked layout
        rewritten, moved = layout.blocked_model(fuse_gates(model)[0])
        gates = [n for n in rewritten.graph.node if n.op_type == "SpikeGateMaxPool"]
        assert len(gates) == 1 and any(a.name == "channel_block" for a in gates[0].attribute)


@pytest.mark.parametrize("key_from", [0, 2])
def test_fuse_gates_takes_the_window_gate(key_from):
    """Its own op name: a kernel library built before it refuses the model (and
    runtime.layout.session falls back to the standard ops) instead of running the running-sum
    gate under the window gate's name (a review: a stale library did, 10 of 256 predictions)."""
    model = _gate_model(6, POOLS["2x2s2"], window=True, key_from=key_from)
    fused, count = fuse_gates(model)
    assert count == 1
    [node] = fused.graph.node
    assert node.op_type == "SpikeGateWindowMaxPool"
    assert {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT
            }["key_from"] == key_from
    x = _trains(np.random.default_rng(3), 6, 2, 8, 12, 12, "graded")
    np.testing.assert_array_equal(_session(fused).run(None, {"x": x})[0],
                                  _session(model).run(None, {"x": x})[0])
    running, _ = fuse_gates(_gate_model(6, POOLS["2x2s2"]))
    assert running.graph.node[0].op_type == "SpikeGateMaxPool"
    other = _gate_model(6, POOLS["2x2s2"], window=True, key_from=key_from)
    keys = np.array(_keys(6, key_from))
    keys[0, -1] = 0   # rows that differ: no gate of ours
    other.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(keys, "tril"))
    assert fuse_gates(other)[1] == 0


def test_the_window_kernel_refuses_a_bad_key_from_and_the_running_one_a_window_attribute():
    with pytest.raises(Exception, match="key_from"):
        _kernel(4, POOLS["2x2s2"], window=True, key_from=4).run(
            None, {"x": np.zeros((4, 2, 4, 4), F32)})
    node = helper.make_node("SpikeGateMaxPool", ["x"], ["y"], domain=DOMAIN, T=4,
                            kernel_shape=[2, 2], strides=[2, 2], window=1)  # an early form
    graph = helper.make_graph([node], "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(Exception, match="SpikeGateWindowMaxPool"):
        _session(helper.make_model(graph, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])).run(
            None, {"x": np.zeros((4, 2, 4, 4), F32)})


def test_one_slice_fuses_as_the_running_sum_gate():
    fused, count = fuse_gates(_gate_model(1, POOLS["2x2s2"]))
    assert count == 1 and fused.graph.node[0].op_type == "SpikeGateMaxPool"
