"""examples/calibration_spread.py: the table judges issue 8's targets on the mean over the drawn
calibration sets (synthetic numbers; the real run takes about 10 minutes)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))
from examples import calibration_spread as spread  # noqa: E402
from helpers import assert_table_script_refuses_an_input  # noqa: E402


def _data(rows):
    return {"command": "python examples/calibration_spread.py", "snncc_version": "0", "seeds": 3,
            "git_commit": "abc", "date": "today", "seconds": 1.0,
            "nets": {"toy": {"onnx": "toy.onnx", "arch": "Toy()", "test_samples": 1000,
                             "ann_test_acc": 0.980, "rows": rows}}}


def _row(text, neuron, t):
    return next(line for line in text.splitlines() if line.startswith(f"| {neuron} | {t} |"))


def test_verdicts_use_the_mean_gap_and_the_issue_limits():
    rows = [
        {"neuron": "srp", "T": 4, "bundled": 0.970, "drawn": [0.978, 0.977, 0.979]},  # -0.20
        {"neuron": "mt", "T": 4, "bundled": 0.980, "drawn": [0.976, 0.976, 0.976]},   # -0.40
        {"neuron": "if", "T": 4, "bundled": 0.950, "drawn": [0.950, 0.950, None]},    # reported
        {"neuron": "if", "T": 8, "bundled": 0.975, "drawn": [0.972, 0.972, 0.972]},   # -0.80
    ]
    text = spread.markdown(_data(rows))
    srp = _row(text, "srp", 4)
    assert "| 97.0 | 97.8 | 97.7 | 97.9 | -0.20 | met |" in srp
    assert _row(text, "mt", 4).endswith("| -0.40 | missed |")
    assert _row(text, "if", 4).endswith("| -3.00 | (report) |")   # a failed compile is skipped
    assert _row(text, "if", 8).endswith("| -0.80 | met |")
    assert "one image = 0.10 pt" in text


def test_refuses_to_write_over_an_input(capsys):
    """One usage error (exit 2, the code, no traceback), before any work."""
    assert_table_script_refuses_an_input(spread.main, ["--seeds", "1", "--nets", "mnist_cnn"],
                                         EXAMPLES / "mnist_test.npz", capsys)


@pytest.mark.parametrize("rc", [130, 143])
def test_a_ctrl_c_stops_the_table_scripts(monkeypatch, rc):
    """snncc's main() returns 130 / 143 for Ctrl-C / SIGTERM: the table scripts had gone on and
    written a table with an 'exit 130' cell over the committed one (a bit-rot check)."""
    from examples import default_table

    monkeypatch.setattr(default_table, "snncc_main", lambda argv: rc)
    with pytest.raises(KeyboardInterrupt):
        default_table.snncc(["inspect", "m.onnx"])
