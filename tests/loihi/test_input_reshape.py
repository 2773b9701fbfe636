"""A flat graph input reshaped into a map ([N, 64] -> [N, 1, 8, 8], as a net trained on flat
digits vectors exports) lowers, counts and exports as the map: the input group takes the map's
view (the same C-order). Checked against the twin that takes the map as its input."""
from __future__ import annotations

import numpy as np
import pytest

from loihi import Graph, dyadic_input, exact_lowering_equals_ort
from snncc.analysis.synops import count_netlist, static_synops
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.netx import write_netx
from snncc.backends.loihi.quantize import quantize
from snncc.backends.loihi.simulator import simulate
from snncc.errors import SnnccError


def net(flat: bool, reshape_to=(0, 1, 8, 8), second_reader: bool = False):
    g = Graph((64,) if flat else (1, 8, 8), seed=3)
    x = g.op("Reshape", ["x", g.const(np.array(reshape_to, np.int64))]) if flat else "x"
    s1 = g.neuron(g.conv(x, 1, 4))
    s2 = g.neuron(g.conv(s1, 4, 4, stride=2))
    out = g.gemm(g.op("Flatten", [s2], axis=1), 4 * 4 * 4, 5)
    if second_reader:   # the flat input read again: the group cannot take one view
        out = g.op("Add", [out, g.gemm("x", 64, 5)])
    return g.model(out)


def test_the_reshaped_input_lowers_and_counts_as_the_map():
    a, b = static_synops(count_netlist(net(True), 4)), static_synops(count_netlist(net(False), 4))
    assert [sorted(r.items()) for r in a.pop("groups").values()] == \
        [sorted(r.items()) for r in b.pop("groups").values()]   # node names differ
    assert a == b and a["synapses"] > 0
    a = count_netlist(net(True), 4)
    assert a.groups[0].shape == (64,) and a.groups[0].view == (1, 8, 8)
    x = dyadic_input((3, 64), seed=2)
    _, sim, _ = exact_lowering_equals_ort(net(True), x)
    (_, out), = sim.outputs.items()
    twin = lower(net(False), 4)
    quantize(twin)
    (_, twin_out), = simulate(twin, x.reshape(3, 1, 8, 8)).outputs.items()
    np.testing.assert_array_equal(out, twin_out)


@pytest.mark.parametrize("case", ["not_a_map", "read_twice"])
def test_other_reshapes_of_the_input_are_still_refused(case):
    model = net(True, reshape_to=(0, 2, 32)) if case == "not_a_map" else \
        net(True, second_reader=True)
    if case == "not_a_map":   # [N, 2, 32]: a 1-D map, but the 2-D convs after it do not fit
        with pytest.raises(SnnccError) as err:
            lower(model, 4)
        assert "SNN-E271" in err.value.codes
        return
    with pytest.raises(SnnccError) as err:
        lower(model, 4)
    assert "SNN-E271" in err.value.codes


@pytest.mark.parametrize("to,shape", [((0, 1, 8, 8), [1, 8, 8]), ((-1, 64, 1, 1), [64, 1, 1])])
def test_netx_writes_the_maps_input_shape(tmp_path, to, shape):
    """The map's shape, also where it is [N, 64, 1, 1] (a review: written as [64] before a
    conv)."""
    import h5py

    g = Graph((64,), seed=3)
    x = g.op("Reshape", ["x", g.const(np.array(to, np.int64))])
    s1 = g.neuron(g.conv(x, shape[0], 4, k=1, pad=0))
    lowered = lower(g.model(g.gemm(g.op("Flatten", [s1], axis=1), 4 * 64 // shape[0], 5)), 4)
    quantize(lowered)
    info = write_netx(lowered, tmp_path / "network.net")
    assert info["layers"] == [grp.name for grp in lowered.groups[1:]]
    with h5py.File(tmp_path / "network.net") as f:
        assert list(f["layer/0/shape"][()]) == shape


def test_an_unsqueezed_flat_input_is_the_1d_map():
    """x.unsqueeze(1) of a flat [N, 64] input (a helper's Conv1d net) was E270 where
    view(-1, 1, 64) lowered: the same (1, 64, 1) view, the same counts and outputs."""
    def one_d(unsqueeze: bool):
        g = Graph((64,), seed=4)
        x = (g.op("Unsqueeze", ["x", g.const(np.array([1], np.int64))]) if unsqueeze else
             g.op("Reshape", ["x", g.const(np.array([0, 1, 64], np.int64))]))
        s1 = g.neuron(g.op("Conv", [x, g.const(g.dyadic((4, 1, 3)))], kernel_shape=[3],
                           pads=[1, 1]))
        return g.model(g.gemm(g.op("Flatten", [s1], axis=1), 4 * 64, 3))

    a, b = lower(one_d(True), 4), lower(one_d(False), 4)
    assert a.groups[0].view == b.groups[0].view == (1, 64, 1)
    for net_ in (a, b):
        quantize(net_)
    x = dyadic_input((2, 64), seed=6)
    (_, ya), = simulate(a, x).outputs.items()
    (_, yb), = simulate(b, x).outputs.items()
    np.testing.assert_array_equal(ya, yb)
    g = Graph((2, 8), seed=4)   # not of the flat input: still no form
    with pytest.raises(SnnccError) as err:
        lower(g.model(g.gemm(g.op("Flatten", [g.op("Unsqueeze", [g.neuron("x"), g.const(
            np.array([3], np.int64))])], axis=1), 16, 3)), 4)
    assert "SNN-E270" in err.value.codes
