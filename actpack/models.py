"""Models the benchmarks and tests train: ResNet-18's shape without torchvision, and small
models with the layers that make lossy activation storage hard, for gradient checks.

``resnet18`` is He et al.'s ResNet-18 (CVPR 2016, table 1: BasicBlock, [2, 2, 2, 2] blocks of
64/128/256/512 channels, stride-2 stages, batch norm after every conv, ReLU, identity or 1x1
projection shortcuts), with a ``stem`` choice: "imagenet" (7x7/2 conv + 3x3/2 max pool) or
"cifar" (one 3x3/1 conv, for 32x32 inputs). The saved tensors are the ones a real ResNet-18
saves for backward: conv inputs, batch-norm inputs, ReLU outputs, pool indices, sums.

``GRADIENT_MODELS`` each build in milliseconds and run one step in about a second on a CPU
core; together they hold what the digits CNN (``actpack.data.digits_cnn``) lacks: BatchNorm
(its weight gradient is a sum over the whole saved input), residual sums, depthwise
convolutions with squeeze-excitation gates and value-reading activations (SiLU, Hardswish,
ReLU6), and attention with explicit 4-D probability maps, LayerNorm, GELU and dropout::

    model, example = GRADIENT_MODELS["bn_resnet"]()   # a fresh seeded model and input batch
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GRADIENT_MODELS", "AttentionEncoder", "BasicBlock", "bn_resnet", "digits_resnet",
           "mobile_net", "resnet18"]


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


def bn_resnet(*, seed: int = 0, classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """A residual CNN with BatchNorm, max pooling and dropout, for ``in_channels`` x 32 x 32
    inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, classes))


def digits_resnet(*, seed: int = 0) -> nn.Sequential:
    """``bn_resnet`` for the 8 x 8 digits, upsampled to 32 x 32 inside the model (bilinear, as
    ``actpack.data.digits_cnn``)."""
    return nn.Sequential(nn.Upsample(size=(32, 32), mode="bilinear", align_corners=False),
                         *bn_resnet(seed=seed, in_channels=1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet's block: expand, depthwise, squeeze-excite, project, add."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
                                       nn.BatchNorm2d(h), nn.Hardswish())
        self.se = SqueezeExcite(h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


def mobile_net(*, seed: int = 0, classes: int = 10) -> nn.Sequential:
    """Depthwise convolutions with BatchNorm, SiLU/Hardswish/ReLU6 and squeeze-excitation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            InvertedResidual(16), InvertedResidual(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, classes))


class Attention(nn.Module):
    """Multi-head self-attention with explicit (N, heads, L, L) scores and probabilities, as
    T5-style and most hand-written attention computes them (no fused kernel); ``causal``
    masks the future (a language model's)."""

    def __init__(self, d: int, heads: int, *, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = (self.qkv(x).view(n, length, 3, self.heads, d // self.heads)
                   .permute(2, 0, 3, 1, 4))
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        if self.causal:
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        return self.out((p @ v).transpose(1, 2).reshape(n, length, d))


class TransformerBlock(nn.Module):
    """Pre-norm: ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))`` (GELU, dropout)."""

    def __init__(self, d: int, heads: int, *, causal: bool = False):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, heads, causal=causal)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class AttentionEncoder(nn.Module):
    """A pre-norm transformer over tokens: embedding, attention, LayerNorm, GELU MLP with
    dropout, residual sums, a token head; ``causal`` makes it a language model (each position
    sees only the ones before it)."""

    def __init__(self, *, vocab: int = 50, d: int = 64, heads: int = 4, layers: int = 2,
                 seed: int = 0, causal: bool = False, length: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, d)
            # learned positions (a causal model needs them to know where it is)
            self.position = nn.Parameter(0.02 * torch.randn(length, d)) if length else None
            self.blocks = nn.ModuleList(TransformerBlock(d, heads, causal=causal)
                                        for _ in range(layers))
            self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        if self.position is not None:
            x = x + self.position[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _tokens(n: int = 8, length: int = 64, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(1))


GRADIENT_MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "bn_resnet": lambda: (bn_resnet(), _images()),
    "mobile_net": lambda: (mobile_net(), _images()),
    "attention": lambda: (AttentionEncoder(), _tokens()),
}
"""name -> a function giving a fresh model (seeded) and an input batch (seeded)."""
