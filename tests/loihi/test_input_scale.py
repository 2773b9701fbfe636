"""Loihi fixed point on nets that compute the same function at another scale.

A hardware user's trial: the same trained net with its input in 0..255 (a Mul by 1/255 inside) went
from 96.4 / 89.8 % (emulated / hardware semantics) to 67.0 / 11.2 %: the first block's weights,
folded with 8 input fraction bits, sat below the smallest weight exponent and 35 of 72 rounded to
0. And an MLP with one layer scaled by 1000 (the next by 1/1000) fell from 91.4 to 8.6 %: its dead
channels kept lambda 1.0 beside live ones near 3383, and the block's one exponent zeroed 94 % of
its weights. Both use the bundled trained MNIST CNN (ANN 98.6 %).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snncc.backends.loihi.simulator import run_netlist
from snncc.driver import compile_model, make_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.requires_runtime


def _data():
    calib = np.load(EXAMPLES / "mnist_calib.npz")["input"][:96]
    test = np.load(EXAMPLES / "mnist_test.npz")
    return calib, test["x"][:128], test["y"][:128]


def _quant(out: Path) -> dict:
    return json.loads((out / "netlist.json").read_text())["meta"]["quantization"]


def _accuracy(out: Path, x: np.ndarray, y: np.ndarray) -> float:
    outputs, _ = run_netlist(out, x)
    return float((next(iter(outputs.values())).argmax(1) == y).mean())


def _compile(model: Path, calib: np.ndarray, out: Path) -> None:
    np.save(out.with_suffix(".npy"), calib)
    compile_model(model, out, make_options(target="loihi", timesteps=4, fidelity_samples=0,
                                           calib_path=str(out.with_suffix(".npy"))))


def _scaled_net(path: Path, factor: float) -> Path:
    """The MNIST CNN behind a Mul by 1 / factor: the same function of inputs ``x * factor``."""
    m = onnx.load(str(EXAMPLES / "mnist_cnn.onnx"))
    m.graph.node[0].input[0] = "input_scaled"
    m.graph.initializer.append(numpy_helper.from_array(np.array(1 / factor, np.float32), "s"))
    m.graph.node.insert(0, helper.make_node("Mul", ["input", "s"], ["input_scaled"]))
    onnx.save(m, str(path))
    return path


def test_an_input_in_0_to_255_gets_fewer_input_fraction_bits(tmp_path):
    calib, x, y = _data()
    _compile(_scaled_net(tmp_path / "raw255.onnx", 255.0), calib * 255, tmp_path / "raw.loihi")
    _compile(EXAMPLES / "mnist_cnn.onnx", calib, tmp_path / "plain.loihi")
    raw, plain = _quant(tmp_path / "raw.loihi"), _quant(tmp_path / "plain.loihi")
    assert plain["fixed_point"]["input_frac_bits"] == 8           # inputs within 1: as before
    assert raw["fixed_point"]["input_frac_bits"] < 8
    assert raw["weights"][0]["zeroed"] == 0 == plain["weights"][0]["zeroed"]
    acc_raw = _accuracy(tmp_path / "raw.loihi", x * 255, y)
    assert acc_raw >= 0.95 and abs(acc_raw - _accuracy(tmp_path / "plain.loihi", x, y)) <= 0.03


def test_a_layer_scaled_by_1000_with_a_dead_channel_keeps_its_weights(tmp_path):
    calib, x, y = _data()
    m = onnx.load(str(EXAMPLES / "mnist_cnn.onnx"))
    inits = {i.name: i for i in m.graph.initializer}

    def scale(name, f, dead=False):
        a = numpy_helper.to_array(inits[name]).copy() * f
        if dead:
            a[0] = -1e7        # BN beta of channel 0: never positive, its weights kept
        inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))

    scale("features.2.1.weight", 1000.0)
    scale("features.2.1.bias", 1000.0, dead=True)
    scale("features.4.0.weight", 1e-3)
    onnx.save(m, str(tmp_path / "x1000.onnx"))
    _compile(tmp_path / "x1000.onnx", calib, tmp_path / "x1000.loihi")
    weights = _quant(tmp_path / "x1000.loihi")["weights"]
    assert all(w["zeroed"] <= 0.4 * w["nonzero"] for w in weights)   # the dense block: 38 %
    assert _accuracy(tmp_path / "x1000.loihi", x, y) >= 0.95


def test_a_huge_input_keeps_its_payload_within_24_bits(tmp_path):
    """Inputs up to 1e6: the payload round(x * 2**bits) must stay below 2**23 (the 16-bit inputs of
    the trial were clipped in 69 % of their non-zero pixels before)."""
    calib, x, y = _data()
    _compile(_scaled_net(tmp_path / "big.onnx", 1e6), calib * 1e6, tmp_path / "big.loihi")
    q = _quant(tmp_path / "big.loihi")
    assert 1e6 * 2.0 ** q["fixed_point"]["input_frac_bits"] <= 2 ** 23 - 1
    assert q["weights"][0]["zeroed"] == 0
    assert _accuracy(tmp_path / "big.loihi", x * 1e6, y) >= 0.95
