"""Exact, cheap storage for the integer and boolean tensors autograd saves.

Max pooling saves its argmax indices as int64 (8 bytes for a position within a plane of a few
thousand values), dropout saves a bool mask (a byte for a bit). The codec does not take them
(they are not activations to approximate), but they are a large share of a CNN's saved bytes:
on the digits CNN, 3 MiB of 10.8 MiB. ``Lossless`` stores them exactly and fast:

- integers: offset by their minimum and narrowed to the smallest of uint8, int16, int32 that
  holds ``max - min`` (pool indices within a 32 x 32 plane: int16; within 16 x 16: uint8);
  int64 data that needs all 64 bits stays as it is;
- bool: packed 8 to a byte, LSB first (``torch`` ops only, so CUDA tensors stay on the GPU).

Restoring gives the original dtype, shape and values, bit for bit. Both directions are a few
elementwise torch ops: no Python loop over elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LOSSLESS", "Lossless", "Packed", "lossless_takes"]

_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# Narrow forms by the span they hold; int16/int32 store (t - min) which is >= 0, so their sign
# bit is spare, and uint16/uint32 would gain one bit at the cost of torch's partial support.
_NARROW = ((1 << 8, torch.uint8), (1 << 15, torch.int16), (1 << 31, torch.int32))


def lossless_takes(dtype: torch.dtype) -> bool:
    """Whether ``Lossless`` stores tensors of this dtype (bool and integer dtypes)."""
    return dtype == torch.bool or dtype in _INTEGER


@dataclass(frozen=True)
class Packed:
    """A tensor stored by ``Lossless``: ``data`` (narrowed or bit-packed), the offset added
    back on restore, and the original dtype and shape. ``nbytes`` is what it holds."""

    data: torch.Tensor
    offset: int
    dtype: torch.dtype
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class Lossless:
    """The exact storage of integer and bool tensors (see the module docstring).
    ``compress``/``decompress`` mirror ``actpack.Codec``'s so a store can hold either."""

    mode = "lossless"

    def compress(self, t: torch.Tensor) -> Packed:
        """``t`` (bool or integer dtype, any shape, any strides) as a ``Packed``."""
        if not lossless_takes(t.dtype):
            raise TypeError(f"tensor: Lossless stores bool and integer tensors, got {t.dtype}")
        flat = t.reshape(-1)
        if t.dtype == torch.bool:
            pad = (-flat.numel()) % 8
            bits = torch.nn.functional.pad(flat.to(torch.uint8), (0, pad)).view(-1, 8)
            data = (bits << _shifts(t.device)).sum(1, dtype=torch.uint8)
            return Packed(data, 0, t.dtype, t.shape)
        if flat.numel() == 0:
            return Packed(flat.clone(), 0, t.dtype, t.shape)
        lo, hi = (int(v) for v in torch.aminmax(flat))
        for span, narrow in _NARROW:
            if hi - lo < span and narrow.itemsize < t.element_size():
                return Packed((flat - lo).to(narrow), lo, t.dtype, t.shape)
        return Packed(flat.clone(), 0, t.dtype, t.shape)

    def decompress(self, packed: Packed, *, device: torch.device | None = None) -> torch.Tensor:
        """The tensor ``compress`` was given (contiguous), on ``device`` (default: where the
        packed data is)."""
        data = packed.data if device is None else packed.data.to(device)
        n = packed.shape.numel()
        if packed.dtype == torch.bool:
            bits = (data.unsqueeze(1) >> _shifts(data.device)) & 1
            return bits.reshape(-1)[:n].to(torch.bool).reshape(packed.shape)
        out = data.to(packed.dtype)
        if packed.offset:
            out += packed.offset
        return out.reshape(packed.shape)

    def __repr__(self) -> str:
        return "Lossless()"


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


#: The one instance policies hand out.
LOSSLESS = Lossless()
