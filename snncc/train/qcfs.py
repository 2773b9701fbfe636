"""QCFS activation with a trainable per-layer λ and a straight-through floor (neurons.md §1.1).

    a = λ · clip(floor(z·L/λ + 1/2) / L, 0, 1)

evaluated in float32 in exactly the order of the exported ONNX chain
``Div(λ) -> Mul(L) -> Add(0.5) -> Floor -> Div(L) -> Clip(0,1) -> Mul(λ)`` (one rounding per op,
so the torch forward and ORT agree bit for bit on CPU). Gradients: the floor passes its gradient
unchanged (STE); ``torch.clamp`` passes it inside [0, 1] boundaries included (the old-repo
window −λ/(2L) ≤ z < λ + λ/(2L)); autograd then gives ∂a/∂λ = (a − z)/λ inside the window, 1
above it and 0 below it (§1.1, the printed eq. 19 is wrong).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["FloorSTE", "QCFS", "replace_modules", "replace_relu_with_qcfs", "replace_maxpool_with_avgpool",
           "qcfs_modules"]


class FloorSTE(torch.autograd.Function):
    """floor(x) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation; ``lam`` is a trainable scalar (one per layer).

    ``record=True`` keeps the last output in ``last_output`` (used by the spike-count regulariser).
    """

    def __init__(self, levels: int, lam: float = 8.0):
        super().__init__()
        self.levels = int(levels)
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.record = False
        self.last_output: torch.Tensor | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        L = float(self.levels)
        x = z / self.lam
        x = x * L
        x = x + 0.5
        x = FloorSTE.apply(x)
        x = x / L
        x = torch.clamp(x, 0.0, 1.0)
        a = x * self.lam
        self.last_output = a if self.record else None
        return a

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={self.lam.item():.4g}"


def replace_modules(module: nn.Module, match: Callable[[nn.Module], bool],
             make: Callable[[str, nn.Module], nn.Module]) -> list[str]:
    """Replace every child module (recursively) for which ``match`` holds; returns their names."""
    names = [name for name, m in module.named_modules() if name and match(m)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        old = getattr(parent, attr)
        setattr(parent, attr, make(name, old))
    return names


def replace_relu_with_qcfs(module: nn.Module, levels: int, lam: float | dict[str, float] = 8.0) -> list[str]:
    """Swap each ``nn.ReLU`` child for a :class:`QCFS` (λ from ``lam``, per name if a dict).

    Functional ``F.relu`` calls are not modules and stay ReLUs.
    """
    return replace_modules(module, lambda m: type(m) is nn.ReLU,
                    lambda name, old: QCFS(levels, lam[name] if isinstance(lam, dict) else lam))


def replace_maxpool_with_avgpool(module: nn.Module) -> list[str]:
    """Every ``nn.MaxPool2d`` becomes ``nn.AvgPool2d`` with the same kernel, stride and padding (§1.1)."""
    return replace_modules(module, lambda m: isinstance(m, nn.MaxPool2d),
                    lambda name, old: nn.AvgPool2d(old.kernel_size, old.stride, old.padding,
                                                   ceil_mode=old.ceil_mode))


def qcfs_modules(module: nn.Module) -> dict[str, QCFS]:
    return {name: m for name, m in module.named_modules() if isinstance(m, QCFS)}

