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
"""

from actpack.codec import Codec, Frame, decompress
from actpack.errors import FrameError
from actpack.host import (
    CompileWarning,
    DeviceUnavailableError,
    OffloadError,
    OffloadSession,
    Policy,
    Rule,
    SavedInfo,
    SavedTensorModifiedError,
    UnknownDeviceError,
    UnpackMismatchError,
    offload,
    open_device,
)

__all__ = [
    "Codec",
    "CompileWarning",
    "DeviceUnavailableError",
    "Frame",
    "FrameError",
    "OffloadError",
    "OffloadSession",
    "Policy",
    "Rule",
    "SavedInfo",
    "SavedTensorModifiedError",
    "UnknownDeviceError",
    "UnpackMismatchError",
    "decompress",
    "offload",
    "open_device",
]
__version__ = "0.1.0"
