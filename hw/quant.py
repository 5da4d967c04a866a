"""Quantization and dequantization of DCT coefficient rows by a run-time loadable 64-entry table,
bit-exact with ``actpack.codec.reference.quantize`` and ``dequantize``.

The table is indexed row-major like ``actpack.codec.tables`` (entry ``8 * v + u`` for vertical
frequency ``v``, horizontal frequency ``u``) and written through a ``TableWrite`` port one entry
per cycle. Each block's row ``v`` is quantized by table row ``v``; the row index is the number of
rows transferred on ``i`` since reset, modulo 8 (streams carry whole blocks).
"""

from amaranth.hdl import Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.tables import resolve_table

from .dct import COEF, ORDERS, CoefRow, N, block_order
from .dsp import DSP_WIDTH
from .sfpr import Pipeline

__all__ = [
    "ENTRY",
    "LEVEL",
    "RECIP_SHIFT",
    "Dequantizer",
    "LevelRow",
    "Quantizer",
    "TableWrite",
    "forward_table",
    "reciprocal",
]

ENTRY = unsigned(8)  # table entries are 1..255
# Quantized levels as the entropy decoder can deliver them: a code of WIDTH_MAX bits is
# u = 2 (|v| - 1) + sign, so |v| <= 2**(WIDTH_MAX - 1); the reference dequantizes any of them.
_LEVEL_MAX = 1 << (spec.WIDTH_MAX - 1)
LEVEL = Shape.cast(range(-_LEVEL_MAX, _LEVEL_MAX + 1))  # signed(16)
LevelRow = data.ArrayLayout(LEVEL, N)

# Truncating division |y| // Q as (|y| * ceil(2**RECIP_SHIFT / Q)) >> RECIP_SHIFT. Exact for every
# |y| <= 2048 (all 12-bit coefficients) and Q in 1..255 (checked exhaustively in
# tests/hw/test_quant.py); 19 is the smallest exact shift, 20 keeps one bit of margin.
RECIP_SHIFT = 20
RECIP = unsigned(RECIP_SHIFT + 1)  # ceil(2**20 / 1) = 2**20 needs 21 bits


def reciprocal(q: int) -> int:
    """The multiplier the Quantizer stores for table entry ``q`` (0 for the invalid entry 0)."""
    return -(-(1 << RECIP_SHIFT) // q) if q else 0


class TableWrite(wiring.Signature):
    """Write port of a 64-entry table: ``data`` is written to entry ``addr`` (row-major
    ``8 * v + u``) in each cycle ``en`` is high. Writes take effect from the next cycle."""

    def __init__(self):
        super().__init__({"addr": Out(range(N * N)), "data": Out(ENTRY), "en": Out(1)})


def forward_table(m: Module, src, dst) -> None:
    """Drive table write port ``dst`` from ``src`` (an engine's port fanned out to its lanes)."""
    m.d.comb += [getattr(dst, key).eq(getattr(src, key)) for key in ("addr", "data", "en")]


def _table_rows(m: Module, port, entries, shape, row, transform=None, order=ORDERS["raster"]):
    """Eight lane memories (lane ``u`` holds entries ``order[8 * v + u]`` at address ``v``: the
    entries of the values a block's row ``v`` carries in lane ``u``); returns their words at row
    ``row`` (asynchronous read). ``transform`` maps an 8-bit entry to the stored word, in
    hardware through a 256-word ROM in block RAM, read synchronously: such an entry is written
    two cycles after the port's write (the read, then a register). ``port`` addresses entries
    row-major whatever the order."""
    word, en = port.data, port.en
    slot = Signal(range(N * N))  # where entry port.addr lives: lane slot % 8, address slot // 8
    if order == ORDERS["raster"]:
        m.d.comb += slot.eq(port.addr)
    else:
        with m.Switch(port.addr):
            for k, p in enumerate(order):
                with m.Case(p):
                    m.d.comb += slot.eq(k)
    if transform is not None:
        # read asynchronously the ROM is ~300 LUT4s of logic; its clock-to-out (~4 ns) is
        # registered before the lane memories' write
        rom = Memory(shape=shape, depth=1 << ENTRY.width,
                     init=[transform(q) for q in range(1 << ENTRY.width)])
        m.submodules.rom = rom
        rom_rd = rom.read_port()
        m.d.comb += rom_rd.addr.eq(port.data)
        word = Signal(shape, name="rom_word")
        m.d.sync += word.eq(rom_rd.data)
        for k in range(2):
            slot_k, en_k = Signal.like(slot, name=f"slot_{k}"), Signal(name=f"wr_en_{k}")
            m.d.sync += [slot_k.eq(slot), en_k.eq(en)]
            slot, en = slot_k, en_k
    words = []
    for u in range(N):
        init = [int(entries[order[N * v + u]]) for v in range(N)]
        if transform is not None:
            init = [transform(q) for q in init]
        lane = Memory(shape=shape, depth=N, init=init)
        m.submodules[f"lane{u}"] = lane
        wr = lane.write_port()
        rd = lane.read_port(domain="comb")
        m.d.comb += [
            wr.addr.eq(slot // N),
            wr.data.eq(word),
            wr.en.eq(en & (slot % N == u)),
            rd.addr.eq(row),
        ]
        words.append(rd.data)
    return words


def _initial_table(table):
    _, _, entries = resolve_table(table)  # raises ValueError/TypeError naming ``table``
    return [int(q) for q in entries]


class Quantizer(wiring.Component):
    """Quantize coefficient rows: ``sign(y) * (|y| // Q)`` (truncation toward zero), bit-exact
    with ``reference.quantize``.

    Input ``i``: rows of 8 coefficients (``CoefRow``, signed 12-bit, the order ``DCT2D`` emits:
    rows v = 0..7, lanes u = 0..7; with ``order="zigzag"`` the scan rows of
    ``DCT2D(order="zigzag")``, each value divided by its own position's entry). Output ``o``:
    the quantized rows in the same order and shape (|level| <= 2048). Table: ``table_wr``
    (``TableWrite``, row-major addresses in either order); after configuration it holds
    ``table`` (a reset does not reload it). Write it only while no block is in flight: a row
    transferred in the cycle of a write or the two after it still sees the old entry (the
    reciprocal's ROM read and its register come first).

    The division is a multiply by the stored reciprocal ``ceil(2**20 / Q)`` and a shift by 20,
    exact for all inputs (see ``RECIP_SHIFT``).

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 5 cycles (``|y|`` and the
    row's reciprocals; the multiplier's operands again, beside it, and the AND-OR part; the
    product; their sum shifted; the sign: a few LUT levels, one carry chain or the MULT18X18D
    alone each, for 150 MHz on ECP5). Backpressure: all stages stall together
    while ``o.valid & ~o.ready``; ``i.ready = ~o.valid | o.ready`` (combinational from
    ``o.ready``, never the reverse). Bad input: a table entry of 0 (invalid) quantizes every
    value of its position to 0.
    """

    i: In(stream.Signature(CoefRow))
    o: Out(stream.Signature(CoefRow))
    table_wr: In(TableWrite())

    LATENCY = 5

    def __init__(self, *, table="optH", order="raster"):
        self._init = _initial_table(table)
        self._order = block_order(order)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        p = Pipeline(m, i, o, stages=self.LATENCY)
        row = Signal(range(N))
        with m.If(i.valid & i.ready):
            m.d.sync += row.eq(row + 1)
        recips = _table_rows(m, self.table_wr, self._init, RECIP, row, transform=reciprocal,
                             order=self._order)
        for u in range(N):
            y = i.payload[u]
            neg = p.delay(y < 0, f"neg_{u}", self.LATENCY - 1)
            mag = p.reg(abs(y), f"mag_{u}")
            recip = p.reg(recips[u], f"recip_{u}")
            # Every stored word is reciprocal(Q): above bit 17 at most one bit is set (2**20 for
            # Q = 1, 2**19 for Q = 2, 2**18 for some Q >= 3), so that part of the product is a
            # shifted copy of |y| (an AND-OR, no adder) and one MULT18X18D takes the rest.
            # The MULT18X18D's operands get registers of their own (``Pipeline.product``: the
            # DSP's input registers on ECP5): its ports are ~2 ns of routing from the fabric,
            # and with the AND-OR also loading ``mag``/``recip`` the path was the engine's
            # slowest.
            lo = p.product(recip[:DSP_WIDTH], mag, f"lo_{u}")
            hi = 0
            for b in range(DSP_WIDTH, RECIP.width):
                hi = hi | Mux(recip[b], mag << (b - DSP_WIDTH), 0)
            hi = p.delay(hi, f"hi_{u}", 2)
            quo = p.reg(((lo + (hi << DSP_WIDTH)) >> RECIP_SHIFT)[:COEF.width], f"quo_{u}")
            with m.If(p.en):
                m.d.sync += o.payload[u].eq(Mux(neg, -quo, quo))
        return m


class Dequantizer(wiring.Component):
    """Dequantize level rows: ``sign(q) * (((2|q| + 1) * Q) >> 1)`` saturated to
    +-``spec.DCT_COEF_MAX`` (midpoint reconstruction), bit-exact with ``reference.dequantize``.

    Input ``i``: rows of 8 levels (``LevelRow``, signed 16-bit: every level a coded block can
    carry, |q| <= 2**14, and any other 16-bit value), rows v = 0..7, lanes u = 0..7 (with
    ``order="zigzag"`` the decoder's scan rows). Output ``o``: rows of 8 coefficients
    (``CoefRow``, signed 12-bit, within +-2047) in the same order, ready for ``IDCT2D`` (of the
    same ``order``). Table: ``table_wr`` as ``Quantizer``.

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 4 cycles (``2|q| + 1``
    and the row's steps; the product, one MULT18X18D; saturation; the sign: a few LUT levels or
    one carry chain each, for 150 MHz on ECP5). Backpressure: as ``Quantizer``. Bad input: a
    table entry of 0 dequantizes to 0; levels beyond the coefficient range saturate, as in the
    reference.
    """

    i: In(stream.Signature(LevelRow))
    o: Out(stream.Signature(CoefRow))
    table_wr: In(TableWrite())

    LATENCY = 4

    def __init__(self, *, table="optH", order="raster"):
        self._init = _initial_table(table)
        self._order = block_order(order)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        p = Pipeline(m, i, o, stages=self.LATENCY)
        row = Signal(range(N))
        with m.If(i.valid & i.ready):
            m.d.sync += row.eq(row + 1)
        steps = _table_rows(m, self.table_wr, self._init, ENTRY, row, order=self._order)
        cmax = spec.DCT_COEF_MAX
        mag_max = 1 << (LEVEL.width - 1)  # every value the port carries, not only valid levels
        rec_max = (2 * mag_max + 1) * ((1 << ENTRY.width) - 1)
        for u in range(N):
            q = i.payload[u]
            neg = p.delay(q < 0, f"neg_{u}", self.LATENCY - 1)
            zero = p.delay(q == 0, f"zero_{u}", self.LATENCY - 1)
            odd = (abs(q) << 1) + 1  # 2|q| + 1 <= 2**16 + 1: 17 bits
            # (2|q| + 1) Q: operands and product registered (the MULT18X18D's own on ECP5)
            prod = p.product(odd[:17], steps[u], f"rec_{u}")
            rec2 = Signal(range(rec_max + 1), name=f"rec2_{u}")
            m.d.comb += rec2.eq(prod >> 1)
            sat = p.reg(Mux(rec2 > cmax, cmax, rec2), f"sat_{u}")
            with m.If(p.en):
                m.d.sync += o.payload[u].eq(Mux(zero, 0, Mux(neg, -sat, sat)))
        return m
