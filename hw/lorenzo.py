"""The ``eb`` mode's Lorenzo predictor and its inverse (docs/format.md 6.4), bit-exact with
``actpack.codec.reference.lorenzo`` / ``unlorenzo``, one raster row of a block per cycle.

Both work within 8 x 8 blocks (values outside a block count as 0). A row's index is the number
of rows transferred on ``i`` since reset, modulo 8: streams carry whole blocks, rows 0..7.

Predictor: with the row's horizontal differences ``h[x] = q[x] - q[x-1]`` (``q[-1] = 0``),
``d[y, x] = h[y, x] - h[y-1, x]`` (``h[-1, .] = 0``), which is ``q - up - left + up_left``.
Reconstructor: column sums ``D[y, x] = D[y-1, x] + d[y, x]``, then the row's prefix sum
``q[y, x] = sum_{j <= x} D[y, j]``.
"""

from amaranth.hdl import Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec

from .quant import LEVEL, LevelRow
from .sfpr import Pipeline

__all__ = ["ACC", "COL", "DIFF", "QROW", "AccRow", "DiffRow", "LorenzoPredictor",
           "LorenzoReconstructor"]

N = spec.BLOCK

# Encoder: q = SFPR(x, s, 2**15); d sums four of them with signs.
Q = Shape.cast(range(-spec.EB_Q_SAT, spec.EB_Q_SAT + 1))  # signed(17)
DIFF = Shape.cast(range(-4 * spec.EB_Q_SAT, 4 * spec.EB_Q_SAT + 1))  # signed(19)
QROW = data.ArrayLayout(Q, N)
DiffRow = data.ArrayLayout(DIFF, N)


def _level_bounds() -> tuple[int, int]:
    return -(1 << (LEVEL.width - 1)), (1 << (LEVEL.width - 1)) - 1


# Decoder: d as the entropy decoder delivers it (``LevelRow``: coded values have |d| <= 2**14,
# the port carries any int16). Column sums of 8 and row sums of 8 of those: |D| <= 2**18,
# q in [-2**21, 2**21 - 64]: 22-bit accumulators (format 6.4), so no port value ever wraps.
_LO, _HI = _level_bounds()
COL = Shape.cast(range(N * _LO, N * _HI + 1))  # signed(20)
ACC = Shape.cast(range(N * N * _LO, N * N * _HI + 1))  # signed(22)
AccRow = data.ArrayLayout(ACC, N)


class _BlockRows(wiring.Component):
    """A row pipeline of ``LATENCY`` stages that knows each row's index inside its block (rows
    transferred since reset, modulo 8) and keeps per-lane state from row to row: subclasses give
    ``rows(m, p, row)``, which returns the value of ``o.payload`` (registered as the last
    stage); ``p`` is the pipeline (``sfpr.Pipeline``: every stage advances while ``o`` is
    empty or read), ``row`` the index of the row on ``i``."""

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        p = Pipeline(m, i, o, stages=self.LATENCY)
        row = Signal(range(N))
        with m.If(i.valid & i.ready):
            m.d.sync += row.eq(row + 1)
        value = self.rows(m, p, row)
        with m.If(p.en):
            m.d.sync += o.payload.eq(value)
        return m


class LorenzoPredictor(_BlockRows):
    """Lorenzo residuals of q rows: ``d = q - up - left + up_left`` within each 8 x 8 block.

    Input ``i``: ``QROW`` (``FloatToFixed(limit=2**15)`` values, signed 17-bit), rows 0..7 of
    each block. Output ``o``: rows of ``DIFF`` (signed 19-bit, |d| <= 2**17), same order.
    Throughput: 8 values per cycle, no bubbles between rows or blocks. Latency: ``LATENCY`` =
    2 cycles (the row's differences ``h``; then ``h`` minus the previous row's: one carry
    chain each, for 150 MHz on ECP5). Backpressure: ``o`` is a register; ``i.ready = ~o.valid |
    o.ready``. Bad input: none (every port value is predicted exactly); a stream that does not
    carry whole blocks shifts the row index of every later row.
    """

    i: In(stream.Signature(QROW))
    o: Out(stream.Signature(DiffRow))

    LATENCY = 2

    def rows(self, m, p, row):
        q = self.i.payload
        first = p.reg(row == 0, "first")
        # the row in stage 2 is a real one (not a bubble) that leaves stage 1's register now
        advance = p.en & p.valid[0]
        out = []
        for x in range(N):
            h = p.reg(q[x] - (q[x - 1] if x else 0), f"h_{x}")
            prev = Signal.like(h, name=f"h_prev_{x}")
            with m.If(advance):
                m.d.sync += prev.eq(h)
            d = Signal(DIFF, name=f"d_{x}")
            m.d.comb += d.eq(h - Mux(first, 0, prev))
            out.append(d)
        return Cat(*out)


class LorenzoReconstructor(_BlockRows):
    """The decoder's 2-D prefix sum: q rows from Lorenzo residual rows, within each block.

    Input ``i``: ``LevelRow`` (signed 16-bit residuals), rows 0..7 of each block. Output ``o``:
    rows of ``ACC`` (signed 22-bit), ready for ``FixedToFloat(width=22)``. Column sums are
    registers (one per lane, cleared by row 0); the row's prefix sum takes three stages
    (a Kogge-Stone scan over the 8 lanes: one adder level each).
    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 4 cycles (column sums,
    then the scan's three levels: one carry chain each, for 150 MHz on ECP5). Backpressure: as
    ``LorenzoPredictor``. Bad input: none: every int16 residual is summed exactly (the
    accumulators cannot wrap).
    """

    i: In(stream.Signature(LevelRow))
    o: Out(stream.Signature(AccRow))

    LATENCY = 4

    def rows(self, m, p, row):
        advance = self.i.valid & self.i.ready
        sums = []
        for x in range(N):
            col = Signal(COL, name=f"col_{x}")
            col_next = Signal(COL, name=f"col_next_{x}")
            m.d.comb += col_next.eq(Mux(row != 0, col, 0) + self.i.payload[x])
            with m.If(advance):
                m.d.sync += col.eq(col_next)
            sums.append(p.reg(col_next, f"cols_{x}"))
        # after the level of step s, lane x holds the sum of lanes x - 2 s + 1 .. x; the last
        # level is registered as the output
        for level, step in enumerate((1, 2, 4)):
            nxt = []
            for x, s in enumerate(sums):
                v = Signal(ACC, name=f"scan{level}_{x}")
                m.d.comb += v.eq(s + sums[x - step] if x >= step else s)
                nxt.append(p.reg(v, f"scan{level}_r{x}") if step < 4 else v)
            sums = nxt
        return Cat(*sums)
