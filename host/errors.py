"""Named errors and warnings of the offload driver.

Corrupted frames raise ``actpack.FrameError`` (from ``actpack.errors``) with the layer named; the
classes here cover what is specific to offloading.
"""

from __future__ import annotations

__all__ = [
    "CompileWarning",
    "DeviceUnavailableError",
    "OffloadError",
    "SavedTensorModifiedError",
    "UnknownDeviceError",
    "UnpackMismatchError",
]


class OffloadError(RuntimeError):
    """Something went wrong storing or restoring a saved tensor; the message names the layer."""


class UnknownDeviceError(OffloadError, ValueError):
    """``device=`` names no device actpack knows. The message lists the known ones."""


class DeviceUnavailableError(OffloadError):
    """``device=`` names a device that is planned or registered but cannot be used here."""


class UnpackMismatchError(OffloadError):
    """A restored tensor's shape, dtype or device differs from the tensor that was saved.

    Only a faulty device (or a frame swapped for another) produces this; the gradient would be
    wrong, so backward stops instead.
    """


class SavedTensorModifiedError(OffloadError):
    """A saved tensor was modified in place before actpack had stored it (or, for a tensor kept
    as it is, before backward read it).

    Plain autograd raises for the same program ("one of the variables needed for gradient
    computation has been modified by an inplace operation"); autograd skips that check when
    ``saved_tensors_hooks`` are active, so actpack makes it. Fix the model: clone the tensor
    before the in-place operation, or use the out-of-place operation.
    """


class CompileWarning(UserWarning):
    """Saved tensors come from a ``torch.compile`` region.

    They still go through actpack and gradients stay right, but the compiled graph hides which op
    produced each tensor and which module ran it: policies see them as op "input" of the
    compiled module, so "auto" stores every large float tensor with its value setting and never
    as a ReLU mask. Compile the model without actpack, or run actpack on an eager model, to get
    the per-op policy.
    """
