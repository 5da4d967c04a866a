"""Per-block encoder stage: zigzag reordering and the entropy code of one 8x8 block of symbols,
bit-exact with ``actpack.codec.reference`` (``ZIGZAG``, ``encode_block``, ``encode_dense`` and
the kind decision of ``compress``).

``Zigzag`` turns raster rows of quantized DCT levels into scan rows (dct mode only: in the raster
modes scan order is raster order and the stage is left out). ``BlockEncoder`` takes a block as 8
scan rows and emits its index entry (the u16 of the frame's block index) and its coded bytes.

``block_model`` is the software model of ``BlockEncoder`` built from the reference functions:
the testbenches compare the gateware against it, and tests/hw/test_hw_blockcode.py checks it
against ``reference.compress``.
"""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import reference, spec
from actpack.codec.frame import DENSE_HEADER, Kind, pack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import ZIGZAG

from .beats import BEAT_BYTES, CodeBeat, IndexEntry
from .dct import PIXEL
from .quant import LEVEL
from .streams import skid

__all__ = [
    "BlockEncoder",
    "Zigzag",
    "block_model",
    "symbol_shape",
]

N = spec.BLOCK

_CODE = spec.WIDTH_MAX  # bits of a code that can be coded; wider ones force RAW (or the other kind)
_WIDTH = unsigned(_CODE.bit_length())  # a group width 0..15
_EB_D_MAX = 4 * spec.EB_Q_SAT  # |Lorenzo residual| <= 4 * |q|max (four terms of +-2**15)


def symbol_shape(mode: Mode) -> Shape:
    """Shape of one symbol on ``BlockEncoder``'s input for ``mode``: dct levels (``LEVEL``,
    signed 16), sfpr8 values (``PIXEL``, signed 8), eb Lorenzo residuals (+-2**17, signed 19),
    mask bits (unsigned 1)."""
    mode = Mode.parse(mode)
    return {
        Mode.DCT: LEVEL,
        Mode.SFPR8: PIXEL,
        Mode.EB: Shape.cast(range(-_EB_D_MAX, _EB_D_MAX + 1)),
        Mode.MASK: unsigned(1),
    }[mode]


def block_model(symbols, *, mode, dtype, force_raw: bool = False) -> tuple[int, bytes]:
    """(index entry, coded bytes) of one block of 64 scan-order symbols, exactly as
    ``reference.compress`` decides and codes it; RAW and ZERO blocks have no coded bytes (the
    frame builder supplies a RAW block's input values)."""
    mode, dtype = Mode.parse(mode), DType(dtype)
    symbols = np.asarray(symbols, dtype=np.int64).reshape(64)
    raw_len = 64 * dtype.itemsize
    kind, mb, chunk = Kind.ZERO, 1, b""
    if force_raw and mode is not Mode.MASK:
        kind = Kind.RAW
    elif symbols.any():
        kind = Kind.RAW
        coded = reference.encode_block(symbols, with_values=mode is not Mode.MASK)
        if coded is not None and len(coded[1]) <= raw_len:
            kind, (mb, chunk) = Kind.CODED, coded
        dense = reference.encode_dense(symbols) if mode is not Mode.MASK else None
        if dense is not None and len(dense) <= raw_len and (
                kind is Kind.RAW or len(dense) < len(chunk)):
            kind, mb, chunk = Kind.DENSE, 1, dense
    length = raw_len if kind is Kind.RAW else len(chunk)
    entry = int(pack_index(np.array([kind]), np.array([mb]), np.array([length]))[0])
    return entry, (b"" if kind is Kind.RAW else chunk)


def _bitlen(value) -> Signal:
    """``bitlen`` of an unsigned value (priority encoder on its highest set bit)."""
    out = Const(0, range(len(value) + 1))
    for b in range(len(value)):
        out = Mux(value[b], b + 1, out)
    return out


class Zigzag(wiring.Component):
    """Reorder a block from raster rows to zigzag scan rows (``tables.ZIGZAG``): output row ``j``
    lane ``i`` is input value ``ZIGZAG[8 j + i]`` (row-major index ``8 v + u``).

    Input ``i``: rows of 8 values (``ArrayLayout(shape, 8)``, default ``LevelRow``), rows 0..7
    of a block, blocks back to back; the row index is the number of rows transferred since
    reset modulo 8. Output ``o``: the same block as 8 scan rows, same layout.

    Throughput: 8 values per cycle sustained, no bubbles between blocks: two 64-value banks, one
    filling while the other drains. Latency: ``LATENCY`` = 9 cycles from a row's transfer on
    ``i`` to the transfer of the output row with the same index (unstalled): the first scan row
    goes out two cycles after the block's last raster row came in.

    Backpressure: ``o.valid``/``o.payload`` are registers; ``i.ready`` is a register function
    (low while the bank being filled still holds an unread block). There is no invalid input:
    values are moved, never interpreted.
    """

    LATENCY = 9

    def __init__(self, *, shape=LEVEL):
        try:
            shape = Shape.cast(shape)
        except TypeError as exc:
            raise ValueError(f"shape: {shape!r} is not an Amaranth shape") from exc
        self._layout = data.ArrayLayout(shape, N)
        super().__init__({
            "i": In(stream.Signature(self._layout)),
            "o": Out(stream.Signature(self._layout)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        shape = self._layout.elem_shape
        banks = [[Signal(shape, name=f"z{k}_{p}") for p in range(N * N)] for k in range(2)]
        full = Signal(2)  # full[k]: bank k holds a whole block not yet read out
        w_bank, r_bank = Signal(), Signal()
        w_row, r_row = Signal(range(N)), Signal(range(N))
        set_full, clear_full = Signal(2), Signal(2)

        m.d.comb += i.ready.eq(~full.bit_select(w_bank, 1))
        with m.If(i.valid & i.ready):
            with m.Switch(Cat(w_row, w_bank)):
                for k in range(2):
                    for r in range(N):
                        with m.Case(r | (k << 3)):
                            m.d.sync += [banks[k][N * r + u].eq(i.payload[u]) for u in range(N)]
            m.d.sync += w_row.eq(w_row + 1)
            with m.If(w_row == N - 1):
                m.d.comb += set_full.bit_select(w_bank, 1).eq(1)
                m.d.sync += w_bank.eq(~w_bank)

        readable = full.bit_select(r_bank, 1)
        with m.If(~o.valid | o.ready):
            m.d.sync += o.valid.eq(readable)
            with m.If(readable):
                # lane i of scan row j is a fixed raster position: an 8:1 mux per lane and bank
                with m.Switch(r_row):
                    for j in range(N):
                        with m.Case(j):
                            for lane in range(N):
                                p = int(ZIGZAG[N * j + lane])
                                m.d.sync += o.payload[lane].eq(
                                    Mux(r_bank, banks[1][p], banks[0][p]))
                m.d.sync += r_row.eq(r_row + 1)
                with m.If(r_row == N - 1):
                    m.d.comb += clear_full.bit_select(r_bank, 1).eq(1)
                    m.d.sync += r_bank.eq(~r_bank)
        # set needs the bank empty and clear needs it full: never the same bank in one cycle
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        return m


# Sizes of the packer (section 12 of docs/format.md): a group is 8 codes of at most 15 bits; a
# sparse header is at most 8 mask bytes and 4 width bytes. The first slot of a block carries the
# header and group 0; every later slot one group.
_GROUP_BITS = N * _CODE  # 120
_HDR_BITS = 8 * (N + N // 2)  # 96
_SLOT_BITS = _HDR_BITS + _GROUP_BITS  # 216
_BEAT_BITS = 8 * BEAT_BYTES  # 128
_ACC_BITS = 256  # a full beat's worth waiting (<= 136 bits after an emit) plus one group fits
_MAX_BLOCK = N + N // 2 + _GROUP_BITS  # 132 bytes: the longest coded block


class BlockEncoder(wiring.Component):
    """Entropy code of one block per 8 scan rows: index entry and coded bytes, bit-exact with
    ``block_model`` (``reference.encode_block`` / ``encode_dense`` and the kind decision of
    ``reference.compress``).

    Input ``i``: one scan row of 8 symbols per transfer (``row_layout``: ``symbols``, an
    ``ArrayLayout(symbol_shape(mode), 8)``, and except in mask mode a ``force_raw`` bit), rows
    0..7 of a block (scan positions ``8 j .. 8 j + 7``), blocks back to back; the row index is
    the number of rows transferred since reset modulo 8. ``force_raw`` is ORed over the block's
    rows: set it on any row of a block that must be stored RAW (a NaN/Inf value, a failed eb
    bound check; decided upstream).

    Output ``index``: one ``IndexEntry`` per block, in block order: ZERO (all symbols 0), CODED,
    DENSE (the shorter of the two codings, ties to CODED; never DENSE in mask mode) or RAW
    (``force_raw``, or neither coding has all widths <= 15 bits and length <= 64 * itemsize;
    length 64 * itemsize; the frame builder supplies the raw values). Output ``o``: the coded
    bytes of each CODED/DENSE block as ``CodeBeat`` beats (16 bytes a beat, the last beat with
    ``count`` and ``last``); ZERO and RAW blocks produce no beats. A block's index entry is
    offered no later than its first beat; the two streams stall independently.

    Throughput: one block per 8 cycles (8 symbols per cycle, ``i`` never stalled) for any
    sequence of blocks of at most 128 coded bytes (8 beats): every dct, sfpr8 and mask block
    in practice, and every DENSE block (at most 124 bytes). The packer emits one beat a cycle
    and starts a block only once the previous block's last beat has left; a block over 128
    bytes (9 beats: CODED with 64 codes of 15 bits, eb float32 or dct levels beyond the
    Quantizer's range) holds the input for at most one cycle.

    Latency (unstalled, no block over 128 bytes before): ``INDEX_LATENCY`` = 17 cycles (mask
    mode: 9) from the transfer of a block's last row to that of its index entry. Its last beat
    leaves ``BEAT_LATENCY`` (= ``INDEX_LATENCY``) + ``e`` cycles after the last row, or one
    cycle later if more than 16 bytes were still waiting once group ``e`` was in, where ``e``
    is the last group with bits: 0 in mask mode, ``ceil(n / 8) - 1`` for CODED (``n`` nonzero
    symbols), 7 for DENSE. Earlier beats leave as soon as 16 bytes are ready.

    Structure (every stage a few LUT levels deep; no multipliers): (A) per row, over three
    registers: codes and nonzero mask; compaction of the nonzero codes into rank order; the
    row into one of two banks (rank-ordered 64-entry buffer, dense codes), rotated by the
    block's nonzero count so far. (B) per group, one a cycle from the full bank, a 12-stage
    pipeline (mask mode: 4) whose tokens carry their block's values: every group's OR of its
    8 codes, then its width (``bitlen``); width sums and the last group's size; lengths (products
    of small values as shifted adds); the kind; the chosen coding's codes, header and index
    entry; the 8 codes packed at ``j * w`` in three pairwise steps; the group shifted to its
    bit position in the block modulo 128 in two steps. (C) behind a head register and a skid
    register (so B moves on a register, not on C's decision, and C decides from registers
    only), a 256-bit packer that ORs each slot in at beat 0 or 1 and cuts a beat whenever 128
    bits are waiting or the block is complete, from the bits waiting plus the slot taken in
    the same cycle; its decisions steer only the narrow state (bit and byte counts, flags) and
    the 256 waiting bits follow them from registers a cycle later; ``o`` and ``index`` leave
    through skid registers, so no ``ready`` reaches the packer's decisions.

    Backpressure: every output ``valid``/``payload`` is a register; ``i.ready`` is a register,
    low while both banks, the two row registers in front of them and the input's skid
    register hold rows (a stalled ``o`` or
    ``index`` stops the packer, then the group pipeline, the bank reads, then ``i``). Bad
    input: none; every value the port carries is coded or sent RAW as the reference would.
    """

    def __init__(self, *, mode, dtype=DType.FLOAT32):
        self.mode = Mode.parse(mode)  # ValueError naming ``mode``
        # 2 row stages before the bank, the group pipeline (12 stages; mask mode: 4), the
        # packer's head register, the packer
        self.INDEX_LATENCY = self.BEAT_LATENCY = 9 if self.mode is Mode.MASK else 17
        self.dtype = DType.parse(dtype)  # ValueError naming ``dtype``
        fields = {"symbols": data.ArrayLayout(symbol_shape(self.mode), N)}
        if self.mode is not Mode.MASK:
            fields["force_raw"] = unsigned(1)
        self.row_layout = data.StructLayout(fields)
        super().__init__({
            "i": In(stream.Signature(self.row_layout)),
            "index": Out(stream.Signature(IndexEntry)),
            "o": Out(stream.Signature(CodeBeat)),
        })

    def _row_codes(self, m: Module, row):
        """A0's values of one input row (a ``row_layout`` value), combinational: ``nz`` (a
        symbol's nonzero bit a lane), ``before`` (nonzeros before lanes 1..8: lane 8 is the
        row's count) and, except in mask mode, ``sc``/``dc`` (each lane's sparse and dense
        code: one bit more than the symbol, at most 15), ``wide_s``/``wide_d`` (a code wider
        than 15 bits) and ``force_raw``."""
        fields = {"nz": unsigned(N), "before": data.ArrayLayout(range(N + 1), N)}
        # a code has at most one bit more than its symbol: only those bits are held here (the
        # skid register's upper bits would be constant zeros that Yosys keeps, and with them
        # 15-bit codes through every stage and bank behind it: 2,900 LUT4 more in sfpr8)
        cut = min(_CODE, symbol_shape(self.mode).width + 1)
        if self.mode is not Mode.MASK:
            fields.update(sc=data.ArrayLayout(cut, N), dc=data.ArrayLayout(cut, N),
                          wide_s=unsigned(1), wide_d=unsigned(1), force_raw=unsigned(1))
        codes = Signal(data.StructLayout(fields), name="row_codes")
        sym = self.row_layout(row).symbols
        nz = Cat(*(sym[u] != 0 for u in range(N)))
        m.d.comb += [codes.nz.eq(nz),
                     *(codes.before[u - 1].eq(sum(nz[x] for x in range(u)))
                       for u in range(1, N + 1))]
        if self.mode is Mode.MASK:
            return codes
        wide_s_bits, wide_d_bits = [], []
        for u in range(N):
            v = sym[u]
            neg = v[-1]
            inv = ~v.as_unsigned()
            # 2 (|v| - 1) + sign and 2 |v| - sign without an absolute value: -v - 1 == ~v
            sfull = Mux(neg, Cat(Const(1, 1), inv),
                        Cat(Const(0, 1), (v - 1).as_unsigned()[:len(v)]))
            dfull = Mux(neg, Cat(Const(1, 1), inv), Cat(Const(0, 1), v.as_unsigned()))
            m.d.comb += [codes.sc[u].eq(Mux(v != 0, sfull[:cut], 0)),
                         codes.dc[u].eq(dfull[:cut])]
            if len(v) + 1 > _CODE:
                wide_s_bits.append((v != 0) & sfull[_CODE:].any())
                wide_d_bits.append(dfull[_CODE:].any())
        m.d.comb += [codes.wide_s.eq(Cat(*wide_s_bits).any() if wide_s_bits else 0),
                     codes.wide_d.eq(Cat(*wide_d_bits).any() if wide_d_bits else 0),
                     codes.force_raw.eq(self.row_layout(row).force_raw)]
        return codes

    def elaborate(self, platform):
        m = Module()
        i, o, index = self.i, self.o, self.index
        values = self.mode is not Mode.MASK  # mask mode codes the mask bytes only
        raw_len = 64 * self.dtype.itemsize

        def stage(name, value, en, shape=None):
            """A register loaded with ``value`` when ``en``."""
            r = Signal(shape if shape is not None else Shape.cast(value.shape()), name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        # ------------------------------------------- A0: codes of a row (input register)
        # in front of it a skid register, so ``i.ready`` is a register (~sk_valid): the
        # encoder's stall decision never reaches the stages upstream in the same cycle. The skid
        # holds the row's codes (computed from ``i.payload`` as it loads), not its symbols, so
        # its select sits behind the symbol compares and popcounts, not in front of them.
        a1_free = Signal()
        a0_valid = Signal()
        a0_free = ~a0_valid | a1_free
        sk_valid = Signal()
        codes = self._row_codes(m, i.payload)
        sk = Signal.like(codes)
        m.d.comb += i.ready.eq(~sk_valid)
        with m.If(~sk_valid):  # (whether or not taken: the enable is a register)
            m.d.sync += sk.eq(codes)
        m.d.sync += sk_valid.eq(~a0_free & (sk_valid | i.valid))
        x_in = codes.shape()(Mux(sk_valid, sk, codes))
        in_valid = sk_valid | i.valid
        with m.If(a0_free):
            m.d.sync += a0_valid.eq(in_valid)
        # the row registers load whenever the stage is free (``a0_valid`` says whether they
        # hold a row): their enable, which fans out to some 300 flip-flops, is a LUT of three
        # registers (``a0_valid``, ``a1_valid``, ``w_full``), not of the input's valid too
        take0 = a0_free
        a0_nz = stage("a0_nz", x_in.nz, take0, N)
        # nonzeros before each lane and in the row (lane 8): the compaction's selects
        a0_before = [stage(f"a0_before{u}", x_in.before[u - 1], take0, range(N + 1)) if u
                     else Const(0, 1) for u in range(N + 1)]
        if values:
            a0_sc = [stage(f"a0_sc{u}", x_in.sc[u], take0, _CODE) for u in range(N)]
            a0_dc = [stage(f"a0_dc{u}", x_in.dc[u], take0, _CODE) for u in range(N)]
            a0_ws = stage("a0_wide_s", x_in.wide_s, take0, 1)
            a0_wd = stage("a0_wide_d", x_in.wide_d, take0, 1)
            a0_force = stage("a0_force", x_in.force_raw, take0, 1)

        # --------------------------- A1: compaction of the nonzero codes (rank order in a row)
        bank_take = Signal()
        a1_valid = Signal()
        m.d.comb += a1_free.eq(~a1_valid | bank_take)
        with m.If(a1_free):
            m.d.sync += a1_valid.eq(a0_valid)
        take1 = a1_free & a0_valid
        a1_nz = stage("a1_nz", a0_nz, take1, N)
        a1_pop = stage("a1_pop", a0_before[N], take1, range(N + 1))
        if values:
            compact = []
            for k in range(N):
                # the nonzero symbol with k nonzeros before it is slot k (zero codes drop out)
                hits = [Mux(a0_before[u] == k, a0_sc[u], 0) if u else
                        (a0_sc[0] if k == 0 else Const(0, _CODE)) for u in range(k, N)]
                compact.append(_or(hits))
            a1_compact = [stage(f"a1_compact{k}", compact[k], take1, _CODE) for k in range(N)]
            a1_dc = [stage(f"a1_dc{u}", a0_dc[u], take1, _CODE) for u in range(N)]
            a1_ws = stage("a1_wide_s", a0_ws, take1, 1)
            a1_wd = stage("a1_wide_d", a0_wd, take1, 1)
            a1_force = stage("a1_force", a0_force, take1, 1)

        # ---------------------------------------------------------- A2: the row into a bank
        w_bank, w_row = Signal(), Signal(range(N))
        full, set_full, clear_full = Signal(2), Signal(2), Signal(2)
        w_full = Signal()  # full[w_bank], a register: the row stages' stall starts at it
        masks = [Signal(64, name=f"mask{k}") for k in range(2)]
        counts = [Signal(range(65), name=f"count{k}") for k in range(2)]  # nonzero symbols
        force = [Signal(name=f"force_raw{k}") for k in range(2)]
        wide_s = [Signal(name=f"wide_sparse{k}") for k in range(2)]  # a sparse code > 15 bits
        wide_d = [Signal(name=f"wide_dense{k}") for k in range(2)]  # a dense code > 15 bits
        # nonzero (sparse) codes by rank, and dense codes by scan position: 15 bits each
        ranks = [[Signal(_CODE, name=f"rank{k}_{e}") for e in range(64)] for k in range(2)]
        dense = [[Signal(_CODE, name=f"dense{k}_{p}") for p in range(64)] for k in range(2)]

        m.d.comb += bank_take.eq(a1_valid & ~w_full)
        write = bank_take
        # registers, not functions of w_row and counts: they fan out to every entry
        first_row = Signal(init=1)  # w_row == 0
        rank0 = Signal(range(65))  # rank of this row's first nonzero symbol in the block
        # entry e takes compact slot e - rank0 if that is 0..7: rotate the row by rank0 mod 8
        # (``lo``), then entry e takes lane e mod 8 when it lies in [rank0, rank0 + 8). The
        # selects are registers decoded from the next rank0, each with a small fan-out:
        # ``rot_sel[j]`` = (j - lo) mod 8, the compact slot lane j takes; ``ge[j]`` = lo <= j;
        # ``at_hi[g]`` = (rank0 >> 3) == g (rank0 itself fanned out to the 8:1 selects of every
        # lane and bit through a subtraction: the dct Compressor's critical path, 148.9 MHz)
        rot_sel = [Signal(3, init=j, name=f"rot_sel{j}") for j in range(N)]
        ge = [Signal(init=1, name=f"ge{j}") for j in range(N)]
        at_hi = [Signal(init=int(g == 0), name=f"at_hi{g}") for g in range(N)]
        with m.If(write):
            rank0_next = Mux(w_row == N - 1, 0, rank0 + a1_pop)[:len(rank0)]
            lo_next, hi_next = rank0_next[:3], rank0_next[3:6]
            m.d.sync += [first_row.eq(w_row == N - 1), rank0.eq(rank0_next),
                         *(rot_sel[j].eq((j - lo_next)[:3]) for j in range(N)),
                         *(ge[j].eq(lo_next <= j) for j in range(N)),
                         *(at_hi[g].eq(hi_next == g) for g in range(N))]

        if values:
            compact_bits = Cat(*a1_compact)
            rot = [compact_bits.word_select(rot_sel[j], _CODE) for j in range(N)]
            entry_we = Signal(64)
            entry_data = [Signal(_CODE, name=f"entry_data{e}") for e in range(64)]
            for e in range(64):
                g, j = e >> 3, e & 7
                hit = Signal(name=f"hit{e}")
                m.d.comb += hit.eq((at_hi[g] & ge[j]) | ((at_hi[g - 1] & ~ge[j]) if g else 0))
                m.d.comb += [
                    entry_we[e].eq(hit | first_row),
                    entry_data[e].eq(Mux(hit, rot[j], 0)),
                ]

        # The wide bank registers (dense codes, ranks, mask bytes, counts) do not wait for a
        # row: they load A1's values in every cycle that their bank (``wr_bank[k]``: the bank
        # being filled, and free) and row (``wr_row[k][r]``) are the write target, whether A1
        # holds a row or not. Until the row comes they take stale values, which it overwrites
        # (the same cells: ``w_row``, ``rank0`` and ``first_row`` move only with a row, and a
        # bank is full, so never written, from its last row until it is read out). Their
        # enables are registers set from the next state, not ``write`` (``w_full``) fanned out
        # to some 2,000 flip-flops. Flags that gather over a block's rows take rows only.
        wr_bank = [Signal(init=int(k == 0), name=f"wr_bank{k}") for k in range(2)]
        wr_row = [[Signal(init=int(k == 0 and r == 0), name=f"wr_row{k}_{r}") for r in range(N)]
                  for k in range(2)]
        with m.If(write):
            m.d.sync += w_row.eq(w_row + 1)
            with m.If(w_row == N - 1):
                m.d.comb += set_full.bit_select(w_bank, 1).eq(1)
                m.d.sync += w_bank.eq(~w_bank)
            if values:
                keep = ~first_row  # the flags restart with each block's first row
                with m.Switch(w_bank):
                    for k in range(2):
                        with m.Case(k):
                            m.d.sync += [
                                force[k].eq((force[k] & keep) | a1_force),
                                wide_s[k].eq((wide_s[k] & keep) | a1_ws),
                                wide_d[k].eq((wide_d[k] & keep) | a1_wd),
                            ]
        for k in range(2):
            with m.If(wr_bank[k]):
                m.d.sync += counts[k].eq(rank0 + a1_pop)
                if values:
                    for e in range(64):
                        with m.If(entry_we[e]):
                            m.d.sync += ranks[k][e].eq(entry_data[e])
            for r in range(N):
                with m.If(wr_row[k][r]):
                    m.d.sync += masks[k][N * r: N * (r + 1)].eq(a1_nz)
                    if values:
                        m.d.sync += [dense[k][N * r + u].eq(a1_dc[u]) for u in range(N)]

        # ------------------------------------------ B: one group a cycle through a pipeline
        # Every stage register moves on ``adv`` (the skid buffer in front of C is empty), so a
        # token (one group of the block, in order) carries its block's values along with it.
        adv = Signal()
        r_bank, group = Signal(), Signal(range(N))
        readable = full.bit_select(r_bank, 1)
        read = adv & readable
        with m.If(read):
            m.d.sync += group.eq(group + 1)
            with m.If(group == N - 1):
                m.d.comb += clear_full.bit_select(r_bank, 1).eq(1)
                m.d.sync += r_bank.eq(~r_bank)
        # the group read is an AND-OR over one-hot selects, ``g_sel[k][g]`` (bank k, group g:
        # registers set from the next r_bank and group), each with a small fan-out (a select
        # by ``r_bank`` and then ``group`` decoded the counter and fanned it out to every code
        # bit: the Compressor sfpr8's critical path, 149.2 MHz); each group's OR is taken in
        # both banks before the bank is chosen, so ``r_bank`` reaches 8 ORs, not 64 codes
        g_sel = [[Signal(init=int(k == 0 and g == 0), name=f"g_sel{k}_{g}") for g in range(N)]
                 for k in range(2)]
        group_next = Mux(read, group + 1, group)[:len(group)]
        r_bank_next = r_bank ^ (read & (group == N - 1))
        m.d.sync += [g_sel[k][g].eq((r_bank_next == k) & (group_next == g))
                     for k in range(2) for g in range(N)]
        # set needs the bank empty and clear needs it full: never the same bank in one cycle
        full_next = (full | set_full) & ~clear_full
        w_bank_next = w_bank ^ set_full.any()  # w_bank flips as its bank fills
        w_row_next = Mux(write, w_row + 1, w_row)[:len(w_row)]
        m.d.sync += [full.eq(full_next), w_full.eq(full_next.bit_select(w_bank_next, 1))]
        for k in range(2):
            free_next = (w_bank_next == k) & ~full_next[k]
            m.d.sync += [wr_bank[k].eq(free_next),
                         *(wr_row[k][r].eq(free_next & (w_row_next == r)) for r in range(N))]

        def rd(pair):
            return Mux(r_bank, pair[1], pair[0])

        class Tok:
            def __init__(self, n=0):
                self.n = n

        def pipe(prev, **fields):
            """The next stage: ``prev``'s fields (those not given) and ``fields``, registered."""
            t = Tok()
            t.n = prev.n + 1
            for key, value in {**prev.__dict__, **fields}.items():
                if key == "n":
                    continue
                if isinstance(value, list):
                    setattr(t, key, [stage(f"s{t.n}_{key}{x}", v, adv, Shape.cast(v.shape()))
                                     for x, v in enumerate(value)])
                else:
                    setattr(t, key, stage(f"s{t.n}_{key}", value, adv))
            return t

        # S1: the group's codes (both codings), every group's OR of codes, the block's counts
        g_fields = {"v": readable, "g": group, "first": group == 0}
        if values:
            def group_codes(bank):
                return _or([Mux(g_sel[k][g], Cat(*bank[k][N * g: N * (g + 1)]), 0)
                            for k in range(2) for g in range(N)])

            def group_ors(bank):  # each group's OR in both banks, then the bank
                return [rd([_or(bank[k][N * g: N * (g + 1)]) for k in range(2)])
                        for g in range(N)]

            g_fields.update(sc=[group_codes(ranks)], dc=[group_codes(dense)],
                            os=group_ors(ranks), od=group_ors(dense),
                            force=rd(force), wide_s=rd(wide_s), wide_d=rd(wide_d))
        g_fields.update(cnt=rd(counts), mask=rd(masks))
        s1 = pipe(Tok(), **g_fields)
        if values:  # S1b: every group's width (bitlen of the OR), and the widths' pair sums
            # (the first adder level of S2's width sums here: 8 widths summed in one stage
            # were the critical path of both Compressors, 6.5-6.8 ns, 9 levels)
            ws, wd = [_bitlen(x) for x in s1.os], [_bitlen(x) for x in s1.od]
            s1 = pipe(s1, ws=ws, wd=wd, ws2=[ws[j] + ws[j + 1] for j in range(0, N, 2)],
                      wd2=[wd[j] + wd[j + 1] for j in range(0, N, 2)])
            del s1.os, s1.od

        # S2: mask bytes, group counts, width sums, the last group's size and width
        row_any = Cat(*(s1.mask[N * j: N * (j + 1)].any() for j in range(N)))
        ngroups = (s1.cnt + 7) >> 3
        f2 = {"mb": _bitlen(row_any), "nz": s1.cnt != 0,
              "ngroups": Signal(range(N + 1), name="ngroups1"),
              "wbytes": Signal(range(N // 2 + 1), name="wbytes1")}
        m.d.comb += [f2["ngroups"].eq(ngroups), f2["wbytes"].eq((f2["ngroups"] + 1) >> 1)]
        if values:
            last = (s1.cnt - 1)[3:6]  # the last group with codes (n > 0)
            k = s1.cnt[:3]
            size_last = Mux(k == 0, N, k)
            f2.update(
                sum_ws=_sum(s1.ws2), sum_wd=_sum(s1.wd2),
                w_last=Cat(*s1.ws).word_select(last, _WIDTH.width),
                size_last=Signal(range(N + 1), name="size_last1"),
                ws_g=Cat(*s1.ws).word_select(s1.g, _WIDTH.width),
                wd_g=Cat(*s1.wd).word_select(s1.g, _WIDTH.width),
                size_g=Signal(range(N + 1), name="size_g1"),
                ws=[Cat(*s1.ws)], wd=[Cat(*s1.wd)])
            m.d.comb += [
                f2["size_last"].eq(size_last),
                f2["size_g"].eq(Mux(s1.g < last, N, Mux(s1.g == last, size_last, 0))),
            ]
        s2 = pipe(s1, **f2)
        del s2.cnt
        if values:
            del s2.ws2, s2.wd2

        # S3: the last group's bits (shift-add), the lengths' parts
        if values:
            s3 = pipe(s2,
                      tail=(_mul(s2.size_last, s2.w_last) + 7) >> 3,
                      base=(s2.mb + s2.wbytes + (s2.sum_ws - s2.w_last).as_unsigned()[:7]),
                      d_len=DENSE_HEADER + s2.sum_wd,
                      glen_s=_mul(s2.size_g, s2.ws_g))
            for key in ("size_last", "w_last", "sum_ws", "sum_wd", "size_g"):
                delattr(s3, key)
            # S4: the lengths
            s4 = pipe(s3, c_len=s3.base + s3.tail, d_ok=~s3.wide_d & (s3.d_len <= raw_len))
            del s4.base, s4.tail
            # S5: the kind
            c_ok = ~s4.wide_s & (s4.c_len <= raw_len)
            kind = Signal(2, name="kind4")
            with m.If(s4.force):
                m.d.comb += kind.eq(Kind.RAW)
            with m.Elif(~s4.nz):
                m.d.comb += kind.eq(Kind.ZERO)
            with m.Elif(c_ok & (~s4.d_ok | (s4.c_len <= s4.d_len))):
                m.d.comb += kind.eq(Kind.CODED)
            with m.Elif(s4.d_ok):
                m.d.comb += kind.eq(Kind.DENSE)
            with m.Else():
                m.d.comb += kind.eq(Kind.RAW)
            s5 = pipe(s4, kind=kind)
            for key in ("force", "wide_s", "wide_d", "d_ok", "nz"):
                delattr(s5, key)
            c_len, d_len = s5.c_len, s5.d_len
            pre = s5
        else:
            c_len = s2.mb
            d_len = Const(0, 1)
            pre = s2
            kind = Mux(s2.nz, Kind.CODED, Kind.ZERO)
        kind = pre.kind if values else kind
        is_dense = kind == Kind.DENSE
        coded = (kind == Kind.CODED) | is_dense
        mb = pre.mb

        # S6: the chosen coding's codes, width, lengths, header and index entry
        entry = Signal(IndexEntry, name="entry5")
        with m.Switch(kind):
            with m.Case(Kind.CODED):
                m.d.comb += [entry.length.eq(c_len), entry.mb_minus_1.eq(mb - 1)]
            with m.Case(Kind.DENSE):
                m.d.comb += entry.length.eq(d_len)
            with m.Case(Kind.RAW):
                m.d.comb += entry.length.eq(raw_len)
        m.d.comb += entry.kind.eq(kind)
        f6 = {
            "v": pre.v, "first": pre.first, "entry": entry.as_value(),
            "hlen": Mux(coded, Mux(is_dense, DENSE_HEADER * 8, (mb + pre.wbytes) * 8), 0),
            "total": Mux(coded, entry.length, 0),
        }
        if values:
            codes = Mux(coded, Mux(is_dense, pre.dc[0], pre.sc[0]), 0)
            f6.update(
                hdr=Mux(coded, Mux(is_dense, pre.wd[0],
                                   pre.mask | (pre.ws[0] << (mb * 8))[:_HDR_BITS]), 0),
                c=[codes[_CODE * j: _CODE * (j + 1)] for j in range(N)],
                w=Mux(is_dense, pre.wd_g, pre.ws_g),
                glen=Mux(coded, Mux(is_dense, pre.wd_g << 3, pre.glen_s), 0),
                end=Mux(is_dense, pre.g == N - 1, pre.g + 1 >= pre.ngroups))
        else:
            f6.update(hdr=Mux(coded, pre.mask, 0), end=Const(1, 1))
        s6 = pipe(Tok(n=pre.n), **f6)

        # S7..S9: pack the group's 8 codes at j * w, pairs first (a code is < 2**w);
        # S7 also finds the group's bit offset in the block (the header is at 0)
        boff = Signal(range(_SLOT_BITS + 7 * _GROUP_BITS + 1))  # bits of the block so far
        start = Mux(s6.first, s6.hlen, boff)
        with m.If(adv & s6.v):
            m.d.sync += boff.eq(start + s6.glen) if values else boff.eq(start)
        base7 = {"v": s6.v, "first": s6.first, "end": s6.end, "entry": s6.entry,
                 "total": s6.total, "tnz": s6.total != 0, "hdr": s6.hdr, "pos": start[:7],
                 "len": (s6.glen if values else 0) + Mux(s6.first, s6.hlen, 0)}
        base7["lenm"] = (base7["len"] + 3 * _BEAT_BITS)[:9]  # len - 128 modulo 512
        # the packer's fill is the slot's start modulo 128 (+ 128 while a beat waits): whether
        # the slot completes a beat, and the block's length class, decided here
        base7["cross"] = (Mux(s6.first, 0, start[:7]) + base7["len"]) >= _BEAT_BITS
        base7["tle16"] = s6.total <= BEAT_BYTES
        base7["tle32"] = s6.total <= 2 * BEAT_BYTES
        if values:
            w = s6.w
            s7 = pipe(Tok(n=6), **base7, w=w,
                      p=[s6.c[2 * j] | (s6.c[2 * j + 1] << w) for j in range(N // 2)])
            s8 = pipe(s7, p=[s7.p[2 * j] | (s7.p[2 * j + 1] << (s7.w << 1)) for j in range(2)])
            s9 = pipe(s8, p=[s8.p[0] | (s8.p[1] << (s8.w << 2))])
            del s9.w
            # S10, S11: the group at its bit position modulo 128, a beat's worth a step
            s10 = pipe(s9, p=[s9.p[0] << Cat(Const(0, 4), s9.pos[4:7])])
            last_s = pipe(s10, p=[((s10.p[0] << s10.pos[:4]) | Mux(s10.first, s10.hdr, 0))
                                  [:_ACC_BITS]])
            s_bits_v = last_s.p[0]
        else:
            last_s = pipe(Tok(n=6), **base7)
            s_bits_v = Mux(last_s.first, last_s.hdr, 0)
        s_valid, s_first, s_end = last_s.v, last_s.first, last_s.end
        s_len, s_entry, s_total, s_tnz = last_s.len, last_s.entry, last_s.total, last_s.tnz
        s_lenm = last_s.lenm
        flags = ("cross", "tle16", "tle32")
        s_flags = {f: getattr(last_s, f) for f in flags}

        # B -> C through a pair of registers: ``h`` (head) holds the slot the packer looks at,
        # always a register (no select between B's last stage and a skid in front of C's
        # decisions); ``k`` catches B's slot while ``h`` is busy. B moves while ``k`` is empty
        # (a register), so C's decisions never reach B's enables.
        # Besides B's fields, constants folded into the slot here (from registers, outside the
        # packer's loop): compares of ``fill + len`` against 137 and 256 become the carry out
        # of one adder each.
        s_fields = {
            "first": s_first, "end": s_end, "bits": s_bits_v, "len": s_len, "entry": s_entry,
            "total": s_total, "tnz": s_tnz, "lenm": s_lenm,
            # len + 375: fill + len <= 136 exactly when fill + len_o < 512
            "len_o": (s_len + 512 - (_ACC_BITS - _GROUP_BITS + 1))[:10],
            # len + 247: fill + len - 128 <= 136 exactly when fill + lenm_o < 512 (for
            # fill + len - 128 in 0..256, the only case it is used)
            "lenm_o": (s_len + 512 - _BEAT_BITS - (_ACC_BITS - _GROUP_BITS + 1))[:10],
            "len_le136": s_len <= _ACC_BITS - _GROUP_BITS,
            "len_ge128": s_len[7:].any(),
            "total_m16": Mux(s_flags["tle16"], 0, s_total - BEAT_BYTES)[:len(s_total)],
            **s_flags,
        }
        k = {f: Signal(Shape.cast(v.shape()), name=f"k_{f}") for f, v in s_fields.items()}
        h = {f: Signal(Shape.cast(v.shape()), name=f"h_{f}") for f, v in s_fields.items()}
        k_valid, h_valid = Signal(), Signal()
        h_vf, h_vl = Signal(), Signal()  # h_valid & h_first, h_valid & ~h_first
        c_take = Signal()
        h_free = ~h_valid | c_take
        m.d.comb += adv.eq(~k_valid)
        with m.If(~k_valid):  # (taken or not: the enable is a register)
            m.d.sync += [k[f].eq(v) for f, v in s_fields.items()]
        with m.If(h_free):
            m.d.sync += [h[f].eq(Mux(k_valid, k[f], v)) for f, v in s_fields.items()]
            n_valid, n_first = k_valid | s_valid, Mux(k_valid, k["first"], s_first)
            m.d.sync += [h_valid.eq(n_valid), h_vf.eq(n_valid & n_first),
                         h_vl.eq(n_valid & ~n_first)]
        with m.If(~k_valid & s_valid & ~h_free):
            m.d.sync += k_valid.eq(1)
        with m.Elif(k_valid & h_free):
            m.d.sync += k_valid.eq(0)

        # ------------------------------------------------------- C: bit packer and the outputs
        # Each cycle: (1) if the bits waiting make a beat (16 bytes, or the rest of a complete
        # block), it goes out; otherwise (2) the slot in ``h`` is appended first and the beat is
        # cut from the result, so a slot's bits can leave in the cycle they arrive. A block's
        # first slot waits until the previous block's last beat has gone (beats never mix
        # blocks); a later slot needs room for a whole group.
        # The decisions (``emit_old``, ``c_take``, ``emit_new``) come from registers through a
        # few LUTs and steer only narrow state (``fill``, ``left``, flags, ``h``/``k``); the
        # 256-bit ``acc`` follows them a cycle later: ``acc_r`` is the previous cycle's bits
        # and ``d_*`` its registered choices, so ``acc`` (the bits waiting now) is two LUT levels
        # from registers and the decisions never fan out to 256 flip-flops.
        fill = Signal(range(_ACC_BITS + 1))  # bits waiting in ``acc``
        left = Signal(range(_MAX_BLOCK + 1))  # bytes of the current block not yet emitted
        fed = Signal()  # every slot with bits of the current block is in ``acc``
        waiting = Signal()  # a beat could leave from ``acc``: left_nz & (fill >= 128 | fed)
        # ``o`` and ``index`` each behind a skid register: the decisions below start from
        # registers only (``can_o``, ``can_index``), never from a ``ready``
        beat = Signal(CodeBeat)
        push_o, can_o = Signal(), Signal()
        push_i, can_i = Signal(), Signal()
        skid(m, o, beat, push_o, can_o)
        skid(m, index, h["entry"], push_i, can_i)

        # flags of the registers (a few LUT levels each, side by side)
        # (fill <= 256, left <= 132: compares as bit tests, no carry chains)
        left_nz = Signal()  # left != 0 (registers beside ``left``)
        left_le16 = Signal(init=1)  # left <= 16
        left_le32 = (left[6:] == 0) & (~left[5] | (left[:5] == 0))
        fill_ge128 = fill[7:].any()
        fill_le136 = Signal(init=1)  # room for a group: fill <= 136 (a register beside fill)
        sum_t = Signal(10)
        sum_m = Signal(9)  # fill + len - 128 where that is 0..256 (beat (2), or (1) and a slot)
        m.d.comb += [sum_t.eq(fill + h["len"]), sum_m.eq(fill + h["lenm"])]
        # a beat's worth once the slot is in (no beat cut before): fill is the slot's start
        # modulo 128, plus 128 while a whole beat waits
        ge_a = fill_ge128 | h["cross"]

        emit_old, emit_new = Signal(), Signal()
        m.d.comb += [
            # (1): a beat from the bits already waiting
            emit_old.eq(can_o & waiting),
            c_take.eq((h_vf & can_i & Mux(emit_old, left_le16, ~left_nz))
                      | (h_vl & (emit_old | fill_le136))),
            # (2): a beat from the waiting bits and the slot taken now (so no beat (1))
            emit_new.eq(can_o & ~waiting & c_take & Mux(h["first"], h["tnz"], left_nz)
                        & (ge_a | h["end"])),
            push_o.eq(emit_old | emit_new),
            push_i.eq(c_take & h["first"]),
        ]
        # h's bits sit at the slot's bit position modulo 128: the slot lands at 0 or 128 in
        # ``acc`` (after a beat (1): 128 only when ``fill`` was 256), one beat lower after (2)
        x_hi = Mux(emit_old, fill[8], fill[7])
        acc_r = Signal(_ACC_BITS)
        d_shift, d_xb = Signal(), Signal(_ACC_BITS)
        d_lo = Signal(2)  # the low word of the slot into acc's low word, its high word
        d_hi = Signal(2)  # the same into acc's high word
        m.d.sync += [
            d_shift.eq(emit_old | emit_new), d_xb.eq(h["bits"]),
            d_lo.eq(Cat(c_take & Mux(emit_new, x_hi, ~x_hi), c_take & emit_new & ~x_hi)),
            d_hi.eq(Cat(c_take & ~emit_new & x_hi, c_take & ~emit_new & ~x_hi)),
        ]
        xb_lo, xb_hi = d_xb[:_BEAT_BITS], d_xb[_BEAT_BITS:]
        acc = Signal(_ACC_BITS)  # bits waiting, LSB first; zero above ``fill``
        m.d.comb += acc.eq(Mux(d_shift, acc_r[_BEAT_BITS:], acc_r) | Cat(
            Mux(d_lo[0], xb_lo, 0) | Mux(d_lo[1], xb_hi, 0),
            Mux(d_hi[0], xb_lo, 0) | Mux(d_hi[1], xb_hi, 0)))
        m.d.sync += acc_r.eq(acc)
        nleft = Mux(emit_old, left, Mux(h["first"], h["total"], left))  # bytes to go at this beat
        m.d.comb += [
            # (beat (1): acc alone; beat (2): with the slot's low word when it lands at 0)
            beat.data.eq(acc[:_BEAT_BITS] | Mux(~waiting & ~fill[7], h["bits"][:_BEAT_BITS], 0)),
            beat.count.eq(Mux(nleft >= BEAT_BYTES, BEAT_BYTES, nleft)),
            beat.last.eq(nleft <= BEAT_BYTES),
        ]
        # a beat (1) takes 128 bits (all, at a block's end) before the slot comes in; a beat
        # (2) takes them from the sum
        # every candidate comes from registers through one adder; the decisions only select
        left_m16 = Mux(left_le16, 0, left - BEAT_BYTES)
        fill_m128 = Mux(fill[8], _BEAT_BITS, fill[:7])  # fill - 128 for fill >= 128

        def set_left(value, nz, le16):
            return [left.eq(value), left_nz.eq(nz), left_le16.eq(le16)]

        left_m16_flags = (left_m16, ~left_le16, left_le32)  # left - 16: > 0, <= 16
        total_flags = (h["total"], h["tnz"], h["tle16"])
        with m.If(emit_new):
            m.d.sync += fill.eq(Mux(ge_a, sum_m, 0))
            with m.If(h["first"]):
                m.d.sync += set_left(h["total_m16"], ~h["tle16"], h["tle32"])
            with m.Else():
                m.d.sync += set_left(*left_m16_flags)
        with m.Elif(emit_old):
            with m.If(c_take):
                m.d.sync += fill.eq(Mux(fill_ge128, sum_m, h["len"]))
            with m.Else():
                m.d.sync += fill.eq(Mux(fill_ge128, fill_m128, 0))
            with m.If(c_take & h["first"]):
                m.d.sync += set_left(*total_flags)
            with m.Else():
                m.d.sync += set_left(*left_m16_flags)
        with m.Elif(c_take):
            m.d.sync += fill.eq(sum_t)
            with m.If(h["first"]):
                m.d.sync += set_left(*total_flags)
        with m.If(c_take):
            m.d.sync += fed.eq(h["end"])

        # ``waiting`` and ``fill <= 136`` of the next state, from the same choices as above;
        # compares of fill + len as the top bit of one adder (``len_o``, ``lenm_o``)
        left_nz_n, fill_ge_n = Signal(), Signal()
        room_m = ~(fill + h["lenm_o"])[9]  # fill + len - 128 <= 136
        room_t = ~(fill + h["len_o"])[9]  # fill + len <= 136
        sum_ge256 = sum_t[8:].any()  # fill + len >= 256: fill + len - 128 >= 128
        with m.If(emit_new):
            m.d.comb += [left_nz_n.eq(Mux(h["first"], ~h["tle16"], ~left_le16)),
                         fill_ge_n.eq(ge_a & sum_ge256)]
            m.d.sync += fill_le136.eq(~ge_a | room_m)
        with m.Elif(emit_old):
            m.d.comb += [left_nz_n.eq(Mux(c_take & h["first"], h["tnz"], ~left_le16)),
                         fill_ge_n.eq(Mux(c_take, Mux(fill_ge128, sum_ge256, h["len_ge128"]),
                                          fill[8]))]
            m.d.sync += fill_le136.eq(~c_take | Mux(fill_ge128, room_m, h["len_le136"]))
        with m.Elif(c_take):
            m.d.comb += [left_nz_n.eq(Mux(h["first"], h["tnz"], left_nz)),
                         fill_ge_n.eq(sum_t[7:].any())]
            m.d.sync += fill_le136.eq(room_t)
        with m.Else():
            m.d.comb += [left_nz_n.eq(left_nz), fill_ge_n.eq(fill_ge128)]
        m.d.sync += waiting.eq(left_nz_n & (fill_ge_n | Mux(c_take, h["end"], fed)))
        return m


def _sum(values):
    """Sum of a list of values (a balanced adder tree)."""
    values = list(values)
    while len(values) > 1:
        pairs = zip(values[0::2], values[1::2], strict=False)
        values = [a + b for a, b in pairs] + values[len(values) & ~1:]
    return values[0]


def _mul(a, b):
    """``a * b`` of two small unsigned values as shifted adds (no multiplier cell)."""
    return _sum([Mux(a[k], b << k, 0) for k in range(len(a))])


def _or(values):
    """OR of a list of values (a balanced tree)."""
    values = list(values)
    while len(values) > 1:
        pairs = zip(values[0::2], values[1::2], strict=False)  # an odd last value passes through
        values = [a | b for a, b in pairs] + values[len(values) & ~1:]
    return values[0]
