"""The ``Device`` contract of ``actpack.offload`` and the reference device, ``RefDevice``.

Here rather than in ``device`` (which opens devices by name) so that the card's driver
(``card``), which is a ``Device`` and falls back on ``RefDevice``, and ``device``, which opens
the card, depend one way: ``device`` -> ``card`` -> ``refdevice``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from actpack.codec import Codec, Frame

__all__ = ["Device", "RefDevice"]


@runtime_checkable
class Device(Protocol):
    """The contract a device meets. Both calls may run in worker threads, several at once."""

    name: str

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        """Compress ``tensor`` (detached; float32/float16/bfloat16; any strides) as ``codec``
        says; the frame's bytes must be what ``codec.compress(tensor)`` gives."""
        ...

    def decompress(self, frame: Frame, *, device: torch.device | None = None) -> torch.Tensor:
        """Restore a frame to a tensor on ``device`` (default: the frame's device, CPU for plain
        bytes); raise ``actpack.FrameError`` for a frame that fails its checks."""
        ...


class RefDevice:
    """The software codec (``actpack.Codec`` with the torch backend): the reference and default.

    CPU tensors use the compiled kernels, CUDA tensors the torch path on the GPU; frames live in
    host memory either way, so offloading from a GPU also frees its memory.
    """

    name = "ref"

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        return codec.compress(tensor)

    def decompress(self, frame: Frame, *, device: torch.device | None = None) -> torch.Tensor:
        from actpack.codec import decompress

        return decompress(frame, device=device)

    def __repr__(self) -> str:
        return "RefDevice()"
