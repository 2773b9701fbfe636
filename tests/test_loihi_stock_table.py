"""examples/loihi_stock_table.py: the table shows emulated and stock-neuron accuracy side by side
with the compile's stock estimate (synthetic numbers; the real run takes several minutes)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples import loihi_stock_table as table  # noqa: E402


def test_rows_show_both_semantics_and_the_stock_estimate():
    cell = {"estimate": 1.0, "stock_estimate": 0.1875, "stock_estimate_95": [0.09, 0.35],
            "warned_stock": True, "emulated": 0.975, "hardware": 0.29}
    mt = {"estimate": 1.0, "stock_estimate": None, "warned_stock": False, "emulated": 0.98,
          "hardware": 0.95}
    data = {"snncc_version": "0", "git_commit": "abc", "date": "today", "seconds": 1.0,
            "neurons": ["if", "mt"], "timesteps": [3],
            "nets": {"toy": {"ann_accuracy": 0.986,
                             "cells": {"if": {"3": cell}, "mt": {"3": mt}}}}}
    text = table.markdown(data, "python examples/loihi_stock_table.py")
    assert "| if emulated | if hardware | est. | mt emulated | mt hardware |" in text
    assert "| 3 | 97.5 | 29.0 | 18.8* | 98.0 | 95.0 |" in text
    assert "## toy (ANN 98.6 %)" in text
