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
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

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
    Capacity: ``max_blocks`` index entries and ``max_groups`` scale records (memories sized at
    elaboration); a larger frame is read to ``last`` and flagged ``CAPACITY``.
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
        wi, wr = mem_i.write_port(), mem_r.write_port()
        ri_ent, ri_beat = mem_i.read_port(domain="comb"), mem_i.read_port(domain="comb")
        rr = mem_r.read_port(domain="comb")
        m.submodules.geo = geo = Geometry(count_bits=32)
        m.submodules.walker = walker = GroupWalker(count_bits=32)
        m.submodules.numel = numel = ElementCount(count_bits=spec.NUMEL_BITS)
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=64).create()

        # ------------------------------------------------------------ words out of beats
        half = Signal()  # the beat's high word is next
        word = Signal(64)
        w_valid, w_last = Signal(), Signal()
        take = Signal()  # the word is consumed this cycle
        m.d.comb += [
            word.eq(Mux(half, self.i.payload.data[64:], self.i.payload.data[:64])),
            w_valid.eq(self.i.valid),
            w_last.eq(self.i.payload.last & half),
            self.i.ready.eq(take & half),
        ]
        with m.If(take):
            m.d.sync += half.eq(~half)

        # ------------------------------------------------------------ frame state
        errors = Signal(len(FrameCheck))
        flag = Signal(len(FrameCheck))  # checks failed by the word taken this cycle
        m.d.sync += errors.eq(errors | flag)

        fails = {}  # check -> the conditions (each set in its context) that fail it

        def fail(check, cond=True):
            hit = Signal(name=f"fail_{check.name.lower()}_{len(fails.get(check, []))}")
            m.d.comb += hit.eq(cond)
            fails.setdefault(check, []).append(hit)

        pos = Signal(64)  # words taken in this frame before this one
        off = Signal(62)  # words taken in the current section
        fixed = Signal(FIXED_HEADER.shape())  # the header's fixed part as read
        fixed_in = Signal(FIXED_HEADER.shape())  # the same with this cycle's word in
        mode, dtype, ndim = fixed.mode, fixed.dtype, fixed.ndim
        ngroups, nblocks = fixed.ngroups, fixed.nblocks
        payload_bytes, param = fixed.payload_bytes, fixed.param
        shape = Signal(data.ArrayLayout(unsigned(64), fmt.MAX_NDIM))
        h_words = Signal(64)  # header words before its CRC: hlen / 8
        i_words = Signal(62)  # index section words
        p_words = Signal(62)  # payload section words
        length = Signal(64)  # frame bytes
        lengths = Signal(64)  # sum of the index entries' lengths
        p_left = Signal(64)  # payload bytes not yet passed to the realigner
        sub = Signal(range(_WORD))  # table entry of the word
        emit = Signal()  # this frame's blocks go out
        info_sent = Signal()
        flush = Signal()  # the frame ended early: complete the emitted blocks with zeros

        is_dct = mode == Mode.DCT
        itemsize = Mux(dtype == int(DType.FLOAT32), 4, 2)
        m.d.comb += [geo.shape.eq(shape), geo.ndim.eq(ndim), numel.shape.eq(shape),
                     numel.ndim.eq(ndim)]

        # ------------------------------------------------------------ realigner + emitters
        acc = Signal(8 * _ACC_BYTES)  # payload bytes not yet in a beat: the low ``fill``
        fill = Signal(range(_ACC_BYTES + 1))
        push_n = Signal(range(_WORD + 1))
        push_data = Signal(64)
        pop_n = Signal(range(BEAT_BYTES + 1))
        ent_next = Signal(range(self.max_blocks + 1))  # next block whose entry goes out
        bt_next = Signal(range(self.max_blocks + 1))  # next block whose bytes are loaded
        rem = Signal(11)  # bytes of the loaded block still to go out (any entry length)
        run = Signal()  # the emitters work on this frame
        nb = nblocks[:len(ent_next)]

        ent_go = Signal()
        m.d.comb += [ri_ent.addr.eq(ent_next >> 2),
                     walker.blocks_per_plane.eq(geo.blocks_per_plane),
                     walker.group_stride.eq(geo.group_stride), walker.groups.eq(geo.groups),
                     rr.addr.eq(Mux(mode == Mode.EB, 0, walker.group)),
                     ent_go.eq(run & ~flush & (ent_next < nb)
                               & (~self.blocks.valid | self.blocks.ready))]
        with m.If(self.blocks.valid & self.blocks.ready):
            m.d.sync += self.blocks.valid.eq(0)
        with m.If(ent_go):
            entry = ri_ent.data.word_select(ent_next[:2], 16)
            m.d.sync += [self.blocks.valid.eq(1),
                         self.blocks.payload.entry.eq(entry),
                         self.blocks.payload.r.eq(Mux(mode == Mode.MASK, 0, rr.data)),
                         ent_next.eq(ent_next + 1)]
            m.d.comb += walker.next.eq(1)

        # the beat emitter: load the next block (only one whose entry went out), pop its bytes
        m.d.comb += ri_beat.addr.eq(bt_next >> 2)
        next_len = ri_beat.data.word_select(bt_next[:2], 16)[:11]
        n = Signal(range(BEAT_BYTES + 1))
        m.d.comb += n.eq(Mux(rem > BEAT_BYTES, BEAT_BYTES, rem))
        beat_free = ~self.beats.valid | self.beats.ready
        with m.If(self.beats.valid & self.beats.ready):
            m.d.sync += self.beats.valid.eq(0)
        with m.If(run & (rem == 0) & (bt_next < ent_next)):
            m.d.sync += [rem.eq(next_len), bt_next.eq(bt_next + 1)]
        with m.Elif(run & (rem != 0) & beat_free & ((fill >= n) | flush)):
            m.d.comb += pop_n.eq(n)
            keep = Cat(*[Mux(k < n, 0xFF, 0x00) for k in range(BEAT_BYTES)])
            m.d.sync += [self.beats.valid.eq(1),
                         self.beats.payload.data.eq(acc[:8 * BEAT_BYTES] & keep),
                         self.beats.payload.count.eq(n),
                         self.beats.payload.last.eq(rem <= BEAT_BYTES),
                         rem.eq(rem - n)]
        left = Signal.like(fill)
        m.d.comb += left.eq(Mux(fill > pop_n, fill - pop_n, 0))
        m.d.sync += [acc.eq((acc >> (pop_n * 8)) | (push_data << (left * 8))),
                     fill.eq(left + push_n)]
        emitting = (run & (((ent_next < nb) & ~flush) | (bt_next < ent_next) | (rem != 0))) \
            | self.blocks.valid | self.beats.valid | self.info.valid

        with m.If(self.info.valid & self.info.ready):
            m.d.sync += [self.info.valid.eq(0), info_sent.eq(1), run.eq(1)]

        # ------------------------------------------------------------ the sections
        crc_feed = Signal()
        m.d.comb += [crc.data.eq(word), crc.valid.eq(take & crc_feed)]

        def took(state_truncated):
            """Bookkeeping of a taken word; a frame that ends here ends early."""
            m.d.sync += [pos.eq(pos + 1), off.eq(off + 1)]
            with m.If(w_last):
                fail(state_truncated)
                m.d.sync += flush.eq(emit)
                m.next = "VERDICT"

        with m.FSM(init="FIXED"):
            with m.State("FIXED"):
                m.d.comb += [take.eq(w_valid), crc_feed.eq(1), fixed_in.eq(fixed),
                             fixed_in.as_value().word_select(
                                 off[:(_FIXED_WORDS - 1).bit_length()], 64).eq(word)]
                with m.If(off == 0):
                    m.d.comb += crc.start.eq(1)
                with m.If(take):
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
                    bad = Cat(*[(errors | flag)[c] for c in fatal]).any()
                    m.d.sync += [pos.eq(pos + 1), off.eq(off + 1)]
                    with m.If(bad):
                        m.next = "DRAIN"
                    with m.Elif(off == _FIXED_WORDS - 1):
                        m.d.sync += off.eq(0)
                        m.next = "SHAPE"
                    with m.If(w_last):
                        complete = off == _FIXED_WORDS - 1
                        fail(FrameCheck.TRUNCATED_FIXED, ~complete)
                        fail(FrameCheck.TRUNCATED_HEADER, complete)
                        m.next = "VERDICT"
            with m.State("SHAPE"):
                with m.If(off == ndim):
                    # shape and ndim hold until the verdict
                    m.d.comb += [geo.start.eq(1), numel.start.eq(1)]
                    m.d.sync += [off.eq(0),
                                 h_words.eq(header_length(mode, ndim, ngroups) >> 3)]
                    m.next = "TABLE"
                with m.Else():
                    m.d.comb += [take.eq(w_valid), crc_feed.eq(1)]
                    with m.If(take):
                        m.d.sync += shape[off[:3]].eq(word)
                        took(FrameCheck.TRUNCATED_HEADER)
            with m.State("TABLE"):
                with m.If(~is_dct | (off == TABLE_BYTES // _WORD)):
                    m.d.sync += off.eq(0)
                    m.next = "SCALES"
                with m.Elif(w_valid & self.table_free):
                    # one entry a cycle into the engine's table; the word goes with the eighth
                    entry = word.word_select(sub, 8)
                    m.d.comb += [self.table_wr.addr.eq(Cat(sub, off[:3])),
                                 self.table_wr.data.eq(entry), self.table_wr.en.eq(1),
                                 take.eq(sub == _WORD - 1), crc_feed.eq(1)]
                    fail(FrameCheck.TABLE_ZERO, entry == 0)
                    m.d.sync += sub.eq(sub + 1)
                    with m.If(take):
                        took(FrameCheck.TRUNCATED_HEADER)
            with m.State("SCALES"):
                with m.If(off == ngroups):
                    m.d.sync += off.eq(0)
                    m.next = "HCRC"
                with m.Else():
                    m.d.comb += [take.eq(w_valid), crc_feed.eq(1)]
                    with m.If(take):
                        fail(FrameCheck.SCALE, scale_record_bad(word))
                        with m.If(off < self.max_groups):
                            record = data.View(SCALE_RECORD.shape(), word)
                            m.d.comb += [wr.addr.eq(off), wr.data.eq(record.inverse),
                                         wr.en.eq(1)]
                        took(FrameCheck.TRUNCATED_HEADER)
            with m.State("HCRC"):
                # the CRC word: the header's checks that need it all are made here, once the
                # geometry is known
                m.d.comb += take.eq(w_valid & geo.done & numel.done)
                with m.If(take):
                    fail(FrameCheck.HEADER_CRC, word[:32] != crc.crc)
                    fail(FrameCheck.HEADER_PADDING, word[32:] != 0)
                    known_mode = in_enum(mode, Mode)
                    fail(FrameCheck.MODE_DTYPE, ~known_mode | ~in_enum(dtype, DType))
                    fail(FrameCheck.NUMEL, numel.overflow)
                    fail(FrameCheck.CAPACITY, geo.overflow)
                    fail(FrameCheck.NBLOCKS, ~geo.overflow & (nblocks != geo.nblocks))
                    groups = groups_of(mode, geo.groups)
                    fail(FrameCheck.GROUPS, known_mode & ~geo.overflow & (ngroups != groups))
                    fail(FrameCheck.PARAM, param_bad(mode, param))
                    words_h = _align_words(h_words * 8 + HEADER_CRC_BYTES, 64)
                    words_i = _align_words(nblocks * 2, 62)
                    words_p = _align_words(payload_bytes, 62)
                    m.d.sync += [i_words.eq(words_i), p_words.eq(words_p), off.eq(1),
                                 length.eq((words_h + words_i + words_p) * 8 + TRAILER.size),
                                 h_words.eq(words_h), p_left.eq(payload_bytes)]
                    m.d.sync += pos.eq(pos + 1)
                    m.next = "HPAD"
                    with m.If(w_last):
                        fail(FrameCheck.TRUNCATED)
                        m.next = "VERDICT"
            with m.State("HPAD"):
                # h_words now counts every header word; ``pos`` the ones taken
                with m.If(pos == h_words):
                    m.d.sync += off.eq(0)
                    with m.If(errors != 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.comb += crc.start.eq(1)
                        m.next = "INDEX"
                with m.Else():
                    m.d.comb += take.eq(w_valid)
                    with m.If(take):
                        fail(FrameCheck.HEADER_PADDING, word != 0)
                        took(FrameCheck.TRUNCATED)
            with m.State("INDEX"):
                with m.If(off == i_words):
                    m.d.sync += off.eq(0)
                    fail(FrameCheck.INDEX_SUM, lengths != payload_bytes)
                    with m.If(((errors | flag) == 0) & (nblocks != 0)):
                        m.d.sync += [emit.eq(1), self.info.valid.eq(1),
                                     self.info.payload.mode.eq(mode),
                                     self.info.payload.dtype.eq(dtype),
                                     self.info.payload.nblocks.eq(nblocks)]
                        m.d.comb += walker.start.eq(1)
                    m.next = "PAYLOAD"
                with m.Else():
                    m.d.comb += [take.eq(w_valid), crc_feed.eq(1)]
                    with m.If(take):
                        total = 0
                        for j in range(_ENTRIES_PER_WORD):
                            e = data.View(IndexEntry, word.word_select(j, 16))
                            real = Cat(Const(j, 2), off) < nblocks
                            mb = e.mb_minus_1 + 1
                            raw_len = itemsize * 64
                            kind = e.kind
                            bad = Mux(kind == int(Kind.CODED), e.length < mb, Mux(
                                kind == int(Kind.ZERO), e.length != 0,
                                Mux(kind == int(Kind.RAW), e.length != raw_len,
                                    e.length < fmt.DENSE_HEADER)) | (e.mb_minus_1 != 0))
                            # mask frames hold ZERO and CODED blocks of mask bytes only
                            bad |= (mode == int(Mode.MASK)) & (
                                (kind == int(Kind.RAW)) | (kind == int(Kind.DENSE))
                                | ((kind == int(Kind.CODED)) & (e.length != mb)))
                            fail(FrameCheck.INDEX_ENTRY, real & bad)
                            total = total + Mux(real, e.length, 0)
                        m.d.sync += lengths.eq(lengths + total)
                        with m.If(off < rows):
                            m.d.comb += [wi.addr.eq(off), wi.data.eq(word), wi.en.eq(1)]
                        took(FrameCheck.TRUNCATED)
            with m.State("PAYLOAD"):
                with m.If(off == p_words):
                    m.d.sync += off.eq(0)
                    m.next = "TRAILER"
                with m.Else():
                    real = Mux(p_left > _WORD, _WORD, p_left[:4])
                    room = fill <= _ACC_BYTES - _WORD
                    m.d.comb += [take.eq(w_valid & (~emit | (p_left == 0) | room)),
                                 crc_feed.eq(1)]
                    with m.If(take):
                        with m.If(emit):
                            keep = Cat(*[Mux(k < real, 0xFF, 0x00) for k in range(_WORD)])
                            m.d.comb += [push_n.eq(real), push_data.eq(word & keep)]
                        m.d.sync += p_left.eq(p_left - real)
                        took(FrameCheck.TRUNCATED)
            with m.State("TRAILER"):
                m.d.comb += take.eq(w_valid)
                with m.If(take):
                    # this word in its place in the trailer, the others zero
                    tr = Signal(TRAILER.shape())
                    m.d.comb += tr.as_value().word_select(
                        off[:(_TRAILER_WORDS - 1).bit_length()], 64).eq(word)

                    def at(name):
                        return off == _word_of(TRAILER, name)

                    fail(FrameCheck.BODY_CRC, at("body_crc") & (tr.body_crc != crc.crc))
                    fail(FrameCheck.STATUS, at("status") & (tr.status != 0))
                    fail(FrameCheck.LENGTH, at("length") & (tr.length != length))
                    fail(FrameCheck.TRAILER_RESERVED, tr.reserved != 0)
                    m.d.sync += [pos.eq(pos + 1), off.eq(off + 1)]
                    with m.If(off == _TRAILER_WORDS - 1):
                        with m.If(w_last):
                            m.next = "VERDICT"
                        with m.Else():
                            fail(FrameCheck.TRAILING)
                            m.next = "DRAIN"
                    with m.Elif(w_last):
                        fail(FrameCheck.TRUNCATED)
                        m.d.sync += flush.eq(emit)
                        m.next = "VERDICT"
            with m.State("DRAIN"):
                m.d.comb += take.eq(w_valid)
                with m.If(take):
                    m.d.sync += pos.eq(pos + 1)
                    with m.If(w_last):
                        # a frame whose fixed part failed may also be too short for it
                        fail(FrameCheck.TRUNCATED_FIXED, pos < _FIXED_WORDS - 1)
                        m.next = "VERDICT"
            with m.State("VERDICT"):
                with m.If(~emitting & ~self.verdict.valid):
                    m.d.sync += [self.verdict.valid.eq(1),
                                 self.verdict.payload.errors.eq(errors),
                                 self.verdict.payload.info.eq(info_sent)]
                with m.If(self.verdict.valid & self.verdict.ready):
                    m.d.sync += [
                        self.verdict.valid.eq(0), errors.eq(0), pos.eq(0), off.eq(0),
                        lengths.eq(0), sub.eq(0), emit.eq(0), info_sent.eq(0), flush.eq(0),
                        run.eq(0), ent_next.eq(0), bt_next.eq(0), rem.eq(0),
                        acc.eq(0), fill.eq(0), shape.eq(0), fixed.ndim.eq(0),
                        fixed.ngroups.eq(0),
                    ]
                    m.next = "FIXED"
        for check, hits in fails.items():
            m.d.comb += flag[check].eq(Cat(*hits).any())
        return m
