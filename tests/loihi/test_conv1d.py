"""1-D networks ([N, C, L] maps: Conv, AveragePool, MaxPool, GlobalAveragePool over one axis) in
the Loihi lowering and the SynOp count: a [N, C, L] map runs as its (C, L, 1) view.

Checked by what is exact: the integer simulator equals ONNX Runtime's run of the same spiking
graph (dyadic weights), the count equals the 2-D twin's ([N, C, L, 1], kernels (k, 1)) group for
group, and the NetX writer exports the whole sequential net.
"""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph, dyadic_input, exact_lowering_equals_ort, ort_reference
from snncc.analysis.synops import count_netlist, static_synops
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.netx import write_netx
from snncc.backends.loihi.quantize import quantize
from snncc.backends.loihi.simulator import simulate
from snncc.errors import SnnccError

L = 16


def conv1d_net(two_d: bool = False, op: str = "IFNeuron", pool: str = "AveragePool",
               seed: int = 0, **attrs):
    """conv-neuron, [conv + identity]-neuron, 2-pool, strided conv-neuron, [2-pool], GAP,
    flatten, gemm; ``two_d``: the same net on [N, C, L, 1] maps with (k, 1) kernels."""
    g = Graph((2, L, 1) if two_d else (2, L), seed)

    def conv(x, cin, cout, k=3, stride=1):
        w = g.dyadic((cout, cin, k) + ((1,) if two_d else ()))
        ins = [x, g.const(w, "w"), g.const(g.dyadic((cout,), 0.25), "b")]
        if two_d:
            return g.op("Conv", ins, kernel_shape=[k, 1], pads=[k // 2, 0, k // 2, 0],
                        strides=[stride, 1])
        return g.op("Conv", ins, kernel_shape=[k], pads=[k // 2] * 2, strides=[stride])

    def pooled(x, kind):
        if two_d:
            return g.op(kind, [x], kernel_shape=[2, 1], strides=[2, 1])
        return g.op(kind, [x], kernel_shape=[2], strides=[2])

    s1 = g.neuron(conv("x", 2, 4), op, **attrs)
    s2 = g.neuron(g.op("Add", [conv(s1, 4, 4), s1]), op, **attrs)
    s3 = g.neuron(conv(pooled(s2, pool), 4, 6, stride=2), op, **attrs)   # 16 -> 8 -> 4
    gap = g.op("GlobalAveragePool", [pooled(s3, "AveragePool")])
    return g.model(g.gemm(g.op("Flatten", [gap], axis=1), 6, 5))


@pytest.mark.parametrize("op", ["IFNeuron", "MTNeuron"])
def test_the_simulator_equals_onnxruntime_on_a_1d_net(op):
    attrs = {} if op == "IFNeuron" else {"fractions": [1.0, 0.5], "mode": "parallel"}
    model = conv1d_net(op=op, **attrs)
    x = dyadic_input((3, 2, L), seed=5)
    net, sim, ref = exact_lowering_equals_ort(model, x)
    assert {k: int(v.sum()) for k, v in sim.events.items()} == ref.events_per_layer
    assert [(g.shape, g.view) for g in net.groups if g.kind == "neuron"] == \
        [((4, L), (4, L, 1)), ((4, L), (4, L, 1)), ((6, L // 4), (6, L // 4, 1))]


def test_max_pool_avg_on_a_1d_net_is_the_average_pool():
    x = dyadic_input((2, 2, L), seed=2)
    with pytest.raises(SnnccError) as err:
        lower(conv1d_net(pool="MaxPool"), 4)
    assert err.value.code == "SNN-E270"
    net = lower(conv1d_net(pool="MaxPool"), 4, maxpool="avg")
    quantize(net)
    ref = ort_reference(conv1d_net(pool="AveragePool"), x, 4)
    (name, out), = simulate(net, x).outputs.items()
    np.testing.assert_array_equal(out, ref.outputs[name])


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_the_count_equals_the_2d_twin(pool):
    one = count_netlist(conv1d_net(pool=pool), 4)
    two = count_netlist(conv1d_net(True, pool=pool), 4)
    assert one.ann_macs == two.ann_macs == (4 * 2 * 3 + 4 * 4 * 3) * L + 6 * 4 * 3 * 4 + 6 * 5
    s1, s2 = static_synops(one), static_synops(two)
    assert s1 == s2 and s1["synapses"] > 0
    assert [(g.name, g.kind, g.size) for g in one.groups] == \
        [(g.name, g.kind, g.size) for g in two.groups]
    assert any(g.kind == "pool" for g in one.groups) == (pool == "MaxPool")


def test_netx_exports_the_whole_1d_net(tmp_path):
    g = Graph((2, L))
    w1, w2 = g.dyadic((4, 2, 3)), g.dyadic((6, 4, 3))
    s1 = g.neuron(g.op("Conv", ["x", g.const(w1)], kernel_shape=[3], pads=[1, 1]))
    s2 = g.neuron(g.op("Conv", [s1, g.const(w2)], kernel_shape=[3], pads=[1, 1], strides=[2]))
    net = lower(g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * L // 2, 5)), 4)
    quantize(net)
    info = write_netx(net, tmp_path / "network.net")
    assert info["path"] and not info["not_exported"]
    assert info["layers"] == [grp.name for grp in net.groups[1:]]
    import h5py
    with h5py.File(tmp_path / "network.net") as f:
        types = [f["layer"][str(i)]["type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        assert list(f["layer/0/shape"][()]) == [2, L, 1]
        assert list(f["layer/2/kernelSize"][()]) == [3, 1]


def test_a_per_channel_scale_on_a_1d_map_lowers():
    """Mul by a (C, 1) constant (a BatchNorm1d's scale left unfolded) was refused (E275)."""
    g = Graph((2, L))
    c1 = g.op("Conv", ["x", g.const(g.dyadic((4, 2, 3)))], kernel_shape=[3], pads=[1, 1])
    scaled = g.op("Mul", [c1, g.const(np.array([[0.5], [1.0], [0.5], [1.0]], np.float32))])
    model = g.model(g.gemm(g.op("Flatten", [g.neuron(scaled)], axis=1), 4 * L, 3))
    x = dyadic_input((2, 2, L), seed=4)
    lowered = lower(model, 4)
    assert quantize(lowered)[0]["all_exact"]   # the scales keep 8-bit mantissas exact
    (name, out), = simulate(lowered, x).outputs.items()
    np.testing.assert_array_equal(out, ort_reference(model, x, 4).outputs[name])
