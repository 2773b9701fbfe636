"""examples/srp_refit_probe.py: the least-squares refit behind README's SRP paragraph (issue 8).
A ridge far stronger than the data keeps the compiled weights (the bias, outside the ridge,
still refits); a normal one lowers the calibration
samples' logit error, measured through the real runtime."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))
from examples import srp_refit_probe as probe  # noqa: E402
from examples.default_table import snncc  # noqa: E402
from helpers import assert_table_script_refuses_an_input  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("srp") / "srp.onnx"
    rc, _, err = snncc(["compile", str(EXAMPLES / "mnist_cnn.onnx"), "-T", "2", "--neuron", "srp",
                        "--neuron-param", "tau=2", "--calib", str(EXAMPLES / "mnist_calib.npz"),
                        "--calib-samples", "64", "--no-fidelity", "-o", str(out), "-q"])
    assert rc == 0, err
    return onnx.load(out)


def _weights(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _error(model, x, ann_logits):
    return probe.measure(model, x, ann_logits.argmax(1), ann_logits)["rel_logit_error"]


def test_refit_moves_only_spike_fed_layers_and_lowers_the_fit_error(compiled):
    import onnxruntime as ort
    x = np.load(EXAMPLES / "mnist_calib.npz")["input"][:64].astype(np.float32)
    ann = onnx.load(EXAMPLES / "mnist_cnn.onnx")
    logits = ort.InferenceSession(ann.SerializeToString()).run(None, {"input": x})[0]
    nodes = probe.linear_nodes(compiled)
    assert [n.op_type for n in nodes] == ["Conv", "Conv", "Conv", "Gemm", "Gemm"]
    before = _weights(compiled)
    stiff = _weights(probe.refit(compiled, ann, x, 1e9, 4, 2))
    for node in nodes:   # the weights stay; the bias (not in the ridge) refits the mean
        np.testing.assert_allclose(stiff[node.input[1]], before[node.input[1]], rtol=1e-4,
                                   atol=1e-5)
    refit = probe.refit(compiled, ann, x, 0.1, 4, 2)
    after = _weights(refit)
    assert all(np.array_equal(after[n], before[n]) for n in nodes[0].input[1:3])  # the stem
    assert not np.array_equal(after[nodes[1].input[1]], before[nodes[1].input[1]])
    assert _error(refit, x, logits) < _error(compiled, x, logits)
    assert _weights(compiled).keys() == before.keys()        # the input model is left as it was
    assert all(np.array_equal(_weights(compiled)[k], v) for k, v in before.items())


def test_refuses_to_write_over_an_input(capsys):
    assert_table_script_refuses_an_input(probe.main, ["--seeds", "1", "--nets", "mnist_cnn"],
                                         EXAMPLES / "mnist_test.npz", capsys)
