"""The decompress engine: per block its index entry, inverse scale and payload beats in, the
block's 8 rows of raw dtype values out, bit-exact with ``actpack.codec.reference.decompress``
before it untiles (docs/format.md 6-8, 12).

``Decompressor`` chains the per-stage blocks of this package per mode:

- ``dct``: ``BlockDecoder`` -> ``Dequantizer(order="zigzag")`` -> ``IDCT2D(order="zigzag")``
  (its input reorder buffer in place of ``Unzigzag``) -> ``FixedToFloat(width=8)``
- ``sfpr8``: ``BlockDecoder`` -> ``FixedToFloat(width=8)`` (``|v| > 127`` flagged RANGE)
- ``eb``: ``BlockDecoder`` -> ``LorenzoReconstructor`` -> ``FixedToFloat(width=22)``
- ``mask``: ``BlockDecoder`` -> ``MaskDecoder``

and copies RAW blocks' payload bytes into rows around the chain. The frame header (parsing,
scale records, CRCs) and the untiling are the card's top level / the host's.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.frame import Kind
from actpack.codec.spec import DType, Mode

from .beats import BEAT_BYTES, CodeBeat, IndexEntry
from .blockdecode import MAX_BEATS, BlockDecoder, BlockError
from .compressor import LANES, add_lanes, engine_params
from .dct import IDCT2D
from .lorenzo import LorenzoReconstructor
from .maskpack import MaskDecoder
from .quant import Dequantizer, TableWrite, forward_table
from .sfpr import FixedToFloat, raw_row
from .streams import Port, Queue, queue_rows, room, skid, write_late

__all__ = ["LANES", "Decompressor", "block_layout", "out_row"]

N = spec.BLOCK
_BEAT_BITS = 8 * BEAT_BYTES
_ERROR_BITS = len(BlockError)
# RAW rows waiting for the merger: a RAW block is taken with places for its 8 rows; two
# blocks' worth lets the next one load while the merger reads the first.
_RAW_ROWS = 16
# Blocks whose entry is taken but whose rows have not all left: the splitter runs ahead of the
# output by the whole chain (dct: about 70 cycles from an entry to its block's last row, 9
# blocks); fewer places stall the input (a bubble every 4 blocks with 4). 16 costs no more LUT
# RAM than 8 (16-word cells).
_BLOCK_FIFO = 16
# Chain queues of this many rows on (dct: 128) go to block RAM: in LUT RAM their 8:1 read select
# and the address's fan-out to hundreds of cells spread over the part miss 150 MHz.
_BLOCK_RAM_ROWS = 64


def block_layout(mode) -> data.StructLayout:
    """One ``blocks`` transfer: ``entry``, the block's u16 index entry as the frame's index holds
    it (``IndexEntry``), and except in mask mode ``r``, the float32 bits of the inverse scale of
    the block's group (the third field of the frame's scale record for group
    ``reference.block_groups(geo)[b]``; in eb mode the single record's)."""
    fields = {"entry": IndexEntry}
    if Mode.parse(mode) is not Mode.MASK:
        fields["r"] = unsigned(32)
    return data.StructLayout(fields)


def out_row(dtype) -> data.StructLayout:
    """One output row: ``x``, 8 bit patterns of ``dtype`` (column 0 first); ``error``, the
    ``BlockError`` bits known when the row leaves (the block's verdict is its last row's);
    ``last`` on a block's row 7."""
    return data.StructLayout({"x": raw_row(DType.parse(dtype)), "error": unsigned(_ERROR_BITS),
                              "last": unsigned(1)})


def _sync_fifo(m: Module, name: str, width: int, depth: int) -> SyncFIFO:
    fifo = SyncFIFO(width=width, depth=depth)  # first-word fall-through: readable a cycle on
    m.submodules[name] = fifo
    return fifo


def _w(fifo) -> Port:
    return Port(fifo.w_en, fifo.w_data, fifo.w_rdy)


def _route(m: Module, blk, beats, *, nbeats, dest, ready, sinks, name: str):
    """Take a block from ``blk`` when ``ready`` (the caller's FIFOs have room for it), then pass
    the next ``nbeats`` beats of ``beats`` to ``sinks[dest]`` (``dest`` sampled with the entry).
    The next block is taken in the cycle of the current block's last beat. Returns the signal
    of a block being taken. Sink ``valid`` depends on registers and ``beats.valid`` only."""
    busy = Signal(name=f"{name}_busy")
    left = Signal(range(MAX_BEATS + 1), name=f"{name}_left")
    one = Signal(name=f"{name}_one")  # left == 1, a register beside ``left``
    cur = Signal(range(max(2, len(sinks))), name=f"{name}_cur")
    sink_ready = Signal(name=f"{name}_sink_ready")
    for k, s in enumerate(sinks):
        m.d.comb += [s.valid.eq(beats.valid & busy & (cur == k)), s.payload.eq(beats.payload)]
        with m.If(cur == k):
            m.d.comb += sink_ready.eq(s.ready)
    step = Signal(name=f"{name}_step")
    free = Signal(name=f"{name}_free")
    take = Signal(name=f"{name}_take")
    m.d.comb += [
        beats.ready.eq(busy & sink_ready),
        step.eq(beats.valid & beats.ready),
        free.eq(~busy | (step & one)),
        blk.ready.eq(free & ready),
        take.eq(blk.valid & blk.ready),
    ]
    with m.If(step):
        m.d.sync += [left.eq(left - 1), one.eq(left == 2)]
        with m.If(one):
            m.d.sync += busy.eq(0)
    with m.If(take):
        m.d.sync += [busy.eq(nbeats != 0), left.eq(nbeats), one.eq(nbeats == 1), cur.eq(dest)]
    return take


def _nbeats(entry):
    return (entry.length + BEAT_BYTES - 1) >> (BEAT_BYTES.bit_length() - 1)


# ----------------------------------------------------------------------------- one lane


class _Lane(wiring.Component):
    """One block at a time through one mode's chain (see ``Decompressor``), RAW blocks beside
    it. Ports as ``Decompressor`` with ``lanes=1`` (``o`` carries ``out_row`` directly)."""

    def __init__(self, *, mode: Mode, dtype: DType, table):
        self.mode, self.dtype, self.table = mode, dtype, table
        members = {
            "blocks": In(stream.Signature(block_layout(mode))),
            "data": In(stream.Signature(CodeBeat)),
            "o": Out(stream.Signature(out_row(dtype))),
        }
        if mode is Mode.DCT:
            members["table_wr"] = In(TableWrite())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        mode, dtype = self.mode, self.dtype
        blk, beats = self.blocks, self.data
        m.submodules.dec = dec = BlockDecoder(mode=mode)
        x_bits = raw_row(dtype).size
        has_r = mode is not Mode.MASK

        # ---- splitter: well-formed RAW blocks to the row assembler, all else to the decoder
        # (which flags any other RAW entry INDEX and still yields its 8 rows). The queues that
        # cross the engine (to the merger, to FixedToFloat) are ``Queue``s: registered flags
        entry = blk.payload.entry
        raw_bytes = N * N * dtype.itemsize
        to_raw = Signal()
        m.d.comb += to_raw.eq((entry.kind == Kind.RAW) & (entry.length == raw_bytes)
                              & (entry.mb_minus_1 == 0) & (mode is not Mode.MASK))
        # per block: its rows come from raw
        m.submodules.order = order = Queue(1, _BLOCK_FIFO, reserve=1, read="sync")
        dix = _sync_fifo(m, "dix", IndexEntry.size, 4)
        # a RAW block is taken with places for its 8 rows (so its beats never wait for them)
        m.submodules.rawq = rawq = Queue(x_bits + _ERROR_BITS, _RAW_ROWS, reserve=N)
        ready = order.w_rdy & room(m, dix, "dix") & (rawq.w_rdy | ~to_raw)
        if has_r:
            m.submodules.rq = rq = Queue(32, _BLOCK_FIFO, reserve=1, read="sync")
            ready = ready & rq.w_rdy
        per_row = x_bits // _BEAT_BITS  # beats per raw row: 2 (float32) or 1 (16-bit dtypes)
        raw_in = Port(Signal(name="raw_in_valid"), Signal(CodeBeat, name="raw_in"), Signal())
        take = _route(m, blk, beats, nbeats=_nbeats(entry), dest=to_raw, ready=ready,
                      sinks=[dec.data, raw_in], name="split")
        m.d.comb += [order.reserve.eq(take), rawq.reserve.eq(take & to_raw)]
        write_late(m, order, take, to_raw, "order")
        m.d.comb += [
            dix.w_en.eq(take & ~to_raw), dix.w_data.eq(entry),
            dec.index.valid.eq(dix.r_rdy), dec.index.payload.eq(dix.r_data),
            dix.r_en.eq(dec.index.ready),
        ]
        if has_r:
            m.d.comb += rq.reserve.eq(take & ~to_raw)
            write_late(m, rq, take & ~to_raw, blk.payload.r, "rq")

        # ---- RAW rows: 64 * itemsize bytes little-endian in raster order are the rows' bits
        rbeat = Signal(range(N * per_row))
        rerr = Signal()
        held = Signal(_BEAT_BITS * max(1, per_row - 1))
        final = rbeat == N * per_row - 1
        bad = (raw_in.payload.count != BEAT_BYTES) | (raw_in.payload.last != final)
        row_end = (rbeat[0] == 1) if per_row == 2 else 1
        m.d.comb += raw_in.ready.eq(1)
        err_now = rerr | bad
        with m.If(raw_in.valid & raw_in.ready):
            m.d.sync += [rbeat.eq(Mux(final, 0, rbeat + 1)), rerr.eq(err_now & ~final)]
            if per_row == 2:
                m.d.sync += held.eq(raw_in.payload.data)
        row_bits = Cat(held, raw_in.payload.data) if per_row == 2 else raw_in.payload.data
        write_late(m, rawq, raw_in.valid & row_end,
                    Cat(row_bits, Mux(err_now, BlockError.BEATS, 0)), "rawq")

        # ---- the decoded path. A decoder row enters the chain only with a place reserved for it
        # in the chain's output queue (``outq.reserve``: credits), so the chain never waits: its
        # stages advance every cycle (their enables are constants) and no ``ready`` runs back
        # through it. A row's error bits wait in ``errq`` beside it (at most ``rows`` of them).
        head, tail, latency = self._chain(m, dec.o.payload.symbols, rq if has_r else None)
        # deep queues (dct) in block RAM: ``outq`` prefetched into registers, written a cycle
        # after the chain's output from registers (``errq``'s read data, 4 ns from its block RAM,
        # reaches only that register)
        block_ram = queue_rows(latency) >= _BLOCK_RAM_ROWS
        read = "prefetch" if block_ram else "comb"
        late = int(block_ram)
        rows = queue_rows(latency + late, Queue.PREFETCH_LATENCY if block_ram else Queue.LATENCY)
        if latency >= Queue.LATENCY:
            m.submodules.errq = errq = Queue(_ERROR_BITS, rows, read="sync", block_ram=block_ram)
        else:  # mask: a row leaves the chain before a Queue shows its error bits
            errq = _sync_fifo(m, "errq", _ERROR_BITS, rows)
        m.submodules.outq = outq = Queue(x_bits + _ERROR_BITS, rows, reserve=1, read=read,
                                          block_ram=block_ram)
        admit = Signal()
        m.d.comb += [
            head.valid.eq(dec.o.valid & outq.w_rdy),
            dec.o.ready.eq(outq.w_rdy & head.ready),
            admit.eq(dec.o.valid & dec.o.ready),
            outq.reserve.eq(admit),
            errq.w_en.eq(admit), errq.w_data.eq(dec.o.payload.error),
            tail.ready.eq(1),
        ]
        if late:
            write_late(m, outq, tail.valid, Cat(tail.payload, errq.r_data), "outq")
        else:
            m.d.comb += [outq.w_en.eq(tail.valid), outq.w_data.eq(Cat(tail.payload, errq.r_data))]
        m.d.comb += errq.r_en.eq(tail.valid)

        # ---- merge in block order: 8 rows of a block from the path its ``order`` bit names,
        # into ``o`` through a skid register: what is merged depends on registers only, and the
        # rows' 262 flip-flops load under registered selects
        o = self.o
        orow = Signal(range(N))
        sel = order.r_data[0]
        go, can = Signal(), Signal()
        row = Signal(len(rawq.r_data) + 1)  # x, error, last: ``out_row``'s bits
        m.d.comb += [
            go.eq(order.r_rdy & Mux(sel, rawq.r_rdy, outq.r_rdy) & can),
            rawq.r_en.eq(go & sel),
            outq.r_en.eq(go & ~sel),
            order.r_en.eq(go & (orow == N - 1)),
            row.eq(Cat(Mux(sel, rawq.r_data, outq.r_data), orow == N - 1)),
        ]
        with m.If(go):
            m.d.sync += orow.eq(orow + 1)
        skid(m, o, row, go, can)
        return m

    def _chain(self, m, symbols, rq):
        """The mode's chain after the decoder (see ``Decompressor``). Returns its input stream
        (payload ``symbols``; the caller drives ``valid`` and reads ``ready``), its output
        stream (the caller drives ``ready``) and its latency: cycles from a row's input transfer
        to its output ``valid`` while the output is always ready.

        ``FixedToFloat`` takes each block's ``r`` from the head of ``rq`` without waiting for
        it: the head is that block's, since the splitter writes ``rq`` when it takes the entry,
        before the decoder has a row of the block, and it is read as the block's row 7 enters
        ``FixedToFloat``; so no ``ready`` of the chain depends on ``rq``."""
        mode = self.mode
        if mode is Mode.MASK:
            m.submodules.mdec = mdec = MaskDecoder(dtype=self.dtype)
            m.d.comb += mdec.i.payload.eq(Cat(*(symbols[k][0] for k in range(N))))
            return mdec.i, mdec.o, MaskDecoder.LATENCY
        width = 22 if mode is Mode.EB else 8  # Ref: format 6.4 (22-bit q), 6.1/6.3 (int8)
        m.submodules.x2f = x2f = FixedToFloat(dtype=self.dtype, width=width)
        if mode is Mode.SFPR8:
            # |v| > 127 is flagged RANGE by the decoder; the low 8 bits pass (a flagged block)
            head, latency = x2f.i, 0
            vals = [symbols[u][:width] for u in range(N)]
        else:
            if mode is Mode.DCT:
                m.submodules.dequant = deq = Dequantizer(table=self.table, order="zigzag")
                m.submodules.idct = pre = IDCT2D(order="zigzag")
                forward_table(m, self.table_wr, deq.table_wr)
                wiring.connect(m, deq.o, pre.i)
                head, latency = deq.i, Dequantizer.LATENCY + pre.LATENCY
            else:
                m.submodules.lorenzo = pre = LorenzoReconstructor()
                head, latency = pre.i, LorenzoReconstructor.LATENCY
            m.d.comb += [head.payload.eq(symbols), x2f.i.valid.eq(pre.o.valid),
                         pre.o.ready.eq(x2f.i.ready)]
            vals = [pre.o.payload[u] for u in range(N)]
        xrow = Signal(range(N))
        m.d.comb += [*(x2f.i.payload.v[u].eq(vals[u]) for u in range(N)),
                     x2f.i.payload.r.eq(rq.r_data)]
        with m.If(x2f.i.valid & x2f.i.ready):
            m.d.sync += xrow.eq(xrow + 1)
            m.d.comb += rq.r_en.eq(xrow == N - 1)
        return head, x2f.o, latency + x2f.latency


# ----------------------------------------------------------------------------- the engine


class Decompressor(wiring.Component):
    """Decompress engine of one mode and dtype: per block its index entry, inverse scale and
    payload beats in, its 8 rows of ``dtype`` bit patterns out, in block order: exactly the
    padded block ``reference.decompress`` computes before it untiles (RAW blocks: their bytes).

    Parameters (keyword-only): ``mode`` (dct, sfpr8, eb, mask), ``dtype`` (float32, float16,
    bfloat16), ``table`` (dct only: the Dequantizer's table after configuration; load a frame's
    table at run time through ``table_wr``, ``addr`` = ``8 v + u``, one entry a cycle, while no
    block is in flight), ``lanes`` (1, 2 or 4 identical chains).

    Inputs: ``blocks`` (``block_layout(mode)``): per block in block order, its u16 index entry
    and (except mask) ``r``, the float32 bits of its group's inverse scale; ``data``
    (``CodeBeat``): the payload, each block's ``length`` bytes in ``ceil(length / 16)`` beats
    starting on a fresh beat (``count`` bytes valid, ``last`` on its final beat; ZERO blocks
    have none). Output ``o``: ``ArrayLayout(out_row(dtype), lanes)``, ``lanes`` consecutive
    rows of the block stream a transfer (rows 0..7 of a block, blocks in order; ``8 / lanes``
    transfers a block), each row with ``error`` (``BlockError`` bits: the block's verdict on
    its row 7) and ``last``.

    Throughput: a lane delivers one row (8 values) a cycle while its blocks have at most 6
    beats (96 bytes: every dct, sfpr8 and mask block the encoder writes, typical eb blocks);
    longer ones take ``beats + 2`` cycles (float32 RAW blocks 16 beats: half rate). With
    ``lanes`` > 1 blocks are dealt round-robin to the lanes by their entries' byte counts and
    merged back in order: up to ``8 * lanes`` values a cycle, bounded by the one beat a cycle of
    ``data`` (blocks averaging ``b`` beats: at most ``64 / b`` values a cycle). Latency (first
    input transfer to first row, ``bench.rtl.measure_decompressor`` on the digits
    CNN): 26 cycles (sfpr8), 87 (dct) (hw/README.md; derived); sfpr8 with 2 / 4 lanes
    14.4 / 16.5 values a cycle (the input beat port's bound).

    Backpressure: ``o`` is a register (behind a skid register); a stalled output stops the
    merger; a chain never stalls, but takes no more rows from the decoder once its output
    queue's places are all reserved; the decoder then stops and then ``blocks``/``data``
    (nothing is lost). Timing: every decision is made from registers a few LUT levels deep;
    queues between parts placed apart keep no shared counter (``Queue``).

    Bad input: every check of ``BlockDecoder`` (format 8.2 and the index checks of #21 for one
    entry); a RAW entry whose length is not ``64 * itemsize`` or with an ``mb`` field, or in
    mask mode, is flagged INDEX, RAW beats whose ``count``/``last`` disagree BEATS. A flagged
    block still yields 8 rows (values unspecified) and the next block decodes normally. Reset
    recovers from any state.
    """

    def __init__(self, *, mode, dtype=DType.FLOAT32, table="optH", lanes=1):
        self.mode, self.dtype, self.table, self.lanes = engine_params(mode, dtype, table, lanes)
        members = {
            "blocks": In(stream.Signature(block_layout(self.mode))),
            "data": In(stream.Signature(CodeBeat)),
            "o": Out(stream.Signature(data.ArrayLayout(out_row(self.dtype), lanes))),
        }
        if self.mode is Mode.DCT:
            members["table_wr"] = In(TableWrite())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lanes = add_lanes(m, self, _Lane)
        if self.lanes == 1:
            lane, = lanes
            wiring.connect(m, wiring.flipped(self.blocks), lane.blocks)
            wiring.connect(m, wiring.flipped(self.data), lane.data)
            m.d.comb += [self.o.valid.eq(lane.o.valid), self.o.payload[0].eq(lane.o.payload),
                         lane.o.ready.eq(self.o.ready)]
            return m

        # deal: block k's entry and its beats to lane k mod lanes, through per-lane FIFOs
        blk_bits = self.blocks.payload.shape().size
        w_lane = Signal(range(self.lanes))
        bfifos, dfifos = [], []
        for k, lane in enumerate(lanes):
            bf = _sync_fifo(m, f"blk{k}", blk_bits, _BLOCK_FIFO)
            df = _sync_fifo(m, f"beats{k}", CodeBeat.size, 2 * N)
            bfifos.append(bf)
            dfifos.append(df)
            m.d.comb += [
                bf.w_data.eq(self.blocks.payload),
                lane.blocks.valid.eq(bf.r_rdy), lane.blocks.payload.eq(bf.r_data),
                bf.r_en.eq(lane.blocks.ready),
                lane.data.valid.eq(df.r_rdy), lane.data.payload.eq(df.r_data),
                df.r_en.eq(lane.data.ready),
            ]
        take = _route(m, self.blocks, self.data, nbeats=_nbeats(self.blocks.payload.entry),
                      dest=w_lane, ready=Array(bf.w_rdy for bf in bfifos)[w_lane],
                      sinks=[_w(df) for df in dfifos], name="deal")
        for k, bf in enumerate(bfifos):
            m.d.comb += bf.w_en.eq(take & (w_lane == k))
        with m.If(take):
            m.d.sync += w_lane.eq(w_lane + 1)

        # gather: each lane's rows into words of ``lanes`` rows, then words in block order
        row_bits = out_row(self.dtype).size
        words = N // self.lanes
        wfifos = []
        for k, lane in enumerate(lanes):
            wf = _sync_fifo(m, f"words{k}", row_bits * self.lanes, 2 * words)
            wfifos.append(wf)
            acc = Signal(row_bits * (self.lanes - 1), name=f"acc{k}")
            sub = Signal(range(self.lanes), name=f"sub{k}")
            full = sub == self.lanes - 1
            m.d.comb += [lane.o.ready.eq(~full | wf.w_rdy),
                         wf.w_data.eq(Cat(acc, lane.o.payload))]
            with m.If(lane.o.valid & lane.o.ready):
                m.d.sync += sub.eq(sub + 1)
                m.d.comb += wf.w_en.eq(full)
                for j in range(self.lanes - 1):
                    with m.If(sub == j):
                        m.d.sync += acc.word_select(j, row_bits).eq(lane.o.payload)
        o = self.o
        nxt = Signal(range(self.lanes))
        word = Signal(range(words))
        head_rdy = Array(wf.r_rdy for wf in wfifos)[nxt]
        head = Array(wf.r_data for wf in wfifos)[nxt]
        go = Signal()
        m.d.comb += go.eq(head_rdy & (~o.valid | o.ready))
        for k, wf in enumerate(wfifos):
            m.d.comb += wf.r_en.eq(go & (nxt == k))
        with m.If(go):
            m.d.sync += [o.valid.eq(1), o.payload.eq(head), word.eq(word + 1)]
            with m.If(word == words - 1):
                m.d.sync += [word.eq(0), nxt.eq(nxt + 1)]
        with m.Elif(o.ready):
            m.d.sync += o.valid.eq(0)
        return m
