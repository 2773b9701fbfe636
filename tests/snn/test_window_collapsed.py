"""The window-collapsed schedule (``--schedule window``, bit-serial's default under ``auto``).

Linear ops between a neuron and a consumer that sees only its window-mean current
(``NeuronSpec.window_mean_driven``: bit-serial, any neuron at one slice) run once on the decoded
value instead of once per slice. Each neuron still emits its whole spike train, so spike counts
are those of the folded schedule. Exactness:

* tiny nets with dyadic weights, inputs and lambda/L (tests/snn/__init__.py): every float32 sum is
  exact, so outputs and spike counts equal the folded schedule's bit for bit (array_equal);
* the trained MNIST CNN: the decoded mean is computed in another summation order than the
  folded per-slice sums (sum_t W y_t + b vs W mean_t(y_t) + b), so the logits agree to float32
  rounding (1e-5 relative), and the spike counts per layer agree exactly on the test images (a
  level q could only change where a current lies within rounding of a quantisation step).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import op_types
from snn import compile_snn, deep_net, feeds, maxpool_net, options, residual_net

from snncc.ir import SNN_DOMAIN, node_attrs
from snncc.neurons import get_neuron
from snncc.simulate import run_compiled

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NETS = {"deep": deep_net, "residual": residual_net, "maxpool": maxpool_net}


def _meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _both(model: onnx.ModelProto, neuron: str, T: int, schedule: str = "auto"):
    folded, _, _ = compile_snn(model, options(neuron, T, schedule="folded"))
    window, report, ctx = compile_snn(model, options(neuron, T, schedule=schedule))
    return folded, window, report, ctx


def _assert_same_run(folded, window, x, *, library: bool = False):
    a = run_compiled(folded, x, use_library=library, optimize=False)
    b = run_compiled(window, x, use_library=library, optimize=False)
    assert a.outputs.keys() == b.outputs.keys()
    for k in a.outputs:
        np.testing.assert_array_equal(b.outputs[k], a.outputs[k])
    assert b.spikes_per_layer == a.spikes_per_layer
    assert b.events_per_layer == a.events_per_layer
    assert sum(a.spikes_per_layer.values()) > 0


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("T, phi", [(2, 0.5), (3, 0.0), (4, 0.0)])
def test_bitserial_window_equals_folded_exactly(net, T, phi):
    levels = 2 ** T - 1
    model = NETS[net](lam=levels / 2, levels=levels, phi=phi)
    folded, window, report, ctx = _both(model, "bitserial", T)
    assert ctx.notes["schedule"]["schedule"] == "window" and _meta(window)["snncc.schedule"] == \
        "window"
    assert _meta(folded)["snncc.schedule"] == "folded"
    assert report.rows[-1].counts["collapsed"] == 3  # every neuron decoded where it fires
    # the linear ops run once: no Tile, no decode ops, and no Conv/Gemm/Add reads a spike train
    assert "Tile" not in op_types(window) and "MatMul" not in op_types(window)
    # every neuron gets the window-mean current and writes its window mean itself (decoded=1:
    # q * unit, one row per sample) instead of its T bit slices
    for n in window.graph.node:
        if n.domain == SNN_DOMAIN:
            attrs = node_attrs(n)
            assert (attrs["T"], attrs["const_input"], attrs["decoded"]) == (T, 1, 1)
    assert report.rows[-1].counts["decoded_by_neuron"] == 3
    x = feeds(model, batch=5, scale=2.0)
    _assert_same_run(folded, window, x)


@pytest.mark.requires_runtime
@pytest.mark.parametrize("net", ["deep", "residual"])
def test_bitserial_window_equals_folded_with_the_kernels(net):
    model = NETS[net](lam=7.5, levels=15, phi=0.0)
    folded, window, _, _ = _both(model, "bitserial", 4)
    _assert_same_run(folded, window, feeds(model, batch=5, scale=2.0), library=True)


@pytest.mark.parametrize("neuron, T, levels", [("if", 4, 4), ("srp", 2, 2)])
def test_auto_keeps_folded_for_neurons_that_need_the_train(neuron, T, levels):
    """IF/SRP spikes depend on when current arrives: auto must keep the folded graph."""
    model = deep_net(lam=2.0, levels=levels)
    folded, auto, _, ctx = _both(model, neuron, T)
    assert ctx.notes["schedule"]["schedule"] == "folded"
    assert op_types(auto) == op_types(folded)
    assert not get_neuron(neuron).window_mean_driven(T, {"tau": 1})


def test_explicit_window_collapses_only_the_exact_part_for_if():
    """--schedule window with IF neurons: only the tail after the last neuron (GAP, Gemm: decoded
    over the counted slices anyway) runs once; the layers between IF neurons keep the train."""
    model = deep_net(lam=2.0, levels=4)
    folded, window, report, _ = _both(model, "if", 4, schedule="window")
    assert report.rows[-1].counts["collapsed"] == 1
    assert op_types(window).count("Tile") == op_types(folded).count("Tile")
    _assert_same_run(folded, window, feeds(model, batch=4))


def test_window_mean_driven_is_a_registry_property():
    assert get_neuron("bitserial").window_mean_driven(4, {})
    for key in ("if", "lif", "mt", "gn"):
        spec = get_neuron(key)
        assert spec.window_mean_driven(1, {}) == (spec.total_steps(1, {}) == 1)
        assert not spec.window_mean_driven(4, {"tau": 2})


@pytest.fixture(scope="module")
def mnist_pair(tmp_path_factory):
    from snncc.driver import compile_model, make_options

    d = tmp_path_factory.mktemp("window")
    out = {}
    for schedule in ("folded", "auto"):
        out[schedule] = d / f"{schedule}.onnx"
        compile_model(str(EXAMPLES / "mnist_cnn.onnx"), out[schedule], make_options(
            target="ort", timesteps=4, neuron="bitserial", schedule=schedule,
            calib_path=str(EXAMPLES / "mnist_calib.npz"), calib_method="mse",
            fidelity_samples=0))   # all 256 calibrate (no value on a floor edge there)
    return out


def test_trained_mnist_cnn_window_matches_folded(mnist_pair):
    data = np.load(EXAMPLES / "mnist_test.npz")
    x, y = data["x"][:200].astype(np.float32), data["y"][:200]
    auto = onnx.load(str(mnist_pair["auto"]))
    assert _meta(auto)["snncc.schedule"] == "window"
    a = run_compiled(str(mnist_pair["folded"]), x, use_library=False)
    b = run_compiled(auto, x, use_library=False)
    [k] = a.outputs
    scale = np.abs(a.outputs[k]).max()
    np.testing.assert_allclose(b.outputs[k], a.outputs[k], rtol=0, atol=1e-5 * scale)
    assert (b.outputs[k].argmax(1) == a.outputs[k].argmax(1)).all()
    assert (a.outputs[k].argmax(1) == y).mean() > 0.95
    assert b.spikes_per_layer == a.spikes_per_layer      # popcount of q, layer by layer
    assert b.events_per_layer == a.events_per_layer
    assert len(b.spikes_per_layer) == 4


def test_cli_default_is_auto_and_folded_keeps_the_t_fold_graph(tmp_path, capsys):
    import json

    from snncc.cli import main

    base = ["compile", str(EXAMPLES / "mnist_cnn.onnx"), "-T", "2", "--neuron", "bitserial",
            "--calib", str(EXAMPLES / "mnist_calib.npz"), "--calib-method", "max", "-q"]
    for extra, want in (([], "window"), (["--schedule", "folded"], "folded")):
        out = tmp_path / f"{want}.onnx"
        assert main([*base, *extra, "-o", str(out)]) == 0
        manifest = json.loads(out.with_name(out.name + ".json").read_text())
        assert manifest["schedule"] == want
        assert _meta(onnx.load(str(out)))["snncc.schedule"] == want
    ops = {k: op_types(onnx.load(str(tmp_path / f"{k}.onnx"))) for k in ("window", "folded")}
    assert ops["window"].count("Conv") == ops["folded"].count("Conv") == 3
    assert "ReduceMean" in ops["folded"] and "MatMul" not in ops["window"]
    assert ops["window"].count("BitSerialNeuron") == ops["folded"].count("BitSerialNeuron") == 4
