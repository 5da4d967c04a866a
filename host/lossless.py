"""Exact, cheap storage for the integer and boolean tensors autograd saves.

Max pooling saves its argmax indices as int64 (8 bytes for a position within a plane of a few
thousand values), dropout saves a bool mask (a byte for a bit). The codec does not take them
(they are not activations to approximate), but they are a large share of a CNN's saved bytes:
on the digits CNN, 3 MiB of 10.8 MiB. ``Lossless`` stores them exactly and fast:

- integers: offset by their minimum and narrowed to the smallest of uint8, int16, int32 that
  holds ``max - min`` (pool indices within a 32 x 32 plane: int16; within 16 x 16: uint8);
  int64 data that needs all 64 bits stays as it is;
- bool: packed 8 to a byte, LSB first (``torch`` ops only, so CUDA tensors stay on the GPU);
- max pooling's indices, given the pool's geometry (``Window``): each index as its position
  within its own window (``kernel`` values: 2 bits for 2 x 2, 4 for 3 x 3, 8 up to 16 x 16),
  packed LSB first; kept in this form only if it restores every index exactly (checked at
  compress time), otherwise narrowed as above. On the digits CNN: 2 MiB of int64 -> 64 KiB
  instead of 512 KiB of int16.

Restoring gives the original dtype, shape and values, bit for bit. Both directions are a few
elementwise torch ops: no Python loop over elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LOSSLESS", "Lossless", "Packed", "Window", "lossless_takes"]

_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# Narrow forms by the span they hold; int16/int32 store (t - min) which is >= 0, so their sign
# bit is spare, and uint16/uint32 would gain one bit at the cost of torch's partial support.
_NARROW = ((1 << 8, torch.uint8), (1 << 15, torch.int16), (1 << 31, torch.int32))


def lossless_takes(dtype: torch.dtype) -> bool:
    """Whether ``Lossless`` stores tensors of this dtype (bool and integer dtypes)."""
    return dtype == torch.bool or dtype in _INTEGER


@dataclass(frozen=True)
class Window:
    """A 2-D max pooling's geometry (``nn.MaxPool2d``'s, each a (height, width) pair): which
    input positions each output's window covers."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool = False

    @classmethod
    def of(cls, module) -> Window | None:
        """The geometry of an ``nn.MaxPool2d`` (None for anything else)."""
        if not isinstance(module, torch.nn.MaxPool2d):
            return None
        pair = torch.nn.modules.utils._pair
        return cls(pair(module.kernel_size), pair(module.stride or module.kernel_size),
                   pair(module.padding), pair(module.dilation), bool(module.ceil_mode))

    def widths(self, out_width: int) -> range:
        """The input widths that give ``out_width`` outputs (floor or ceil mode)."""
        k, s, p, d = self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]
        low = (out_width - 1) * s + d * (k - 1) + 1 - 2 * p
        return range(max(1, low - (s if self.ceil_mode else 0)), low + s)


@dataclass(frozen=True)
class Packed:
    """A tensor stored by ``Lossless``: ``data`` (narrowed or bit-packed), the offset added
    back on restore, and the original dtype and shape. ``nbytes`` is what it holds."""

    data: torch.Tensor
    offset: int
    dtype: torch.dtype
    shape: torch.Size
    # window codes: the pool's geometry, the input width and the bits per code
    window: tuple[Window, int, int] | None = None

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class Lossless:
    """The exact storage of integer and bool tensors (see the module docstring).
    ``compress``/``decompress`` mirror ``actpack.Codec``'s so a store can hold either."""

    mode = "lossless"

    def compress(self, t: torch.Tensor, *, window: Window | None = None) -> Packed:
        """``t`` (bool or integer dtype, any shape, any strides) as a ``Packed``; ``window``:
        ``t`` may be the indices of a max pooling of that geometry (tried, kept if exact)."""
        if not lossless_takes(t.dtype):
            raise TypeError(f"tensor: Lossless stores bool and integer tensors, got {t.dtype}")
        if window is not None and t.dim() in (3, 4) and t.dtype == torch.int64 and t.numel():
            packed = _window_codes(t, window)
            if packed is not None:
                return packed
        flat = t.reshape(-1)
        if t.dtype == torch.bool:
            return Packed(_pack_bits(flat.to(torch.uint8), 1), 0, t.dtype, t.shape)
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
        if packed.window is not None:
            return _window_indices(data, packed)
        if packed.dtype == torch.bool:
            return _unpack_bits(data, 1, n).to(torch.bool).reshape(packed.shape)
        out = data.to(packed.dtype)
        if packed.offset:
            out += packed.offset
        return out.reshape(packed.shape)

    def __repr__(self) -> str:
        return "Lossless()"


def _pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` (uint8, 1-D, each below ``2**bits``; ``bits`` divides 8) packed ``8 // bits``
    to a byte, LSB first (the last byte zero-padded)."""
    per = 8 // bits
    flat = torch.nn.functional.pad(codes, (0, -codes.numel() % per)).view(-1, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (flat << shifts).sum(1, dtype=torch.uint8)


def _unpack_bits(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes (uint8, 1-D) ``_pack_bits(codes, bits)`` packed into ``data``."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)
    return ((data.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]


def _bases(window: Window, shape, width: int, device) -> torch.Tensor:
    """Each output's window's first input position (row-major within a plane of ``width``
    columns), an (H, W) int64 plane broadcast over the planes."""
    ho, wo = shape[-2], shape[-1]
    rows = torch.arange(ho, device=device).view(ho, 1) * window.stride[0] - window.padding[0]
    cols = torch.arange(wo, device=device).view(1, wo) * window.stride[1] - window.padding[1]
    return rows * width + cols


def _offsets(window: Window, width: int) -> list[int]:
    """The window's cells as offsets from its first position, in code order (row-major)."""
    (k0, k1), (d0, d1) = window.kernel, window.dilation
    return [i * d0 * width + j * d1 for i in range(k0) for j in range(k1)]


# Planes handled at once: the int64 temporaries of a chunk stay a few hundred KiB, so packing
# and restoring add little to a step's peak (the whole tensor at once held several 2 MiB ones).
_CHUNK = 1 << 16
_NO_CODE = 255  # a lookup entry no cell has


def _chunks(planes: int, plane: int):
    step = max(1, _CHUNK // max(1, plane))
    return ((i, min(i + step, planes)) for i in range(0, planes, step))


def _window_codes(t: torch.Tensor, window: Window) -> Packed | None:
    """``t`` (max pooling's int64 indices) as window positions packed ``bits`` to a code, for
    the first input width whose window cells hold every index; None if none does.

    No integer division (slow on CPUs): an index's offset from its window's first position is
    looked up in a table from offset to code (``_NO_CODE`` where no cell is). An offset in the
    table's range with a code is exactly that cell's offset, so the codes restore every index
    by construction (cells at distinct offsets: a width narrower than the window is skipped)."""
    cells = window.kernel[0] * window.kernel[1]
    bits = next((b for b in (1, 2, 4, 8) if cells <= 1 << b), None)
    if bits is None:
        return None
    ho, wo = t.shape[-2], t.shape[-1]
    planes = t.reshape(-1, ho, wo)
    codes = torch.empty(planes.shape, dtype=torch.uint8, device=t.device)
    for width in window.widths(wo):
        offsets = _offsets(window, width)
        if len(set(offsets)) < cells:
            continue
        table = torch.full((max(offsets) + 1,), _NO_CODE, dtype=torch.uint8, device=t.device)
        table[offsets] = torch.arange(cells, dtype=torch.uint8, device=t.device)
        base = _bases(window, t.shape, width, t.device)
        for a, b in _chunks(len(planes), ho * wo):
            off = planes[a:b] - base
            inside = bool(((off >= 0) & (off < len(table))).all())
            got = table[off.clamp_(0, len(table) - 1)] if inside else None
            if got is None or bool((got == _NO_CODE).any()):
                break
            codes[a:b] = got
        else:
            return Packed(_pack_bits(codes.reshape(-1), bits), 0, t.dtype, t.shape,
                          (window, width, bits))
    return None


def _window_indices(data: torch.Tensor, packed: Packed) -> torch.Tensor:
    """The indices ``_window_codes`` packed: each code's cell offset plus its window's first
    position (a table lookup and an add, in chunks of ``_chunks``)."""
    window, width, bits = packed.window
    ho, wo = packed.shape[-2], packed.shape[-1]
    codes = _unpack_bits(data, bits, packed.shape.numel()).view(-1, ho, wo)
    table = torch.tensor(_offsets(window, width), dtype=torch.int64, device=data.device)
    base = _bases(window, packed.shape, width, data.device)
    out = torch.empty(codes.shape, dtype=torch.int64, device=data.device)
    for a, b in _chunks(len(codes), ho * wo):
        torch.add(table[codes[a:b].to(torch.int64)], base, out=out[a:b])
    return out.view(packed.shape)


#: The one instance policies hand out.
LOSSLESS = Lossless()
