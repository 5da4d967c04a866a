"""Per-block entropy decoder (index entry + payload bytes -> 64 symbols in 8 scan rows) and the
inverse zigzag, bit-exact with ``actpack.codec.reference.decode_block`` / ``decode_dense``.

One ``BlockDecoder`` is one *lane* of docs/format.md section 12: a splitter that has read the
frame's index hands it, per block in block order, the block's u16 index entry and the block's
payload bytes; the lane emits the block's 64 symbols as 8 scan rows, one a cycle. ``Unzigzag``
turns the scan rows of a ``dct`` block back into the raster (row-major ``8 * v + u``) rows the
``Dequantizer`` and ``IDCT2D`` take; in ``eb``, ``sfpr8`` and ``mask`` scan order is raster
order already.

How a block is decoded at one row a cycle (section 12): a pipelined header parse turns the mask
(``mb`` <= 8 bytes) and the width nibbles (<= 4 bytes), both in the block's first beat, into per
row fields while the other beats load: row ``j``'s mask byte, the rank ``R_j`` of its first code
(set mask bits before row ``j``) and the bit ``ptr_j`` where that code starts, ``ptr_j = start +
8 F(R_j >> 3) + (R_j & 7) w(R_j >> 3)`` with ``F(g)`` the widths of the groups before ``g``; so
no row waits for the one before it. Row ``j``'s ``c = popcount`` codes (ranks ``R_j .. R_j + c -
1``, in groups ``R_j // 8`` and ``R_j // 8 + 1``) are contiguous and <= 120 bits from ``ptr_j``;
they lie in buffer beats ``ptr_j // 128`` and the one after it, so a 9-way beat-pair select and a
shift by ``ptr_j % 128`` find them. Eight extractors take code ``t`` at ``sum_{s < t} w(R_j + s)``
bits into the window, and lane ``i`` (scan position ``8 j + i``) takes code ``popcount(mask byte
j below bit i)`` if its mask bit is set, else 0. A DENSE block is the same machine with an
all-ones mask, ``R_j = 8 j`` and its own code map: with 8 codes per group its groups are
consecutive in one bit string starting at byte 4, exactly like a sparse block's values. Each
step is a registered stage of a few logic levels (``BlockDecoder.PARSE_STAGES``,
``EMIT_STAGES``); no variable product uses a multiplier (shifts and adds).
"""

import enum
from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.frame import DENSE_HEADER, Kind
from actpack.codec.tables import ZIGZAG

from .beats import BEAT_BYTES, CodeBeat, IndexEntry
from .dct import N
from .quant import LEVEL, LevelRow

__all__ = [
    "BUFFER_BEATS",
    "BlockDecoder",
    "BlockError",
    "DecodedRow",
    "Unzigzag",
    "popcount",
]

# --------------------------------------------------------------------------------- interfaces
#
# Input layouts are the encoder's (``blockcode``), so a coded stream loops back unchanged:
# ``IndexEntry`` is the frame's u16 index entry bit for bit (``length`` bits 0..10, ``mb_minus_1``
# bits 11..13, ``kind`` bits 14..15); ``CodeBeat`` carries 16 payload bytes (byte k in ``data``
# bits 8k .. 8k + 7), ``count`` (1..16) valid bytes and ``last``. A block's bytes start on a
# fresh beat: ``ceil(length / 16)`` beats, all but the last full; a block of length 0 (ZERO) has
# none. Bytes past ``count`` are don't-care here.

# The longest well-formed coded block is 8 mask + 4 width + 120 value bytes (section 8.1); a
# block buffer holds the beats that can contain it. Longer blocks are malformed: their extra
# beats are consumed and dropped, and the length check flags them.
_HEADER_BYTES = N + N // 2  # mask (<= 8 bytes) and width nibbles (<= 8 groups)
_MAX_CODED = _HEADER_BYTES + spec.WIDTH_MAX * N * N // 8  # + 64 codes of 15 bits: 132 bytes
BUFFER_BEATS = -(-_MAX_CODED // BEAT_BYTES)  # 9
# the beats of the longest length an entry can hold (2047 bytes: 128 beats)
MAX_BEATS = -(-((1 << Shape.cast(IndexEntry["length"].shape).width) - 1) // BEAT_BYTES)
# bit of a row's first code in the block buffer (<= 8 * 132 in a well-formed block), rank of a
# row's first code (<= 56)
_PTR_BITS = (8 * BEAT_BYTES * BUFFER_BEATS).bit_length()
_RANK_BITS = 6
# output FIFO rows: a block's 8 rows are counted from its take, and at full rate the next block
# is taken while 9 rows are still to be transferred; a transfer leaves the count a cycle late
# (a register: ``o.ready`` never reaches the take decision), one row more: 18 lets blocks follow
# each other without a bubble while ``o.ready`` stays high (17 rows of LUT RAM and the output
# register)
_OUT_ROWS = 18


class BlockError(enum.IntFlag):
    """Why a block is flagged (``DecodedRow.error``); numbers are bit positions + 1 in the field.
    Rows of a block flagged at parse time (everything but RANGE) are all zero."""

    #: CODED mask is 0 or its last byte ``mb - 1`` is 0 (format.md section 10, #23).
    MASK = 1
    #: The entry's length does not match the block's content: CODED shorter than its mask, than
    #: its width nibbles, or not ``mb + wbytes + databytes``; ``mask`` mode not ``mb``; DENSE not
    #: ``4 + sum w_g`` (#21 CODED/DENSE short, #24, #25, #26, #28).
    LENGTH = 2
    #: ``sfpr8``: a decoded ``|v| > 127`` (#27). Set from the row that holds it on.
    RANGE = 4
    #: The entry is not a block this lane decodes: RAW (routed around the lanes), ZERO with a
    #: length or an ``mb`` field, DENSE with an ``mb`` field or in ``mask`` mode (#21).
    INDEX = 8
    #: The beats disagree with the entry's length (a ``last`` flag or a ``count`` that a block of
    #: that length cannot have): the splitter and the index are out of step.
    BEATS = 16


_ERROR_BITS = len(BlockError)

#: One output transfer: scan row ``j`` of a block (``symbols[i]`` = symbol at scan position
#: ``8 j + i``), ``last`` on row 7. ``error`` (``BlockError`` bits) holds what is known when the
#: row leaves: the parse-time flags on every row, RANGE from the first row with such a value on;
#: the block's verdict is the ``error`` of its last row.
DecodedRow = data.StructLayout({
    "symbols": LevelRow,
    "error": unsigned(_ERROR_BITS),
    "last": unsigned(1),
})


def _shift_down(m: Module, value, amount, width: int, name: str, bits=None):
    """``(value >> amount)[:width]``, zero filled, as one stage of 2:1 multiplexers per bit of
    ``amount`` (largest first, each stage only as wide as the bits still needed). A plain variable
    ``>>`` is the same function but makes every output bit depend on every input bit in
    Amaranth's netlist (whose comb-loop check then walks it for minutes) and becomes megabytes of
    Verilator C++. ``bits``: the bits of ``amount`` this call applies (default all): a pipelined
    shift applies the high ones, registers the result (``width + 2**min(bits) - 1`` bits, what the
    low bits still need) and applies the low ones to it."""
    bits = range(len(amount)) if bits is None else bits
    for k in sorted(bits, reverse=True):
        need = width + (1 << k) - 1  # bits still needed after this stage
        padded = Cat(value, Const(0, max(0, (1 << k) + need - len(value))))
        stage = Signal(need, name=f"{name}_sh{k}")
        m.d.comb += stage.eq(Mux(amount[k], padded[1 << k:(1 << k) + need], padded[:need]))
        value = stage
    return value[:width + (1 << min(bits)) - 1]


def _out_fifo(m: Module, w_en, w_data, o, depth: int):
    """A FIFO of ``depth`` words (LUT RAM) and an output register driving stream ``o``:
    ``w_en`` writes ``w_data`` without a check (the writer keeps count of the room); a word
    written in cycle t is on ``o`` from t + 2 (``SyncFIFOBuffered``'s timing). The output
    register's load enable (about 270 flip-flops' CE) is one LUT of registers and ``o.ready``:
    the memory's non-empty flag is a register (``SyncFIFOBuffered`` compares its level with 0
    in front of that enable)."""
    mem = Memory(shape=len(Value.cast(w_data)), depth=depth, init=[])
    m.submodules.out_mem = mem
    wport, rport = mem.write_port(), mem.read_port(domain="sync")
    produce, consume = Signal(range(depth), name="out_wptr"), Signal(range(depth), name="out_rptr")
    level = Signal(range(depth + 1), name="out_level")  # words in the memory
    nonempty = Signal(name="out_nonempty")  # level != 0
    read = Signal(name="out_read")  # the memory's head word moves to the output register
    m.d.comb += [
        read.eq(nonempty & (~o.valid | o.ready)),
        wport.addr.eq(produce), wport.data.eq(w_data), wport.en.eq(w_en),
        rport.addr.eq(consume), rport.en.eq(read), o.payload.eq(rport.data),
    ]

    def step(p):
        return Mux(p == depth - 1, 0, p + 1)

    with m.If(w_en):
        m.d.sync += produce.eq(step(produce))
    with m.If(read):
        m.d.sync += consume.eq(step(consume))
    m.d.sync += [
        level.eq(level + w_en - read),
        # non-empty after this cycle: a word written, or one kept (not read, or 2 or more)
        nonempty.eq(w_en | (nonempty & (~read | (level >= 2)))),
    ]
    with m.If(read):
        m.d.sync += o.valid.eq(1)
    with m.Elif(o.ready):
        m.d.sync += o.valid.eq(0)


def _stage(m: Module, name: str, values: dict, en=None) -> SimpleNamespace:
    """One pipeline register per entry of ``values`` (a Value, a View or a list of them), loaded
    every cycle, or while ``en``; the registers as attributes named like the keys."""

    def reg(key, v):
        if isinstance(v, (list, tuple)):
            return [reg(f"{key}{k}", x) for k, x in enumerate(v)]
        shape = v.shape() if isinstance(v, data.View) else Value.cast(v).shape()
        s = Signal(shape, name=f"{name}_{key}")
        if en is None:
            m.d.sync += s.eq(v)
        else:
            with m.If(en):
                m.d.sync += s.eq(v)
        return s

    return SimpleNamespace(**{k: reg(k, v) for k, v in values.items()})


def _zext(value, width: int):
    """Unsigned ``value`` zero-extended (or cut) to ``width`` bits."""
    return Cat(value, Const(0, width))[:width]


def _mb(entry):
    """The mask byte count ``mb`` of an ``IndexEntry``."""
    return entry.mb_minus_1 + 1


def popcount(bits) -> object:
    """Sum of the bits of ``bits`` (a Value or a list of 1-bit Values), as a balanced adder tree."""
    terms = [bits[k] for k in range(len(bits))]
    while len(terms) > 1:
        terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                 for k in range(0, len(terms), 2)]
    return terms[0]


# --------------------------------------------------------------------------------- BlockDecoder


class BlockDecoder(wiring.Component):
    """Decode one block at a time: index entry + payload beats in, 8 scan rows of 8 symbols out.

    Bit-exact with ``reference.decode_block`` (CODED; ``with_values`` unless ``mode`` is
    ``mask``) and ``reference.decode_dense`` (DENSE); a ZERO block gives 64 zeros.

    Ports: ``index`` (``IndexEntry``, one per block, in block order), ``data`` (``CodeBeat``: the
    ``ceil(length / 16)`` beats of each block that has payload bytes, same order), ``o``
    (``DecodedRow``: 8 rows per block, ``o.payload.symbols`` is a ``LevelRow`` in scan order,
    ``last`` on row 7). The decoder takes as many beats as the entry's length says, whatever
    their ``last`` and ``count`` fields (a disagreement is flagged BEATS), so a block never eats
    the next block's beats.

    Throughput: one row per cycle, 8 cycles per block, no bubbles between blocks of up to
    ``FULL_RATE_BEATS`` = 7 beats (112 bytes: every block a ``dct``, ``sfpr8`` or ``mask`` encoder
    writes, at most 100 / 76 / 8 bytes, and ZERO blocks; ``eb`` blocks reach 132 bytes, 9 beats,
    and any 15-bit codes do). Blocks are stored and forwarded: a block's rows start once all its
    beats are in. The loader takes the entry, then one beat a cycle, into one of two block buffers
    while the emitter reads the other; the next block's header is parsed from its first beat on
    (``PARSE_STAGES`` steps, done when a 7-beat block's last beat is in). A block of ``b`` beats
    therefore takes ``max(8, b + 1)`` cycles. Whenever the input is slower (idle beats or
    entries), the output waits.

    Latency (``o.ready`` high, decoder idle): row 0 is transferred ``LATENCY`` = 16 cycles after
    a block's first beat, or ``EMIT_STAGES + 4`` = 10 after its last beat if that is later (more
    than 7 beats): the header parse (``PARSE_STAGES`` = 6 steps) starts with the first beat and
    runs beside the loading; then take, ``EMIT_STAGES`` = 6 row steps and the output FIFO (2). A
    block without payload: ``ZERO_LATENCY`` = 17 cycles after its entry. Backpressure: the row
    steps never stall; a block is taken only while the 18-row output FIFO has room for its 8 rows
    beside every row taken and not yet transferred, so ``o.ready`` drives the FIFO's read side
    alone; ``o.valid``/``o.payload`` are the FIFO's output registers. While ``o`` stalls the decoder
    keeps taking entries and beats until both block buffers are full. ``index.ready`` and
    ``data.ready`` are registers (they depend on neither ``valid`` nor ``o.ready``).
    Timing: post-route Fmax on the ECP5-85F (speed 8) in hw/README.md.

    Bad input: every check of docs/format.md section 8.2, and the index checks (#21) that concern
    one entry; a malformed block still yields its 8 rows, all zero, with ``error`` set
    (``BlockError``), and the next block decodes normally. A RAW entry (RAW blocks are copied
    around the lanes) is consumed with its beats and flagged INDEX. In ``sfpr8`` a decoded value
    beyond +-127 is flagged RANGE from its row on (the values are output as decoded).
    """

    LATENCY = 16
    ZERO_LATENCY = 17
    PARSE_STAGES = 6
    EMIT_STAGES = 6
    FULL_RATE_BEATS = 7

    def __init__(self, *, mode):
        self.mode = spec.Mode.parse(mode)  # raises ValueError naming ``mode``
        super().__init__({
            "index": In(stream.Signature(IndexEntry)),
            "data": In(stream.Signature(CodeBeat)),
            "o": Out(stream.Signature(DecodedRow)),
        })

    def elaborate(self, platform):
        m = Module()
        index, beats, o = self.index, self.data, self.o
        mask_mode = self.mode is spec.Mode.MASK
        beat_shift = BEAT_BYTES.bit_length() - 1
        beat_bits = 8 * BEAT_BYTES

        # ---- two block buffers: the loader fills one while the emitter reads the other
        bufs = [Signal(beat_bits * BUFFER_BEATS, name=f"buf{b}") for b in range(2)]
        full = [Signal(name=f"buf{b}_full") for b in range(2)]
        beats_errs = [Signal(name=f"buf{b}_beats_err") for b in range(2)]

        # ---- loader: an entry, then its beats, into buffer ``wsel``. What the beats are checked
        # against is worked out from the entry when it is taken (registers: no adder or compare
        # of the length between the entry and the buffer's write enables)
        entry = Signal(IndexEntry)
        have = Signal()  # ``entry`` holds a block not yet committed to a buffer
        wsel = Signal()
        beat_at = Signal(BUFFER_BEATS)  # one-hot: the buffer word of the next beat (0 past it)
        left = Signal(range(MAX_BEATS + 1))  # beats of the entry not yet taken
        is_last = Signal()  # the next beat is the entry's last (left == 1)
        no_beats = Signal()  # length 0
        tail = Signal(range(BEAT_BYTES + 1))  # valid bytes of the last beat
        beats_err = Signal()
        nbeats_in = Signal(range(MAX_BEATS + 1))
        tail_in = Signal(range(BEAT_BYTES + 1))
        bad_beat = Signal()
        can_load = Signal()
        # can_load & ~no_beats as a register (set from the next state below): the splitter in
        # front decides a block's take from it
        load_ready = Signal()
        commit = Signal()
        take_beat = Signal()
        m.d.comb += [
            nbeats_in.eq((index.payload.length + BEAT_BYTES - 1) >> beat_shift),
            tail_in.eq(index.payload.length - ((nbeats_in - 1) << beat_shift)),
            bad_beat.eq((beats.payload.last != is_last)
                        | (beats.payload.count != Mux(is_last, tail, BEAT_BYTES))),
            can_load.eq(have & ~Mux(wsel, full[1], full[0])),
            index.ready.eq(~have),
            beats.ready.eq(load_ready),
            take_beat.eq(beats.valid & beats.ready),
            commit.eq(can_load & (no_beats | (beats.valid & is_last))),
        ]
        with m.If(index.valid & index.ready):
            m.d.sync += [entry.eq(index.payload), have.eq(1), beat_at.eq(1), beats_err.eq(0),
                         left.eq(nbeats_in), is_last.eq(nbeats_in == 1),
                         no_beats.eq(nbeats_in == 0), tail.eq(tail_in)]
        with m.If(take_beat):
            m.d.sync += [beat_at.eq(beat_at << 1), left.eq(left - 1), is_last.eq(left == 2),
                         beats_err.eq(beats_err | bad_beat)]
        # a taken beat is written into its buffer word a cycle later, from registers (the write
        # enables reach 128 flip-flops each); beats past the buffer, of a malformed block, are
        # dropped. The emitter reads a buffer from the cycle after the block is taken on.
        wr_data = Signal(beat_bits)
        wr_at = Signal(2 * BUFFER_BEATS)  # one-hot: buffer b, word s at bit 9 b + s
        m.d.sync += [wr_data.eq(beats.payload.data),
                     wr_at.eq(Mux(take_beat, Mux(wsel, beat_at << BUFFER_BEATS, beat_at), 0))]
        for b in range(2):
            for s in range(BUFFER_BEATS):
                with m.If(wr_at[BUFFER_BEATS * b + s]):
                    m.d.sync += bufs[b].word_select(s, beat_bits).eq(wr_data)
        with m.If(commit):
            m.d.sync += [have.eq(0), wsel.eq(~wsel)]
            for b in range(2):
                with m.If(wsel == b):
                    m.d.sync += [full[b].eq(1),
                                 beats_errs[b].eq(~no_beats & (beats_err | bad_beat))]

        # ---- header parse, PARSE_STAGES registered steps from the block's first beat (a block
        # without payload: from its commit). The header (mask, width nibbles: 12 bytes) lies in
        # beat 0, so the parse runs while the other beats load. Its result per row: the row's
        # mask byte, rank R_j of its first code and bit pointer ptr_j of its first code, so the
        # emitter has no row-to-row recurrence. A block without payload parses don't-care bytes:
        # its length 0 fails every kind's checks whatever they hold.
        launch = Signal()
        m.d.comb += launch.eq((take_beat & beat_at[0]) | (commit & no_beats))
        p0 = _stage(m, "p0", {
            "valid": launch, "dst": wsel, "ent": entry,
            "hb": beats.payload.data[:8 * _HEADER_BYTES],
            # mask byte j is in the block (j < mb and j < length); byte mb - 1 is the last
            "in_mask": Cat(*((j < _mb(entry)) & (j < entry.length) for j in range(N))),
            "at_last": Cat(*(entry.mb_minus_1 == j for j in range(N))),
        })
        # step 1: mask bytes (bytes past the block's end read as 0, like the reference's
        # ``data[:mb]``), their popcounts, the width bytes after the mask, the entry checks
        ent = p0.ent
        mbm1, length = ent.mb_minus_1, ent.length
        mb = mbm1 + 1
        mbytes = [Mux(p0.in_mask[j], p0.hb.word_select(j, 8), 0) for j in range(N)]
        hb_pad = Cat(p0.hb, Const(0, 4 * N))
        is_zero, is_coded = ent.kind == Kind.ZERO, ent.kind == Kind.CODED
        is_raw, is_dense = ent.kind == Kind.RAW, ent.kind == Kind.DENSE
        mask1 = Cat(*mbytes)
        p1 = _stage(m, "p1", {
            "valid": p0.valid, "dst": p0.dst, "ent": ent, "mask": mask1,
            "c": [popcount(b) for b in mbytes],
            "sparse_w": Array(hb_pad[8 * k:8 * k + 4 * N] for k in range(N + 1))[mb],
            "dense_w": p0.hb[:4 * N],  # DENSE_HEADER bytes of nibbles
            "coded": is_coded, "dense": is_dense,
            "mask_err": is_coded & ((mask1 == 0) | Cat(*(
                p0.at_last[j] & (b == 0) for j, b in enumerate(mbytes))).any()),
            "index_err": is_raw | (is_zero & ((length != 0) | (mbm1 != 0)))
            | (is_dense & ((mbm1 != 0) | mask_mode)),
        })
        keep = ("valid", "dst", "ent", "mask", "coded", "dense", "mask_err", "index_err")

        def carry(st, *extra):
            return {k: getattr(st, k) for k in (*keep, *extra)}

        def nibbles(w):
            return [w[4 * g:4 * g + 4] for g in range(N)]

        def halves(xs):  # prefix sums x_0 + .. + x_k within each half, k = 0..3
            return ([sum(xs[1:k + 1], xs[0]) for k in range(N // 2)],
                    [sum(xs[N // 2 + 1:N // 2 + k + 1], xs[N // 2]) for k in range(N // 2)])

        def prefix(lo, hi):  # all 9 prefix sums (0 .. everything) from the halves
            return [Const(0, 1), *lo, *(lo[-1] + h for h in hi)]

        # step 2: half prefix sums of the popcounts (ranks) and of both width sets
        rlo, rhi = halves(p1.c)
        slo, shi = halves(nibbles(p1.sparse_w))
        dlo, dhi = halves(nibbles(p1.dense_w))
        p2 = _stage(m, "p2", {**carry(p1, "sparse_w", "dense_w"), "rlo": rlo, "rhi": rhi,
                              "slo": slo, "shi": shi, "dlo": dlo, "dhi": dhi})
        # step 3: ranks R_j of each row's first code (n = R_8), group width prefix sums F_g;
        # DENSE: all-ones mask, R_j = 8 j, its own widths
        rank = prefix(p2.rlo, p2.rhi)
        fs, fd = prefix(p2.slo, p2.shi), prefix(p2.dlo, p2.dhi)
        p3 = _stage(m, "p3", {
            **carry(p2), "n": rank[N],
            "rank": [_zext(Mux(p2.dense, N * j, rank[j]), _RANK_BITS) for j in range(N)],
            "f": [Mux(p2.dense, fd[g], fs[g]) for g in range(N + 1)],
            "w": Mux(p2.dense, p2.dense_w, p2.sparse_w),
            "expected_dense": DENSE_HEADER + fd[N],
        })
        # step 4: codes before rank R: 8 F(R >> 3) + (R & 7) w(R >> 3); the header's size
        warr = Array([*nibbles(p3.w), Const(0, 4)])
        farr = Array(p3.f)
        wbytes = (p3.n + 2 * N - 1) >> 4  # ceil(ngroups / 2), ngroups = ceil(n / 8)
        p4 = _stage(m, "p4", {
            **carry(p3, "rank", "expected_dense"),
            "fr": [farr[r >> 3] for r in p3.rank], "wr": [warr[r >> 3] for r in p3.rank],
            # the width of the group after the row's first code's: its later codes may be there
            "wr1": [warr[(r >> 3) + 1] for r in p3.rank],
            "fn": farr[p3.n >> 3], "wn": warr[p3.n >> 3], "rn": p3.n[:3],
            "base": Mux(p3.dense, DENSE_HEADER, _mb(p3.ent) + wbytes),
        })

        def times(r, w):  # r (3 bits) * w as shifts and adds, no multiplier
            return sum((Mux(r[b], w << b, 0) for b in range(1, 3)), Mux(r[0], w, 0))

        # step 5: the products and the byte parts
        p5 = _stage(m, "p5", {
            **carry(p4, "rank", "wr", "wr1", "expected_dense"),
            "hi": [p4.base + f for f in p4.fr],
            "lo": [times(r[:3], w) for r, w in zip(p4.rank, p4.wr, strict=True)],
            # CODED length check: length - (mb + wbytes + F(n >> 3)) == ceil(lo_n / 8)
            "rest_n": p4.ent.length - (p4.base + p4.fn), "lo_n": times(p4.rn, p4.wn),
        })
        # step 6: pointers, the length check, the verdict -> the buffer's parse slot
        coded_bad = ((p5.ent.length != _mb(p5.ent)) if mask_mode
                     else (p5.rest_n != ((p5.lo_n + 7) >> 3)))
        length_err = ((p5.coded & coded_bad)
                      | (p5.dense & (p5.ent.length != p5.expected_dense)))
        decodes = (p5.coded | p5.dense) & ~p5.mask_err & ~length_err & ~p5.index_err
        slot_value = {
            "mask": Mux(p5.dense, (1 << N * N) - 1, p5.mask),
            "decodes": decodes,
            "ptr": Cat(*(((h << 3) + lo)[:_PTR_BITS] for h, lo in zip(p5.hi, p5.lo, strict=True))),
            "rank": Cat(*(r[:_RANK_BITS] for r in p5.rank)),
            # per row the widths of its first code's group and of the next (w0, w1)
            "wpair": Cat(*(Cat(a, b) for a, b in zip(p5.wr, p5.wr1, strict=True))),
            "dense": p5.dense,
            "err": Cat(p5.mask_err, length_err, Const(0, 1), p5.index_err, Const(0, 1)),
        }
        # a parse slot per buffer: while the output FIFO has no room, buffer ``nxt`` may wait
        # parsed and full while the other one loads and parses
        slots = [{k: Signal(len(Value.cast(v)), name=f"slot{b}_{k}") for k, v in slot_value.items()}
                 for b in range(2)]
        parsed = [Signal(name=f"slot{b}_parsed") for b in range(2)]

        # ---- sequencer: the block being emitted, one row a cycle. Its slot shifts in place (row
        # j's fields at the bottom), so taking a block sets a few flags and copies nothing.
        active = Signal()  # the emitter holds a block
        rsel = Signal()  # buffer of the block being emitted
        row = Signal(range(N))
        nxt = Signal()  # buffer of the next block to take: flips with every take
        seq = {k: Mux(rsel, slots[1][k], slots[0][k]) for k in slots[0]}
        berr = Mux(rsel, beats_errs[1], beats_errs[0])
        # flagged at parse time or beats out of step: zero values
        zero = berr | ~seq["decodes"]
        # one-hot: buffer b, beat pair s of the row at the bottom of ``seq`` (bit 9 b + s), kept
        # beside ``seq`` so the beat-pair select is an AND-OR of registers

        def pair_at(buffer, p):
            index = p[:_PTR_BITS] >> (beat_bits.bit_length() - 1)
            return Cat(*((buffer == b) & (index == s)
                         for b in range(2) for s in range(BUFFER_BEATS)))

        sel_at = Signal(2 * BUFFER_BEATS)
        # A block is taken only when the output FIFO has room for its 8 rows beside every row
        # taken and not yet transferred; its rows then go through the (free-running) row steps
        # one a cycle. So ``o.ready`` reaches the FIFO's read side only, and taking a block
        # depends on registers only.
        used = Signal(range(_OUT_ROWS + 1))  # rows of taken blocks not yet transferred on ``o``
        room = Signal(init=1)  # used <= _OUT_ROWS - 8
        last_row = Signal()  # row == 7
        emit = Signal()
        finish = Signal()
        take = Signal()
        m.d.comb += [
            emit.eq(active),
            finish.eq(active & last_row),
            take.eq(Mux(nxt, full[1] & parsed[1], full[0] & parsed[0]) & room
                    & (~active | last_row)),
        ]
        with m.If(emit):
            m.d.sync += [
                row.eq(row + 1),
                last_row.eq(row == N - 2),
                sel_at.eq(pair_at(rsel, seq["ptr"][_PTR_BITS:])),
            ]
        # slot b shifts while it is emitted (active and rsel == b): a register per slot, set
        # from the next state, so the shift enables (~200 flip-flops each) start at a flip-flop
        shift = [Signal(name=f"slot{b}_shift") for b in range(2)]
        m.d.sync += [shift[b].eq(Mux(take, nxt == b, active & ~finish & (rsel == b)))
                     for b in range(2)]
        for b in range(2):
            with m.If(shift[b]):
                m.d.sync += [
                    slots[b]["mask"].eq(slots[b]["mask"] >> N),
                    slots[b]["ptr"].eq(slots[b]["ptr"] >> _PTR_BITS),
                    slots[b]["rank"].eq(slots[b]["rank"] >> _RANK_BITS),
                    slots[b]["wpair"].eq(slots[b]["wpair"] >> 8),
                ]
        # load_ready's next state: the entry held and not committed now, or taken now, with
        # payload, and buffer ``wsel`` not full after this cycle (the emitter's finish frees it)
        wsel_free = ~Mux(wsel, full[1], full[0]) | (finish & (rsel == wsel))
        m.d.sync += load_ready.eq(wsel_free & Mux(have, ~commit & ~no_beats,
                                                  index.valid & (index.payload.length != 0)))
        with m.If(finish):
            m.d.sync += active.eq(0)
            for b in range(2):
                with m.If(rsel == b):
                    m.d.sync += full[b].eq(0)
        with m.If(take):
            m.d.sync += [active.eq(1), rsel.eq(nxt), nxt.eq(~nxt), row.eq(0), last_row.eq(0),
                         sel_at.eq(pair_at(nxt, Mux(nxt, slots[1]["ptr"], slots[0]["ptr"])))]
            for b in range(2):
                with m.If(nxt == b):
                    m.d.sync += parsed[b].eq(0)
        with m.If(p5.valid):
            for b in range(2):
                with m.If(p5.dst == b):
                    m.d.sync += [*(slots[b][k].eq(v) for k, v in slot_value.items()),
                                 parsed[b].eq(1)]

        # ---- emitter: EMIT_STAGES registered steps per row, then the output FIFO
        # step 1: the beat pair holding the row's codes (Ref: docs/format.md section 12: a row's
        # codes are <= 120 bits, so they lie in the 16 bytes from bit ptr, which start in beat
        # ptr // 128 and end in the beat after it) and the width of each of its codes
        ptr, rnk = seq["ptr"][:_PTR_BITS], seq["rank"][:_RANK_BITS]
        padded = [Cat(b, Const(0, beat_bits)) for b in bufs]
        pairs = [p[beat_bits * s:beat_bits * (s + 2)] for p in padded for s in range(BUFFER_BEATS)]
        pair = Const(0, 2 * beat_bits)
        for k, p in enumerate(pairs):
            pair = pair | Mux(sel_at[k], p, 0)
        w0, w1 = seq["wpair"][:4], seq["wpair"][4:8]
        e1 = _stage(m, "e1", values={
            "valid": emit, "first": row == 0, "last": row == N - 1,
            "err": seq["err"] | Mux(berr, BlockError.BEATS, 0),
            "dense": seq["dense"], "mbyte": Mux(zero, 0, seq["mask"][:N]),
            "pair": pair,
            "sh": ptr[:beat_bits.bit_length() - 1],
            # code t of the row has rank R + t: group R >> 3 or the next one
            "wt": [Mux(rnk[:3] + t < N, w0, w1) for t in range(N)],
        })
        ekeep = ("valid", "first", "last", "err", "dense", "mbyte")

        def ecarry(st, *extra):
            return {k: getattr(st, k) for k in (*ekeep, *extra)}

        # step 2: the window's coarse shift; code offsets in halves; each lane's code index
        olo, ohi = halves(e1.wt)  # offsets of codes 1..4; 5..7 less offset 4
        e2 = _stage(m, "e2", values={
            **ecarry(e1, "wt"),
            "win": _shift_down(m, e1.pair, e1.sh, beat_bits, "win", bits=range(4, 7)),
            "sh": e1.sh[:4], "olo": olo, "ohi": ohi[:3],
            "ti": [popcount(e1.mbyte[:i]) for i in range(1, N)],
            "count": popcount(e1.mbyte),
        })
        # step 3: the window (128 bits from the row's first code); code t's bit offset within it
        offs = [Const(0, 7), *e2.olo, *(e2.olo[-1] + h for h in e2.ohi)]
        e3 = _stage(m, "e3", values={
            **ecarry(e2, "wt", "ti", "count"),
            "win": _shift_down(m, e2.win, e2.sh, beat_bits, "win_lo", bits=range(4)),
            "off": [_zext(x, 7) for x in offs],
        })
        # steps 4, 5: each code shifted out of the window, masked to its width
        e4 = _stage(m, "e4", values={
            **ecarry(e3, "wt", "ti", "count"),
            "code": [_shift_down(m, e3.win, e3.off[t], spec.WIDTH_MAX, f"code{t}",
                                 bits=range(3, 7)) for t in range(N)],
            "off": [x[:3] for x in e3.off],
        })
        codes = [_shift_down(m, e4.code[t], e4.off[t], spec.WIDTH_MAX, f"code{t}_lo",
                             bits=range(3)) & ((Const(1, spec.WIDTH_MAX + 1) << e4.wt[t]) - 1)
                 for t in range(N)]
        e5 = _stage(m, "e5", values={**ecarry(e4, "ti", "count"), "code": codes})
        # step 6: lane i (scan position 8 j + i) takes code popcount(mask byte below bit i);
        # sfpr8: is a used code's value beyond +-127 (sparse u >= 254, dense u >= 255)
        carr = Array(e5.code)
        if self.mode is spec.Mode.SFPR8:
            limit = Mux(e5.dense, 2 * spec.SFPR_MAX + 1, 2 * spec.SFPR_MAX)
            hit = Cat(*((e5.count > t) & (e5.code[t] >= limit) for t in range(N))).any()
        else:
            hit = Const(0)
        e6 = _stage(m, "e6", values={
            **ecarry(e5), "u": [e5.code[0], *(carr[t] for t in e5.ti)], "hit": hit})
        # output register: values, the block's error bits so far (RANGE from its row on)
        values = []
        for i in range(N):
            v = Signal(LEVEL, name=f"v_{i}")
            u = e6.u[i][:spec.WIDTH_MAX]
            if mask_mode:
                m.d.comb += v.eq(e6.mbyte[i])
            else:
                # sparse u = 2 (|v| - 1) + (v < 0), dense u = 2 |v| - (v < 0): with h = u >> 1, a
                # negative value is -(h + 1) = ~h, a positive one h + 1 (sparse) or h (dense)
                h = u >> 1
                neg = ~Cat(h, Const(0, LEVEL.width - len(h)))
                m.d.comb += v.eq(Mux(e6.mbyte[i], Mux(u[0], neg, h + ~e6.dense), 0))
            values.append(v)
        acc_err = Signal(_ERROR_BITS)  # error bits of the block's rows so far
        row_err = Signal(_ERROR_BITS)
        m.d.comb += row_err.eq(Mux(e6.first, e6.err, acc_err) | Mux(e6.hit, BlockError.RANGE, 0))
        with m.If(e6.valid):
            m.d.sync += acc_err.eq(row_err)
        out = Signal(DecodedRow)
        m.d.comb += [out.symbols[i].eq(values[i]) for i in range(N)]
        m.d.comb += [out.error.eq(row_err), out.last.eq(e6.last)]
        # the output FIFO (``o.valid`` and ``o.payload`` registers: never dependent on ``o.ready``)
        _out_fifo(m, e6.valid, out, o, _OUT_ROWS - 1)
        # ``used`` counts a transfer a cycle late (``transferred``, a register): it is at most
        # one row high, so a take is never wrongly allowed, and ``o.ready`` (from downstream)
        # does not run through the count into ``room``
        transferred = Signal()
        used_next = Signal.like(used)
        m.d.comb += used_next.eq(used + Mux(take, N, 0) - transferred)
        m.d.sync += [transferred.eq(o.valid & o.ready), used.eq(used_next),
                     room.eq(used_next <= _OUT_ROWS - N)]
        return m


# --------------------------------------------------------------------------------- Unzigzag


class Unzigzag(wiring.Component):
    """Scan rows to raster rows: the inverse of the ``dct`` zigzag (docs/format.md 6.3.4).

    Input ``i``: rows of 8 symbols (``LevelRow``) in scan order, 8 rows a block (scan row ``j``,
    lane ``k`` = scan position ``8 j + k``). Output ``o``: the block's rows in raster order (row
    ``v``, lane ``u`` = coefficient ``8 v + u``, the order ``Dequantizer`` takes), so output
    position ``p`` carries input scan position ``INVERSE_ZIGZAG[p]``. A row's index is the number
    of rows transferred since reset modulo 8.

    Throughput: 8 values per cycle, no bubbles between blocks: two 64-value banks, one written
    while the other is read. Latency: ``LATENCY`` = 9 cycles from a block's input row ``r`` to its
    output row ``r`` (rows back to back, ``o.ready`` high): the whole block must be in before
    raster row 0, which needs scan positions up to 28, can leave. Backpressure: ``o.valid`` and
    ``o.payload`` are registers; ``i.ready`` is low while the bank to write is still being read.
    Bad input: none (every 16-bit value is moved unchanged).
    """

    i: In(stream.Signature(LevelRow))
    o: Out(stream.Signature(LevelRow))

    LATENCY = 9

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        inverse = [0] * (N * N)  # scan position of each raster position
        for k, p in enumerate(ZIGZAG.tolist()):
            inverse[p] = k
        banks = [[Signal(LEVEL, name=f"bank{b}_{p}") for p in range(N * N)] for b in range(2)]
        full = [Signal(name=f"bank{b}_full") for b in range(2)]
        wbank, wrow = Signal(), Signal(range(N))
        rbank, rrow = Signal(), Signal(range(N))

        m.d.comb += i.ready.eq(~Mux(wbank, full[1], full[0]))
        with m.If(i.valid & i.ready):
            m.d.sync += wrow.eq(wrow + 1)
            for b in range(2):
                for p in range(N * N):  # raster position p comes from one scan row and lane
                    with m.If((wbank == b) & (wrow == inverse[p] // N)):
                        m.d.sync += banks[b][p].eq(i.payload[inverse[p] % N])
            with m.If(wrow == N - 1):
                m.d.sync += wbank.eq(~wbank)
                for b in range(2):
                    with m.If(wbank == b):
                        m.d.sync += full[b].eq(1)

        ready_bank = Mux(rbank, full[1], full[0])
        with m.If(~o.valid | o.ready):
            m.d.sync += o.valid.eq(ready_bank)
            with m.If(ready_bank):
                m.d.sync += rrow.eq(rrow + 1)
                for u in range(N):
                    column = Array(Mux(rbank, banks[1][N * v + u], banks[0][N * v + u])
                                   for v in range(N))
                    m.d.sync += o.payload[u].eq(column[rrow])
                with m.If(rrow == N - 1):
                    m.d.sync += rbank.eq(~rbank)
                    for b in range(2):
                        with m.If(rbank == b):
                            m.d.sync += full[b].eq(0)
        return m
