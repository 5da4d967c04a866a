"""The compress engine: tiled rows of raw values in, the frame's block index and payload out,
bit-exact with ``actpack.codec.reference.compress`` (docs/format.md 6-8).

``Compressor`` chains the per-stage blocks of this package per mode:

- ``dct``: ``FloatToFixed(limit=127)`` -> ``DCT2D(order="zigzag")`` ->
  ``Quantizer(order="zigzag")`` -> ``BlockEncoder`` (the DCT's output transpose emits the
  zigzag scan rows, so no ``Zigzag`` buffer)
- ``sfpr8``: ``FloatToFixed(limit=127)`` -> ``BlockEncoder``
- ``eb``: ``FloatToFixed(limit=2**15)`` -> ``LorenzoPredictor`` -> ``BlockEncoder``, with
  ``BoundCheck`` on the same values forcing RAW; rows enter with credits for a queue in front
  of the encoder, so this chain never stalls (``_Lane._eb_chain``)
- ``mask``: ``MaskEncoder`` -> ``BlockEncoder``

and stores RAW blocks (non-finite values, failed eb bound checks, blocks no coding fits) as the
block's raw input values, kept in a row buffer until the encoder has decided. The frame header
(scale records, shape, ``payload_bytes``, CRCs) goes around these two streams in
``framebuild.FrameBuilder`` (same ``IndexEntry`` / ``CodeBeat`` layouts); the card top level
joining the two is not built yet.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.frame import Kind
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import resolve_table

from .beats import BEAT_BYTES, CodeBeat, IndexEntry
from .blockcode import BlockEncoder
from .dct import DCT2D
from .lorenzo import LorenzoPredictor
from .maskpack import MaskEncoder
from .quant import Quantizer, TableWrite, forward_table
from .sfpr import BoundCheck, FloatToFixed, ScaleLayout, raw_row
from .streams import Port, Queue, fork, join, queue_rows, room, skid, write_late

__all__ = ["LANES", "RAW_ROWS", "Compressor", "add_lanes", "engine_params", "row_layout"]

N = spec.BLOCK
LANES = (1, 2, 4)
# Rows of raw input a lane keeps for its RAW blocks: the rows in flight between the input and
# the encoder's decision (about 70 in dct mode) plus slack for output stalls; 16 blocks.
RAW_ROWS = 16 * N
_BEAT_BITS = 8 * BEAT_BYTES


def row_layout(mode, dtype) -> data.StructLayout:
    """One input row: ``x``, 8 raw values of ``dtype`` (column 0 first), and except in mask mode
    ``scale`` (``m``, ``e``: the scale of the row's block's group, as the frame's scale record
    holds it); in eb mode also ``r`` (float32 bits of the scale's inverse, the record's third
    field) and ``eb`` (binary64 bits of the error bound, the header's ``param``)."""
    mode, dtype = Mode.parse(mode), DType.parse(dtype)
    fields = {"x": raw_row(dtype)}
    if mode is not Mode.MASK:
        fields["scale"] = ScaleLayout
    if mode is Mode.EB:
        fields["r"] = unsigned(32)
        fields["eb"] = unsigned(64)
    return data.StructLayout(fields)


def engine_params(mode, dtype, table, lanes):
    """An engine's ``(mode, dtype, table, lanes)``, checked now rather than at elaboration: a bad
    value raises ``ValueError``/``TypeError`` naming the parameter."""
    mode = Mode.parse(mode)  # ValueError naming ``mode``
    dtype = DType.parse(dtype)
    if lanes not in LANES:
        raise ValueError(f"lanes: expected one of {LANES}, not {lanes!r}")
    if mode is Mode.DCT:
        resolve_table(table)  # ValueError/TypeError naming ``table``
    return mode, dtype, table, lanes


def add_lanes(m: Module, engine, lane_class) -> list:
    """``engine.lanes`` instances of ``lane_class`` as submodules ``lane0``..; in dct mode each
    lane's table port follows the engine's ``table_wr``."""
    lanes = [lane_class(mode=engine.mode, dtype=engine.dtype, table=engine.table)
             for _ in range(engine.lanes)]
    for k, lane in enumerate(lanes):
        m.submodules[f"lane{k}"] = lane
        if engine.mode is Mode.DCT:
            forward_table(m, engine.table_wr, lane.table_wr)
    return lanes


# ----------------------------------------------------------------------------- stream plumbing


def _fifo(m: Module, name: str, width: int, depth: int) -> SyncFIFOBuffered:
    fifo = SyncFIFOBuffered(width=width, depth=depth)
    m.submodules[name] = fifo
    return fifo


def _delay(m: Module, value, n: int, name: str) -> Signal:
    """``value`` through ``n`` registers without enables: beside a pipeline that advances every
    cycle, the word that entered with a row leaves with it."""
    value = Value.cast(value)
    for k in range(n):
        r = Signal(len(value), name=f"{name}_d{k}")
        m.d.sync += r.eq(value)
        value = r
    return value


def _f2x_skid(m: Module, f2x) -> Port:
    """``f2x``'s output rows through a skid register (one cycle): its ``o.ready`` is a register
    beside it, so its stall (``~o.valid | o.ready``: the enable of some 1,300 stage registers
    and DSPs, and the ``i.ready`` the input fork reads) is a LUT of two of its own registers.
    No decision downstream (the encoder's or the DCT's stall) runs through it into the input
    fork in the same cycle, and placement does not pull that LUT between the blocks (sfpr8,
    with the encoder's input skid as ``o.ready``: a 7.3 ns path of 6.6 ns routing, 136 MHz).
    Returns the stream of the rows."""
    f2x_o = Port(Signal(name="f2x_s_valid"), Signal.like(f2x.o.payload, name="f2x_s"),
                 Signal(name="f2x_s_ready"))
    f2x_can = Signal()
    m.d.comb += f2x.o.ready.eq(f2x_can)
    skid(m, f2x_o, f2x.o.payload, f2x.o.valid & f2x_can, f2x_can)
    return f2x_o


def _head(m: Module, queue, sink):
    """Drive stream ``sink`` from ``queue`` (a ``Queue``) through a register: the queue's head
    memory read reaches only that register, and ``sink.ready`` only its enable and the
    queue's pop."""
    load = ~sink.valid | sink.ready
    m.d.comb += queue.r_en.eq(load)
    with m.If(load):
        m.d.sync += [sink.valid.eq(queue.r_rdy), sink.payload.eq(queue.r_data)]


def _merge(m: Module, *, entry, beats, index, o, pick, busy, accept=1, name: str):
    """Emit blocks in order: a block's index entry from ``entry`` onto ``index``, then, unless
    ``busy(entry)`` is 0, its beats from source ``pick(entry)`` of ``beats`` onto ``o`` up to
    the one with ``last``. The next entry is taken in the cycle of the last beat (no bubble
    between blocks) and only when ``accept``. Returns the signal of an entry being taken."""
    active = Signal(name=f"{name}_active")
    cur = Signal(range(len(beats)), name=f"{name}_cur")
    o_free = ~o.valid | o.ready
    idx_free = ~index.valid | index.ready
    src_valid = Signal(name=f"{name}_src_valid")
    src_beat = Signal(CodeBeat, name=f"{name}_src_beat")
    with m.Switch(cur):
        for k, b in enumerate(beats):
            with m.Case(k):
                m.d.comb += [src_valid.eq(b.valid), src_beat.eq(b.payload)]
                m.d.comb += b.ready.eq(active & o_free)
    take_beat = active & src_valid & o_free
    idle = ~active | (take_beat & src_beat.last)
    take = Signal(name=f"{name}_take")
    m.d.comb += [
        entry.ready.eq(idle & idx_free & accept),
        take.eq(entry.valid & entry.ready),
    ]
    with m.If(take_beat):
        m.d.sync += [o.valid.eq(1), o.payload.eq(src_beat)]
    with m.Elif(o.ready):
        m.d.sync += o.valid.eq(0)
    with m.If(take):
        m.d.sync += [index.valid.eq(1), index.payload.eq(entry.payload),
                     active.eq(busy(entry.payload)), cur.eq(pick(entry.payload))]
    with m.Else():
        with m.If(index.ready):
            m.d.sync += index.valid.eq(0)
        with m.If(idle):
            m.d.sync += active.eq(0)
    return take


# ----------------------------------------------------------------------------- one lane


class _Lane(wiring.Component):
    """One block at a time through one mode's chain (see ``Compressor``), RAW blocks from the
    row buffer. Input: ``row_layout`` rows; outputs as ``Compressor``."""

    def __init__(self, *, mode: Mode, dtype: DType, table):
        self.mode, self.dtype, self.table = mode, dtype, table
        members = {
            "i": In(stream.Signature(row_layout(mode, dtype))),
            "index": Out(stream.Signature(IndexEntry)),
            "o": Out(stream.Signature(CodeBeat)),
        }
        if mode is Mode.DCT:
            members["table_wr"] = In(TableWrite())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        mode, dtype, i = self.mode, self.dtype, self.i
        m.submodules.enc = enc = BlockEncoder(mode=mode, dtype=dtype)
        x_bits = raw_row(dtype).size

        if mode is Mode.MASK:  # mask blocks are never RAW: no row buffer
            m.submodules.menc = menc = MaskEncoder(dtype=dtype)
            m.d.comb += [menc.i.valid.eq(i.valid), menc.i.payload.eq(i.payload.x),
                         i.ready.eq(menc.i.ready)]
            m.d.comb += [enc.i.valid.eq(menc.o.valid), enc.i.payload.symbols.eq(menc.o.payload),
                         menc.o.ready.eq(enc.i.ready)]
            _merge(m, entry=enc.index, beats=[enc.o], index=self.index, o=self.o,
                   pick=lambda e: 0, busy=lambda e: e.kind != Kind.ZERO, name="merge")
            return m

        limit = spec.EB_Q_SAT if mode is Mode.EB else spec.SFPR_MAX
        m.submodules.f2x = f2x = FloatToFixed(dtype=dtype, limit=limit)
        raw = _fifo(m, "raw", x_bits, RAW_ROWS)
        m.d.comb += [f2x.i.payload.x.eq(i.payload.x), f2x.i.payload.scale.eq(i.payload.scale)]
        if mode is not Mode.EB:  # eb: the row is admitted with credits (``_eb_chain``)
            m.d.comb += raw.w_data.eq(i.payload.x)
            fork(m, i, [f2x.i, Port(raw.w_en, None, raw.w_rdy)], "in")

        # the chain from q rows to the encoder's rows (symbols, force_raw)
        if mode is Mode.SFPR8:
            f2x_o = _f2x_skid(m, f2x)
            m.d.comb += [enc.i.valid.eq(f2x_o.valid), f2x_o.ready.eq(enc.i.ready),
                         enc.i.payload.symbols.eq(f2x_o.payload.q),
                         enc.i.payload.force_raw.eq(f2x_o.payload.nonfinite)]
        elif mode is Mode.DCT:
            self._dct_chain(m, f2x, enc)
        else:
            self._eb_chain(m, f2x, raw, enc, x_bits)

        # RAW rows: the merger pushes each block's decision; rows of other blocks are dropped.
        # A row and its block's decision are first registered (``rq``): the block RAM's read
        # data (4 ns clock to output) then reaches only that register, not the beat select.
        dec = _fifo(m, "dec", 1, 4)
        per_row = x_bits // _BEAT_BITS  # beats per raw row: 2 (float32) or 1 (16-bit dtypes)
        rrow = Signal(range(N))
        rsub = Signal(range(per_row))
        rq_valid, rq_keep, rq_last = Signal(), Signal(), Signal()
        rq_x = Signal(x_bits)
        rb = Port(Signal(name="rb_valid"), Signal(CodeBeat, name="rb_beat"), Signal())
        with m.If(rb.ready):
            m.d.sync += rb.valid.eq(0)
        rq_done = Signal()  # the row in ``rq`` is dropped or has sent its last beat
        with m.If(rq_valid):
            with m.If(~rq_keep):
                m.d.comb += rq_done.eq(1)
            with m.Elif(~rb.valid | rb.ready):
                m.d.sync += [
                    rb.valid.eq(1),
                    rb.payload.data.eq(rq_x.word_select(rsub, _BEAT_BITS)
                                       if per_row > 1 else rq_x),
                    rb.payload.count.eq(BEAT_BYTES),
                    rb.payload.last.eq(rq_last & (rsub == per_row - 1)),
                ]
                if per_row > 1:
                    m.d.sync += rsub.eq(Mux(rsub == per_row - 1, 0, rsub + 1))
                m.d.comb += rq_done.eq(rsub == per_row - 1)
        pop = Signal()
        m.d.comb += pop.eq(dec.r_rdy & raw.r_rdy & (~rq_valid | rq_done))
        with m.If(pop):
            m.d.comb += [raw.r_en.eq(1), dec.r_en.eq(rrow == N - 1)]
            m.d.sync += [rrow.eq(rrow + 1), rq_valid.eq(1), rq_x.eq(raw.r_data),
                         rq_keep.eq(dec.r_data[0]), rq_last.eq(rrow == N - 1)]
        with m.Elif(rq_done):
            m.d.sync += rq_valid.eq(0)

        take = _merge(m, entry=enc.index, beats=[enc.o, rb], index=self.index, o=self.o,
                      pick=lambda e: e.kind == Kind.RAW, busy=lambda e: e.kind != Kind.ZERO,
                      accept=dec.w_rdy, name="merge")
        m.d.comb += [dec.w_en.eq(take), dec.w_data.eq(enc.index.payload.kind == Kind.RAW)]
        return m

    def _dct_chain(self, m, f2x, enc):
        m.submodules.dct = dct = DCT2D(order="zigzag")
        m.submodules.quant = quant = Quantizer(table=self.table, order="zigzag")
        for key in ("addr", "data", "en"):
            m.d.comb += getattr(quant.table_wr, key).eq(getattr(self.table_wr, key))
        # nonfinite: ORed over a block's rows, one flag per block beside the transform
        # one flag per block; blocks in flight from the DCT's input to the encoder's: about 7
        # (DCT2D.LATENCY = 38 cycles, then the quantizer), so 8 places would stall the input
        # now and then
        flags = _fifo(m, "flags", 1, 2 * N)
        frow = Signal(range(N))
        acc = Signal()
        fsink = Port(Signal(name="flag_valid"), None, Signal(name="flag_ready"))
        # (the fork's decision below, the DCT's ready and the flags FIFO's room, stays behind
        # the skid register)
        f2x_o = _f2x_skid(m, f2x)
        nonfinite = f2x_o.payload.nonfinite
        m.d.comb += [
            dct.i.payload.eq(f2x_o.payload.q),
            fsink.ready.eq((frow != N - 1) | flags.w_rdy),
            flags.w_data.eq(acc | nonfinite),
        ]
        fork(m, f2x_o, [dct.i, fsink], "f2x")
        with m.If(fsink.valid & fsink.ready):
            m.d.sync += [frow.eq(frow + 1), acc.eq(Mux(frow == N - 1, 0, acc | nonfinite))]
            m.d.comb += flags.w_en.eq(frow == N - 1)
        wiring.connect(m, dct.o, quant.i)
        erow = Signal(range(N))
        join(m, [quant.o, Port(flags.r_rdy, None, Signal(name="flags_pop"))], enc.i)
        m.d.comb += [enc.i.payload.symbols[u].eq(quant.o.payload[u]) for u in range(N)]
        m.d.comb += enc.i.payload.force_raw.eq(flags.r_data)
        with m.If(enc.i.valid & enc.i.ready):
            m.d.sync += erow.eq(erow + 1)
            m.d.comb += flags.r_en.eq(erow == N - 1)

    def _eb_chain(self, m, f2x, raw, enc, x_bits):
        """Credits instead of backpressure through the chain: a row is admitted (into
        ``FloatToFixed`` and the row buffer ``raw``) only with a place reserved for it in
        ``outq``, the queue in front of the encoder. So ``FloatToFixed``, ``LorenzoPredictor``
        and ``BoundCheck`` never wait (their outputs are always ready: their stage enables are
        constants) and no ``ready`` runs back through them: the encoder's stall ends at
        ``outq``'s read side. ``i.ready`` is two registers (``outq``'s flag, the row buffer's
        room) and the row buffer is written a cycle after the admission, from registers."""
        i = self.i
        m.submodules.lorenzo = lor = LorenzoPredictor()
        m.submodules.bound = bc = BoundCheck(dtype=self.dtype)
        # a row's cycles from its admission to BoundCheck's output (the chain never stalls)
        latency = FloatToFixed.LATENCY + BoundCheck.LATENCY
        m.submodules.outq = outq = Queue(enc.row_layout.size, queue_rows(latency), reserve=1)
        admit = Signal()
        # raw's margin: the row admitted now is written next cycle, and the one admitted in the
        # last cycle is not in the level yet (2); its output register counts in the level (1)
        m.d.comb += [
            i.ready.eq(room(m, raw, "raw", margin=3) & outq.w_rdy),
            admit.eq(i.valid & i.ready),
            f2x.i.valid.eq(admit), outq.reserve.eq(admit),
            f2x.o.ready.eq(1), lor.o.ready.eq(1), bc.o.ready.eq(1),
        ]
        write_late(m, raw, admit, i.payload.x, "raw")
        # x, r and eb beside FloatToFixed, the residuals beside BoundCheck: plain registers
        # (the chain advances every cycle), no FIFO flags or enables
        xre = _delay(m, Cat(i.payload.x, i.payload.r, i.payload.eb), FloatToFixed.LATENCY,
                     "xre")
        diffs = _delay(m, lor.o.payload, BoundCheck.LATENCY - LorenzoPredictor.LATENCY,
                       "diffs")
        m.d.comb += [
            lor.i.valid.eq(f2x.o.valid), lor.i.payload.eq(f2x.o.payload.q),
            bc.i.valid.eq(f2x.o.valid), bc.i.payload.q.eq(f2x.o.payload.q),
            bc.i.payload.x.eq(xre[:x_bits]),
            bc.i.payload.r.eq(xre[x_bits:x_bits + 32]),
            bc.i.payload.eb.eq(xre[x_bits + 32:]),
        ]
        row = Signal(enc.row_layout)
        # the row passes when every lane does: the AND of BoundCheck's registered lane results
        # here (a cycle after their compares) rather than its ``ok``, an AND of the 8 lanes'
        # 53-bit compares in one cycle
        m.d.comb += [row.symbols.eq(diffs), row.force_raw.eq(~bc.o.payload.lanes.as_value().all()),
                     outq.w_en.eq(bc.o.valid), outq.w_data.eq(row)]
        _head(m, outq, enc.i)


# ----------------------------------------------------------------------------- the engine


class Compressor(wiring.Component):
    """Compress engine of one mode and dtype: tiled rows in, block index entries and payload
    bytes out, exactly the index and payload of ``reference.compress`` (``Codec(mode=...,
    backend="numpy").compress``) of the tensor the rows tile.

    Parameters (keyword-only): ``mode`` (dct, sfpr8, eb, mask), ``dtype`` (float32, float16,
    bfloat16), ``table`` (dct only: the Quantizer's table after configuration; any table can be
    loaded at run time through ``table_wr``), ``lanes`` (1, 2 or 4 identical chains).

    Input ``i``: ``ArrayLayout(row_layout(mode, dtype), lanes)``: ``lanes`` consecutive rows of
    the stream of padded 8 x 8 blocks in block order (raster rows 0..7 of a block, as the job
    protocol's values section holds them), each row with its block's group scale ``(m, e)``
    (and in eb mode ``r`` and the bound's ``eb`` bits); ``8 / lanes`` transfers per block,
    counted from reset. Outputs: ``index``, one ``IndexEntry`` (the frame's u16) per block in
    block order, and ``o``, the payload as ``CodeBeat`` beats (16 bytes, ``count``, ``last`` on
    a block's final beat; a block's bytes never share a beat): CODED/DENSE blocks their coded
    bytes, RAW blocks their 64 raw input values little-endian (``64 * itemsize`` bytes), ZERO
    blocks nothing. A block's entry leaves no later than its first beat.

    Throughput: each lane takes one row (8 values) a cycle and codes a block per 8 cycles; its
    output carries one beat a cycle, so a lane runs at full rate while its blocks average at
    most 8 beats (every typical block; a RAW block costs ``4 * itemsize`` cycles: float32 RAW
    data runs at half rate). With ``lanes`` > 1 blocks go round-robin to the lanes and are
    merged back in order through one beat a cycle: ``8 * lanes`` values a cycle while blocks
    average at most ``8 / lanes`` beats (measured on digits-CNN activations by ``actpack
    bench rtl``: 7.9-8.0 values/cycle at one lane in every mode, 28-31 at four lanes in dct,
    eb and mask, 14-21 in sfpr8, whose blocks are longer). Latency (unstalled, first input
    transfer to the first index entry): per mode in hw/README.md (``actpack bench rtl``); dealing
    and merging add 3 with more lanes.

    Backpressure: ``index`` and ``o`` are registers; a stalled output stops the merger, then the
    encoder, the chain and the row buffer, then ``i`` (``i.ready`` falls; nothing is lost). In
    eb mode the chain never stops: a row enters it only with a place reserved in the queue in
    front of the encoder (credits), so the stalled encoder stops reading that queue, and
    ``i.ready`` falls once its places are all reserved (or the row buffer is full).
    Bad input: none; every bit pattern is coded as the reference codes it (NaN/inf blocks and
    failed eb bounds RAW). Scales outside the codec's range are applied as ``FloatToFixed``
    documents. Write ``table_wr`` only while no block is in flight.
    """

    def __init__(self, *, mode, dtype=DType.FLOAT32, table="optH", lanes=1):
        self.mode, self.dtype, self.table, self.lanes = engine_params(mode, dtype, table, lanes)
        self.row_layout = row_layout(self.mode, self.dtype)
        members = {
            "i": In(stream.Signature(data.ArrayLayout(self.row_layout, lanes))),
            "index": Out(stream.Signature(IndexEntry)),
            "o": Out(stream.Signature(CodeBeat)),
        }
        if self.mode is Mode.DCT:
            members["table_wr"] = In(TableWrite())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lanes = add_lanes(m, self, _Lane)
        if self.lanes == 1:
            lane, = lanes
            m.d.comb += [lane.i.valid.eq(self.i.valid), lane.i.payload.eq(self.i.payload[0]),
                         self.i.ready.eq(lane.i.ready)]
            wiring.connect(m, lane.index, wiring.flipped(self.index))
            wiring.connect(m, lane.o, wiring.flipped(self.o))
            return m

        # deal: a block's 8 / lanes transfers go to lane (block mod lanes), each lane through a
        # FIFO of two blocks that hands out one row a cycle
        words = N // self.lanes
        word_bits = self.i.payload.shape().size
        w_lane = Signal(range(self.lanes))
        w_word = Signal(range(words))
        readies = []
        for k, lane in enumerate(lanes):
            fifo = _fifo(m, f"deal{k}", word_bits, 2 * words)
            readies.append(fifo.w_rdy)
            m.d.comb += [fifo.w_data.eq(self.i.payload),
                         fifo.w_en.eq(self.i.valid & (w_lane == k) & fifo.w_rdy)]
            sub = Signal(range(self.lanes), name=f"sub{k}")
            m.d.comb += [
                lane.i.valid.eq(fifo.r_rdy),
                lane.i.payload.eq(fifo.r_data.word_select(sub, self.row_layout.size)),
                fifo.r_en.eq(lane.i.ready & (sub == self.lanes - 1)),
            ]
            with m.If(lane.i.valid & lane.i.ready):
                m.d.sync += sub.eq(sub + 1)
        m.d.comb += self.i.ready.eq(Cat(*readies).bit_select(w_lane, 1))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += w_word.eq(w_word + 1)
            with m.If(w_word == words - 1):
                m.d.sync += w_lane.eq(w_lane + 1)

        # merge back in block order: entry of lane ``nxt``, then that lane's beats
        nxt = Signal(range(self.lanes))
        entry = Port(Signal(name="entry_valid"), Signal(IndexEntry, name="entry"),
                      Signal(name="entry_ready"))
        with m.Switch(nxt):
            for k, lane in enumerate(lanes):
                with m.Case(k):
                    m.d.comb += [entry.valid.eq(lane.index.valid),
                                 entry.payload.eq(lane.index.payload),
                                 lane.index.ready.eq(entry.ready)]
        take = _merge(m, entry=entry, beats=[lane.o for lane in lanes], index=self.index,
                      o=self.o, pick=lambda e: nxt, busy=lambda e: e.kind != Kind.ZERO,
                      name="merge")
        with m.If(take):
            m.d.sync += nxt.eq(nxt + 1)
        return m
