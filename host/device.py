"""Where saved tensors are compressed and restored: the ``device=`` seam of ``actpack.offload``.

A ``Device`` turns a tensor into an ``actpack.Frame`` with a given ``Codec`` setting and back. Only
``"ref"`` exists today: the software codec (``actpack.Codec``, torch backend; CPU kernels that
release the GIL, or CUDA). The card's drivers plug in here under their own names:

- ``"sim"``: the gateware under simulation, behind the card's register map and framing;
- ``"xdma"``: a PCIe card through the Xilinx XDMA character devices.

Both are built on the register-level transport of the design (``reg_read``/``reg_write``,
``submit``/``receive``) and must give the same frames as ``"ref"``, byte for byte. A new device
registers a factory with ``register_device(name, factory)``; ``offload(device=...)`` also takes
a ``Device`` object directly (tests use this to inject faults).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from actpack.codec import Codec, Frame

from .errors import DeviceUnavailableError, UnknownDeviceError

__all__ = ["PLANNED_DEVICES", "Device", "RefDevice", "device_names", "register_device",
           "resolve_device"]


@runtime_checkable
class Device(Protocol):
    """The contract a device meets. Both calls may run in worker threads, several at once."""

    name: str

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        """Compress ``tensor`` (detached; float32/float16/bfloat16; any strides) as ``codec``
        says; the frame's bytes must be what ``codec.compress(tensor)`` gives."""
        ...

    def decompress(self, frame: Frame, *, device: torch.device) -> torch.Tensor:
        """Restore a frame to a tensor on ``device``; raise ``actpack.FrameError`` for a frame
        that fails its checks."""
        ...


class RefDevice:
    """The software codec (``actpack.Codec`` with the torch backend): the reference and default.

    CPU tensors use the compiled kernels, CUDA tensors the torch path on the GPU; frames live in
    host memory either way, so offloading from a GPU also frees its memory.
    """

    name = "ref"

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        return codec.compress(tensor)

    def decompress(self, frame: Frame, *, device: torch.device) -> torch.Tensor:
        from actpack.codec import decompress

        return decompress(frame, device=device)

    def __repr__(self) -> str:
        return "RefDevice()"


# Names reserved for the card's drivers; what each will be, for the error message.
PLANNED_DEVICES = {
    "sim": "the compression gateware under simulation, behind the card's register map",
    "xdma": "a PCIe card through the Xilinx XDMA driver (/dev/xdma0_*)",
}
_FACTORIES: dict[str, Callable[[], Device]] = {"ref": RefDevice}


def register_device(name: str, factory: Callable[[], Device]) -> None:
    """Make ``offload(device=name)`` build its device with ``factory()``. For the card's
    drivers; registering an existing name replaces it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: expected an identifier-like string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    _FACTORIES[name] = factory


def device_names() -> tuple[str, ...]:
    """The names ``offload(device=...)`` accepts now."""
    return tuple(sorted(_FACTORIES))


def resolve_device(device) -> Device:
    """``device=`` as a ``Device``: a registered name or an object with compress/decompress."""
    if isinstance(device, str):
        factory = _FACTORIES.get(device)
        if factory is not None:
            return factory()
        known = ", ".join(repr(n) for n in device_names())
        if device in PLANNED_DEVICES:
            raise DeviceUnavailableError(
                f"device {device!r} ({PLANNED_DEVICES[device]}) is not built yet; the devices "
                f"available are {known} (use device='ref' for the bit-exact software codec)")
        raise UnknownDeviceError(f"device: unknown device {device!r}; expected one of {known} "
                                 "or a Device object")
    if isinstance(device, Device):
        return device
    raise TypeError(f"device: expected a device name or an object with compress() and "
                    f"decompress(), got {type(device).__name__}")
