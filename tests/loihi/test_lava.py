"""The NetX file in real Lava: its readout equals ``snncc run DIR --semantics hardware`` bit for bit.

Runs whenever the Lava environment of ``scripts/lava_env.sh`` exists (``.venv-lava/`` or the
interpreter named by ``SNNCC_LAVA_PYTHON``); skipped otherwise. The network is the bundled trained
MNIST CNN (a VGG-style IF network, T = 4) compiled as a user would; a handful of test images run
in Lava's CPU simulation with the bit-accurate fixed-point models (``examples/lava/run_netx.py``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
LAVA_PY = Path(os.environ.get("SNNCC_LAVA_PYTHON", ROOT / ".venv-lava" / "bin" / "python"))
SAMPLES = 6

pytestmark = pytest.mark.skipif(not LAVA_PY.is_file(),
                                reason=f"no Lava environment at {LAVA_PY} "
                                       "(build it with: bash scripts/lava_env.sh)")


def _lava_equals_hardware(net, netx_file: Path, layers: list[str], x: np.ndarray, tmp: Path,
                          kind: str) -> None:
    """Run ``netx_file`` (holding the netlist groups ``layers``) in real Lava on ``x`` and compare
    its last layer (a group of ``kind``) with ``simulate(net, x, semantics="hardware")`` bit for
    bit."""
    from snncc.backends.loihi.simulator import simulate

    np.save(tmp / "x.npy", x)
    subprocess.run([str(LAVA_PY), str(ROOT / "examples" / "lava" / "run_netx.py"),
                    str(netx_file), str(tmp / "x.npy"), str(tmp / "l.npy")],
                   check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    last = net.group(layers[-1])
    raw = simulate(net, x, semantics="hardware").raw[last.name].reshape(len(x), -1)
    assert last.kind == kind and np.any(raw != 0)
    np.testing.assert_array_equal(np.load(tmp / "l.npy"), raw)


def _snncc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncc", *args], capture_output=True, text=True,
                          check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lava")
    out = tmp / "mnist_if_t4"
    _snncc("compile", "examples/mnist_cnn.onnx", "--calib", "examples/mnist_calib.npz", "-T",
           "4", "--neuron", "if", "--target", "loihi", "--no-fidelity", "-q", "-o", str(out))
    test = np.load(ROOT / "examples" / "mnist_test.npz")
    x = test["x"][:SAMPLES].astype(np.float32)
    np.save(tmp / "x.npy", x)
    lava_out = tmp / "lava.npy"
    subprocess.run([str(LAVA_PY), str(ROOT / "examples" / "lava" / "run_netx.py"),
                    str(out / "network.net"), str(tmp / "x.npy"), str(lava_out)],
                   check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    return out, tmp, x, np.load(lava_out)


def test_lava_readout_equals_the_hardware_simulation_bit_for_bit(exported):
    from snncc.backends.loihi import netlist as nl
    from snncc.backends.loihi.simulator import decode_voltage, simulate

    out, tmp, x, lava = exported
    net = nl.load(out)
    netx = net.meta["netx"]
    assert netx["layers"] == [g.name for g in net.groups[1:]]   # the whole network in NetX
    readout = net.group(netx["layers"][-1])
    assert readout.kind == "readout" and lava.shape == (SAMPLES, 10) and lava.dtype == np.int64
    # the file sends the input with fewer fraction bits than the netlist, so that the first
    # layer's biases fit the chip's 13-bit mantissa: the runner reads that from the file
    from snncc.backends.loihi.netx import netx_input_shift
    assert netx_input_shift(net) > 0
    sim = simulate(net, x, semantics="hardware")
    np.testing.assert_array_equal(sim.raw[readout.name].reshape(SAMPLES, -1), lava)
    assert np.any(lava != 0)
    # the decoded Lava readout is exactly what `snncc run DIR --semantics hardware` reports
    _snncc("run", str(out), "--input", str(tmp / "x.npy"), "--semantics", "hardware", "-o",
           str(tmp / "hw.npz"))
    hw = np.load(tmp / "hw.npz")["outputs"]
    decoded = decode_voltage(net, readout, lava).reshape(hw.shape).astype(np.float32)
    np.testing.assert_array_equal(hw, decoded)
    emulated = simulate(net, x).outputs[net.outputs[0]["name"]]
    assert not np.array_equal(hw, emulated)    # the semantics do differ ...
    assert (hw.argmax(1) == emulated.argmax(1)).mean() >= 0.5   # ... but not wildly


def test_a_residual_nets_netx_piece_runs_in_lava_with_snnccs_unit_order(tmp_path):
    """A ResNet's NetX file holds its sequential first layers only (NetX layers are sequential);
    real Lava runs that piece, and its spike counts, reordered from Lava's (x, y, c) into
    snncc's (C, H, W), equal the hardware simulation's bit for bit (they came back in Lava's
    order, so no unit matched)."""
    from snncc.backends.loihi import netlist as nl

    out = tmp_path / "digits_resnet"
    _snncc("compile", "examples/digits_resnet.onnx", "--calib", "examples/digits_resnet_calib.npz",
           "-T", "4", "--neuron", "if", "--target", "loihi", "--no-fidelity", "-q", "-o", str(out))
    net = nl.load(out)
    netx = net.meta["netx"]
    assert 0 < len(netx["layers"]) < len(net.groups) - 1    # a piece, and it says so
    x = np.load(ROOT / "examples" / "digits_resnet_test.npz")["x"][:4].astype(np.float32)
    _lava_equals_hardware(net, out / "network.net", netx["layers"], x, tmp_path, "neuron")


def test_a_1d_nets_netx_file_runs_in_lava_bit_for_bit(tmp_path):
    """A 1-D net ([N, C, L] maps, Conv1d kernels) is written as its (C, L, 1) view with (k, 1)
    kernels; real Lava runs the whole file and its readout equals the hardware simulation's."""
    from loihi import Graph, dyadic_input
    from snncc.backends.loihi.lowering import lower
    from snncc.backends.loihi.netx import write_netx
    from snncc.backends.loihi.quantize import quantize

    g = Graph((2, 16))
    s1 = g.neuron(g.op("Conv", ["x", g.const(g.dyadic((4, 2, 3))), g.const(g.dyadic((4,), 0.25))],
                       kernel_shape=[3], pads=[1, 1]))
    s2 = g.neuron(g.op("Conv", [s1, g.const(g.dyadic((6, 4, 5)))], kernel_shape=[5], pads=[2, 2],
                       strides=[2]))
    net = lower(g.model(g.gemm(g.op("Flatten", [s2], axis=1), 6 * 8, 5)), 4)
    quantize(net)
    info = write_netx(net, tmp_path / "network.net")
    assert info["layers"] == [grp.name for grp in net.groups[1:]]
    _lava_equals_hardware(net, tmp_path / "network.net", info["layers"],
                          dyadic_input((4, 2, 16), seed=3), tmp_path, "readout")


def test_a_flat_input_reshaped_into_a_map_runs_in_lava_bit_for_bit(tmp_path):
    """[N, 64] reshaped to [N, 1, 8, 8] in the graph: network.net's input layer is the map
    (1, 8, 8), fed the flat C-order input; real Lava equals the hardware simulation."""
    from loihi import dyadic_input
    from loihi.test_input_reshape import net
    from snncc.backends.loihi.lowering import lower
    from snncc.backends.loihi.netx import write_netx
    from snncc.backends.loihi.quantize import quantize

    lowered = lower(net(True), 4)
    quantize(lowered)
    info = write_netx(lowered, tmp_path / "network.net")
    _lava_equals_hardware(lowered, tmp_path / "network.net", info["layers"],
                          dyadic_input((4, 64), seed=5), tmp_path, "readout")


def test_a_dense_first_layer_far_out_of_range_wraps_as_lava_does(tmp_path):
    """Lava shifts a layer's synaptic input left by 6 in int32 before its 24-bit wrap: a dense
    layer fed by the analog input at 1e4 x its scale passes 2**25 NetX units there, and the
    simulator, shifting in int64, had let such a neuron fire where Lava's current turned
    negative (a helper's MLP: 80 of 80 readouts differed). Conv layers clamp to 24 bits first."""
    from loihi import Graph, dyadic_input
    from snncc.backends.loihi.lowering import lower
    from snncc.backends.loihi.netx import write_netx
    from snncc.backends.loihi.quantize import quantize
    from snncc.backends.loihi.simulator import simulate

    g = Graph((64,))
    s1 = g.neuron(g.gemm("x", 64, 16))
    net = lower(g.model(g.gemm(s1, 16, 5)), 4)
    quantize(net)
    info = write_netx(net, tmp_path / "network.net")
    x = dyadic_input((4, 64), seed=7) * np.float32(2e4)
    assert simulate(net, x, semantics="hardware").wraps > 0
    _lava_equals_hardware(net, tmp_path / "network.net", info["layers"], x, tmp_path, "readout")
