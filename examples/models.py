"""Example CNNs for snncc, defined with plain torch.nn and exportable at ONNX opset 17.

Every model takes an N x C x H x W float tensor and returns N x num_classes logits. The default input
is CIFAR-like 3x32x32 with 10 classes, except ``MnistCNN`` (1x28x28). ``build(name, **kw)`` makes
a model by its name in ``MODELS``.

Pooling is average pooling by default, since rate-coded spiking conversion has no exact max-pool
(neurons.md §1.4). ``pool="max"`` gives the max-pool variant where offered.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn


def _pool(kind: str, size: int = 2) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(size)
    if kind == "max":
        return nn.MaxPool2d(size)
    raise ValueError(f"pool must be 'avg' or 'max', not {kind!r}")


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MnistCNN(nn.Module):
    """Small CNN for 1x28x28 digits: three conv-BN-ReLU stages (16/32/64 channels), two pools, MLP head."""

    def __init__(self, num_classes: int = 10, pool: str = "avg", in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 16), _pool(pool),
            conv_bn_relu(16, 32), _pool(pool),
            conv_bn_relu(32, 64),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG_CONFIGS = {
    # channel counts per conv; "P" is a 2x2 pool. Five pools take 32x32 down to 1x1.
    "vgg11": [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"],
    "vgg16": [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"],
    # MNIST-sized (width 1.0): three pools take 28x28 to 3x3, each after a conv fed by spikes
    "mnist_vgg": [16, 32, "P", 64, "P", 64, 64, "P"],
}


class VGG(nn.Module):
    """VGG-style CIFAR net: conv-BN-ReLU stages with 2x2 pools, then a two-hidden-layer classifier.

    ``width`` scales every channel count (0.25 gives a 16..128-channel VGG-11). The classifier is
    C -> hidden -> hidden -> classes with ReLU and dropout, as in the QCFS CIFAR VGG but narrower.
    """

    def __init__(self, config: str = "vgg11", num_classes: int = 10, pool: str = "avg", width: float = 0.25,
                 hidden: int = 256, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = in_channels, image_size
        for item in VGG_CONFIGS[config]:
            if item == "P":
                layers.append(_pool(pool))
                side //= 2
            else:
                cout = max(1, int(item * width))
                layers.append(conv_bn_relu(cin, cout))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut (identity or conv1x1-BN), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of BasicBlocks with 64/128/256/512-channel stages.

    ``stem="qcfs"`` (default) is the QCFS stem: conv3x3 stride 1 + BN + ReLU, no max-pool
    (neurons.md §1.4). ``stem="torchvision"`` is conv7x7 stride 2 + BN + ReLU + MaxPool 3x3/2.
    """

    def __init__(self, blocks: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 10,
                 stem: str = "qcfs", in_channels: int = 3):
        super().__init__()
        if stem == "qcfs":
            self.stem = conv_bn_relu(in_channels, 64, 3)
        elif stem == "torchvision":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"stem must be 'qcfs' or 'torchvision', not {stem!r}")
        stages: list[nn.Module] = []
        cin = 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


ResNet18 = partial(ResNet, (2, 2, 2, 2))
ResNet34 = partial(ResNet, (3, 4, 6, 3))


class DenseLayer(nn.Module):
    """Pre-activation dense layer: BN-ReLU-Conv3x3(growth), concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNetSmall(nn.Module):
    """DenseNet-style net: stem conv, dense blocks (Concat) joined by BN-ReLU-Conv1x1 + AvgPool transitions."""

    def __init__(self, num_classes: int = 10, growth: int = 12, layers_per_block: int = 3, blocks: int = 2,
                 in_channels: int = 3):
        super().__init__()
        c = 2 * growth
        body: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)]
        for b in range(blocks):
            for _ in range(layers_per_block):
                body.append(DenseLayer(c, growth))
                c += growth
            if b < blocks - 1:
                body += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                         nn.AvgPool2d(2)]
                c //= 2
        body += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*body)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit (stride 1): split channels in half, transform one half, concat, shuffle.

    The channel shuffle is Reshape(N, 2, C/2, H, W) -> Transpose(1, 2) -> Reshape(N, C, H, W). Channels
    and the spatial side are fixed at construction so that the exported Reshape shapes are constants
    (only the batch is -1) instead of Shape/Gather arithmetic.
    """

    def __init__(self, channels: int, side: int):
        super().__init__()
        half = channels // 2
        self.channels, self.side = channels, side
        self.branch = nn.Sequential(
            conv_bn_relu(half, half, 1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            conv_bn_relu(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.channels, self.side
        keep, change = x.split([c // 2, c // 2], dim=1)
        y = torch.cat([keep, self.branch(change)], dim=1)
        return y.reshape(-1, 2, c // 2, s, s).transpose(1, 2).reshape(-1, c, s, s)


class ShuffleNetSmall(nn.Module):
    """Small ShuffleNetV2-style net: stem, shuffle blocks with AvgPool downsampling, global pool, FC."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, ...] = (24, 48), blocks_per_stage: int = 2,
                 in_channels: int = 3, image_size: int = 32):
        super().__init__()
        body: list[nn.Module] = []
        cin, side = in_channels, image_size
        for cout in channels:
            side //= 2
            body += [conv_bn_relu(cin, cout), nn.AvgPool2d(2)]
            body += [ShuffleBlock(cout, side) for _ in range(blocks_per_stage)]
            cin = cout
        self.features = nn.Sequential(*body)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": MnistCNN,
    "vgg11": partial(VGG, "vgg11"),
    "vgg16": partial(VGG, "vgg16"),
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "densenet_small": DenseNetSmall,
    "shufflenet_small": ShuffleNetSmall,
}

# Default single-sample input shape of each model in MODELS.
INPUT_SHAPES: dict[str, tuple[int, int, int, int]] = {
    name: ((1, 1, 28, 28) if name == "mnist_cnn" else (1, 3, 32, 32)) for name in MODELS
}


def build(name: str, **kw) -> nn.Module:
    """Construct the model registered as ``name`` in ``MODELS``; ``kw`` goes to its constructor."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**kw)


class SmallResNet(nn.Module):
    """Small ResNet for 1-channel digits: conv-BN-ReLU stem, BasicBlocks with conv1x1-BN shortcuts,
    global average pool, FC. No max-pool anywhere.

    ``widths`` gives the stem width and then one BasicBlock per further entry (each widens, so each
    shortcut is a 1x1 conv + BN); the default (16, 32, 64) has 5 ReLUs, 4 of them in residual blocks.
    For images of 16 pixels or more the stem is followed by a 2x2 AvgPool and every block has stride
    2 (28 -> 14 -> 7 -> 4); smaller images (8x8 digits) skip the pool and the first block keeps stride 1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        large = image_size >= 16
        stem: list[nn.Module] = [conv_bn_relu(in_channels, widths[0])]
        if large:
            stem.append(nn.AvgPool2d(2))
        self.stem = nn.Sequential(*stem)
        blocks = [BasicBlock(cin, cout, stride=2 if (large or i > 0) else 1)
                  for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:]))]
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


MODELS["small_resnet"] = SmallResNet
INPUT_SHAPES["small_resnet"] = (1, 1, 28, 28)
