"""Named errors and warnings of the offload driver.

Corrupted frames raise ``actpack.FrameError`` (from ``actpack.errors``) with the layer named; the
classes here cover what is specific to offloading.
"""

from __future__ import annotations

from actpack.errors import Check, FrameError

__all__ = [
    "CardCapabilityError",
    "CardError",
    "CardFrameError",
    "CardMismatchError",
    "CardProtocolError",
    "CardTimeoutError",
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


class CardError(OffloadError):
    """The card (or its transport) failed a job. ``actpack.host.FallbackDevice`` catches these
    and redoes the job on the reference codec."""


class CardMismatchError(CardError, DeviceUnavailableError):
    """What answers at the device path is not a card this driver can use: wrong MAGIC (no
    card, a foreign bitstream, or a dead link reading all ones), or a VERSION of the frame
    format, register map or job protocol other than the driver's. Load a matching bitstream or
    install the matching actpack."""


class CardTimeoutError(CardError, TimeoutError):
    """The card did not answer within the timeout (a job, a register handshake, a DMA
    transfer). The driver soft-resets the card before its next job; counters stay readable."""


class CardProtocolError(CardError):
    """The card rejected a job (its status record names the code) or sent bytes that are not a
    frame or status record."""


class CardFrameError(CardError, FrameError):
    """A frame failed its checks on the card's side of the link: the frame the card produced
    does not parse (CRC mismatch, bad fields), or the card found the frame given to it corrupted.
    Also a ``FrameError``, so callers that handle corrupted frames handle this one; its
    ``check`` is ``None`` where the card answered ``BAD_FRAME``, which names no check."""

    def __init__(self, message: str, *, check: Check | None, block: int | None = None):
        # RuntimeError's __init__ comes first in the MRO and would drop check and block
        FrameError.__init__(self, message, check=check, block=block)


class CardCapabilityError(CardError):
    """The card cannot run this job: mode or dtype not in its CAPS, or a frame larger than its
    frame buffer. The reference codec can."""


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
