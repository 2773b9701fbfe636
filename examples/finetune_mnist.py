"""Full run of ``snncc finetune``: ReLU ANN -> QCFS fine-tune (and optionally IIR) -> compiled SNN.

    python examples/finetune_mnist.py [--dataset mnist|digits] [-L 4] [--epochs 3] [--sparsity 1e-6]
                                      [--snn-timesteps 4] [--iir --iir-epochs 3 --timesteps 5,4,3,2,1]
                                      [--out-dir DIR]

1. trains MnistCNN (examples/models.py) as a ReLU ANN and exports it (examples/export_models.py);
2. writes the train/val splits as .npz (keys x, y) and runs ``snncc finetune`` on the ONNX file,
   exactly as the command line does (the default recipe: per-channel MSE λ, distillation from the
   ANN, one-cycle SGD; ``--snn-timesteps T`` trains with the IF SNN at T in the loop);
3. compiles the QCFS model with ``--neuron if -T L`` (no calibration: λ and L come from the graph)
   and, with ``--iir``, every IIR stage with ``--neuron lif -T T``;
4. prints test accuracy of the ANN, the fine-tuned QCFS ANN and the compiled SNNs (ONNX Runtime).

Not run in CI (minutes on a CPU). ``--dataset digits`` (scikit-learn 8x8 digits) is the quick variant.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.data import load_digits_split, load_mnist_subset  # noqa: E402
from examples.export_models import export  # noqa: E402
from examples.models import MnistCNN  # noqa: E402
from examples.train_mnist import train  # noqa: E402
from snncc.driver import compile_model, make_options  # noqa: E402
from snncc.train.cli import add_finetune_arguments, run_finetune  # noqa: E402


def accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 250) -> float:
    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--ann-epochs", type=int, default=10)
    parser.add_argument("-L", "--levels", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="QCFS fine-tuning epochs")
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--lambda-init", default="mse")
    parser.add_argument("--snn-timesteps", type=int, help="train with the IF SNN at T in the loop")
    parser.add_argument("--iir", action="store_true", help="also run the IIR schedule")
    parser.add_argument("--iir-epochs", type=int, default=3, help="epochs per IIR stage")
    parser.add_argument("--timesteps", default="5,4,3,2,1")
    parser.add_argument("--threshold-steps", default="100",
                        help="steps per layer of the threshold search (the CLI default is the paper's 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", help="where the models go (default: a temporary folder)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="snncc_finetune_"))
    out.mkdir(parents=True, exist_ok=True)
    data = load_mnist_subset(args.seed) if args.dataset == "mnist" else load_digits_split(args.seed)
    side = data.train[0].shape[-1]
    ann = MnistCNN(image_size=side)
    train(ann, *data.train, epochs=args.ann_epochs, batch_size=64, lr=3e-3, seed=args.seed)
    ann_path = out / "ann.onnx"
    export(ann, str(ann_path), (1, 1, side, side), dynamic_batch=True)
    np.savez(out / "train.npz", x=data.train[0], y=data.train[1])
    np.savez(out / "val.npz", x=data.val[0], y=data.val[1])
    x_test, y_test = data.test
    rows = [("ReLU ANN", accuracy(ann_path, x_test, y_test))]

    ft = argparse.ArgumentParser()
    add_finetune_arguments(ft)
    common = [str(ann_path), "--data", str(out / "train.npz"), "--val", str(out / "val.npz"), "--seed",
              str(args.seed)]
    qcfs_path = out / "qcfs.onnx"
    loop = ["--snn-timesteps", str(args.snn_timesteps)] if args.snn_timesteps else []
    run_finetune(ft.parse_args(common + ["-L", str(args.levels), "--epochs", str(args.epochs), "--sparsity",
                                         str(args.sparsity), "--lambda-init", args.lambda_init, *loop,
                                         "-o", str(qcfs_path)]))
    rows.append((f"QCFS ANN L={args.levels}", accuracy(qcfs_path, x_test, y_test)))
    for T in sorted({1, 2, args.levels, 2 * args.levels}):
        snn = out / f"qcfs_if_T{T}.onnx"
        compile_model(qcfs_path, snn, make_options(target="ort", timesteps=min(T, 8), neuron="if"))
        rows.append((f"IF SNN T={min(T, 8)} (from QCFS)", accuracy(snn, x_test, y_test)))

    if args.iir:
        iir_path = out / "iir.onnx"
        run_finetune(ft.parse_args(common + ["--iir", "--timesteps", args.timesteps, "--epochs", str(args.iir_epochs),
                                             "--threshold-steps", args.threshold_steps, "-o", str(iir_path)]))
        for T in (int(t) for t in args.timesteps.split(",")):
            snn = out / f"iir_lif_T{T}.onnx"
            compile_model(out / f"iir.T{T}.onnx", snn, make_options(target="ort", timesteps=T, neuron="lif"))
            rows.append((f"IIR LIF SNN T={T}", accuracy(snn, x_test, y_test)))

    print(f"\n{args.dataset}: test accuracy on {len(x_test)} images (models in {out})\n")
    print("| model | test accuracy |\n|---|---:|")
    for name, acc in rows:
        print(f"| {name} | {100 * acc:.2f} % |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
