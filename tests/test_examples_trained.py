"""The bundled trained example nets (examples/trained_models.json) load, are small, and their ANN
reproduces the recorded test accuracy exactly under onnxruntime on the bundled test split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import session

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MANIFEST = json.loads((EXAMPLES / "trained_models.json").read_text())


def test_manifest_lists_the_four_trained_nets():
    assert set(MANIFEST) >= {"mnist_cnn", "mnist_resnet", "digits_resnet", "digits_cnn"}
    for entry in MANIFEST.values():
        for key in ("onnx", "calib", "test"):
            path = EXAMPLES / entry[key]
            assert path.is_file(), path
            assert path.stat().st_size < 2 * 1024 * 1024, path
        assert 0.9 < entry["ann_test_acc"] <= 1.0


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_trained_net_reproduces_recorded_accuracy(name):
    entry = MANIFEST[name]
    proto = onnx.load(str(EXAMPLES / entry["onnx"]))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    ops = {n.op_type for n in proto.graph.node}
    assert "MaxPool" not in ops and "Relu" in ops

    test = np.load(EXAMPLES / entry["test"])
    x, y = test["input"], test["y"]
    np.testing.assert_array_equal(test["x"], x)
    assert len(y) == entry["test_samples"]
    (logits,) = session(proto).run(None, {"input": x})
    assert float((logits.argmax(1) == y).mean()) == entry["ann_test_acc"]

    calib = np.load(EXAMPLES / entry["calib"])["input"]
    assert calib.shape == (256,) + x.shape[1:] and calib.dtype == np.float32
    # calibration images come from the training split, never the test split
    flat_test = {row.tobytes() for row in x}
    assert not any(row.tobytes() in flat_test for row in calib)


def test_resnets_have_residual_blocks_with_1x1_shortcuts():
    for name in ("mnist_resnet", "digits_resnet"):
        proto = onnx.load(str(EXAMPLES / MANIFEST[name]["onnx"]))
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("Add") >= 2 and ops.count("Relu") >= 5, name
        assert "GlobalAveragePool" in ops
        inits = {i.name: i for i in proto.graph.initializer}
        kernels = [tuple(inits[n.input[1]].dims[2:]) for n in proto.graph.node
                   if n.op_type == "Conv" and n.input[1] in inits]
        assert (1, 1) in kernels, name
