"""QCFS fine-tuning of a ReLU CNN (neurons.md §1.1, §2.6) and the training loop shared with IIR.

``finetune_module`` copies the module, optionally turns MaxPool into AvgPool, replaces every
``nn.ReLU`` (and every ReLU6-like :class:`~snncc.train.qcfs.BoundedReLU`, λ capped at its bound) by
a :class:`~snncc.train.qcfs.QCFS` with a trainable λ and trains it. The default
recipe (measured in examples/results/training/README.md) is the one that keeps an L = 4 QANN at the
ANN's accuracy in a few epochs:

* **λ per channel from the calibration code that compile uses**: the pre-activation of every ReLU
  on the first ``calib_samples`` training images goes through :class:`snncc.calibration.SiteStats`
  and :func:`snncc.calibration.choose_lambda` (``method="mse"``, per channel, at L levels). Other
  starts: ``"max"``, ``"percentile"`` / ``"pNN"`` (per channel too) or a number (one λ per layer,
  the QCFS repos' 8.0 from scratch).
* **Distillation from the source network** (on by default): loss = (1 − α)·CE(y) + α·τ²·
  KL(softmax(teacher/τ) ‖ softmax(student/τ)) with α = 0.5, τ = 4; the teacher is the input
  module itself (the ONNX ANN run in torch), frozen, in eval mode.
* **SGD** momentum 0.9, weight decay 5e-4 on conv / linear weights only (not on biases or λ), batch 64, a **one-cycle** learning rate (warm-up over
  the first ``warmup`` fraction of the steps from lr/25 to ``lr`` = 0.003, then cosine down to
  lr/25000), stepped every batch. (A peak of 0.01 diverged on the digits CNN with frozen BN.)
* **BatchNorm folded** into the convolution before it (``bn="fold"``, default; what compile does
  anyway), so SGD trains the folded weights. ``bn="freeze"`` keeps BN with fixed statistics (γ, β
  train): a channel with gain γ/σ sees its weight gradient scaled by (γ/σ)², and at lr 0.01 that
  diverged on two of the four bundled nets. ``bn="train"`` updates the statistics as in ordinary
  training (batch statistics in the forward). BNs that cannot be folded stay, frozen.

``snn_timesteps = T`` trains with the IF SNN in the loop (tandem learning): every QCFS runs as the
IF neuron ``snncc compile --neuron if -T T`` puts there, on T folded time slices, and the loss is
on the mean over T of the logits (what the compiled SNN outputs); gradients go through the QCFS
clip of the time-mean input. The exported graph is the same QCFS pattern. (Other layers run per
slice, which is exact for convolutions, linear layers, average pooling and folded BN; a MaxPool
runs as compile's window gate, :class:`~snncc.train.qcfs.SpikeMaxPool2d`, where it had taken the
max of each slice's spikes; a stem pool, which compile moves in front of its activation, is
gated too, which differs when two units of a window fire alike.) ``snncc finetune`` turns
it on at T = L (L <= 8) by default: trained on the QANN alone, the IF SNN at T = L = 4 fell to
43 % on the MNIST CNN (neurons whose QANN output is 0 fire from uneven input, ~23 % of them per
layer); in the loop, it reached 98.3 % with the QANN at 98.4 % (ANN 98.6 %); see
examples/results/training/recipe.md. The API default is off.

Distributed: when ``torch.distributed`` is initialised (``torchrun``), the module is wrapped in
DistributedDataParallel, the training data is split by a DistributedSampler, validation is split
across ranks and summed. Only the caller decides who writes (rank 0 in the CLI).
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from snncc.errors import ModelInputError, OptionError
from snncc.train import percent
from snncc.train.data import DataLike, as_dataset, first_images, make_loader
from snncc.train.qcfs import (ACTIVATIONS, qcfs_modules, replace_maxpool_with_avgpool, replace_relu_with_qcfs,
                              set_spiking)
from snncc.train.sparsity import SpikeCountRegularizer

__all__ = ["EpochStats", "FinetuneResult", "finetune_module", "pick_device", "percentile", "evaluate",
           "fit", "check_option", "calibrate_lambdas", "Distillation", "freeze_batchnorm", "dist_info"]

log = logging.getLogger("snncc.train.finetune")

ExtraLoss = Callable[[], tuple[torch.Tensor, dict[str, float]]]
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float | None = None
    bits_per_neuron: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = 0.0


@dataclass
class FinetuneResult:
    """The fine-tuned QCFS module (on ``device``) and what happened."""

    module: nn.Module
    history: list[EpochStats]
    ann_val_acc: float | None        # the input ReLU module
    qcfs_init_val_acc: float | None  # after the ReLU -> QCFS swap, before training
    val_acc: float | None            # at the end (of the IF SNN when snn_timesteps is set)
    lambdas: dict[str, float]        # mean λ per site
    qann_val_acc: float | None = None  # the QANN at the end (differs from val_acc with snn_timesteps)


@dataclass
class TrainingSetup:
    """What every trainer starts from: a copy of the module on the device, loaders, and the
    source network's validation accuracy (None without validation data)."""

    model: nn.Module
    device: torch.device
    train: Dataset
    train_loader: Iterable
    val_loader: Iterable | None
    ann_acc: float | None
    sampler: Any = None


def prepare_training(module: nn.Module, train_data: DataLike, val_data: DataLike | None, *,
                     batch_size: int, seed: int, device, maxpool: str, workers: int = 0) -> TrainingSetup:
    """Seed, pick the device, build loaders (sharded when distributed), copy the module, measure
    it, swap MaxPool if asked."""
    check_option(maxpool in ("keep", "avg"), f"maxpool={maxpool!r} is not keep|avg",
                 "use --maxpool avg or keep")
    torch.manual_seed(seed)
    dev = pick_device(device)
    rank, world = dist_info()
    train = as_dataset(train_data, "training data")
    val = as_dataset(val_data, "validation data") if val_data is not None else None
    # one permutation per (seed, epoch), also in one process: a resumed run sees the same batches
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    if world > 1 and val is not None:
        val = Subset(val, range(rank, len(val), world))
    train_loader = make_loader(train, batch_size, shuffle=True, seed=seed, workers=workers, sampler=sampler)
    val_loader = make_loader(val, 256, shuffle=False, workers=workers) if val is not None else None
    model = copy.deepcopy(module).to(dev)
    logits_for_training(model, True)
    ann_acc = evaluate(model, model, val_loader, dev) if val_loader is not None else None
    if maxpool == "avg":
        replace_maxpool_with_avgpool(model)
    return TrainingSetup(model, dev, train, train_loader, val_loader, ann_acc, sampler)


def logits_for_training(module: nn.Module, on: bool) -> None:
    """A Softmax-headed graph's module outputs its logits while it trains (``on``), its own
    output again after (what is exported)."""
    for m in module.modules():
        if getattr(m, "softmax_head", False):
            m.train_on_logits = on


def check_option(ok: bool, what: str, hint: str) -> None:
    if not ok:
        raise OptionError(f"finetune: {what}", code="SNN-E804", hint=hint)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else cuda when available, else cpu (under torchrun: cuda:LOCAL_RANK)."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise OptionError(f"finetune: device '{device}' is not a torch device", code="SNN-E804",
                              hint="use --device cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise OptionError(f"finetune: device '{device}' cannot train (device type '{dev.type}')",
                              code="SNN-E804", hint="use --device cpu, cuda or cuda:N")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise OptionError(f"finetune: device '{device}' requested but CUDA is not available", code="SNN-E804",
                              hint="use --device cpu, or install a CUDA build of torch")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"finetune: device '{device}' requested but there are only "
                              f"{torch.cuda.device_count()} CUDA device(s)", code="SNN-E804",
                              hint=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise OptionError(f"finetune: device '{device}' requested but MPS is not available", code="SNN-E804",
                              hint="use --device cpu")
        if dev.type == "cuda" and dev.index is None and dist_info()[1] > 1:
            import os

            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return dev
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
    """Top-1 accuracy of ``forward`` (module in eval mode); summed over ranks when distributed
    (each rank holds its own shard of the validation data)."""
    was_training = module.training
    module.eval()
    correct = total = 0
    for x, y in _batches(loader):
        logits = forward(x.to(device))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    module.train(was_training)
    if dist_info()[1] > 1:
        import torch.distributed as dist

        counts = torch.tensor([correct, total], dtype=torch.float64,
                              device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(counts)
        correct, total = int(counts[0]), int(counts[1])
    return correct / max(total, 1)


def _batches(loader: Iterable):
    """Iterate a DataLoader; a coded error raised in a worker process comes back with its code.

    (torch re-raises a worker's exception as ``type(exc)(text with the worker traceback)``, which
    loses the code; the last ``[SNN-E...] message`` line of that text is the original message.)
    """
    import re

    from snncc.errors import SnnccError

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except SnnccError as exc:
            found = re.findall(r"\[(SNN-E\d+)\] (.*)", str(exc))
            if "worker process" not in str(exc) or not found:
                raise
            code, text = found[-1]
            message, _, hint = text.partition(". Hint: ")
            raise type(exc)(message, code=code, hint=hint) from None
        yield batch


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm in eval mode: running statistics fixed, γ and β still trainable."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Distillation:
    """(1 − α)·CE + α·τ²·KL(teacher/τ ‖ student/τ) with a frozen teacher (α = 0: plain CE)."""

    def __init__(self, teacher: nn.Module | None, alpha: float = 0.5, temperature: float = 4.0):
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y)
        if self.teacher is None or self.alpha == 0:
            return ce
        tau = self.temperature
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x) / tau, dim=1)
        kd = F.kl_div(F.log_softmax(logits / tau, dim=1), target, log_target=True, reduction="batchmean")
        return (1 - self.alpha) * ce + self.alpha * tau * tau * kd


def _tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):   # a replaced or closed stderr
        return False


def _data_id(loader) -> str:
    """A fingerprint of a loader's data set (size, labels, first sample): whether a checkpoint's
    --val figures were measured on the same data."""
    import zlib

    ds = loader.dataset
    y = np.asarray(getattr(ds, "y", None) if getattr(ds, "y", None) is not None else [])
    first = ds[0][0].numpy().tobytes() if len(ds) else b""
    return f"{len(ds)}:{zlib.crc32(y.tobytes()):08x}:{zlib.crc32(first):08x}"


def fit(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], train_loader, val_loader,
        epochs: int, optimizer: torch.optim.Optimizer, scheduler, device: torch.device, *,
        criterion: Criterion | None = None, scheduler_per_step: bool = False,
        extra_loss: ExtraLoss | None = None, after_step: Callable[[], None] | None = None,
        train_mode: Callable[[], None] | None = None, val_every: int = 1, progress: bool = True,
        desc: str = "train", start_epoch: int = 1, sampler=None,
        on_epoch_end: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Training with tqdm bars (epoch, loss, accuracy, samples/s, then validation accuracy);
    validation every ``val_every`` epochs and at the end.

    ``criterion(logits, y, x)`` defaults to cross-entropy. ``train_mode`` puts the module in
    training mode at the start of each epoch (default ``module.train()``); ``after_step`` runs
    after every optimizer step; the scheduler steps per batch with ``scheduler_per_step``, else per
    epoch. Epochs run from ``start_epoch`` (resume) to ``epochs``; ``on_epoch_end`` sees each
    epoch's stats (checkpoints).
    """
    history = []
    world = dist_info()[1]
    for epoch in range(start_epoch, epochs + 1):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        (train_mode or module.train)()
        loss_sum = correct = seen = 0
        bits_sum: dict[str, float] = {}   # bits/neuron summed over batches (weighted by batch size)
        # updated by hand: it stays open for the validation accuracy; piped into a log, a frame
        # every 30 s, not ten a second (each a '\r' line there)
        bar = tqdm(total=len(train_loader), desc=f"{desc} epoch {epoch}/{epochs}", disable=not progress, leave=True,
                   unit="batch", mininterval=0.1 if _tty() else 30.0)
        start = time.perf_counter()
        try:   # Ctrl-C: the bar ends before the 'interrupted' message, not after it
            for x, y in _batches(train_loader):
                x, y = x.to(device), y.to(device)
                logits = forward(x)
                loss = criterion(logits, y, x) if criterion is not None else F.cross_entropy(logits, y)
                if extra_loss is not None:
                    reg, batch_bits = extra_loss()
                    loss = loss + reg
                    for k, v in batch_bits.items():
                        bits_sum[k] = bits_sum.get(k, 0.0) + v * len(y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler_per_step:
                    scheduler.step()
                if after_step is not None:
                    after_step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
                rate = seen * world / max(time.perf_counter() - start, 1e-9)
                postfix = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.3f}",
                           "samples/s": f"{rate:.0f}"}
                bits = {k: v / seen for k, v in bits_sum.items()}
                if bits:
                    postfix["bits/neuron"] = f"{sum(bits.values()) / len(bits):.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
        except BaseException:
            bar.close()
            raise
        if not scheduler_per_step:
            scheduler.step()
        stats = EpochStats(epoch, loss_sum / max(seen, 1), correct / max(seen, 1),
                           bits_per_neuron={k: v / max(seen, 1) for k, v in bits_sum.items()},
                           samples_per_s=seen * world / max(time.perf_counter() - start, 1e-9))
        if val_loader is not None and (epoch % val_every == 0 or epoch == epochs):
            stats.val_acc = evaluate(forward, module, val_loader, device)
            if progress:
                bar.set_postfix({"loss": f"{stats.loss:.4f}", "acc": f"{stats.train_acc:.3f}",
                                 "samples/s": f"{stats.samples_per_s:.0f}", "val acc": f"{stats.val_acc:.4f}"})
        bar.close()
        log.info("%s epoch %d/%d: loss %.4f train acc %.4f val acc %s, %.0f samples/s%s", desc, epoch, epochs,
                 stats.loss, stats.train_acc, "-" if stats.val_acc is None else f"{stats.val_acc:.4f}",
                 stats.samples_per_s,
                 "".join(f"\n  {k}: {v:.3f} bits/neuron" for k, v in stats.bits_per_neuron.items()))
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history


def _relu_modules(module: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if type(m) in ACTIVATIONS}


@torch.no_grad()
def calibrate_lambdas(module: nn.Module, images: torch.Tensor, levels: int, method: str = "mse", *,
                      per_channel: bool = True, percentile: float = 99.99, batch_size: int = 64,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """λ per ``nn.ReLU`` site (per channel or per layer) from its pre-activations on ``images``, with
    the calibration code of ``snncc compile`` (:class:`~snncc.calibration.SiteStats` and
    :func:`~snncc.calibration.choose_lambda`)."""
    from snncc.calibration import SiteStats, choose_lambda

    sites = _relu_modules(module)
    stats = {name: SiteStats(per_channel, 1 << 20) for name in sites}
    rng = np.random.default_rng(seed)
    n = len(images)

    def hook(name: str):
        def pre(mod, inp):
            z = inp[0].detach().float().cpu().numpy()
            st = stats[name]
            st.per_channel = st.per_channel and z.ndim >= 2
            st.update(z, n, rng)
        return pre

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in sites.items()]
    was_training = module.training
    module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        for start in range(0, n, batch_size):
            module(images[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return {name: choose_lambda(stats[name], method, levels=levels, percentile=percentile)
            for name in sites if stats[name].max is not None}


def _lambda_init(value: float | str) -> tuple[str, float]:
    """("mse"|"max", 0) / ("percentile", p) / ("const", λ); otherwise SNN-E804."""
    text = str(value).strip().lower()
    if text in ("mse", "max"):
        return text, 0.0
    if text.startswith("p"):
        try:
            p = float(text[1:])
        except ValueError:
            p = -1.0
        check_option(0 < p <= 100, f"lambda init {value!r} is not a percentile", "use e.g. p99.9, mse or a number")
        return "percentile", p
    try:
        lam = float(value)
    except (TypeError, ValueError):
        lam = -1.0
    check_option(lam > 0 and math.isfinite(lam), f"lambda init {value!r} must be mse, max, pNN or a positive number",
                 "e.g. mse (default), p99.9 or 8.0")
    return "const", lam


def _check_types(module: Any, train_data: Any, **values: Any) -> None:
    """SNN-E349 for a Python caller's values of the wrong type (epochs='3' and a path given as
    the module had raised bare TypeError / AttributeError; levels=4.5 trained silently)."""
    def bad(name: str, value: Any, want: str) -> OptionError:
        return OptionError(f"finetune: {name}={value!r} ({type(value).__name__}) must be {want}",
                           code="SNN-E349", hint=f"pass {name} as {want}")

    if not isinstance(module, nn.Module):
        raise bad("module", module, "a torch module (snncc.train.load_onnx_module(path) "
                  "reads an ONNX file)")
    if isinstance(train_data, np.ndarray):
        raise OptionError(f"finetune: train_data is an array of shape {train_data.shape} alone; "
                          "training needs the labels too", code="SNN-E349",
                          hint="pass train_data=(x, y)")
    if train_data is None or (isinstance(train_data, (tuple, list)) and len(train_data) != 2):
        raise bad("train_data", train_data, "an (x, y) pair, a path or a dataset")
    for name, value in values.items():
        integer = name in ("levels", "epochs", "batch_size", "calib_samples", "val_every",
                           "workers", "seed", "snn_timesteps")
        if value is None and name == "snn_timesteps":
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, np.integer) if integer else (int, float, np.number)):
            raise bad(name, value, "an integer" if integer else "a number")


def finetune_module(module: nn.Module, train_data: DataLike, val_data: DataLike | None = None, *,
                    levels: int = 4, epochs: int = 3, sparsity: float = 0.0, lr: float = 0.003,
                    batch_size: int = 64, lambda_init: float | str = "mse", calib_samples: int = 256,
                    distill: float = 0.5, temperature: float = 4.0, warmup: float = 0.3, bn: str = "fold",
                    weight_decay: float = 5e-4, snn_timesteps: int | None = None, maxpool: str = "keep",
                    val_every: int = 1, device: str | torch.device | None = None, seed: int = 0,
                    progress: bool = True, workers: int = 0, resume: dict | None = None,
                    on_epoch_end: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``module`` as a QCFS ANN with ``levels`` quantization steps (recipe in
    the module doc).

    ``train_data``/``val_data``: datasets, ``(x, y)`` arrays or paths (:func:`snncc.train.data.open_dataset`).
    ``distill`` is α (0 = cross-entropy only); ``sparsity`` is κ of the spike-count regulariser
    (0 = off; bits per neuron are reported either way). ``resume`` is a checkpoint dict written
    through ``on_epoch_end`` (which receives one after every epoch: model, optimizer, scheduler,
    epoch, history).
    """
    from snncc.context import MAX_LEVELS, MAX_TIMESTEPS  # what `snncc compile` accepts for -L / -T

    _check_types(module, train_data, levels=levels, epochs=epochs, batch_size=batch_size,
                 calib_samples=calib_samples, val_every=val_every, workers=workers, seed=seed,
                 snn_timesteps=snn_timesteps, sparsity=sparsity, lr=lr, distill=distill,
                 temperature=temperature, warmup=warmup, weight_decay=weight_decay)
    check_option(1 <= levels <= MAX_LEVELS, f"levels L={levels} must lie in 1..{MAX_LEVELS} (what compile accepts)",
                 "use e.g. -L 4")
    check_option(epochs >= 0, f"epochs={epochs} must be >= 0", "use e.g. --epochs 3")
    check_option(0 <= sparsity < math.inf, f"sparsity kappa={sparsity} must be >= 0 and finite",
                 "use e.g. --sparsity 1e-8")
    check_option(0 < lr < math.inf and batch_size >= 1 and val_every >= 1,
                 "lr, batch size and val_every must be positive (and lr finite)", "use e.g. --lr 0.01 --batch-size 64")
    check_option(0 <= weight_decay < math.inf, f"weight decay {weight_decay} must be >= 0 and finite",
                 "e.g. --weight-decay 5e-4, or 0 for none")
    check_option(0 <= distill <= 1 and 0 < temperature < math.inf, f"distillation weight {distill} must lie in "
                 f"[0, 1] and temperature {temperature} be > 0 and finite", "e.g. --distill 0.5 --temperature 4")
    check_option(0 < warmup < 1, f"warm-up fraction {warmup} must lie in (0, 1)", "e.g. --warmup 0.3")
    check_option(bn in ("fold", "freeze", "train"), f"bn={bn!r} is not fold|freeze|train", "use --bn fold")
    check_option(calib_samples >= 1, f"calib samples {calib_samples} must be >= 1", "e.g. --calib-samples 256")
    check_option(snn_timesteps is None or 1 <= snn_timesteps <= MAX_TIMESTEPS,
                 f"SNN timesteps {snn_timesteps} must lie in 1..{MAX_TIMESTEPS} (what compile accepts for -T)",
                 "e.g. --snn-timesteps 4")
    method, value = _lambda_init(lambda_init)
    setup = prepare_training(module, train_data, val_data, batch_size=batch_size, seed=seed,
                             device=device, maxpool=maxpool, workers=workers)
    model, dev, train = setup.model, setup.device, setup.train
    train_loader, val_loader, ann_acc = setup.train_loader, setup.val_loader, setup.ann_acc
    teacher = copy.deepcopy(module).to(dev) if distill > 0 else None   # the source network as it is
    if teacher is not None:
        logits_for_training(teacher, True)
    if bn == "fold":
        folded = model.fold_batchnorm() if hasattr(model, "fold_batchnorm") else 0
        log.info("folded %d BatchNorm layer(s) into their convolutions", folded)
    elif not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # a user's --bn train gave a file byte-identical to the default: there was no BN
        log.warning("--bn %s does nothing here: the model has no BatchNormalization (a plain "
                    "torch.onnx.export folds it into the convolutions; export with training="
                    "torch.onnx.TrainingMode.PRESERVE or do_constant_folding=False to keep it); "
                    "it trains as with --bn fold", bn)
    if resume is not None:
        lam = {k[: -len(".lam")]: v.cpu().numpy() for k, v in resume["model"].items() if k.endswith(".lam")}
    elif method == "const":
        lam = value
    else:
        lam = calibrate_lambdas(model, first_images(train, calib_samples), levels,
                                "percentile" if method == "percentile" else method, percentile=value or 99.99,
                                seed=seed)
    try:
        sites = replace_relu_with_qcfs(model, levels, lam)
    except KeyError as exc:   # a checkpoint of another model: its layers are not this one's
        if resume is None:
            raise
        raise OptionError(f"finetune: the checkpoint holds no layer {exc} of this model: it was "
                          "written for another model", code="SNN-E811",
                          hint="resume with the model the checkpoint was written for") from None
    if not sites:
        clips = sum(s.op == "Clip" for s in getattr(model, "steps", []))
        raise ModelInputError("finetune: the model has no Relu or Clip(0, c > 0) activation to replace"
                              + (f"; its {clips} Clip node(s) have other or non-constant bounds"
                                 if clips else ""), code="SNN-E805",
                              hint="QCFS fine-tuning trains ReLU and ReLU6-like (Clip(0, c)) activations, "
                              "those compile converts; retrain or export the model with one of them")
    model.to(dev)
    rank, world = dist_info()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not snn_timesteps:
            return net(x)
        T = int(snn_timesteps)
        out = net(x.repeat(T, *([1] * (x.dim() - 1))))
        return out.reshape(T, x.shape[0], *out.shape[1:]).mean(0)

    set_spiking(model, snn_timesteps)
    init_acc = evaluate(forward, model, val_loader, dev) if val_loader is not None and resume is None else None
    log.info("QCFS L=%d at %d sites (lambda init %s)%s", levels, len(sites), lambda_init,
             "" if ann_acc is None and init_acc is None else   # no --val: nothing measured
             f"; val acc ANN {percent(ann_acc)} -> before training {percent(init_acc)}")

    def train_mode() -> None:
        model.train()
        if bn != "train":
            freeze_batchnorm(model)

    decay = [p for p in model.parameters() if p.dim() > 1]          # conv / linear weights
    rest = [p for p in model.parameters() if p.dim() <= 1]          # biases, BN γ/β, λ
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    steps = max(epochs * len(train_loader), 2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup,
                                                    anneal_strategy="cos", cycle_momentum=False,
                                                    div_factor=25.0, final_div_factor=1e3)
    history: list[EpochStats] = []
    start_epoch = 1
    if resume is not None:
        total = resume["scheduler"].get("total_steps")
        if total != steps:
            per_epoch = len(train_loader)
            guess = (f"; with this data and batch size that is --epochs {total // per_epoch}"
                     if isinstance(total, int) and per_epoch and total % per_epoch == 0 else "")
            raise OptionError(f"finetune: the checkpoint's schedule has {total} steps, this run {steps} (other "
                              f"--epochs, --batch-size, data or process count{guess})",
                              code="SNN-E811", hint="resume with the options the checkpoint was written with")
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as exc:   # missing / unexpected keys or other shapes
            raise OptionError(f"finetune: the checkpoint's weights do not fit this model "
                              f"({str(exc).splitlines()[0][:200]})", code="SNN-E811",
                              hint="resume with the model the checkpoint was written for") from None
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = [EpochStats(**h) for h in resume.get("history", [])]
        start_epoch = int(resume["epoch"]) + 1
        # this run's --val measures the ANN (the checkpoint's run may have had none, or other
        # data); before-training accuracy only the checkpoint's run could measure, and it and
        # the earlier epochs' figures count only on the same --val
        same_val = val_loader is not None and resume.get("val_id") == _data_id(val_loader)
        init_acc = resume.get("init_val_acc") if same_val else None
        if not same_val:
            for h in history:
                h.val_acc = None
        if "torch_rng" in resume:
            torch.set_rng_state(resume["torch_rng"])

    def epoch_end(stats: EpochStats) -> None:
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": stats.epoch,
                          "history": [vars(h) for h in history], "ann_val_acc": ann_acc, "init_val_acc": init_acc,
                          "val_id": _data_id(val_loader) if val_loader is not None else None,
                          "torch_rng": torch.get_rng_state()})

    reg = SpikeCountRegularizer(qcfs_modules(model), sparsity)
    try:
        fit(model, forward, train_loader, val_loader, epochs, optimizer, scheduler, dev,
            criterion=Distillation(teacher, distill, temperature), scheduler_per_step=True,
            extra_loss=reg, train_mode=train_mode, val_every=val_every, progress=progress and rank == 0,
            desc="qcfs" if not snn_timesteps else f"qcfs+IF T={snn_timesteps}", start_epoch=start_epoch,
            sampler=setup.sampler, on_epoch_end=epoch_end)
    finally:
        reg.close()
    final = history[-1].val_acc if history else init_acc
    qann_acc = final
    if snn_timesteps:
        set_spiking(model, None)
        qann_acc = evaluate(model, model, val_loader, dev) if val_loader is not None else None
    model.eval()
    logits_for_training(model, False)
    return FinetuneResult(model, history, ann_acc, init_acc, final,
                          {name: float(m.lam.detach().mean()) for name, m in qcfs_modules(model).items()},
                          qann_acc)
