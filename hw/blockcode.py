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

from .dct import PIXEL
from .quant import LEVEL

__all__ = [
    "BEAT_BYTES",
    "BlockEncoder",
    "CodeBeat",
    "IndexEntry",
    "Zigzag",
    "block_model",
    "symbol_shape",
]

N = spec.BLOCK
BEAT_BYTES = 16  # coded bytes per output beat: a whole block is at most 132 bytes = 9 beats

IndexEntry = data.StructLayout({
    "length": unsigned(11),  # bytes of the block's payload
    "mb_minus_1": unsigned(3),  # mask bytes - 1 (CODED only, else 0)
    "kind": unsigned(2),  # frame.Kind
})
"""One block index entry; its 16 bits are the u16 ``frame.pack_index`` stores."""

CodeBeat = data.StructLayout({
    "data": unsigned(8 * BEAT_BYTES),  # byte k of the beat in bits 8k .. 8k + 7 (little-endian)
    "count": range(1, BEAT_BYTES + 1),  # valid bytes, 1..16
    "last": unsigned(1),  # the block's last beat
})
"""Coded bytes of one block: every beat but the last carries ``BEAT_BYTES`` bytes; the last
carries ``count`` (1..16) and has ``last`` set. Bytes beyond ``count`` are zero. A block's
bytes never share a beat with another block's."""

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

    Latency (unstalled, no block over 128 bytes before): ``INDEX_LATENCY`` = 3 cycles from the
    transfer of a block's last row to that of its index entry. Its last beat leaves
    ``BEAT_LATENCY`` + ``e`` cycles after the last row, or one cycle later if more than 16
    bytes were still waiting once group ``e`` was in, where ``e`` is the last group with bits:
    0 in mask mode, ``ceil(n / 8) - 1`` for CODED (``n`` nonzero symbols), 7 for DENSE. Earlier
    beats leave as soon as 16 bytes are ready.

    Structure: (A) per row: codes, nonzero mask, prefix popcount, compaction of the nonzero
    codes into a rank-ordered 64-entry buffer, dense codes, into one of two banks; (B) per
    group, one a cycle from the full bank: widths (``bitlen`` of the OR of 8 codes), lengths
    and kind (on group 0), 8 barrel shifters packing the chosen group; (C) a 256-bit packer that
    appends each slot at its bit position and cuts a beat whenever 128 bits are waiting or the
    block is complete, from the bits waiting plus the slot arriving in the same cycle.

    Backpressure: every output ``valid``/``payload`` is a register; ``i.ready`` is low while
    both banks hold blocks (a stalled ``o`` or ``index`` stops the packer, then the bank reads,
    then ``i``). Bad input: none; every value the port carries is coded or sent RAW as the
    reference would.
    """

    INDEX_LATENCY = 3
    BEAT_LATENCY = 3

    def __init__(self, *, mode, dtype=DType.FLOAT32):
        self.mode = Mode.parse(mode)  # ValueError naming ``mode``
        if isinstance(dtype, str):
            dtype = next((d for d in DType if d.label == dtype), dtype)
        if not isinstance(dtype, DType):
            raise ValueError(f"dtype: unknown dtype {dtype!r}; expected a spec.DType or one of "
                             + ", ".join(repr(d.label) for d in DType))
        self.dtype = dtype
        fields = {"symbols": data.ArrayLayout(symbol_shape(self.mode), N)}
        if self.mode is not Mode.MASK:
            fields["force_raw"] = unsigned(1)
        self.row_layout = data.StructLayout(fields)
        super().__init__({
            "i": In(stream.Signature(self.row_layout)),
            "index": Out(stream.Signature(IndexEntry)),
            "o": Out(stream.Signature(CodeBeat)),
        })


    def elaborate(self, platform):
        m = Module()
        i, o, index = self.i, self.o, self.index
        values = self.mode is not Mode.MASK  # mask mode codes the mask bytes only
        raw_len = 64 * self.dtype.itemsize

        # ---------------------------------------------------------------- A: rows into a bank
        w_bank, w_row = Signal(), Signal(range(N))
        full, set_full, clear_full = Signal(2), Signal(2), Signal(2)
        masks = [Signal(64, name=f"mask{k}") for k in range(2)]
        counts = [Signal(range(65), name=f"count{k}") for k in range(2)]  # nonzero symbols
        force = [Signal(name=f"force_raw{k}") for k in range(2)]
        wide_s = [Signal(name=f"wide_sparse{k}") for k in range(2)]  # a sparse code > 15 bits
        wide_d = [Signal(name=f"wide_dense{k}") for k in range(2)]  # a dense code > 15 bits
        # nonzero (sparse) codes by rank, and dense codes by scan position: 15 bits each
        ranks = [[Signal(_CODE, name=f"rank{k}_{e}") for e in range(64)] for k in range(2)]
        dense = [[Signal(_CODE, name=f"dense{k}_{p}") for p in range(64)] for k in range(2)]

        m.d.comb += i.ready.eq(~full.bit_select(w_bank, 1))
        write = i.valid & i.ready
        first_row = w_row == 0
        sym = i.payload.symbols
        nz = Signal(N)
        pop = Signal(range(N + 1))
        rank0 = Signal(range(65))  # rank of this row's first nonzero symbol in the block
        m.d.comb += [
            nz.eq(Cat(*(sym[u] != 0 for u in range(N)))),
            pop.eq(sum(nz[u] for u in range(N))),
            rank0.eq(Mux(first_row, 0, Mux(w_bank, counts[1], counts[0]))),
        ]

        if values:
            compact = [Signal(_CODE, name=f"compact{k}") for k in range(N)]
            dcode = [Signal(_CODE, name=f"dcode{u}") for u in range(N)]
            row_wide_s, row_wide_d = Signal(), Signal()
            scodes, before = [], []
            wide_s_bits, wide_d_bits = [], []
            for u in range(N):
                v = sym[u]
                mag = Signal(unsigned(len(v)), name=f"mag{u}")
                neg = v < 0
                scode = Signal(_CODE, name=f"scode{u}")  # 2 (|v| - 1) + sign; 0 for v == 0
                dfull = Signal(unsigned(len(v) + 1), name=f"dfull{u}")  # 2 |v| - sign
                m.d.comb += [
                    mag.eq(abs(v)),
                    scode.eq(Mux(nz[u], Cat(neg, (mag - 1)[: _CODE - 1]), 0)),
                    dfull.eq((mag << 1) - neg),
                    dcode[u].eq(dfull[:_CODE]),
                ]
                wide_s_bits.append(mag > (1 << (_CODE - 1)))
                wide_d_bits.append(dfull >= (1 << _CODE))
                scodes.append(scode)
                before.append(sum(nz[x] for x in range(u)) if u else Const(0, 1))
            for k in range(N):
                # priority scatter: the nonzero symbol with k nonzeros before it is slot k
                # (zero symbols have code 0 and drop out of the OR)
                hits = [Mux(before[u] == k, scodes[u], 0) for u in range(k, N)]
                m.d.comb += compact[k].eq(_or(hits))
            m.d.comb += [row_wide_s.eq(Cat(*wide_s_bits).any()),
                         row_wide_d.eq(Cat(*wide_d_bits).any())]
            compact_bits = Cat(*compact)
            # entry e takes compact slot e - rank0 if that is 0..7; the first row clears the rest
            entry_we = Signal(64)
            entry_data = [Signal(_CODE, name=f"entry_data{e}") for e in range(64)]
            for e in range(64):
                offset = Signal(6, name=f"offset{e}")
                hit = offset < N
                m.d.comb += [
                    offset.eq(e - rank0),
                    entry_we[e].eq(hit | first_row),
                    entry_data[e].eq(Mux(hit, compact_bits.word_select(offset[:3], _CODE), 0)),
                ]

        with m.If(write):
            m.d.sync += w_row.eq(w_row + 1)
            with m.If(w_row == N - 1):
                m.d.comb += set_full.bit_select(w_bank, 1).eq(1)
                m.d.sync += w_bank.eq(~w_bank)
            with m.Switch(w_bank):
                for k in range(2):
                    with m.Case(k):
                        m.d.sync += [
                            masks[k].word_select(w_row, N).eq(nz),
                            counts[k].eq(rank0 + pop),
                        ]
                        if not values:
                            continue
                        keep = ~first_row  # the flags restart with each block's first row
                        m.d.sync += [
                            force[k].eq((force[k] & keep) | i.payload.force_raw),
                            wide_s[k].eq((wide_s[k] & keep) | row_wide_s),
                            wide_d[k].eq((wide_d[k] & keep) | row_wide_d),
                        ]
                        for e in range(64):
                            with m.If(entry_we[e]):
                                m.d.sync += ranks[k][e].eq(entry_data[e])
                        with m.Switch(w_row):
                            for r in range(N):
                                with m.Case(r):
                                    m.d.sync += [dense[k][N * r + u].eq(dcode[u])
                                                 for u in range(N)]

        # ------------------------------------------------- B: one group a cycle from the bank
        r_bank, group = Signal(), Signal(range(N))

        def rd(pair):
            return Mux(r_bank, pair[1], pair[0])

        mask = Signal(64)
        n = Signal(range(65))
        m.d.comb += [mask.eq(rd(masks)), n.eq(rd(counts))]
        row_any = Cat(*(mask[N * j: N * (j + 1)].any() for j in range(N)))
        mb = Signal(range(N + 1))
        m.d.comb += mb.eq(_bitlen(row_any))
        ngroups = Signal(range(N + 1))
        wbytes = Signal(range(N // 2 + 1))
        m.d.comb += [ngroups.eq((n + 7) >> 3), wbytes.eq((ngroups + 1) >> 1)]

        kind = Signal(2)  # this block's kind (valid while group == 0)
        kind_reg = Signal(2)  # ... registered for groups 1..7
        cur_kind = Mux(group == 0, kind, kind_reg)
        is_dense = Signal()
        coded = Signal()
        m.d.comb += [is_dense.eq(cur_kind == Kind.DENSE),
                     coded.eq((cur_kind == Kind.CODED) | is_dense)]
        c_len = Signal(range(_MAX_BLOCK + 1))
        d_len = Signal(range(_MAX_BLOCK + 1))
        packed = Signal(_GROUP_BITS)
        glen = Signal(range(_GROUP_BITS + 1))
        hdr = Signal(_HDR_BITS)
        hlen = Signal(range(_HDR_BITS + 1))

        if values:
            rcodes = [rd((ranks[0][e], ranks[1][e])) for e in range(64)]
            dcodes = [rd((dense[0][p], dense[1][p])) for p in range(64)]
            ws = [Signal(_WIDTH, name=f"w_sparse{g}") for g in range(N)]
            wd = [Signal(_WIDTH, name=f"w_dense{g}") for g in range(N)]
            sizes = [Signal(range(N + 1), name=f"size{g}") for g in range(N)]
            for g in range(N):
                m.d.comb += [
                    ws[g].eq(_bitlen(_or(rcodes[N * g: N * (g + 1)]))),
                    wd[g].eq(_bitlen(_or(dcodes[N * g: N * (g + 1)]))),
                    sizes[g].eq(Mux(n >= N * (g + 1), N, Mux(n > N * g, n - N * g, 0))),
                ]
            nbits = Signal(range(64 * _CODE + 1))
            m.d.comb += [
                nbits.eq(sum(sizes[g] * ws[g] for g in range(N))),
                c_len.eq(mb + wbytes + ((nbits + 7) >> 3)),
                d_len.eq(DENSE_HEADER + sum(wd)),
            ]
            c_ok = ~rd(wide_s) & (c_len <= raw_len)
            d_ok = ~rd(wide_d) & (d_len <= raw_len)
            with m.If(rd(force)):
                m.d.comb += kind.eq(Kind.RAW)
            with m.Elif(~mask.any()):
                m.d.comb += kind.eq(Kind.ZERO)
            with m.Elif(c_ok & (~d_ok | (c_len <= d_len))):
                m.d.comb += kind.eq(Kind.CODED)
            with m.Elif(d_ok):
                m.d.comb += kind.eq(Kind.DENSE)
            with m.Else():
                m.d.comb += kind.eq(Kind.RAW)

            # group ``group``: 8 codes and their width; 8 barrel shifters put code j at j * w
            codes = Mux(is_dense, Cat(*dcodes).word_select(group, _GROUP_BITS),
                        Cat(*rcodes).word_select(group, _GROUP_BITS))
            w = Signal(_WIDTH)
            m.d.comb += [
                w.eq(Mux(is_dense, Cat(*wd).word_select(group, _WIDTH.width),
                         Cat(*ws).word_select(group, _WIDTH.width))),
                packed.eq(Mux(coded, _or([codes[_CODE * j: _CODE * (j + 1)] << (w * j)
                                          for j in range(N)]), 0)),
                glen.eq(Mux(coded, Mux(is_dense, w * N,
                                       Cat(*sizes).word_select(group, len(sizes[0])) * w), 0)),
                hdr.eq(Mux(is_dense, Cat(*wd), mask | (Cat(*ws) << (mb * 8)))),
                hlen.eq(Mux(is_dense, DENSE_HEADER * 8, (mb + wbytes) * 8)),
            ]
            end = Mux(is_dense, group == N - 1, group + 1 >= ngroups)
        else:
            m.d.comb += [
                kind.eq(Mux(mask.any(), Kind.CODED, Kind.ZERO)),
                c_len.eq(mb),
                hdr.eq(mask),
                hlen.eq(mb * 8),
            ]
            end = Const(1)

        entry = Signal(IndexEntry)
        with m.Switch(kind):
            with m.Case(Kind.CODED):
                m.d.comb += [entry.length.eq(c_len), entry.mb_minus_1.eq(mb - 1)]
            with m.Case(Kind.DENSE):
                m.d.comb += entry.length.eq(d_len)
            with m.Case(Kind.RAW):
                m.d.comb += entry.length.eq(raw_len)
        m.d.comb += entry.kind.eq(kind)

        # slot register between B and C
        s_valid, s_first, s_end = Signal(), Signal(), Signal()
        s_bits = Signal(_SLOT_BITS)
        s_len = Signal(range(_SLOT_BITS + 1))
        s_entry = Signal(IndexEntry)
        s_total = Signal(range(_MAX_BLOCK + 1))  # the block's coded bytes (first slot)
        c_take = Signal()

        readable = full.bit_select(r_bank, 1)
        with m.If(~s_valid | c_take):
            m.d.sync += s_valid.eq(readable)
            with m.If(readable):
                first = group == 0
                m.d.sync += [
                    s_first.eq(first),
                    s_end.eq(end),
                    s_bits.eq(Mux(first, Mux(coded, hdr | (packed << hlen), 0), packed)),
                    s_len.eq(Mux(first & coded, hlen, 0) + glen),
                    s_entry.eq(entry),
                    s_total.eq(Mux(coded, entry.length, 0)),
                    group.eq(group + 1),
                ]
                with m.If(first):
                    m.d.sync += kind_reg.eq(kind)
                with m.If(group == N - 1):
                    m.d.comb += clear_full.bit_select(r_bank, 1).eq(1)
                    m.d.sync += r_bank.eq(~r_bank)
        # set needs the bank empty and clear needs it full: never the same bank in one cycle
        m.d.sync += full.eq((full | set_full) & ~clear_full)

        # ------------------------------------------------------- C: bit packer and the outputs
        # Each cycle: (1) if the bits waiting make a beat (16 bytes, or the rest of a complete
        # block), it goes out; otherwise (2) the slot from B is appended first and the beat is
        # cut from the result, so a slot's bits can leave in the cycle they arrive. A block's
        # first slot waits until the previous block's last beat has gone (beats never mix
        # blocks); a later slot needs room for a whole group.
        acc = Signal(_ACC_BITS)  # bits waiting, LSB first; zero above ``fill``
        fill = Signal(range(_ACC_BITS + 1))
        left = Signal(range(_MAX_BLOCK + 1))  # bytes of the current block not yet emitted
        fed = Signal()  # every slot with bits of the current block is in ``acc``
        o_free = ~o.valid | o.ready

        def beat_out(bits, nleft):
            """Next-state of ``o`` for a beat cut from ``bits`` with ``nleft`` bytes to go."""
            return [
                o.valid.eq(1),
                o.payload.data.eq(bits[:_BEAT_BITS]),
                o.payload.count.eq(Mux(nleft >= BEAT_BYTES, BEAT_BYTES, nleft)),
                o.payload.last.eq(nleft <= BEAT_BYTES),
            ]

        def after_beat(bits, nfill, nleft):
            """(acc, fill, left) once a beat has been cut from them."""
            return (bits >> _BEAT_BITS, Mux(nfill >= _BEAT_BITS, nfill - _BEAT_BITS, 0),
                    Mux(nleft >= BEAT_BYTES, nleft - BEAT_BYTES, 0))

        emit_old = Signal()  # (1): a beat from the bits already waiting
        acc_e, fill_e, left_e = Signal.like(acc), Signal.like(fill), Signal.like(left)
        m.d.comb += [
            emit_old.eq(o_free & (left != 0) & ((fill >= _BEAT_BITS) | fed)),
            *_assign((acc_e, fill_e, left_e), after_beat(acc, fill, left), (acc, fill, left),
                     emit_old),
            c_take.eq(s_valid & Mux(s_first, (left_e == 0) & (~index.valid | index.ready),
                                    fill_e <= _ACC_BITS - _GROUP_BITS)),
        ]
        acc_t, fill_t, left_t = Signal.like(acc), Signal.like(fill), Signal.like(left)
        emit_new = Signal()  # (2): a beat from the waiting bits and the slot taken now
        m.d.comb += [
            acc_t.eq(acc_e | (s_bits << fill_e[:8])),
            fill_t.eq(fill_e + s_len),
            left_t.eq(Mux(s_first, s_total, left_e)),
            emit_new.eq(o_free & ~emit_old & c_take & (left_t != 0)
                        & ((fill_t >= _BEAT_BITS) | s_end)),
        ]
        with m.If(emit_old):
            m.d.sync += beat_out(acc, left)
        with m.Elif(emit_new):
            m.d.sync += beat_out(acc_t, left_t)
        with m.Elif(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(emit_new):
            m.d.sync += [r.eq(v) for r, v in zip((acc, fill, left),
                                                 after_beat(acc_t, fill_t, left_t), strict=True)]
        with m.Elif(c_take):
            m.d.sync += [acc.eq(acc_t), fill.eq(fill_t), left.eq(left_t)]
        with m.Else():
            m.d.sync += [acc.eq(acc_e), fill.eq(fill_e), left.eq(left_e)]
        with m.If(c_take):
            m.d.sync += fed.eq(s_end)
        with m.If(c_take & s_first):
            m.d.sync += [index.valid.eq(1), index.payload.eq(s_entry)]
        with m.Elif(index.ready):
            m.d.sync += index.valid.eq(0)
        return m


def _assign(targets, if_true, if_false, cond):
    """``target.eq(Mux(cond, a, b))`` for each target (values zero-extended to the target)."""
    return [t.eq(Mux(cond, a, b)) for t, a, b in zip(targets, if_true, if_false, strict=True)]


def _or(values):
    """OR of a list of values (a balanced tree)."""
    values = list(values)
    while len(values) > 1:
        pairs = zip(values[0::2], values[1::2], strict=False)  # an odd last value passes through
        values = [a | b for a, b in pairs] + values[len(values) & ~1:]
    return values[0]
