"""Which calibration should be the default? Every method x granularity x neuron at T = 4, and the
sample count, on each trained example net. The measurement behind compile's defaults.

    python examples/calibration_table.py [--out examples/results/calibration.md] [--nets NAME ...]

Each cell is the test accuracy (%) of ``snncc compile NET.onnx -T 4 --neuron N --calib
NET_calib.npz --calib-method M [--per-layer] --no-fidelity`` then ``snncc run`` on the test split.
The sample table varies ``--calib-samples`` with the default method. Outputs go to a temporary
folder; only the Markdown and JSON tables are written.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from examples.default_table import (declare_table_outputs, error_of, select_nets,  # noqa: E402
                                    snncc, table_parser)
from snncc.outputs import atomic_file  # noqa: E402

NEURONS = ("if", "bitserial", "mt", "gn", "srp")
METHODS = (("max", "layer"), ("max", "channel"), ("mse", "layer"), ("mse", "channel"),
           ("snn", "layer"), ("snn", "channel"))
SAMPLES = (32, 64, 128, 256)
SAMPLE_NEURONS = ("if", "mt")
DEFAULT_OUT = HERE / "results" / "calibration.md"


def accuracy(net: dict, work: Path, neuron: str, extra: list[str]) -> tuple[str, float]:
    out = work / "snn.onnx"
    start = time.perf_counter()
    rc, _, err = snncc(["compile", str(net["onnx_path"]), "-T", "4", "--neuron", neuron,
                        "--calib", str(net["calib_path"]), "-o", str(out), "-q", "--no-fidelity",
                        *extra])
    seconds = time.perf_counter() - start
    if rc != 0:
        return error_of(err, rc)["code"], seconds
    rc, stdout, err = snncc(["run", str(out), "--input", str(net["test_path"]), "--json"])
    if rc != 0:
        return error_of(err, rc)["code"], seconds
    return f"{100 * json.loads(stdout)['accuracy']:.1f}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = table_parser(__doc__, DEFAULT_OUT)
    args = parser.parse_args(argv)
    nets = select_nets(parser, args.nets)
    out_json = declare_table_outputs(args.out, nets, parser)
    data: dict = {}
    lines = ["# Calibration: method x granularity x neuron at T = 4, and sample count", "",
             "Regenerate with `python examples/calibration_table.py`. Test accuracy (%) with "
             "`--no-fidelity` (all calibration samples calibrate); default `--calib-samples` 256 "
             "unless stated. `snn` = SNN-aware walk (snncc/snn_calibration.py).", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, net in nets.items():
            rows: dict = {}
            secs: dict = {}
            for method, gran in METHODS:
                key = f"{method} per {gran}"
                extra = ["--calib-method", method] + (["--per-layer"] if gran == "layer" else [])
                for neuron in NEURONS:
                    acc, s = accuracy(net, work, neuron, extra)
                    rows.setdefault(key, {})[neuron] = acc
                    secs.setdefault(key, []).append(s)
                    print(name, key, neuron, acc, f"{s:.1f}s", flush=True)
            samples: dict = {}
            for n in SAMPLES:
                for neuron in SAMPLE_NEURONS:
                    acc, _ = accuracy(net, work, neuron, ["--calib-samples", str(n)])
                    samples.setdefault(str(n), {})[neuron] = acc
                    print(name, "samples", n, neuron, acc, flush=True)
            data[name] = {"ann": net["ann_test_acc"], "methods": rows, "samples": samples,
                          "compile_seconds_mean": {k: round(sum(v) / len(v), 2)
                                                   for k, v in secs.items()}}
            lines += [f"## {name} (ANN {100 * net['ann_test_acc']:.1f} %)", "",
                      "| calibration | " + " | ".join(NEURONS) + " | compile s |",
                      "|---|" + "---:|" * (len(NEURONS) + 1)]
            for key, row in rows.items():
                lines.append(f"| {key} | " + " | ".join(row[n] for n in NEURONS) +
                             f" | {data[name]['compile_seconds_mean'][key]:.1f} |")
            lines += ["", "| snn per channel, --calib-samples | " + " | ".join(SAMPLE_NEURONS)
                      + " |", "|---|" + "---:|" * len(SAMPLE_NEURONS)]
            for n, row in samples.items():
                lines.append(f"| {n} | " + " | ".join(row[k] for k in SAMPLE_NEURONS) + " |")
            lines.append("")
    with atomic_file(out_json) as tmp_json:
        tmp_json.write_text(json.dumps(data, indent=1) + "\n")
    with atomic_file(args.out) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
