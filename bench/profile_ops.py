"""Where the time of a compiled SNN goes, per op type and per image, at several batch sizes
(ONNX Runtime's profiler; issue 12: why the folded SNN's ratio to T x ANN grows with the batch).

For each variant (the ANN, ``<neuron>/<schedule>`` compiled from the bundled MNIST CNN or ResNet,
or an ImageNet-shaped random-weight ResNet of ``bench/window.py``, at T) and batch size, the model runs ``--runs`` times under the profiler; the kernel times of
the nodes are summed per op type and divided by runs x batch. Reorder* are ORT's layout
conversions (NCHW <-> NCHWc) around ops that have no blocked-layout kernel (ReduceMean...; our
neuron ops under ``<variant>:plain``, ORT's own layout handling; without it they run inside the
blocked layout, ``snncc.runtime.layout``). A ``<neuron>/streaming`` variant profiles one step
(step 1, zero states): its figures are per step, to set against a quarter of the folded run.

    python bench/profile_ops.py [--net cnn|resnet|resnet18|resnet34|resnet34q] [-T 4] [--batch 16,100]
        [--variants ann,if/folded,bitserial/window] [--runs 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import NETS, session, session_options, step_feeds  # noqa: E402

from bench.window import RANDOM_NETS, _base, _net_files, compile_variants  # noqa: E402


def profile(path: Path, library: bool, x: np.ndarray, runs: int, threads: int, tmp: Path,
            blocked: bool = True) -> dict[str, float]:
    so = session_options(library, threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "prof")
    sess = session(path, library, threads, blocked, so)
    feeds = step_feeds(sess, x)
    for _ in range(3):
        sess.run(None, feeds)
    sess.end_profiling()
    so.profile_file_prefix = str(tmp / "prof2")
    sess = session(path, library, threads, blocked, so)
    for _ in range(3):  # warm-up, then the measured runs
        sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    scale = 1.0 / ((runs + 3) * len(x))  # the warm-up runs are in the same profile
    return {k: v * scale for k, v in per_op.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="cnn", choices=sorted(NETS) + list(RANDOM_NETS))
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--batch", default="16,100")
    ap.add_argument("--variants", default="ann,if/folded,bitserial/window")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variants = args.variants.split(",")
    print(f"# bench/profile_ops.py --net {args.net} -T {args.T} --batch {args.batch} --variants "
          f"{args.variants} --runs {args.runs} --threads {args.threads}\n\nus per image of node "
          f"kernel time, per op type (load average {os.getloadavg()[0]:.1f})\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = _net_files(args.net, tmp, max(int(b) for b in args.batch.split(",")))
        model, _, x_all, _ = files
        paths = compile_variants(args.net, args.T, [v for v in variants if v != "ann"], tmp, files)
        paths["ann"] = model
        for v in variants:
            rows = {}
            for b in (int(b) for b in args.batch.split(",")):
                rows[b] = profile(paths[_base(v)], v != "ann", x_all[:b], args.runs,
                                  args.threads, tmp, blocked=not v.endswith(":plain"))
            ops = sorted({k for r in rows.values() for k in r},
                         key=lambda k: -max(r.get(k, 0.0) for r in rows.values()))
            print(f"## {v}\n\n| op | " + " | ".join(f"batch {b}" for b in rows) + " |")
            print("|---|" + "---:|" * len(rows))
            for k in ops:
                print(f"| {k} | " + " | ".join(f"{r.get(k, 0.0):.2f}" for r in rows.values())
                      + " |")
            print("| **total** | " + " | ".join(f"{sum(r.values()):.2f}" for r in rows.values())
                  + " |\n", flush=True)


if __name__ == "__main__":
    main()
