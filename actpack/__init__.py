"""actpack: train neural networks in less memory by compressing the activations autograd saves.

Public API::

    import actpack
    codec = actpack.Codec(mode="dct", table="optH")
    frame = codec.compress(activation)        # bytes(frame) is the wire/storage form
    restored = codec.decompress(frame)        # same shape, dtype and device

    with actpack.offload(device="ref", policy="auto") as session:   # any nn.Module, no changes
        loss = loss_fn(model(x), y)
        loss.backward()
    session.report()                          # per-layer raw vs stored bytes, modes, peak

    plan = actpack.plan(model, x, budget_bytes=16 << 20)   # keep / compress / recompute per tensor
    with actpack.offload(plan=plan):                        # to fit a step's peak in the budget
        loss_fn(model(x), y).backward()

The names above are imported on first use (PEP 562), so ``import actpack.hw.regs`` or
``import actpack.codec.spec`` does not import torch or the host driver: the simulator's card
server, the gateware and the codec's reference model import without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from actpack.errors import FrameError

if TYPE_CHECKING:
    from actpack.codec import Codec, Frame, decompress
    from actpack.host import (
        AdaptivePolicy,
        BudgetError,
        CompileWarning,
        DeviceUnavailableError,
        OffloadError,
        OffloadSession,
        Plan,
        Policy,
        Rule,
        SavedInfo,
        SavedTensorModifiedError,
        UnknownDeviceError,
        UnpackMismatchError,
        gradient_check,
        offload,
        open_device,
        plan,
    )

__all__ = [
    "AdaptivePolicy",
    "BudgetError",
    "Codec",
    "CompileWarning",
    "DeviceUnavailableError",
    "Frame",
    "FrameError",
    "OffloadError",
    "OffloadSession",
    "Plan",
    "Policy",
    "Rule",
    "SavedInfo",
    "SavedTensorModifiedError",
    "UnknownDeviceError",
    "UnpackMismatchError",
    "decompress",
    "gradient_check",
    "offload",
    "open_device",
    "plan",
]
__version__ = "0.1.0"

# Where each lazily imported public name lives (the test of import cycles reads this table).
_LAZY = {
    **dict.fromkeys(["Codec", "Frame", "decompress"], "actpack.codec"),
    **dict.fromkeys(["AdaptivePolicy", "BudgetError", "CompileWarning",
                     "DeviceUnavailableError", "OffloadError", "OffloadSession", "Plan",
                     "Policy", "Rule", "SavedInfo", "SavedTensorModifiedError",
                     "UnknownDeviceError", "UnpackMismatchError", "gradient_check", "offload",
                     "open_device", "plan"],
                    "actpack.host"),
}
# Subpackages reachable as attributes after a bare ``import actpack`` (as when the root imported
# codec and host eagerly).
_SUBPACKAGES = frozenset({"bench", "boards", "codec", "host", "hw", "sim"})


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"actpack.{name}")
    else:
        raise AttributeError(f"module 'actpack' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
