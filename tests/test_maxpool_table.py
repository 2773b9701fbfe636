"""examples/maxpool_table.py: the table pairs gate and auto per cell, and one cell compiles and
runs through the CLI (synthetic numbers and a random-weight net: the real run trains two nets)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from examples import maxpool_table as table  # noqa: E402


def test_cells_show_gate_then_auto():
    cell = {"gate": {"accuracy": 0.884}, "auto": {"accuracy": 0.94}}
    data = {"command": "python examples/maxpool_table.py", "snncc_version": "0",
            "git_commit": "abc", "date": "today", "seconds": 1.0, "seed": 0,
            "neurons": ["if"], "timesteps": [2],
            "nets": {"toy": {"arch": "Toy", "test_samples": 10, "ann_test_acc": 0.979,
                             "cells": {"if": {"2": cell}}}}}
    text = table.markdown(data)
    assert "**ANN 97.9 %**" in text and "| if | 88.4 → 94.0 |" in text


def test_one_cell_compiles_and_runs(tmp_path):
    from zoo import stem_net

    paths = {"onnx": tmp_path / "m.onnx", "calib": tmp_path / "c.npz", "test": tmp_path / "t.npz"}
    onnx.save(stem_net(), paths["onnx"])
    x = np.random.default_rng(0).random((40, 3, 12, 12), np.float32)
    np.savez(paths["calib"], x=x)
    np.savez(paths["test"], x=x[:8], y=np.zeros(8, np.int64))
    for mode in table.MODES:
        cell = table.one_cell(paths, "if", 2, mode, tmp_path)
        assert 0 <= cell["accuracy"] <= 1, cell
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "m.onnx", "t.npz"]
