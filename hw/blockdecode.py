"""Per-block entropy decoder (index entry + payload bytes -> 64 symbols in 8 scan rows) and the
inverse zigzag, bit-exact with ``actpack.codec.reference.decode_block`` / ``decode_dense``.

One ``BlockDecoder`` is one *lane* of docs/format.md section 12: a splitter that has read the
frame's index hands it, per block in block order, the block's u16 index entry and the block's
payload bytes; the lane emits the block's 64 symbols as 8 scan rows, one a cycle. ``Unzigzag``
turns the scan rows of a ``dct`` block back into the raster (row-major ``8 * v + u``) rows the
``Dequantizer`` and ``IDCT2D`` take; in ``eb``, ``sfpr8`` and ``mask`` scan order is raster
order already.

How a block is decoded in 8 cycles (section 12): the mask (``mb`` <= 8 bytes) and the width
nibbles (<= 4 bytes) are parsed in one cycle. Then scan row ``j`` takes mask byte ``j``: its
``c = popcount`` set bits hold the codes of ranks ``R_j .. R_j + c - 1`` (``R_j`` = set bits
before row ``j``), which lie in groups ``R_j // 8`` and ``R_j // 8 + 1`` and are contiguous in the
value bit string starting at a pointer ``ptr`` kept from row to row. The 128 bits from bit
``ptr`` hold all of them (<= 120 bits); they lie in buffer beats ``ptr // 128`` and the one after
it, so a 9-way beat-pair select and a shift by ``ptr % 128`` find them. Eight extractors take code
``t`` at ``sum_{s < t} w(R_j + s)`` bits into the window, and lane ``i`` (scan position
``8 j + i``) takes code ``popcount(mask byte j below bit i)`` if its mask bit is set, else 0.
A DENSE block is the same machine with an all-ones mask, ``R_j = 8 j`` and its own code map:
with 8 codes per group its groups are consecutive in one bit string starting at byte 4, exactly
like a sparse block's values.
"""

import enum

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
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
_MAX_BEATS = -(-((1 << Shape.cast(IndexEntry["length"].shape).width) - 1) // BEAT_BYTES)


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


def _shift_down(m: Module, value, amount, width: int, name: str):
    """``(value >> amount)[:width]``, zero filled, as one stage of 2:1 multiplexers per bit of
    ``amount`` (largest first, each stage only as wide as the bits still needed). A plain variable
    ``>>`` is the same function but makes every output bit depend on every input bit in
    Amaranth's netlist (whose comb-loop check then walks it for minutes) and becomes megabytes of
    Verilator C++."""
    for k in reversed(range(len(amount))):
        need = width + (1 << k) - 1  # bits still needed after this stage
        padded = Cat(value, Const(0, max(0, (1 << k) + need - len(value))))
        stage = Signal(need, name=f"{name}_sh{k}")
        m.d.comb += stage.eq(Mux(amount[k], padded[1 << k:(1 << k) + need], padded[:need]))
        value = stage
    return value[:width]


def _popcount(bits) -> object:
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
    and any 15-bit codes do). Blocks are stored and forwarded: a block's
    rows start once all its beats are in. The loader takes the entry, then one beat a cycle, into
    one of two block buffers while the emitter reads the other; the next block's header is parsed
    in the cycle the current block's last row is loaded. A block of ``b`` beats therefore takes
    ``max(8, b + 1)`` cycles. Whenever the input is slower (idle beats or entries), the output
    waits.

    Latency (``o.ready`` high, decoder idle): row 0 is transferred ``LATENCY`` = 3 cycles after
    the block's last beat, ``ZERO_LATENCY`` = 4 cycles after the entry of a block without payload
    (entry register, commit, parse, output register). Backpressure: ``o.valid``/``o.payload`` are
    registers; while ``o`` stalls the decoder keeps taking entries and beats until both block
    buffers are full. ``index.ready``/``data.ready`` are registered state only (they depend on
    neither ``valid`` nor ``o.ready``). Timing (not yet synthesized): the header parse (64-bit
    popcount, width sum, length compare) is one combinational cycle, the longest path.

    Bad input: every check of docs/format.md section 8.2, and the index checks (#21) that concern
    one entry; a malformed block still yields its 8 rows, all zero, with ``error`` set
    (``BlockError``), and the next block decodes normally. A RAW entry (RAW blocks are copied
    around the lanes) is consumed with its beats and flagged INDEX. In ``sfpr8`` a decoded value
    beyond +-127 is flagged RANGE from its row on (the values are output as decoded).
    """

    LATENCY = 3
    ZERO_LATENCY = 4
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

        # ---- two block buffers: the loader fills one while the emitter reads the other
        bufs = [Signal(8 * BEAT_BYTES * BUFFER_BEATS, name=f"buf{b}") for b in range(2)]
        full = [Signal(name=f"buf{b}_full") for b in range(2)]
        entries = [Signal(IndexEntry, name=f"buf{b}_entry") for b in range(2)]
        beats_errs = [Signal(name=f"buf{b}_beats_err") for b in range(2)]

        # ---- loader: an entry, then its beats, into buffer ``wsel``
        entry = Signal(IndexEntry)
        have = Signal()  # ``entry`` holds a block not yet committed to a buffer
        wsel = Signal()
        beat = Signal(range(_MAX_BEATS))
        beats_err = Signal()
        nbeats = Signal(range(_MAX_BEATS + 1))
        tail = Signal(range(BEAT_BYTES + 1))  # valid bytes of the last beat
        is_last = Signal()
        bad_beat = Signal()
        can_load = Signal()
        commit = Signal()
        m.d.comb += [
            nbeats.eq((entry.length + BEAT_BYTES - 1) >> beat_shift),
            tail.eq(entry.length - ((nbeats - 1) << beat_shift)),
            is_last.eq(beat == nbeats - 1),
            bad_beat.eq((beats.payload.last != is_last)
                        | (beats.payload.count != Mux(is_last, tail, BEAT_BYTES))),
            can_load.eq(have & ~Mux(wsel, full[1], full[0])),
            index.ready.eq(~have),
            beats.ready.eq(can_load & (nbeats != 0)),
            commit.eq(can_load & ((nbeats == 0) | (beats.valid & is_last))),
        ]
        with m.If(index.valid & index.ready):
            m.d.sync += [entry.eq(index.payload), have.eq(1), beat.eq(0), beats_err.eq(0)]
        with m.If(beats.valid & beats.ready):
            m.d.sync += [beat.eq(beat + 1), beats_err.eq(beats_err | bad_beat)]
            for b in range(2):
                for s in range(BUFFER_BEATS):  # beats past the buffer: a malformed block, dropped
                    with m.If((wsel == b) & (beat == s)):
                        m.d.sync += bufs[b].word_select(s, 8 * BEAT_BYTES).eq(beats.payload.data)
        with m.If(commit):
            m.d.sync += [have.eq(0), wsel.eq(~wsel)]
            for b in range(2):
                with m.If(wsel == b):
                    m.d.sync += [full[b].eq(1), entries[b].eq(entry),
                                 beats_errs[b].eq((nbeats != 0) & (beats_err | bad_beat))]

        # ---- parse the next block's header (combinational; registered when the block is taken)
        active = Signal()  # the emitter holds a block
        rsel = Signal()  # buffer of the block being emitted (when idle: of the next block)
        row = Signal(range(N))
        nxt = Signal()
        m.d.comb += nxt.eq(Mux(active, ~rsel, rsel))
        buf = Signal(8 * _HEADER_BYTES)  # the parse needs only the mask and width bytes
        ent = Signal(IndexEntry)
        m.d.comb += [buf.eq(Mux(nxt, bufs[1], bufs[0])[:8 * _HEADER_BYTES]),
                     ent.eq(Mux(nxt, entries[1].as_value(), entries[0].as_value()))]
        length, mbm1 = ent.length, ent.mb_minus_1
        mb = Signal(range(N + 1))
        mask = Signal(N * N)
        n = Signal(range(N * N + 1))
        ngroups = Signal(range(N + 1))
        wbytes = Signal(range(N // 2 + 1))
        m.d.comb += [
            mb.eq(mbm1 + 1),
            # mask bytes past the block's end read as 0, like the reference's ``data[:mb]``
            mask.eq(Cat(*(Mux((j < mb) & (j < length), buf.word_select(j, 8), 0)
                          for j in range(N)))),
            n.eq(_popcount(mask)),
            ngroups.eq((n + N - 1) >> 3),
            wbytes.eq((ngroups + 1) >> 1),
        ]
        # the width bytes follow the mask
        sparse_w = _shift_down(m, buf, mb << 3, 4 * N, "wbytes")
        dense_w = buf[:4 * N]  # DENSE_HEADER bytes of nibbles
        w_sparse = Cat(*(Mux(g < ngroups, sparse_w[4 * g:4 * g + 4], 0) for g in range(N)))
        # group g holds the nonzero symbols of rank 8g .. 8g + 7: min(8, max(0, n - 8g)) codes
        sizes = [Mux(n >= N * (g + 1), N, Mux(n > N * g, n - N * g, 0)) for g in range(N)]
        nbits = Signal(range(spec.WIDTH_MAX * N * N + 1))
        m.d.comb += nbits.eq(sum(sizes[g] * w_sparse[4 * g:4 * g + 4] for g in range(N)))
        expected = (mb if mask_mode else mb + wbytes + ((nbits + 7) >> 3))
        expected_dense = DENSE_HEADER + sum(dense_w[4 * g:4 * g + 4] for g in range(N))
        is_zero, is_coded = ent.kind == Kind.ZERO, ent.kind == Kind.CODED
        is_raw, is_dense = ent.kind == Kind.RAW, ent.kind == Kind.DENSE
        hdr = {
            BlockError.MASK: is_coded & ((mask == 0) | (mask.word_select(mbm1, 8) == 0)),
            BlockError.LENGTH: (is_coded & (length != expected))
            | (is_dense & (length != expected_dense)),
            BlockError.RANGE: Const(0),
            BlockError.INDEX: is_raw | (is_zero & ((length != 0) | (mbm1 != 0)))
            | (is_dense & ((mbm1 != 0) | mask_mode)),
            BlockError.BEATS: Mux(nxt, beats_errs[1], beats_errs[0]),
        }
        hdr_err = Signal(_ERROR_BITS)
        m.d.comb += hdr_err.eq(Cat(*(hdr[flag] for flag in BlockError)))

        # ---- emitter state, one scan row a cycle
        e_mask = Signal(N * N)  # mask bits of rows not yet emitted (row j's byte at the bottom)
        e_widths = Signal(4 * N)  # width nibble of group g at bits 4g (0 for absent groups)
        e_ptr = Signal(range(8 * BEAT_BYTES * BUFFER_BEATS + 1))  # bit of the next code
        e_rank = Signal(range(N * N + 1))  # rank of the next code (set mask bits so far)
        e_dense = Signal()
        e_err = Signal(_ERROR_BITS)

        # ---- one scan row from the emitter state
        mbyte = e_mask[:N]
        rank_in_group, group = e_rank[:3], e_rank >> 3
        w0 = (e_widths >> (group << 2))[:4]
        w1 = (e_widths >> ((group + 1) << 2))[:4]
        widths, offsets = [], [Const(0, 7)]  # code t: width, bit offset within the row's window
        for t in range(N):
            wt = Signal(4, name=f"w_{t}")
            m.d.comb += wt.eq(Mux(rank_in_group + t < N, w0, w1))
            off = Signal(range(spec.WIDTH_MAX * N + 1), name=f"off_{t + 1}")
            m.d.comb += off.eq(offsets[-1] + wt)
            widths.append(wt)
            offsets.append(off)
        # Ref: docs/format.md section 12: a row's codes are <= 120 bits, so they lie in the 16
        # bytes from bit ptr; those start in beat ptr // 128 and end in the beat after it.
        beat_bits = 8 * BEAT_BYTES
        padded = [Cat(b, Const(0, beat_bits)) for b in bufs]
        pairs = [Array(p[beat_bits * s:beat_bits * (s + 2)] for s in range(BUFFER_BEATS))
                 for p in padded]
        pair = Signal(2 * beat_bits)
        beat_index = e_ptr >> (beat_bits.bit_length() - 1)
        m.d.comb += pair.eq(Mux(rsel, pairs[1][beat_index], pairs[0][beat_index]))
        window = Signal(beat_bits)
        m.d.comb += window.eq(_shift_down(m, pair, e_ptr[:beat_bits.bit_length() - 1],
                                          beat_bits, "window"))
        codes = []
        for t in range(N):
            code = Signal(spec.WIDTH_MAX, name=f"code_{t}")
            m.d.comb += code.eq(_shift_down(m, window, offsets[t], spec.WIDTH_MAX, f"code_{t}")
                                & ((Const(1, spec.WIDTH_MAX + 1) << widths[t]) - 1))
            codes.append(code)
        codes = Array(codes)
        values, out_of_range = [], []
        for i in range(N):
            u = Signal(spec.WIDTH_MAX, name=f"u_{i}")
            v = Signal(LEVEL, name=f"v_{i}")
            m.d.comb += u.eq(codes[_popcount(mbyte[:i]) if i else 0])
            if mask_mode:
                m.d.comb += v.eq(mbyte[i])
            else:
                mag = (u >> 1) + 1  # sparse: u = 2 (|v| - 1) + (v < 0)
                sparse_v = Mux(u[0], -mag, mag)
                dense_v = Mux(u[0], -((u + 1) >> 1), u >> 1)  # dense: u = 2 |v| - (v < 0)
                m.d.comb += v.eq(Mux(mbyte[i], Mux(e_dense, dense_v, sparse_v), 0))
            values.append(v)
            out_of_range.append((v > spec.SFPR_MAX) | (v < -spec.SFPR_MAX))
        row_err = Signal(_ERROR_BITS)
        range_hit = Cat(*out_of_range).any() if self.mode is spec.Mode.SFPR8 else Const(0)
        m.d.comb += row_err.eq(e_err | Mux(range_hit, BlockError.RANGE, 0))

        # ---- handshakes: emit a row when the output register is free; take the next block when
        # idle or with the current block's last row
        emit = Signal()
        finish = Signal()
        take = Signal()
        m.d.comb += [
            emit.eq(active & (~o.valid | o.ready)),
            finish.eq(emit & (row == N - 1)),
            take.eq(Mux(nxt, full[1], full[0]) & (~active | finish)),
        ]
        with m.If(~o.valid | o.ready):
            m.d.sync += o.valid.eq(active)
        with m.If(emit):
            m.d.sync += [
                *(o.payload.symbols[i].eq(values[i]) for i in range(N)),
                o.payload.error.eq(row_err),
                o.payload.last.eq(row == N - 1),
                e_err.eq(row_err),
                e_mask.eq(e_mask >> N),
                e_rank.eq(e_rank + _popcount(mbyte)),
                e_ptr.eq(e_ptr + Array(offsets)[_popcount(mbyte)]),
                row.eq(row + 1),
            ]
        with m.If(finish):
            m.d.sync += [active.eq(0), rsel.eq(~rsel)]
            for b in range(2):
                with m.If(rsel == b):
                    m.d.sync += full[b].eq(0)
        with m.If(take):
            decodes = (is_coded | is_dense) & (hdr_err == 0)
            m.d.sync += [
                active.eq(1),
                rsel.eq(nxt),
                row.eq(0),
                e_err.eq(hdr_err),
                e_mask.eq(Mux(decodes, Mux(is_dense, (1 << N * N) - 1, mask), 0)),
                e_widths.eq(Mux(is_dense, dense_w, w_sparse)),
                e_ptr.eq(Mux(is_dense, 8 * DENSE_HEADER, (mb + wbytes) << 3)),
                e_rank.eq(0),
                e_dense.eq(is_dense),
            ]
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
