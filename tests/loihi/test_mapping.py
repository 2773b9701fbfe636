"""Core mapping under per-core limits: coverage, limits, axon counts, closeness to the bound."""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph, residual_pool_model
from snncc.analysis.synops import count_synops
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.mapping import (CoreLimits, fanin_map, hwc_order, map_cores,
                                          source_mask)
from snncc.backends.loihi.quantize import quantize

SMALL = CoreLimits(neurons=40, synapse_bytes=1024, in_axons=200, out_axons=120)


def small_resnet(ch=(16, 32), hw=32):
    """stem, one basic block per stage (stride 2 + 1x1 shortcut after the first), GAP, FC."""
    g = Graph((3, hw, hw))
    s, cin = g.neuron(g.conv("x", 3, ch[0])), ch[0]
    for i, c in enumerate(ch):
        stride = 2 if i else 1
        h = g.conv(g.neuron(g.conv(s, cin, c, stride=stride)), c, c)
        sc = s if stride == 1 and cin == c else g.conv(s, cin, c, k=1, stride=stride, pad=0)
        s, cin = g.neuron(g.op("Add", [h, sc])), c
    flat = g.op("Flatten", [g.op("GlobalAveragePool", [s])], axis=1)
    return g.model(g.gemm(flat, cin, 10))


@pytest.fixture(scope="module")
def net():
    n = lower(residual_pool_model(0), 4)
    quantize(n)
    return n


def test_every_neuron_once_and_limits_respected(net):
    report, diags = map_cores(net, SMALL)
    assert not diags
    assert [h["group"] for h in report["host_groups"]] == ["readout:gemm20"]  # 256 > 200 axons
    seen = {g.name: np.zeros(g.size, dtype=int) for g in net.groups if g.kind == "neuron"}
    for core in report["cores"]:
        for r in ("neurons", "synapse_bits", "in_axons", "out_axons"):
            assert core[r] <= getattr(SMALL, r)
            assert core["utilisation"][r] == core[r] / getattr(SMALL, r)
        for ch in core["chunks"]:
            seen[ch["group"]][ch["start"]:ch["stop"]] += 1
    assert all(np.all(v == 1) for v in seen.values())
    assert report["lower_bound"] <= report["cores_used"]
    assert report["total_synapse_bits"] == 8 * sum(int(fanin_map(b).sum()) for b in net.blocks
                                                    if b.dst in seen)


def test_in_axons_are_the_receptive_field_union():
    g = Graph((2, 8, 8))
    s = g.neuron(g.conv("x", 2, 2, k=1))
    out = g.neuron(g.conv(s, 2, 3, k=3, pad=1))
    n = lower(g.model(out), 2)
    block = n.blocks[-1]
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[:, 0, 0] = True                      # the corner pixel, all channels
    assert source_mask(block, mask).sum() == 2 * 2 * 2
    mask[:, 0, 1] = True                      # and its right neighbour
    assert source_mask(block, mask).sum() == 2 * 2 * 3
    assert list(hwc_order((2, 1, 2))) == [0, 2, 1, 3]


def test_out_axons_count_destination_cores():
    g = Graph((1, 4, 4))
    s = g.neuron(g.conv("x", 1, 1, k=1))
    out = g.neuron(g.conv(s, 1, 1, k=1, pad=0))   # one synapse per neuron
    n = lower(g.model(out), 2)
    limits = CoreLimits(neurons=4)
    report, _ = map_cores(n, limits)
    # each source neuron reaches exactly one destination chunk: out axons = neurons per core
    src_cores = [c for c in report["cores"] if c["chunks"][0]["group"] == n.groups[1].name]
    assert [c["out_axons"] for c in src_cores] == [4, 4, 4, 4]


def test_per_core_synops_add_up(net):
    report, _ = map_cores(net, SMALL)
    events = {g.name: np.ones((1, *g.shape), np.int64) for g in net.groups if g.kind == "neuron"}
    syn = count_synops(net, events, mapping=report)
    assert syn["host_synops"] > 0
    assert sum(syn["cores"]) + syn["host_synops"] == pytest.approx(syn["total_synops"])


def test_resnet_within_ten_percent_of_the_bound():
    n = lower(small_resnet(), 4)
    report, diags = map_cores(n)
    assert not diags
    assert report["cores_used"] <= 1.10 * report["lower_bound"]
    assert report["cores_used"] > 50


def test_wide_readout_goes_to_the_host():
    n = lower(small_resnet(), 4)
    report, diags = map_cores(n, CoreLimits(in_axons=4096))  # the FC reads 32*16*16 = 8192
    assert not diags
    assert [h["group"] for h in report["host_groups"]] == [n.groups[-1].name]
    assert "in_axons 8192 > 4096" in report["host_groups"][0]["reason"]


def _grouped_strided_model():
    """Strided, padded, grouped and 1x1 convs, a pool and a concat (two blocks from one
    source)."""
    g = Graph((4, 12, 10))
    s = g.neuron(g.conv("x", 4, 8, k=3, stride=2, pad=1))
    t = g.neuron(g.conv(s, 8, 8, k=3, group=4))
    u = g.neuron(g.op("Concat", [g.conv(t, 8, 4, k=1, pad=0), g.conv(t, 8, 4, k=3)], axis=1))
    p = g.op("AveragePool", [u], kernel_shape=[2, 2], strides=[1, 1])
    return g.model(g.neuron(g.conv(p, 8, 6, k=3, pad=2)))


@pytest.mark.parametrize("build", [small_resnet, _grouped_strided_model,
                                   lambda: residual_pool_model(1, "IFNeuron")])
def test_windowed_in_axons_equal_the_full_source_masks(build):
    """The mapper counts a chunk's in-axons on the band of rows it touches (fast); that count
    equals the union of the full-size source masks (the definition) for random chunks."""
    from snncc.backends.loihi.mapping import _GroupSplitter

    net = lower(build(), 4)
    rng = np.random.default_rng(0)
    checked = 0
    for group in net.groups:
        if not net.blocks_into(group.name):
            continue
        splitter = _GroupSplitter(net, group.name, CoreLimits(), np.zeros(group.size, np.int64))
        for _ in range(60):
            a = int(rng.integers(0, group.size))
            b = int(rng.integers(a + 1, group.size + 1))
            full = sum(int(m.sum()) for m in splitter.sources(a, b).values())
            assert splitter.in_axons(a, b) == full, (group.name, a, b)
            checked += 1
    assert checked > 100
