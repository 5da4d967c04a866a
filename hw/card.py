"""The card's top level: jobs of docs/card.md section 3 in, frames, values and status records out.

``CardCore`` runs the job protocol on the card's 16-byte internal beats (``CodeBeat``: data,
count, last) next to the register file's card-side ports; ``Card`` puts it behind what a PCIe DMA
core gives user logic: AXI4-Stream ``h2c``/``c2h`` of ``stream_bytes`` (``hw.axis``) and the
AXI4-Lite ``bus`` of ``hw.regfile.RegisterFile``.

Per job (one H2C packet, one C2H message):

- **descriptor** (64 bytes): magic, CRC32C (as a residue over all 64 bytes), reserved bytes, op
  against CONTROL.OP;
- **fence** (op NONE): an OK status record;
- **compress**: the shape section into ``Geometry`` (nblocks and ngroups checked against it),
  the table window (CRC32C against ``table_crc``), the scale records (ranges), the parameter's
  range; then the header template into the ``FrameBuilder`` while the dct table goes into the
  engine, then the tiled values, a row (8 values) at a time with their block's group scale, into
  the ``Compressor`` of the job's mode and dtype; its index entries and payload into the
  builder, whose frame is the C2H message;
- **decompress**: the frame into the ``FrameParser``, its blocks into the ``Decompressor`` of the
  frame's mode and dtype, the decoded rows out as the values section, then a status record with
  the parser's verdict (or the first flagged block).

What the card takes on trust where the reference model (``host.cardmodel``) checks: the host's
tiles are edge-replicated padding and its scales are the reference's (``CONTRACT``), and a scale
record's float32 inverse matches its mantissa and exponent (a division the host has done).

Errors end a job with a status record (docs/card.md 3.4) after the input is read up to ``tlast``;
``LENGTH`` (the packet is not ``64 + in_bytes`` long) outranks every other code, as in the model.
Engines are reset between jobs and by ``CONTROL.SOFT_RESET``, which also drops the rest of the
packet in flight (STATUS.RESETTING while it drains) and whatever the job had not yet sent.
"""


import itertools

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
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
from actpack.codec.layout import in_enum
from actpack.codec.spec import DType, Mode

from . import protocol
from .axis import AxisToBeats, BeatsToAxis, axis_layout
from .beats import BEAT_BYTES, CodeBeat
from .compressor import Compressor
from .decompressor import Decompressor
from .framebuild import SECTION, FrameBuilder
from .frameparse import FrameCheck, FrameParser, param_bad, scale_record_bad
from .geometry import Geometry, GroupWalker
from .protocol import DESCRIPTOR, STATUS, ErrorCode, Op
from .quant import forward_table
from .regfile import AXI4Lite, RegisterFile
from .regs import GATEWARE_MODES, REGS, Caps, CardConfig, field_layout

__all__ = ["SIM_CARD", "SIM_PARAMS", "Card", "CardCore", "card_ports"]

_BEAT_BITS = 8 * BEAT_BYTES
_DESC_BEATS = DESCRIPTOR.size // BEAT_BYTES
_SHAPE_BEATS = protocol.SHAPE_BYTES // BEAT_BYTES
_TABLE_BEATS = TABLE_BYTES // BEAT_BYTES
_SECTION_BEATS = ALIGN // BEAT_BYTES
_STATUS_BEATS = STATUS.size // BEAT_BYTES
_STATUS_CRC_WORDS = STATUS.offset("crc") // 4  # the status CRC steps over 32-bit words
_RECORDS_PER_BEAT = BEAT_BYTES // SCALE_RECORD.size
_RECORD_SHIFT = _RECORDS_PER_BEAT.bit_length() - 1
_HEADER_WORD = 8  # the header template goes to the builder a 64-bit word a cycle
_DESC_SEL = (_DESC_BEATS - 1).bit_length()  # bits of a beat counter that pick the beat
_FIXED_WORDS = FIXED_HEADER.size // _HEADER_WORD
assert 1 << _RECORD_SHIFT == _RECORDS_PER_BEAT
assert FIXED_HEADER.size % _HEADER_WORD == 0 and SCALE_RECORD.size == _HEADER_WORD
_JOB_MAGIC = int.from_bytes(protocol.JOB_MAGIC, "little")
_STATUS_MAGIC = int.from_bytes(protocol.STATUS_MAGIC, "little")
_FRAME_MAGIC = int.from_bytes(fmt.MAGIC, "little")
_COUNTERS = [r for r in REGS if r.width == 64]

SIM_CARD = CardConfig(caps=Caps(modes=GATEWARE_MODES, dtypes=frozenset({DType.FLOAT32}),
                                stream_bytes=64), buffer_kib=1024)
"""The card ``actpack.open_device("sim")`` simulates: every mode the gateware has on float32 (what
``Policy.auto`` offloads), a 512-bit stream as an XDMA Gen3 x16 core gives, a 1 MiB frame buffer."""
SIM_PARAMS = {"max_groups": 256, "max_blocks": 16384}


def _engines(config: CardConfig):
    """The (mode, dtype) pairs a card build has engines for, in a fixed order."""
    return list(itertools.product(sorted(config.caps.modes), sorted(config.caps.dtypes)))


class _StatusWriter(wiring.Component):
    """A status record (``protocol.STATUS``, docs/card.md 3.4) as beats, ``last`` on the final
    one: ``start`` latches the fields; the CRC32C over the bytes before the ``crc`` field takes
    a 32-bit word a cycle, then the beats go out one a cycle. ``busy`` from ``start`` until the
    last beat is taken."""

    code: In(32)
    tag: In(32)
    op: In(32)
    bytes_in: In(64)
    bytes_out: In(64)
    detail: In(32)
    start: In(1)
    busy: Out(1)
    o: Out(stream.Signature(CodeBeat))

    def elaborate(self, platform):
        m = Module()
        rec = Signal(STATUS.shape())
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=32).create()
        k = Signal(range(max(_STATUS_CRC_WORDS, _STATUS_BEATS) + 1))
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [rec.eq(0), rec.magic.eq(_STATUS_MAGIC), rec.code.eq(self.code),
                             rec.tag.eq(self.tag), rec.op.eq(self.op),
                             rec.bytes_in.eq(self.bytes_in), rec.bytes_out.eq(self.bytes_out),
                             rec.detail.eq(self.detail)]
                m.d.sync += [k.eq(0), self.busy.eq(1)]
                m.d.comb += crc.start.eq(1)
                m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [crc.data.eq(rec.as_value().word_select(k, 32)), crc.valid.eq(1)]
                m.d.sync += k.eq(k + 1)
                with m.If(k == _STATUS_CRC_WORDS - 1):
                    m.d.sync += k.eq(0)
                    m.next = "SEAL"
            with m.State("SEAL"):
                m.d.sync += rec.crc.eq(crc.crc)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.o.valid.eq(1),
                             self.o.payload.data.eq(rec.as_value().word_select(k, _BEAT_BITS)),
                             self.o.payload.count.eq(BEAT_BYTES),
                             self.o.payload.last.eq(k == _STATUS_BEATS - 1)]
                with m.If(self.o.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == _STATUS_BEATS - 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
        return m


class CardCore(wiring.Component):
    """The job protocol on 16-byte beats (``CodeBeat``: ``count`` bytes valid, the low ones;
    only a packet's last beat may hold fewer than 16).

    Ports: ``h2c`` (in) and ``c2h`` (out) beats; the register file's card side: ``control``,
    ``table`` (in), ``status``, ``last_tag``, ``irq_set``, ``<counter>_inc`` (out), wired to a
    ``RegisterFile`` of the same ``config`` by ``Card``.

    Parameters: ``config`` (``CardConfig``: modes and dtypes with engines, compress/decompress,
    ``buffer_kib``, the frame buffer every compress job's ``frame_bound`` must fit), ``max_groups``
    (scale records a job may carry), ``max_blocks`` (a decompressed frame's blocks).

    Throughput: one beat a cycle on ``h2c`` while the engines keep up (compress: one row a cycle,
    a float32 row being two beats); ``c2h`` one beat a cycle (frames: the builder's 8 bytes a
    cycle). Backpressure: ``c2h`` stalls hold the engines, which stall ``h2c``; with CONTROL.RUN 0
    no job starts (``h2c`` stalls at a descriptor).
    """

    def __init__(self, *, config=None, max_groups: int = 256,
                 max_blocks: int = 4096):
        self.config = config if config is not None else CardConfig()
        if not isinstance(self.config, CardConfig):
            raise TypeError(f"config: expected a CardConfig, got {type(config).__name__}")
        for name, value in (("max_groups", max_groups), ("max_blocks", max_blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        caps = self.config.caps
        if caps.lanes != 1:
            raise ValueError(f"config: caps.lanes {caps.lanes}: the card top has one lane")
        if not caps.modes or not caps.dtypes:
            raise ValueError("config: caps needs at least one mode and one dtype")
        self.max_groups, self.max_blocks = max_groups, max_blocks
        ports = {
            "h2c": In(stream.Signature(CodeBeat)),
            "c2h": Out(stream.Signature(CodeBeat)),
            "control": In(field_layout(REGS.CONTROL)),
            "table": In(data.ArrayLayout(8, 4 * REGS.TABLE.count)),
            "status": Out(field_layout(REGS.STATUS)),
            "last_tag": Out(32),
            "irq_set": Out(field_layout(REGS.IRQ_STATUS)),
        }
        ports.update({f"{r.name.lower()}_inc": Out(16) for r in _COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        caps = self.config.caps
        buffer = self.config.buffer_kib * 1024
        job_reset = Signal()  # engines, builder and parser start every job clean

        def engine(name, component):
            m.submodules[name] = ResetInserter(job_reset)(component)
            return component

        pairs = _engines(self.config)
        comps = {p: engine(f"comp_{p[0].label}_{p[1].name.lower()}",
                           Compressor(mode=p[0], dtype=p[1]))
                 for p in (pairs if caps.compress else [])}
        decs = {p: engine(f"dec_{p[0].label}_{p[1].name.lower()}",
                          Decompressor(mode=p[0], dtype=p[1]))
                for p in (pairs if caps.decompress else [])}
        hdr_max = header_length(Mode.DCT, fmt.MAX_NDIM, self.max_groups) + HEADER_CRC_BYTES
        builder = engine("builder", FrameBuilder(
            max_header=-(-hdr_max // SECTION) * SECTION,
            max_blocks=max(SECTION, buffer // 128 // SECTION * SECTION), max_payload=buffer))
        parser = engine("parser", FrameParser(max_blocks=self.max_blocks,
                                              max_groups=self.max_groups))
        m.submodules.geo = geo = Geometry(count_bits=32)
        m.submodules.walker = walker = GroupWalker(count_bits=32)
        m.submodules.status_writer = sw = _StatusWriter()
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=_BEAT_BITS).create()
        # scale records, a beat's worth a row as they arrive
        m.submodules.scales = scales = Memory(shape=unsigned(_BEAT_BITS),
                                              depth=-(-self.max_groups // _RECORDS_PER_BEAT),
                                              init=[])
        sc_w = scales.write_port()
        sc_row = scales.read_port(domain="comb")  # the current block's group
        sc_hdr = scales.read_port(domain="comb")  # the header template's records

        # ------------------------------------------------------------ job registers
        desc = Signal(DESCRIPTOR.shape())
        op, mode, dtype, ndim = desc.op, desc.mode, desc.dtype, desc.ndim
        ngroups, nblocks, param = desc.ngroups, desc.nblocks, desc.param
        table_crc, tag, in_bytes = desc.table_crc, desc.tag, desc.in_bytes
        shape = Signal(data.ArrayLayout(64, fmt.MAX_NDIM))
        k = Signal(range(5 + fmt.MAX_NDIM + 8 + self.max_groups + 2))  # beats/words of a phase
        t = Signal(range(TABLE_BYTES + 1))  # table entries written
        bytes_in = Signal(64)  # this job's H2C bytes, descriptor included
        bytes_out = Signal(64)  # this job's C2H bytes
        code = Signal(8)  # the job's first fault (ErrorCode)
        desc_fault = Signal()  # the descriptor itself failed: LENGTH does not outrank it
        detail = Signal(32)
        seen_last = Signal()  # the packet's tlast is in
        rows = Signal(40)  # rows taken by the engine (compress) / given by it (decompress)
        rows_in = Signal(40)  # compress: rows assembled from the values section
        blocks_in = Signal(range(self.max_blocks + 1))
        sel = Signal(range(max(len(pairs), 1)))  # the job's engine
        drop = Signal()  # decompress: no engine for the frame: its blocks are dropped
        bad_block = Signal()  # decompress: an engine flagged a block
        jobs_done = Signal(16)
        last_tag = Signal(32)
        status_r = Signal(field_layout(REGS.STATUS))

        def fault(c, d=0):
            """Record ``c`` unless an earlier fault of this job is recorded."""
            with m.If(code == ErrorCode.OK):
                m.d.sync += [code.eq(c), detail.eq(d)]

        is_f32 = dtype == DType.FLOAT32
        is_dct = mode == Mode.DCT
        itemsize = Mux(is_f32, 4, 2)
        pair_match = [(mode == int(p[0])) & (dtype == int(p[1])) for p in pairs]
        total_rows = nblocks[:37] << 3
        record_code = Signal(8)  # what the status record says: LENGTH outranks later faults
        record_detail = Signal(32)
        length_fault = seen_last & ~desc_fault & (bytes_in != in_bytes + DESCRIPTOR.size)
        m.d.comb += [record_code.eq(Mux(length_fault, ErrorCode.LENGTH, code)),
                     record_detail.eq(Mux(length_fault | (code == ErrorCode.LENGTH),
                                          bytes_in - DESCRIPTOR.size, detail))]

        # ------------------------------------------------------------ H2C accounting
        h2c_take = self.h2c.valid & self.h2c.ready
        m.d.comb += self.bytes_in_inc.eq(Mux(h2c_take, self.h2c.payload.count, 0))
        with m.If(h2c_take):
            m.d.sync += bytes_in.eq(bytes_in + self.h2c.payload.count)
            with m.If(self.h2c.payload.last):
                m.d.sync += seen_last.eq(1)

        # ------------------------------------------------------------ C2H: one source a phase
        src_frame, src_values, src_status = Signal(), Signal(), Signal()
        vrow = Signal(2 * _BEAT_BITS)  # decoded row being sent (float32: two beats)
        v_valid, v_half, v_wide = Signal(), Signal(), Signal()
        with m.If(src_frame):
            m.d.comb += [self.c2h.valid.eq(builder.o.valid),
                         self.c2h.payload.data.eq(builder.o.payload.data),
                         self.c2h.payload.count.eq(BEAT_BYTES),
                         self.c2h.payload.last.eq(builder.o.payload.last),
                         builder.o.ready.eq(self.c2h.ready)]
        with m.Elif(src_values):
            m.d.comb += [self.c2h.valid.eq(v_valid),
                         self.c2h.payload.data.eq(Mux(v_half, vrow[_BEAT_BITS:],
                                                      vrow[:_BEAT_BITS])),
                         self.c2h.payload.count.eq(BEAT_BYTES)]
        with m.Elif(src_status):
            wiring.connect(m, sw.o, wiring.flipped(self.c2h))
        c2h_take = self.c2h.valid & self.c2h.ready
        m.d.comb += self.bytes_out_inc.eq(Mux(c2h_take, self.c2h.payload.count, 0))
        with m.If(c2h_take):
            m.d.sync += bytes_out.eq(bytes_out + self.c2h.payload.count)

        # decoded rows -> values beats (a float32 row is two beats)
        row_done = src_values & v_valid & self.c2h.ready & (v_half | ~v_wide)
        with m.If(row_done):
            m.d.sync += v_valid.eq(0)
        with m.If(src_values & v_valid & self.c2h.ready & v_wide & ~v_half):
            m.d.sync += v_half.eq(1)
        row_free = ~v_valid | row_done
        for i, (p, dec) in enumerate(decs.items()):
            row = dec.o.payload[0]
            m.d.comb += dec.o.ready.eq((sel == i) & row_free)
            with m.If(dec.o.valid & dec.o.ready):
                m.d.sync += [vrow.eq(row.x.as_value()), v_valid.eq(1), v_half.eq(0),
                             v_wide.eq(p[1] is DType.FLOAT32), rows.eq(rows + 1)]
                with m.If(row.last & (row.error != 0) & ~bad_block):
                    m.d.sync += [bad_block.eq(1), detail.eq(rows >> 3)]

        # ------------------------------------------------------------ decompress plumbing
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

        # ------------------------------------------------------------ compress plumbing
        r_lo = Signal(_BEAT_BITS)  # first beat of a float32 row
        r_valid, r_half = Signal(), Signal()
        r_bits = Signal(2 * _BEAT_BITS)
        group = Mux(mode == Mode.EB, 0, walker.group)
        m.d.comb += [sc_row.addr.eq(group >> _RECORD_SHIFT),
                     walker.blocks_per_plane.eq(geo.blocks_per_plane),
                     walker.group_stride.eq(geo.group_stride), walker.groups.eq(geo.groups),
                     geo.shape.eq(shape), geo.ndim.eq(ndim)]
        rec = data.View(SCALE_RECORD.shape(), sc_row.data.word_select(
            group[:_RECORD_SHIFT], 8 * SCALE_RECORD.size))
        r_take = Signal()
        table_load = Signal()
        for i, (p, comp) in enumerate(comps.items()):
            row = comp.i.payload[0]
            m.d.comb += [comp.i.valid.eq(r_valid & (sel == i)),
                         row.x.eq(r_bits[:row.x.shape().size])]
            if p[0] is not Mode.MASK:
                m.d.comb += [row.scale.m.eq(rec.mantissa), row.scale.e.eq(rec.exponent)]
            if p[0] is Mode.EB:
                m.d.comb += [row.r.eq(rec.inverse), row.eb.eq(param)]
            if p[0] is Mode.DCT:
                m.d.comb += [comp.table_wr.addr.eq(t), comp.table_wr.data.eq(self.table[t[:6]]),
                             comp.table_wr.en.eq(table_load & (sel == i))]
            with m.If(sel == i):
                m.d.comb += [r_take.eq(comp.i.ready & r_valid),
                             builder.index.valid.eq(comp.index.valid),
                             builder.index.payload.eq(comp.index.payload),
                             comp.index.ready.eq(builder.index.ready),
                             builder.payload.valid.eq(comp.o.valid),
                             builder.payload.payload.eq(comp.o.payload),
                             comp.o.ready.eq(builder.payload.ready)]
        with m.If(r_take):
            m.d.sync += [r_valid.eq(0), rows.eq(rows + 1)]
            with m.If(rows[:3] == 7):
                m.d.comb += walker.next.eq(1)
        m.d.comb += builder.status.eq(0)

        # the header template (format.md 2.1 without its CRC), a word a cycle: the fixed part
        # (payload_bytes 0: the builder counts it), the shape, the table (dct), the records
        fixed = Signal(FIXED_HEADER.shape())
        m.d.comb += [fixed.magic.eq(_FRAME_MAGIC), fixed.version.eq(fmt.VERSION),
                     fixed.mode.eq(mode), fixed.dtype.eq(dtype), fixed.ndim.eq(ndim),
                     fixed.table_id.eq(desc.table_id), fixed.table_arg.eq(desc.table_arg),
                     fixed.ngroups.eq(ngroups), fixed.nblocks.eq(nblocks), fixed.param.eq(param)]
        n_shape = _FIXED_WORDS + ndim
        n_table = n_shape + Mux(is_dct, TABLE_BYTES // _HEADER_WORD, 0)
        n_words = (header_length(mode, ndim, ngroups) >> 3)[:len(k)]  # 8-byte words
        g = (k - n_table)[:len(k)]
        m.d.comb += sc_hdr.addr.eq(g >> _RECORD_SHIFT)
        hdr_word = Signal(64)
        with m.If(k < _FIXED_WORDS):
            m.d.comb += hdr_word.eq(fixed.as_value().word_select(
                k[:(_FIXED_WORDS - 1).bit_length()], 64))
        with m.Elif(k < n_shape):
            m.d.comb += hdr_word.eq(shape[(k - _FIXED_WORDS)[:3]])
        with m.Elif(k < n_table):
            m.d.comb += hdr_word.eq(self.table.as_value().word_select((k - n_shape)[:3], 64))
        with m.Else():
            m.d.comb += hdr_word.eq(sc_hdr.data.word_select(g[:_RECORD_SHIFT], 64))
        hb = builder.header
        hdr_lo, hdr_half = Signal(64), Signal()

        # ------------------------------------------------------------ register-side outputs
        m.d.comb += [self.status.eq(status_r), self.last_tag.eq(last_tag)]

        def end_job():
            """Counters, STATUS, LAST_TAG and IRQ causes of a job that ends with
            ``record_code``."""
            crc_fault = Cat(*[record_code == c for c in ErrorCode if c.is_crc]).any() \
                | ((record_code == ErrorCode.BAD_DESCRIPTOR) & desc_fault & (detail == 1))
            ok = record_code == ErrorCode.OK
            m.d.comb += [self.frames_inc.eq(ok & (op != Op.NONE)),
                         self.crc_errors_inc.eq(~ok & crc_fault),
                         self.protocol_errors_inc.eq(~ok & ~crc_fault),
                         self.irq_set.job_done.eq(1), self.irq_set.job_error.eq(~ok),
                         self.irq_set.crc_error.eq(~ok & crc_fault),
                         self.irq_set.protocol_error.eq(~ok & ~crc_fault)]
            m.d.sync += [jobs_done.eq(jobs_done + 1), last_tag.eq(tag),
                         status_r.error.eq(~ok), status_r.last_code.eq(record_code),
                         status_r.jobs_done.eq(jobs_done + 1)]

        m.d.comb += [sw.code.eq(record_code), sw.tag.eq(tag), sw.op.eq(op),
                     sw.bytes_in.eq(bytes_in), sw.bytes_out.eq(bytes_out),
                     sw.detail.eq(record_detail)]

        # ------------------------------------------------------------ the job machine
        with m.FSM(init="IDLE") as fsm:
            m.d.comb += [self.status.busy.eq(~fsm.ongoing("IDLE")),
                         src_frame.eq(fsm.ongoing("FRAME")), src_values.eq(fsm.ongoing("DEC")),
                         src_status.eq(fsm.ongoing("STATUS_OUT"))]
            with m.State("IDLE"):
                m.d.comb += job_reset.eq(1)
                m.d.sync += [k.eq(0), t.eq(0), bytes_in.eq(0), bytes_out.eq(0), code.eq(0),
                             desc_fault.eq(0), detail.eq(0), seen_last.eq(0), rows.eq(0),
                             rows_in.eq(0), blocks_in.eq(0), drop.eq(0), bad_block.eq(0),
                             r_valid.eq(0), r_half.eq(0), hdr_half.eq(0), v_valid.eq(0),
                             hb.valid.eq(0)]
                with m.If(self.control.run & self.h2c.valid):
                    m.d.comb += crc.start.eq(1)
                    m.next = "DESC"
            with m.State("DESC"):
                m.d.comb += [self.h2c.ready.eq(1), crc.data.eq(self.h2c.payload.data),
                             crc.valid.eq(h2c_take)]
                with m.If(h2c_take):
                    m.d.sync += [desc.as_value().word_select(k[:_DESC_SEL], _BEAT_BITS).eq(
                                 self.h2c.payload.data), k.eq(k + 1)]
                    with m.If(self.h2c.payload.last & (k != _DESC_BEATS - 1)):
                        # shorter than a descriptor (the model's "magic" complaint)
                        m.d.sync += [code.eq(ErrorCode.BAD_DESCRIPTOR), desc_fault.eq(1),
                                     desc.eq(0)]
                        m.next = "STATUS"
                    with m.Elif(k == _DESC_BEATS - 1):
                        m.d.sync += k.eq(0)
                        m.next = "CHECK"
            with m.State("CHECK"):
                magic_ok = desc.magic == _JOB_MAGIC
                reserved_ok = (desc.flags == 0) & (desc.reserved == 0)
                with m.If(~magic_ok | ~crc.match_detected | ~reserved_ok | ~in_enum(op, Op)):
                    # the model reports tag 0 and op 0 for a descriptor it cannot parse
                    m.d.sync += [code.eq(ErrorCode.BAD_DESCRIPTOR), desc_fault.eq(1),
                                 detail.eq(magic_ok & ~crc.match_detected), desc.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(op != self.control.op):
                    m.d.sync += [code.eq(ErrorCode.BAD_OP), desc_fault.eq(1), detail.eq(op)]
                    m.next = "DRAIN"
                with m.Elif(op == Op.NONE):
                    m.next = "DRAIN"  # a fence
                with m.Elif(op == Op.DECOMPRESS):
                    if not caps.decompress:
                        m.d.sync += code.eq(ErrorCode.UNSUPPORTED)
                        m.next = "DRAIN"
                    else:
                        with m.If(seen_last):
                            m.d.sync += code.eq(ErrorCode.BAD_FRAME)  # no frame at all
                            m.next = "STATUS"
                        with m.Else():
                            m.next = "DEC"
                with m.Else():
                    with m.If(~in_enum(mode, Mode) | ~in_enum(dtype, DType)
                              | (ndim > fmt.MAX_NDIM)):
                        m.d.sync += code.eq(ErrorCode.BAD_DESCRIPTOR)
                        m.next = "DRAIN"
                    with m.Elif(~Cat(*pair_match, Const(0, 1)).any()):
                        m.d.sync += [code.eq(ErrorCode.UNSUPPORTED), detail.eq(Cat(mode, dtype))]
                        m.next = "DRAIN"
                    with m.Else():
                        for i, hit in enumerate(pair_match):
                            with m.If(hit):
                                m.d.sync += sel.eq(i)
                        m.next = "SHAPE"

            # ---------------------------------------------------------------- decompress
            with m.State("DEC"):
                m.d.comb += [parser.i.valid.eq(self.h2c.valid & ~seen_last),
                             parser.i.payload.data.eq(self.h2c.payload.data),
                             parser.i.payload.last.eq(self.h2c.payload.last),
                             self.h2c.ready.eq(parser.i.ready & ~seen_last),
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
                m.d.comb += parser.verdict.ready.eq(~v_valid & (rows == (blocks_in << 3)))
                with m.If(parser.verdict.valid & parser.verdict.ready):
                    errors = parser.verdict.payload.errors
                    lowest = Signal(range(len(FrameCheck)))
                    for c in reversed(FrameCheck):
                        with m.If(errors[c]):
                            m.d.comb += lowest.eq(c)
                    with m.If(errors != 0):
                        fault(Mux(lowest == FrameCheck.HEADER_CRC, ErrorCode.HEADER_CRC,
                                  Mux(lowest == FrameCheck.BODY_CRC, ErrorCode.BODY_CRC,
                                      Mux(lowest == FrameCheck.CAPACITY, ErrorCode.TOO_LARGE,
                                          ErrorCode.BAD_FRAME))))
                    with m.Elif(bad_block):
                        fault(ErrorCode.BAD_FRAME, detail)
                    m.next = "DRAIN"

            # ---------------------------------------------------------------- compress
            with m.State("SHAPE"):
                with m.If(k == _SHAPE_BEATS):
                    m.d.sync += k.eq(0)
                    m.d.comb += crc.start.eq(1)
                    m.next = "GEO"
                with m.Elif(seen_last):
                    m.next = "STATUS"  # LENGTH
                with m.Else():
                    m.d.comb += self.h2c.ready.eq(1)
                    with m.If(h2c_take):
                        m.d.sync += [shape.as_value().word_select(
                            k[:(_SHAPE_BEATS - 1).bit_length()], _BEAT_BITS).eq(
                            self.h2c.payload.data), k.eq(k + 1)]
            with m.State("GEO"):
                with m.If(k == 0):
                    m.d.comb += geo.start.eq(1)
                with m.If(k < _TABLE_BEATS):  # the table window's CRC, a beat a cycle
                    m.d.comb += [crc.data.eq(self.table.as_value().word_select(
                                     k[:(_TABLE_BEATS - 1).bit_length()], _BEAT_BITS)),
                                 crc.valid.eq(1)]
                    m.d.sync += k.eq(k + 1)
                with m.Elif(geo.done):
                    m.d.sync += k.eq(0)
                    groups = groups_of(mode, geo.groups)
                    unused = Cat(*[Mux(ndim > i, 0, shape[i]) for i in range(fmt.MAX_NDIM)])
                    hlen = header_length(mode, ndim, ngroups)
                    values = nblocks * itemsize * 64
                    bound = (((hlen + HEADER_CRC_BYTES + 63) >> 6) + ((nblocks * 2 + 63) >> 6)
                             + ((values + 63) >> 6) + 1) << 6
                    sections = (protocol.SHAPE_BYTES
                                + (((ngroups * SCALE_RECORD.size) + 63) >> 6 << 6) + values)
                    zero_entry = Cat(*[self.table[i] == 0 for i in range(TABLE_BYTES)]).any()
                    with m.If((unused != 0) | geo.overflow | (nblocks != geo.nblocks)
                              | (ngroups != groups)):
                        m.d.sync += code.eq(ErrorCode.BAD_DESCRIPTOR)
                        m.next = "DRAIN"
                    with m.Elif(in_bytes != sections):
                        m.d.sync += code.eq(ErrorCode.LENGTH)
                        m.next = "DRAIN"
                    with m.Elif((bound > buffer) | (ngroups > self.max_groups)):
                        m.d.sync += code.eq(ErrorCode.TOO_LARGE)
                        m.next = "DRAIN"
                    with m.Elif(is_dct & ((crc.crc != table_crc) | zero_entry)):
                        m.d.sync += code.eq(ErrorCode.TABLE_MISMATCH)
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "SCALES"
            with m.State("SCALES"):
                # beats of the 64-aligned section
                section = ((ngroups * SCALE_RECORD.size + 63) >> 6) * _SECTION_BEATS
                with m.If(k == section):
                    m.d.sync += k.eq(0)
                    with m.If(code != ErrorCode.OK):
                        m.next = "DRAIN"
                    with m.Elif(param_bad(mode, param)):
                        m.d.sync += code.eq(ErrorCode.BAD_DESCRIPTOR)
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "HEADER"
                with m.Elif(seen_last):
                    m.next = "STATUS"  # LENGTH
                with m.Else():
                    m.d.comb += [self.h2c.ready.eq(1), sc_w.addr.eq(k),
                                 sc_w.data.eq(self.h2c.payload.data), sc_w.en.eq(h2c_take)]
                    with m.If(h2c_take):
                        m.d.sync += k.eq(k + 1)
                        for j in range(_RECORDS_PER_BEAT):
                            record = self.h2c.payload.data.word_select(
                                j, 8 * SCALE_RECORD.size)
                            idx = Cat(Const(j, _RECORD_SHIFT), k)
                            with m.If((idx < ngroups) & scale_record_bad(record)):
                                fault(ErrorCode.BAD_DESCRIPTOR, idx)
            with m.State("HEADER"):
                # header template words into the builder, two a beat; the dct table into the
                # engine meanwhile, an entry a cycle
                with m.If(is_dct & (t < TABLE_BYTES)):
                    m.d.comb += table_load.eq(1)
                    m.d.sync += t.eq(t + 1)
                with m.If(hb.valid & hb.ready):
                    m.d.sync += hb.valid.eq(0)
                free = ~hb.valid | hb.ready
                with m.If(free & (k < n_words)):
                    m.d.sync += k.eq(k + 1)
                    with m.If(~hdr_half & (k + 1 < n_words)):
                        m.d.sync += [hdr_lo.eq(hdr_word), hdr_half.eq(1)]
                    with m.Else():
                        m.d.sync += [hb.valid.eq(1), hdr_half.eq(0),
                                     hb.payload.data.eq(Mux(hdr_half, Cat(hdr_lo, hdr_word),
                                                            hdr_word)),
                                     hb.payload.count.eq(Mux(hdr_half, 16, 8)),
                                     hb.payload.last.eq(k + 1 == n_words)]
                with m.If((k == n_words) & free & (~is_dct | (t == TABLE_BYTES))):
                    m.d.sync += [k.eq(0), hb.valid.eq(0)]
                    m.d.comb += walker.start.eq(1)
                    m.next = "VALUES"
            with m.State("VALUES"):
                can_load = ~r_valid | r_take
                with m.If(rows_in == total_rows):
                    with m.If(~r_valid):
                        m.next = "FRAME"
                    with m.If(~seen_last):
                        m.next = "DRAIN"  # more bytes than announced: LENGTH
                with m.Elif(seen_last):
                    m.next = "STATUS"  # fewer: LENGTH
                with m.Elif(is_f32 & ~r_half):
                    m.d.comb += self.h2c.ready.eq(1)
                    with m.If(h2c_take):
                        m.d.sync += [r_lo.eq(self.h2c.payload.data), r_half.eq(1)]
                with m.Else():
                    m.d.comb += self.h2c.ready.eq(can_load)
                    with m.If(h2c_take):
                        m.d.sync += [r_bits.eq(Mux(is_f32, Cat(r_lo, self.h2c.payload.data),
                                                   self.h2c.payload.data)),
                                     r_valid.eq(1), r_half.eq(0), rows_in.eq(rows_in + 1)]
            with m.State("FRAME"), m.If(c2h_take & self.c2h.payload.last):
                m.next = "DONE"

            # ---------------------------------------------------------------- endings
            with m.State("DRAIN"):
                m.d.comb += self.h2c.ready.eq(~seen_last)
                with m.If(seen_last | (h2c_take & self.h2c.payload.last)):
                    m.next = "STATUS"
            with m.State("STATUS"):
                m.d.comb += sw.start.eq(1)
                m.next = "STATUS_OUT"
            with m.State("STATUS_OUT"), m.If(~sw.busy):
                m.next = "DONE"
            with m.State("DONE"):
                end_job()
                m.next = "IDLE"
        return m


def card_ports(stream_bytes: int) -> dict:
    """The card top's ports, what a PCIe DMA core gives user logic: ``bus`` (AXI4-Lite slave),
    ``h2c`` / ``c2h`` (AXI4-Stream of ``stream_bytes`` bytes, ``hw.axis``), ``irq``."""
    layout = axis_layout(stream_bytes)  # validates stream_bytes
    return {"bus": In(AXI4Lite()), "h2c": In(stream.Signature(layout)),
            "c2h": Out(stream.Signature(layout)), "irq": Out(1)}


class Card(wiring.Component):
    """The card as a PCIe DMA core's user logic: ``bus`` (AXI4-Lite slave, the XDMA core's
    ``M_AXI_LITE``: ``hw.regfile.RegisterFile``), ``h2c`` / ``c2h`` (AXI4-Stream of
    ``config.caps.stream_bytes`` bytes, ``hw.axis``), ``irq`` (IRQ_STATUS & IRQ_ENABLE).

    ``AxisToBeats`` -> ``CardCore`` -> ``BeatsToAxis``, the register file between the host and the
    core's card-side ports. CONTROL.SOFT_RESET resets the core and both adapters (the job in
    flight and whatever it had not sent are gone) and, if an H2C packet is open, drops its bytes
    up to ``tlast`` with STATUS.RESETTING high; counters and the TABLE window stay. Parameters
    as ``CardCore``.
    """

    def __init__(self, *, config=None, max_groups: int = 256, max_blocks: int = 4096):
        self.config = config if config is not None else CardConfig()
        self.max_groups, self.max_blocks = max_groups, max_blocks
        super().__init__(card_ports(self.config.caps.stream_bytes))

    def elaborate(self, platform):
        m = Module()
        n = self.config.caps.stream_bytes
        m.submodules.regs = regs = RegisterFile(config=self.config)
        soft_reset = regs.control.soft_reset
        core = CardCore(config=self.config, max_groups=self.max_groups,
                        max_blocks=self.max_blocks)
        to_beats, to_axis = AxisToBeats(stream_bytes=n), BeatsToAxis(stream_bytes=n)
        m.submodules.core = ResetInserter(soft_reset)(core)
        m.submodules.to_beats = ResetInserter(soft_reset)(to_beats)
        m.submodules.to_axis = ResetInserter(soft_reset)(to_axis)
        wiring.connect(m, wiring.flipped(self.bus), regs.bus)
        wiring.connect(m, to_beats.o, core.h2c)
        wiring.connect(m, core.c2h, to_axis.i)
        wiring.connect(m, to_axis.o, wiring.flipped(self.c2h))

        # an H2C packet is open from its first beat to its tlast, across a soft reset
        in_packet, draining = Signal(), Signal()
        h2c_take = self.h2c.valid & self.h2c.ready
        with m.If(h2c_take):
            m.d.sync += in_packet.eq(~self.h2c.payload.last)
        with m.If(soft_reset):
            m.d.sync += draining.eq(in_packet & ~(h2c_take & self.h2c.payload.last))
        with m.Elif(draining & h2c_take & self.h2c.payload.last):
            m.d.sync += draining.eq(0)
        with m.If(draining | soft_reset):
            m.d.comb += self.h2c.ready.eq(1)  # dropped
        with m.Else():
            m.d.comb += [to_beats.i.valid.eq(self.h2c.valid),
                         to_beats.i.payload.eq(self.h2c.payload),
                         self.h2c.ready.eq(to_beats.i.ready)]

        m.d.comb += [core.control.eq(regs.control), core.table.eq(regs.table),
                     regs.status.eq(core.status), regs.status.resetting.eq(draining),
                     regs.last_tag.eq(core.last_tag), regs.irq_set.eq(core.irq_set),
                     self.irq.eq(regs.irq)]
        for r in _COUNTERS:
            name = f"{r.name.lower()}_inc"
            m.d.comb += getattr(regs, name).eq(getattr(core, name))
        return m
