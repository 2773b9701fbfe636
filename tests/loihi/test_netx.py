"""The NetX HDF5 export follows the reader's expectations (lava-dl hdf5.py / utils.NetDict)."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from loihi import Graph, residual_pool_model
from snncc.backends.loihi import netlist as nl
from snncc.backends.loihi.netx import check_netx, write_netx
from snncc.backends.loihi.quantize import quantize


def sequential(op="IFNeuron", **attrs):
    g = Graph((2, 8, 8))
    s1 = g.neuron(g.conv("x", 2, 4), op, **attrs)
    s2 = g.neuron(g.conv(s1, 4, 6, stride=2), op, **attrs)
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 4 * 4, 5))


def exported(model, path):
    net = nl.lower(model, 4)
    quantize(net)
    return net, write_netx(net, path)


@pytest.fixture
def seq(tmp_path):
    path = tmp_path / "network.net"
    net, info = exported(sequential(), path)
    return net, info, path


def test_sequential_network_is_fully_exported(seq):
    net, info, path = seq
    assert info["layers"] == [g.name for g in net.groups[1:]] and not info["not_exported"]
    assert check_netx(path) == []
    with h5py.File(path, "r") as f:
        types = [f["layer"][str(i)]["type"][0].decode("ascii") for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        for i in range(len(types)):
            t = f["layer"][str(i)]["type"]
            assert t.dtype == np.dtype("S10") and t.shape == (1,)
        conv = f["layer/2"]
        assert conv["weight"].shape == (6, 4, 3, 3)
        assert list(conv["stride"][()]) == [2, 2] and list(conv["padding"][()]) == [1, 1]
        assert list(conv["shape"][()]) == [6, 4, 4] and int(conv["inChannels"][()]) == 4
        w = conv["weight"][()]
        assert np.all(w % 2 == 0) and w.min() >= -256 and w.max() <= 254
        neuron = conv["neuron"]
        assert neuron["type"][0] == b"CUBA" and int(neuron["iDecay"][()]) == 4096
        assert int(neuron["vDecay"][()]) == 0
        dense = f["layer/4"]
        assert dense["weight"].shape == (5, 96) and int(dense["inFeatures"][()]) == 96
        # weights and threshold keep the netlist's ratio: W_netx / vThMant = W_int / vth_int
        g, b = net.groups[2], net.blocks[1]
        ratio = (w / int(neuron["vThMant"][()]))
        np.testing.assert_array_equal(ratio, (b.mant.astype(np.int64) << b.exp) / g.fixed["vth"][0])


def test_residual_and_graded_layers_are_listed(tmp_path):
    net, info = exported(residual_pool_model(0), tmp_path / "a.net")
    assert info["layers"] == [net.groups[1].name]
    reasons = {d["group"]: d["reason"] for d in info["not_exported"]}
    assert "residual add or concat" in reasons[net.groups[2].name]
    assert set(reasons) == {g.name for g in net.groups[2:]}
    assert check_netx(tmp_path / "a.net") == []
    net, info = exported(sequential("GroupNeuron", tau=4), tmp_path / "b.net")
    assert "no NetX neuron" in info["not_exported"][0]["reason"] and info["layers"] == []
    assert any("resets v to 0" in n for n in exported(sequential(), tmp_path / "c.net")[1]["notes"])


def _corrupt(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)


def _replace(f, key, value, dtype=None):
    del f[key]
    f.create_dataset(key, data=value, dtype=dtype)


CORRUPTIONS = {
    "odd weight": (lambda f: _replace(f, "layer/1/weight", f["layer/1/weight"][()] + 1),
                   "even integers"),
    "weight out of range": (lambda f: _replace(f, "layer/1/weight",
                                               f["layer/1/weight"][()] * 0 + 300), "[-256, 254]"),
    "fractional bias": (lambda f: _replace(f, "layer/1/bias", f["layer/1/bias"][()] + 0.5),
                        "not integers"),
    "string type": (lambda f: _replace(f, "layer/1/type", "conv",
                                       h5py.string_dtype()), "fixed-length bytes"),
    "pool layer": (lambda f: _replace(f, "layer/2/type", np.array([b"pool"], "S10")),
                   "not loadable"),
    "no neuron": (lambda f: f.__delitem__("layer/1/neuron"), "missing 'neuron'"),
    "channel mismatch": (lambda f: _replace(f, "layer/2/inChannels", np.int64(3)),
                         "inChannels"),
    "float shape": (lambda f: _replace(f, "layer/1/shape", np.array([4.0, 8, 8])),
                    "not an integer type"),
    "bad iDecay": (lambda f: _replace(f, "layer/1/neuron/iDecay", np.int64(5000)), "iDecay"),
    "no flatten": (lambda f: _replace(f, "layer/3/type", np.array([b"dense"], "S10")),
                   "inFeatures"),
    "gap in keys": (lambda f: f["layer"].move("4", "7"), "are not"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_checker_catches_what_the_reader_rejects(seq, tmp_path, name):
    _, _, path = seq
    bad = tmp_path / "bad.net"
    shutil.copy(path, bad)
    edit, words = CORRUPTIONS[name]
    _corrupt(bad, edit)
    problems = check_netx(bad)
    assert any(words in p for p in problems), problems
