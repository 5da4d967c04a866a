"""The decompress job of the card (docs/card.md 3.3): a frame in, its decoded values out."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring

from actpack.codec.spec import DType, Mode
from actpack.errors import Check

from .beats import BEAT_BYTES
from .compressjob import engine_name
from .decompressor import Decompressor
from .frameparse import FrameCheck, FrameParser
from .job import Next, job_ports, report
from .protocol import ErrorCode, frame_error_code
from .quant import forward_table

__all__ = ["DecompressJob", "verdict_code"]

_BEAT_BITS = 8 * BEAT_BYTES


def verdict_code(lowest):
    """The status code of a frame whose lowest failed check is ``FrameCheck`` ``lowest`` (an
    Amaranth value): ``protocol.frame_error_code`` of the check, ``TOO_LARGE`` for the card's
    own ``CAPACITY``."""
    codes = {c: frame_error_code(Check[c.name]) for c in FrameCheck
             if c is not FrameCheck.CAPACITY}
    codes[FrameCheck.CAPACITY] = ErrorCode.TOO_LARGE
    code = Const(ErrorCode.BAD_FRAME, 8)
    for c, e in codes.items():
        if e is not ErrorCode.BAD_FRAME:
            code = Mux(lowest == c, e, code)
    return code


class DecompressJob(wiring.Component):
    """A decompress job after its descriptor: the frame from ``i`` into the ``FrameParser``, its
    blocks into the ``Decompressor`` of the frame's (mode, dtype) (one of ``engines``), the
    decoded rows out on ``o`` (a float32 row as two beats, ``last`` never set: the status record
    follows); then the phase's end (``hw.job``).

    ``start`` (a pulse) begins the job; ``seen_last`` says whether the packet's tlast is in (the
    parser takes nothing after it). Faults, each with ``Next.DRAIN`` once the parser's verdict
    is taken (after the last decoded row has gone out):

    - the frame's (mode, dtype) has no engine: ``UNSUPPORTED`` (detail mode | dtype << 8) as
      soon as the parser names them; its blocks are dropped;
    - a check of docs/format.md section 10 failed: the lowest one's code (``verdict_code``);
    - else a block the engine flagged: ``BAD_FRAME``, detail the first such block's index.

    Throughput: ``i`` a beat a cycle while the parser and engine keep up; ``o`` a beat a cycle.
    Backpressure: ``o`` stalls hold the engine, which holds the parser and ``i``. ``max_blocks``
    and ``max_groups`` size the parser (``FrameParser``); beyond them the verdict is
    ``CAPACITY``. Meant to be reset between jobs (the core's ``ResetInserter``).
    """

    def __init__(self, *, engines, max_blocks: int, max_groups: int):
        self.engines = list(engines)
        self.max_blocks, self.max_groups = max_blocks, max_groups
        super().__init__(job_ports())

    def elaborate(self, platform):
        m = Module()
        decs = {}
        for p in self.engines:
            decs[p] = m.submodules[engine_name("dec", p)] = Decompressor(mode=p[0], dtype=p[1])
        m.submodules.parser = parser = FrameParser(max_blocks=self.max_blocks,
                                                   max_groups=self.max_groups)
        sel = Signal(range(max(len(self.engines), 1)))  # the frame's engine
        drop = Signal()  # no engine for the frame: its blocks are dropped
        rows = Signal(40)  # rows the engine gave
        blocks_in = Signal(range(self.max_blocks + 1))  # blocks the engine took
        bad_block = Signal()  # the engine flagged a block ...
        bad_index = Signal(32)  # ... this one

        def fault(code, detail=0):
            report(m, self.fault, code, detail)

        # ------------------------------------------------------------ parser -> engine
        m.d.comb += parser.table_free.eq(rows == (blocks_in << 3))
        for i, (p, dec) in enumerate(decs.items()):
            mine = (sel == i) & ~drop
            m.d.comb += [dec.blocks.valid.eq(parser.blocks.valid & mine),
                         dec.blocks.payload.entry.eq(parser.blocks.payload.entry),
                         dec.data.valid.eq(parser.beats.valid & mine),
                         dec.data.payload.eq(parser.beats.payload)]
            if p[0] is not Mode.MASK:
                m.d.comb += dec.blocks.payload.r.eq(parser.blocks.payload.r)
            if p[0] is Mode.DCT:
                forward_table(m, parser.table_wr, dec.table_wr)
            with m.If(mine):
                m.d.comb += [parser.blocks.ready.eq(dec.blocks.ready),
                             parser.beats.ready.eq(dec.data.ready)]
        with m.If(drop):
            m.d.comb += [parser.blocks.ready.eq(1), parser.beats.ready.eq(1)]
        with m.If(parser.blocks.valid & parser.blocks.ready & ~drop):
            m.d.sync += blocks_in.eq(blocks_in + 1)

        # ------------------------------------------------------------ engine rows -> o
        vrow = Signal(2 * _BEAT_BITS)  # decoded row being sent (float32: two beats)
        v_half, v_wide = Signal(), Signal()
        m.d.comb += [self.o.payload.data.eq(Mux(v_half, vrow[_BEAT_BITS:], vrow[:_BEAT_BITS])),
                     self.o.payload.count.eq(BEAT_BYTES)]
        sent = self.o.valid & self.o.ready
        row_done = sent & (v_half | ~v_wide)
        with m.If(row_done):
            m.d.sync += self.o.valid.eq(0)
        with m.If(sent & v_wide & ~v_half):
            m.d.sync += v_half.eq(1)
        row_free = ~self.o.valid | row_done
        for i, (p, dec) in enumerate(decs.items()):
            row = dec.o.payload[0]
            m.d.comb += dec.o.ready.eq((sel == i) & row_free)
            with m.If(dec.o.valid & dec.o.ready):
                m.d.sync += [vrow.eq(row.x.as_value()), self.o.valid.eq(1), v_half.eq(0),
                             v_wide.eq(p[1] is DType.FLOAT32), rows.eq(rows + 1)]
                with m.If(row.last & (row.error != 0) & ~bad_block):
                    m.d.sync += [bad_block.eq(1), bad_index.eq(rows >> 3)]

        # ------------------------------------------------------------ the frame
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [parser.i.valid.eq(self.i.valid & ~self.seen_last),
                             parser.i.payload.data.eq(self.i.payload.data),
                             parser.i.payload.last.eq(self.i.payload.last),
                             self.i.ready.eq(parser.i.ready & ~self.seen_last),
                             parser.info.ready.eq(1)]
                with m.If(parser.info.valid):
                    info = parser.info.payload
                    hits = [(info.mode == int(p[0])) & (info.dtype == int(p[1])) for p in decs]
                    for i, hit in enumerate(hits):
                        with m.If(hit):
                            m.d.sync += sel.eq(i)
                    with m.If(~Cat(*hits, Const(0, 1)).any()):
                        m.d.sync += drop.eq(1)
                        fault(ErrorCode.UNSUPPORTED, Cat(info.mode, info.dtype))
                m.d.comb += parser.verdict.ready.eq(~self.o.valid & (rows == (blocks_in << 3)))
                with m.If(parser.verdict.valid & parser.verdict.ready):
                    errors = parser.verdict.payload.errors
                    lowest = Signal(range(len(FrameCheck)))
                    for c in reversed(FrameCheck):
                        with m.If(errors[c]):
                            m.d.comb += lowest.eq(c)
                    with m.If(errors != 0):
                        fault(verdict_code(lowest))
                    with m.Elif(bad_block):
                        fault(ErrorCode.BAD_FRAME, bad_index)
                    m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(Next.DRAIN)]
                    m.next = "IDLE"
        return m
