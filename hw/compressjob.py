"""The compress job of the card (docs/card.md 3.2): the packet after the descriptor in, the frame
out, bit-exact with ``actpack.Codec.compress``."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from actpack.codec import frame as fmt
from actpack.codec.frame import (
    ALIGN,
    FIXED_HEADER,
    HEADER_CRC_BYTES,
    SCALE_RECORD,
    TABLE_BYTES,
    groups_of,
    header_length,
)
from actpack.codec.spec import DType, Mode

from . import protocol
from .beats import BEAT_BYTES, CodeBeat
from .compressor import Compressor
from .framebuild import SECTION, FrameBuilder
from .frameparse import param_bad, scale_record_bad
from .geometry import Geometry, GroupWalker
from .job import Next, job_ports, report
from .protocol import DESCRIPTOR, ErrorCode

__all__ = ["CompressJob", "HeaderTemplate", "engine_name"]

_BEAT_BITS = 8 * BEAT_BYTES
_SHAPE_BEATS = protocol.SHAPE_BYTES // BEAT_BYTES
_SECTION_BEATS = ALIGN // BEAT_BYTES
_RECORDS_PER_BEAT = BEAT_BYTES // SCALE_RECORD.size
_RECORD_SHIFT = _RECORDS_PER_BEAT.bit_length() - 1
_HEADER_WORD = 8  # the header template goes to the builder a 64-bit word a cycle
_FIXED_WORDS = FIXED_HEADER.size // _HEADER_WORD
_TABLE_WORD = 4  # the table window's CRC takes 32 bits a cycle, within Geometry's latency
_TABLE_STEPS = TABLE_BYTES // _TABLE_WORD
_COUNT_BITS = 32  # Geometry's counts (a job's blocks fit its frame buffer; more is overflow)
_FRAME_MAGIC = int.from_bytes(fmt.MAGIC, "little")
assert 1 << _RECORD_SHIFT == _RECORDS_PER_BEAT
assert FIXED_HEADER.size % _HEADER_WORD == 0 and SCALE_RECORD.size == _HEADER_WORD
assert Geometry(count_bits=_COUNT_BITS).latency >= _TABLE_STEPS  # the table CRC costs no cycle


def _record_rows(max_groups: int) -> int:
    """Rows of the scale memory: ``BEAT_BYTES`` of records each, as they arrive."""
    return -(-max_groups // _RECORDS_PER_BEAT)


def engine_name(kind: str, pair) -> str:
    """The submodule name of the engine of (mode, dtype) ``pair``: ``<kind>_<mode>_<dtype>``."""
    return f"{kind}_{pair[0].label}_{pair[1].name.lower()}"


class HeaderTemplate(wiring.Component):
    """The header template of a compress job's frame, format.md 2.1 without its CRC: the fixed
    part (``payload_bytes`` 0: ``FrameBuilder`` counts it), the shape, the table (dct), the
    scale records; as ``CodeBeat``s for ``FrameBuilder.header``, two 64-bit words a beat (the
    last may hold one), ``last`` on the final beat.

    ``start`` (a pulse) begins a header; its words go while ``run`` is high, one a cycle.
    ``desc``, ``shape`` and ``table`` hold meanwhile; the records come from the job's scale
    memory: ``record_row`` is the memory row (``BEAT_BYTES`` of records) the next word needs
    and ``records`` that row one cycle later (a registered read port), so the read costs no
    cycle. Backpressure: ``o.ready`` low holds a beat and the words behind it. ``done`` is high
    while ``run`` is and the last beat has gone or goes this cycle. No bad input: the fields
    were checked (``CompressJob``).
    """

    def __init__(self, *, max_groups: int):
        self.max_groups = max_groups
        super().__init__({
            "start": In(1),
            "run": In(1),
            "desc": In(DESCRIPTOR.shape()),
            "shape": In(data.ArrayLayout(64, fmt.MAX_NDIM)),
            "table": In(data.ArrayLayout(8, TABLE_BYTES)),
            "record_row": Out(range(_record_rows(max_groups))),
            "records": In(_BEAT_BITS),
            "o": Out(stream.Signature(CodeBeat)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        desc, o = self.desc, self.o
        k = Signal(range(_FIXED_WORDS + fmt.MAX_NDIM + 8 + self.max_groups + 2))  # the word
        fixed = Signal(FIXED_HEADER.shape())
        m.d.comb += [fixed.magic.eq(_FRAME_MAGIC), fixed.version.eq(fmt.VERSION),
                     fixed.mode.eq(desc.mode), fixed.dtype.eq(desc.dtype),
                     fixed.ndim.eq(desc.ndim), fixed.table_id.eq(desc.table_id),
                     fixed.table_arg.eq(desc.table_arg), fixed.ngroups.eq(desc.ngroups),
                     fixed.nblocks.eq(desc.nblocks), fixed.param.eq(desc.param)]
        n_shape = _FIXED_WORDS + desc.ndim
        n_table = n_shape + Mux(desc.mode == Mode.DCT, TABLE_BYTES // _HEADER_WORD, 0)
        n_words = (header_length(desc.mode, desc.ndim, desc.ngroups) >> 3)[:len(k)]
        lo, half = Signal(64), Signal()  # the beat's first word, when it has one
        free = ~o.valid | o.ready
        advance = self.run & free & (k < n_words)  # the word at ``k`` goes this cycle
        word = Signal(64)
        with m.If(k < _FIXED_WORDS):
            m.d.comb += word.eq(fixed.as_value().word_select(
                k[:(_FIXED_WORDS - 1).bit_length()], 64))
        with m.Elif(k < n_shape):
            m.d.comb += word.eq(self.shape[(k - _FIXED_WORDS)[:3]])
        with m.Elif(k < n_table):
            m.d.comb += word.eq(self.table.as_value().word_select((k - n_shape)[:3], 64))
        with m.Else():
            m.d.comb += word.eq(self.records.word_select((k - n_table)[:_RECORD_SHIFT], 64))
        m.d.comb += [self.record_row.eq((Mux(advance, k + 1, k) - n_table)[:len(k)]
                                        >> _RECORD_SHIFT),
                     self.done.eq(self.run & free & (k == n_words))]

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(self.start):
            m.d.sync += [k.eq(0), half.eq(0)]
        with m.Elif(advance):
            m.d.sync += k.eq(k + 1)
            with m.If(~half & (k + 1 < n_words)):
                m.d.sync += [lo.eq(word), half.eq(1)]
            with m.Else():
                m.d.sync += [o.valid.eq(1), half.eq(0),
                             o.payload.data.eq(Mux(half, Cat(lo, word), word)),
                             o.payload.count.eq(Mux(half, 16, 8)),
                             o.payload.last.eq(k + 1 == n_words)]
        return m


class CompressJob(wiring.Component):
    """A compress job after its descriptor: the shape, scale records and values sections from
    ``i``, the frame out on ``o``; or a fault and the phase's end (``hw.job``).

    ``start`` (a pulse) begins a job whose descriptor ``desc`` (checked by
    ``hw.descriptor.DescriptorReader``) and engine index ``engine`` (into ``engines``, the
    (mode, dtype) pairs it has a ``Compressor`` for) hold until the job ends; ``table`` is the
    TABLE window, ``seen_last`` whether the packet's tlast is in. In order:

    - **shape** (4 beats) into ``Geometry``, while the table window's CRC32C runs (a 32-bit word
      a cycle, inside the geometry's 82 cycles); then, the first that fails:
      ``BAD_DESCRIPTOR`` (unused dimensions not 0, a count beyond 32 bits, ``nblocks`` or
      ``ngroups`` not the shape's), ``LENGTH`` (``in_bytes`` is not the sections' length),
      ``TOO_LARGE`` (``frame_bound`` beyond ``buffer`` bytes, or more than ``max_groups``
      groups), ``TABLE_MISMATCH`` (dct: CRC against ``table_crc``, or a zero entry);
    - **scale records** into the scale memory a beat a cycle; a record out of range is
      ``BAD_DESCRIPTOR`` (detail: its index), then ``param`` out of range too;
    - **header template** (format.md 2.1 without its CRC) into the ``FrameBuilder`` a word a
      cycle, the dct table into the engine meanwhile (an entry a cycle);
    - **values**, a row (8 values, a float32 row being two beats) at a time with its block's
      scale record into the engine, whose index entries and payload go into the builder;
    - **frame** out of the builder, ``Next.DONE`` with its last beat.

    A fault ends the phase with ``Next.DRAIN``; a packet that ends early (``seen_last``) with
    ``Next.STATUS`` (the core reports ``LENGTH``), one longer than announced with
    ``Next.DRAIN``. Throughput: ``i`` a beat a cycle while the engine keeps up (one row a
    cycle); ``o`` a beat every 2 cycles (the builder's 8 bytes a cycle). Backpressure: ``o``
    stalls hold the builder, the engine and ``i``. The scale memory has a registered read port
    (block RAM): the header reads a word ahead, the values a block ahead, so it adds no cycle.
    Meant to be reset between jobs (the core's ``ResetInserter``).
    """

    def __init__(self, *, engines, buffer: int, max_groups: int):
        self.engines = list(engines)
        self.buffer, self.max_groups = buffer, max_groups
        super().__init__({
            **job_ports(),
            "desc": In(DESCRIPTOR.shape()),
            "engine": In(range(max(len(self.engines), 1))),
            "table": In(data.ArrayLayout(8, TABLE_BYTES)),
        })

    def elaborate(self, platform):
        m = Module()
        desc, table, sel = self.desc, self.table, self.engine
        mode, dtype, ndim, ngroups, nblocks = (desc.mode, desc.dtype, desc.ndim, desc.ngroups,
                                               desc.nblocks)
        comps = {}
        for p in self.engines:
            comps[p] = m.submodules[engine_name("comp", p)] = Compressor(mode=p[0], dtype=p[1])
        hdr_max = header_length(Mode.DCT, fmt.MAX_NDIM, self.max_groups) + HEADER_CRC_BYTES
        m.submodules.builder = builder = FrameBuilder(
            max_header=-(-hdr_max // SECTION) * SECTION,
            max_blocks=max(SECTION, self.buffer // 128 // SECTION * SECTION),
            max_payload=self.buffer)
        m.submodules.geo = geo = Geometry(count_bits=_COUNT_BITS)
        m.submodules.walker = walker = GroupWalker(count_bits=_COUNT_BITS)
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=8 * _TABLE_WORD).create()
        m.submodules.scales = scales = Memory(shape=unsigned(_BEAT_BITS),
                                              depth=_record_rows(self.max_groups),
                                              init=[])
        sc_w, sc_r = scales.write_port(), scales.read_port()  # registered read: block RAM

        shape = Signal(data.ArrayLayout(64, fmt.MAX_NDIM))
        k = Signal(range(5 + fmt.MAX_NDIM + 8 + self.max_groups + 2))  # beats/steps of a phase
        t = Signal(range(TABLE_BYTES + 1))  # table entries written
        faulted = Signal()  # a scale record failed
        rows = Signal(40)  # rows taken by the engine
        rows_in = Signal(40)  # rows assembled from the values section
        take = self.i.valid & self.i.ready
        is_f32, is_dct = dtype == DType.FLOAT32, mode == Mode.DCT
        m.d.comb += [geo.shape.eq(shape), geo.ndim.eq(ndim),
                     walker.blocks_per_plane.eq(geo.blocks_per_plane),
                     walker.group_stride.eq(geo.group_stride), walker.groups.eq(geo.groups)]

        def fault(code, detail=0):
            report(m, self.fault, code, detail)

        def finish(next_):
            m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(next_)]
            m.next = "IDLE"

        # ------------------------------------------------------------ rows into the engine
        r_lo = Signal(_BEAT_BITS)  # first beat of a float32 row
        r_valid, r_half = Signal(), Signal()
        r_bits = Signal(2 * _BEAT_BITS)
        r_take = Signal()
        table_load = Signal()
        # The block's scale record, read a block ahead: the walker steps to the next block's
        # group when a block's first row is taken, the record is latched with its last row.
        # Block 0's group is always 0: its record is latched as it arrives.
        rec = Signal(SCALE_RECORD.shape())
        group = Mux(mode == Mode.EB, 0, walker.group)
        with m.If(r_take):
            m.d.sync += [r_valid.eq(0), rows.eq(rows + 1)]
            with m.If(rows[:3] == 0):
                m.d.comb += walker.next.eq(1)
            with m.If(rows[:3] == 7):
                m.d.sync += rec.eq(sc_r.data.word_select(group[:_RECORD_SHIFT],
                                                         8 * SCALE_RECORD.size))
        for i, (p, comp) in enumerate(comps.items()):
            row = comp.i.payload[0]
            m.d.comb += [comp.i.valid.eq(r_valid & (sel == i)),
                         row.x.eq(r_bits[:row.x.shape().size])]
            if p[0] is not Mode.MASK:
                m.d.comb += [row.scale.m.eq(rec.mantissa), row.scale.e.eq(rec.exponent)]
            if p[0] is Mode.EB:
                m.d.comb += [row.r.eq(rec.inverse), row.eb.eq(desc.param)]
            if p[0] is Mode.DCT:
                m.d.comb += [comp.table_wr.addr.eq(t), comp.table_wr.data.eq(table[t[:6]]),
                             comp.table_wr.en.eq(table_load & (sel == i))]
            with m.If(sel == i):
                m.d.comb += r_take.eq(comp.i.ready & r_valid)
                wiring.connect(m, comp.index, builder.index)
                wiring.connect(m, comp.o, builder.payload)
        m.d.comb += builder.status.eq(0)

        m.submodules.header = header = HeaderTemplate(max_groups=self.max_groups)
        wiring.connect(m, header.o, builder.header)
        m.d.comb += [header.desc.eq(desc), header.shape.eq(shape), header.table.eq(table),
                     header.records.eq(sc_r.data)]

        # ------------------------------------------------------------ the phases
        with m.FSM() as fsm:
            with m.State("IDLE"), m.If(self.start):
                m.next = "SHAPE"
            with m.State("SHAPE"):
                with m.If(k == _SHAPE_BEATS):
                    m.d.sync += k.eq(0)
                    m.d.comb += crc.start.eq(1)
                    m.next = "GEO"
                with m.Elif(self.seen_last):
                    finish(Next.STATUS)  # LENGTH
                with m.Else():
                    m.d.comb += self.i.ready.eq(1)
                    with m.If(take):
                        m.d.sync += [shape.as_value().word_select(
                            k[:(_SHAPE_BEATS - 1).bit_length()], _BEAT_BITS).eq(
                            self.i.payload.data), k.eq(k + 1)]
            with m.State("GEO"):
                with m.If(k == 0):
                    m.d.comb += geo.start.eq(1)
                with m.If(k < _TABLE_STEPS):
                    m.d.comb += [crc.data.eq(table.as_value().word_select(
                                     k[:(_TABLE_STEPS - 1).bit_length()], 8 * _TABLE_WORD)),
                                 crc.valid.eq(1)]
                    m.d.sync += k.eq(k + 1)
                with m.Elif(geo.done):
                    m.d.sync += k.eq(0)
                    self._check(m, geo, shape, crc, finish, fault)
            with m.State("SCALES"):
                # beats of the 64-aligned section
                section = ((ngroups * SCALE_RECORD.size + 63) >> 6) * _SECTION_BEATS
                with m.If(k == section):
                    m.d.sync += k.eq(0)
                    with m.If(faulted):
                        finish(Next.DRAIN)
                    with m.Elif(param_bad(mode, desc.param)):
                        fault(ErrorCode.BAD_DESCRIPTOR)
                        finish(Next.DRAIN)
                    with m.Else():
                        m.d.comb += header.start.eq(1)
                        m.next = "HEADER"
                with m.Elif(self.seen_last):
                    finish(Next.STATUS)  # LENGTH
                with m.Else():
                    m.d.comb += [self.i.ready.eq(1), sc_w.addr.eq(k),
                                 sc_w.data.eq(self.i.payload.data), sc_w.en.eq(take)]
                    with m.If(take):
                        m.d.sync += k.eq(k + 1)
                        with m.If(k == 0):  # block 0's record (its group is 0)
                            m.d.sync += rec.eq(self.i.payload.data[:8 * SCALE_RECORD.size])
                        for j in range(_RECORDS_PER_BEAT):
                            record = self.i.payload.data.word_select(j, 8 * SCALE_RECORD.size)
                            idx = Cat(Const(j, _RECORD_SHIFT), k)
                            with m.If((idx < ngroups) & scale_record_bad(record)):
                                fault(ErrorCode.BAD_DESCRIPTOR, idx)
                                m.d.sync += faulted.eq(1)
            with m.State("HEADER"):
                # the header template into the builder; the dct table into the engine
                # meanwhile, an entry a cycle
                m.d.comb += header.run.eq(1)
                with m.If(is_dct & (t < TABLE_BYTES)):
                    m.d.comb += table_load.eq(1)
                    m.d.sync += t.eq(t + 1)
                with m.If(header.done & (~is_dct | (t == TABLE_BYTES))):
                    m.d.comb += walker.start.eq(1)
                    m.next = "VALUES"
            with m.State("VALUES"):
                can_load = ~r_valid | r_take
                with m.If(rows_in == nblocks[:37] << 3):
                    with m.If(~self.seen_last):
                        finish(Next.DRAIN)  # more bytes than announced: LENGTH
                    with m.Elif(~r_valid):
                        m.next = "FRAME"
                with m.Elif(self.seen_last):
                    finish(Next.STATUS)  # fewer: LENGTH
                with m.Elif(is_f32 & ~r_half):
                    m.d.comb += self.i.ready.eq(1)
                    with m.If(take):
                        m.d.sync += [r_lo.eq(self.i.payload.data), r_half.eq(1)]
                with m.Else():
                    m.d.comb += self.i.ready.eq(can_load)
                    with m.If(take):
                        m.d.sync += [r_bits.eq(Mux(is_f32, Cat(r_lo, self.i.payload.data),
                                                   self.i.payload.data)),
                                     r_valid.eq(1), r_half.eq(0), rows_in.eq(rows_in + 1)]
            with m.State("FRAME"):
                m.d.comb += [self.o.valid.eq(builder.o.valid),
                             self.o.payload.data.eq(builder.o.payload.data),
                             self.o.payload.count.eq(BEAT_BYTES),
                             self.o.payload.last.eq(builder.o.payload.last),
                             builder.o.ready.eq(self.o.ready)]
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    finish(Next.DONE)
        # one read port: the header's next word in HEADER, the next block's group otherwise
        with m.If(fsm.ongoing("HEADER")):
            m.d.comb += sc_r.addr.eq(header.record_row)
        with m.Else():
            m.d.comb += sc_r.addr.eq(group >> _RECORD_SHIFT)
        return m

    def _check(self, m, geo, shape, crc, finish, fault):
        """The GEO phase's verdict on the shape, lengths and table, as the card model orders
        its checks."""
        desc = self.desc
        mode, ndim, ngroups, nblocks = desc.mode, desc.ndim, desc.ngroups, desc.nblocks
        unused = Cat(*[Mux(ndim > i, 0, shape[i]) for i in range(fmt.MAX_NDIM)])
        hlen = header_length(mode, ndim, ngroups)
        values = nblocks * Mux(desc.dtype == DType.FLOAT32, 4, 2) * 64
        bound = (((hlen + HEADER_CRC_BYTES + 63) >> 6) + ((nblocks * 2 + 63) >> 6)
                 + ((values + 63) >> 6) + 1) << 6
        sections = (protocol.SHAPE_BYTES + (((ngroups * SCALE_RECORD.size) + 63) >> 6 << 6)
                    + values)
        zero_entry = Cat(*[self.table[i] == 0 for i in range(TABLE_BYTES)]).any()
        with m.If((unused != 0) | geo.overflow | (nblocks != geo.nblocks)
                  | (ngroups != groups_of(mode, geo.groups))):
            fault(ErrorCode.BAD_DESCRIPTOR)
            finish(Next.DRAIN)
        with m.Elif(desc.in_bytes != sections):
            fault(ErrorCode.LENGTH)
            finish(Next.DRAIN)
        with m.Elif((bound > self.buffer) | (ngroups > self.max_groups)):
            fault(ErrorCode.TOO_LARGE)
            finish(Next.DRAIN)
        with m.Elif((mode == Mode.DCT) & ((crc.crc != desc.table_crc) | zero_entry)):
            fault(ErrorCode.TABLE_MISMATCH)
            finish(Next.DRAIN)
        with m.Else():
            m.next = "SCALES"
