"""Train the bundled example networks beyond ``mnist_cnn`` and record every ANN's test accuracy.

    python examples/train_examples.py [--only NAME ...] [--out-dir examples]

Trains, with seed 0 on the fixed splits of ``examples/data.py``:

- ``mnist_resnet``: ``SmallResNet`` (models.py) on the 28x28 MNIST subset;
- ``digits_resnet``: ``SmallResNet`` on scikit-learn's 8x8 digits;
- ``digits_cnn``: the VGG-style ``MnistCNN`` on 8x8 digits.

and writes, for each NAME, ``NAME.onnx`` (opset 17, input 'input' N x 1 x H x W with a dynamic
batch, output 'logits', BatchNormalization kept), ``NAME_calib.npz`` (the first 256 training images
under 'input') and ``NAME_test.npz`` (the test split under 'x' and 'input', labels under 'y').
Finally it writes ``trained_models.json``: {name: {onnx, calib, test, ann_test_acc, ...}} for these
nets and the already bundled ``mnist_cnn`` (made by ``train_mnist.py``). Accuracies are measured
with onnxruntime on the exported file, so they are what a user of the ONNX file gets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # repo root, for `examples.*` and `snncc`
from examples.data import Split, load_digits_split, load_mnist_subset  # noqa: E402
from examples.export_models import INPUT_NAME, export  # noqa: E402
from examples.models import MnistCNN, SmallResNet  # noqa: E402
from snncc.outputs import atomic_file  # noqa: E402

CALIB_SIZE = 256
MANIFEST = "trained_models.json"


@dataclass(frozen=True)
class Recipe:
    """How one example net is built and trained."""

    arch: str
    dataset: str
    make: Callable[[], nn.Module]
    load: Callable[[int], Split]
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    max_shift: int = 2  # random translation (pixels) used as augmentation


RECIPES: dict[str, Recipe] = {
    "mnist_resnet": Recipe("SmallResNet(widths=(16, 32, 64))", "mnist_subset",
                           lambda: SmallResNet(image_size=28), load_mnist_subset, epochs=15),
    "digits_resnet": Recipe("SmallResNet(widths=(16, 32, 64), image_size=8)", "digits",
                            lambda: SmallResNet(image_size=8), load_digits_split, epochs=40, batch_size=32,
                            max_shift=1),
    "digits_cnn": Recipe("MnistCNN(pool='avg', image_size=8)", "digits",
                         lambda: MnistCNN(pool="avg", image_size=8), load_digits_split, epochs=40, batch_size=32,
                         max_shift=1),
}

# The bundled MNIST CNN, written by train_mnist.py (its artefacts predate the NAME_calib naming).
MNIST_CNN = {"onnx": "mnist_cnn.onnx", "calib": "mnist_calib.npz", "test": "mnist_test.npz",
             "arch": "MnistCNN(pool='avg')", "dataset": "mnist_subset", "script": "examples/train_mnist.py"}


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each axis (zero fill)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int) -> None:
    """Adam with a one-cycle learning rate, cross-entropy, random-shift augmentation."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.epochs * ((len(x) + recipe.batch_size - 1) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            loss = loss_fn(model(random_shift(xt[idx], gen, recipe.max_shift)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def ort_accuracy(onnx_path: str, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model under onnxruntime (CPU, one batch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {INPUT_NAME: x})
    return float((logits.argmax(1) == y).mean())


def save_npz(path: str, **arrays: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def make_example(name: str, out_dir: str, seed: int) -> dict:
    recipe = RECIPES[name]
    torch.manual_seed(seed)
    data = recipe.load(seed)
    model = recipe.make()
    start = time.perf_counter()
    train(model, *data.train, recipe=recipe, seed=seed)
    seconds = time.perf_counter() - start
    model.eval()

    files = {"onnx": f"{name}.onnx", "calib": f"{name}_calib.npz", "test": f"{name}_test.npz"}
    shape = (1,) + data.test[0].shape[1:]
    with atomic_file(os.path.join(out_dir, files["onnx"])) as tmp:
        export(model, str(tmp), shape, dynamic_batch=True)
    x_test, y_test = data.test
    save_npz(os.path.join(out_dir, files["calib"]), **{INPUT_NAME: data.train[0][:CALIB_SIZE]})
    save_npz(os.path.join(out_dir, files["test"]), x=x_test, y=y_test, **{INPUT_NAME: x_test})

    onnx_path = os.path.join(out_dir, files["onnx"])
    entry = dict(files, arch=recipe.arch, dataset=recipe.dataset, script="examples/train_examples.py",
                 epochs=recipe.epochs, ann_val_acc=ort_accuracy(onnx_path, *data.val),
                 ann_test_acc=ort_accuracy(onnx_path, x_test, y_test), test_samples=int(len(y_test)))
    print(f"{name}: {seconds:.0f} s training, val {entry['ann_val_acc']:.4f}, test {entry['ann_test_acc']:.4f}")
    for f in files.values():
        path = os.path.join(out_dir, f)
        print(f"  wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")
    return entry


def mnist_cnn_entry(out_dir: str) -> dict | None:
    """The bundled mnist_cnn's entry, its accuracy measured from the bundled files."""
    if not os.path.exists(os.path.join(out_dir, MNIST_CNN["onnx"])):
        return None
    test = np.load(os.path.join(out_dir, MNIST_CNN["test"]))
    x, y = test[INPUT_NAME], test["y"]
    acc = ort_accuracy(os.path.join(out_dir, MNIST_CNN["onnx"]), x, y)
    return dict(MNIST_CNN, ann_test_acc=acc, test_samples=int(len(y)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="train only these (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=HERE)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    manifest_path = os.path.join(args.out_dir, MANIFEST)
    manifest: dict = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    cnn = mnist_cnn_entry(args.out_dir)
    if cnn is not None:
        manifest["mnist_cnn"] = cnn
    for name in args.only or list(RECIPES):
        manifest[name] = make_example(name, args.out_dir, args.seed)
    order = ["mnist_cnn"] + list(RECIPES)
    manifest = {k: manifest[k] for k in order if k in manifest}
    with atomic_file(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {manifest_path}")


if __name__ == "__main__":
    main()
