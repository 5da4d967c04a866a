"""Small models and helpers shared by the offload tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

import actpack


def seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def conv_relu_conv(seed: int = 0) -> nn.Sequential:
    """Conv -> ReLU -> Conv: the ReLU output is also the second conv's input."""
    return seeded(seed, lambda: nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 4, 3, padding=1)),
    ])))


def conv_relu_pool(seed: int = 0) -> nn.Sequential:
    """Conv -> ReLU -> MaxPool -> Linear: the ReLU output is also the pool's input."""
    return seeded(seed, lambda: nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(8 * 16 * 16, 10)),
    ])))


class ReluOnlyMask(nn.Module):
    """Conv -> ReLU whose output no other op saves (``+ 1`` and ``* 2`` save nothing)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu1(self.conv1(x)) * 2 + 1)


def relu_only_mask(seed: int = 0) -> ReluOnlyMask:
    return seeded(seed, ReluOnlyMask)


def batch(seed: int = 0, n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def grads(model: nn.Module, x: torch.Tensor, session=None) -> dict[str, torch.Tensor]:
    """Parameter gradients of ``(model(x) ** 2).mean()``, inside ``session`` when given."""
    model.zero_grad(set_to_none=True)
    if session is None:
        (model(x) ** 2).mean().backward()
    else:
        with session:
            (model(x) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def modes(session: actpack.OffloadSession) -> dict[str, str]:
    """Stored mode per layer (activations only)."""
    return {t.label: t.mode for t in session.stats.activations}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
