"""Max-pool nets: accuracy of the default command (``--maxpool auto``: the stem pool moved in
front of its activation by the pool-first pass, deeper pools window-gated) against the running-sum
spike gate for every pool (``--maxpool gate``).

    python examples/maxpool_table.py [--out examples/results/maxpool.md] [--neurons if mt ...]
                                     [-T 2 4 8] [--seed 0]

The bundled nets use average pooling, so this script trains three max-pool nets on the MNIST
subset first, in a temporary directory (about 1 min on 2 cores, the bundled examples' recipe:
``examples/train_examples.py``): ``MnistCNN(pool="max")`` (a 2x2 MaxPool after its first and its
second conv stage), ``SmallResNet`` with a torchvision-style 3x3/2 stem MaxPool in place of its
2x2 AvgPool, and a VGG-style net with three 2x2 MaxPools, none after a first-layer activation
(``VGG("mnist_vgg", pool="max")``). Each cell then runs, in-process through the CLI entry point:

    snncc compile NET.onnx -T t --neuron n --calib NET_calib.npz [--maxpool gate] -o TMP/snn.onnx -q
    snncc run TMP/snn.onnx --input NET_test.npz --json

``gate`` spike-gates every MaxPool after a neuron with a running sum, the stem's too: what the
default did before the pool-first pass and the window gate for every neuron but bit-serial (whose
pools right after a neuron the schedule already moved, on the time-mean current). The only files
written are the table (``--out``) and its JSON beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from examples.default_table import git_commit, snncc  # noqa: E402
from snncc import __version__  # noqa: E402
from snncc.outputs import Output, atomic_file, check_outputs  # noqa: E402

NEURONS = ("if", "bitserial", "mt", "gn", "srp", "lif")
TIMESTEPS = (2, 4, 8)
MODES = ("gate", "auto")
DEFAULT_OUT = HERE / "results" / "maxpool.md"


def train_nets(work: Path, seed: int) -> dict[str, dict]:
    """Train and export the two max-pool nets into ``work``; their paths and ANN accuracy."""
    import torch
    from torch import nn

    from examples.data import load_mnist_subset
    from examples.export_models import INPUT_NAME, export
    from examples.models import VGG, MnistCNN, SmallResNet
    from examples.train_examples import CALIB_SIZE, Recipe, ort_accuracy, save_npz, train

    class MaxStemResNet(SmallResNet):
        """SmallResNet with a torchvision-style stem pool (3x3, stride 2, pad 1; 28 -> 14)."""

        def __init__(self) -> None:
            super().__init__(image_size=28)
            self.stem[1] = nn.MaxPool2d(3, 2, 1)

    recipes = {
        "maxpool_cnn": Recipe("MnistCNN(pool='max')", "mnist_subset", lambda: MnistCNN(pool="max"),
                              load_mnist_subset, epochs=12),
        "maxstem_resnet": Recipe("SmallResNet, 3x3/2 MaxPool stem", "mnist_subset", MaxStemResNet,
                                 load_mnist_subset, epochs=12),
        "maxpool_vgg": Recipe("VGG('mnist_vgg', pool='max'): three MaxPools after convs of spikes",
                              "mnist_subset",
                              lambda: VGG("mnist_vgg", pool="max", width=1.0, hidden=128,
                                          in_channels=1, image_size=28),
                              load_mnist_subset, epochs=12),
    }
    nets = {}
    for name, recipe in recipes.items():
        torch.manual_seed(seed)
        data = recipe.load(seed)
        model = recipe.make()
        train(model, *data.train, recipe=recipe, seed=seed)
        model.eval()
        paths = {k: work / f"{name}{suffix}" for k, suffix in
                 (("onnx", ".onnx"), ("calib", "_calib.npz"), ("test", "_test.npz"))}
        export(model, str(paths["onnx"]), (1,) + data.test[0].shape[1:], dynamic_batch=True)
        save_npz(str(paths["calib"]), **{INPUT_NAME: data.train[0][:CALIB_SIZE]})
        x, y = data.test
        save_npz(str(paths["test"]), x=x, y=y, **{INPUT_NAME: x})
        nets[name] = {"arch": recipe.arch, "paths": paths, "test_samples": int(len(y)),
                      "ann_test_acc": ort_accuracy(str(paths["onnx"]), x, y)}
        print(f"{name}: ANN {100 * nets[name]['ann_test_acc']:.1f} %", flush=True)
    return nets


def one_cell(paths: dict[str, Path], neuron: str, t: int, mode: str, work: Path) -> dict:
    out = work / f"{neuron}_T{t}_{mode}.snn.onnx"
    argv = ["compile", str(paths["onnx"]), "-T", str(t), "--neuron", neuron, "--calib",
            str(paths["calib"]), "-o", str(out), "-q"] + (["--maxpool", mode] if mode != "auto" else [])
    start = time.perf_counter()
    rc, _, err = snncc(argv)
    cell: dict = {"compile_seconds": round(time.perf_counter() - start, 2)}
    if rc != 0:
        cell["error"] = err.strip().splitlines()[-1][:300] if err.strip() else f"exit {rc}"
        return cell
    rc, stdout, err = snncc(["run", str(out), "--input", str(paths["test"]), "--json"])
    if rc != 0:
        cell["error"] = err.strip()[:300]
    else:
        cell["accuracy"] = json.loads(stdout)["accuracy"]
    for p in (out, Path(f"{out}.json")):
        p.unlink(missing_ok=True)
    return cell


def markdown(data: dict) -> str:
    ts = data["timesteps"]
    lines = ["# Max-pool nets: pool-first and the window gate (`--maxpool auto`, the default) "
             "against the running-sum spike gate",
             "", "Regenerate with:", "", "```sh", data["command"], "```", "",
             f"snncc {data['snncc_version']} at commit {data['git_commit']}, {data['date']}; "
             f"{data['seconds']:.0f} s in all, training included. Test accuracy (%) of the "
             "default command, `gate → auto`: `--maxpool gate` spike-gates every MaxPool after a "
             "neuron with a running sum (per slice the spike of the unit with the highest count "
             "so far), the stem's too; `auto` moves a pool after a first-layer activation in front "
             "of it (pool-first) and window-gates the deeper ones (the unit with the largest "
             "total over the window passes its whole train; bit-serial and T = 1 move them, "
             "exactly). Three nets trained on the MNIST subset by this script (seed "
             + str(data["seed"]) + ").", ""]
    for name, net in data["nets"].items():
        lines += [f"## {name}", "", f"{net['arch']}, {net['test_samples']} test images. "
                  f"**ANN {100 * net['ann_test_acc']:.1f} %**", "",
                  "| neuron | " + " | ".join(f"T={t}" for t in ts) + " |",
                  "|---|" + "---:|" * len(ts)]
        for neuron in data["neurons"]:
            cells = []
            for t in ts:
                pair = [net["cells"][neuron][str(t)][m] for m in MODES]
                cells.append(" → ".join(f"{100 * c['accuracy']:.1f}" if "accuracy" in c else "err"
                                        for c in pair))
            lines.append(f"| {neuron} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="Markdown table to write; the JSON goes beside it (default: %(default)s)")
    parser.add_argument("--neurons", nargs="+", default=list(NEURONS), choices=NEURONS)
    parser.add_argument("-T", "--timesteps", nargs="+", type=int, default=list(TIMESTEPS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    args = parser.parse_args(argv)
    out_json = args.out.with_suffix(".json")
    check_outputs([Output(args.out, "file", "--out"), Output(out_json, "file", "--out (json)")], [])
    command = "python examples/maxpool_table.py" + (
        f" --neurons {' '.join(args.neurons)}" if args.neurons != list(NEURONS) else "") + (
        f" -T {' '.join(map(str, args.timesteps))}" if args.timesteps != list(TIMESTEPS) else "") + (
        f" --seed {args.seed}" if args.seed else "")
    start = time.perf_counter()
    data = {"command": command, "snncc_version": __version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seed": args.seed,
            "neurons": args.neurons, "timesteps": args.timesteps, "nets": {}}
    with tempfile.TemporaryDirectory(prefix="snncc-maxpool-") as tmp:
        work = Path(tmp)
        for name, net in train_nets(work, args.seed).items():
            cells: dict = {}
            for neuron in args.neurons:
                for t in args.timesteps:
                    for mode in MODES:
                        cell = one_cell(net["paths"], neuron, t, mode, work)
                        cells.setdefault(neuron, {}).setdefault(str(t), {})[mode] = cell
                        print(f"{name} {neuron} T={t} {mode}: "
                              f"{cell.get('accuracy', cell.get('error'))}", flush=True)
            data["nets"][name] = {k: v for k, v in net.items() if k != "paths"} | {"cells": cells}
    data["seconds"] = time.perf_counter() - start
    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=1))
    with atomic_file(args.out) as tmp_md:
        tmp_md.write_text(markdown(data))
    print(f"wrote {args.out} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
