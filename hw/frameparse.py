"""Frame parser: a frame's bytes in, its blocks out for the ``Decompressor`` (one index entry and
inverse scale per block, the block's payload bytes as its own beats) and a verdict per frame
that names every check of docs/format.md section 10 the frame failed.

The inverse of ``framebuild.FrameBuilder``: the builder packs the engine's per-block beats back
to back behind a header and an index; the parser keeps the index (it comes before the payload)
and cuts the packed payload back into per-block beats. It checks what a streaming reader can
check in integers (``FrameCheck``); two checks of section 10 need floating-point division and
are left to the host, which holds the frame before the card sees it: 12, a scale record's
float32 inverse against its mantissa and exponent, and 15a, which compares an ``eb`` frame's
scale with ``eb_scale(param)`` (the decoder multiplies by the frame's own inverse, so a
frame that fails them decodes to wrong values, never to a hang).
"""

import enum
import struct

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from actpack.codec import frame as fmt
from actpack.codec import spec
from actpack.codec.frame import (
    FIXED_HEADER,
    HEADER_CRC_BYTES,
    SCALE_RECORD,
    TABLE_BYTES,
    TRAILER,
    Kind,
    groups_of,
    header_length,
)
from actpack.codec.layout import in_enum
from actpack.codec.spec import DType, Mode
from actpack.errors import Check

from .beats import BEAT_BYTES, CodeBeat, IndexEntry
from .framebuild import SECTION, FrameBeat
from .geometry import ElementCount, Geometry, GroupWalker
from .quant import TableWrite

__all__ = ["FrameCheck", "FrameInfo", "FrameParser", "ParsedBlock", "Verdict", "frame_check",
           "param_bad", "scale_record_bad"]

_WORD = 8  # bytes the parser takes (and its CRC steps over) per cycle
_ENTRIES_PER_WORD = _WORD // 2
_ACC_BYTES = 2 * BEAT_BYTES  # realignment buffer: a full beat out while a word comes in
_MAGIC = int.from_bytes(fmt.MAGIC, "little")
_FIXED_WORDS = FIXED_HEADER.size // _WORD  # the fixed part of the header
_TRAILER_WORDS = TRAILER.size // _WORD
assert FIXED_HEADER.size % _WORD == 0 and SCALE_RECORD.size == _WORD


def _word_of(layout, name: str) -> int:
    """The 8-byte word of ``layout`` that holds the last byte of field ``name``."""
    return (layout.end(name) - 1) // _WORD


# Checks of docs/format.md section 10 that get no bit of their own: 3 (a newer version) shares
# 4's (the parser flags any version but 1), 12 and 15a are the host's (module docstring), and
# 23 on are the block decoders' (hw.blockdecode), reported per block, not in the verdict.
_SHARED_BIT = {Check.VERSION_NEWER: Check.VERSION}
_HOST_ONLY = frozenset({Check.SCALE_INVERSE, Check.EB_SCALE})


def _parser_checks() -> list[Check]:
    return [c for c in Check if not c.block and c not in _SHARED_BIT and c not in _HOST_ONLY]


FrameCheck = enum.IntEnum(
    "FrameCheck",
    [(c.name, bit) for bit, c in enumerate(_parser_checks())]
    # more blocks or groups than this parser holds (not a format error): above every check
    + [("CAPACITY", len(_parser_checks()))],
    module=__name__,
)
FrameCheck.__doc__ = """Bit of ``Verdict.errors`` per check of docs/format.md section 10 the parser
makes, derived from ``actpack.errors.Check`` (same names, that section's order, so the lowest
set bit is the check ``frame.parse_frame`` reports), then the card's own limit ``CAPACITY``."""


def frame_check(check: Check) -> FrameCheck | None:
    """The ``FrameCheck`` bit the parser sets for a frame that fails ``check``, or ``None`` for
    a check it leaves to the host or to the block decoders."""
    if check in _HOST_ONLY or check.block:
        return None
    return FrameCheck[_SHARED_BIT.get(check, check).name]


FrameInfo = data.StructLayout({"mode": unsigned(8), "dtype": unsigned(8), "nblocks": unsigned(32)})
"""A frame that passed its header and index checks: its mode and dtype (frame codes) and block
count, offered before its first block."""

ParsedBlock = data.StructLayout({"entry": IndexEntry, "r": unsigned(32)})
"""One block: its index entry and the float32 bits of its group's inverse scale (0 in mask mode)."""

Verdict = data.StructLayout({"errors": unsigned(len(FrameCheck)), "info": unsigned(1)})
"""The end of a frame: ``errors`` (``FrameCheck`` bits; 0 = good) and ``info``, whether a
``FrameInfo`` (and so blocks) went out for it."""

# binary64 bit patterns: a positive double's order is its bits' order
_BITS = {v: int.from_bytes(struct.pack("<d", v), "little")
         for v in (spec.RANGE_MIN_LIMIT, spec.RANGE_MAX_LIMIT, *spec.ERROR_BOUND_RANGE)}


def scale_record_bad(record):
    """docs/format.md 10 #11 on the 64 bits of a scale record (an Amaranth value): mantissa
    outside ``[2**15, 2**16)`` or exponent outside ``spec.SCALE_EXP_RANGE`` (the exponents
    encoders write; they keep the float32 inverse finite)."""
    rec = data.View(SCALE_RECORD.shape(), record)
    lo, hi = spec.SCALE_EXP_RANGE
    return (rec.mantissa < 1 << 15) | (rec.exponent < lo) | (rec.exponent > hi)


def param_bad(mode, param):
    """The range part of docs/format.md 10 #15 on a header's ``param`` (binary64 bits) for frame
    mode ``mode``: dct/sfpr8 ``range_max`` outside ``[1/16, 64]``, eb/eb2 error bound outside
    ``[1e-30, 1e30]``, mask not 0; an unknown mode fails elsewhere (#9), not here."""
    magnitude = param[:63]

    def outside(lo, hi):
        return param[63] | (magnitude < _BITS[lo]) | (magnitude > _BITS[hi])

    return Mux((mode == int(Mode.DCT)) | (mode == int(Mode.SFPR8)),
               outside(spec.RANGE_MIN_LIMIT, spec.RANGE_MAX_LIMIT),
               Mux((mode == int(Mode.EB)) | (mode == int(Mode.EB2)),
                   outside(*spec.ERROR_BOUND_RANGE),
                   (mode == int(Mode.MASK)) & (magnitude != 0)))


def _counter(m, counter, *, step, clear):
    """Drive ``counter`` (a register): up one on ``step``, to 0 on ``clear`` (which wins);
    returns its next value, the address a synchronous read port needs to have the row of the
    count on its data when the counter gets there."""
    nxt = Signal.like(counter, name=f"{counter.name}_next")
    m.d.comb += nxt.eq(Mux(clear, 0, counter + step))
    m.d.sync += counter.eq(nxt)
    return nxt


def _align_words(nbytes, width):
    """Words (of 8 bytes) in ``nbytes`` rounded up to a section (an Amaranth value)."""
    return (((nbytes + (SECTION - 1)) >> 6) << 3)[:width]


class FrameParser(wiring.Component):
    """Parse frames back to back.

    Ports (``lib.stream``; ``valid``/``payload`` never depend on ``ready``):

    - ``i``: the frames as ``FrameBeat``s, ``last`` on a frame's final beat (``tlast``). A frame
      is a whole number of beats here: the card flags an H2C transfer of another length itself.
    - ``info``: a ``FrameInfo`` per frame whose header and index passed, before its blocks;
    - ``blocks``: a ``ParsedBlock`` per block, in block order;
    - ``beats``: each CODED/DENSE/RAW block's payload as ``CodeBeat``s (16 bytes, the last with
      ``count`` and ``last``; bytes beyond ``count`` zero), never ahead of the block's entry;
    - ``verdict``: one ``Verdict`` per frame (good or not), after its last block and beat;
    - ``table_wr``: a ``dct`` frame's quantization table, one entry a cycle, written only while
      ``table_free`` (the engine holds no block of an earlier frame).

    Checks: every row of docs/format.md section 10 up to 22 but 12 and 15a (see the
    module docstring), as ``FrameCheck`` bits. A frame whose header or index fails gets
    no ``info`` and no blocks: its bytes are read to ``last`` and dropped. Trailer faults (body
    CRC, length, status, trailing bytes) are known only after the blocks went out: the verdict
    says so and the consumer discards what it decoded. A frame cut short inside its payload still
    gets the beats of every block whose entry went out, zero-filled, so no consumer waits for
    bytes that never come. Reset at any point leaves no state behind.

    Throughput: one 8-byte word a cycle on the input (two cycles a beat) in every section,
    header table words take 8 cycles (one table entry a cycle); out, one beat a cycle while the
    buffered bytes last. Per frame: about 10 cycles of section changes, the ``Geometry`` and
    ``ElementCount`` arithmetic if it outlasts the header (82 cycles; 93 and 106 for ranks 7
    and 8), and one cycle to hand over the verdict.
    Backpressure: each output holds its payload while its ``ready`` is low; ``blocks`` and
    ``beats`` stalls hold the payload section's input once the realignment buffer is full, and
    ``info``/``verdict`` stalls hold the next frame.
    Capacity: ``max_blocks`` index entries and ``max_groups`` scale records, in block RAM with
    synchronous reads that cost no cycle (memories sized at elaboration); a larger frame is read
    to ``last`` and flagged ``CAPACITY``.
    """

    def __init__(self, *, max_blocks: int = 4096, max_groups: int = 1024):
        if not isinstance(max_blocks, int) or max_blocks < _ENTRIES_PER_WORD \
                or max_blocks % _ENTRIES_PER_WORD:
            raise ValueError(f"max_blocks: expected a positive multiple of {_ENTRIES_PER_WORD}, "
                             f"got {max_blocks!r}")
        if not isinstance(max_groups, int) or max_groups < 1:
            raise ValueError(f"max_groups: expected a positive int, got {max_groups!r}")
        self.max_blocks, self.max_groups = max_blocks, max_groups
        super().__init__({
            "i": In(stream.Signature(FrameBeat)),
            "info": Out(stream.Signature(FrameInfo)),
            "blocks": Out(stream.Signature(ParsedBlock)),
            "beats": Out(stream.Signature(CodeBeat)),
            "verdict": Out(stream.Signature(Verdict)),
            "table_wr": Out(TableWrite()),
            "table_free": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        rows = self.max_blocks // _ENTRIES_PER_WORD
        m.submodules.mem_i = mem_i = Memory(shape=unsigned(64), depth=rows, init=[])
        m.submodules.mem_r = mem_r = Memory(shape=unsigned(32), depth=self.max_groups, init=[])
        m.submodules.geo = geo = Geometry(count_bits=32)
        m.submodules.numel = numel = ElementCount(count_bits=spec.NUMEL_BITS)
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=64).create()
        m.submodules.emitter = emitter = _BlockEmitter(max_blocks=self.max_blocks,
                                                       max_groups=self.max_groups)
        # Synchronous reads (block RAM), each costing no cycle (see ``_BlockEmitter``).
        for port, read in ((emitter.index_ent, mem_i.read_port()),
                           (emitter.index_beat, mem_i.read_port()),
                           (emitter.scales, mem_r.read_port())):
            wiring.connect(m, port, read)
        wiring.connect(m, wiring.flipped(self.blocks), emitter.blocks)
        wiring.connect(m, wiring.flipped(self.beats), emitter.beats)

        r = _Reader(m, self.i)
        fixed = r.fixed
        m.d.comb += [geo.shape.eq(r.shape), geo.ndim.eq(fixed.ndim), numel.shape.eq(r.shape),
                     numel.ndim.eq(fixed.ndim), crc.data.eq(r.word),
                     crc.valid.eq(r.take & r.crc_feed),
                     emitter.mode.eq(fixed.mode), emitter.nblocks.eq(fixed.nblocks),
                     emitter.blocks_per_plane.eq(geo.blocks_per_plane),
                     emitter.group_stride.eq(geo.group_stride), emitter.groups.eq(geo.groups),
                     emitter.run.eq(r.run), emitter.flush.eq(r.flush)]
        with m.If(self.info.valid & self.info.ready):
            m.d.sync += [self.info.valid.eq(0), r.info_sent.eq(1), r.run.eq(1)]

        with m.FSM(init="FIXED"):
            self._header_states(m, r, geo, numel, crc, mem_r.write_port())
            self._body_states(m, r, crc, emitter, mem_i.write_port(), rows)
            self._verdict_state(m, r, emitter)
        r.checks.drive()
        return m

    def _header_states(self, m, r, geo, numel, crc, wr):
        """FIXED, SHAPE, TABLE, SCALES, HCRC, HPAD: the header, word by word, with its checks;
        a header that failed any goes to DRAIN, a good one to INDEX."""
        fixed, word, off, fail = r.fixed, r.word, r.off, r.checks.fail
        mode, ndim, ngroups, nblocks = fixed.mode, fixed.ndim, fixed.ngroups, fixed.nblocks
        with m.State("FIXED"):
            fixed_in = Signal(FIXED_HEADER.shape())  # the fixed part with this cycle's word in
            m.d.comb += [r.take.eq(r.w_valid), r.crc_feed.eq(1), fixed_in.eq(fixed),
                         fixed_in.as_value().word_select(
                             off[:(_FIXED_WORDS - 1).bit_length()], 64).eq(word)]
            with m.If(off == 0):
                m.d.comb += crc.start.eq(1)
            with m.If(r.take):
                m.d.sync += fixed.eq(fixed_in)
                f = fixed_in

                def at(name):  # the word that completes field ``name`` is this one
                    return off == _word_of(FIXED_HEADER, name)

                fail(FrameCheck.NOT_FRAME, at("magic") & (f.magic != _MAGIC))
                fail(FrameCheck.VERSION, at("version") & (f.version != fmt.VERSION))
                fail(FrameCheck.NDIM, at("ndim") & (f.ndim > fmt.MAX_NDIM))
                fail(FrameCheck.NGROUPS, at("ngroups") & (f.ngroups > spec.MAX_GROUPS))
                fail(FrameCheck.CAPACITY, at("ngroups") & (f.ngroups > self.max_groups))
                fail(FrameCheck.CAPACITY, at("nblocks") & (f.nblocks > self.max_blocks))
                # the fixed part decides whether the rest can be read at all
                fatal = (FrameCheck.NOT_FRAME, FrameCheck.VERSION, FrameCheck.NDIM,
                         FrameCheck.NGROUPS)
                seen = r.checks.errors | r.checks.flag
                m.d.sync += [r.pos.eq(r.pos + 1), off.eq(off + 1)]
                with m.If(Cat(*[seen[c] for c in fatal]).any()):
                    m.next = "DRAIN"
                with m.Elif(off == _FIXED_WORDS - 1):
                    m.d.sync += off.eq(0)
                    m.next = "SHAPE"
                with m.If(r.w_last):
                    complete = off == _FIXED_WORDS - 1
                    fail(FrameCheck.TRUNCATED_FIXED, ~complete)
                    fail(FrameCheck.TRUNCATED_HEADER, complete)
                    m.next = "VERDICT"
        with m.State("SHAPE"):
            with m.If(off == ndim):
                # shape and ndim hold until the verdict
                m.d.comb += [geo.start.eq(1), numel.start.eq(1)]
                m.d.sync += [off.eq(0), r.h_words.eq(header_length(mode, ndim, ngroups) >> 3)]
                m.next = "TABLE"
            with m.Else():
                m.d.comb += [r.take.eq(r.w_valid), r.crc_feed.eq(1)]
                with m.If(r.take):
                    m.d.sync += r.shape[off[:3]].eq(word)
                    r.took(FrameCheck.TRUNCATED_HEADER)
        with m.State("TABLE"):
            with m.If((mode != Mode.DCT) | (off == TABLE_BYTES // _WORD)):
                m.d.sync += off.eq(0)
                m.next = "SCALES"
            with m.Elif(r.w_valid & self.table_free):
                # one entry a cycle into the engine's table; the word goes with the eighth
                entry = word.word_select(r.sub, 8)
                m.d.comb += [self.table_wr.addr.eq(Cat(r.sub, off[:3])),
                             self.table_wr.data.eq(entry), self.table_wr.en.eq(1),
                             r.take.eq(r.sub == _WORD - 1), r.crc_feed.eq(1)]
                fail(FrameCheck.TABLE_ZERO, entry == 0)
                m.d.sync += r.sub.eq(r.sub + 1)
                with m.If(r.take):
                    r.took(FrameCheck.TRUNCATED_HEADER)
        with m.State("SCALES"):
            with m.If(off == ngroups):
                m.d.sync += off.eq(0)
                m.next = "HCRC"
            with m.Else():
                m.d.comb += [r.take.eq(r.w_valid), r.crc_feed.eq(1)]
                with m.If(r.take):
                    fail(FrameCheck.SCALE, scale_record_bad(word))
                    with m.If(off < self.max_groups):
                        record = data.View(SCALE_RECORD.shape(), word)
                        m.d.comb += [wr.addr.eq(off), wr.data.eq(record.inverse), wr.en.eq(1)]
                    r.took(FrameCheck.TRUNCATED_HEADER)
        with m.State("HCRC"):
            # the CRC word: the header's checks that need it all are made here, once the
            # geometry is known
            m.d.comb += r.take.eq(r.w_valid & geo.done & numel.done)
            with m.If(r.take):
                fail(FrameCheck.HEADER_CRC, word[:32] != crc.crc)
                fail(FrameCheck.HEADER_PADDING, word[32:] != 0)
                known_mode = in_enum(mode, Mode)
                fail(FrameCheck.MODE_DTYPE, ~known_mode | ~in_enum(fixed.dtype, DType))
                fail(FrameCheck.NUMEL, numel.overflow)
                fail(FrameCheck.CAPACITY, geo.overflow)
                fail(FrameCheck.NBLOCKS, ~geo.overflow & (nblocks != geo.nblocks))
                groups = groups_of(mode, geo.groups)
                fail(FrameCheck.GROUPS, known_mode & ~geo.overflow & (ngroups != groups))
                fail(FrameCheck.PARAM, param_bad(mode, fixed.param))
                words_h = _align_words(r.h_words * 8 + HEADER_CRC_BYTES, 64)
                words_i = _align_words(nblocks * 2, 62)
                words_p = _align_words(fixed.payload_bytes, 62)
                m.d.sync += [r.i_words.eq(words_i), r.p_words.eq(words_p), off.eq(1),
                             r.length.eq((words_h + words_i + words_p) * 8 + TRAILER.size),
                             r.h_words.eq(words_h), r.p_left.eq(fixed.payload_bytes),
                             r.pos.eq(r.pos + 1)]
                m.next = "HPAD"
                with m.If(r.w_last):
                    fail(FrameCheck.TRUNCATED)
                    m.next = "VERDICT"
        with m.State("HPAD"):
            # h_words now counts every header word; ``pos`` the ones taken
            with m.If(r.pos == r.h_words):
                m.d.sync += off.eq(0)
                with m.If(r.checks.errors != 0):
                    m.next = "DRAIN"
                with m.Else():
                    m.d.comb += crc.start.eq(1)
                    m.next = "INDEX"
            with m.Else():
                m.d.comb += r.take.eq(r.w_valid)
                with m.If(r.take):
                    fail(FrameCheck.HEADER_PADDING, word != 0)
                    r.took(FrameCheck.TRUNCATED)

    def _body_states(self, m, r, crc, emitter, wi, rows):
        """INDEX, PAYLOAD, TRAILER, DRAIN: the index into memory with its entries' checks (then
        ``info`` for a good frame), the payload bytes to the emitter, the trailer's checks;
        DRAIN reads a rejected frame to its end."""
        fixed, word, off, fail = r.fixed, r.word, r.off, r.checks.fail
        with m.State("INDEX"):
            with m.If(off == r.i_words):
                m.d.sync += off.eq(0)
                fail(FrameCheck.INDEX_SUM, r.lengths != fixed.payload_bytes)
                with m.If(((r.checks.errors | r.checks.flag) == 0) & (fixed.nblocks != 0)):
                    m.d.sync += [r.emit.eq(1), self.info.valid.eq(1),
                                 self.info.payload.mode.eq(fixed.mode),
                                 self.info.payload.dtype.eq(fixed.dtype),
                                 self.info.payload.nblocks.eq(fixed.nblocks)]
                    m.d.comb += emitter.start.eq(1)
                m.next = "PAYLOAD"
            with m.Else():
                m.d.comb += [r.take.eq(r.w_valid), r.crc_feed.eq(1)]
                with m.If(r.take):
                    total = 0
                    for j in range(_ENTRIES_PER_WORD):
                        real = Cat(Const(j, 2), off) < fixed.nblocks
                        bad, length = _entry_bad(word.word_select(j, 16), fixed)
                        fail(FrameCheck.INDEX_ENTRY, real & bad)
                        total = total + Mux(real, length, 0)
                    m.d.sync += r.lengths.eq(r.lengths + total)
                    with m.If(off < rows):
                        m.d.comb += [wi.addr.eq(off), wi.data.eq(word), wi.en.eq(1)]
                    r.took(FrameCheck.TRUNCATED)
        with m.State("PAYLOAD"):
            with m.If(off == r.p_words):
                m.d.sync += off.eq(0)
                m.next = "TRAILER"
            with m.Else():
                real = Mux(r.p_left > _WORD, _WORD, r.p_left[:4])
                room = emitter.fill <= _ACC_BYTES - _WORD
                m.d.comb += [r.take.eq(r.w_valid & (~r.emit | (r.p_left == 0) | room)),
                             r.crc_feed.eq(1)]
                with m.If(r.take):
                    with m.If(r.emit):
                        keep = Cat(*[Mux(k < real, 0xFF, 0x00) for k in range(_WORD)])
                        m.d.comb += [emitter.push_n.eq(real), emitter.push_data.eq(word & keep)]
                    m.d.sync += r.p_left.eq(r.p_left - real)
                    r.took(FrameCheck.TRUNCATED)
        with m.State("TRAILER"):
            m.d.comb += r.take.eq(r.w_valid)
            with m.If(r.take):
                # this word in its place in the trailer, the others zero
                tr = Signal(TRAILER.shape())
                m.d.comb += tr.as_value().word_select(
                    off[:(_TRAILER_WORDS - 1).bit_length()], 64).eq(word)

                def at(name):
                    return off == _word_of(TRAILER, name)

                fail(FrameCheck.BODY_CRC, at("body_crc") & (tr.body_crc != crc.crc))
                fail(FrameCheck.STATUS, at("status") & (tr.status != 0))
                fail(FrameCheck.LENGTH, at("length") & (tr.length != r.length))
                fail(FrameCheck.TRAILER_RESERVED, tr.reserved != 0)
                m.d.sync += [r.pos.eq(r.pos + 1), off.eq(off + 1)]
                with m.If(off == _TRAILER_WORDS - 1):
                    with m.If(r.w_last):
                        m.next = "VERDICT"
                    with m.Else():
                        fail(FrameCheck.TRAILING)
                        m.next = "DRAIN"
                with m.Elif(r.w_last):
                    fail(FrameCheck.TRUNCATED)
                    m.d.sync += r.flush.eq(r.emit)
                    m.next = "VERDICT"
        with m.State("DRAIN"):
            m.d.comb += r.take.eq(r.w_valid)
            with m.If(r.take):
                m.d.sync += r.pos.eq(r.pos + 1)
                with m.If(r.w_last):
                    # a frame whose fixed part failed may also be too short for it
                    fail(FrameCheck.TRUNCATED_FIXED, r.pos < _FIXED_WORDS - 1)
                    m.next = "VERDICT"

    def _verdict_state(self, m, r, emitter):
        """VERDICT: once every block and beat is out, the verdict; once it is taken, every
        per-frame register starts over for the next frame."""
        with m.State("VERDICT"):
            with m.If(~emitter.busy & ~self.info.valid & ~self.verdict.valid):
                m.d.sync += [self.verdict.valid.eq(1),
                             self.verdict.payload.errors.eq(r.checks.errors),
                             self.verdict.payload.info.eq(r.info_sent)]
            with m.If(self.verdict.valid & self.verdict.ready):
                m.d.comb += emitter.clear.eq(1)
                m.d.sync += [
                    self.verdict.valid.eq(0), r.checks.errors.eq(0), r.pos.eq(0), r.off.eq(0),
                    r.lengths.eq(0), r.sub.eq(0), r.emit.eq(0), r.info_sent.eq(0),
                    r.flush.eq(0), r.run.eq(0), r.shape.eq(0), r.fixed.ndim.eq(0),
                    r.fixed.ngroups.eq(0),
                ]
                m.next = "FIXED"


def _entry_bad(bits, fixed):
    """docs/format.md 10 #21 on one index entry (16 bits) of a frame whose fixed header is
    ``fixed``: (the entry is bad, its length)."""
    e = data.View(IndexEntry, bits)
    mb = e.mb_minus_1 + 1
    raw_len = Mux(fixed.dtype == int(DType.FLOAT32), 4, 2) * 64
    kind = e.kind
    bad = Mux(kind == int(Kind.CODED), e.length < mb, Mux(
        kind == int(Kind.ZERO), e.length != 0,
        Mux(kind == int(Kind.RAW), e.length != raw_len,
            e.length < fmt.DENSE_HEADER)) | (e.mb_minus_1 != 0))
    # mask frames hold ZERO and CODED blocks of mask bytes only
    bad |= (fixed.mode == int(Mode.MASK)) & (
        (kind == int(Kind.RAW)) | (kind == int(Kind.DENSE))
        | ((kind == int(Kind.CODED)) & (e.length != mb)))
    return bad, e.length


class _Checks:
    """The verdict's bookkeeping. ``fail(check, cond)``, called in the context (FSM state,
    ``If``) where the condition is made, records that the word taken this cycle fails
    ``check`` when ``cond`` holds; ``flag`` is this cycle's failed checks, ``errors`` the
    frame's before this cycle. ``drive()`` once every check is recorded."""

    def __init__(self, m):
        self.m = m
        self.errors = Signal(len(FrameCheck))
        self.flag = Signal(len(FrameCheck))
        self._hits = {}  # check -> the conditions that fail it
        m.d.sync += self.errors.eq(self.errors | self.flag)

    def fail(self, check, cond=True):
        hits = self._hits.setdefault(check, [])
        hit = Signal(name=f"fail_{check.name.lower()}_{len(hits)}")
        self.m.d.comb += hit.eq(cond)
        hits.append(hit)

    def drive(self):
        for check, hits in self._hits.items():
            self.m.d.comb += self.flag[check].eq(Cat(*hits).any())


class _Reader:
    """The parser's per-frame registers and its word stream: ``i``'s 16-byte beats cut into
    8-byte ``word``s (low half first), one taken in each cycle the FSM raises ``take``
    (``crc_feed``: it goes into the running CRC). ``w_last``: the word ends the frame."""

    def __init__(self, m, i):
        self.m = m
        self.checks = _Checks(m)
        half = Signal()  # the beat's high word is next
        self.word = Signal(64)
        self.w_valid, self.w_last = Signal(), Signal()
        self.take = Signal()  # the word is consumed this cycle
        self.crc_feed = Signal()
        m.d.comb += [
            self.word.eq(Mux(half, i.payload.data[64:], i.payload.data[:64])),
            self.w_valid.eq(i.valid),
            self.w_last.eq(i.payload.last & half),
            i.ready.eq(self.take & half),
        ]
        with m.If(self.take):
            m.d.sync += half.eq(~half)

        self.pos = Signal(64)  # words taken in this frame before this one
        self.off = Signal(62)  # words taken in the current section
        self.fixed = Signal(FIXED_HEADER.shape())  # the header's fixed part as read
        self.shape = Signal(data.ArrayLayout(unsigned(64), fmt.MAX_NDIM))
        self.h_words = Signal(64)  # header words before its CRC: hlen / 8
        self.i_words = Signal(62)  # index section words
        self.p_words = Signal(62)  # payload section words
        self.length = Signal(64)  # frame bytes
        self.lengths = Signal(64)  # sum of the index entries' lengths
        self.p_left = Signal(64)  # payload bytes not yet passed to the emitter
        self.sub = Signal(range(_WORD))  # table entry of the word
        self.emit = Signal()  # this frame's blocks go out
        self.run = Signal()  # its ``info`` went out: the emitter works on it
        self.info_sent = Signal()
        self.flush = Signal()  # the frame ended early: complete the emitted blocks with zeros

    def took(self, truncated):
        """Bookkeeping of a taken word; a frame that ends here ends early (``truncated``)."""
        m = self.m
        m.d.sync += [self.pos.eq(self.pos + 1), self.off.eq(self.off + 1)]
        with m.If(self.w_last):
            self.checks.fail(truncated)
            m.d.sync += self.flush.eq(self.emit)
            m.next = "VERDICT"


class _BlockEmitter(wiring.Component):
    """A frame's blocks out of the index and scale memories and its payload bytes: per block a
    ``ParsedBlock`` (entry, group's inverse scale) on ``blocks``, then its bytes as
    ``CodeBeat``s on ``beats``.

    ``start`` (a pulse, with the geometry inputs valid) begins a frame at block 0; ``run``
    lets entries go out (one a cycle while ``blocks`` is ready, up to ``nblocks``) and beats
    (a block's bytes only after its entry went out; one beat a cycle while ``beats`` is ready
    and the bytes are in, plus one cycle per block to load its length); ``push_n`` bytes of
    ``push_data`` come in each cycle into a 32-byte realignment buffer holding ``fill`` bytes
    (the caller pushes at most 8, and only while ``fill`` <= 24). ``flush``: the frame ended
    early: no more entries, the blocks whose entry went out are completed with zero bytes.
    ``busy``: something of the frame is still to go out. ``clear`` (a pulse) empties it for
    the next frame. Backpressure: each output holds its payload while not ready.

    Memories: ``index_ent``/``index_beat`` read the index (four entries a row) and ``scales``
    the inverse scales, all synchronously (block RAM) at no cost in cycles: the index ports'
    addresses are their counters' next values, so the row is on the port when the counter gets
    there; the scale port reads as an entry goes out, and its data register is ``blocks.r``
    (0 in mask mode, group 0 in eb mode), held while ``blocks`` stalls.
    """

    def __init__(self, *, max_blocks: int, max_groups: int):
        self.max_blocks = max_blocks
        count = unsigned(32)
        rows = max_blocks // _ENTRIES_PER_WORD
        super().__init__({
            "start": In(1), "run": In(1), "flush": In(1), "clear": In(1),
            "mode": In(8), "nblocks": In(range(max_blocks + 1)),
            "blocks_per_plane": In(count), "group_stride": In(count), "groups": In(count),
            "push_n": In(range(_WORD + 1)), "push_data": In(64),
            "fill": Out(range(_ACC_BYTES + 1)), "busy": Out(1),
            "index_ent": In(ReadPort.Signature(addr_width=ceil_log2(rows), shape=unsigned(64))),
            "index_beat": In(ReadPort.Signature(addr_width=ceil_log2(rows),
                                                shape=unsigned(64))),
            "scales": In(ReadPort.Signature(addr_width=ceil_log2(max_groups),
                                            shape=unsigned(32))),
            "blocks": Out(stream.Signature(ParsedBlock)),
            "beats": Out(stream.Signature(CodeBeat)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.walker = walker = GroupWalker(count_bits=32)
        ent_next = Signal(range(self.max_blocks + 1))  # next block whose entry goes out
        bt_next = Signal(range(self.max_blocks + 1))  # next block whose bytes are loaded
        rem = Signal(11)  # bytes of the loaded block still to go out (any entry length)
        ent_go = Signal()
        bt_load = Signal()  # the beat emitter takes the next block's length
        blocks, beats, fill = self.blocks, self.beats, self.fill
        m.d.comb += [
            self.index_ent.addr.eq(_counter(m, ent_next, step=ent_go, clear=self.clear) >> 2),
            self.index_beat.addr.eq(_counter(m, bt_next, step=bt_load, clear=self.clear) >> 2),
            walker.blocks_per_plane.eq(self.blocks_per_plane),
            walker.group_stride.eq(self.group_stride), walker.groups.eq(self.groups),
            walker.start.eq(self.start), walker.next.eq(ent_go),
            self.scales.addr.eq(Mux(self.mode == Mode.EB, 0, walker.group)),
            self.scales.en.eq(ent_go),
            blocks.payload.r.eq(Mux(self.mode == Mode.MASK, 0, self.scales.data)),
            ent_go.eq(self.run & ~self.flush & (ent_next < self.nblocks)
                      & (~blocks.valid | blocks.ready)),
        ]
        with m.If(blocks.valid & blocks.ready):
            m.d.sync += blocks.valid.eq(0)
        with m.If(ent_go):
            entry = self.index_ent.data.word_select(ent_next[:2], 16)
            m.d.sync += [blocks.valid.eq(1), blocks.payload.entry.eq(entry)]

        # the beats: load the next block (only one whose entry went out), pop its bytes
        acc = Signal(8 * _ACC_BYTES)  # payload bytes not yet in a beat: the low ``fill``
        pop = Signal()  # a beat of ``n`` bytes leaves the buffer
        next_len = self.index_beat.data.word_select(bt_next[:2], 16)[:11]
        n = Signal(range(BEAT_BYTES + 1))
        m.d.comb += [n.eq(Mux(rem > BEAT_BYTES, BEAT_BYTES, rem)),
                     bt_load.eq(self.run & (rem == 0) & (bt_next < ent_next)),
                     pop.eq(~bt_load & self.run & (rem != 0) & (~beats.valid | beats.ready)
                            & ((fill >= n) | self.flush))]
        with m.If(beats.valid & beats.ready):
            m.d.sync += beats.valid.eq(0)
        with m.If(bt_load):
            m.d.sync += rem.eq(next_len)
        with m.Elif(pop):
            keep = Cat(*[Mux(k < n, 0xFF, 0x00) for k in range(BEAT_BYTES)])
            m.d.sync += [beats.valid.eq(1),
                         beats.payload.data.eq(acc[:8 * BEAT_BYTES] & keep),
                         beats.payload.count.eq(n),
                         beats.payload.last.eq(rem <= BEAT_BYTES),
                         rem.eq(rem - n)]
        # The buffer's next state with and without the pop, side by side: ``pop`` (late: it
        # waits on ``beats.ready`` and the fill comparison) only picks one.
        left = Signal.like(fill)  # bytes kept after a pop (a flushed pop may want more)
        m.d.comb += left.eq(Mux(fill > n, fill - n, 0))
        popped = (acc >> (n * 8)) | (self.push_data << (left * 8))
        kept = acc | (self.push_data << (fill * 8))
        with m.If(self.clear):
            m.d.sync += [rem.eq(0), acc.eq(0), fill.eq(0)]
        with m.Else():
            m.d.sync += [acc.eq(Mux(pop, popped, kept)),
                         fill.eq(Mux(pop, left, fill) + self.push_n)]
        m.d.comb += self.busy.eq(
            (self.run & (((ent_next < self.nblocks) & ~self.flush) | (bt_next < ent_next)
                         | (rem != 0))) | blocks.valid | beats.valid)
        return m
