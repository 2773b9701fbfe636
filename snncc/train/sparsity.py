"""Seed 000's fine-grained spike-count regulariser (neurons.md §2.6).

For every QCFS output a (per layer λ, L levels): the integer level q = a·L/λ is expanded into its
B = ceil(log2(L+1)) bits (B = T when L = 2^T − 1); the layer's term R is the number of set bits
summed over all elements of the batch, and the loss is CE + κ·Σ_layers R.

Backward (surrogate): the gradient w.r.t. q is the **mean over the B bits** of the upstream bit
gradients. Each bit's gradient from R is 1, so ∂R/∂q = 1 per element: the penalty backpropagates
like an L1 penalty on q, through q = a·L/λ into a (QCFS STE) and into λ.

q is recovered by rounding a·L/λ to the nearest integer. The reference code truncates; a·L/λ is an
integer in exact arithmetic, and rounding only differs where float error lands just below it
(e.g. 2.9999998), where truncation would count the wrong level.

The reported activity is bits per neuron: total set bits / number of activation elements (the
ANN-mode "spiking activity" of the reference code).
"""
from __future__ import annotations

import math

import torch

from snncc.train.qcfs import QCFS

__all__ = ["BitDecompose", "bits_for_levels", "level_bits", "SpikeCountRegularizer"]


def bits_for_levels(levels: int) -> int:
    """Bits needed for the integer levels 0..L."""
    return max(1, math.ceil(math.log2(levels + 1)))


class BitDecompose(torch.autograd.Function):
    """q (integer-valued float) -> its bits, LSB first, on a new last axis; backward: mean over bits."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, bits: int) -> torch.Tensor:
        qi = torch.round(q).to(torch.int64).clamp_min(0)
        shifts = torch.arange(bits, device=q.device)
        return ((qi.unsqueeze(-1) >> shifts) & 1).to(q.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.mean(dim=-1), None


def level_bits(a: torch.Tensor, qcfs: QCFS) -> torch.Tensor:
    """The bit planes of the integer levels of a QCFS output ``a`` (differentiable by the surrogate)."""
    q = a * float(qcfs.levels) / qcfs.lam_for(a)
    return BitDecompose.apply(q, bits_for_levels(qcfs.levels))


class SpikeCountRegularizer:
    """Collects the QCFS outputs of one forward pass and returns κ·Σ R plus per-layer bits/neuron."""

    def __init__(self, layers: dict[str, QCFS], kappa: float):
        self.layers = layers
        self.kappa = float(kappa)
        for m in layers.values():
            m.record = True

    def __call__(self) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        per_neuron: dict[str, float] = {}
        for name, m in self.layers.items():
            a = m.last_output
            count = level_bits(a, m).sum()
            per_neuron[name] = float(count.detach()) / a.numel()
            total = count if total is None else total + count
        return self.kappa * total, per_neuron

    def close(self) -> None:
        for m in self.layers.values():
            m.record = False
            m.last_output = None
