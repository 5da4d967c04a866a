"""Forward and inverse 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.dct2``/``idct2``.

Both transforms are separable integer matrix products with the same structure::

    row pass     t[r] = round_shift(A @ x[r], shift_1)                  one input row a cycle
    transpose    8 x 8 buffer of t, two banks (ping-pong)
    column pass  y[k] = clamp(round_shift(sum_r B[k, r] t[r], shift_2))  one output row a cycle

with ``round_shift(x, s) = (x + 2**(s - 1)) >> s`` (round half up, arithmetic shift). For the
forward DCT ``A = B = K`` (``tables.DCT_MATRIX``): ``t = p @ K.T`` then ``Y = K @ t``. For the
inverse ``A = B = K.T``: ``t = y @ K`` then ``p = K.T @ t``, clamped to +-``spec.SFPR_MAX``.

Every intermediate width is derived from the matrix and the input shape at elaboration time
(worst case over all inputs the port can carry), so no value ever wraps.
"""

import numpy as np
from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.tables import DCT_MATRIX

__all__ = ["COEF", "DCT2D", "IDCT2D", "PIXEL", "CoefRow", "PixelRow"]

N = spec.BLOCK  # 8 values per row, 8 rows per block

# Pixels are the SFPR int8 values (+-127 by construction; -128 is accepted and transformed too).
PIXEL = Shape.cast(range(-spec.SFPR_MAX, spec.SFPR_MAX + 1))  # signed(8)
# Coefficients: 12-bit signed, the decoder's saturation range +-DCT_COEF_MAX.
COEF = Shape.cast(range(-spec.DCT_COEF_MAX, spec.DCT_COEF_MAX + 1))  # signed(12)

PixelRow = data.ArrayLayout(PIXEL, N)
CoefRow = data.ArrayLayout(COEF, N)


def _shape_range(shape: Shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def _matvec_range(matrix: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Range of ``sum_i matrix[j, i] * x_i`` over all ``x_i`` in [lo, hi] and all ``j``."""
    m = np.asarray(matrix, dtype=object)
    los = [sum(min(c * lo, c * hi) for c in row) for row in m]
    his = [sum(max(c * lo, c * hi) for c in row) for row in m]
    return min(los), max(his)


def _round_shift_range(lo: int, hi: int, s: int) -> tuple[int, int]:
    h = 1 << (s - 1)
    return (lo + h) >> s, (hi + h) >> s


def _fit(lo: int, hi: int) -> Shape:
    return Shape.cast(range(lo, hi + 1))


class _Separable2D(wiring.Component):
    """Shared implementation; see ``DCT2D`` for the contract. Subclasses set the class constants
    and annotate ``i`` (rows of ``in_shape``) and ``o`` (rows of ``out_shape``)."""

    ROW_MATRIX: np.ndarray  # A: t[r, j] = sum_i A[j, i] * x[r, i]
    COL_MATRIX: np.ndarray  # B: y[k, j] = sum_r B[k, r] * t[r, j]
    SHIFT_1: int
    SHIFT_2: int
    CLAMP: int | None

    #: Cycles from a row's transfer on ``i`` to the transfer of the output row with the same index
    #: (rows back to back, ``o.ready`` high): 1 (input register) + 7 (rest of the block) + 1 (bank
    #: becomes readable) + 1 (column products) + 1 (output register).
    LATENCY = 11

    def __init__(self):
        super().__init__()
        shapes = self.intermediate_shapes()
        self._row_sum_shape, self._t_shape, self._col_sum_shape = (
            shapes["row_sum"], shapes["t"], shapes["col_sum"])
        self._a = np.asarray(self.ROW_MATRIX, dtype=np.int64)
        self._b = np.asarray(self.COL_MATRIX, dtype=np.int64)

    @classmethod
    def intermediate_shapes(cls) -> dict[str, Shape]:
        """Register shapes, sized for the worst case over every input the port can carry:
        ``row_sum`` (row pass before the shift), ``t`` (transpose buffer), ``col_sum`` (column
        pass before the shift)."""
        ports = next(k.__annotations__ for k in cls.__mro__ if "i" in vars(k).get(
            "__annotations__", {}))
        in_shape = ports["i"].signature.members["payload"].shape.elem_shape
        out_shape = ports["o"].signature.members["payload"].shape.elem_shape
        a = np.asarray(cls.ROW_MATRIX, dtype=np.int64)
        b = np.asarray(cls.COL_MATRIX, dtype=np.int64)
        if a.shape != (N, N) or b.shape != (N, N):
            raise ValueError(f"matrices must be {N}x{N}, got {a.shape} and {b.shape}")
        lo, hi = _shape_range(in_shape)
        s_lo, s_hi = _matvec_range(a, lo, hi)
        t_lo, t_hi = _round_shift_range(s_lo, s_hi, cls.SHIFT_1)
        c_lo, c_hi = _matvec_range(b, t_lo, t_hi)
        o_lo, o_hi = _round_shift_range(c_lo, c_hi, cls.SHIFT_2)
        if cls.CLAMP is not None:
            o_lo, o_hi = max(o_lo, -cls.CLAMP), min(o_hi, cls.CLAMP)
        out_lo, out_hi = _shape_range(out_shape)
        if o_lo < out_lo or o_hi > out_hi:  # a design error, not a user error
            raise AssertionError(f"output range [{o_lo}, {o_hi}] does not fit {out_shape}")
        return {"row_sum": _fit(s_lo, s_hi), "t": _fit(t_lo, t_hi), "col_sum": _fit(c_lo, c_hi)}

    def elaborate(self, platform):
        m = Module()
        a, b = self._a, self._b
        i, o = self.i, self.o

        # ---- front: input register, row pass, write into the bank being filled
        f_valid = Signal()
        f_row = Signal.like(i.payload)
        # full[k]: bank k holds a complete block of t not yet read out
        full = Signal(2)
        w_bank = Signal()
        w_row = Signal(range(N))
        r_bank = Signal()
        r_row = Signal(range(N))
        banks = [
            [[Signal(self._t_shape, name=f"t{k}_{r}_{j}") for j in range(N)] for r in range(N)]
            for k in range(2)
        ]

        can_write = ~full.bit_select(w_bank, 1)
        # Ready depends only on registers: the input register is empty or drains this cycle.
        m.d.comb += i.ready.eq(~f_valid | can_write)
        with m.If(i.ready):
            m.d.sync += [f_valid.eq(i.valid), f_row.eq(i.payload)]

        t_row = []
        for j in range(N):
            s = Signal(self._row_sum_shape, name=f"row_sum_{j}")
            m.d.comb += s.eq(sum(int(a[j, x]) * f_row[x] for x in range(N) if a[j, x]))
            t = Signal(self._t_shape, name=f"t_{j}")
            m.d.comb += t.eq((s + (1 << (self.SHIFT_1 - 1))) >> self.SHIFT_1)
            t_row.append(t)

        write = f_valid & can_write
        set_full = Signal(2)
        with m.If(write):
            with m.Switch(w_bank):
                for k in range(2):
                    with m.Case(k), m.Switch(w_row):
                        for r in range(N):
                            with m.Case(r):
                                m.d.sync += [banks[k][r][j].eq(t_row[j]) for j in range(N)]
            m.d.sync += w_row.eq(w_row + 1)
            with m.If(w_row == N - 1):
                m.d.comb += set_full.bit_select(w_bank, 1).eq(1)
                m.d.sync += w_bank.eq(~w_bank)

        # ---- back: column pass on the full bank, one output row per cycle
        advance = ~o.valid | o.ready
        readable = full.bit_select(r_bank, 1)
        clear_full = Signal(2)
        s1_valid = Signal()
        s1_sum = [Signal(self._col_sum_shape, name=f"col_sum_{j}") for j in range(N)]

        coef = [Signal(range(int(b.min()), int(b.max()) + 1), name=f"coef_{r}") for r in range(N)]
        with m.Switch(r_row):
            for k in range(N):
                with m.Case(k):
                    m.d.comb += [coef[r].eq(int(b[k, r])) for r in range(N)]
        tile = [[Mux(r_bank, banks[1][r][j], banks[0][r][j]) for j in range(N)] for r in range(N)]

        with m.If(advance):
            m.d.sync += s1_valid.eq(readable)
            for j in range(N):
                m.d.sync += s1_sum[j].eq(sum(coef[r] * tile[r][j] for r in range(N)))
            with m.If(readable):
                m.d.sync += r_row.eq(r_row + 1)
                with m.If(r_row == N - 1):
                    m.d.comb += clear_full.bit_select(r_bank, 1).eq(1)
                    m.d.sync += r_bank.eq(~r_bank)

            m.d.sync += o.valid.eq(s1_valid)
            for j in range(N):
                y = Signal(self._col_sum_shape, name=f"y_{j}")
                m.d.comb += y.eq((s1_sum[j] + (1 << (self.SHIFT_2 - 1))) >> self.SHIFT_2)
                if self.CLAMP is not None:
                    c = self.CLAMP
                    y = Mux(y > c, c, Mux(y < -c, -c, y))
                m.d.sync += o.payload[j].eq(y)

        # set and clear never hit the same bank in one cycle (set needs it empty, clear full)
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        return m


class DCT2D(_Separable2D):
    """Forward 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.dct2``.

    Input ``i``: one row of 8 pixels per transfer (``PixelRow``: signed 8-bit, +-127 in the
    codec; -128 is transformed correctly too), rows y = 0..7 of a block, blocks back to back.
    Output ``o``: one row of 8 coefficients per transfer (``CoefRow``: signed 12-bit; the forward
    transform never exceeds +-1023), coefficient rows v = 0..7 (vertical frequency), each with
    u = 0..7 (horizontal frequency) in lanes 0..7 — i.e. row-major ``reference.dct2`` order.

    Throughput: 8 values per cycle sustained (one row per cycle, no bubbles between blocks) while
    ``i`` is valid and ``o`` ready: the transpose buffer has two banks, one filling while the other
    drains.

    Latency: ``LATENCY`` = 11 cycles from a row's input transfer to the transfer of the output
    row with the same index (unstalled).

    Backpressure: ``o.valid`` and ``o.payload`` are registers and never depend on ``o.ready``.
    ``i.ready`` is a function of registers only (low while both banks hold unread blocks and the
    input register is occupied); a stalled ``o`` stops the column pass, then the bank swap, then
    ``i``. Blocks are delimited by counting rows: the stream must carry whole blocks (a reset
    re-aligns it). There is no invalid input: every 8-bit value is transformed exactly.
    """

    i: In(stream.Signature(PixelRow))
    o: Out(stream.Signature(CoefRow))

    ROW_MATRIX = DCT_MATRIX
    COL_MATRIX = DCT_MATRIX
    SHIFT_1 = spec.DCT_SHIFT_1
    SHIFT_2 = spec.DCT_SHIFT_2
    CLAMP = None


class IDCT2D(_Separable2D):
    """Inverse 8x8 2-D DCT, bit-exact with ``actpack.codec.reference.idct2``.

    Input ``i``: one row of 8 dequantized coefficients per transfer (``CoefRow``: signed 12-bit;
    the dequantizer saturates to +-2047, and -2048 is transformed correctly too), coefficient
    rows v = 0..7, each with u = 0..7 in lanes 0..7 (the order ``DCT2D`` produces).
    Output ``o``: one row of 8 pixels per transfer (``PixelRow``), rows y = 0..7 with x = 0..7 in
    lanes, clamped to +-``spec.SFPR_MAX`` (127) exactly as the reference clamps.

    Throughput, latency (``LATENCY`` = 11) and backpressure: as ``DCT2D``.
    """

    i: In(stream.Signature(CoefRow))
    o: Out(stream.Signature(PixelRow))

    ROW_MATRIX = DCT_MATRIX.T
    COL_MATRIX = DCT_MATRIX.T
    SHIFT_1 = spec.IDCT_SHIFT_1
    SHIFT_2 = spec.IDCT_SHIFT_2
    CLAMP = spec.SFPR_MAX
