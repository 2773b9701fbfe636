"""The default command on trained architectures unlike the bundled ones (none of them is bundled).

    python examples/other_nets.py [--only NAME ...] [--work DIR]

Trains, with seed 0 on the MNIST subset's fixed split (``examples/data.py``: 3500 train, 1000
test) and the recipe of ``train_examples.py``, four nets whose layers the four bundled nets do
not have:

- ``mobilenet``: depthwise-separable blocks, BN, ReLU6 (ONNX ``Clip(0, 6)``), global average pool;
- ``bottleneck``: a ResNet of 1x1-3x3-1x1 bottleneck blocks with projection shortcuts;
- ``inception``: four-branch Concat blocks with a 3x3/1 max-pool branch, max-pool downsampling;
- ``lenet``: convolutions with bias and no BN, 2x2 max-pools, Dropout.

Each is exported to ONNX (opset 17, dynamic batch) in ``--work`` (a temporary folder by default),
then compiled with the plain command, ``snncc compile NET.onnx -T t --neuron n --calib
NET_calib.npz`` (the first 256 training images; defaults otherwise), for bitserial, mt, gn, srp and
if at T = 4 and if at T = 8, and run on the 1000 test images. Then the path the low-fidelity hint
names: ``snncc finetune NET.onnx --data train.npz`` (defaults: QCFS L = 4, 3 epochs, the IF SNN
at T = 4 in the loop), and again with ``--bn train``, and ``snncc compile`` of each output with
``--neuron if -T 4``. Writes
``examples/results/other_nets.{json,md}``: the ANN's test accuracy, each SNN's, and the compile's
own fidelity estimate (agreement with the ANN on its 32 held-out calibration samples).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # repo root, for `examples.*` and `snncc`
from examples.data import load_mnist_subset  # noqa: E402
from examples.export_models import INPUT_NAME, export  # noqa: E402
from examples.train_examples import CALIB_SIZE, Recipe, ort_accuracy, train  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

CELLS = [("bitserial", 4), ("mt", 4), ("gn", 4), ("srp", 4), ("if", 4), ("if", 8)]
RESULTS = os.path.join(HERE, "results")


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        def dws(cin, cout, stride):
            return nn.Sequential(cbr(cin, cin, 3, stride, cin, nn.ReLU6),
                                 cbr(cin, cout, 1, act=nn.ReLU6))
        self.body = nn.Sequential(cbr(1, 16, act=nn.ReLU6), dws(16, 32, 2), dws(32, 32, 1),
                                  dws(32, 64, 2), dws(64, 128, 2))
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, 3, stride),
                                    nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.branch(x) + self.short(x))


class BottleneckResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(1, 16), Bottleneck(16, 16, 64, 1), Bottleneck(64, 32, 128, 2),
                                  Bottleneck(128, 64, 256, 2))
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class Inception(nn.Module):
    def __init__(self, cin: int, b1: int, b3: tuple[int, int], b5: tuple[int, int], bp: int):
        super().__init__()
        self.b1 = cbr(cin, b1, 1)
        self.b3 = nn.Sequential(cbr(cin, b3[0], 1), cbr(b3[0], b3[1]))
        self.b5 = nn.Sequential(cbr(cin, b5[0], 1), cbr(b5[0], b5[1]), cbr(b5[1], b5[1]))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, bp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(1, 24), nn.MaxPool2d(2),
                                  Inception(24, 16, (16, 24), (8, 8), 8), nn.MaxPool2d(2),
                                  Inception(56, 32, (24, 48), (8, 16), 16))
        self.head = nn.Linear(112, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class LeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


NETS = {"mobilenet": (MobileNetish, 15), "bottleneck": (BottleneckResNet, 10),
        "inception": (InceptionNet, 8), "lenet": (LeNetish, 5)}


def train_net(name: str, work: str):
    """Train NAME (seed 0, the MNIST subset's fixed split), export ``NAME.onnx`` and
    ``NAME_calib.npz`` (the first 256 training images) into ``work``. Returns (onnx path,
    calibration path, the split, training seconds). Call with ``torch.set_num_threads(2)`` for
    the weights of the results files."""
    make, epochs = NETS[name]
    split = load_mnist_subset()
    xtr, ytr = split.train
    torch.manual_seed(0)
    net = make()
    start = time.perf_counter()
    train(net, xtr, ytr, Recipe(name, "mnist_subset", make, load_mnist_subset, epochs), seed=0)
    onnx_path = os.path.join(work, f"{name}.onnx")
    export(net, onnx_path, (1, 1, 28, 28), dynamic_batch=True)
    calib = os.path.join(work, f"{name}_calib.npz")
    np.savez(calib, **{INPUT_NAME: xtr[:CALIB_SIZE]})
    return onnx_path, calib, split, round(time.perf_counter() - start)


def measure(name: str, work: str) -> dict:
    from snncc.driver import compile_model, make_options
    from snncc.simulate import run_compiled

    onnx_path, calib, split, train_s = train_net(name, work)
    (xtr, ytr), (xte, yte) = split.train, split.test
    row = {"ann": ort_accuracy(onnx_path, xte, yte), "train_s": train_s}
    print(f"{name}: ANN {100 * row['ann']:.1f} % ({row['train_s']} s)", flush=True)
    for neuron, T in CELLS:
        res = compile_model(onnx_path, os.path.join(work, f"{name}_{neuron}_T{T}.onnx"),
                            make_options(timesteps=T, neuron=neuron, calib_path=calib,
                                         fidelity_samples=None))
        out = next(iter(run_compiled(res.output, xte, batch_size=250,
                                     spike_counts=False).outputs.values()))
        fid = res.report["fidelity"]["snn_vs_ann"]
        est = fid["top1_agreement"]
        row[f"{neuron}_T{T}"] = {"acc": float((out.argmax(1) == yte).mean()), "estimate": est,
                                 "rel_logit_error": fid["rel_logit_error"]}
        print(f"  {neuron} T = {T}: {100 * row[f'{neuron}_T{T}']['acc']:.1f} % "
              f"(estimate {100 * est:.1f} %)", flush=True)
    for key, extra in FINETUNES:
        row[key] = finetuned(name, onnx_path, work, extra, xtr, ytr, xte, yte)
    return row


FINETUNES = [("finetune_if_T4", []), ("finetune_bn_train_if_T4", ["--bn", "train"])]


def finetuned(name: str, onnx_path: str, work: str, extra: list[str], xtr, ytr, xte, yte) -> dict:
    """``snncc finetune`` (defaults plus ``extra``), then ``snncc compile --neuron if -T 4`` of its output."""
    from snncc.cli import main as snncc
    from snncc.simulate import run_compiled

    tag = "".join(extra).replace("--", "_")
    train_npz, qcfs = os.path.join(work, f"{name}_train.npz"), os.path.join(work, f"{name}_qcfs{tag}.onnx")
    np.savez(train_npz, x=xtr, y=ytr)
    start = time.perf_counter()
    if snncc(["finetune", onnx_path, "--data", train_npz, "-o", qcfs, "--no-progress", *extra]) != 0:
        raise SystemExit(f"{name}: snncc finetune failed")
    seconds = round(time.perf_counter() - start)
    snn = os.path.join(work, f"{name}_qcfs{tag}_if_T4.onnx")
    if snncc(["compile", qcfs, "--neuron", "if", "-T", "4", "-o", snn, "-q"]) != 0:
        raise SystemExit(f"{name}: snncc compile of the fine-tuned graph failed")
    out = next(iter(run_compiled(snn, xte, batch_size=250, spike_counts=False).outputs.values()))
    acc = float((out.argmax(1) == yte).mean())
    print(f"  finetune{''.join(' ' + a for a in extra)}, then if T = 4: {100 * acc:.1f} % ({seconds} s of training)", flush=True)
    return {"acc": acc, "train_s": seconds}


def table(rows: dict, cell) -> str:
    head = "| net (ANN) | " + " | ".join(f"{n} T = {t}" for n, t in CELLS) + " |"
    lines = [head, "|---|" + "---:|" * len(CELLS)]
    for name, row in rows.items():
        cells = [cell(row, row[f"{n}_T{t}"]) for n, t in CELLS]
        lines.append(f"| {name} ({100 * row['ann']:.1f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: dict) -> str:
    return ("# The default command on other trained architectures\n\n"
            "`python examples/other_nets.py`: four nets trained on the MNIST subset (seed 0; see "
            "the script's doc), each compiled with the plain `snncc compile NET.onnx -T t --neuron "
            "n --calib NET_calib.npz` (256 training images, all defaults) and run on the 1000 test "
            "images. Test accuracy %, in brackets the difference to the ANN in points:\n\n"
            + table(rows, lambda r, c: f"{100 * c['acc']:.1f} ({100 * (c['acc'] - r['ann']):+.1f})")
            + "\n\nThe compile's own figures for the same cells: the SNN's agreement with the ANN "
            "on its 32 held-out calibration samples (%) / the relative logit error (compile warns "
            "below 95 % and from 0.3):\n\n"
            + table(rows, lambda r, c: f"{100 * c['estimate']:.1f} / {c['rel_logit_error']:.2f}")
            + ("" if not any("finetune_if_T4" in r for r in rows.values()) else
               "\n\nThe path the warning's finetune hint names: `snncc finetune NET.onnx --data "
            "train.npz` (defaults: QCFS L = 4, 3 epochs on the 3500 training images, the IF SNN at "
            "T = 4 in the loop), then `snncc compile` of its output with `--neuron if -T 4` (no "
            "calibration file), and the same with `--bn train` (BatchNorm statistics trained "
            "instead of folded). Test accuracy %, against IF at T = 4 from the plain command, in "
            "brackets the difference to the ANN; training seconds:\n\n"
            "| net (ANN) | if T = 4, post-training | after finetune | after finetune --bn train |\n"
            "|---|---:|---:|---:|\n"
            + "".join(f"| {name} ({100 * r['ann']:.1f}) | {100 * r['if_T4']['acc']:.1f} | "
                      + " | ".join(f"{100 * r[k]['acc']:.1f} ({100 * (r[k]['acc'] - r['ann']):+.1f}), "
                                   f"{r[k]['train_s']} s" if k in r else "-" for k, _ in FINETUNES)
                      + " |\n" for name, r in rows.items() if "finetune_if_T4" in r)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(NETS), default=list(NETS))
    p.add_argument("--work", help="a new or empty folder for the trained nets and compiled "
                   "models (default: a temporary one, removed at the end)")
    p.add_argument("--from-json", action="store_true",
                   help="only rewrite other_nets.md from other_nets.json (no training)")
    args = p.parse_args(argv)
    if args.work and os.path.isdir(args.work) and os.listdir(args.work):
        p.error(f"--work {args.work} is not empty: give a new or empty folder (the script "
                "writes NAME.onnx, NAME_calib.npz, NAME_train.npz, NAME_qcfs.onnx and compiled models there)")
    json_path = os.path.join(RESULTS, "other_nets.json")
    if args.from_json:
        with open(json_path) as f:
            rows = json.load(f)
    else:
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or tmp
            os.makedirs(work, exist_ok=True)
            rows = {name: measure(name, work) for name in args.only}
    md = markdown(rows)
    if args.only == list(NETS):
        if not args.from_json:
            with atomic_file(json_path) as tmp_path:
                tmp_path.write_text(json.dumps(rows, indent=2) + "\n")
        with atomic_file(os.path.join(RESULTS, "other_nets.md")) as tmp_path:
            tmp_path.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
