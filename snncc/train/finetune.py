"""QCFS fine-tuning of a ReLU CNN (neurons.md §1.1, §2.6) and the training loop shared with IIR.

``finetune_module`` copies the module, optionally turns MaxPool into AvgPool, replaces every
``nn.ReLU`` by a :class:`~snncc.train.qcfs.QCFS` with a trainable λ, and trains with the QCFS recipe
(SGD, momentum 0.9, weight decay 5e-4 on all parameters including λ, cosine learning rate) plus the
optional spike-count regulariser κ·Σ R. Validation accuracy is measured every ``val_every`` epochs.

λ initialisation: the repos use 8.0 when training from scratch (the default here too). For
fine-tuning a trained ReLU net, ``lambda_init="p99.9"`` sets each λ to the 99.9th percentile of that
site's ReLU output on one training batch, so the clip starts near the layer's actual range.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from snncc.errors import ModelInputError, OptionError
from snncc.train.data import DataLike, as_arrays, make_loader
from snncc.train.qcfs import qcfs_modules, replace_maxpool_with_avgpool, replace_relu_with_qcfs
from snncc.train.sparsity import SpikeCountRegularizer

__all__ = ["EpochStats", "FinetuneResult", "finetune_module", "pick_device", "percentile", "evaluate",
           "fit", "check_option"]

log = logging.getLogger("snncc.train.finetune")

ExtraLoss = Callable[[], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float | None = None
    bits_per_neuron: dict[str, float] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    """The fine-tuned QCFS module (on ``device``) and what happened."""

    module: nn.Module
    history: list[EpochStats]
    ann_val_acc: float | None        # the input ReLU module
    qcfs_init_val_acc: float | None  # after the ReLU -> QCFS swap, before training
    val_acc: float | None            # at the end
    lambdas: dict[str, float]


@dataclass
class TrainingSetup:
    """What every trainer starts from: a copy of the module on the device, loaders, and the
    source network's validation accuracy (None without validation data)."""

    model: nn.Module
    device: torch.device
    train: tuple
    train_loader: Iterable
    val_loader: Iterable | None
    ann_acc: float | None


def prepare_training(module: nn.Module, train_data: DataLike, val_data: DataLike | None, *,
                     batch_size: int, seed: int, device, maxpool: str) -> TrainingSetup:
    """Seed, pick the device, build loaders, copy the module, measure it, swap MaxPool if asked."""
    check_option(maxpool in ("keep", "avg"), f"maxpool={maxpool!r} is not keep|avg",
                 "use --maxpool avg or keep")
    torch.manual_seed(seed)
    dev = pick_device(device)
    train = as_arrays(train_data, "training data")
    val = as_arrays(val_data, "validation data") if val_data is not None else None
    train_loader = make_loader(train, batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val, 256, shuffle=False) if val is not None else None
    model = copy.deepcopy(module).to(dev)
    ann_acc = evaluate(model, model, val_loader, dev) if val_loader is not None else None
    if maxpool == "avg":
        replace_maxpool_with_avgpool(model)
    return TrainingSetup(model, dev, train, train_loader, val_loader, ann_acc)


def check_option(ok: bool, what: str, hint: str) -> None:
    if not ok:
        raise OptionError(f"finetune: {what}", code="SNN-E804", hint=hint)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def percentile(t: torch.Tensor, p: float) -> float:
    """NumPy-style (linear interpolation) percentile of all elements (two selections, no full sort)."""
    v = t.detach().flatten().float()
    pos = p / 100.0 * (v.numel() - 1)
    lo = math.floor(pos)
    a = v.kthvalue(lo + 1).values
    if pos == lo:
        return float(a)
    b = v.kthvalue(lo + 2).values
    return float(a + (b - a) * (pos - lo))


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, loader: Iterable,
             device: torch.device) -> float:
    """Top-1 accuracy of ``forward`` (module in eval mode)."""
    was_training = module.training
    module.eval()
    correct = total = 0
    for x, y in loader:
        logits = forward(x.to(device))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    module.train(was_training)
    return correct / max(total, 1)


def fit(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], train_loader, val_loader,
        epochs: int, optimizer: torch.optim.Optimizer, scheduler, device: torch.device, *,
        extra_loss: ExtraLoss | None = None, after_step: Callable[[], None] | None = None,
        train_mode: Callable[[], None] | None = None, val_every: int = 1, progress: bool = True,
        desc: str = "train") -> list[EpochStats]:
    """Cross-entropy training with tqdm bars; validation every ``val_every`` epochs and at the end.

    ``train_mode`` puts the module in training mode at the start of each epoch (default
    ``module.train()``); ``after_step`` runs after every optimizer step.
    """
    history = []
    for epoch in range(1, epochs + 1):
        (train_mode or module.train)()
        loss_sum = correct = seen = 0
        bits_sum: dict[str, float] = {}   # bits/neuron summed over batches (weighted by batch size)
        bar = tqdm(train_loader, desc=f"{desc} {epoch}/{epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits = forward(x)
            loss = F.cross_entropy(logits, y)
            if extra_loss is not None:
                reg, batch_bits = extra_loss()
                loss = loss + reg
                for k, v in batch_bits.items():
                    bits_sum[k] = bits_sum.get(k, 0.0) + v * len(y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            postfix = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.3f}"}
            bits = {k: v / seen for k, v in bits_sum.items()}
            if bits:
                postfix["bits/neuron"] = f"{sum(bits.values()) / len(bits):.3f}"
            bar.set_postfix(postfix)
        scheduler.step()
        stats = EpochStats(epoch, loss_sum / max(seen, 1), correct / max(seen, 1),
                           bits_per_neuron={k: v / max(seen, 1) for k, v in bits_sum.items()})
        if val_loader is not None and (epoch % val_every == 0 or epoch == epochs):
            stats.val_acc = evaluate(forward, module, val_loader, device)
        log.info("%s epoch %d/%d: loss %.4f train acc %.4f val acc %s%s", desc, epoch, epochs, stats.loss,
                 stats.train_acc, "-" if stats.val_acc is None else f"{stats.val_acc:.4f}",
                 "".join(f"\n  {k}: {v:.3f} bits/neuron" for k, v in stats.bits_per_neuron.items()))
        history.append(stats)
    return history


@torch.no_grad()
def _percentile_lambdas(module: nn.Module, x: torch.Tensor, p: float) -> dict[str, float]:
    """λ per ReLU module = p-th percentile of its output on one batch (max, or 1.0, if that is 0)."""
    out: dict[str, float] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, o, name=name: out.__setitem__(
        name, percentile(o, p) or float(o.max()) or 1.0))
        for name, m in module.named_modules() if type(m) is nn.ReLU]
    was_training = module.training
    module.eval()
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return out


def _lambda_init(value: float | str) -> float | None:
    """8.0 -> 8.0; "p99.9" -> None (percentile 99.9, computed later); otherwise SNN-E804."""
    if isinstance(value, str) and value.startswith("p"):
        try:
            p = float(value[1:])
        except ValueError:
            p = -1.0
        check_option(0 < p <= 100, f"lambda init {value!r} is not a percentile", "use e.g. p99.9, or a number")
        return None
    try:
        lam = float(value)
    except (TypeError, ValueError):
        lam = -1.0
    check_option(lam > 0, f"lambda init {value!r} must be a positive number or pNN", "e.g. 8.0 or p99.9")
    return lam


def finetune_module(module: nn.Module, train_data: DataLike, val_data: DataLike | None = None, *,
                    levels: int = 4, epochs: int = 10, sparsity: float = 0.0, lr: float = 0.01,
                    batch_size: int = 128, lambda_init: float | str = 8.0, maxpool: str = "keep",
                    val_every: int = 1, device: str | torch.device | None = None, seed: int = 0,
                    progress: bool = True) -> FinetuneResult:
    """Fine-tune a copy of ``module`` as a QCFS ANN with ``levels`` quantization steps.

    ``train_data``/``val_data``: ``(x, y)`` arrays or ``.npz`` paths. ``sparsity`` is κ of the
    spike-count regulariser (0 = off; bits per neuron are reported either way). ``maxpool="avg"``
    turns every MaxPool2d into AvgPool2d first. Returns the trained copy and its history.
    """
    check_option(levels >= 1, f"levels L={levels} must be >= 1", "use e.g. -L 4")
    check_option(epochs >= 0, f"epochs={epochs} must be >= 0", "use e.g. --epochs 10")
    check_option(sparsity >= 0, f"sparsity kappa={sparsity} must be >= 0", "use e.g. --sparsity 1e-8")
    check_option(lr > 0 and batch_size >= 1 and val_every >= 1, "lr, batch size and val_every must be positive",
                 "use e.g. --lr 0.01 --batch-size 128")
    lam = _lambda_init(lambda_init)
    setup = prepare_training(module, train_data, val_data, batch_size=batch_size, seed=seed,
                             device=device, maxpool=maxpool)
    model, dev, train = setup.model, setup.device, setup.train
    train_loader, val_loader, ann_acc = setup.train_loader, setup.val_loader, setup.ann_acc
    if lam is None:
        lam = _percentile_lambdas(model, torch.from_numpy(train[0][:512]).to(dev), float(str(lambda_init)[1:]))
    sites = replace_relu_with_qcfs(model, levels, lam)
    if not sites:
        raise ModelInputError("finetune: the model has no nn.ReLU activation to replace", code="SNN-E805",
                              hint="QCFS fine-tuning needs ReLU activations (nn.ReLU modules)")
    model.to(dev)
    init_acc = evaluate(model, model, val_loader, dev) if val_loader is not None else None
    log.info("QCFS L=%d at %d sites; val acc ANN %s -> QCFS before training %s", levels, len(sites),
             ann_acc, init_acc)

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    reg = SpikeCountRegularizer(qcfs_modules(model), sparsity)
    try:
        history = fit(model, model, train_loader, val_loader, epochs, optimizer, scheduler, dev, extra_loss=reg,
                      val_every=val_every, progress=progress, desc="qcfs")
    finally:
        reg.close()
    final = history[-1].val_acc if history else init_acc
    return FinetuneResult(model, history, ann_acc, init_acc, final,
                          {name: m.lam.item() for name, m in qcfs_modules(model).items()})

