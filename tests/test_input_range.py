"""Inputs on another scale than the calibration samples: compile keeps their range with the model,
and `snncc run` / run_compiled warn when a run's inputs are off it.

A user's trained digits CNN calibrated on ``x * 255`` and run on ``x`` gave 8.6 % (ANN 98.2 %)
after a compile that reported 100 % agreement: the held-out samples were on the same wrong scale.
Uses the bundled *trained* MNIST CNN.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc import input_range
from snncc.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = EXAMPLES / "mnist_cnn.onnx"


def _mnist():
    calib = np.load(EXAMPLES / "mnist_calib.npz")
    test = np.load(EXAMPLES / "mnist_test.npz")
    return calib[list(calib.keys())[0]], test["x"], test["y"]


def test_scales_that_users_get_wrong_are_flagged_and_the_test_split_is_not():
    x, test, _ = _mnist()
    stored = input_range.parse(json.dumps(input_range.summarize({"x": x})))
    assert input_range.mismatches(stored, {"x": test}) == []
    # every single test image, as `snncc run` on one sample sees it
    assert not any(input_range.mismatches(stored, {"x": test[i:i + 1]}) for i in range(0, 1000, 7))
    assert not input_range.mismatches(stored, {"x": np.zeros_like(test[:1])})   # a blank image
    for wrong, words in ((test * 255, "wider"), (test / 255, "narrower"),
                         ((test - test.mean()) / test.std(), "wider"),
                         (test - 0.5, "standard deviations away")):
        found = input_range.mismatches(stored, {"x": wrong})
        assert len(found) == 1 and words in found[0] and "input 'x'" in found[0]
    assert input_range.mismatches(stored, {"other": test * 255}) == []   # another input: no claim
    # fewer than FEW_SAMPLES samples (a photo's brightness varies far more than a data set's):
    # only a gross scale error counts, a normalised single image does not
    assert "larger than" in input_range.mismatches(stored, {"x": test[:1] * 255})[0]
    assert "smaller than" in input_range.mismatches(stored, {"x": test[:1] / 255})[0]
    one = (test[:1] - test.mean()) / test.std()
    assert input_range.mismatches(stored, {"x": one}) == []
    assert input_range.parse("not json") == {} and input_range.parse(None) == {}


@pytest.mark.requires_runtime
def test_a_model_calibrated_on_another_scale_warns_at_run_time(tmp_path, capsys, caplog):
    x, test, y = _mnist()
    np.save(tmp_path / "calib255.npy", x * 255)
    np.savez(tmp_path / "test.npz", x=test[:200], y=y[:200])
    np.savez(tmp_path / "test255.npz", x=test[:200] * 255, y=y[:200])
    out = tmp_path / "m.snn.onnx"
    assert main(["compile", str(MODEL), "-T", "4", "--neuron", "mt", "--calib",
                 str(tmp_path / "calib255.npy"), "-o", str(out), "-q"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    stored = json.loads(meta[input_range.METADATA_KEY])
    (name, entry), = stored.items()
    assert entry["samples"] > 0 and entry["std"] == pytest.approx(x[:entry["samples"]].std() * 255,
                                                                   rel=1e-4)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="snncc.run"):
        assert main(["run", str(out), "--input", str(tmp_path / "test.npz")]) == 0
    assert any("narrower than the calibration samples" in r.getMessage()
               and "preprocess these inputs" in r.getMessage() for r in caplog.records)
    assert float(capsys.readouterr().out.split("accuracy: ")[1].split()[0]) < 0.5
    from snncc.simulate import run_compiled   # the API: the same words in RunResult.warnings
    run = run_compiled(out, test[:64])
    assert len(run.warnings) == 1 and "narrower than the calibration samples" in run.warnings[0]
    assert run_compiled(out, test[:64] * 255).warnings == []
    one = run_compiled(out, test[:1])   # one sample: the gross scale error is still said
    assert len(one.warnings) == 1 and "smaller than the calibration samples" in one.warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snncc.run"):
        assert main(["run", str(out), "--input", str(tmp_path / "test255.npz")]) == 0
    assert not [r for r in caplog.records if "calibration samples" in r.getMessage()]
    acc = float(capsys.readouterr().out.split("accuracy: ")[1].split()[0])
    assert acc >= 0.9   # on the scale it was calibrated for, the SNN is fine


@pytest.mark.requires_runtime
def test_the_loihi_netlist_keeps_the_range_and_run_warns(tmp_path, caplog):
    x, test, y = _mnist()
    np.save(tmp_path / "calib.npy", x[:96])
    np.savez(tmp_path / "test255.npz", x=test[:8] * 255, y=y[:8])
    out = tmp_path / "m.loihi"
    assert main(["compile", str(MODEL), "-T", "4", "--calib", str(tmp_path / "calib.npy"),
                 "--target", "loihi", "--no-fidelity", "-o", str(out), "-q"]) == 0
    with caplog.at_level(logging.WARNING, logger="snncc.run"):
        assert main(["run", str(out), "--input", str(tmp_path / "test255.npz")]) == 0
    assert any("larger than the calibration samples" in r.getMessage() for r in caplog.records)
