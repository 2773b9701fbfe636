"""schedule-timesteps: folded and streaming layouts, MaxPool treatments, analog islands, errors."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from helpers import op_types, run_ort, run_passes
from snn import (build, chain, compile_snn, deep_net, feeds, island_net, maxpool_net, options,
                 single_layer, streaming)

from snncc.context import CompileContext
from snncc.errors import SnnccError
from snncc.ir import SNN_DOMAIN
from snncc.neurons import get_neuron
from snncc.passes.schedule_timesteps import ScheduleTimestepsPass
from snncc.simulate import node_attrs

DECODE = ["Shape", "Slice", "Concat", "Reshape", "ReduceMean"]
HEAD = ["float[4,2,3,3] w1", "float[4] b1", "float[4,4,3,3] w2", "float[4] b2"]
TAIL = "g = GlobalAveragePool(a2)\n h = Flatten(g)\n out = Gemm <transB = 1> (h, wf, bf)\n"


def two_layers(middle: str, *, decls=(), tail: str = TAIL, outputs: str = "float[N,3] out",
               **kw) -> onnx.ModelProto:
    """conv+QCFS (a1), ``middle`` producing c2 from a1, QCFS (a2), then ``tail``."""
    body = ("c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)\n" + chain(1, "c1", "a1") + middle
            + chain(2, "c2", "a2") + tail)
    return build(body, HEAD + ["float[3,4] wf", "float[3] bf"] + list(decls), 2,
                 outputs=outputs, **kw)


def neurons(proto):
    return [n for n in proto.graph.node if n.domain == SNN_DOMAIN]


def codes_of(model, opts):
    with pytest.raises(SnnccError) as err:
        compile_snn(model, opts)
    return err.value.codes


def test_folded_single_layer_layout():
    out, report, ctx = compile_snn(single_layer(lam=2.0, levels=4), options("if", 4))
    assert op_types(out) == ["Conv", "IFNeuron"] + DECODE
    attrs = node_attrs(neurons(out)[0])
    assert (attrs["T"], attrs["const_input"]) == (4, 1)  # the analog current is computed once
    assert [o.name for o in out.graph.output] == ["a1"]
    assert report.rows[-1].counts["const_input"] == 1
    assert ctx.notes["latency_steps"] == 4
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["snncc.schedule"] == "folded"
    assert meta["snncc.requires_runtime_library"] == "false"  # the model-local functions run it


def test_static_input_of_a_temporal_op_is_tiled_once():
    """A skip connection from the analog input into a spiking layer: Tile over time, exact."""
    model = two_layers("c2a = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n"
                       " sk = Conv <pads = [1, 1, 1, 1]> (x, ws, bs)\n c2 = Add(c2a, sk)\n",
                       decls=["float[4,2,3,3] ws", "float[4] bs"], lam=1.5, levels=3)
    out, report, _ = compile_snn(model, options("bitserial", 2, schedule="folded"))
    assert op_types(out).count("Tile") == 1 and report.rows[-1].counts["tiles"] == 1
    x = feeds(model)
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])
    # the window schedule (bit-serial's default) runs the skip once: nothing to repeat
    out, report, _ = compile_snn(model, options("bitserial", 2))
    assert "Tile" not in op_types(out) and report.rows[-1].counts["collapsed"] == 2
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])


def test_trailing_softmax_runs_after_the_decode():
    model = two_layers("c2 = Conv <pads = [1, 1, 1, 1]> (a1, w2, b2)\n",
                       tail=TAIL.replace("out = Gemm", "logits = Gemm")
                       + " out = Softmax(logits)\n",
                       lam=1.5, levels=3)
    out, _, ctx = compile_snn(model, options("bitserial", 2, schedule="folded"))
    assert op_types(out)[-2:] == ["ReduceMean", "Softmax"]
    assert ctx.notes["analog_islands"] == []
    x = feeds(model)
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])


def test_analog_island_needs_the_flag():
    assert codes_of(island_net(lam=2.0, levels=4), options("if", 4)) == {"SNN-E244"}


def test_analog_island_is_decoded_and_listed():
    model = island_net(lam=2.0, levels=4)
    out, report, ctx = compile_snn(model, options("if", 4, allow_analog=True))
    [island] = ctx.notes["analog_islands"]
    assert "Sigmoid" in island
    sig = next(n for n in out.graph.node if n.op_type == "Sigmoid")
    producer = next(n for n in out.graph.node if sig.input[0] in n.output)
    assert producer.op_type == "ReduceMean"  # the island sees the decoded mean
    # the neuron after the island gets a constant current
    assert [node_attrs(n)["const_input"] for n in neurons(out)] == [1, 1]
    onnx.checker.check_model(out, full_check=True)
    assert run_ort(out, feeds(model))[0].shape == (3, 3)
    assert codes_of(model, streaming(options("if", 4, allow_analog=True))) == {"SNN-E322"}


@pytest.mark.parametrize("middle, code", [
    ("r = Reshape(a1, shape)\n c2 = Reshape(r, back)\n", "SNN-E243"),
    ("t = Transpose <perm = [1, 0, 2, 3]> (a1)\n c2 = Transpose <perm = [1, 0, 2, 3]> (t)\n",
     "SNN-E242"),
    ("r = ReduceSum <keepdims = 1> (a1, ax)\n c2 = Add(a1, r)\n", "SNN-E242"),
    # a pad of axis 0 adds time rows (it had compiled)
    ("p = Pad(a1, pads)\n c2 = Slice(p, one, end, ax)\n", "SNN-E242"),
])
def test_batch_axis_ops_are_rejected(middle, code):
    model = two_layers(middle, decls=["int64[2] shape = {3, -1}", "int64[4] back = {-1, 4, 4, 4}",
                                      "int64[1] ax = {0}", "int64[1] one = {1}",
                                      "int64[8] pads = {1, 0, 0, 0, 0, 0, 0, 0}",
                                      "int64[1] end = {4}"], lam=2.0, levels=4,
                       inputs="float[3,2,4,4] x")
    assert codes_of(model, options("if", 4)) == {code}


@pytest.mark.parametrize("field, value, code", [
    ("schedule", "sideways", "SNN-E320"), ("maxpool", "min", "SNN-E321"),
    ("timesteps", 0, "SNN-E323")])
def test_bad_options(field, value, code):
    opts = replace(options("if", 4), **{field: value})
    with pytest.raises(SnnccError) as err:
        run_passes(single_layer(lam=2.0, levels=4), [ScheduleTimestepsPass()],
                   ctx=CompileContext(opts))
    assert err.value.codes == {code}


def test_neurons_with_different_slice_counts_are_rejected():
    h = onnx.helper
    nodes = [h.make_node("SRPNeuron", [i], [o], name=o, domain=SNN_DOMAIN, T=4, const_input=0,
                         theta=[1.0], tau=tau) for i, o, tau in (("x", "y1", 1), ("y1", "y", 2))]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, ["N", 2])],
                         [h.make_tensor_value_info("y", 1, ["N", 2])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17),
                                               h.make_opsetid(SNN_DOMAIN, 1)])
    assert codes_of(model, options("srp", 4)) == {"SNN-E245"}


@pytest.mark.parametrize("key, T, levels, latency", [
    ("if", 4, 4, 4), ("gn", 1, 4, 1), ("srp", 4, 4, 8),
    ("bitserial", 2, 3, 8),  # 3 neurons deep, pipelined: (3 + 1) * 2
])
def test_latency_note(key, T, levels, latency):
    _, _, ctx = compile_snn(deep_net(lam=1.5 if key == "bitserial" else 2.0, levels=levels),
                            options(key, T))
    assert ctx.notes["latency_steps"] == latency
    assert ctx.notes["schedule"]["total_slices"] == get_neuron(key).total_steps(T, {"tau": 4})


@pytest.mark.parametrize("key, T, levels", [("if", 4, 4), ("bitserial", 2, 3), ("srp", 2, 2)])
def test_streaming_layout(key, T, levels):
    out, report, ctx = compile_snn(deep_net(lam=1.5 if key == "bitserial" else 1.0,
                                            levels=levels), streaming(options(key, T)))
    spec = get_neuron(key)
    slices = ctx.notes["schedule"]["total_slices"]
    names = [n.name for n in neurons(out)]
    inputs = {i.name: i for i in out.graph.input}
    outputs = [o.name for o in out.graph.output]
    assert set(inputs) == {"x", "step"} | {f"state_in/{n}" for n in names}
    assert outputs == ["out"] + [f"state_out/{n}" for n in names]
    assert inputs["step"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    state = inputs[f"state_in/{names[0]}"].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in state] == [spec.state_planes, "N", 4, 4, 4]
    for node in neurons(out):
        attrs = node_attrs(node)
        assert (attrs["T"], attrs["const_input"], len(node.input), len(node.output)) == (1, 0, 3, 2)
        if "bits" in attrs:
            assert attrs["bits"] == slices
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["snncc.schedule"] == "streaming"
    assert meta["snncc.requires_runtime_library"] == "true"  # an app with only the .onnx can tell
    assert (int(meta["snncc.steps"]), int(meta["snncc.decode_from"])) == (
        ctx.notes["schedule"]["steps"], ctx.notes["schedule"]["decode_from"])
    assert "ReduceMean" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize("key, T, levels, lam, phi", [
    ("mt", 1, 4, 2.0, 0.5), ("gn", 1, 4, 2.0, 0.5),
    ("bitserial", 2, 3, 1.5, 0.5), ("bitserial", 4, 15, 7.5, 0.0),
])
def test_maxpool_swap_is_exact(key, T, levels, lam, phi):
    model = maxpool_net(lam=lam, levels=levels, phi=phi)
    out, report, ctx = compile_snn(model, options(key, T))
    assert ctx.notes["maxpool"] == {"p": "swapped"}
    assert report.rows[-1].counts["maxpool_swapped"] == 1
    ops = op_types(out)
    assert ops.index("MaxPool") < ops.index(get_neuron(key).op_type, ops.index("MaxPool"))
    x = feeds(model)
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(model, x)[0])


def test_maxpool_swap_keeps_other_consumers():
    model = maxpool_net(lam=2.0, levels=4)
    model.graph.node.append(onnx.helper.make_node("GlobalAveragePool", ["a2"], ["side"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("side", 1, None))
    out, _, _ = compile_snn(model, options("mt", 1))
    assert len(neurons(out)) == 4  # the pooled copy plus the original for the side output
    x = feeds(model)
    for got, want in zip(run_ort(out, x), run_ort(model, x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("key, T, mode", [("if", 4, "auto"), ("srp", 2, "auto"), ("mt", 1, "gate")])
def test_maxpool_spike_gating(key, T, mode):
    model = maxpool_net(lam=2.0, levels=4 if key != "srp" else 2)
    out, report, ctx = compile_snn(model, options(key, T, maxpool=mode))
    assert ctx.notes["maxpool"] == {"p": "gated over the window" if mode == "auto" else "gated"}
    assert report.rows[-1].counts["maxpool_gated"] == 1
    assert {"MatMul", "GatherElements"} <= set(op_types(out))   # MatMul: the running sum
    x = feeds(model)
    got = run_ort(out, x)[0]
    assert got.shape == (3, 3) and np.all(np.isfinite(got))
    if T == 1:  # one slice: the gate passes the window maximum, i.e. MaxPool exactly
        np.testing.assert_array_equal(got, run_ort(model, x)[0])


@pytest.mark.parametrize("key, T", [("if", 4), ("mt", 4), ("srp", 2), ("lif", 8)])
def test_the_window_gate_pools_the_window_means(key, T):
    """Folded, --maxpool auto: per pooling window the unit with the largest spike total over
    the decoded slices passes its whole train, so the pooled train's decoded total is the max
    pooling of the input totals (the running-sum gate's is not: it passes the leader of each
    slice; and SRP's gate had ranked the units by all slices, its pre-run too)."""
    import onnxruntime as ort

    from snncc import ir

    model = maxpool_net(lam=2.0, levels=4)
    x = feeds(model, batch=5, scale=2.0)
    gated = {}
    for mode in ("auto", "gate"):
        out, _, ctx = compile_snn(model, options(key, T, maxpool=mode))
        slices = ctx.notes["schedule"]["total_slices"]
        first = ctx.notes["schedule"]["decode_from"]   # SRP: its pre-run is not decoded
        assert (first > 0) == (key == "srp")
        sess = ort.InferenceSession(ir.with_outputs(out, ["a2", "p"]).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        a2, p = sess.run(["a2", "p"], x)
        n = a2.shape[0] // slices
        totals = a2.reshape((slices, n) + a2.shape[1:])[first:].sum(axis=0)
        pooled = p.reshape((slices, n) + p.shape[1:])[first:].sum(axis=0)
        c, h, w = totals.shape[1:]
        gated[mode] = (pooled, totals.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)))
    np.testing.assert_allclose(*gated["auto"], rtol=1e-6, atol=1e-6)
    assert np.any(gated["gate"][0] != gated["gate"][1])


def test_maxpool_gating_streams_with_a_state():
    out, _, ctx = compile_snn(maxpool_net(lam=2.0, levels=4), streaming(options("if", 4)))
    assert "state_in/p" in {i.name for i in out.graph.input}
    assert ctx.notes["maxpool"] == {"p": "gated"}


@pytest.mark.requires_runtime
@pytest.mark.parametrize("key, T", [("if", 4), ("mt", 2), ("if", 40)])
def test_maxpool_gating_folded_equals_streaming(key, T):
    """The folded gate's running sum (a lower-triangular MatMul over the slices; CumSum above
    MATMUL_CUMSUM_MAX) and the streaming gate's running-sum state give the same gated spikes:
    equal outputs and events."""
    from snncc.passes.schedule_timesteps import MATMUL_CUMSUM_MAX
    from snncc.simulate import run_compiled

    model = maxpool_net(lam=2.0, levels=4 if T < 8 else T)
    folded, _, _ = compile_snn(model, options(key, T, maxpool="gate"))
    assert ("CumSum" in op_types(folded)) == (T > MATMUL_CUMSUM_MAX)
    stream, _, _ = compile_snn(model, streaming(options(key, T, maxpool="gate")))
    x = feeds(model, batch=6, scale=2.0)
    a = run_compiled(folded, x, use_library=True, optimize=False)
    b = run_compiled(stream, x, use_library=True, optimize=False)
    [k] = a.outputs
    np.testing.assert_array_equal(b.outputs[k], a.outputs[k])
    assert a.events_per_layer == b.events_per_layer and sum(a.events_per_layer.values()) > 0


def test_maxpool_avg_replaces():
    model = maxpool_net(lam=2.0, levels=4)
    out, report, ctx = compile_snn(model, options("if", 4, maxpool="avg"))
    assert "MaxPool" not in op_types(out)
    pool = next(n for n in out.graph.node if n.op_type == "AveragePool")
    assert node_attrs(pool) == {"kernel_shape": [2, 2], "strides": [2, 2], "count_include_pad": 0}
    assert ctx.notes["maxpool"] == {"p": "avg"} and report.rows[-1].counts["maxpool_avg"] == 1
    assert run_ort(out, feeds(model))[0].shape == (3, 3)


@pytest.mark.parametrize("op, attrs, consts, batched, mixes", [
    ("Resize", {}, [None, [2.0, 1, 2, 2]], (0,), True),        # scales axis 0
    ("Resize", {}, [None, [1.0, 1, 2, 2]], (0,), False),
    ("Resize", {}, [None, None, [3, 4, 8, 8]], (0,), True),     # literal sizes fix the batch
    ("Upsample", {}, [[1.0, 1, 2, 2]], (0,), False),
    ("Pad", {}, [[0, 0, 1, 1, 0, 0, 1, 1]], (0,), False),
    ("Pad", {}, [[1, 0, 0, 0, 0, 0, 0, 0]], (0,), True),
    ("Expand", {}, [[1, 4, 4]], (0,), False),                    # broadcast from the right
    ("Expand", {}, [[2, 1, 4, 4, 4]], (0,), True),               # a new leading axis
    ("Gather", {"axis": 1}, [[0, 1]], (0,), False),
    ("Gather", {"axis": 0}, [[0, 1]], (0,), True),
    ("Tile", {}, [[1, 2, 1, 1]], (0,), False),
    ("CumSum", {}, [1], (0,), False),
    ("ArgMax", {"axis": 1}, [], (0,), False),
    ("ArgMax", {}, [], (0,), True),                              # axis 0 by default
    ("MatMul", {}, [], (0, 1), True),                            # batched rows as weights
])
def test_touches_batch_reads_each_ops_axis_rule(op, attrs, consts, batched, mixes):
    import onnx_graphsurgeon as gs

    from snncc.passes.batch_axis import touches_batch

    inputs = [gs.Variable("x", dtype=np.float32, shape=["N", 4, 4, 4])]
    for i, value in enumerate(consts):
        inputs.append(gs.Variable("") if value is None else
                      gs.Constant(f"c{i}", np.array(value, dtype=np.float32 if isinstance(
                          value, list) and isinstance(value[0], float) else np.int64)))
    if op == "MatMul":
        inputs.append(gs.Variable("w", dtype=np.float32, shape=["N", 4]))
    node = gs.Node(op, inputs=inputs, outputs=[gs.Variable("y")], attrs=attrs)
    assert touches_batch(node, 4, batched) is mixes
