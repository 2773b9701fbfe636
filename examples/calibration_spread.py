"""How much the default compile's accuracy depends on WHICH 256 calibration images the user gives.

    python examples/calibration_spread.py [--out examples/results/calibration_spread.md]
                                          [--seeds 5] [--nets NAME ...]

``defaults.md`` measures each cell once, with the bundled ``NET_calib.npz`` (the first 256 training
images). On test sets of 360 and 1000 images, one image is 0.28 and 0.1 points, and a different
calibration set moves a T = 4 SNN by a few images. This script repeats the user's default command
(the same in-process CLI calls as ``default_table.py``) with ``--seeds`` other calibration sets:
256 training images each, drawn without replacement by ``numpy.random.default_rng(1000 + seed)``
from the net's training split (``examples/data.py``; never the test images). It reports, per net
and configuration, the bundled-file accuracy, the mean, minimum and maximum over the drawn sets,
and the mean gap to the ANN.

Configurations: bitserial, mt, gn, srp and if at T = 4 (issue 8's targets: within 0.3 pt of the
ANN), and if at T = 8 (target: within 1 pt). Row ``qann`` (T column = L = 4) is the quantized-clip
ANN with 4 levels under the same default calibration (``--target qann -L 4``): the quantization
that the T + 1 output levels of srp and if at T = 4 amount to (a reference, not a bound: the
SNN-aware walk calibrates the neuron itself, and can beat it). Outputs go to a temporary directory; the only files
written are ``--out`` (Markdown) and the same data as JSON beside it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from examples.data import load_digits_split, load_mnist_subset  # noqa: E402
from examples.default_table import (ROOT, declare_table_outputs, git_commit,  # noqa: E402
                                    one_cell, select_nets, table_parser)
from snncc import __version__  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

CONFIGS = (("bitserial", 4), ("mt", 4), ("gn", 4), ("srp", 4), ("qann", 4), ("if", 4), ("if", 8))
TARGET_GAP = {4: 0.3, 8: 1.0}      # issue 8: points below the ANN allowed (if at T = 4: none)
CALIB_SIZE = 256
DEFAULT_OUT = HERE / "results" / "calibration_spread.md"
LOADERS = {"mnist_subset": load_mnist_subset, "digits": load_digits_split}


def drawn_calibration_sets(net: dict, seeds: int) -> list[np.ndarray]:
    """The ``seeds`` other calibration sets of a trained net: ``CALIB_SIZE`` images of its training
    split each, drawn without replacement by ``default_rng(1000 + seed)``, in training order (the
    draw the spread, the refit probe and the quantization probe share)."""
    train_x = LOADERS[net["dataset"]]().train[0]
    return [train_x[np.sort(np.random.default_rng(1000 + seed).choice(len(train_x), CALIB_SIZE,
                                                                       replace=False))]
            for seed in range(seeds)]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(data: dict) -> str:
    lines = ["# Default compile: accuracy over different calibration sets", "",
             "Regenerate with:", "", "```sh", data["command"], "```", "",
             f"snncc {data['snncc_version']} at commit {data['git_commit']}, {data['date']}; "
             f"{data['seconds']:.0f} s in all. Each row runs the default command of "
             "`defaults.md` (`snncc compile NET.onnx -T t --neuron n --calib CALIB.npz`, then "
             "`snncc run` on the test split) once with the bundled calibration file and once with "
             f"each of {data['seeds']} other sets of {CALIB_SIZE} training images "
             "(`default_rng(1000 + seed)`, test images never used). Accuracy in %; *gap* is the "
             "mean over the drawn sets minus the ANN, in points; *target* is issue 8's "
             "(T = 4: gap >= -0.3 for bitserial, mt, gn, srp; T = 8: if within 1 pt). Row *qann* "
             "(T column: L = 4) is `--target qann -L 4` with the same calibration: the 4-level "
             "quantization that srp and if at T = 4 (T + 1 output levels) amount to, a reference "
             "rather than a bound.", ""]
    for name, net in data["nets"].items():
        ann = 100 * net["ann_test_acc"]
        lines += [f"## {name}", "",
                  f"`examples/{net['onnx']}` ({net['arch']}, {net['test_samples']} test images, "
                  f"one image = {100 / net['test_samples']:.2f} pt). **ANN {ann:.1f} %**", "",
                  "| neuron | T | bundled calib | mean | min | max | gap (mean - ANN) | target |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in net["rows"]:
            accs = [a for a in row["drawn"] if a is not None]
            mean = float(np.mean(accs)) if accs else None
            gap = None if mean is None else 100 * mean - ann
            limit = TARGET_GAP.get(row["T"])
            judged = row["neuron"] not in ("if", "qann") or row["T"] == 8
            verdict = ("met" if gap is not None and gap >= -limit - 1e-9 else "missed") \
                if judged and limit is not None else "(report)"
            lines.append(
                f"| {row['neuron']} | {row['T']} | {pct(row['bundled'])} | {pct(mean)} | "
                f"{pct(min(accs) if accs else None)} | {pct(max(accs) if accs else None)} | "
                f"{'-' if gap is None else f'{gap:+.2f}'} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--seeds", type=int, default=5, help="drawn calibration sets per net")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    nets = select_nets(parser, args.nets)
    out_md = args.out
    out_json = declare_table_outputs(out_md, nets, parser)
    command = "python examples/calibration_spread.py" + (
        "" if out_md == DEFAULT_OUT else f" --out {os.path.relpath(out_md, ROOT)}") + (
        "" if args.seeds == 5 else f" --seeds {args.seeds}") + (
        " --nets " + " ".join(args.nets) if args.nets else "")

    start = time.perf_counter()
    data: dict = {"command": command, "snncc_version": __version__, "git_commit": git_commit(),
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "seeds": args.seeds, "calib_size": CALIB_SIZE, "nets": {}}
    total, done = len(nets) * len(CONFIGS) * (args.seeds + 1), 0
    with tempfile.TemporaryDirectory(prefix="snncc-calib-spread-") as tmp:
        for name, net in nets.items():
            work = Path(tmp) / name
            work.mkdir()
            sets = []
            for seed, images in enumerate(drawn_calibration_sets(net, args.seeds)):
                path = work / f"calib_{seed}.npz"
                np.savez(path, input=images)
                sets.append(path)
            rows = []
            for neuron, t in CONFIGS:
                row = {"neuron": neuron, "T": t, "bundled": one_cell(net, neuron, t, work).get("accuracy"),
                       "drawn": []}
                done += 1
                for path in sets:
                    row["drawn"].append(one_cell(dict(net, calib_path=path), neuron, t, work).get("accuracy"))
                    done += 1
                print(f"[{done}/{total}] {name} {neuron} T={t}: bundled {pct(row['bundled'])}, "
                      f"drawn {[pct(a) for a in row['drawn']]}", file=sys.stderr, flush=True)
                rows.append(row)
            data["nets"][name] = {k: v for k, v in net.items() if not k.endswith("_path")} | {
                "rows": rows}
    data["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=2) + "\n")
    with atomic_file(out_md) as tmp_md:
        tmp_md.write_text(markdown(data))
    print(f"wrote {out_md} and {out_json} in {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
