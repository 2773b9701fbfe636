"""``snncc finetune``: arguments and the command (torch is imported only when the command runs).

    snncc finetune MODEL.onnx --data TRAIN.npz [--val VAL.npz] -L 4 --epochs N [--sparsity K] -o OUT.onnx
    snncc finetune MODEL.onnx --data TRAIN.npz --iir [--timesteps 5,4,3,2,1] -o OUT.onnx
    snncc finetune MODEL.onnx --data TRAIN.npz --mt cascade [--mt-thresholds 4] [--timesteps 1] -o OUT.onnx

QCFS mode writes OUT.onnx with the QCFS pattern. SNN mode (``--iir`` or ``--mt``) writes every
stage as ``OUT.T<T>.onnx`` and the last stage also as OUT.onnx; compile those with
``snncc compile --neuron lif`` (or ``mt``) and no calibration.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from snncc.errors import OptionError

__all__ = ["add_finetune_arguments", "run_finetune"]


def _timesteps(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    return values


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX CNN with ReLU activations")
    parser.add_argument("--data", required=True, help=".npz training data with keys x (images) and y (labels)")
    parser.add_argument("--val", help=".npz validation data (same keys)")
    parser.add_argument("-o", "--output", required=True, help="output ONNX path")
    parser.add_argument("-L", "--levels", type=int, default=4, help="QCFS quantization steps L (default 4)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (per stage in SNN mode; default 10)")
    parser.add_argument("--sparsity", type=float, default=0.0, metavar="KAPPA",
                        help="weight of the spike-count regulariser (seed 000; e.g. 1e-8; default 0 = off)")
    parser.add_argument("--maxpool", choices=("keep", "avg"), default="keep",
                        help="avg: turn MaxPool into AvgPool before training (default keep)")
    parser.add_argument("--lambda-init", default="8.0",
                        help="initial QCFS lambda: a number (default 8.0, as in the QCFS repos) or pNN, "
                             "the NN-th percentile of each ReLU output on one batch (e.g. p99.9)")
    parser.add_argument("--lr", type=float, help="learning rate (default 0.01 SGD for QCFS, 1e-4 Adam for SNN)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 128 for QCFS, 64 for SNN)")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    snn = parser.add_argument_group("SNN training (IIR-SNN, multi-threshold)")
    snn.add_argument("--iir", action="store_true", help="train a LIF SNN with the IIR schedule (seed 001)")
    snn.add_argument("--mt", choices=("parallel", "cascade"),
                     help="train multi-threshold neurons instead of LIF (seed 003)")
    snn.add_argument("--mt-thresholds", type=int, default=4, help="thresholds per MT neuron (default 4)")
    snn.add_argument("--timesteps", type=_timesteps, default=[5, 4, 3, 2, 1],
                     help="training stages, each starting from the previous (default 5,4,3,2,1)")
    snn.add_argument("--threshold-percentile", type=float, default=90.0,
                     help="percentile of the input current for the initial thresholds (default 90)")
    snn.add_argument("--threshold-steps", type=int, default=500,
                     help="steps run per layer for the initial thresholds (default 500)")
    snn.add_argument("--threshold-batch", type=int, default=512, help="images in the threshold batch (default 512)")
    parser.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _stage_path(output: Path, T: int) -> Path:
    return output.with_name(f"{output.stem}.T{T}{output.suffix or '.onnx'}")


def run_finetune(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise OptionError("finetune: torch is not installed", code="SNN-E807",
                          hint="pip install 'snncc[train]' (torch==2.13.0)") from None
    from snncc.train.data import check_input_shape, load_npz
    from snncc.train.export import export_onnx
    from snncc.train.onnx_to_torch import load_onnx_module

    snn = args.iir or args.mt is not None
    if snn and args.sparsity:
        raise OptionError("finetune: --sparsity applies to QCFS fine-tuning, not to --iir/--mt", code="SNN-E804",
                          hint="drop --sparsity or --iir/--mt")
    module = load_onnx_module(args.model)
    train = load_npz(args.data)
    check_input_shape(train[0], module.input_dims, "training data")
    val = None
    if args.val:
        val = load_npz(args.val)
        check_input_shape(val[0], module.input_dims, "validation data")
    batch = module.input_dims[0] if isinstance(module.input_dims[0], int) and module.input_dims[0] > 0 else 1
    sample = torch.from_numpy(train[0][:1]).expand(batch, *train[0].shape[1:]).contiguous()
    output = Path(args.output)
    common = dict(epochs=args.epochs, maxpool=args.maxpool, val_every=args.val_every, device=args.device,
                  seed=args.seed, progress=not args.no_progress)
    names = dict(input_name=module.input_name, output_name=module.output_name, input_dims=module.input_dims)

    if not snn:
        from snncc.train.finetune import finetune_module

        res = finetune_module(module, train, val, levels=args.levels, sparsity=args.sparsity,
                              lr=args.lr or 0.01, batch_size=args.batch_size or 128,
                              lambda_init=args.lambda_init, **common)
        export_onnx(res.module, sample, str(output), **names,
                    metadata={"kind": "qcfs", "levels": args.levels, "sparsity": args.sparsity})
        last = res.history[-1] if res.history else None
        print(f"QCFS L={args.levels}: val acc ANN {_fmt(res.ann_val_acc)} -> QCFS before training "
              f"{_fmt(res.qcfs_init_val_acc)} -> after {_fmt(res.val_acc)}")
        if last and last.bits_per_neuron:
            print("bits per neuron: " + ", ".join(f"{k} {v:.3f}" for k, v in last.bits_per_neuron.items()))
        print(f"wrote {output}")
        return 0

    from snncc.train.iir import train_snn

    neuron = "mt" if args.mt else "lif"
    written: list[Path] = []

    def export_stage(stage, model) -> None:
        meta = {"kind": "snn", "neuron": neuron, "timesteps": stage.T,
                "output": "trained on the sum over T of the last layer; the mean has the same argmax"}
        if args.mt:
            meta["mt_mode"] = args.mt
        path = _stage_path(output, stage.T)
        export_onnx(model, sample, str(path), **names, metadata=meta)
        written.append(path)
        print(f"stage T={stage.T}: val acc {_fmt(stage.init_val_acc)} at start -> {_fmt(stage.val_acc)}; wrote {path}")

    res = train_snn(module, train, val, timesteps=args.timesteps, mt=args.mt, mt_thresholds=args.mt_thresholds,
                    lr=args.lr or 1e-4, batch_size=args.batch_size or 64,
                    threshold_percentile=args.threshold_percentile, threshold_steps=args.threshold_steps,
                    threshold_batch=args.threshold_batch, on_stage_end=export_stage, **common)
    output.write_bytes(written[-1].read_bytes())
    print(f"ANN val acc {_fmt(res.ann_val_acc)}; wrote {output} (= stage T={res.stages[-1].T})")
    return 0


def _fmt(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"
