"""Compile time and peak memory of snncc on the exported ResNet-34 (issue 2 benchmark).

Measures, each in a fresh subprocess so that peak RSS belongs to that job alone:
  1. loading the model only (the floor: protobuf parse + gs import);
  2. the passes only (the model carries a QCFS pattern, so no calibration is needed);
  3. the passes with calibration on 256 images (max, percentile, and the default snn: the
     SNN-aware walk, here with the quantized clip as its neuron since the target is qann).
Prints a Markdown table; ``--json`` writes the figures.

    python bench/compile_time.py [--repeat 3] [--json out.json]   # exports its own ResNet-34
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = r"""
import json, resource, sys, time
from snncc import ir
from snncc.driver import compile_model, make_options
kind, model, out, calib, method = sys.argv[1:6]
t0 = time.perf_counter()
if kind == "load":
    ir.to_proto(ir.load(model))
else:
    opts = dict(target="qann", levels=8, calib_method=method, calib_max_samples=256,
                fidelity_samples=0)
    if calib != "-":
        opts["calib_path"] = calib
    result = compile_model(model, out, make_options(**opts))
    passes = {r["pass"]: r["ms"] for r in result.report["passes"]}
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": t, "peak_mb": peak,
                  "passes_ms": passes if kind != "load" else {}}))
"""


def run_job(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", JOB, *args], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"job {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(tmp: Path) -> tuple[Path, Path, Path]:
    """Export ResNet-34 twice: plain ReLU (needs calibration) and with QCFS patterns."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from examples.export_models import export, random_model

    plain = tmp / "resnet34.onnx"
    export(random_model("resnet34", (1, 3, 32, 32)), plain, (1, 3, 32, 32), dynamic_batch=True)
    calib = tmp / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32))
    qcfs = tmp / "resnet34_qcfs.onnx"
    subprocess.run([sys.executable, "-m", "snncc", "compile", str(plain), "--target", "qann",
                    "--levels", "8", "--calib", str(calib), "-o", str(qcfs), "-q"],
                   check=True, cwd=ROOT)
    return plain, qcfs, calib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best is reported")
    ap.add_argument("--json", help="write figures to this file")
    args = ap.parse_args()
    if args.json:  # refused before the minutes of work, not after
        sys.path.insert(0, str(ROOT))
        from snncc.outputs import Output, check_outputs
        check_outputs([Output(args.json, "file", "--json")], command="bench/compile_time.py")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plain, qcfs, calib = prepare(tmp)
        rows = {
            "load only": ("load", str(plain), "-", "-", "max"),
            "passes only (QCFS graph, no calibration)": ("compile", str(qcfs),
                                                         str(tmp / "o1.onnx"), "-", "max"),
            "passes + calibration, 256 images, max": ("compile", str(plain),
                                                      str(tmp / "o2.onnx"), str(calib), "max"),
            "passes + calibration, 256 images, percentile": (
                "compile", str(plain), str(tmp / "o3.onnx"), str(calib), "percentile"),
            "passes + calibration, 256 images, snn (the default; its walk keeps 122)": (
                "compile", str(plain), str(tmp / "o4.onnx"), str(calib), "snn"),
        }
        results = {}
        for label, job in rows.items():
            runs = [run_job(*job) for _ in range(args.repeat)]
            results[label] = min(runs, key=lambda r: r["seconds"])
    print(f"ResNet-34 (3x32x32), {args.repeat} runs each, best shown; "
          f"nproc={len(__import__('os').sched_getaffinity(0))}\n")
    print("| job | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
    for label, r in results.items():
        if r["passes_ms"]:
            print(f"\n{label}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["passes_ms"].items()))
    if args.json:
        from snncc.outputs import atomic_file
        with atomic_file(args.json) as tmp_json:
            tmp_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
