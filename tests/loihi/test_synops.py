"""SynOps and MACs equal hand-computed counts; energy and report."""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph, compiled_ort, dyadic_input, residual_pool_model
from snncc.analysis.energy import estimate
from snncc.analysis.synops import count_synops, fanout_map, ort_events, synops_per_target
from snncc.backends.loihi import netlist as nl
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.quantize import quantize
from snncc.backends.loihi.simulator import simulate
from snncc.errors import SnnccError
from snncc.report import write_report


def brute_fanout(cin, hw, cout, k, stride, pad, groups):
    """Count, by looping over every output and kernel tap, the synapses leaving each input."""
    h, w = hw
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    fan = np.zeros((cin, h, w), dtype=np.int64)
    cg, og = cin // groups, cout // groups
    for o in range(cout):
        g = o // og
        for y in range(ho):
            for x in range(wo):
                for c in range(g * cg, (g + 1) * cg):
                    for i in range(k):
                        for j in range(k):
                            r, s = y * stride - pad + i, x * stride - pad + j
                            if 0 <= r < h and 0 <= s < w:
                                fan[c, r, s] += 1
    return fan


def spiking_conv(cin, hw, cout, k, stride, pad, groups, pool=False):
    """x -> conv1x1 -> IF (the spiking source) [-> avgpool 2] -> conv under test -> IF."""
    g = Graph((cin, *hw))
    src = g.neuron(g.conv("x", cin, cin, k=1))
    if pool:
        src = g.op("AveragePool", [src], kernel_shape=[2, 2], strides=[2, 2])
    out = g.neuron(g.conv(src, cin, cout, k=k, stride=stride, pad=pad, group=groups))
    net = lower(g.model(out), 4)
    return net, net.blocks[-1]


CASES = {  # name: (cin, hw, cout, k, stride, pad, groups)
    "borders": (1, (4, 4), 2, 3, 1, 1, 1),
    "stride2": (2, (5, 5), 3, 3, 2, 0, 1),
    "stride2_padding": (1, (4, 4), 2, 3, 2, 1, 1),
    "groups": (4, (3, 3), 6, 1, 1, 0, 2),
    "depthwise_padding": (3, (5, 4), 3, 3, 1, 2, 3),
}


@pytest.mark.parametrize("case", CASES)
def test_fanout_matches_brute_force(case):
    _, block = spiking_conv(*CASES[case])
    assert np.array_equal(fanout_map(block), brute_fanout(*CASES[case]))


def test_fanout_hand_table_borders():
    _, block = spiking_conv(*CASES["borders"])
    one = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    assert np.array_equal(fanout_map(block)[0], 2 * one)        # Cout = 2
    _, block = spiking_conv(*CASES["stride2_padding"])
    rows = np.array([1, 2, 1, 1])                                 # windows -1..1 and 1..3
    assert np.array_equal(fanout_map(block)[0], 2 * np.outer(rows, rows))


def test_groups_fan_out_only_within_group():
    _, block = spiking_conv(*CASES["groups"])
    assert np.all(fanout_map(block) == 3)                         # 6 outputs / 2 groups


def test_pooling_folds_into_following_conv():
    net, block = spiking_conv(1, (4, 4), 2, 3, 1, 1, 1, pool=True)
    assert block.shape == (2, 1, 6, 6) and block.stride == (2, 2) and block.pads == (2, 2)
    # a pixel enters one pooled position; on a 2x2 pooled map a 3x3/pad-1 conv reads every
    # position from all 4 outputs, so every pixel fans out to 4 * Cout synapses
    assert np.all(fanout_map(block) == 8)


@pytest.mark.parametrize("case", CASES)
def test_synops_are_events_times_fanout(case):
    net, block = spiking_conv(*CASES[case])
    rng = np.random.default_rng(3)
    events = {g.name: rng.integers(0, 5, (2, *g.shape)) for g in net.groups
              if g.kind == "neuron"}
    rep = count_synops(net, events)
    src_events = events[block.src]
    hand = float((src_events * brute_fanout(*CASES[case])).sum()) / 2
    assert rep["layers"][block.dst]["synops"] == hand
    assert synops_per_target(block, src_events).sum() / 2 == hand
    # the fidelity run keeps only the sum over its samples
    summed = {k: v.sum(axis=0, keepdims=True) for k, v in events.items()}
    assert count_synops(net, summed, summed_over=2) == rep
    with pytest.raises(SnnccError) as err:
        count_synops(net, events, summed_over=2)
    assert err.value.code == "SNN-E670"


def test_dense_fanout_is_out_features():
    g = Graph((2, 3, 3))
    s = g.neuron(g.conv("x", 2, 2))
    out = g.gemm(g.op("Flatten", [s], axis=1), 18, 7)
    net = lower(g.model(out), 2)
    block = net.blocks[-1]
    assert block.kind == "dense" and np.all(fanout_map(block) == 7)
    ev = {net.groups[1].name: np.ones((1, 2, 3, 3), dtype=np.int64)}
    assert count_synops(net, ev)["total_synops"] == 18 * 7


@pytest.mark.parametrize("analog_once,factor", [(True, 1), (False, 4)])
def test_analog_first_layer_counts_macs(analog_once, factor):
    g = Graph((1, 4, 4))
    out = g.neuron(g.conv("x", 1, 2))
    net = lower(g.model(out), 4)
    rep = count_synops(net, {net.groups[1].name: np.zeros((1, 2, 4, 4), np.int64)},
                       analog_once=analog_once)
    # fan-in summed over a 4x4 map with a 3x3/pad-1 kernel: 4*4 + 8*6 + 4*9 = 100 per channel
    assert rep["total_macs"] == 200 * factor and rep["total_synops"] == 0
    assert rep["ann_macs"] == 2 * 16 * 9


def test_graded_events_match_ort_per_position():
    model = residual_pool_model(0, "GroupNeuron", tau=4)
    x = dyadic_input((2, 2, 8, 8))
    net = lower(model, 4)
    quantize(net)
    sim = simulate(net, x)
    ort_ev = ort_events(compiled_ort(model, 4), {"x": x})
    for name, ev in sim.events.items():
        assert np.array_equal(ev, ort_ev[name]), name
    assert sim.events[net.groups[1].name].max() > 1            # graded: several per neuron
    assert count_synops(model, ort_ev, timesteps=4) == count_synops(net, sim.events)


def test_missing_or_total_events_are_rejected():
    net, _ = spiking_conv(*CASES["borders"])
    with pytest.raises(SnnccError) as err:
        count_synops(net, {})
    assert err.value.code == "SNN-E670"
    with pytest.raises(SnnccError) as err:
        count_synops(net, {g.name: 5 for g in net.groups if g.kind == "neuron"})
    assert err.value.code == "SNN-E670"


SYN = {"total_macs": 100.0, "total_synops": 1000.0, "neuron_updates": 10, "ann_macs": 500}


def test_energy_models_and_overrides():
    e = estimate(SYN)
    assert e["models"]["digital45nm"]["snn_pj"] == pytest.approx(4.6 * 100 + 0.9 * 1000)
    assert e["models"]["loihi"]["snn_pj"] == pytest.approx(23.6 * 1100 + 81 * 10)
    assert e["ann_pj"] == pytest.approx(4.6 * 500)
    e = estimate(SYN, models={"loihi": {"e_neuron_pj": 52.0}})
    assert e["models"]["loihi"]["snn_pj"] == pytest.approx(23.6 * 1100 + 52 * 10)
    assert "modified" in e["models"]["loihi"]["constants"]["source"]


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_report_writes_page_and_plots(tmp_path, suffix):
    net, _ = spiking_conv(*CASES["borders"])
    events = {g.name: np.ones((1, *g.shape), np.int64) for g in net.groups if g.kind == "neuron"}
    syn = count_synops(net, events)
    paths = write_report(tmp_path / f"r{suffix}", {
        "synops": syn, "energy": estimate(syn), "accuracy": {"ORT": 0.9, "Loihi hw": 0.8},
        "accuracy_vs_T": {"T": [1, 2], "series": {"ORT": [0.5, 0.9]}}, "notes": ["n"]})
    assert paths[0].read_text().count("r_files/") == 4
    assert all(p.stat().st_size > 0 and p.suffix == ".png" for p in paths[1:])


@pytest.mark.parametrize("seed", range(12))
def test_separable_counts_equal_the_ones_convolutions(seed):
    """conv_fanout / conv_fanin / conv_box_sum (window matrices) equal conv2d and its adjoint
    with a ones kernel, on random shapes: groups, strides, uneven pads, inputs wider than the
    outputs read."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2, 4]))
    cin, rows = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    h, w = int(rng.integers(kh, 14)), int(rng.integers(kw, 14))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pads = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    out_hw = ((h + 2 * pads[0] - kh) // stride[0] + 1 - int(rng.integers(0, 2)),
              (w + pads[1] - kw) // stride[1] + 1)
    out_hw = (max(1, out_hw[0]), max(1, out_hw[1]))
    block = nl.Block("b", "s", "d", "conv", np.ones((rows, cin // groups, kh, kw)),
                     (cin, h, w), (rows,) + out_hw, stride=stride, pads=pads, groups=groups)
    ones_w = np.ones(block.shape, np.int64)
    adj = nl.conv2d_adjoint(np.ones((1, rows) + out_hw, np.int64), ones_w, stride, pads,
                            groups, (h, w))[0]
    assert np.array_equal(nl.conv_fanout(block), adj)
    assert np.array_equal(fanout_map(block), adj)
    fwd = nl.conv2d(np.ones((1, cin, h, w), np.int64), ones_w, stride, pads, groups, out_hw)[0]
    assert np.array_equal(nl.conv_fanin(block), fwd)
    ev = rng.integers(0, 9, (3, cin, h, w))
    ref = nl.conv2d(ev.sum(axis=0, keepdims=True), ones_w, stride, pads, groups, out_hw)[0]
    assert np.array_equal(nl.conv_box_sum(block, ev.sum(axis=0)), ref)
    assert np.array_equal(synops_per_target(block, ev), ref)
