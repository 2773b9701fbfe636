"""Training side of snncc (torch): QCFS fine-tuning, spike-count regularisation, IIR/MT SNN training.

Importing this package does not import torch; the public functions are loaded on first use, so the
compile path (``snncc.cli`` building its parser from :mod:`snncc.train.cli`) stays torch-free.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["finetune_module", "train_snn", "export_onnx", "load_onnx_module"]

_WHERE = {
    "finetune_module": "snncc.train.finetune",
    "train_snn": "snncc.train.iir",
    "export_onnx": "snncc.train.export",
    "load_onnx_module": "snncc.train.onnx_to_torch",
}


def percent(acc: float | None) -> str:
    """An accuracy as finetune prints and logs it: '98.44%', '-' where none was measured."""
    return "-" if acc is None else f"{100 * acc:.2f}%"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'snncc.train' has no attribute {name!r}")
