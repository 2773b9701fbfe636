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

import numpy as np
import torch
from torch import nn

__all__ = ["FloorSTE", "QCFS", "BoundedReLU", "ACTIVATIONS", "replace_modules", "replace_relu_with_qcfs",
           "replace_maxpool_with_avgpool", "qcfs_modules", "set_spiking", "SpikeMaxPool2d"]


class FloorSTE(torch.autograd.Function):
    """floor(x) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with a trainable λ: a scalar, or one per channel
    (axis 1 of the input; shape ``(C,)``).

    ``record=True`` keeps the last output in ``last_output`` (used by the spike-count regulariser).

    ``timesteps = T`` (SNN in the loop): the input holds T time slices folded into the batch
    (slice-major, ``T*B x ...``, as ``snncc compile``'s folded schedule), and the forward value is the
    exact output of the IF neuron that compile puts here (θ = λ, v(0) = θ/2, soft reset, fires on
    ``>=``, emits θ): ``y_t = θ·s_t``. The gradient is that of the QCFS clip of the time-mean input
    (tandem learning: spikes forward, rates backward), broadcast to every slice.
    """

    def __init__(self, levels: int, lam: float | np.ndarray | torch.Tensor = 8.0):
        super().__init__()
        self.levels = int(levels)
        self.lam = nn.Parameter(torch.as_tensor(np.asarray(lam, np.float32)).clone().reshape(-1)
                                if np.ndim(lam) else torch.tensor(float(lam)))
        self.record = False
        self.last_output: torch.Tensor | None = None
        self.rank: int | None = None   # rank of the last input (the exporter shapes per-channel λ by it)
        self.timesteps: int | None = None

    def lam_for(self, z: torch.Tensor) -> torch.Tensor:
        """λ broadcastable against ``z`` (per channel on axis 1)."""
        lam = self.lam
        if lam.dim() == 1 and z.dim() > 2:
            lam = lam.reshape(-1, *([1] * (z.dim() - 2)))
        return lam

    def quantize(self, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        L = float(self.levels)
        x = z / lam
        x = x * L
        x = x + 0.5
        x = FloorSTE.apply(x)
        x = x / L
        x = torch.clamp(x, 0.0, 1.0)
        return x * lam

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.rank = z.dim()
        lam = self.lam_for(z)
        a = self.quantize(z, lam) if not self.timesteps else self._spiking(z, lam)
        self.last_output = a if self.record else None
        return a

    def _spiking(self, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        T = int(self.timesteps)
        zt = z.reshape(T, -1, *z.shape[1:])
        rate = self.quantize(zt.mean(0), lam)          # the gradient path
        with torch.no_grad():
            theta = lam.detach()
            v = (0.5 * theta).expand_as(zt[0])
            out = []
            for t in range(T):
                m = v + zt[t]
                s = m >= theta
                v = torch.where(s, m - theta, m)
                out.append(torch.where(s, theta, torch.zeros_like(m)))
            spikes = torch.stack(out)
        return (spikes + (rate - rate.detach()).unsqueeze(0)).reshape(z.shape)

    def extra_repr(self) -> str:
        lam = self.lam.detach()
        text = f"{lam.item():.4g}" if lam.dim() == 0 else f"per channel ({lam.numel()}), mean {lam.mean():.4g}"
        return f"levels={self.levels}, lam={text}" + (f", IF in the loop T={self.timesteps}" if self.timesteps else "")


class BoundedReLU(nn.Hardtanh):
    """``clip(x, 0, max)``: an ONNX ``Clip(0, c)`` activation (ReLU6 for c = 6) as its own module, so
    that fine-tuning finds it beside ``nn.ReLU`` (:data:`ACTIVATIONS`). QCFS replaces it with λ
    initialised at most ``max`` (its output then never exceeds the clip the ANN had)."""

    def __init__(self, max_val: float):
        super().__init__(0.0, float(max_val))


ACTIVATIONS = (nn.ReLU, BoundedReLU)   # the module types QCFS fine-tuning replaces


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
    """Swap each ``nn.ReLU`` and :class:`BoundedReLU` child for a :class:`QCFS` (λ from ``lam``, per
    name if a dict; a dict value may be a per-channel array; a BoundedReLU's λ is capped at its max).

    Functional ``F.relu`` calls are not modules and stay ReLUs.
    """
    def make(name: str, old: nn.Module) -> QCFS:
        value = lam[name] if isinstance(lam, dict) else lam
        if isinstance(old, BoundedReLU):
            value = np.minimum(np.asarray(value, np.float32), np.float32(old.max_val))
        return QCFS(levels, value)

    return replace_modules(module, lambda m: type(m) in ACTIVATIONS, make)


def replace_maxpool_with_avgpool(module: nn.Module) -> list[str]:
    """Every ``nn.MaxPool2d`` becomes ``nn.AvgPool2d`` with the same kernel, stride and padding (§1.1)."""
    return replace_modules(module, lambda m: isinstance(m, nn.MaxPool2d),
                    lambda name, old: nn.AvgPool2d(old.kernel_size, old.stride, old.padding,
                                                   ceil_mode=old.ceil_mode))


class SpikeMaxPool2d(nn.MaxPool2d):
    """A MaxPool2d that, with the IF SNN in the loop (``timesteps`` T: the input holds T slices
    folded slice-major), pools as ``snncc compile``'s folded schedule does: per pooling window
    the unit with the largest total over the slices passes its whole train (the window gate,
    passes/schedule_timesteps.py); the gradient reaches that unit's train. Without
    ``timesteps`` it is the MaxPool itself, and exports as one."""

    timesteps: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.timesteps or self.return_indices or x.dim() != 4:
            return super().forward(x)
        T = int(self.timesteps)
        xt = x.reshape(T, -1, *x.shape[1:])
        _, idx = nn.functional.max_pool2d(xt.detach().sum(0), self.kernel_size, self.stride,
                                          self.padding, self.dilation, self.ceil_mode,
                                          return_indices=True)
        picked = xt.flatten(3).gather(3, idx.flatten(2).unsqueeze(0).expand(T, -1, -1, -1))
        return picked.reshape(T * idx.shape[0], *idx.shape[1:])


def qcfs_modules(module: nn.Module) -> dict[str, QCFS]:
    return {name: m for name, m in module.named_modules() if isinstance(m, QCFS)}


def set_spiking(module: nn.Module, timesteps: int | None) -> None:
    """Run every QCFS of ``module`` as an IF neuron over ``timesteps`` folded slices (None: QCFS),
    and every MaxPool2d as the compiled model's window gate over them (:class:`SpikeMaxPool2d`;
    a per-slice max of the spikes had trained another network than the one compile builds)."""
    for m in qcfs_modules(module).values():
        m.timesteps = timesteps
    if timesteps:
        def gated(name: str, old: nn.MaxPool2d) -> SpikeMaxPool2d:
            new = SpikeMaxPool2d(old.kernel_size, old.stride, old.padding, old.dilation,
                                 old.return_indices, old.ceil_mode)
            return new.train(old.training)

        replace_modules(module, lambda m: type(m) is nn.MaxPool2d, gated)
    for m in module.modules():
        if isinstance(m, SpikeMaxPool2d):
            m.timesteps = timesteps

