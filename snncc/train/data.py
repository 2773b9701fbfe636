"""Training data: ``.npz`` files with keys ``x`` (float images, N x C x H x W) and ``y`` (int labels)."""
from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from snncc.errors import CalibrationError

__all__ = ["Arrays", "load_npz", "as_arrays", "check_input_shape", "make_loader"]

Arrays = tuple[np.ndarray, np.ndarray]
DataLike = Union[Arrays, "os.PathLike[str]", str]


def load_npz(path: str | os.PathLike) -> Arrays:
    """Read ``x`` and ``y`` from an ``.npz`` file; raises SNN-E803 when unusable."""
    try:
        with np.load(path) as f:
            missing = [k for k in ("x", "y") if k not in f]
            if missing:
                raise CalibrationError(f"finetune: data file '{path}' has no key(s) {', '.join(missing)}",
                                       code="SNN-E803", hint="save it with np.savez(path, x=images, y=labels)")
            return as_arrays((f["x"], f["y"]), str(path))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"finetune: cannot read data file '{path}' ({exc})", code="SNN-E803",
                               hint="give an .npz file with keys x (images) and y (labels)") from exc


def as_arrays(data: DataLike, what: str = "data") -> Arrays:
    """Accept an ``(x, y)`` pair or an ``.npz`` path; returns float32 x and int64 y."""
    if isinstance(data, (str, os.PathLike)):
        return load_npz(data)
    x, y = (np.asarray(a) for a in data)
    if len(x) != len(y) or len(x) == 0 or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"finetune: {what} needs x with N >= 1 samples and N integer labels y "
                               f"(got x {x.shape}, y {y.shape} {y.dtype})", code="SNN-E803",
                               hint="labels are class indices, one per image")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def check_input_shape(x: np.ndarray, dims: Sequence[int | str | None], what: str = "data") -> None:
    """The per-sample shape of ``x`` must match the model input (symbolic dims match anything)."""
    want = list(dims[1:])
    got = list(x.shape[1:])
    if len(want) != len(got) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, got)):
        raise CalibrationError(f"finetune: {what} samples have shape {got}, the model input wants {want}",
                               code="SNN-E803", hint="resize the images or export the model for this shape")


def make_loader(data: Arrays, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size,
                      shuffle=shuffle, generator=gen)
