"""examples/quantization_bound.py: the quantized-ANN reference behind README's SRP paragraph
(issue 8). The torch nets it builds are the trained ONNX nets (checked against onnxruntime), its
quantizer is QCFS's clip-floor, and a site left out is a plain ReLU."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))
from examples import quantization_bound as probe  # noqa: E402
from examples.default_table import select_nets  # noqa: E402
from helpers import assert_table_script_refuses_an_input  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def nets():
    import argparse
    return select_nets(argparse.ArgumentParser(), None)


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_resnet", "digits_cnn", "digits_resnet"])
def test_the_torch_net_is_the_onnx_net(nets, name):
    import onnxruntime as ort
    net = nets[name]
    x = np.load(net["test_path"])["x"][:16].astype(np.float32)
    session = ort.InferenceSession(str(net["onnx_path"]))
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = probe.torch_net(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_quantizer_is_qcfs_clip_floor_per_channel_and_inactive_sites_are_relu(nets):
    module = probe.torch_net(nets["digits_cnn"])
    quant = probe.Quant(module, levels=4)
    assert len(quant.sites) == 4
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(0, 1, (2, 3, 4, 5)).astype(np.float32))
    lam = np.array([1.0, 2.0, 0.5], np.float32)                 # lam / L = 0.25, 0.5, 0.125
    bias = np.array([0.0, 0.25, -0.125], np.float32)
    quant.params[0] = (torch.from_numpy(np.log(lam)), torch.from_numpy(bias))
    quant.active = {0}
    step = (lam / 4)[None, :, None, None]
    want = np.clip(np.floor((z.numpy() + bias[None, :, None, None]) / step + 0.5), 0, 4) * step
    np.testing.assert_allclose(quant.sites[0](z).numpy(), want, rtol=1e-6, atol=1e-7)
    quant.ste = True                                # the same values, and a gradient to lam, b
    params = [p.clone().requires_grad_(True) for p in quant.params[0]]
    quant.params[0] = tuple(params)
    out = quant.sites[0](z)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-6, atol=1e-7)
    out.sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)
    quant.ste = False
    quant.active = set()
    np.testing.assert_array_equal(quant.sites[0](z).numpy(), np.maximum(z.numpy(), 0))


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_resnet"])
def test_one_site_per_onnx_relu_each_called_once_in_order(nets, name):
    import onnx
    module = probe.torch_net(nets[name])
    quant = probe.Quant(module, levels=4)
    relus = [n for n in onnx.load(nets[name]["onnx_path"]).graph.node if n.op_type == "Relu"]
    assert len(quant.sites) == len(relus)
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
             for k, m in enumerate(quant.sites)]
    with torch.no_grad():
        module(torch.zeros(2, *np.load(nets[name]["test_path"])["x"].shape[1:]))
    for h in hooks:
        h.remove()
    assert calls == list(range(len(relus)))


def test_one_set_reports_every_site_and_a_fine_quantizer_keeps_the_ann(nets):
    net = nets["digits_cnn"]
    test = np.load(net["test_path"])
    x, y = torch.from_numpy(test["x"].astype(np.float32)), test["y"]
    calib = np.load(net["calib_path"])["input"][:64].astype(np.float32)
    module = probe.torch_net(net)
    with torch.no_grad():
        ann = float((module(x).argmax(1).numpy() == y).mean())
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    row = probe.one_set(module, calib, x, y, levels=4, steps=2)
    assert set(row) == {"mse", "e2e", "mse_ann", "alone"} and len(row["alone"]) == 4
    assert all(0.5 < a <= 1 for a in [row["mse"], row["e2e"], row["mse_ann"], *row["alone"]])
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in weights.items())
    assert all(p.requires_grad for p in module.parameters())     # as they were
    fine = probe.one_set(module, calib, x, y, levels=4096, steps=0)
    # 4096 levels: the ANN, within an image
    for a in [fine["mse"], fine["e2e"], fine["mse_ann"], *fine["alone"]]:
        assert abs(a - ann) <= 1 / len(y) + 1e-9


def test_refuses_to_write_over_an_input(capsys):
    assert_table_script_refuses_an_input(probe.main, ["--seeds", "1", "--nets", "digits_cnn"],
                                         EXAMPLES / "digits_cnn_test.npz", capsys)


def test_the_committed_table_is_its_json_and_quotes_the_spread_run():
    """results/quantization_bound.md is the script's rendering of its JSON, and its SRP column is
    calibration_spread.json's SRP T = 4 row (bundled, then the drawn sets) for every net."""
    import json
    results = EXAMPLES / "results"
    data = json.loads((results / "quantization_bound.json").read_text())
    assert (results / "quantization_bound.md").read_text() == probe.markdown(data)
    spread = json.loads((results / "calibration_spread.json").read_text())["nets"]
    assert set(data["nets"]) == set(spread)
    for name, net in data["nets"].items():
        row = next(r for r in spread[name]["rows"] if r["neuron"] == "srp" and r["T"] == 4)
        assert net["srp"] == [row["bundled"], *row["drawn"]]
        assert len(net["rows"]) == len(net["srp"]) == 6     # the bundled set and five drawn
