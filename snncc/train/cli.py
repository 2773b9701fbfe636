"""``snncc finetune``: arguments and the command (torch is imported only when the command runs).

    snncc finetune MODEL.onnx --data TRAIN [--val VAL] [-L 4] [--epochs 3] -o OUT.onnx
    snncc finetune MODEL.onnx --data TRAIN --snn-timesteps 0 -o OUT.onnx      # the QANN alone, no IF SNN in the loop
    snncc finetune MODEL.onnx --data TRAIN --iir [--timesteps 5,4,3,2,1] -o OUT.onnx
    snncc finetune MODEL.onnx --data TRAIN --mt cascade [--mt-thresholds 4] [--timesteps 1] -o OUT.onnx
    torchrun --nproc_per_node N -m snncc finetune MODEL.onnx --data TRAIN ... -o OUT.onnx

TRAIN / VAL: an ``.npz`` (keys x, y), an ``x.npy``/``y.npy`` pair (memory-mapped) or an image folder
(one subfolder per class); see :mod:`snncc.train.data`. QCFS mode writes OUT.onnx with the QCFS
pattern. SNN mode (``--iir`` or ``--mt``) writes every stage as ``OUT.T<T>.onnx`` and the last stage
also as OUT.onnx; compile those with ``snncc compile --neuron lif`` (or ``mt``) and no calibration.
Every output is declared and checked first (:mod:`snncc.outputs`) and written atomically; under
torchrun only rank 0 writes and prints.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from snncc.cli import parse_floats
from snncc.errors import CalibrationError, ModelInputError, OptionError
from snncc.train import percent as _fmt

__all__ = ["add_finetune_arguments", "run_finetune"]


#: the --iir / --mt training stages by default
STAGES = [5, 4, 3, 2, 1]

#: a written model this far below the best epoch or the start on --val is warned about (1 point:
#: 98.83 -> 97.66 % had passed under the earlier 5)
FALL = 0.01


def _timesteps(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; write HxW, e.g. 224x224, or one number")
    return dims[0], dims[1]


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX CNN with ReLU or ReLU6-like Clip(0, c) activations")
    parser.add_argument("--data", required=True,
                        help="training data: .npz (keys x, y), x.npy/y.npy pair or a directory holding them "
                             "(memory-mapped), or an image folder ROOT/<class>/<image>")
    parser.add_argument("--val", help="validation data (same forms): accuracy before and after "
                        "training; the model written is the last epoch's, and a warning says when "
                        "it falls more than 1 point behind an earlier one (an --iir / --mt stage: "
                        "5) or ends below half the ANN's accuracy")
    parser.add_argument("-o", "--output", required=True,
                        help="output ONNX path (--iir / --mt also write each earlier stage "
                        "beside it as OUT.T<T>.onnx)")
    parser.add_argument("-L", "--levels", type=int, default=None,
                        help="QCFS quantization steps L (default 4; QCFS mode only; compile's "
                        "IF, MT and SRP use L = T, bit-serial L = 2^T-1: 3 for T = 2, 15 for "
                        "T = 4)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (default 3 for QCFS; per stage in SNN mode, default 10)")
    parser.add_argument("--sparsity", type=float, default=0.0, metavar="KAPPA",
                        help="weight of the spike-count regulariser (as the bit-serial paper trains; e.g. 1e-8; default 0 = off)")
    parser.add_argument("--maxpool", choices=("keep", "avg"), default="keep",
                        help="avg: turn MaxPool into AvgPool before training (default keep)")
    rec = parser.add_argument_group("QCFS recipe")
    rec.add_argument("--lambda-init", default=None,
                     help="initial lambda: mse (default; per channel, the calibration code of compile), max, "
                          "pNN (per-channel NN-th percentile, e.g. p99.9) or a number (one per layer, e.g. 8.0)")
    rec.add_argument("--calib-samples", type=int, default=None,
                     help="training images used to initialise lambda (default 256)")
    rec.add_argument("--distill", type=float, default=None, metavar="ALPHA",
                     help="weight of the distillation loss from the source ANN (default 0.5; 0 = cross-entropy only)")
    rec.add_argument("--temperature", type=float, default=None, help="distillation temperature (default 4)")
    rec.add_argument("--warmup", type=float, default=None,
                     help="fraction of the steps spent warming the learning rate up (one-cycle; default 0.3)")
    rec.add_argument("--bn", choices=("fold", "freeze", "train"), default=None,
                     help="BatchNorm: fold into the convolutions (default), freeze its statistics, or train them")
    rec.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay (default 5e-4; >= 0)")
    rec.add_argument("--snn-timesteps", type=int, metavar="T",
                     help="train with the IF SNN at T timesteps in the loop, as `compile --neuron if -T T` builds it "
                          "(default: T = L when L <= 8, else off; 0 = off: train the QANN alone)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 0.003 SGD one-cycle for QCFS, 1e-4 Adam for SNN)")
    parser.add_argument("--batch-size", type=int, help="batch size per process (default 64)")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    data = parser.add_argument_group("data")
    data.add_argument("--input-size", type=_size, metavar="HxW",
                      help="resize image-folder images to HxW (default: the model's input size)")
    from snncc.cli import _parse_shape

    data.add_argument("--input-shape", type=_parse_shape, action="append", default=[],
                      metavar="[NAME=]1x3x32x32",
                      help="as for compile: fix a model's dynamic input dims where its shape "
                      "computations need them (x.view(x.size(0), -1) in an export with "
                      "dynamic height and width)")
    data.add_argument("--mean", type=parse_floats, help="per-channel mean subtracted after scaling to [0, 1], "
                                                   "e.g. 0.485,0.456,0.406")
    data.add_argument("--std", type=parse_floats, help="per-channel std divided by, e.g. 0.229,0.224,0.225")
    data.add_argument("--workers", type=int, default=None,
                      help="DataLoader worker processes (default 0 for .npz; for images and .npy 4, at most "
                           "the CPU count)")
    snn = parser.add_argument_group("SNN training (IIR-SNN, multi-threshold)")
    snn.add_argument("--iir", action="store_true", help="train a LIF SNN with the IIR schedule (T = 5 -> 1, the IIR-SNN paper)")
    snn.add_argument("--mt", choices=("parallel", "cascade"),
                     help="train multi-threshold neurons instead of LIF (the multi-threshold paper)")
    snn.add_argument("--mt-thresholds", type=int, default=4, help="thresholds per MT neuron (default 4)")
    snn.add_argument("--timesteps", type=_timesteps, default=list(STAGES),
                     help="--iir / --mt training stages, each starting from the previous "
                     "(default 5,4,3,2,1; the QCFS mode's SNN T is --snn-timesteps)")
    snn.add_argument("--threshold-percentile", type=float, default=90.0,
                     help="percentile of the input current for the initial thresholds (default 90)")
    snn.add_argument("--threshold-steps", type=int, default=500,
                     help="steps run per layer for the initial thresholds (default 500)")
    snn.add_argument("--threshold-batch", type=int, default=512, help="images in the threshold batch (default 512)")
    run = parser.add_argument_group("running")
    run.add_argument("--checkpoint", metavar="FILE.pt", help="write a checkpoint after every epoch (QCFS mode)")
    run.add_argument("--resume", metavar="FILE.pt", help="continue from a checkpoint written by --checkpoint")
    run.add_argument("--device", help="torch device (default cuda when available, else cpu; torchrun: one GPU "
                                      "per process, cuda:LOCAL_RANK)")
    run.add_argument("--seed", type=int, default=0,
                     help="random seed (default 0). The same seed, torch build, thread count and CPU give a "
                     "byte-identical output; another thread count or CPU sums in another order and can move "
                     "a few test images (the output's snncc.train record keeps seed, threads and torch)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (with -v, one log line per epoch instead)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="print nothing on success but warnings (stderr); no progress bars")


def _stage_path(output: Path, T: int) -> Path:
    return output.with_name(f"{output.stem}.T{T}{output.suffix or '.onnx'}")


# QCFS-only options (argparse default None, so that an explicit one can be told apart): flag, default
_QCFS_ONLY = {"levels": ("-L", 4), "lambda_init": ("--lambda-init", "mse"), "calib_samples": ("--calib-samples", 256),
              "distill": ("--distill", 0.5), "temperature": ("--temperature", 4.0), "warmup": ("--warmup", 0.3),
              "bn": ("--bn", "fold"), "weight_decay": ("--weight-decay", 5e-4)}


def _check_args(args: argparse.Namespace, snn: bool) -> None:
    """Refuse bad values and option clashes (SNN-E804) and fill in the QCFS defaults."""
    import math

    from snncc.context import MAX_LEVELS, MAX_TIMESTEPS  # what `snncc compile` accepts for -L / -T

    def need(ok: bool, what: str, hint: str) -> None:
        if not ok:
            raise OptionError(f"finetune: {what}", code="SNN-E804", hint=hint)

    need(args.epochs is None or args.epochs >= 1, f"--epochs {args.epochs} must be >= 1", "e.g. --epochs 3")
    need(args.batch_size is None or args.batch_size >= 1, f"--batch-size {args.batch_size} must be >= 1",
         "e.g. --batch-size 64")
    need(args.levels is None or 1 <= args.levels <= MAX_LEVELS,
         f"-L {args.levels} must lie in 1..{MAX_LEVELS} (what snncc compile accepts)", "e.g. -L 4")
    need(args.lr is None or 0 < args.lr < math.inf, f"--lr {args.lr} must be > 0 and finite", "e.g. --lr 0.01")
    need(args.val_every >= 1, f"--val-every {args.val_every} must be >= 1", "e.g. --val-every 1")
    need(args.workers is None or args.workers >= 0, f"--workers {args.workers} must be >= 0", "e.g. --workers 4")
    need(args.calib_samples is None or args.calib_samples >= 1, f"--calib-samples {args.calib_samples} must be >= 1",
         "e.g. --calib-samples 256")
    need(args.weight_decay is None or 0 <= args.weight_decay < math.inf,
         f"--weight-decay {args.weight_decay} must be >= 0 and finite", "e.g. --weight-decay 5e-4, or 0 for none")
    need(math.isfinite(args.sparsity) and args.sparsity >= 0, f"--sparsity {args.sparsity} must be >= 0 and finite",
         "e.g. --sparsity 1e-8, or 0 for off")
    need(args.snn_timesteps is None or 0 <= args.snn_timesteps <= MAX_TIMESTEPS,
         f"--snn-timesteps {args.snn_timesteps} must lie in 0..{MAX_TIMESTEPS} (snncc compile accepts -T up to "
         f"{MAX_TIMESTEPS})", "e.g. --snn-timesteps 4, or 0 for none")
    if snn:
        if _world_size() > 1:   # before the group joins and the data loads
            raise OptionError("finetune: --iir/--mt train in one process only", code="SNN-E812",
                              hint="run SNN training without torchrun")
        if args.sparsity:
            raise OptionError("finetune: --sparsity applies to QCFS fine-tuning, not to --iir/--mt", code="SNN-E804",
                              hint="drop --sparsity or --iir/--mt")
        need(not (args.checkpoint or args.resume or args.snn_timesteps),  # None (auto) is fine here
             "--checkpoint, --resume and --snn-timesteps apply to QCFS fine-tuning, not to --iir/--mt",
             "drop them or --iir/--mt")
        given = [flag for key, (flag, _) in _QCFS_ONLY.items() if getattr(args, key) is not None]
        need(not given, f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to QCFS fine-tuning and "
             "would be ignored with --iir/--mt (LIF/MT neurons have no QCFS levels or recipe)",
             f"drop {', '.join(given)}" + (", or use --mt-thresholds N for multi-threshold neurons"
                                           if "-L" in given else ""))
        need(all(1 <= t <= MAX_TIMESTEPS for t in args.timesteps),
             f"--timesteps {args.timesteps} must lie in 1..{MAX_TIMESTEPS} (snncc compile accepts -T up to "
             f"{MAX_TIMESTEPS})", "e.g. 5,4,3,2,1")
    else:   # (it had been ignored without a word)
        need(args.timesteps == STAGES, f"--timesteps {','.join(map(str, args.timesteps))} sets "
             "the --iir / --mt training stages; QCFS fine-tuning has none",
             "drop it, or give --snn-timesteps T for the IF SNN that QCFS training runs in the "
             "loop")
    for key, (_, default) in _QCFS_ONLY.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if not snn:   # before the data loads (these had failed only after it, ~10 s in)
        from snncc.train.finetune import _lambda_init

        need(0 <= args.distill <= 1 and 0 < args.temperature < math.inf,
             f"--distill {args.distill} must lie in [0, 1] and --temperature {args.temperature} "
             "be > 0 and finite", "e.g. --distill 0.5 --temperature 4")
        need(0 < args.warmup < 1, f"--warmup {args.warmup} must lie in (0, 1)", "e.g. --warmup 0.3")
        _lambda_init(args.lambda_init)


def _world_size() -> int:
    """torchrun's WORLD_SIZE (1 when unset, empty or not a number: an internal error before)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def _init_distributed(device: str | None) -> bool:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); False when not under torchrun."""
    if _world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    try:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise OptionError(f"finetune: cannot join the torchrun process group with {backend} ({exc})",
                          code="SNN-E812", hint="start with torchrun --nproc_per_node N -m snncc finetune ...; "
                          "check --rdzv-endpoint / MASTER_ADDR and MASTER_PORT") from exc
    return True


def _num_classes(module, sample_shape) -> int | None:
    import torch

    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(1, *sample_shape))
    except Exception:   # the shape check reports it
        return None
    if out.dim() != 2:   # e.g. [N, 10, 1, 1] of a final 1x1 conv: the loss needs [N, classes]
        raise ModelInputError(
            f"the model's output '{module.output_name}' has shape {list(out.shape)} for one "
            "sample; fine-tuning trains a classifier whose output is [N, classes]",
            code="SNN-E808", hint="export the model with a Flatten (or Reshape to [N, -1]) "
            "after its last layer")
    return int(out.shape[1])


#: samples whose largest magnitude compares --data with --val
SCALE_SAMPLES = 256


def _made_with(args) -> dict:
    """What a rerun needs to give the same bytes, for the output's ``snncc.train`` record: the
    seed, torch's intra-op thread count and build (a second thread or another CPU sums the
    gradients in another order: three MNIST test images had moved between one and two threads
    at an earlier version)."""
    import torch

    return {"seed": args.seed, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _warn_if_scales_differ(train, val) -> None:
    """Warn when --data and --val reach magnitudes more than 8x apart: float images x 255 for
    training and 0..1 for validation had trained a QCFS net from 92.5 % to 12.5 % on --val with
    no word (integer images get their own check)."""
    tops = []
    for ds in (train, val):
        n = min(len(ds), SCALE_SAMPLES)
        tops.append(max(float(ds[i][0].abs().max()) for i in range(n)) if n else 0.0)
    lo, hi = sorted(tops)
    if lo > 0 and hi / lo > 8:
        print(f"snncc finetune: warning: --data reaches {tops[0]:.4g} and --val {tops[1]:.4g} "
              f"(first {SCALE_SAMPLES} samples): are both preprocessed the same way (scale, "
              "--mean/--std)?", file=sys.stderr)


#: fewer training samples per class than this is warned about (the recipe tables train on
#: 144 per class on digits and 350 on the MNIST subset)
FEW_PER_CLASS = 10


def _warn_if_few(train, classes: int | None, path: str) -> None:
    """A training set of a few samples per class fine-tunes without a word and overfits."""
    if classes and len(train) < FEW_PER_CLASS * classes:
        print(f"snncc finetune: warning: --data '{path}' holds {len(train)} samples for "
              f"{classes} classes (fewer than {FEW_PER_CLASS} per class): fine-tuning on so few "
              "fits them and rarely generalises; give the training set (the recipe tables use "
              "144-350 per class) and --val to see the accuracy on other samples",
              file=sys.stderr)


def _open(path: str, module, args: argparse.Namespace, what: str, say_notes: bool = True):
    """The data set at ``path`` checked against the model, and the model's class count;
    ``say_notes``: warn about what it normalised (once: torchrun's rank 0, the training data)."""
    from snncc.train.data import check_input_shape, check_labels, check_normalisation, open_dataset

    dims = module.input_dims
    channels = dims[1] if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0 else None
    check_normalisation(args.mean, args.std, channels, f"the model input '{module.input_name}'")
    size = args.input_size
    if size is None and len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[2:]):
        size = (dims[2], dims[3])
    # known before the data is read where the model fixes its input: an image folder with more
    # class folders than outputs is then said as such (it was 'label 10 is out of range' for
    # folder '9', the folders sorting as text)
    known = _num_classes(module, (channels, *size)) if channels and size and len(dims) == 4 \
        else None
    ds = open_dataset(path, channels=channels, size=size, mean=args.mean, std=args.std, what=what,
                      num_classes=known)
    check_input_shape(ds, dims, what)
    if (args.mean is not None or args.std is not None) and say_notes and \
            type(ds).__name__ != "ImageFolderDataset":
        # compile refuses them with arrays (SNN-E371): the same file and flags would not calibrate
        print(f"snncc finetune: warning: --mean/--std normalised the arrays of '{path}'; compile's "
              "--calib takes arrays as the model takes them, so calibrate on the normalised arrays "
              "(or on an image folder with the same --mean/--std)", file=sys.stderr)
    if args.input_size is not None and type(ds).__name__ != "ImageFolderDataset":
        print(f"snncc finetune: warning: --input-size resizes image-folder images; the arrays "
              f"of '{path}' are used at their own size", file=sys.stderr)
    classes = known if known is not None and tuple(ds.sample_shape) == (channels, *size) \
        else _num_classes(module, ds.sample_shape)
    check_labels(ds.y, len(ds), classes, f"{what} '{path}'")
    return ds, classes


def _load_checkpoint(path: str, levels: int, recipe: dict) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(state, dict) and {"model", "optimizer", "scheduler", "epoch"} <= set(state)
    except OSError as exc:
        raise CalibrationError(f"finetune: cannot read checkpoint '{path}' ({exc.strerror or exc})",
                               code="SNN-E811", hint="give a file written by --checkpoint") from None
    except Exception:  # torch raises many types (IndexError, UnpicklingError...) for other files
        what = ("an ONNX model, not a checkpoint: --resume takes the .pt that --checkpoint wrote"
                if Path(path).suffix.lower() == ".onnx" else
                "not a checkpoint torch can read (a foreign or truncated file)")
        raise CalibrationError(f"finetune: '{path}' is {what}", code="SNN-E811",
                               hint="give a file written by --checkpoint") from None
    if not ok:
        raise CalibrationError(f"finetune: '{path}' is not an snncc finetune checkpoint", code="SNN-E811",
                               hint="give a file written by --checkpoint")
    if state.get("levels") != levels:
        raise CalibrationError(f"finetune: checkpoint '{path}' was written with -L {state.get('levels')}, not "
                               f"-L {levels}", code="SNN-E811", hint="resume with the same options")
    saved = state.get("recipe") or {}   # none in checkpoints of an earlier snncc
    differ = [f"{k} {recipe[k]} (checkpoint: {v})" for k, v in saved.items()
              if k in recipe and v != recipe[k]]
    if differ:
        raise CalibrationError(f"finetune: checkpoint '{path}' was written with other options: "
                               + ", ".join(differ), code="SNN-E811",
                               hint="resume with the options the checkpoint was written with")
    return state


def run_finetune(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (only whether it is installed)
    except ImportError:
        raise OptionError("finetune: torch is not installed", code="SNN-E807",
                          hint="pip install 'torch==2.13.0+cpu' --extra-index-url "
                          "https://download.pytorch.org/whl/cpu (the CPU wheel; PyPI's torch "
                          "is the multi-GB CUDA build), or bash scripts/setup.sh in a checkout"
                          ) from None
    from snncc.outputs import (Output, atomic_file, check_outputs, check_suffix, file_output,
                                same_path)

    from snncc.train.finetune import pick_device

    snn = args.iir or args.mt is not None
    _check_args(args, snn)
    pick_device(args.device)   # a bad --device is refused before anything is read or written
    output = file_output(args.output, example="qcfs.onnx", command="finetune")
    outs = [Output(output, "file", "-o")]
    if snn:
        # named by snncc after -o: an existing file there is replaced only when snncc wrote it
        outs += [Output(_stage_path(output, T), "file", "-o (stage)", implied="stage")
                 for T in dict.fromkeys(args.timesteps)]
    if args.checkpoint:
        outs.append(Output(Path(args.checkpoint), "file", "--checkpoint"))
    inputs = [args.model, args.data, args.val]
    if args.resume and not (args.checkpoint and same_path(args.resume, args.checkpoint)):
        inputs.append(args.resume)   # resuming into the same checkpoint file is allowed
    check_outputs(outs, inputs=inputs, command="finetune", has_force=False)
    check_suffix(output, "-o", "an ONNX model", (".onnx",), "finetune")
    if args.checkpoint:
        check_suffix(args.checkpoint, "--checkpoint", "a torch checkpoint", (".pt", ".pth"),
                     "finetune")

    distributed = _init_distributed(args.device)
    if not distributed:
        return _run(args, snn, output, distributed, atomic_file)
    import torch.distributed as dist

    try:
        code = _run(args, snn, output, distributed, atomic_file)
        # Every rank waits here (rank 0 exports meanwhile). The wait also lets gloo's worker
        # threads drop their last collective, whose tensor is a Python object, while the
        # interpreter is alive: a rank that exits within a few ms of its last all_reduce
        # otherwise aborts in finalization ("terminate called without an active exception").
        # A rank that raised skips it and exits non-zero; torchrun then stops the ranks still
        # waiting here (SIGTERM), as it does for any failed rank.
        dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


def _run(args: argparse.Namespace, snn: bool, output: Path, distributed: bool, atomic_file) -> int:
    import torch

    from snncc import ir
    from snncc.train.export import export_onnx
    from snncc.train.finetune import dist_info
    from snncc.train.onnx_to_torch import load_onnx_module

    rank = dist_info()[0]
    if rank:   # torchrun: the log once, from rank 0 (each rank had logged its own shard's figures)
        logging.getLogger("snncc").setLevel(logging.WARNING)
    say = print if rank == 0 and not args.quiet else (lambda *a, **k: None)
    from snncc.cli import _input_shapes

    module = load_onnx_module(args.model, _input_shapes(args.model, args.input_shape))
    train, classes = _open(args.data, module, args, "training data", say_notes=rank == 0)
    val = _open(args.val, module, args, "validation data", say_notes=False)[0] if args.val \
        else None
    # image folders decode in worker processes: up to 4, never more than the CPUs this process
    # may use (torch warns three times otherwise)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers if args.workers is not None else \
        (0 if type(train).__name__ == "ArrayDataset" else min(4, cpus))
    batch = module.input_dims[0] if isinstance(module.input_dims[0], int) and module.input_dims[0] > 0 else 1
    first = train[0][0].unsqueeze(0)
    sample = first.expand(batch, *first.shape[1:]).contiguous()
    if rank == 0 and val is not None:
        _warn_if_scales_differ(train, val)
    if rank == 0:
        _warn_if_few(train, classes, args.data)
    common = dict(maxpool=args.maxpool, val_every=args.val_every, device=args.device, seed=args.seed,
                  progress=not (args.no_progress or args.quiet) and rank == 0)
    names = dict(input_name=module.input_name, output_name=module.output_name, input_dims=module.input_dims)

    if not snn:
        from snncc.train.finetune import finetune_module

        loop_T = args.snn_timesteps if args.snn_timesteps is not None else (args.levels if args.levels <= 8 else 0)
        # what a resumed run must share with the checkpoint's (its optimizer and schedule state
        # carry lr, weight decay and warmup: another value had been silently ignored, while
        # another --distill or --snn-timesteps had silently applied to the remaining epochs)
        recipe = {"--lr": args.lr or 0.003, "--weight-decay": args.weight_decay,
                  "--warmup": args.warmup, "--distill": args.distill,
                  "--temperature": args.temperature, "--snn-timesteps": loop_T,
                  "--sparsity": args.sparsity, "--bn": args.bn, "--maxpool": args.maxpool}
        resume = _load_checkpoint(args.resume, args.levels, recipe) if args.resume else None

        def save_checkpoint(state: dict) -> None:
            if args.checkpoint and rank == 0:
                state["levels"] = args.levels
                state["recipe"] = recipe
                with atomic_file(args.checkpoint) as tmp:
                    # serialised in memory, written by Python: torch.save's own writer raises a
                    # RuntimeError on a full disk (an internal error), Python an OSError (E369)
                    buffer = io.BytesIO()
                    torch.save(state, buffer)
                    tmp.write_bytes(buffer.getvalue())

        res = finetune_module(module, train, val, levels=args.levels, epochs=args.epochs or 3,
                              sparsity=args.sparsity, lr=args.lr or 0.003, batch_size=args.batch_size or 64,
                              lambda_init=args.lambda_init, calib_samples=args.calib_samples, distill=args.distill,
                              temperature=args.temperature, warmup=args.warmup, bn=args.bn,
                              weight_decay=args.weight_decay, snn_timesteps=loop_T or None, workers=workers,
                              resume=resume, on_epoch_end=save_checkpoint, **common)
        if rank == 0:
            meta = {"kind": "qcfs", "levels": args.levels, "sparsity": args.sparsity, "lambda_init": args.lambda_init,
                    "distill": args.distill, "epochs": args.epochs or 3, **_made_with(args)}
            if loop_T:
                meta["trained_for"] = f"if T={loop_T}"
            export_onnx(res.module, sample, str(output), **names, metadata=meta)
        last = res.history[-1] if res.history else None
        if res.ann_val_acc is None:
            say(f"QCFS L={args.levels}: no --val data, so no validation accuracy")
        elif loop_T:
            say(f"QCFS L={args.levels}, trained with the IF SNN at T={loop_T} in the loop; val acc: "
                f"ANN {_fmt(res.ann_val_acc)}; IF SNN T={loop_T} before training "
                f"{_fmt(res.qcfs_init_val_acc)} -> after {_fmt(res.val_acc)}; the QCFS net "
                f"(QANN) after {_fmt(res.qann_val_acc)}")
        else:
            say(f"QCFS L={args.levels}: val acc: ANN {_fmt(res.ann_val_acc)}; the QCFS net "
                f"(QANN) before training {_fmt(res.qcfs_init_val_acc)} -> after {_fmt(res.val_acc)}")
        if last and last.bits_per_neuron:
            say("bits per neuron: " + ", ".join(f"{k} {v:.3f}" for k, v in last.bits_per_neuron.items()))
        scored = [h for h in res.history if h.val_acc is not None]
        best = max(scored, key=lambda h: h.val_acc, default=None)
        start = res.qcfs_init_val_acc
        if rank == 0 and res.val_acc is not None and (
                (best is not None and best.val_acc - res.val_acc > FALL)
                or (start is not None and start - res.val_acc > FALL)):
            # a user's --lr 0.05: 91.5 % before training, 65.5 % after, written with no word
            was = (f"epoch {best.epoch} {_fmt(best.val_acc)}" if best is not None
                   and (start is None or best.val_acc >= start) else f"before training {_fmt(start)}")
            print(f"snncc finetune: warning: the written model (the last epoch) reaches "
                  f"{_fmt(res.val_acc)} on --val, {was}: training diverged or overfitted; try a "
                  "lower --lr or fewer --epochs", file=sys.stderr)
        if rank == 0 and res.val_acc is not None and res.ann_val_acc and \
                res.val_acc < 0.5 * res.ann_val_acc:
            # --lambda-init 20: every layer all but silent, 13 % before and after training, as
            # written with no word (nothing fell, so the warning above had nothing to say)
            quiet = [k for k, v in (last.bits_per_neuron if last else {}).items() if v < 0.01]
            why = (f"{len(quiet)} layer(s) barely spike ({', '.join(quiet[:2])}"
                   f"{' ...' if len(quiet) > 2 else ''}: under 0.01 bits per neuron), so their "
                   "thresholds may lie above their inputs; try --lambda-init mse (the default)"
                   if quiet else "try the default recipe, or more --epochs")
            print(f"snncc finetune: warning: the written model reaches {_fmt(res.val_acc)} on "
                  f"--val, the ANN {_fmt(res.ann_val_acc)}: {why}", file=sys.stderr)
        if rank == 0:
            _stale_manifest(output)
        say(f"wrote {output}")
        from snncc.context import MAX_TIMESTEPS

        model = shlex.quote(str(output))
        L = args.levels
        if loop_T:
            say(f"next: snncc compile {model} -T {loop_T} -o SNN.onnx (the IF SNN it trained "
                "with; add --calib FILE for a fidelity estimate)")
        elif L <= MAX_TIMESTEPS:
            say(f"next: snncc compile {model} -T {L} -o SNN.onnx (--neuron if, mt or srp at "
                f"T = L = {L}; bit-serial takes L = 2^T - 1; add --calib FILE for a fidelity "
                "estimate)")
        else:   # (it had named -T 100, which compile refuses: E354)
            say(f"next: snncc compile {model} --neuron mt -o SNN.onnx with n * T = L = {L} (IF "
                f"and SRP need T = L, beyond compile's {MAX_TIMESTEPS}; add --calib FILE for a "
                "fidelity estimate)")
        return 0

    if distributed:
        raise OptionError("finetune: --iir/--mt train in one process only", code="SNN-E812",
                          hint="run SNN training without torchrun")
    from snncc.train.iir import train_snn

    neuron = "mt" if args.mt else "lif"
    protos = []

    def export_stage(stage, model) -> None:
        meta = {"kind": "snn", "neuron": neuron, "timesteps": stage.T,
                "output": "trained on the sum over T of the last layer; the mean has the same argmax",
                **_made_with(args)}
        if args.mt:
            meta["mt_mode"] = args.mt
        path = _stage_path(output, stage.T)
        # marked as a stage file: a later run replaces it, never a final output of this name
        protos.append(export_onnx(model, sample, str(path), **names,
                                  metadata={**meta, "file": "stage"}))
        acc = (f"val acc {_fmt(stage.init_val_acc)} at start -> {_fmt(stage.val_acc)}; "
               if stage.val_acc is not None else "")
        say(f"stage T={stage.T}: {acc}wrote {path}")

    res = train_snn(module, train, val, timesteps=args.timesteps, mt=args.mt, mt_thresholds=args.mt_thresholds,
                    epochs=args.epochs or 10, lr=args.lr or 1e-4, batch_size=args.batch_size or 64,
                    threshold_percentile=args.threshold_percentile, threshold_steps=args.threshold_steps,
                    threshold_batch=args.threshold_batch, on_stage_end=export_stage, **common)
    import onnx

    final = onnx.ModelProto.FromString(protos[-1].SerializeToString())
    for prop in final.metadata_props:   # the final output is the user's, not a stage file
        if prop.key == "snncc.train":
            prop.value = json.dumps({**json.loads(prop.value), "file": "final"})
    ir.save(final, output)
    _stale_manifest(output)
    say((f"ANN val acc {_fmt(res.ann_val_acc)}; " if res.ann_val_acc is not None else "")
        + f"wrote {output} (= stage T={res.stages[-1].T})")
    scored = [st for st in res.stages if st.val_acc is not None]
    best = max(scored, key=lambda st: st.val_acc, default=None)
    last = res.stages[-1]
    if best is not None and last.val_acc is not None and best.val_acc - last.val_acc > 0.05:
        # a user's --timesteps 2,1 with one epoch: T = 2 at 82.4 %, T = 1 at 13.2 %, written as
        # the output with no word
        print(f"snncc finetune: warning: the last stage (T={last.T}) reaches {_fmt(last.val_acc)} "
              f"on --val, stage T={best.T} {_fmt(best.val_acc)}; its file is "
              f"{_stage_path(output, best.T)} (more --epochs per stage may carry it further)",
              file=sys.stderr)
    say(f"next: snncc compile {shlex.quote(str(output))} -o SNN.onnx (its neurons and T = "
        f"{last.T} come with it; --calib FILE adds measured SynOps: a trained SNN has no ANN to "
        "estimate against)")
    return 0


def _stale_manifest(output) -> None:
    """Warn when ``output`` replaced a compiled model whose manifest stays beside it (it would
    still describe the compiled SNN; snncc deletes nothing it was not asked to write)."""
    from snncc.outputs import written_by_snncc

    manifest = Path(f"{output}.json")
    if manifest.is_file() and written_by_snncc(manifest, "manifest"):
        print(f"snncc finetune: warning: {manifest} describes the compiled model this output "
              "replaced; remove it, or compile the fine-tuned model to that name again",
              file=sys.stderr)


