"""Loihi: the netlist's own (soft-reset) semantics against stock Loihi neurons, across T.

    python examples/loihi_stock_table.py [--out examples/results/loihi_stock.md] [--nets NAME ...]
                                         [--neurons if mt] [-T 1 2 3 4 5 6 8]

The netlist keeps each neuron's soft reset (a Loihi 2 microcoded neuron runs it); real Lava runs
``network.net`` on stock neurons, which reset to 0 and fire on ``v > vth`` (``snncc run DIR
--semantics hardware`` is bit for bit what Lava computes, ``tests/loihi/test_lava.py``). For each
net, neuron and T this runs the user's commands, in-process through the CLI entry point:

    snncc compile NET.onnx -T t --neuron n --calib NET_calib.npz --target loihi -o TMP/net -q --report TMP/r.json
    snncc run TMP/net --input NET_test.npz --semantics emulated --json
    snncc run TMP/net --input NET_test.npz --semantics hardware --json

and records both accuracies with the compile-time estimates (the main one, and
``fidelity.variants.stock_loihi`` where the compile gives it). Only the table (``--out``) and the
JSON beside it are written in the repository.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from examples.default_table import (declare_table_outputs, error_of, git_commit,  # noqa: E402
                                    select_nets, snncc, table_parser)
from snncc import __version__  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

DEFAULT_OUT = HERE / "results" / "loihi_stock.md"


def _run(out: Path, test: Path, semantics: str) -> float | dict:
    rc, stdout, err = snncc(["run", str(out), "--input", str(test), "--semantics", semantics,
                             "--json"])
    if rc != 0:
        return error_of(err, rc)
    return json.loads(stdout)["accuracy"]


def one_cell(net: dict, neuron: str, t: int, work: Path) -> dict:
    out, report = work / f"{neuron}_T{t}", work / f"{neuron}_T{t}.json"
    rc, _, err = snncc(["compile", str(net["onnx_path"]), "-T", str(t), "--neuron", neuron,
                        "--calib", str(net["calib_path"]), "--target", "loihi", "-o", str(out),
                        "-q", "--report", str(report)])
    if rc != 0:
        return {"error": error_of(err, rc)}
    fid = json.loads(report.read_text()).get("fidelity") or {}
    stock = (fid.get("variants") or {}).get("stock_loihi") or {}
    cell = {"estimate": (fid.get("snn_vs_ann") or {}).get("top1_agreement"),
            "stock_estimate": stock.get("top1_agreement"),
            "stock_estimate_95": stock.get("top1_agreement_95"),
            "warned_stock": "on stock Loihi neurons" in err,
            "emulated": _run(out, net["test_path"], "emulated"),
            "hardware": _run(out, net["test_path"], "hardware")}
    shutil.rmtree(out, ignore_errors=True)
    report.unlink(missing_ok=True)
    return cell


def _pct(value) -> str:
    if isinstance(value, dict):
        return value.get("code", "error")
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(data: dict, command: str) -> str:
    lines = ["# Loihi: soft-reset netlist (emulated) against stock neurons (hardware), across T", "",
             "Regenerate with:", "", "```sh", command, "```", "",
             f"snncc {data['snncc_version']} at commit {data['git_commit']}, {data['date']}; "
             f"{data['seconds']:.0f} s in all. Test accuracy (%) under `snncc run DIR --semantics "
             "emulated` (the netlist's own soft-reset neurons: a Loihi 2 microcoded neuron) and "
             "`--semantics hardware` (stock neurons: reset to 0, fire on `>`; bit for bit what "
             "real Lava computes from `network.net`). `est.` is the compile's estimate of the "
             "stock neurons' top-1 agreement with the ANN on its held-out samples "
             "(`fidelity.variants.stock_loihi`, `*`: the compile warned); MT has no `network.net` "
             "(NetX cannot express graded neurons), so no stock estimate.", ""]
    for name, net in data["nets"].items():
        lines += [f"## {name} (ANN {100 * net['ann_accuracy']:.1f} %)", "",
                  "| T | " + " | ".join(f"{n} emulated | {n} hardware" + (" | est." if n == "if" else "")
                                         for n in data["neurons"]) + " |",
                  "|---:|" + "|".join("---:|---:" + ("|---:" if n == "if" else "")
                                     for n in data["neurons"]) + "|"]
        for t in data["timesteps"]:
            row = [str(t)]
            for n in data["neurons"]:
                cell = net["cells"][n][str(t)]
                if "error" in cell:
                    row += [cell["error"]["code"]] * (3 if n == "if" else 2)
                    continue
                row += [_pct(cell["emulated"]), _pct(cell["hardware"])]
                if n == "if":
                    row.append(_pct(cell["stock_estimate"]) + ("*" if cell["warned_stock"] else ""))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--neurons", nargs="+", default=["if", "mt"], choices=["if", "mt"])
    parser.add_argument("-T", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6, 8], dest="timesteps")
    args = parser.parse_args(argv)
    nets = select_nets(parser, args.nets or ["mnist_cnn", "digits_resnet"])
    out_json = declare_table_outputs(args.out, nets, parser)
    start = time.perf_counter()
    data = {"snncc_version": __version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "neurons": args.neurons,
            "timesteps": args.timesteps, "nets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            cells: dict = {}
            for n in args.neurons:
                for t in args.timesteps:
                    cells.setdefault(n, {})[str(t)] = cell = one_cell(net, n, t, Path(tmp))
                    print(f"{name} {n} T={t}: {cell}", flush=True)
            data["nets"][name] = {"ann_accuracy": net["ann_test_acc"], "cells": cells}
    data["seconds"] = time.perf_counter() - start
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python examples/loihi_stock_table.py", *given])
    for path, text in ((args.out, markdown(data, command)), (out_json, json.dumps(data, indent=1))):
        with atomic_file(path) as tmp:
            Path(tmp).write_text(text + "\n")
    print(f"wrote {args.out} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
