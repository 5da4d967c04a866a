"""Real activations for benchmarks, demos and tests: a small CNN trained on scikit-learn's digits.

The digits (1,797 8x8 images) ship inside the scikit-learn wheel, so this works offline. The model
upsamples them to 32x32 first, so its conv activations are 32x32 and 16x16 planes with 16 and 32
channels: small, but the shapes real conv layers produce. Everything is seeded and deterministic.

    model = digits_cnn(seed=0)
    result = train_digits(model, steps=300, seed=0)          # tqdm progress bar on a TTY
    acts = capture_activations(model, digits_batch(64).x)    # {"conv1": Tensor, "relu1": ...}
    kinds = layer_kinds(model)                               # {"conv1": "conv", "relu1": ...}
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = [
    "KINDS",
    "TEXT_MODULES",
    "Digits",
    "Text",
    "TrainResult",
    "capture_activations",
    "digits_batch",
    "digits_cnn",
    "evaluate",
    "layer_kinds",
    "load_digits",
    "python_text",
    "train_digits",
]

# Layer kinds of captured activations. "relu_conv" (a ReLU fed by a conv) is the case JPEG-ACT's
# 8.5x figure is about; "conv" is the pre-activation conv output.
KINDS = ("conv", "relu_conv", "linear", "relu_linear")
_SPLIT_SEED = 1234  # the train/test split is fixed, independent of the training seed


@dataclass(frozen=True)
class Digits:
    """The digits as tensors: ``x`` (N, 1, 8, 8) float32, standardized; ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def load_digits() -> tuple[Digits, Digits]:
    """The digits split 80/20 into (train, test), the same split every call."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = torch.from_numpy(np.asarray(data.images, dtype=np.float32)).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.38  # roughly zero mean, unit variance (pixel statistics of the set)
    y = torch.from_numpy(np.asarray(data.target, dtype=np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train]), Digits(x[test], y[test])


def digits_batch(n: int = 64) -> Digits:
    """The first ``n`` test images: the fixed input activations are captured on."""
    _, test = load_digits()
    if not 1 <= n <= len(test):
        raise ValueError(f"n: must be in 1..{len(test)}, got {n}")
    return Digits(test.x[:n], test.y[:n])


def digits_cnn(*, seed: int = 0, size: int = 32) -> nn.Sequential:
    """A small CNN for 8x8 digits upsampled to ``size`` x ``size`` (bilinear, inside the model).

    conv1 (1->16, 3x3) -> relu1 -> pool1 -> conv2 (16->32, 3x3) -> relu2 -> pool2 -> fc1 (->128)
    -> relu3 -> fc2 (->10). At batch 64 and size 32 the conv/ReLU activations are 4.2 MB (conv1,
    relu1: 64x16x32x32) and 2.1 MB (conv2, relu2: 64x32x16x16) of float32.
    """
    if size % 4 or size < 8:
        raise ValueError(f"size: must be a multiple of 4 and >= 8, got {size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict([
            ("up", nn.Upsample(size=(size, size), mode="bilinear", align_corners=False)),
            ("conv1", nn.Conv2d(1, 16, 3, padding=1)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(32 * (size // 4) ** 2, 128)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(128, 10)),
        ]))


@dataclass
class TrainResult:
    """What ``train_digits`` did: the loss of every step and the accuracies at the end."""

    steps: int
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # forward + backward + update
    train_accuracy: float = float("nan")
    test_accuracy: float = float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, data: Digits, *, batch: int = 256) -> float:
    """Classification accuracy of ``model`` on ``data`` (0..1)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        correct += int((model(data.x[i:i + batch]).argmax(1) == data.y[i:i + batch]).sum())
    model.train(was_training)
    return correct / len(data)


def train_digits(model: nn.Module, steps: int, seed: int = 0, *, batch: int = 64,
                 lr: float = 2e-3, lr_decay: bool = False, session=None,
                 progress: bool | None = None, desc: str = "train digits") -> TrainResult:
    """Train ``model`` on the digits for ``steps`` Adam steps of ``batch`` images (reshuffled each
    epoch by a generator seeded with ``seed``). ``progress=None`` shows a tqdm bar on a TTY only.
    ``lr_decay`` decays the rate linearly to 0 (two runs that differ only in float rounding then
    end close together instead of wherever the last batches push them); ``session`` (an
    ``actpack.offload`` session) is entered around every forward and backward.
    Returns the per-step losses and times and the final train/test accuracy."""
    if steps < 0:
        raise ValueError(f"steps: must be >= 0, got {steps}")
    train, test = load_digits()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / max(steps, 1))
             if lr_decay else None)
    loss_fn = nn.CrossEntropyLoss()
    ctx = session if session is not None else contextlib.nullcontext()
    result = TrainResult(steps=steps)
    model.train()
    order, pos = torch.randperm(len(train), generator=gen), 0
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False,
               disable=None if progress is None else not progress)
    for _ in bar:
        if pos + batch > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = loss_fn(model(train.x[idx]), train.y[idx])
            loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        result.step_seconds.append(time.perf_counter() - t0)
        result.losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}", refresh=False)
    bar.close()
    result.train_accuracy = evaluate(model, train)
    result.test_accuracy = evaluate(model, test)
    return result


# Real text that ships with every Python: the standard library's own source (no download).
TEXT_MODULES = ("argparse.py", "difflib.py", "textwrap.py", "fractions.py", "heapq.py",
                "shlex.py", "configparser.py", "pprint.py")


@dataclass(frozen=True)
class Text:
    """Bytes of text as a token stream (vocabulary 256), split 90/10 into train and validation
    (the last tenth)."""

    train: torch.Tensor  # (n,) int64
    val: torch.Tensor

    def batch(self, n: int, length: int, gen: torch.Generator, *, split: str = "train"):
        """``n`` random windows: (inputs, next-token targets), each (n, length) int64."""
        data = self.train if split == "train" else self.val
        start = torch.randint(0, len(data) - length - 1, (n,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)[None]
        w = data[idx]
        return w[:, :-1], w[:, 1:]


def python_text(modules=TEXT_MODULES) -> Text:
    """The standard library's ``modules`` (file names under its directory), concatenated."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    raw = b"\n".join((root / name).read_bytes() for name in modules)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    cut = len(data) * 9 // 10
    return Text(data[:cut], data[cut:])


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind (see ``KINDS``) of every layer ``capture_activations`` hooks, by module name.

    A ReLU's kind follows the last conv or linear layer before it in module order.
    """
    kinds, last = {}, None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            kinds[name] = last = "conv"
        elif isinstance(mod, nn.Linear):
            kinds[name] = last = "linear"
        elif isinstance(mod, nn.ReLU):
            kinds[name] = "relu_linear" if last == "linear" else "relu_conv"
    return kinds


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` once and return the outputs of its conv, ReLU and linear layers, by module
    name, in forward order (forward hooks; removed again before returning)."""
    kinds = layer_kinds(model)
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def save(_module, _inputs, output):
            acts[name] = output.detach().clone()
        return save

    for name, mod in model.named_modules():
        if name in kinds:
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return acts
