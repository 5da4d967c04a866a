"""Models the benchmarks and tests train: ResNet-18's shape without torchvision.

``resnet18`` is He et al.'s ResNet-18 (CVPR 2016, table 1: BasicBlock, [2, 2, 2, 2] blocks of
64/128/256/512 channels, stride-2 stages, batch norm after every conv, ReLU, identity or 1x1
projection shortcuts), with a ``stem`` choice: "imagenet" (7x7/2 conv + 3x3/2 max pool) or
"cifar" (one 3x3/1 conv, for 32x32 inputs). The saved tensors are the ones a real ResNet-18
saves for backward: conv inputs, batch-norm inputs, ReLU outputs, pool indices, sums.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["BasicBlock", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


def resnet18(*, num_classes: int = 10, stem: str = "imagenet", width: int = 64,
             seed: int = 0) -> nn.Sequential:
    """ResNet-18 (see the module docstring); ``width`` scales the channels (64 is the paper's)."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem: expected 'imagenet' or 'cifar', got {stem!r}")
    if width < 1:
        raise ValueError(f"width: expected >= 1, got {width}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = []
        if stem == "imagenet":
            layers += [("conv1", nn.Conv2d(3, width, 7, 2, 3, bias=False)),
                       ("bn1", nn.BatchNorm2d(width)), ("relu", nn.ReLU()),
                       ("maxpool", nn.MaxPool2d(3, 2, 1))]
        else:
            layers += [("conv1", nn.Conv2d(3, width, 3, 1, 1, bias=False)),
                       ("bn1", nn.BatchNorm2d(width)), ("relu", nn.ReLU())]
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            layers.append((f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                          BasicBlock(cout, cout, 1))))
            cin = cout
        layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                   ("fc", nn.Linear(cin, num_classes))]
        return nn.Sequential(OrderedDict(layers))
