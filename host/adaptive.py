"""``policy="adaptive"``: per saved tensor, the cheapest setting whose measured effect on the
gradients stays small against the minibatch gradient's own noise (the idea of COMET's adaptive
error bounds and AC-GC, measured rather than bounded).

    policy = actpack.AdaptivePolicy(every=200)
    for step, (x, y) in enumerate(batches):
        policy.step(model, x, y, loss_fn=F.cross_entropy)    # calibrates every 200th call
        with actpack.offload(policy=policy):
            F.cross_entropy(model(x), y).backward()
        opt.step()

Until its first calibration, and for a tensor it has not seen (another shape, another layer),
it stores what ``base`` (``Policy.auto()``) stores. Masks, integer tensors, kept tensors and
the inputs ``torch.utils.checkpoint`` recomputes from are ``base``'s always: they are exact.
So are softmax outputs (``policy.is_probabilities``): one step's gradients do not show what
their error costs over training (``Policy.auto``'s rule 4), so calibration does not choose
for them.

**Calibration** (``calibrate``; its cost, in passes over the model: 3 forward, 3 + T x L
backward, T the lossy tensors of a step and L the ladder's lossy settings):

1. *Noise*: the parameter gradients of the two halves of the batch, ``g_a`` and ``g_b``; per
   parameter ``p`` the variance of the whole batch's gradient is estimated as
   ``sigma2[p] = ||g_a[p] - g_b[p]||^2 / 4`` (each half's gradient has twice the variance of
   the whole batch's, and their difference four times).
2. *Reference*: one forward of the whole batch with every saved tensor kept exactly; the
   gradients ``g`` of one backward over the retained graph.
3. *Error per tensor and setting*: for every saved tensor ``i`` that ``base`` stores lossily
   and every setting ``s`` of ``ladder``, one more backward over the same graph with that
   tensor alone restored from its ``s`` frame (made and decoded by the session's own path):
   ``e[i, s][p] = ||g_s[p] - g[p]||^2``.
4. *Choice*: every tensor starts at its cheapest setting; while some parameter's summed error
   ``sum_i e[i, s_i][p]`` exceeds ``noise_fraction * sigma2[p]``, the tensor that contributes
   most to the worst such parameter moves one step up the ladder, past its last lossy setting
   to "keep". Errors of different tensors are taken to add (they are independent roundings).

With ``noise_fraction`` 0.03 (``NOISE_FRACTION``) the lossy storage adds at most 3 % to the
variance that SGD already sees in each parameter's gradient. Tensors are matched across steps
by (layer, module type, op, producer node, shape without the batch dimension, dtype, context);
two tensors with the same key get the more precise of their choices. ``session.report()`` shows
each tensor's measured share of its worst parameter's budget ("grad err", 1.0 = the whole
budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from actpack.codec import Codec

from .losses import mean_square_loss
from .lossless import Lossless
from .offload import OffloadSession
from .policy import Policy, SavedInfo, is_probabilities, parse_setting, register_policy

__all__ = ["LADDER", "NOISE_FRACTION", "AdaptivePolicy", "Calibration"]

# Cheapest first. After sfpr8 (8 bits relative to each group's largest value) two absolute
# bounds, sized for activations of unit scale (after a BatchNorm or LayerNorm): without them a
# tensor sfpr8 is too coarse for went straight to "keep" (the digits ResNet's ReLU outputs that
# feed its residual blocks: 1.5 MiB of its 2.5 MiB, 7.1x; with them 11.5x at the same accuracy,
# docs/offload.md). A bound too loose for a tensor's scale fails its measurement like any rung;
# one tighter than needed only costs bytes.
LADDER = ("dct:optH", "dct:optL", "sfpr8:3.96875", "eb:0.004", "eb:0.001")

# The default share of each parameter's minibatch gradient variance the stored tensors may add.
# 0.1 until 2026-12-07 cost bench train's BatchNorm ResNet 1.1 points of test accuracy (12.9x,
# 3 seeds); 0.03, measured (one torch thread, 3 seeds, 300 steps, median): digits ResNet 98.05 %
# against 97.77 % plain at 11.0x, digits CNN 97.21 % against 96.66 % at 23.1x.
NOISE_FRACTION = 0.03


def _key(info: SavedInfo) -> tuple:
    return (info.layer, info.module_type, info.op, info.grad_fn, tuple(info.shape[1:]),
            info.dtype, info.context)


@dataclass(frozen=True)
class Choice:
    """What calibration chose for tensors like one it measured: ``setting`` (a ladder entry or
    "keep"), its ``codec`` (None for keep), and ``share``: its error on its worst parameter as a
    fraction of that parameter's budget."""

    setting: str
    codec: Codec | None
    share: float


@dataclass(frozen=True)
class Calibration:
    """One calibration's result: per measured tensor (by layer and op), the chosen setting and
    its budget share; the tensors measured and the backward passes it took."""

    choices: tuple[tuple[str, str, str, float], ...]  # (layer, op, setting, share)
    tensors: int
    backward_passes: int

    def table(self) -> str:
        width = max((len(c[0]) for c in self.choices), default=5)
        lines = [f"{'layer':<{width}}  {'op':<10}  {'setting':<14}  grad err"]
        lines += [f"{layer:<{width}}  {op:<10}  {setting:<14}  {share:8.3f}"
                  for layer, op, setting, share in self.choices]
        return "\n".join(lines) + "\n"


def _halves(batch):
    """The two halves of a batch along dimension 0 (tensors, or tuples/lists of them)."""
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0] // 2
        return batch[:n], batch[n:2 * n]
    if isinstance(batch, (tuple, list)):
        parts = [_halves(b) for b in batch]
        return type(batch)(p[0] for p in parts), type(batch)(p[1] for p in parts)
    if batch is None:
        return None, None
    raise TypeError(f"batch: expected a tensor or a tuple of tensors, got {type(batch).__name__}")


def _batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 0
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    return 0


def _call(model, inputs):
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


class AdaptivePolicy(Policy):
    """A policy whose lossy settings come from measured gradient error (module docstring).

    ``ladder``: the lossy settings tried, cheapest first ("keep" follows the last);
    ``noise_fraction``: the share of each parameter's minibatch gradient variance the stored
    tensors may add; ``every``: ``step`` calibrates on its first call and every ``every``-th;
    ``base``: the policy for what calibration has not measured (default ``Policy.auto()``).
    """

    def __init__(self, *, ladder: Sequence[str] = LADDER, noise_fraction: float = NOISE_FRACTION,
                 every: int = 500, base: Policy | None = None):
        if not ladder:
            raise ValueError("ladder: expected at least one lossy setting")
        codecs = [parse_setting(s) for s in ladder]
        if any(c is None or c.mode == "mask" for c in codecs):
            raise ValueError(f"ladder: expected lossy codec settings (no 'keep' or 'mask'), got "
                             f"{list(ladder)!r}")
        if not (isinstance(noise_fraction, (int, float)) and noise_fraction > 0):
            raise ValueError(f"noise_fraction: expected a number > 0, got {noise_fraction!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected an integer >= 1, got {every!r}")
        base = base if base is not None else Policy.auto()
        super().__init__(base.rules, default=base.default or "keep", min_bytes=base.min_bytes,
                         integers="keep" if base.integers is None else "lossless")
        self.ladder = tuple(zip(ladder, codecs, strict=True))
        self.noise_fraction = float(noise_fraction)
        self.every = every
        self.choices: dict[tuple, Choice] = {}
        self.last: Calibration | None = None
        self._calls = 0

    def __repr__(self) -> str:
        return (f"AdaptivePolicy(ladder={[s for s, _ in self.ladder]!r}, noise_fraction="
                f"{self.noise_fraction}, every={self.every}, calibrated={self.last is not None})")

    @staticmethod
    def _chooses(info: SavedInfo, base) -> bool:
        """Whether calibration chooses for tensors like ``info``: ``base`` (their setting in
        ``base``) is lossy, not a mask, and they are not softmax outputs (module docstring)."""
        return isinstance(base, Codec) and base.mode != "mask" and not is_probabilities(info)

    def _lossy(self, info: SavedInfo) -> bool:
        return self._chooses(info, super().__call__(info))

    def __call__(self, info: SavedInfo) -> Codec | Lossless | None:
        base = super().__call__(info)
        if not self._chooses(info, base):
            return base
        choice = self.choices.get(_key(info))
        return base if choice is None else choice.codec

    def measured(self, info: SavedInfo) -> float | None:
        """The budget share calibration measured for tensors like this one (None: not measured)."""
        choice = self.choices.get(_key(info))
        return None if choice is None else choice.share

    def step(self, model: nn.Module, inputs, targets=None, *,
             loss_fn: Callable | None = None, device="ref") -> Calibration | None:
        """Count a training step; calibrate on the first and every ``every``-th (returns the
        ``Calibration`` then, else None)."""
        self._calls += 1
        if (self._calls - 1) % self.every:
            return None
        return self.calibrate(model, inputs, targets, loss_fn=loss_fn, device=device)

    def calibrate(self, model: nn.Module, inputs, targets=None, *,
                  loss_fn: Callable | None = None, device="ref", seed: int = 0) -> Calibration:
        """Measure and choose (module docstring). ``inputs`` (a tensor or a tuple of positional
        arguments) and ``targets`` are split along dimension 0 for the noise estimate, so the
        batch needs at least 2 samples; ``loss_fn(output, targets)`` is the training loss
        (default: the mean square of the output). The model's parameters, buffers and
        gradients are as they were afterwards."""
        if _batch_size(inputs) < 2:
            raise ValueError("inputs: calibration splits the batch in two for the gradient "
                             "noise; expected a batch of at least 2 along dimension 0")
        loss_fn = loss_fn or (lambda output, _targets: mean_square_loss(output))
        params = [p for p in model.parameters() if p.requires_grad]
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def grads(loss, retain=False) -> list[torch.Tensor]:
            gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g.detach() for p, g in
                    zip(params, gs, strict=True)]

        def loss_of(x, y):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return loss_fn(_call(model, x), y)

        try:
            (xa, xb), (ya, yb) = _halves(inputs), _halves(targets)
            ga, gb = grads(loss_of(xa, ya)), grads(loss_of(xb, yb))
            model.load_state_dict(state)
            sigma2 = torch.stack([(a - b).double().square().sum() / 4
                                  for a, b in zip(ga, gb, strict=True)])
            budget = self.noise_fraction * sigma2

            session = OffloadSession(policy="keep", device=device, workers=0,
                                     max_pending_bytes=None)
            with session:
                loss = loss_of(inputs, targets)
            ref = grads(loss, retain=True)
            measured = session._lossy_records(self._lossy)
            errors: list[list[torch.Tensor]] = []
            for rec in measured:
                row = []
                for _, codec in self.ladder:
                    with session._substituted(rec, codec):
                        g = grads(loss, retain=True)
                    row.append(torch.stack([(a - b).double().square().sum()
                                            for a, b in zip(g, ref, strict=True)]))
                errors.append(row)
            del loss
            level = self._choose(errors, budget)
        finally:
            model.load_state_dict(state)

        chosen: dict[tuple, Choice] = {}
        rows = []
        for rec, row, lv in zip(measured, errors, level, strict=True):
            err = row[lv] if lv < len(self.ladder) else torch.zeros_like(budget)
            share = float((err / budget.clamp_min(1e-300)).max()) if len(err) else 0.0
            setting, codec = self.ladder[lv] if lv < len(self.ladder) else ("keep", None)
            key = _key(rec.info)
            old = chosen.get(key)
            if old is None or _rank(self.ladder, old.setting) < lv:
                chosen[key] = Choice(setting, codec, share)
            rows.append((rec.info.layer or f"<{rec.info.module_type}>", rec.info.op, setting,
                         share))
        self.choices = chosen
        self.last = Calibration(tuple(rows), len(measured), 3 + len(measured) * len(self.ladder))
        return self.last

    def _choose(self, errors: list[list[torch.Tensor]], budget: torch.Tensor) -> list[int]:
        """Ladder level per tensor (len(ladder) = keep): step 4 of the module docstring."""
        top = len(self.ladder)
        level = [0] * len(errors)
        if not errors:
            return level

        def err(i):
            return errors[i][level[i]] if level[i] < top else torch.zeros_like(budget)

        while True:
            excess = sum(err(i) for i in range(len(errors))) - budget
            movable = [i for i in range(len(errors)) if level[i] < top]
            if not movable or not bool((excess > 0).any()):
                return level
            worst = int(torch.argmax(excess / budget.clamp_min(1e-300)))
            level[max(movable, key=lambda i: float(err(i)[worst]))] += 1


def _rank(ladder, setting: str) -> int:
    names = [s for s, _ in ladder]
    return names.index(setting) if setting in names else len(names)


register_policy("adaptive", AdaptivePolicy)
