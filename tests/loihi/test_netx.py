"""The NetX HDF5 export follows the reader's expectations (lava-dl hdf5.py / utils.NetDict)."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from loihi import Graph, residual_pool_model
from snncc.backends.loihi.lowering import lower
from snncc.backends.loihi.netx import check_netx, write_netx
from snncc.backends.loihi.quantize import quantize


def sequential(op="IFNeuron", **attrs):
    g = Graph((2, 8, 8))
    s1 = g.neuron(g.conv("x", 2, 4), op, **attrs)
    s2 = g.neuron(g.conv(s1, 4, 6, stride=2), op, **attrs)
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 4 * 4, 5))


def exported(model, path):
    net = lower(model, 4)
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
    assert info["path"] == "network.net" and info["reason"] == ""
    assert check_netx(path) == []
    with h5py.File(path, "r") as f:
        types = [f["layer"][str(i)]["type"][0].decode("ascii") for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        for i in range(len(types)):
            t = f["layer"][str(i)]["type"]
            assert t.dtype == np.dtype("S10") and t.shape == (1,)
        # the input layer has no neuron: Lava feeds the graded input to the first synapse
        assert "neuron" not in f["layer/0"] and list(f["layer/0/shape"][()]) == [2, 8, 8]
        assert f.attrs["snncc_total_steps"] == 4 and f.attrs["snncc_readout"] == "voltage"
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
    with h5py.File(tmp_path / "a.net", "r") as f:   # a spiking last layer: read its spikes
        assert f.attrs["snncc_readout"] == "spikes"
    assert any("resets v to 0" in n for n in exported(sequential(), tmp_path / "c.net")[1]["notes"])


@pytest.mark.parametrize("op,attrs", [("GroupNeuron", {"tau": 4}), ("MTNeuron", {}),
                                      ("BitSerialNeuron", {"theta": [0.9375]})])
def test_no_stub_file_when_no_layer_can_be_exported(tmp_path, op, attrs):
    """A graded first layer: nothing NetX can run, so no file at all (not an input-only stub)."""
    net, info = exported(sequential(op, **attrs), tmp_path / "b.net")
    assert info["path"] is None and info["layers"] == [] and not (tmp_path / "b.net").exists()
    assert "no NetX neuron" in info["not_exported"][0]["reason"]
    assert "network.net not written" in info["reason"] and net.groups[1].name in info["reason"]


def test_backend_writes_no_stub_and_says_why(tmp_path, caplog):
    from snncc.backends.loihi.backend import LoihiBackend
    from snncc.context import CompileContext, CompileOptions

    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    with caplog.at_level("WARNING"):
        art = LoihiBackend().emit(sequential("GroupNeuron", tau=4), ctx, tmp_path / "out")
    assert not (tmp_path / "out" / "network.net").exists()
    assert all(f.name != "network.net" for f in art.files)
    assert "network.net not written" in art.report["netx"]
    assert any("network.net not written" in w for w in ctx.warnings)   # CompileResult.warnings


def test_backend_warns_when_network_net_is_a_prefix(tmp_path, caplog):
    """A residual net: network.net holds the layers before the first add, and the compile says
    so (it used to print only 'network.net: 1 layers')."""
    from snncc.backends.loihi.backend import LoihiBackend
    from snncc.context import CompileContext, CompileOptions

    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    with caplog.at_level("WARNING"):
        art = LoihiBackend().emit(residual_pool_model(0), ctx, tmp_path / "out")
    total = len(art.report["netx_layers"]) + len(art.report["netx_not_exported"])
    assert art.report["netx"].startswith(f"network.net: 1 of {total} layers (a sequential prefix)")
    assert any(f"holds the first 1 of {total} layers" in w and "residual add" in w
               for w in ctx.warnings)


def varied_bias_model():
    """H != W and a bias that differs per position (a constant Add of shape [C, H, W]), so the
    per-neuron bias must be written in Lava's (x, y, c) neuron shape."""
    g = Graph((2, 6, 8))
    c = g.conv("x", 2, 3)
    c = g.op("Add", [c, g.const(g.dyadic((1, 3, 6, 8), 0.25))])
    s1 = g.neuron(c, "IFNeuron")
    s2 = g.neuron(g.conv(s1, 3, 4), "IFNeuron")    # per-channel bias
    return g.model(g.gemm(g.op("Flatten", [s2], axis=1), 4 * 6 * 8, 5))


def test_bias_is_written_in_lavas_neuron_layout(tmp_path):
    from snncc.backends.loihi.netx import netx_params

    net, info = exported(varied_bias_model(), tmp_path / "v.net")
    assert check_netx(tmp_path / "v.net") == []
    with h5py.File(tmp_path / "v.net", "r") as f:
        conv1, conv2 = f["layer/1"], f["layer/2"]
        lava_shape = tuple(conv1["shape"][()][::-1])          # what the reader builds: (x, y, c)
        assert lava_shape == (8, 6, 3)
        b1 = conv1["bias"][()]
        assert b1.shape == lava_shape                          # neuron-wise, as the reader wants
        want = netx_params(net, net.groups[1])["bias"]          # (C, H, W)
        np.testing.assert_array_equal(b1, want.transpose(2, 1, 0))
        assert len(np.unique(b1[:, :, 0])) > 1                # it does vary per position
        b2 = conv2["bias"][()]
        assert b2.shape == (4,)                                # channel-wise when uniform
        np.testing.assert_array_equal(b2, netx_params(net, net.groups[2])["bias"][:, 0, 0])


def _corrupt(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)


def _replace(f, key, value, dtype=None):
    del f[key]
    f.create_dataset(key, data=value, dtype=dtype)


CORRUPTIONS = {
    "fractional weight": (lambda f: _replace(f, "layer/1/weight",
                                             f["layer/1/weight"][()] + 0.5), "not integers"),
    "bias in (C, H, W)": (lambda f: _replace(f, "layer/1/bias", np.zeros((4, 8, 8))),
                          "neuron shape (x, y, c)"),
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
    # lava-dl's optimize_weight_bits divides by the largest weight: OverflowError on zeros
    "all-zero dense weight": (lambda f: _replace(f, "layer/4/weight",
                                                 f["layer/4/weight"][()] * 0), "all zero"),
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


def test_an_older_folders_network_net_is_said_to_differ_from_the_hardware_semantics(tmp_path,
                                                                                    caplog):
    """The hardware semantics recompute the NetX parameters with today's rules. A folder from
    an earlier snncc (16-bit biases, the input at the netlist's scale; no input_frac_bits in
    meta.netx) differed from its own network.net in Lava with no word (a helper: 14 of 200
    readouts); it is warned about, a fresh folder is not."""
    from snncc.backends.loihi import netlist as nl
    from snncc.backends.loihi.backend import LoihiBackend
    from snncc.backends.loihi.simulator import simulate
    from snncc.context import CompileContext, CompileOptions

    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    LoihiBackend().emit(sequential(), ctx, tmp_path / "out")
    net = nl.load(tmp_path / "out")
    x = np.random.default_rng(0).random((2, *net.groups[0].shape))
    with caplog.at_level("WARNING"):
        simulate(net, x, semantics="hardware")
        simulate(net, x)
    assert "earlier snncc" not in caplog.text
    del net.meta["netx"]["input_frac_bits"]
    with caplog.at_level("WARNING"):
        simulate(net, x, semantics="hardware")
    assert "written by an earlier snncc" in caplog.text


def test_hardware_semantics_past_network_net_are_said(tmp_path, capsys):
    """--help promised 'as network.net deploys them, bit-equal to Lava', yet a GN folder (no
    network.net) or a residual net's prefix ran the whole net under stock rules with no word."""
    from snncc.backends.loihi.backend import LoihiBackend
    from snncc.cli import main
    from snncc.context import CompileContext, CompileOptions

    ctx = CompileContext(CompileOptions(target="loihi", timesteps=4))
    LoihiBackend().emit(sequential("GroupNeuron", tau=4), ctx, tmp_path / "gn")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 2, 8, 8), dtype=np.float32))
    args = ["run", str(tmp_path / "gn"), "--input", str(tmp_path / "x.npy")]
    assert main([*args, "--semantics", "hardware"]) == 0
    assert "no network.net; the hardware semantics run every layer" in capsys.readouterr().err
    assert main(args) == 0 and "note:" not in capsys.readouterr().err


def test_a_dense_layer_whose_weights_round_to_zero_is_not_exported(tmp_path):
    """Weights x 1e-7 round to 0 in 8 bits: the layer went into network.net and real Lava's
    reader crashed on it (OverflowError in optimize_weight_bits); check_netx passed it."""
    from onnx import numpy_helper

    model = sequential()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1e-7), w.name))
    net, info = exported(model, tmp_path / "a.net")
    reasons = {d["group"]: d["reason"] for d in info["not_exported"]}
    assert "round to 0" in reasons[net.groups[-1].name], reasons
    assert check_netx(tmp_path / "a.net") == []
