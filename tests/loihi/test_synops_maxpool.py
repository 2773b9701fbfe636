"""SynOps through MaxPools (the count-only lowering, :func:`snncc.analysis.synops.count_netlist`).

A MaxPool has no synapses: over a neuron's spikes it passes some of them on (a ``pool`` group,
its events measured at the pool's output), over analog currents (pool-first) or a neuron's
current (the swap the schedule makes for bit-serial and T = 1) the neuron after it runs on the
pooled map. Checked by what theory makes exact: a 1x1 pool passes every spike (same SynOps as
no pool), at T = 1 spike gating equals max pooling (gate and auto count the same SynOps and
MACs), and the streaming schedule counts what the folded one does. An output head (Softmax,
LogSoftmax, ArgMax) acts after every synapse: counted as without it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402
from snncc import ir  # noqa: E402
from snncc.analysis.synops import count_netlist, count_synops, ort_events, pool_taps  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pooled_net(deep_pool: int | None) -> onnx.ModelProto:
    """conv-ReLU-MaxPool 2x2 (a stem pool), conv-ReLU[-MaxPool k x k], conv-ReLU, GAP, Gemm."""
    b = zoo._Builder(5)
    h = b.op("MaxPool", [b.op("Relu", [b.conv("x", 3, 4)])], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Relu", [b.conv(h, 4, 6)])
    if deep_pool:
        h = b.op("MaxPool", [h], kernel_shape=[deep_pool] * 2, strides=[deep_pool] * 2)
    h = b.op("Relu", [b.conv(h, 6, 8)])
    return b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 8, 5),
                   input_shape=("N", 3, 16, 16))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).normal(
        size=(96, 3, 16, 16)).astype(np.float32))
    for name, k in (("none", None), ("one", 1), ("two", 2)):
        onnx.save(pooled_net(k), tmp / f"{name}.onnx")
    return tmp


def measured(nets, name: str, out: str, **kw) -> dict:
    # max calibration: the same thresholds whether a pool is gated, moved or swapped
    opts = make_options(target="ort", calib_path=str(nets / "calib.npz"), calib_method="max",
                        **kw)
    res = compile_model(str(nets / f"{name}.onnx"), nets / out, opts, force=True)
    sec = res.report["synops"]
    assert sec["available"], sec.get("reason")
    return sec


@pytest.mark.parametrize("neuron", ["if", "mt", "srp", "lif"])
def test_a_one_by_one_pool_passes_every_spike(nets, neuron):
    none = measured(nets, "none", "n.onnx", timesteps=4, neuron=neuron)
    one = measured(nets, "one", "o.onnx", timesteps=4, neuron=neuron)
    for key in ("synops_per_inference", "macs_per_inference", "spikes_per_inference"):
        assert one["measured"][key] == none["measured"][key], key
    pool = next(r for r in one["groups"].values() if r["kind"] == "pool")
    assert pool["neurons"] == 0 and pool["synapses_in"] == 0


def test_at_one_step_gating_counts_what_max_pooling_does(nets):
    """T = 1: auto moves the stem pool (pool-first) and swaps the deep one with its neuron;
    gate spike-gates both. Same SynOps and MACs; the gated net's full-size neurons spike more."""
    auto = measured(nets, "two", "a.onnx", timesteps=1, neuron="if")
    gate = measured(nets, "two", "g.onnx", timesteps=1, neuron="if", maxpool="gate")
    kinds = {r["kind"] for r in auto["groups"].values()}
    assert "analog" in kinds and "pool" not in kinds
    assert {r["kind"] for r in gate["groups"].values()} >= {"pool"}
    for key in ("synops_per_inference", "macs_per_inference"):
        assert auto["measured"][key] == pytest.approx(gate["measured"][key], rel=1e-12), key
    assert auto["measured"]["spikes_per_inference"] < gate["measured"]["spikes_per_inference"]
    assert auto["ann_macs"] == gate["ann_macs"]


@pytest.mark.requires_runtime
@pytest.mark.parametrize("neuron,maxpool,net", [("if", "auto", "one"), ("mt", "gate", "two")])
def test_streaming_counts_what_folded_counts(nets, neuron, maxpool, net):
    """Where both schedules gate alike: the running-sum gate (--maxpool gate), or auto's
    pool-first stem and a 1x1 pool (which the window gate and the running sum pass whole)."""
    folded = measured(nets, net, "f.onnx", timesteps=4, neuron=neuron, maxpool=maxpool)
    stream = measured(nets, net, "s.onnx", timesteps=4, neuron=neuron, maxpool=maxpool,
                      schedule="streaming")
    assert stream["measured"]["source"].startswith("ONNX Runtime (streaming")
    for key in ("synops_per_inference", "spikes_per_inference"):
        assert stream["measured"][key] == pytest.approx(folded["measured"][key]), key


@pytest.mark.requires_runtime
def test_pipelined_bit_serial_streaming_counts_one_window(tmp_path):
    """A streaming bit-serial model runs one window per layer to fill its pipeline (20 steps at
    T = 4 on the digits CNN); its section counts the last window, which equals the window
    schedule's count (it had counted all 20 steps: 4.2 x the SynOps)."""
    calib = str(EXAMPLES / "digits_cnn_calib.npz")
    secs = {}
    for sched in ("auto", "streaming"):
        opts = make_options(target="ort", timesteps=4, neuron="bitserial", calib_path=calib,
                            schedule=sched)
        res = compile_model(str(EXAMPLES / "digits_cnn.onnx"), tmp_path / f"{sched}.onnx", opts)
        secs[sched] = res.report["synops"]["measured"]
    for key in ("synops_per_inference", "spikes_per_inference"):
        assert secs["streaming"][key] == pytest.approx(secs["auto"][key]), key


def test_the_fidelity_run_measures_the_pools_too(nets):
    """The compile's fidelity run fetches each pool's output, so the section needs no run of
    its own. A pool's row has the spikes it passes on, apart from its neuron's."""
    sec = measured(nets, "two", "t.onnx", timesteps=4, neuron="if", maxpool="gate",
                   fidelity_samples=None)   # automatic, as the CLI: 32 of the 96 held out
    assert sec["measured"]["source"] == "ONNX Runtime (kernels, fidelity run)"
    assert sec["measured"]["samples"] == 32
    again = measured(nets, "two", "t.onnx", timesteps=4, neuron="if", maxpool="gate",
                     fidelity_samples=0)
    assert again["measured"]["source"] == "ONNX Runtime (folded)"   # a run of its own
    pools = [name for name, r in sec["groups"].items() if r["kind"] == "pool"]
    assert len(pools) == 2
    for name in pools:
        row = sec["groups"][name]
        assert row["synapses_out"] > 0 and "events" not in row
        assert 0 < row["pooled_events"] <= sec["groups"][row["pool_of"]]["events"]


def test_count_synops_takes_the_pool_taps(nets, tmp_path):
    """The API path (as snncc report takes it): count_netlist, ort_events with its pool taps,
    count_synops; the pooled events stay out of the spike total."""
    opts = make_options(target="ort", timesteps=4, neuron="if", maxpool="gate",
                        calib_path=str(nets / "calib.npz"), calib_method="max")
    compile_model(str(nets / "two.onnx"), tmp_path / "s.onnx", opts,
                  dump_after=["insert-neurons"], dump_dir=tmp_path / "dump")
    snn = onnx.load(str(tmp_path / "s.onnx"))
    net = count_netlist(onnx.load(str(tmp_path / "dump" / "after-insert-neurons.onnx")), 4,
                        "gate", snn)
    taps = pool_taps(net)
    assert len(taps) == 2
    x = {"x": np.load(nets / "calib.npz")["x"][:8]}
    events = ort_events(snn, x, taps)
    rep = count_synops(net, events)
    pooled = {g: rep["layers"][g]["pooled_events"] for g in taps}
    for g, (_, neuron, _, _) in taps.items():
        assert 0 < pooled[g] <= rep["layers"][neuron]["events"]
        assert rep["layers"][g]["pool_of"] == neuron
    spikes = sum(r.get("events", 0.0) for r in rep["layers"].values())
    assert spikes == pytest.approx(sum(int(events[n].sum()) for n in events if n not in taps)
                                   / 8)
    # without the taps the pools' events are missing: a coded error, not a crash
    from snncc.errors import BackendCapabilityError
    with pytest.raises(BackendCapabilityError, match="events are missing"):
        count_synops(net, ort_events(snn, x))


def inception_pool_net() -> onnx.ModelProto:
    """Two neurons joined by a Concat, then a MaxPool over the Concat (an Inception pool branch
    reading the block's input), then a conv: pooled spikes of two neurons."""
    b = zoo._Builder(7)
    h = b.op("AveragePool", [b.op("Relu", [b.conv("x", 3, 4)])], kernel_shape=[2, 2],
             strides=[2, 2])
    a = b.op("Relu", [b.conv(h, 4, 3)])
    c = b.op("Relu", [b.conv(h, 4, 5, k=1)])
    cat = b.op("Concat", [a, c], axis=1)
    p = b.op("MaxPool", [cat], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    h = b.op("Relu", [b.conv(b.op("Concat", [cat, p], axis=1), 16, 6)])
    return b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 6, 5),
                   input_shape=("N", 3, 16, 16))


@pytest.mark.parametrize("neuron", ["if", "mt"])
def test_a_pool_over_a_concat_counts_each_neuron_s_share(nets, tmp_path, neuron):
    """One pool group per neuron of the Concat, each its channels of the pool's output (the
    pool is not split here: its Concat has another reader); with binary spikes its events are
    the nonzeros of those channels."""
    onnx.save(inception_pool_net(), tmp_path / "inc.onnx")
    opts = make_options(target="ort", timesteps=4, neuron=neuron, maxpool="gate",
                        calib_path=str(nets / "calib.npz"), calib_method="max")
    res = compile_model(str(tmp_path / "inc.onnx"), tmp_path / "s.onnx", opts,
                        dump_after=["insert-neurons"], dump_dir=tmp_path / "dump")
    sec = res.report["synops"]
    assert sec["available"], sec.get("reason")
    pools = {n: r for n, r in sec["groups"].items() if r["kind"] == "pool"}
    assert len(pools) == 2 and {r["neurons"] for r in pools.values()} == {0}
    for r in pools.values():   # a 3x3 window at stride 1 may pass one spike up to 9 times
        assert 0 < r["pooled_events"] <= 9 * sec["groups"][r["pool_of"]]["events"]
    snn = onnx.load(str(tmp_path / "s.onnx"))
    net = count_netlist(onnx.load(str(tmp_path / "dump" / "after-insert-neurons.onnx")), 4,
                        "gate", snn)
    taps = pool_taps(net)
    assert sorted((lo, hi) for _, _, lo, hi in taps.values()) == [(0, 3), (3, 8)]
    x = {"x": np.load(nets / "calib.npz")["x"][:8]}
    events = ort_events(snn, x, taps)
    tensor = next(iter(taps.values()))[0]
    sess = ort.InferenceSession(ir.with_outputs(snn, [tensor]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    y = sess.run([tensor], x)[0]
    for group, (_, neuron_node, lo, hi) in taps.items():
        assert int(events[group].sum()) > 0
        if neuron == "if":   # binary spikes: one event per nonzero of its channels
            assert int(events[group].sum()) == int(np.count_nonzero(y[:, lo:hi]))


@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax", "ArgMax"])
def test_an_output_head_counts_as_without_it(nets, tmp_path, head):
    def net(with_head: bool) -> onnx.ModelProto:
        b = zoo._Builder(9)
        h = b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 6)])
        y = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 6, 5)
        if with_head and head != "ArgMax":
            y = b.op(head, [y], axis=1)
        model = b.model(y, input_shape=("N", 3, 16, 16))
        if with_head and head == "ArgMax":   # an int64 output
            model.graph.node.append(onnx.helper.make_node("ArgMax", [y], ["cls"], axis=1,
                                                          keepdims=0, name="/ArgMax"))
            del model.graph.output[:]
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                "cls", onnx.TensorProto.INT64, ["N"]))
        return model

    secs = []
    for with_head in (False, True):
        onnx.save(net(with_head), tmp_path / "m.onnx")
        opts = make_options(target="ort", timesteps=4, calib_path=str(nets / "calib.npz"),
                            calib_method="max")
        sec = compile_model(str(tmp_path / "m.onnx"), tmp_path / "s.onnx", opts,
                            force=True).report["synops"]
        assert sec["available"], sec.get("reason")
        secs.append(sec["measured"])
    for key in ("synops_per_inference", "macs_per_inference", "spikes_per_inference"):
        assert secs[1][key] == secs[0][key], key


@pytest.mark.parametrize("between", ["BatchNormalization", "Mul"])
def test_a_pool_over_transformed_spikes_has_no_count(nets, tmp_path, between):
    """Conv-ReLU-BN-MaxPool (or a scale): the pool's values are not spikes, and the neuron's
    spec counted them as events (IF: every nonzero, the shifted zeros too; a review measured the
    next conv charged 7.5x). Now 'not available', with the reason."""
    b = zoo._Builder(11)
    h = b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 6)])
    if between == "Mul":
        h = b.op("Mul", [h, b.const(np.full((1, 6, 1, 1), 0.5, np.float32))])
    else:
        h = b.bn(h, 6)
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Relu", [b.conv(h, 6, 8)])
    model = b.model(b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1), 8, 5),
                    input_shape=("N", 3, 16, 16))
    onnx.save(model, tmp_path / "m.onnx")
    opts = make_options(target="ort", timesteps=4, calib_path=str(nets / "calib.npz"),
                        calib_method="max")
    sec = compile_model(str(tmp_path / "m.onnx"), tmp_path / "s.onnx", opts).report["synops"]
    assert sec["available"] is False and "transform of spikes" in sec["reason"]
