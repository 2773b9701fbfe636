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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'snncc.train' has no attribute {name!r}")
