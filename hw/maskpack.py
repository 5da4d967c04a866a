"""Mask mode's value stages (docs/format.md 6.5), bit-exact with ``actpack.codec.reference``.

``MaskEncoder``: symbol 1 where ``x > 0`` as a float32 comparison (``reference._symbols``: NaN,
±0.0 and negative values give 0, +inf gives 1), decided on the raw bits of any codec dtype.
``MaskDecoder``: symbol 1 -> 1.0, 0 -> +0.0, as bit patterns of the dtype (``reference
._reconstruct`` then ``from_float32``).

A row of symbols (``MaskRow``, element ``k`` at bit ``k``) has the bits of the row's byte of the
coded block's 64-bit little-endian mask (raster position ``8 * row + col`` is mask bit
``8 * row + col``, format 8.1).
"""

import numpy as np
from amaranth.hdl import Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import reference, spec
from actpack.codec.spec import DType

from .sfpr import float_format, raw_row

__all__ = ["MaskDecoder", "MaskEncoder", "MaskRow", "mask_model", "one_bits"]

N = spec.BLOCK
MaskRow = data.ArrayLayout(1, N)


def one_bits(dtype: DType) -> int:
    """The bit pattern of 1.0 in ``dtype`` (what a decoded symbol 1 becomes)."""
    return int(reference.from_float32(np.float32(1.0), dtype))


def mask_model(bits, dtype: DType) -> np.ndarray:
    """``x > 0`` from raw bits: sign clear, not ±0, not NaN (infinity is positive)."""
    fmt = float_format(dtype)
    b = np.asarray(bits).astype(np.int64)
    mag = b & ((1 << (fmt.width - 1)) - 1)
    nan = mag > (fmt.exp_max << fmt.frac_bits)
    return ((b >> (fmt.width - 1)) == 0) & (mag != 0) & ~nan


class _RowMap(wiring.Component):
    """A one-cycle, lane-by-lane map of rows of ``dtype`` values: ``o.payload[k] =
    lane(i.payload[k])``, registered; ``i.ready = ~o.valid | o.ready``."""

    LATENCY = 1

    def __init__(self, *, dtype):
        self.dtype = DType.parse(dtype)
        layout_in, layout_out = self.layouts(self.dtype)
        super().__init__({
            "i": In(stream.Signature(layout_in)),
            "o": Out(stream.Signature(layout_out)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.ready):
            m.d.sync += o.valid.eq(i.valid)
            for u in range(N):
                m.d.sync += o.payload[u].eq(self.lane(i.payload[u]))
        return m


class MaskEncoder(_RowMap):
    """Mask symbols of 8 raw values per row: ``1 if x > 0 else 0``.

    Input ``i``: ``raw_row(dtype)``. Output ``o``: ``MaskRow`` (symbol of column ``k`` at bit
    ``k``). Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 1 cycle.
    Backpressure: ``o`` is a register; ``i.ready = ~o.valid | o.ready``. Bad input: none (every
    bit pattern has its symbol; NaN gives 0, as the reference's comparison does).
    """

    @staticmethod
    def layouts(dtype):
        return raw_row(dtype), MaskRow

    def lane(self, x):
        fmt = float_format(self.dtype)
        mag = x[:fmt.width - 1]
        # a magnitude above infinity's pattern is a NaN
        return ~x[fmt.width - 1] & (mag != 0) & (mag <= fmt.exp_max << fmt.frac_bits)


class MaskDecoder(_RowMap):
    """Decoded mask values: symbol 1 -> 1.0, 0 -> +0.0, as bit patterns of ``dtype``.

    Input ``i``: ``MaskRow``. Output ``o``: ``raw_row(dtype)``. Throughput: 8 values per cycle,
    no bubbles. Latency: ``LATENCY`` = 1 cycle. Backpressure: as ``MaskEncoder``. Bad input:
    none.
    """

    @staticmethod
    def layouts(dtype):
        return MaskRow, raw_row(dtype)

    def lane(self, symbol):
        return Mux(symbol, one_bits(self.dtype), 0)
