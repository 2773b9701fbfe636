"""Accuracy tables for the bundled MNIST CNN (and agreement tables for the ResNet example).

    python examples/evaluate.py qann      # issue 2: QANN accuracy for L = 2, 4, 8, 16 x calibration method
    python examples/evaluate.py snn       # issue 3: each neuron at T = 1, 2, 4, 8 vs ANN and QANN
    python examples/evaluate.py snn --model resnet18   # agreement with the QANN on the ResNet example
    python examples/train_mnist.py --pool max --out-dir out/mnist_max
    python examples/evaluate.py maxpool --dir out/mnist_max   # MaxPool treatments at T = 4

Tables are printed as Markdown and written to out/evaluate/ (``--out``). The pages in
examples/results/ that name this script are early runs, kept for the record; the script
reproduces them with the calibration of that time (one lambda per layer, pinned here: the default
is per channel now).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402
from snncc.neurons import NEURONS  # noqa: E402

CALIB_METHODS = [("max", None), ("percentile", 99.9), ("percentile", 99.99), ("mse", None)]


def predict(path: Path, x: np.ndarray, library: bool = False, batch: int = 250) -> np.ndarray:
    if library:
        from snncc.runtime import session_options
        so = session_options()
    else:
        so = ort.SessionOptions()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).argmax(axis=1)


def mnist(folder: Path = ROOT / "examples") -> tuple[Path, Path, np.ndarray, np.ndarray]:
    data = np.load(folder / "mnist_test.npz")
    return (folder / "mnist_cnn.onnx", folder / "mnist_calib.npz",
            data["x"].astype(np.float32), data["y"])


def resnet(name: str, tmp: Path, images: int) -> tuple[Path, Path, np.ndarray, None]:
    from examples.export_models import export, random_model

    path = tmp / f"{name}.onnx"
    export(random_model(name, (1, 3, 32, 32)), path, (1, 3, 32, 32), dynamic_batch=True)
    rng = np.random.default_rng(0)
    calib = tmp / "calib.npy"
    np.save(calib, rng.random((128, 3, 32, 32), dtype=np.float32))
    return path, calib, rng.random((images, 3, 32, 32), dtype=np.float32), None


def table_qann(args, tmp: Path) -> str:
    model, calib, x, y = mnist()
    ann = (predict(model, x) == y).mean()
    lines = [f"QANN accuracy of the bundled MNIST CNN on {len(x)} test images "
             f"(ANN: {100 * ann:.2f} %); calibration on examples/mnist_calib.npz.", "",
             "| L | " + " | ".join(m if p is None else f"{m} {p}" for m, p in CALIB_METHODS) + " |",
             "|---|" + "---:|" * len(CALIB_METHODS)]
    for L in (2, 4, 8, 16):
        row = []
        for method, pct in tqdm(CALIB_METHODS, desc=f"L={L}", leave=False):
            out = tmp / f"qann_{L}_{method}_{pct}.onnx"
            opts = make_options(target="qann", levels=L, calib_path=str(calib),
                                calib_method=method, calib_percentile=pct or 99.99,
                                fidelity_samples=0, calib_per_channel=False)
            compile_model(model, out, opts)
            row.append(f"{100 * (predict(out, x) == y).mean():.2f}")
        lines.append(f"| {L} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def table_snn(args, tmp: Path) -> str:
    if args.model == "mnist":
        model, calib, x, y = mnist()
    else:
        model, calib, x, y = resnet(args.model, tmp, args.images)
    ann_pred = predict(model, x)
    head = (f"{args.model}: accuracy (agreement of predictions with the QANN at the neuron's L) "
            f"on {len(x)} images; calibration {args.calib_method}.")
    if y is not None:
        head += f" ANN accuracy {100 * (ann_pred == y).mean():.2f} %."
    else:
        head += " Random-init weights and inputs: accuracy is meaningless, agreement is the check."
    Ts = [int(t) for t in args.T.split(",")]
    lines = [head, "", "| neuron | " + " | ".join(f"T={t}" for t in Ts) + " |",
             "|---|" + "---:|" * len(Ts)]
    qann_row = []
    for key in args.neurons.split(","):
        row = []
        for T in tqdm(Ts, desc=key, leave=False):
            opts = make_options(target="ort", timesteps=T, neuron=key, calib_path=str(calib),
                                calib_method=args.calib_method, fidelity_samples=0,
                                calib_per_channel=False)
            snn = tmp / f"{key}_{T}.onnx"
            qann = tmp / f"{key}_{T}_qann.onnx"
            try:
                compile_model(model, snn, opts)
            except Exception as exc:  # e.g. gn needs tau*T = L: report, keep going
                row.append(f"n/a ({type(exc).__name__})")
                continue
            compile_model(model, qann, make_options(
                target="qann", levels=opts.levels, calib_path=str(calib),
                calib_method=args.calib_method, bias_shift=False, fidelity_samples=0,
                calib_per_channel=False))
            p_snn = predict(snn, x, library=args.library)
            p_q = predict(qann, x)
            agree = 100 * (p_snn == p_q).mean()
            if y is not None:
                row.append(f"{100 * (p_snn == y).mean():.2f} ({agree:.1f})")
                if key == "if":
                    qann_row.append(f"{100 * (p_q == y).mean():.2f} (L={opts.levels})")
            else:
                row.append(f"agree {agree:.1f}")
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    if qann_row:
        lines.append("| QANN (L=T) | " + " | ".join(qann_row) + " |")
    return "\n".join(lines)


def table_maxpool(args, tmp: Path) -> str:
    """MaxPool treatments on a CNN trained with max pooling: 'auto' is exact where theory allows
    (moved before T = 1 neurons, pooled on the time-mean current for bit-serial) and spike
    gating elsewhere; 'avg' replaces MaxPool by AveragePool (wrong for a max-pool-trained net)."""
    model, calib, x, y = mnist(Path(args.dir))
    T = 4
    lines = [f"MNIST CNN trained with MaxPool ({len(x)} test images, ANN "
             f"{100 * (predict(model, x) == y).mean():.2f} %), T = {T}, calibration "
             f"{args.calib_method}. Accuracy (agreement with the QANN).", "",
             "| neuron | L | QANN | --maxpool auto | treatment | --maxpool avg |",
             "|---|---:|---:|---:|---|---:|"]
    for key in args.neurons.split(","):
        row = {}
        for mode in ("auto", "avg"):
            opts = make_options(target="ort", timesteps=T, neuron=key, calib_path=str(calib),
                                calib_method=args.calib_method, maxpool=mode, fidelity_samples=0,
                                calib_per_channel=False)
            out = tmp / f"{key}_{mode}.onnx"
            result = compile_model(model, out, opts)
            row[mode] = predict(out, x, library=args.library)
            if mode == "auto":
                treatment = ", ".join(sorted(set(result.report["notes"]["maxpool"].values())))
        qann = tmp / f"{key}_qann.onnx"
        compile_model(model, qann, make_options(target="qann", levels=opts.levels,
                                                calib_path=str(calib),
                                                calib_method=args.calib_method,
                                                fidelity_samples=0, calib_per_channel=False))
        q = predict(qann, x)
        cell = {m: f"{100 * (p == y).mean():.2f} ({100 * (p == q).mean():.1f})"
                for m, p in row.items()}
        lines.append(f"| {key} | {opts.levels} | {100 * (q == y).mean():.2f} | {cell['auto']} | "
                     f"{treatment} | {cell['avg']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=("qann", "snn", "maxpool"))
    ap.add_argument("--dir", default="out/mnist_max",
                    help="maxpool: folder written by train_mnist.py --pool max")
    ap.add_argument("--model", default="mnist", help="mnist | resnet18 | resnet34")
    ap.add_argument("--neurons", default=",".join(NEURONS))
    ap.add_argument("-T", default="1,2,4,8")
    ap.add_argument("--calib-method", default="max")
    ap.add_argument("--library", action="store_true", help="use the C++ kernels")
    ap.add_argument("--images", type=int, default=64, help="random images for the ResNet models")
    ap.add_argument("--out", default=str(ROOT / "out" / "evaluate"),
                    help="folder for the table (default out/evaluate; the pages in "
                    "examples/results/ are kept for the record)")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        text = {"qann": table_qann, "snn": table_snn, "maxpool": table_maxpool}[args.table](
            args, Path(d))
    print(text)
    name = (f"qann_{args.model}.md" if args.table == "qann"
            else f"{args.table}_{args.model}_{args.calib_method}.md")
    with atomic_file(out_dir / name) as tmp:
        tmp.write_text(text + "\n")
    print(f"wrote {out_dir / name}")


if __name__ == "__main__":
    main()
