"""pool-first: a MaxPool after a first-layer activation moves in front of it (exact for the ANN,
the exact max pooling for the SNN: the neuron gets the pooled current as a constant input)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_pass_equivalent, run_passes
from zoo import stem_net

from snncc.context import CompileOptions
from snncc.passes.canonicalize import CanonicalizePass
from snncc.passes.pool_first import PoolFirstPass


def _moved_and_declines(report):
    row = report.rows[-1]
    return row.counts["maxpool_moved"], [(d["code"], d["node"]) for d in row.declines]


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_the_stem_pool_moves_in_front_of_its_activation_and_the_ann_is_unchanged(act):
    out, report, _ = assert_pass_equivalent(stem_net(act), [CanonicalizePass(), PoolFirstPass()],
                                            options=CompileOptions(target="ort"))
    moved, declines = _moved_and_declines(report)
    assert moved == 1
    # the second pool reads a neuron's spikes: left to the schedule (gate or exact swap)
    assert [code for code, _ in declines] == ["TEMPORAL_INPUT"]
    ops = [n.op_type for n in out.graph.node]
    assert ops.index("MaxPool") < ops.index(act)


@pytest.mark.parametrize("kw, code", [({"extra_reader": True}, "OTHER_READERS"),
                                      ({"indices": True}, "INDICES_USED")])
def test_declines(kw, code):
    _, report, _ = run_passes(stem_net(**kw, second_pool=False),
                              [CanonicalizePass(), PoolFirstPass()],
                              options=CompileOptions(target="ort"))
    moved, declines = _moved_and_declines(report)
    assert moved == 0 and [c for c, _ in declines] == [code]


@pytest.mark.parametrize("mode", ["avg", "gate"])
def test_only_with_maxpool_auto(mode):
    _, report, _ = run_passes(stem_net(), [CanonicalizePass(), PoolFirstPass()],
                              options=CompileOptions(target="ort", maxpool=mode))
    assert _moved_and_declines(report) == (0, [])


def test_the_bias_goes_into_the_conv_before_the_pool(tmp_path):
    """fold-batchnorm's bias (rounding shift, calibrated bias) passes through the moved pool into
    the stem conv's bias: no extra Add over the pooled map."""
    from snncc.driver import compile_model, make_options

    import onnx

    onnx.save(stem_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((40, 3, 12, 12), np.float32))
    res = compile_model(tmp_path / "m.onnx", tmp_path / "m.qann.onnx",
                        make_options(target="qann", calib_path=str(tmp_path / "c.npy"), levels=4,
                                     bias_shift=True))
    rows = {r["pass"]: r for r in res.report["passes"]}
    assert rows["pool-first"]["counts"]["maxpool_moved"] == 1
    assert rows["fold-batchnorm"]["counts"].get("shift_add_inserted", 0) == 0
    assert rows["fold-batchnorm"]["counts"]["bias_shifted"] == 2


def test_a_pool_after_an_analog_island_is_left_to_the_gate():
    """conv -> relu -> Sigmoid (an island with --allow-analog) -> conv -> relu -> MaxPool: the
    second relu's producer is 'static' in the roles, but its current is computed from spikes
    (a review: the pool moved, silently inexact)."""
    from zoo import _Builder, _head

    b = _Builder(8)
    h = b.op("Sigmoid", [b.op("Relu", [b.conv("x", 3, 4)])])
    h = b.op("MaxPool", [b.op("Relu", [b.conv(h, 4, 4)])], kernel_shape=[2, 2], strides=[2, 2])
    model = b.model(_head(b, b.op("Relu", [b.conv(h, 4, 4)]), 4), input_shape=(1, 3, 8, 8))
    _, report, _ = run_passes(model, [CanonicalizePass(), PoolFirstPass()],
                              options=CompileOptions(target="ort", allow_analog=True))
    moved, declines = _moved_and_declines(report)
    assert moved == 0 and [c for c, _ in declines] == ["TEMPORAL_INPUT"]


def _inception(shared: bool):
    """Two conv -> relu branches -> channel Concat -> MaxPool 3x3/1 pad 1 (an Inception pool
    branch) -> conv -> relu -> head; ``shared``: the Concat is also read by a 1x1 conv whose
    output is added back after the pool."""
    from zoo import _Builder, _head

    b = _Builder(12)
    stem = b.op("Relu", [b.conv("x", 3, 4)])
    a = b.op("Relu", [b.conv(stem, 4, 3)])
    c = b.op("Relu", [b.conv(stem, 4, 5)])
    cat = b.op("Concat", [a, c], axis=1)
    h = b.op("MaxPool", [cat], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    if shared:
        h = b.op("Add", [h, b.conv(cat, 8, 8, k=1)])
    h = b.op("Relu", [b.conv(h, 8, 4)])
    return b.model(_head(b, h, 4), input_shape=(1, 3, 8, 8))


@pytest.mark.parametrize("shared", [False, True])
def test_a_pool_over_a_channel_concat_splits_per_branch(shared):
    out, report, _ = assert_pass_equivalent(_inception(shared), [CanonicalizePass(),
                                                                  PoolFirstPass()],
                                            options=CompileOptions(target="ort"))
    assert report.rows[-1].counts["maxpool_split_over_concat"] == 1
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MaxPool") == 2 and ops.count("Concat") == (2 if shared else 1)


def test_bitserial_is_exact_through_a_pooled_concat(tmp_path):
    """An Inception pool branch on a Concat of neurons was spike-gated for bit-serial (no
    warning): its SNN missed its QANN by 1 % on a GoogLeNet-style net (a sweep). Split per
    branch, each pool moves in front of its neuron: SNN = QANN up to float summation."""
    import onnx

    onnx.save(_inception(True), tmp_path / "m.onnx")
    snn = _bitserial_equals_its_qann(tmp_path, seed=1, samples=8)
    assert not snn.warnings and "gated" not in snn.report["notes"]["maxpool"].values()


def _bitserial_equals_its_qann(tmp_path, seed: int, samples: int):
    """Compile ``tmp_path/m.onnx`` bit-serial (T = 4) and as its L = 15 QANN, calibrated alike
    on 40 random images; assert equal outputs up to float summation; the bit-serial result."""
    from snncc.driver import compile_model, make_options
    from snncc.simulate import run_compiled

    x = np.random.default_rng(seed).random((40, 3, 8, 8), np.float32)
    np.save(tmp_path / "c.npy", x)
    common = dict(calib_path=str(tmp_path / "c.npy"), calib_method="mse", fidelity_samples=0)
    snn = compile_model(tmp_path / "m.onnx", tmp_path / "s.onnx",
                        make_options(neuron="bitserial", timesteps=4, **common))
    compile_model(tmp_path / "m.onnx", tmp_path / "q.onnx",
                  make_options(target="qann", levels=15, bias_shift=True, **common))
    a = run_compiled(tmp_path / "s.onnx", x[:samples]).outputs
    q = run_compiled(tmp_path / "q.onnx", x[:samples], spike_counts=False).outputs
    (a,), (q,) = a.values(), q.values()
    np.testing.assert_allclose(a, q, atol=1e-4 * np.abs(q).max(), rtol=0)
    return snn


def test_bitserial_is_exact_through_a_window_gate_and_warns_with_the_running_sum(tmp_path):
    """relu -> conv -> MaxPool -> relu: the pool reads a conv of spikes, not a neuron, and stays
    spike-gated. Window-gated (the default) it passes the unit of the largest total, i.e. the
    largest window mean: bit-serial equals its QANN, no warning. With the running-sum gate
    (--maxpool gate) it is not exact, and says so (the folded schedule had said nothing)."""
    import onnx
    from zoo import _Builder, _head

    from snncc.driver import compile_model, make_options

    b = _Builder(13)
    h = b.op("MaxPool", [b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 4)], kernel_shape=[2, 2],
             strides=[2, 2])
    onnx.save(b.model(_head(b, b.op("Relu", [h]), 4), input_shape=(1, 3, 8, 8)),
              tmp_path / "m.onnx")
    res = _bitserial_equals_its_qann(tmp_path, seed=2, samples=16)
    assert not res.warnings
    assert list(res.report["notes"]["maxpool"].values()) == ["gated over the window"]
    res = compile_model(tmp_path / "m.onnx", tmp_path / "g.onnx",
                        make_options(neuron="bitserial", timesteps=4, maxpool="gate",
                                     calib_path=str(tmp_path / "c.npy"), calib_method="mse",
                                     fidelity_samples=0))
    assert [w for w in res.warnings if "spike-gates 1 MaxPool" in w and "not exact" in w]


def test_a_split_first_layer_concat_moves_every_part_and_nested_concats_split_fully():
    """A review: after the split the dead Concat still counted as a reader of each branch
    (OTHER_READERS, the parts stayed gated); a pool over a Concat of Concats split one level."""
    from zoo import _Builder, _head

    b = _Builder(15)
    a = b.op("Relu", [b.conv("x", 3, 2)])
    c = b.op("Relu", [b.conv("x", 3, 3)])
    d = b.op("Relu", [b.conv("x", 3, 3)])
    cat = b.op("Concat", [b.op("Concat", [a, c], axis=1), d], axis=1)
    h = b.op("MaxPool", [cat], kernel_shape=[2, 2], strides=[2, 2])
    model = b.model(_head(b, b.op("Relu", [b.conv(h, 8, 4)]), 4), input_shape=(1, 3, 8, 8))
    out, report, _ = assert_pass_equivalent(model, [CanonicalizePass(), PoolFirstPass()],
                                            options=CompileOptions(target="ort"))
    counts = report.rows[-1].counts
    assert counts["maxpool_split_over_concat"] == 2 and counts["maxpool_moved"] == 3
    assert report.rows[-1].declines == []


def test_a_qcfs_pattern_before_the_stem_pool_keeps_a_valid_qann(tmp_path):
    """A snncc finetune output (QCFS pattern in ONNX ops, value_info from the exporter) with a
    stem max-pool: pool-first moved the pool but left the pattern's inner tensors at their
    unpooled shapes, and onnx.checker refused the QANN (SNN-E525). Its QANN now equals the
    source on every sample."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from snncc.driver import compile_model, make_options

    model = stem_net(second_pool=False, bn=False)
    g = model.graph
    consts = {"lam": 2.0, "L": 4.0, "half": 0.5, "zero": 0.0, "one": 1.0}
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), f"q.{k}")
                         for k, v in consts.items())
    for r, relu in enumerate([n for n in g.node if n.op_type == "Relu"]):   # both activations
        z, y = relu.input[0], relu.output[0]
        chain = [("Div", [z, "q.lam"]), ("Mul", ["q.L"]), ("Add", ["q.half"]), ("Floor", []),
                 ("Div", ["q.L"]), ("Clip", ["q.zero", "q.one"]), ("Mul", ["q.lam"])]
        nodes, prev = [], None
        for i, (op, ins) in enumerate(chain):
            out = y if i == len(chain) - 1 else f"q{r}/{i}"
            nodes.append(helper.make_node(op, ins if prev is None else [prev, *ins], [out],
                                          name=f"q{r}/{op}_{i}"))
            prev = out
        at = list(g.node).index(relu)
        g.node.remove(relu)
        for k, n in enumerate(nodes):
            g.node.insert(at + k, n)
    model = onnx.shape_inference.infer_shapes(model)   # value_info at the unpooled shape
    assert any(v.name == "q0/3" for v in model.graph.value_info)
    src = tmp_path / "qcfs.onnx"
    onnx.save(model, src)
    compile_model(src, tmp_path / "q.onnx", make_options(target="qann"))
    x = np.random.default_rng(0).random((8, 3, 12, 12), dtype=np.float32)
    name = model.graph.input[0].name
    for path in (src, tmp_path / "q.onnx"):   # the model fixes its batch at 1
        sess = ort.InferenceSession(str(path))
        out = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(8)])
        if path == src:
            want = out
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
