"""examples/quantization_bound.py: the quantized-ANN bound behind README's SRP paragraph (issue 8).
The torch nets it builds are the trained ONNX nets (checked against onnxruntime), its quantizer is
QCFS's clip-floor, and a site left out is a plain ReLU."""
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


def test_the_quantizer_is_qcfs_clip_floor_and_inactive_sites_are_relu(nets):
    module = probe.torch_net(nets["digits_cnn"])
    quant = probe.Quant(module, levels=4)
    assert len(quant.sites) == 4
    z = torch.tensor([[-1.0, 0.0, 0.12, 0.13, 0.37, 0.38, 0.99, 1.5]])
    quant.params[0] = (torch.zeros(8), torch.zeros(8))       # lam = 1, no bias
    quant.active = {0}
    lam_l = 0.25
    want = np.clip(np.floor(z.numpy() / lam_l + 0.5), 0, 4) * lam_l
    np.testing.assert_array_equal(quant.sites[0](z).numpy(), want)
    quant.params[0] = (torch.zeros(8), torch.full((8,), 0.25))   # a bias shifts the current
    np.testing.assert_array_equal(quant.sites[0](z).numpy(),
                                  np.clip(np.floor((z.numpy() + 0.25) / lam_l + 0.5), 0, 4) * lam_l)
    quant.active = set()
    np.testing.assert_array_equal(quant.sites[0](z).numpy(), np.maximum(z.numpy(), 0))


def test_one_set_reports_every_site_and_a_fine_quantizer_keeps_the_ann(nets):
    net = nets["digits_cnn"]
    test = np.load(net["test_path"])
    x, y = torch.from_numpy(test["x"].astype(np.float32)), test["y"]
    calib = np.load(net["calib_path"])["input"][:64].astype(np.float32)
    module = probe.torch_net(net)
    with torch.no_grad():
        ann = float((module(x).argmax(1).numpy() == y).mean())
    row = probe.one_set(module, calib, x, y, levels=4, steps=2)
    assert set(row) == {"mse", "e2e", "alone"} and len(row["alone"]) == 4
    assert all(0.5 < a <= 1 for a in [row["mse"], row["e2e"], *row["alone"]])
    fine = probe.one_set(module, calib, x, y, levels=4096, steps=0)
    assert abs(fine["mse"] - ann) <= 1 / len(y) + 1e-9      # 4096 levels: the ANN, within an image


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
