"""Export an example model (examples/models.py) to ONNX opset 17.

    python examples/export_models.py resnet34 -o resnet34.onnx [--input-shape 1x3x32x32] [--dynamic-batch]

Without ``--weights`` the model is randomly initialised from ``--seed``, its BatchNorm affine
parameters are randomised and its running statistics are set by a few random batches in train mode,
so that BN folding in snncc has something real to fold.

Exporter choice: torch 2.13's default dynamo exporter needs ``onnxscript``, which this environment does
not ship, so we use the TorchScript exporter (``dynamo=False``). It writes plain standard ops
(Conv, BatchNormalization, Relu, AveragePool, Gemm, Add, Concat, ...) with named initializers. We pass
``training=TrainingMode.PRESERVE`` on a model in eval mode: BatchNormalization stays in the graph in
inference form (snncc folds it itself) instead of being fused into the convolutions by the exporter.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `examples.*`
from examples.models import INPUT_SHAPES, MODELS, build  # noqa: E402

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], dynamic_batch: bool = False) -> None:
    """Write ``model`` (switched to eval mode) as ONNX opset 17 with input 'input' and output 'logits'.

    BatchNormalization nodes are kept (not fused into Conv). ``dynamic_batch`` makes axis 0 symbolic.
    """
    model.eval()
    Path(path).parent.mkdir(parents=True, exist_ok=True)   # -o r34/resnet34.onnx: a new folder
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that PRESERVE mode prefers no constant
        # folding; both are expected here (see the module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(*input_shape),), path, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
        )


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0, batches: int = 4) -> None:
    """Give every BatchNorm non-trivial gamma/beta and running statistics from random training batches."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            m.momentum = None  # cumulative average over the warm-up batches
    model.train()
    shape = (max(8, input_shape[0]),) + tuple(input_shape[1:])
    for _ in range(batches):
        model(torch.randn(shape, generator=gen))
    model.eval()


def model_kwargs(name: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Constructor arguments that fit ``input_shape``: channels, and the image side where the model needs it."""
    kw = {"num_classes": num_classes, "in_channels": input_shape[1]}
    if "image_size" in inspect.signature(MODELS[name]).parameters:
        if input_shape[2] != input_shape[3]:
            raise ValueError(f"{name} needs a square input, got {input_shape}")
        kw["image_size"] = input_shape[2]
    return kw


def random_model(name: str, input_shape: tuple[int, ...] | None = None, seed: int = 0, num_classes: int = 10,
                 **model_kw) -> nn.Module:
    """``name`` from MODELS with seeded random weights and randomised BatchNorm, in eval mode.

    ``model_kw`` goes to the constructor (e.g. ``pool="max"``, ``stem="torchvision"``).
    """
    input_shape = input_shape or INPUT_SHAPES[name]
    torch.manual_seed(seed)
    model = build(name, **model_kwargs(name, input_shape, num_classes), **model_kw)
    randomize_batchnorm(model, input_shape, seed=seed)
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1x3x32x32, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--input-shape", type=parse_shape, help="N x C x H x W (default: the model's own)")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch axis symbolic")
    parser.add_argument("--weights", help="state_dict (.pt) to load instead of random init")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args(argv)

    shape = args.input_shape or INPUT_SHAPES[args.model]
    if args.weights:
        model = build(args.model, **model_kwargs(args.model, shape, args.num_classes))
        try:
            state = torch.load(args.weights, map_location="cpu")
            model.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:   # not a traceback
            parser.error(f"--weights {args.weights}: {exc}")
    else:
        model = random_model(args.model, shape, seed=args.seed, num_classes=args.num_classes)
    export(model, args.output, shape, dynamic_batch=args.dynamic_batch)
    dims = ("batch",) + tuple(shape[1:]) if args.dynamic_batch else shape
    print(f"wrote {args.output} ({args.model}, input {'x'.join(map(str, dims))})")


if __name__ == "__main__":
    main()
