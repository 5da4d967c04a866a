"""Real activations for codec tests: a small CNN trained briefly on scikit-learn's digits.

The digits data set (1,797 8x8 grey images, 10 classes) ships inside the scikit-learn wheel, so
this works offline. ``digits_activations()`` trains the network for a few SGD steps (deterministic
for a given seed) and returns the outputs of its conv, ReLU, pool and linear layers on one batch,
captured with forward hooks: the tensors autograd would save during training.

    acts = digits_activations(batch=16, steps=40)
    acts["conv1"].shape  # torch.Size([16, 8, 8, 8])
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "accuracy",
    "capture",
    "digits_activations",
    "load_digits_tensors",
    "train",
    "training_losses",
]


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (1797, 1, 8, 8) float32 standardized, labels (1797,) int64)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(np.asarray(data.images, dtype=np.float32)).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    return x, torch.from_numpy(np.asarray(data.target, dtype=np.int64))


class DigitsCNN(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2 -> linear -> ReLU -> linear (10)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 16, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def train(model: nn.Module, *, steps: int, batch: int = 64, lr: float = 0.1,
          seed: int = 0) -> list[float]:
    """A few steps of SGD with momentum on random batches of digits; returns the losses."""
    x, y = load_digits_tensors()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


CAPTURED_TYPES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Linear)


def capture(model: nn.Module, x: torch.Tensor, types=CAPTURED_TYPES) -> dict[str, torch.Tensor]:
    """Outputs of every submodule of one of ``types`` on input ``x``, by module name, in
    forward order (forward hooks; the tensors are detached copies)."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, types):
            def hook(_module, _inputs, output, name=name):
                out[name] = output.detach().clone()

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


@functools.lru_cache(maxsize=4)
def _trained(steps: int, seed: int, width: int) -> tuple[DigitsCNN, tuple[float, ...]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(width)
    losses = train(model, steps=steps, seed=seed)
    return model.eval(), tuple(losses)


def digits_activations(*, batch: int = 16, steps: int = 40, seed: int = 0,
                       width: int = 8) -> dict[str, torch.Tensor]:
    """Activations of a DigitsCNN trained ``steps`` steps, on the first ``batch`` digits
    (float32; callers cast to other dtypes). Cached per arguments; do not modify the tensors."""
    model, _ = _trained(steps, seed, width)
    x, _ = load_digits_tensors()
    return capture(model, x[:batch])


def training_losses(*, steps: int = 40, seed: int = 0, width: int = 8) -> tuple[float, ...]:
    """The SGD losses of the cached trained model."""
    return _trained(steps, seed, width)[1]


def accuracy(*, steps: int = 40, seed: int = 0, width: int = 8) -> float:
    """Accuracy of the cached trained model on all 1,797 digits."""
    model, _ = _trained(steps, seed, width)
    x, y = load_digits_tensors()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
