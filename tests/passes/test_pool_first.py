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
