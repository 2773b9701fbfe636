"""Neurons inside ONNX Runtime's blocked (NCHWc) layout (runtime/layout.py), bit for bit.

* kernel level: every neuron op with ``channel_block = B`` on a blocked tensor equals the plain
  kernel's output in the same blocked order (B = 8 and 16, whatever this machine uses);
* model level: a compiled bundled net in :func:`snncc.runtime.layout.session` gives exactly the
  outputs of ORT's own session at the same optimisation level, with and without fetched spike
  trains, and the reorders around its neurons are gone where this machine has NCHWc.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from snncc.neurons import NEURONS
from snncc.runtime import DOMAIN, run_neuron, session_options
from snncc.runtime import layout

pytestmark = pytest.mark.requires_runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
C, H, W, N, T = 32, 3, 5, 2, 4


def blocked(a: np.ndarray, block: int) -> np.ndarray:
    """[R, C, H, W] in plain order -> the same values in NCHWc memory order, shape unchanged."""
    r, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(r, c // block, block, h, w).transpose(0, 1, 3, 4, 2)
                                ).reshape(r, c, h, w)


def _attrs(key: str, const_input: int, **extra) -> dict:
    spec = NEURONS[key]
    attrs = {a.name: a.default for a in spec.all_attributes}
    rng = np.random.default_rng(7)
    attrs.update(T=T, const_input=const_input,
                 theta=[float(v) for v in rng.uniform(0.3, 2.0, C).astype(np.float32)])
    attrs.update(extra)
    if key == "mt":
        attrs["fractions"] = [1.0, 0.5, 0.25]
    if key == "lif":
        attrs["leak"] = 0.75
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


CASES = [(key, ci, {}) for key in sorted(NEURONS) for ci in (0, 1)] + [
    ("bitserial", 0, {"decoded": 1}), ("bitserial", 1, {"decoded": 1}),
    # one theta for every channel (per-layer calibration)
    ("if", 0, {"theta": [0.7]}), ("bitserial", 1, {"decoded": 1, "theta": [0.7]})]


def _case_id(key: str, const_input: int, extra: dict) -> str:
    return (f"{key}-c{const_input}{'-decoded' if extra.get('decoded') else ''}"
            f"{'-layer' if 'theta' in extra else ''}")


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("key, const_input, extra", CASES, ids=[_case_id(*c) for c in CASES])
def test_kernel_in_blocked_layout_equals_plain(key, const_input, extra, block):
    rng = np.random.default_rng(3)
    rows = N if const_input else T * N
    x = rng.normal(0.4, 1.0, (rows, C, H, W)).astype(np.float32)
    attrs = _attrs(key, const_input, **extra)
    op = NEURONS[key].op_type
    plain = run_neuron(op, x, attrs)
    inside = run_neuron(op, blocked(x, block), {**attrs, "channel_block": block})
    np.testing.assert_array_equal(inside, blocked(plain, block))
    assert np.count_nonzero(plain) > 0


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = session_options()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_channel_block_errors():
    x = np.zeros((T * N, 12, H, W), np.float32)   # 12 channels are not a multiple of 8
    with pytest.raises(Exception, match="channel_block"):
        run_neuron("IFNeuron", x, {"T": T, "theta": [1.0] * 12, "channel_block": 8})
    with pytest.raises(Exception, match="channel_block"):
        run_neuron("IFNeuron", x, {"T": T, "theta": [1.0], "channel_block": -1})


def test_block_size_is_what_ort_uses_here():
    b = layout.block_size()
    assert b in (1, 4, 8, 16)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from snncc.driver import compile_model, make_options

    out = {}
    tmp = tmp_path_factory.mktemp("layout")
    for net in ("mnist_cnn", "mnist_resnet"):
        for neuron, schedule in (("if", "folded"), ("mt", "folded"), ("bitserial", "window"),
                                 ("if", "streaming")):
            path = tmp / f"{net}_{neuron}_{schedule}.onnx"
            compile_model(str(EXAMPLES / f"{net}.onnx"), path, make_options(
                neuron=neuron, timesteps=T, schedule=schedule, calib_method="max",
                calib_path=str(EXAMPLES / "mnist_calib.npz"), calib_max_samples=64))
            out[net, neuron if schedule != "streaming" else "if-streaming"] = onnx.load(path)
    return out


@pytest.mark.parametrize("net", ["mnist_cnn", "mnist_resnet"])
@pytest.mark.parametrize("neuron", ["if", "mt", "bitserial"])
@pytest.mark.parametrize("fetch_trains", [False, True])
def test_blocked_session_equals_ort_session(compiled, net, neuron, fetch_trains):
    from snncc.simulate import with_neuron_outputs

    model = compiled[net, neuron]
    if fetch_trains:
        model, _ = with_neuron_outputs(model)
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:48].astype(np.float32)
    plain = _session(model).run(None, {"input": x})
    rewritten, moved = layout.blocked_model(model)
    inside = layout.session(model).run(None, {"input": x})
    assert len(plain) == len(inside)
    for a, b in zip(plain, inside):
        np.testing.assert_array_equal(b, a)
    if layout.block_size() > 1 and not (fetch_trains and net == "mnist_cnn"):
        assert moved > 0
        kinds = [n.op_type for n in rewritten.graph.node]
        moved_nodes = [n for n in rewritten.graph.node if n.domain == DOMAIN
                       and any(a.name == "channel_block" for a in n.attribute)]
        assert len(moved_nodes) == moved
        # every moved neuron reads a blocked conv/add output and no ReorderInput follows it
        producers = {o: n for n in rewritten.graph.node for o in n.output}
        for n in moved_nodes:
            assert producers[n.input[0]].op_type != "ReorderOutput"
        assert kinds.count("ReorderInput") < [n.op_type for n in layout._optimized(
            model, session_options()).graph.node].count("ReorderInput")


def test_plain_session_when_asked(compiled):
    model = compiled["mnist_cnn", "if"]
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:8].astype(np.float32)
    a = layout.session(model, blocked=False).run(None, {"input": x})[0]
    b = layout.session(model).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)


def test_model_without_neurons_is_left_alone():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]))
    assert layout.blocked_model(model) == (model, 0)


@pytest.mark.parametrize("net", ["mnist_cnn", "mnist_resnet"])
def test_streaming_run_equals_plain_layout(compiled, net, monkeypatch):
    """The step protocol with blocked state tensors: outputs and spike counts of run_compiled
    (which uses the blocked session) equal those of the plain layout."""
    from snncc.simulate import run_compiled

    model = compiled[net, "if-streaming"]
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:24].astype(np.float32)
    _, moved = layout.blocked_model(model)
    if layout.block_size() > 1:
        assert moved > 0
    inside = run_compiled(model, x, batch_size=10)
    monkeypatch.setattr(layout, "blocked_model", lambda m: (m, 0))
    plain = run_compiled(model, x, batch_size=10)
    for k in plain.outputs:
        np.testing.assert_array_equal(inside.outputs[k], plain.outputs[k])
    assert inside.spikes_per_layer == plain.spikes_per_layer
    assert inside.events_per_layer == plain.events_per_layer


def test_session_leaves_the_callers_options_alone(compiled, tmp_path):
    """The caller's SessionOptions keep their level (a second session from them is blocked
    again), and a path works like a ModelProto."""
    model = compiled["mnist_resnet", "mt"]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    so = session_options()
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:8].astype(np.float32)
    first = layout.session(path, so).run(None, {"input": x})[0]
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.optimized_model_filepath == ""
    second = layout.session(model, so).run(None, {"input": x})[0]
    np.testing.assert_array_equal(first, second)


def test_threads_may_share_the_callers_options(compiled):
    """Eight threads building sessions from one SessionOptions: about 1 in 30 had failed with a
    wrong SNN-E703, others had read another thread's temporary model, and the options were left
    at ORT_DISABLE_ALL. Every session now equals a one-thread one and the options stay."""
    from concurrent.futures import ThreadPoolExecutor

    from snncc.runtime import register

    so = session_options()
    severity = so.log_severity_level
    assert register(so) is so   # a second register is a no-op (ORT had failed at the session)
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:4].astype(np.float32)
    keys = [k for k in compiled if k[1] != "if-streaming"]
    want = {k: layout.session(compiled[k]).run(None, {"input": x})[0] for k in keys}

    def build(i):
        k = keys[i % len(keys)]
        return k, layout.session(compiled[k], so).run(None, {"input": x})[0]

    with ThreadPoolExecutor(8) as pool:
        for k, got in pool.map(build, range(24)):
            np.testing.assert_array_equal(got, want[k])
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.optimized_model_filepath == "" and so.log_severity_level == severity


def test_orts_own_options_reach_the_rewrite(compiled):
    """With ORT's NCHWc transformer disabled by the caller there is nothing to move."""
    model = compiled["mnist_resnet", "if"]
    off = {"disabled_optimizers": ["NchwcTransformer"]}
    assert layout.blocked_model(model, **off)[1] == 0
    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:8].astype(np.float32)
    so = session_options()
    so.log_severity_level = 3
    ort_own = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"], **off)
    np.testing.assert_array_equal(layout.session(model, **off).run(None, {"input": x})[0],
                                  ort_own.run(None, {"input": x})[0])


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    """A tiny trained-shape-agnostic residual net with identity shortcuts (16-channel maps),
    compiled folded (IF, MT) and streaming (IF): its block sums are Adds of a conv branch and
    the previous block's neuron output, which ORT leaves in NCHW."""
    import torch

    from snncc.driver import compile_model, make_options

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)

    torch.manual_seed(0)
    stems = {"plain": [], "maxpool": [torch.nn.MaxPool2d(3, 2, 1)]}  # maxpool: a spike gate
    d = tmp_path_factory.mktemp("residual")
    np.save(d / "c.npy", np.random.default_rng(0).random((32, 3, 12, 12), dtype=np.float32))
    out = {}
    for stem, pool in stems.items():
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), *pool,
                                  Block(), Block(), torch.nn.Conv2d(16, 8, 1)).eval()
        src = d / f"{stem}.onnx"
        torch.onnx.export(net, torch.zeros(1, 3, 12, 12), str(src), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
        for neuron, schedule in (("if", "folded"), ("mt", "folded"), ("if", "streaming")):
            path = d / f"{stem}_{neuron}_{schedule}.onnx"
            compile_model(str(src), path, make_options(  # gate: pool-first would move it
                target="ort", timesteps=4, neuron=neuron, schedule=schedule,
                calib_path=str(d / "c.npy"), fidelity_samples=0,
                maxpool="gate" if pool else "auto"))
            out[stem, neuron, schedule] = onnx.load(str(path))
    return out


@pytest.mark.skipif(layout.block_size() <= 1, reason="ORT uses no blocked layout on this machine")
@pytest.mark.parametrize("stem", ["plain", "maxpool"])
@pytest.mark.parametrize("neuron, schedule", [("if", "folded"), ("mt", "folded"), ("if", "streaming")])
def test_residual_adds_move_with_their_neurons(residual, stem, neuron, schedule):
    """Each block's Add and the neuron after it run in the blocked layout: no reorder is left
    inside the net, and the outputs (streaming: every step) equal ORT's own session. With a
    max-pool stem (folded) the first Add reads the spike gate kernel's output, whose shape ORT
    knows from the kernel's shape inference."""
    from snncc.simulate import StreamStepper

    from snncc.runtime.gates import fuse_gates

    model = residual[stem, neuron, schedule]
    opt, moved = layout.blocked_model(fuse_gates(model)[0])
    kinds = [n.op_type for n in opt.graph.node]
    if stem == "plain" or schedule == "folded":
        assert moved == (5 if stem == "plain" else 6) and kinds.count("Add") == 2
        assert kinds.count("ReorderInput") == 0 and kinds.count("ReorderOutput") <= 1  # output
    else:  # the streaming gate (standard ops) stays in NCHW, and with it the first block
        assert moved >= 2
    x = np.random.default_rng(1).random((3, 3, 12, 12), dtype=np.float32)
    inside, plain = layout.session(model), layout.session(model, blocked=False)
    if schedule == "folded":
        for a, b in zip(inside.run(None, {"x": x}), plain.run(None, {"x": x})):
            np.testing.assert_array_equal(a, b)
        return
    steppers = [StreamStepper(s, model, {"x": x}, [o.name for o in s.get_outputs()])
                for s in (inside, plain)]
    for g in range(4):
        a, b = (s.step(g) for s in steppers)
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"step {g}, {k}")


def test_snncc_run_takes_a_model_the_runtime_rewrote(compiled, residual, tmp_path, capsys):
    """A model saved from blocked_model, fuse_gates or fuse_avg_pools (what the README tells a
    C++ app to load) runs in `snncc run` as it is: the outputs of the compiled model it came
    from, without spike counts (said). It had ended in an internal error (AttributeError on the
    fused kernels) or SNN-E302 (channel_block). --no-library is SNN-E703; an unknown op of our
    domain SNN-E241."""
    from snncc.cli import main
    from snncc.errors import ModelInputError, RuntimeLibraryError
    from snncc.runtime.gates import fuse_gates
    from snncc.runtime.pools import fuse_avg_pools
    from snncc.simulate import run_compiled, runtime_rewritten

    x = np.load(EXAMPLES / "mnist_test.npz")["x"][:16].astype(np.float32)
    cases = [(compiled["mnist_cnn", "bitserial"],
              lambda m: fuse_avg_pools(layout.blocked_model(m)[0])[0], x),
             (compiled["mnist_cnn", "mt"], lambda m: layout.blocked_model(m)[0], x),
             (residual["maxpool", "if", "folded"], lambda m: fuse_gates(m)[0],
              np.random.default_rng(1).random((5, 3, 12, 12), dtype=np.float32))]
    for model, rewrite, xs in cases:
        new = rewrite(model)
        assert not runtime_rewritten(model)
        if not runtime_rewritten(new):   # no blocked layout on this machine: nothing to rewrite
            assert layout.block_size() <= 1
            continue
        want = run_compiled(model, xs).outputs
        got = run_compiled(new, xs)
        assert got.spikes_per_layer is None and "without spike counts" in got.warnings[-1]
        for k in want:
            np.testing.assert_array_equal(got.outputs[k], want[k])
        with pytest.raises(RuntimeLibraryError) as exc:
            run_compiled(new, xs, use_library=False)
        assert exc.value.code == "SNN-E703"
    onnx.save(new, tmp_path / "r.onnx")
    np.save(tmp_path / "x.npy", xs)
    assert main(["run", str(tmp_path / "r.onnx"), "--input", str(tmp_path / "x.npy")]) == 0
    assert "rewritten by snncc.runtime" in capsys.readouterr().err
    for n in new.graph.node:
        if n.domain == DOMAIN:
            n.op_type = "FooNeuron"
    with pytest.raises(ModelInputError) as exc:
        run_compiled(new, xs)
    assert exc.value.code == "SNN-E241" and "FooNeuron" in exc.value.message


def _neuron_call(op: str, attrs: dict, feeds: dict, outputs=("y", "state_out")) -> list:
    """One call of a single neuron node whose inputs are ``feeds`` (x, and state / step when
    given; step an int64 scalar): its ``outputs``."""
    from onnx import TensorProto, helper
    node = helper.make_node(op, list(feeds), list(outputs), domain="snncc.ops", **attrs)
    inputs = [helper.make_tensor_value_info(k, TensorProto.INT64, []) if k == "step" else
              helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in feeds]
    graph = helper.make_graph([node], op, inputs, [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("snncc.ops", 1)])
    return _session(model).run(None, dict(feeds))


def _stateful(op: str, attrs: dict, x: np.ndarray, state: np.ndarray, step: int):
    """One call of a neuron op with a carried state: (y, state_out)."""
    return _neuron_call(op, attrs, {"x": x, "state": state, "step": np.array(step, np.int64)})


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("key", sorted(NEURONS))
def test_carried_state_in_blocked_layout_equals_plain(key, block):
    """Two calls chained through the state (the streaming form): the blocked kernel's outputs
    and states equal the plain kernel's, permuted (the registers' paths for 16- and 8-channel
    blocks read and write the state too)."""
    rng = np.random.default_rng(5)
    attrs = _attrs(key, 0)
    op = NEURONS[key].op_type
    planes = None
    for call in range(2):
        x = rng.normal(0.4, 1.0, (T * N, C, H, W)).astype(np.float32)
        if planes is None:   # step 0: the kernel starts from its initial state
            planes = np.zeros((NEURONS[key].state_planes, N, C, H, W), np.float32)
            plain_state, blocked_state = planes, planes
        y, plain_next = _stateful(op, attrs, x, plain_state, call * T)
        yb, blocked_next = _stateful(op, {**attrs, "channel_block": block}, blocked(x, block),
                                     blocked_state, call * T)
        np.testing.assert_array_equal(yb, blocked(y, block))
        np.testing.assert_array_equal(
            blocked_next.reshape(-1, C, H, W),
            blocked(plain_next.reshape(-1, C, H, W), block))
        plain_state, blocked_state = plain_next, blocked_next
    assert np.count_nonzero(y) > 0


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("key", ["if", "mt"])
def test_register_paths_equal_plain_bit_for_bit_on_edge_values(key, block):
    """NaN, infinities, signed zeros and currents exactly at a threshold: the blocked kernel's
    register loop gives the plain kernel's output bits (+0 where nothing fires; a NaN current
    never fires). (The membrane, not compared here, can keep the other NaN's payload where a NaN
    state meets a NaN current: which operand's NaN an add returns is the compiler's choice.)"""
    rng = np.random.default_rng(11)
    attrs = _attrs(key, 0)
    theta = np.asarray(attrs["theta"], np.float32)
    x = rng.normal(0.4, 1.0, (T * N, C, H, W)).astype(np.float32)
    x[0, :, 0, 0] = theta - np.float32(0.5) * theta   # with v_init = theta/2: exactly at theta
    x[1, :, 1, 1] = np.nan
    x[2, :, 2, 2] = np.inf
    x[3, :, 0, 3] = -np.inf
    x[4, :, 1, 4] = -0.0
    x[5, :, 2, 0] = 0.0
    op = NEURONS[key].op_type
    plain = run_neuron(op, x, attrs)
    inside = run_neuron(op, blocked(x, block), {**attrs, "channel_block": block})
    np.testing.assert_array_equal(inside.view(np.uint32), blocked(plain, block).view(np.uint32))


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("key, extra", [("if", {}), ("mt", {}), ("mt", {"theta": [0.7]}),
                                        ("mt", {"fractions": [1.0]}),
                                        ("mt", {"fractions": [1.0, 0.8, 0.6, 0.45, 0.3, 0.2,
                                                              0.1, 0.05]})],
                         ids=["if", "mt", "mt-layer", "mt-1", "mt-8"])
def test_register_paths_across_chunks(key, extra, block):
    """A slice of several kChunk (1024-element) work items whose boundaries fall inside a
    channel block's run (7x9 maps: 8 * 63 does not divide 1024), threads on: blocked = plain; MT
    with one theta for every channel, one threshold and eight (the fused form's largest)."""
    n, c, h, w = 3, 32, 7, 9
    rng = np.random.default_rng(13)
    x = rng.normal(0.4, 1.0, (T * n, c, h, w)).astype(np.float32)
    attrs = _attrs(key, 0)
    attrs["theta"] = [float(v) for v in rng.uniform(0.3, 2.0, c)]
    attrs.update(extra)
    op = NEURONS[key].op_type
    plain = run_neuron(op, x, attrs)
    inside = run_neuron(op, blocked(x, block), {**attrs, "channel_block": block})
    np.testing.assert_array_equal(inside, blocked(plain, block))
    assert np.count_nonzero(plain) > 0


def _decoded_with_state(attrs: dict, x: np.ndarray) -> list:
    """BitSerialNeuron(decoded=1) with its state_out (acc, q) requested: (y, state_out)."""
    return _neuron_call("BitSerialNeuron", attrs, {"x": x})


def _edgy(rng, shape, theta, levels):
    """Currents near the quantizer's level edges (the slice sums' order matters there), with
    NaN, +-inf, +-0 and small negative currents."""
    x = (rng.integers(-2, levels + 3, shape) * theta.reshape(1, -1, 1, 1) / levels
         ).astype(np.float32)
    x = x + rng.normal(0, 1e-6, shape).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, 64, replace=False)
    flat[picks[:8]] = np.nan
    flat[picks[8:16]] = np.inf
    flat[picks[16:24]] = -np.inf
    flat[picks[24:40]] = -0.0
    flat[picks[40:64]] = -1e-7
    return x


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("T, const_input", [(1, 0), (4, 0), (16, 0), (4, 1)])
def test_decoded_bitserial_register_paths_across_chunks_bit_for_bit(T, const_input, block):
    """The decoded bit-serial neuron (the window schedule's) across several of its 16 * 1024-
    element work items, boundaries inside a block's run (27x39 maps), T up to 16, currents at
    level edges and edge values: y and the (acc, q) state, blocked = plain as uint32 (a zero
    level is +0 on every path of the kernel)."""
    n, c, h, w = 3, 32, 27, 39
    rng = np.random.default_rng(17 + T)
    theta = rng.uniform(0.3, 2.0, c).astype(np.float32)
    attrs = {"T": T, "const_input": const_input, "theta": [float(v) for v in theta],
             "v_init": 0.5, "bits": 0, "decoded": 1}
    levels = (1 << T) - 1
    x = _edgy(rng, ((1 if const_input else T) * n, c, h, w), theta, levels)
    y, state = _decoded_with_state(attrs, x)
    yb, state_b = _decoded_with_state({**attrs, "channel_block": block}, blocked(x, block))
    np.testing.assert_array_equal(yb.view(np.uint32), blocked(y, block).view(np.uint32))
    np.testing.assert_array_equal(state_b.reshape(-1, c, h, w).view(np.uint32),
                                  blocked(state.reshape(-1, c, h, w), block).view(np.uint32))
    assert np.count_nonzero(y) > 0 and not np.signbit(y[y == 0]).any()


@pytest.mark.parametrize("block", [1, 8, 16])
def test_a_zero_level_is_plus_zero_on_every_kernel_path(block):
    """q = floor of a value in (-1, -0]: v_init = 0 and a current of -1e-45 scaled by
    inv_unit = 1/3 underflow to -0.0, whose truncation keeps its sign. Every path of the kernel
    (plain, 8- and 16-channel blocks; vector bodies and scalar tails) gives +0 (the scalar
    FloorClip had given -0.0 where the vector bodies' max gave +0)."""
    x = np.full((2, 16, 3, 5), -1e-45, np.float32)
    x[1] = -0.0
    attrs = {"T": 1, "const_input": 1, "theta": [3.0], "v_init": 0.0, "bits": 0, "decoded": 1}
    if block > 1:
        attrs["channel_block"] = block
    y = run_neuron("BitSerialNeuron", x, attrs)
    assert (y == 0).all() and not np.signbit(y).any()
