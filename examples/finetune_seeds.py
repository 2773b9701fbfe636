"""The default fine-tuning recipe over several training seeds (issue 11's recipe table has one).

    python examples/finetune_seeds.py [--seeds 0,1,2,3,4] [--nets mnist_cnn,...]

Per bundled trained network (``examples/trained_models.json``, on the data split of
``examples/data.py`` seed 0 that it was trained on, so the test split stays unseen): ``snncc
finetune NET.onnx --data train.npz --seed S`` with every other option at its default (QCFS L = 4,
3 epochs, the IF SNN at T = 4 in the loop), then the exported graph compiled (no calibration) with
``--neuron if -T 4``, ``--neuron gn -T 1`` (τ = 4) and ``--neuron if -T 8`` and scored on the test
split in ONNX Runtime, as ``training_results.py --part recipe`` does for seed 0. The seed sets
torch's generator, the batch order and the calibration images' sampling; the data and the ANN stay
the same. Writes ``examples/results/training/seeds.{md,json}`` (only for the default seeds and
nets). About 11 minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.training_results import EVALS, NETS, RECIPE_EPOCHS, _load_split, finetune, predict  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

OUT = ROOT / "examples" / "results" / "training"


def run_net(net: str, seeds: list[int], work: Path) -> dict:
    ds, file = NETS[net]
    data = _load_split(ds, 0)
    x_test, y_test = data.test
    np.savez(work / "train.npz", x=data.train[0], y=data.train[1])
    commands: list[str] = []
    row: dict = {"ann": float((predict(ROOT / "examples" / file, x_test) == y_test).mean()), "seeds": {}}
    for seed in seeds:
        src = work / f"{net}_s{seed}.onnx"
        start = time.perf_counter()
        finetune([str(ROOT / "examples" / file), "--data", str(work / "train.npz"), "--seed", str(seed),
                  "--epochs", str(RECIPE_EPOCHS), "--no-progress", "-o", str(src)], commands)
        cell = {"train_s": round(time.perf_counter() - start, 1),
                "qann": float((predict(src, x_test) == y_test).mean())}
        for key, neuron, T in EVALS[1:]:
            out = work / f"{net}_s{seed}_{key}.onnx"
            params = {"tau": 4} if neuron == "gn" else {}
            compile_model(src, out, make_options(timesteps=T, neuron=neuron, neuron_params=params))
            cell[key] = float((predict(out, x_test) == y_test).mean())
        row["seeds"][str(seed)] = cell
        print(f"{net} seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in cell.items()
                                               if k != "train_s"), flush=True)
    row["commands"] = commands
    return row


def markdown(rows: dict) -> str:
    keys = [("qann", "QANN L = 4"), ("if4", "IF T = 4"), ("gn1", "GN T = 1"), ("if8", "IF T = 8")]
    lines = ["# The default fine-tuning recipe over training seeds", "",
             "`python examples/finetune_seeds.py`: `snncc finetune NET.onnx --data train.npz --seed S` "
             f"(defaults: QCFS L = 4, {RECIPE_EPOCHS} epochs, the IF SNN at T = 4 in the loop) on the "
             "bundled nets' own training split, then compile without calibration and score on the test "
             "split. Test accuracy %: the mean over the seeds, in brackets the lowest and highest, then "
             "the mean difference to the ANN in points.", "",
             "| net (ANN) | seeds | " + " | ".join(label for _, label in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for net, row in rows.items():
        cells = []
        for key, _ in keys:
            v = np.array([c[key] for c in row["seeds"].values()]) * 100
            cells.append(f"{v.mean():.2f} ({v.min():.1f}–{v.max():.1f}) {v.mean() - 100 * row['ann']:+.2f}")
        lines.append(f"| {net} ({100 * row['ann']:.1f}) | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (default 0,1,2,3,4)")
    p.add_argument("--nets", default=",".join(NETS), help="bundled nets (default: all four)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for net in [n for n in args.nets.split(",") if n]:
            work = Path(tmp) / net
            work.mkdir()
            rows[net] = run_net(net, seeds, work)
    md = markdown(rows)
    if set(rows) == set(NETS) and seeds == [0, 1, 2, 3, 4]:
        with atomic_file(OUT / "seeds.json") as tmp_path:
            tmp_path.write_text(json.dumps(rows, indent=1) + "\n")
        with atomic_file(OUT / "seeds.md") as tmp_path:
            tmp_path.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
