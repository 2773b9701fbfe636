"""Accuracy of every neuron at T = 1, 2, 4, 8 with DEFAULT settings, on each trained example net.

    python examples/default_table.py [--out examples/results/defaults.md] [--nets NAME ...]
                                     [--neurons if mt ...] [-T 1 2 4 8]

For each net in ``examples/trained_models.json``, each neuron and each T, this runs the user's own
two commands, in-process through the CLI entry point (``snncc.cli.main``), with nothing but the
required options:

    snncc compile NET.onnx -T t --neuron n --calib NET_calib.npz -o TMP/snn.onnx -q --report TMP/r.json
    snncc run TMP/snn.onnx --input NET_test.npz --json

(``--report`` only writes the compile report, from which the table takes the compile-time fidelity
estimate; it changes nothing in the compile.) A compile that refuses is recorded with its error code
(e.g. ``lif`` needs an IIR graph). Outputs go to a temporary directory; the only files written in the
repository are the table (``--out``, Markdown) and the same data as JSON beside it (``.json``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from snncc import __version__  # noqa: E402
from snncc.cli import main as snncc_main  # noqa: E402
from snncc.errors import SnnccError  # noqa: E402
from snncc.outputs import Output, atomic_file, check_outputs  # noqa: E402

NEURONS = ("if", "bitserial", "mt", "gn", "srp", "lif")
TIMESTEPS = (1, 2, 4, 8)
MANIFEST = HERE / "trained_models.json"
DEFAULT_OUT = HERE / "results" / "defaults.md"
#: compile options worth showing as "the defaults" in the table header (from the compile report)
SHOWN_OPTIONS = ("calib_method", "calib_per_channel", "calib_max_samples", "calib_percentile",
                 "fidelity_samples", "schedule")


def table_parser(doc: str, default_out: Path) -> argparse.ArgumentParser:
    """The options every results-table script shares: ``--out`` (Markdown; the JSON goes beside
    it) and ``--nets``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out,
                        help="Markdown table to write; the JSON goes beside it (default: %(default)s)")
    parser.add_argument("--nets", nargs="+", help="only these nets of trained_models.json")
    return parser


def select_nets(parser: argparse.ArgumentParser, wanted: list[str] | None) -> dict[str, dict]:
    """The wanted entries of trained_models.json (all when None), with absolute ``onnx_path``,
    ``calib_path`` and ``test_path``; an argparse error names unknown ones."""
    manifest = json.loads(MANIFEST.read_text())
    names = wanted or list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        parser.error(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(manifest)}")
    nets = {}
    for name in names:
        entry = dict(manifest[name])
        for key in ("onnx", "calib", "test"):
            entry[f"{key}_path"] = HERE / entry[key]
        nets[name] = entry
    return nets


def declare_table_outputs(out_md: Path, nets: dict[str, dict],
                          parser: argparse.ArgumentParser | None = None) -> Path:
    """Check the Markdown table and the JSON beside it as the only outputs (never over a net's
    files); returns the JSON path. With ``parser``, a refused output is its error (exit 2, one
    message) instead of an exception."""
    out_json = out_md.with_suffix(".json")
    inputs = [p for n in nets.values() for p in (n["onnx_path"], n["calib_path"], n["test_path"])]
    command = Path(parser.prog).name if parser is not None else Path(sys.argv[0]).name
    try:
        check_outputs([Output(out_md, "file", "--out"), Output(out_json, "file", "--out (json)")],
                      inputs, command=command, has_force=False)
    except SnnccError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
    return out_json


def snncc(argv: list[str]) -> tuple[int, str, str]:
    """Run ``snncc ARGV`` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = snncc_main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    if rc in (130, 143):   # snncc's main() turned Ctrl-C / SIGTERM into a code: stop the script
        # (it had gone on and written a table with an 'exit 130' cell over the committed one)
        raise KeyboardInterrupt
    return rc, out.getvalue(), err.getvalue()


def error_of(stderr: str, rc: int) -> dict:
    """The coded error (or the first line of an internal error) a failed command printed."""
    m = re.search(r"\b(SNN-E\d+)\b", stderr)
    first = next((line for line in stderr.splitlines() if "error" in line), stderr.strip()[:200])
    return {"rc": rc, "code": m.group(1) if m else ("internal" if rc == 1 else f"exit {rc}"),
            "message": first.strip()[:300]}


def one_cell(net: dict, neuron: str, t: int, work: Path) -> dict:
    """Compile with defaults and run on the test split; accuracy or the error. ``neuron="qann"``
    compiles the quantized-clip ANN with L = ``t`` levels (``--target qann -L t``) instead."""
    out, report = work / f"{neuron}_T{t}.snn.onnx", work / f"{neuron}_T{t}.json"
    what = ["--target", "qann", "-L", str(t)] if neuron == "qann" else ["-T", str(t), "--neuron",
                                                                       neuron]
    compile_argv = ["compile", str(net["onnx_path"]), *what,
                    "--calib", str(net["calib_path"]), "-o", str(out), "-q", "--report", str(report)]
    start = time.perf_counter()
    rc, _, err = snncc(compile_argv)
    cell: dict = {"compile_seconds": round(time.perf_counter() - start, 2)}
    warnings = [line.strip() for line in err.splitlines() if line.startswith("snncc ")]
    if rc != 0:
        cell["error"] = error_of(err, rc)
        return cell
    if warnings:
        cell["compile_stderr"] = warnings[:8]
        cell["warned"] = True
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        rep = {}
    cell["options"] = {k: rep.get("options", {}).get(k) for k in SHOWN_OPTIONS}
    cell["levels"] = rep.get("options", {}).get("levels")
    fid = rep.get("fidelity") or {}
    if fid.get("snn_vs_ann"):
        cell["fidelity_snn_vs_ann_top1"] = fid["snn_vs_ann"].get("top1_agreement")
        cell["fidelity_snn_vs_ann_rel_logit_error"] = fid["snn_vs_ann"].get("rel_logit_error")
        cell["fidelity_samples"] = fid.get("samples")
    start = time.perf_counter()
    rc, stdout, err = snncc(["run", str(out), "--input", str(net["test_path"]), "--json"])
    cell["run_seconds"] = round(time.perf_counter() - start, 2)
    if rc != 0:
        cell["error"] = error_of(err, rc)
        return cell
    try:
        summary = json.loads(stdout)
        cell["accuracy"] = summary["accuracy"]
    except (ValueError, KeyError) as exc:
        cell["error"] = {"rc": rc, "code": "no-accuracy", "message": f"{type(exc).__name__}: {exc}"}
    for path in (out, Path(str(out) + ".json"), report):
        with contextlib.suppress(OSError):
            path.unlink()
    return cell


def fmt_cell(cell: dict) -> str:
    if "accuracy" in cell:
        return f"{100 * cell['accuracy']:.1f}" + ("*" if cell.get("warned") else "")
    return cell["error"]["code"]


def fmt_fidelity(cell: dict) -> str:
    fid = cell.get("fidelity_snn_vs_ann_top1")
    return f"{100 * fid:.1f}" if isinstance(fid, (int, float)) else "-"


def common_defaults(data: dict) -> tuple[dict, list[str]]:
    """Options equal in every compile report of the table, and the names of those that differed."""
    seen: dict[str, set] = {}
    for net in data["nets"].values():
        for cells in net["cells"].values():
            for cell in cells.values():
                for k, v in cell.get("options", {}).items():
                    seen.setdefault(k, set()).add(json.dumps(v))
    same = {k: json.loads(next(iter(v))) for k, v in seen.items() if len(v) == 1}
    return same, sorted(k for k, v in seen.items() if len(v) > 1)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(data: dict, command: str) -> str:
    lines = [
        "# Accuracy with default settings: every neuron x T, each trained example",
        "",
        "Regenerate with:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"snncc {data['snncc_version']} at commit {data['git_commit']}"
        + (" (`-dirty`: with uncommitted changes)" if data["git_commit"].endswith("-dirty")
           else "") + f", {data['date']}; "
        f"{data['seconds']:.0f} s in all. Each cell is the test accuracy (%) of",
        "",
        "```sh",
        "snncc compile NET.onnx -T t --neuron n --calib NET_calib.npz -o snn.onnx -q",
        "snncc run snn.onnx --input NET_test.npz --json",
        "```",
        "",
        "with no other option, or the error code when the compile refuses; `*` marks a compile that "
        "warned about low fidelity (exit 0). ANN: the trained network under onnxruntime "
        "(examples/trained_models.json). Second table of each net: the compile-time fidelity "
        "estimate, SNN-ANN top-1 agreement (%) on the held-out calibration samples (not test data).",
        "",
    ]
    same, varied = common_defaults(data)
    if same:
        lines += ["Defaults in effect (from the compile reports): "
                  + ", ".join(f"`{k}={'auto' if v is None else v}`" for k, v in same.items())
                  + (f"; differing between cells: {', '.join(varied)}" if varied else ""), ""]
    ts = data["timesteps"]
    for name, net in data["nets"].items():
        lines += [f"## {name}", "",
                  f"`examples/{net['onnx']}` ({net.get('arch', '?')}, {net.get('dataset', '?')}, "
                  f"{net.get('test_samples', '?')} test images). **ANN {100 * net['ann_test_acc']:.1f} %**",
                  "",
                  "| test accuracy | " + " | ".join(f"T={t}" for t in ts) + " |",
                  "|---|" + "---:|" * len(ts)]
        for neuron in data["neurons"]:
            cells = net["cells"][neuron]
            lines.append(f"| {neuron} | " + " | ".join(fmt_cell(cells[str(t)]) for t in ts) + " |")
        lines += ["", "| fidelity estimate | " + " | ".join(f"T={t}" for t in ts) + " |",
                  "|---|" + "---:|" * len(ts)]
        for neuron in data["neurons"]:
            cells = net["cells"][neuron]
            lines.append(f"| {neuron} | " + " | ".join(fmt_fidelity(cells[str(t)]) for t in ts) + " |")
        lines.append("")
    errors: dict[str, str] = {}
    for net in data["nets"].values():
        for cells in net["cells"].values():
            for cell in cells.values():
                if "error" in cell:
                    errors.setdefault(cell["error"]["code"], cell["error"]["message"])
    if errors:
        lines += ["## Error codes in the table", ""]
        lines += [f"- `{code}`: {msg}" for code, msg in sorted(errors.items())]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--neurons", nargs="+", default=list(NEURONS), choices=NEURONS)
    parser.add_argument("-T", "--timesteps", nargs="+", type=int, default=list(TIMESTEPS))
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the Markdown of --out from a JSON this script wrote")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        check_outputs([Output(args.out, "file", "--out")], [args.render])
        with atomic_file(args.out) as tmp_md:
            tmp_md.write_text(markdown(data, data["command"]))
        print(f"wrote {args.out}")
        return 0

    out_md = args.out
    nets = select_nets(parser, args.nets)
    out_json = declare_table_outputs(out_md, nets, parser)

    command = "python examples/default_table.py" + (
        "" if out_md == DEFAULT_OUT else f" --out {os.path.relpath(out_md, ROOT)}")
    if args.nets:
        command += " --nets " + " ".join(args.nets)
    if list(args.neurons) != list(NEURONS):
        command += " --neurons " + " ".join(args.neurons)
    if list(args.timesteps) != list(TIMESTEPS):
        command += " -T " + " ".join(map(str, args.timesteps))

    start = time.perf_counter()
    data: dict = {"command": command, "snncc_version": __version__, "git_commit": git_commit(),
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "neurons": list(args.neurons), "timesteps": list(args.timesteps), "nets": {}}
    total = len(nets) * len(args.neurons) * len(args.timesteps)
    done = 0
    with tempfile.TemporaryDirectory(prefix="snncc-default-table-") as tmp:
        for name, net in nets.items():
            work = Path(tmp) / name
            work.mkdir()
            cells: dict = {}
            for neuron in args.neurons:
                cells[neuron] = {}
                for t in args.timesteps:
                    cell = one_cell(net, neuron, t, work)
                    cells[neuron][str(t)] = cell
                    done += 1
                    print(f"[{done}/{total}] {name} {neuron} T={t}: {fmt_cell(cell)} "
                          f"({cell['compile_seconds']:.1f} s)", file=sys.stderr, flush=True)
            data["nets"][name] = {k: v for k, v in net.items() if not k.endswith("_path")} | {"cells": cells}
    data["seconds"] = round(time.perf_counter() - start, 1)
    data["defaults"], data["defaults_varied"] = common_defaults(data)

    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=2) + "\n")
    with atomic_file(out_md) as tmp_md:
        tmp_md.write_text(markdown(data, command))
    print(f"wrote {out_md} and {out_json} in {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
