"""Direct SNN training with surrogate gradients: IIR-SNN (neurons.md §3) and multi-threshold (§5).

The ANN-shaped module is run once per time step; each ``nn.ReLU`` is replaced by a stateful
spiking neuron (one per site; a ReLU module used at several sites is rejected, SNN-E806). The
input image is applied at every step (direct encoding) and the logits are the **sum** over T of
the last layer's output (IIR-SNN); the loss is cross-entropy on that sum. ``snncc compile`` decodes
the mean over time instead: it differs only by the factor T, so the argmax is identical. (IIR-SNN's
own classifier has no bias; a bias the ANN has is kept and counted every step, in both decodings.)

LIF (§3.3, docs/neuron-ops.md LIFNeuron), per layer trainable ``threshold`` θ and ``leak``::

    u = leak·u ; u = u + x ; s = (u > θ) ; u = u − θ·s ; y = s        (u starts at 0, amplitude 1)

The spike's surrogate derivative w.r.t. (u/θ − 1) is 0.3·max(0, 1 − |u/θ − 1|); gradients also
flow through the division by θ and the (not detached) reset term. The leak is clamped to ≤ 1 after
every optimizer step. The forward compares u > θ directly (not u/θ − 1 > 0, which can round
differently), so it is bit-exact with the op contract.

MT (§5.3, docs MTNeuron), thresholds θ_k = θ·f_k with fixed descending fractions f_k (``parallel``:
equidistant k/n; ``cascade``: powers of two 2^-(k-1)), firing on ≥, soft reset, v starts at 0.
Its surrogate is not published (§9); we use the same triangle per threshold, in units of θ_k.
The forward value is computed exactly as the op contract states; the surrogate enters only the
gradient (value + (g − g.detach())).

BatchNorm layers keep their statistics frozen during SNN training (IIR-SNN folds BN into the
convolutions before conversion, §3.1; γ and β stay trainable, equivalent to training the folded
weights and biases). Conversion (§3.2): weights copied, leak 1.0, thresholds set layer by layer: with the earlier layers
already spiking, run ``threshold_steps`` steps on one batch, take the ``percentile`` (90) of the
layer's input current at each step and set θ = the maximum over steps. IIR schedule (§3.4): train
at T = 5, then initialise T = 4 from it (weights, thresholds, leaks unchanged), retrain, ... down
to T = 1; per stage Adam (amsgrad), lr 1e-4, divided by 5 at 60/80/90 % of the stage's epochs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from snncc.errors import ModelInputError
from snncc.train.data import DataLike, first_images
from snncc.train import percent
from snncc.train.finetune import (EpochStats, _tty, check_option, evaluate, fit, logits_for_training, percentile,
                                  prepare_training)
from snncc.train.qcfs import ACTIVATIONS, replace_modules

__all__ = ["SpikeFn", "SpikingNeuron", "LIF", "MTNeuron", "MT_FRACTIONS", "convert_to_snn", "spiking_neurons",
           "run_snn", "init_thresholds", "StageResult", "SnnResult", "train_snn"]

log = logging.getLogger("snncc.train.iir")

SURROGATE_SCALE = 0.3


class SpikeFn(torch.autograd.Function):
    """Heaviside spike of u against θ (``strict``: u > θ, else u ≥ θ) with the IIR triangle surrogate."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, theta: torch.Tensor, strict: bool) -> torch.Tensor:
        ctx.save_for_backward(u, theta)
        return ((u > theta) if strict else (u >= theta)).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, theta = ctx.saved_tensors
        x = u / theta - 1.0
        g = grad * SURROGATE_SCALE * torch.clamp(1.0 - x.abs(), min=0.0)
        grad_u = g / theta
        grad_theta = (-(g * u) / (theta * theta)).sum().reshape(theta.shape)
        return grad_u, grad_theta, None


class SpikingNeuron(nn.Module):
    """Shared state handling: ``reset_state`` before a sample batch, one ``forward`` call per step.

    ``probe = p`` makes the next call record the p-th percentile of its input current in
    ``probe_value`` and stop the forward pass (used by :func:`init_thresholds`).
    """

    def __init__(self, threshold: float = 1.0):
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.v: torch.Tensor | None = None
        self.calls = 0
        self.probe: float | None = None
        self.probe_value: float | None = None

    def reset_state(self) -> None:
        self.v = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.probe is not None:
            self.probe_value = percentile(x, self.probe)
            raise _StopForward
        if self.v is None:
            self.v = torch.zeros_like(x)
        y, self.v = self.step(x, self.v)
        return y

    def step(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LIF(SpikingNeuron):
    """IIR-SNN leaky integrate-and-fire neuron (see the module docstring)."""

    amplitude = 1.0

    def __init__(self, threshold: float = 1.0, leak: float = 1.0):
        super().__init__(threshold)
        self.leak = nn.Parameter(torch.tensor(float(leak)))

    def step(self, x, u):
        u = self.leak * u
        u = u + x
        s = SpikeFn.apply(u, self.threshold, True)
        return s, u - self.threshold * s

    def extra_repr(self) -> str:
        return f"threshold={self.threshold.item():.4g}, leak={self.leak.item():.4g}"


MT_FRACTIONS: dict[str, Callable[[int], tuple[float, ...]]] = {
    "parallel": lambda n: tuple((n - k) / n for k in range(n)),     # equidistant n/n .. 1/n
    "cascade": lambda n: tuple(2.0 ** -k for k in range(n)),        # pow2 1, 1/2, ..
}


class MTNeuron(SpikingNeuron):
    """Multi-threshold neuron, ``parallel`` or ``cascade`` mode, soft reset (see the module docstring)."""

    def __init__(self, mode: str, n: int, threshold: float = 1.0):
        super().__init__(threshold)
        self.mode = mode
        self.fractions = MT_FRACTIONS[mode](n)

    def step(self, x, v):
        m = v + x
        thetas = [self.threshold * f for f in self.fractions]
        if self.mode == "cascade":
            r, y = m, torch.zeros_like(m)
            for th in thetas:
                s = SpikeFn.apply(r, th, False)
                r = r - th * s
                y = y + th * s
            return y, r
        exact = torch.zeros_like(m)
        for th in reversed(thetas):          # smallest first: y = the largest threshold passed
            exact = torch.where(m >= th, th.detach(), exact)
        lower = thetas[1:] + [torch.zeros_like(thetas[0])]
        surrogate = sum((th - lo) * SpikeFn.apply(m, th, False) for th, lo in zip(thetas, lower))
        y = exact + (surrogate - surrogate.detach())
        return y, m - y

    def extra_repr(self) -> str:
        return f"mode={self.mode}, fractions={self.fractions}, threshold={self.threshold.item():.4g}"


class _StopForward(Exception):
    """Raised by a probing neuron: the rest of the forward pass is not needed."""


def convert_to_snn(module: nn.Module, make_neuron: Callable[[], SpikingNeuron]) -> list[str]:
    """Replace every ``nn.ReLU`` (and ReLU6-like BoundedReLU) child by a fresh neuron; returns the
    replaced names."""
    return replace_modules(module, lambda m: type(m) in ACTIVATIONS, lambda name, old: make_neuron())


def spiking_neurons(module: nn.Module) -> dict[str, SpikingNeuron]:
    return {name: m for name, m in module.named_modules() if isinstance(m, SpikingNeuron)}


def run_snn(module: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Σ_{t=1..T} of the module's output with the same input at every step (states reset first)."""
    neurons = spiking_neurons(module).items()
    for _, n in neurons:
        n.reset_state()
    out = module(x)
    reused = [name for name, n in neurons if n.calls > 1]
    if reused:
        raise ModelInputError(f"finetune: spiking neuron(s) {', '.join(reused)} are called more than once per "
                              "step (one ReLU module used at several sites)", code="SNN-E806",
                              hint="give every activation site its own nn.ReLU module")
    for _ in range(T - 1):
        out = out + module(x)
    return out


@torch.no_grad()
def init_thresholds(module: nn.Module, x: torch.Tensor, steps: int, pct: float = 90.0,
                    scale: float = 1.0, progress: bool = False) -> dict[str, float]:
    """Set θ layer by layer (§3.2); returns the thresholds by neuron name. ``steps`` forward
    passes per layer (minutes on a CPU with the defaults), shown as a bar with ``progress``."""
    from tqdm.auto import tqdm

    was_training = module.training
    module.eval()
    neurons = spiking_neurons(module)
    found: dict[str, float] = {}
    bar = tqdm(total=len(neurons) * steps, desc="initial thresholds", unit="pass",
               disable=not progress, leave=False,
               mininterval=0.1 if _tty() else 30.0)   # a log file: not 1,000 redraws
    if not progress:   # -v --no-progress said nothing for a minute of it
        log.info("initial thresholds: %d passes over %d layer(s)", len(neurons) * steps,
                 len(neurons))
    for name, neuron in neurons.items():   # named_modules order = definition order
        for n in neurons.values():
            n.reset_state()
        best = float("-inf")
        for _ in range(steps):
            neuron.probe = pct
            try:
                module(x)
            except _StopForward:
                best = max(best, neuron.probe_value)
            finally:
                neuron.probe = None
            bar.update()
        if best <= 0:
            log.warning("layer %s: %g-th percentile of its input current is %g <= 0; threshold set to 1.0",
                        name, pct, best)
            best = 1.0
        neuron.threshold.fill_(best * scale)
        found[name] = best * scale
    bar.close()
    for n in neurons.values():
        n.reset_state()
    module.train(was_training)
    return found


@dataclass
class StageResult:
    T: int
    init_val_acc: float | None   # at the start of the stage (from the previous stage)
    val_acc: float | None        # at the end
    history: list[EpochStats]
    thresholds: dict[str, float]
    leaks: dict[str, float]


@dataclass
class SnnResult:
    module: nn.Module
    ann_val_acc: float | None
    initial_thresholds: dict[str, float]
    stages: list[StageResult]


def train_snn(module: nn.Module, train_data: DataLike, val_data: DataLike | None = None, *,
              timesteps: Sequence[int] = (5, 4, 3, 2, 1), epochs: int = 10, mt: str | None = None,
              mt_thresholds: int = 4, lr: float = 1e-4, batch_size: int = 64, threshold_percentile: float = 90.0,
              threshold_steps: int = 500, threshold_batch: int = 512, maxpool: str = "keep",
              val_every: int = 1, device: str | torch.device | None = None, seed: int = 0, progress: bool = True,
              on_stage_start: Callable[[int, nn.Module], None] | None = None,
              on_stage_end: Callable[[StageResult, nn.Module], None] | None = None) -> SnnResult:
    """Convert a copy of the ReLU ``module`` to an SNN (LIF, or MT when ``mt`` is given) and train it
    at each T of ``timesteps`` in turn, each stage starting from the previous one (IIR schedule)."""

    from snncc.context import MAX_TIMESTEPS  # what `snncc compile` accepts for -T

    check_option(len(timesteps) >= 1 and all(1 <= int(t) <= MAX_TIMESTEPS for t in timesteps),
                 f"timesteps {list(timesteps)} must be integers in 1..{MAX_TIMESTEPS} (what compile accepts for -T)",
                 "use e.g. --timesteps 5,4,3,2,1")
    check_option(epochs >= 0 and lr > 0 and batch_size >= 1 and val_every >= 1,
                 "epochs >= 0, lr > 0, batch size >= 1 and val_every >= 1 are required", "see snncc finetune --help")
    check_option(mt in (None, "parallel", "cascade"), f"mt mode {mt!r} is not parallel|cascade",
                 "use --mt parallel or --mt cascade")
    check_option(mt_thresholds >= 1, f"mt thresholds n={mt_thresholds} must be >= 1", "use e.g. --mt-thresholds 4")
    check_option(0 < threshold_percentile <= 100 and threshold_steps >= 1 and threshold_batch >= 1,
                 "threshold percentile in (0, 100], steps >= 1 and batch >= 1 are required",
                 "use e.g. --threshold-percentile 90")
    setup = prepare_training(module, train_data, val_data, batch_size=batch_size, seed=seed,
                             device=device, maxpool=maxpool)
    model, dev, train = setup.model, setup.device, setup.train
    train_loader, val_loader, ann_acc = setup.train_loader, setup.val_loader, setup.ann_acc
    sites = convert_to_snn(model, (lambda: MTNeuron(mt, mt_thresholds)) if mt else LIF)
    if not sites:
        raise ModelInputError("finetune: the model has no Relu or Clip(0, c) activation to make spiking",
                              code="SNN-E805", hint="SNN training converts ReLU and ReLU6-like activations")
    model.to(dev)
    neurons = spiking_neurons(model)
    batch = first_images(train, threshold_batch).to(dev)
    model.eval()
    with torch.no_grad():
        run_snn(model, batch[:1], 1)   # rejects reused neurons before the threshold search
    thresholds = init_thresholds(model, batch, threshold_steps, threshold_percentile,
                                 progress=progress)
    log.info("initial thresholds: %s", {k: round(v, 4) for k, v in thresholds.items()})

    def train_mode() -> None:
        """Training mode with BatchNorm statistics frozen: IIR-SNN trains the BN-folded network (§3.1)."""
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def clamp_leak() -> None:
        with torch.no_grad():
            for n in neurons.values():
                if isinstance(n, LIF):
                    n.leak.clamp_(max=1.0)

    stages = []
    for T in (int(t) for t in timesteps):
        if on_stage_start is not None:
            on_stage_start(T, model)

        def forward(x: torch.Tensor, T: int = T) -> torch.Tensor:
            return run_snn(model, x, T)

        init_acc = evaluate(forward, model, val_loader, dev) if val_loader is not None else None
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, amsgrad=True)
        # decays at 60/80/90 % of the stage, never at its start (a 1-epoch stage had got
        # milestones [0, 0, 0]: lr * 0.2**3 from the first step, and its weights barely moved)
        milestones = [m for m in (int(f * epochs) for f in (0.6, 0.8, 0.9)) if m >= 1]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)
        history = fit(model, forward, train_loader, val_loader, epochs, optimizer, scheduler, dev,
                      after_step=clamp_leak, train_mode=train_mode, val_every=val_every, progress=progress,
                      desc=f"snn T={T}")
        stage = StageResult(T, init_acc, history[-1].val_acc if history else init_acc, history,
                            {k: n.threshold.item() for k, n in neurons.items()},
                            {k: n.leak.item() for k, n in neurons.items() if isinstance(n, LIF)})
        if val_loader is not None:   # (without --val it had logged 'None -> None')
            log.info("stage T=%d: val acc %s -> %s", T, percent(init_acc), percent(stage.val_acc))
        stages.append(stage)
        if on_stage_end is not None:
            on_stage_end(stage, model)
    logits_for_training(model, False)
    return SnnResult(model, ann_acc, thresholds, stages)
