"""How robust the default compile's SNN is to small changes of its weights, with and without the
SNN-aware walk's margin step.

    python examples/margin_table.py [--out examples/results/margin.md] [--nets NAME ...]

The walk's bias rounds match means. A channel whose positions share one current (an image's
constant background, in every sample) can end them on the edge of a spike-count step, where the
calibration samples cannot tell one side from the other; then any tiny change of the current (the
8-bit weight mantissas of Loihi, another runtime's summation order) moves all those positions over
the edge at once. The margin step (``snncc/snn_calibration.py``, step 4) moves such a bias to the
middle of a flat stretch of the error.

For each net and neuron at T = 4 (the plain command: ``snncc compile NET.onnx -T 4 --neuron n
--calib NET_calib.npz``, all defaults), compiled twice in this process, once with the margin step
switched off (``MARGIN_STEP = 0``, the walk before it) and once as shipped, it measures:

- ``ort``: test accuracy in ONNX Runtime;
- ``noise``: test accuracy when every Conv / Gemm / MatMul weight of the compiled model is
  multiplied by ``1 + 0.004 * N(0, 1)``, mean and minimum over five noise seeds (a milder stand-in
  for Loihi's rounding: that error is about 0.4 % rms of each block's *largest* weight, so much
  more than 0.4 % of a small weight);
- ``loihi``: accuracy of ``--target loihi`` (same calibration) in the bit-accurate simulator
  (emulated neurons) on the first 256 test images, next to ``ort`` on the same images.

Nets: the four bundled ones (``trained_models.json``) and the four of ``other_nets.py`` (trained
here with seed 0 and two threads, as that script does: about 4 minutes). Takes about 21 minutes on
two cores. Writes only ``--out`` (Markdown) and the same data as JSON beside it.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from examples.default_table import (declare_table_outputs, git_commit, select_nets,  # noqa: E402
                                    table_parser)
from snncc import __version__  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

NEURONS = ("if", "srp", "mt", "bitserial")
T = 4
NOISE, NOISE_SEEDS = 0.004, 5
LOIHI_IMAGES = 256
OTHER_NETS = ("mobilenet", "bottleneck", "inception", "lenet")


def noisy(proto, seed: int):
    """A copy of ``proto`` with every Conv / Gemm / MatMul weight initializer multiplied by
    ``1 + NOISE * N(0, 1)`` (``default_rng(seed)``)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    weights = {n.input[1] for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    rng = np.random.default_rng(seed)
    for init in out.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            w = (w * (1 + NOISE * rng.standard_normal(w.shape))).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return out


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    from snncc.simulate import run_compiled

    out = next(iter(run_compiled(model, x, batch_size=250, spike_counts=False).outputs.values()))
    return float((out.argmax(1) == y).mean())


def one_cell(onnx_path: str, calib: str, x: np.ndarray, y: np.ndarray, neuron: str,
             work: Path) -> dict:
    import onnx

    from snncc.backends.loihi.simulator import run_netlist
    from snncc.driver import compile_model, make_options
    from snncc.errors import SnnccError

    cell: dict = {}
    start = time.perf_counter()
    opts = dict(timesteps=T, neuron=neuron, calib_path=calib, fidelity_samples=None)
    try:
        compile_model(onnx_path, work / "snn.onnx", make_options(**opts))
    except SnnccError as exc:   # a refused compile is a table cell, not the end of the run
        return {"error": exc.code}
    cell["compile_seconds"] = round(time.perf_counter() - start, 2)
    proto = onnx.load(work / "snn.onnx")
    cell["ort"] = accuracy(proto, x, y)
    noise = [accuracy(noisy(proto, seed), x, y) for seed in range(NOISE_SEEDS)]
    cell["noise"] = {"mean": float(np.mean(noise)), "min": float(np.min(noise)), "all": noise}
    k = min(LOIHI_IMAGES, len(x))
    cell["ort_loihi_images"] = accuracy(proto, x[:k], y[:k])
    try:
        compile_model(onnx_path, work / "snn.loihi", make_options(target="loihi", **opts))
    except SnnccError as exc:
        cell["loihi"] = {"error": exc.code}
    else:
        outputs, _ = run_netlist(work / "snn.loihi", x[:k])
        cell["loihi"] = float((next(iter(outputs.values())).argmax(1) == y[:k]).mean())
    return cell


def measure(name: str, onnx_path: str, calib: str, x: np.ndarray, y: np.ndarray) -> dict:
    import snncc.snn_calibration as walk

    shipped = walk.MARGIN_STEP
    row: dict = {}
    for neuron in NEURONS:
        for setting, step in (("without", 0.0), ("with", shipped)):
            walk.MARGIN_STEP = step
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    cell = one_cell(onnx_path, calib, x, y, neuron, Path(tmp))
            finally:
                walk.MARGIN_STEP = shipped
            row[f"{neuron} {setting}"] = cell
            if "error" in cell:
                print(f"{name} {neuron} {setting} margin step: {cell['error']}", flush=True)
                continue
            loihi = cell["loihi"]
            print(f"{name} {neuron} {setting} margin step: ORT {100 * cell['ort']:.1f}, noise "
                  f"{100 * cell['noise']['mean']:.1f} (min {100 * cell['noise']['min']:.1f}), "
                  f"Loihi {loihi if isinstance(loihi, dict) else round(100 * loihi, 1)}",
                  flush=True)
    return row


def pct(v) -> str:
    return v["error"] if isinstance(v, dict) else f"{100 * v:.1f}"


def markdown(data: dict) -> str:
    lines = ["# Robustness of the default SNN to small weight changes: the walk's margin step", "",
             "Regenerate with:", "", "```sh", "python examples/margin_table.py", "```", "",
             f"snncc {data['version']} at commit {data['commit']}, {data['date']}; "
             f"{data['seconds']} s in all. T = {T}, the plain command (all defaults) compiled "
             "without the margin step (`MARGIN_STEP = 0`, the walk before it) → with it (as "
             "shipped). `ORT`: test accuracy (%) in ONNX Runtime. `noise`: mean (min) test "
             f"accuracy over {NOISE_SEEDS} seeds with every Conv/Gemm/MatMul weight of the "
             f"compiled model times 1 + {NOISE} N(0, 1) (milder than Loihi's rounding, whose error "
             "is about 0.4 % rms of each block's largest weight). `Loihi`: `--target loihi`, "
             "bit-accurate "
             f"simulator (emulated neurons), first {LOIHI_IMAGES} test images, with ORT on the "
             "same images in brackets.", ""]
    for name, row in data["nets"].items():
        lines += [f"## {name} (ANN {100 * row['ann']:.1f} %)", "",
                  "| neuron | ORT | noise | Loihi (ORT) |", "|---|---|---|---|"]
        for neuron in NEURONS:
            a, b = row["cells"][f"{neuron} without"], row["cells"][f"{neuron} with"]
            if "error" in a or "error" in b:
                lines.append(f"| {neuron} | {a.get('error', '-')} → {b.get('error', '-')} | | |")
                continue
            lines.append(
                f"| {neuron} | {pct(a['ort'])} → {pct(b['ort'])} | "
                f"{pct(a['noise']['mean'])} ({pct(a['noise']['min'])}) → "
                f"{pct(b['noise']['mean'])} ({pct(b['noise']['min'])}) | "
                f"{pct(a['loihi'])} ({pct(a['ort_loihi_images'])}) → "
                f"{pct(b['loihi'])} ({pct(b['ort_loihi_images'])}) |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, HERE / "results" / "margin.md")
    parser.add_argument("--other", nargs="*", choices=OTHER_NETS, default=list(OTHER_NETS),
                        help="nets of other_nets.py to train and include (default: all four)")
    args = parser.parse_args(argv)
    nets = select_nets(parser, args.nets)
    out_json = declare_table_outputs(args.out, nets, parser)
    from examples.train_examples import ort_accuracy

    start = time.perf_counter()
    rows: dict = {}
    for name, net in nets.items():
        test = np.load(net["test_path"])
        x, y = test[[k for k in test.files if k != "y"][0]], test["y"]
        rows[name] = {"ann": ort_accuracy(str(net["onnx_path"]), x, y),
                      "cells": measure(name, str(net["onnx_path"]), str(net["calib_path"]), x, y)}
    if args.other:
        import torch

        from examples.other_nets import train_net
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as work:
            for name in args.other:
                onnx_path, calib, split, _ = train_net(name, work)
                x, y = split.test
                rows[name] = {"ann": ort_accuracy(onnx_path, x, y),
                              "cells": measure(name, onnx_path, calib, x, y)}
    data = {"version": __version__, "commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.perf_counter() - start), "nets": rows}
    md = markdown(data)
    with atomic_file(out_json) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    with atomic_file(args.out) as tmp:
        tmp.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
