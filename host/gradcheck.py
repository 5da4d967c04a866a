"""How far offload moves one step's gradients from plain autograd's: the measurement that shows
what lossy storage costs (the loss and even accuracy on an easy task do not).

    check = actpack.host.gradient_check(model, x, policy="auto")
    print(check.min_cosine, check.worst, check.rel_l2, check.ratio)

The step runs twice from the same random state (dropout draws the same masks): once plainly,
once inside ``actpack.offload``; the model's parameters, buffers and gradients are as they were
before the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .losses import mean_square_loss
from .offload import offload
from .stats import Stats

__all__ = ["GradientCheck", "gradient_check", "mean_square_loss"]

# Gradients whose norm is below this fraction of the largest one are "about 0": their cosine
# says nothing (a BatchNorm bias in front of a softmax-invariant shift, a dead unit).
NEGLIGIBLE = 1e-6


@dataclass(frozen=True)
class GradientCheck:
    """Per-parameter cosine between the offloaded step's gradient and plain autograd's
    (``cosines``; parameters with a negligible or no gradient are left out), the smallest and
    its parameter, the relative L2 error of all gradients together, and the offloaded step's
    ``Stats`` (saved bytes, their peaks)."""

    cosines: dict[str, float]
    min_cosine: float
    worst: str
    rel_l2: float
    stats: Stats

    @property
    def raw_bytes(self) -> int:
        return self.stats.raw_bytes

    @property
    def stored_bytes(self) -> int:
        return self.stats.stored_bytes

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(1, self.stored_bytes)


def _step(model: nn.Module, inputs, loss_fn, seed: int, session=None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if session is None:
            loss_fn(model(inputs)).backward()
        else:
            with session:
                loss_fn(model(inputs)).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def gradient_check(model: nn.Module, inputs, *, policy="auto", device="ref",
                   loss_fn: Callable[[object], torch.Tensor] | None = None, seed: int = 0,
                   workers: int = 0, plan=None) -> GradientCheck:
    """One step of ``model(inputs)`` with and without ``actpack.offload(policy=, device=)``
    (``loss_fn(output)``, default the mean square of the output), compared per parameter.
    ``plan``: an ``actpack.plan`` result to run instead of ``policy``."""
    loss_fn = loss_fn or mean_square_loss
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    try:
        ref = _step(model, inputs, loss_fn, seed)
        model.load_state_dict(state)
        session = offload(policy=policy, device=device, workers=workers, plan=plan)
        got = _step(model, inputs, loss_fn, seed, session)
    finally:
        model.load_state_dict(state)
        for n, p in model.named_parameters():
            p.grad = grads[n]
    largest = max((float(g.norm()) for g in ref.values()), default=0.0)
    cosines: dict[str, float] = {}
    err = total = 0.0
    for name, r in ref.items():
        g = got.get(name, torch.zeros_like(r))
        r64, g64 = r.double().flatten(), g.double().flatten()
        err += float((g64 - r64).square().sum())
        total += float(r64.square().sum())
        norm = float(r64.norm())
        if norm <= NEGLIGIBLE * largest:
            continue
        cosines[name] = float(torch.dot(r64, g64) / (norm * float(g64.norm()) or math.inf))
    worst = min(cosines, key=cosines.get, default="")
    return GradientCheck(cosines, cosines.get(worst, 1.0), worst,
                         math.sqrt(err / total) if total else 0.0, session.stats)
