"""cocotb testbench of ``BlockDecoder`` (against ``reference.decode_block`` / ``decode_dense``) and
``Unzigzag`` (against ``tables.ZIGZAG``).

Run through ``actpack.sim.build`` (see tests/hw/test_hw_blockdecode.py). Environment:
``ACTPACK_TB_UNIT`` = ``decode`` | ``unzigzag`` (which top was built), ``ACTPACK_TB_MODE`` (the
decoder's mode label), ``ACTPACK_TB_SEED``.

Blocks are coded with the reference's per-block coders (``encode_block``, ``encode_dense``) or
taken from frames ``reference.compress`` writes; the expected symbols and the verdict come from
the reference's decoders on the very bytes the decoder gets (a malformed block is one where they
raise ``FrameError``, plus the index checks of docs/format.md section 10, #21). Every stimulus
runs with the idle inserter (both sources) and the backpressure inserter each on and off; without
inserters the testbench also checks that rows leave back to back (8 cycles per block).
"""

import os
import zlib

import cocotb
import numpy as np
from amaranth.lib import data

from actpack.codec import reference, spec
from actpack.codec.frame import DENSE_HEADER, Header, Kind, parse_frame, unpack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import ZIGZAG, resolve_table
from actpack.errors import Check, FrameError

from ..hw.beats import BEAT_BYTES, CodeBeat, IndexEntry
from ..hw.blockdecode import BlockDecoder, BlockError, DecodedRow, Unzigzag
from ..hw.quant import LEVEL, LevelRow
from . import stimulus
from .stream import LayoutCodec, StreamTB, random_pauses

UNIT = os.environ.get("ACTPACK_TB_UNIT", "decode")
MODE = Mode.parse(os.environ.get("ACTPACK_TB_MODE", "dct"))
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))

# Largest symbol magnitude a block of this mode carries: a 15-bit sparse code holds |v| <= 2**14
# (section 8.1); sfpr8 symbols are SFPR values; mask symbols are bits.
VMAX = {Mode.SFPR8: spec.SFPR_MAX, Mode.MASK: 1}.get(MODE, 1 << (spec.WIDTH_MAX - 1))
ENTRY = LayoutCodec(IndexEntry)


def _flat(layout: data.Layout) -> data.StructLayout:
    """``layout`` with nested layouts flattened into leaf fields ``"a.b"`` at the same offsets
    (``LayoutCodec`` takes flat layouts only); checked field by field against ``layout``."""
    leaves = {}

    def walk(lay, prefix, base):
        for key, field in lay:
            name = f"{prefix}{key}"
            if isinstance(field.shape, data.Layout):
                walk(field.shape, f"{name}.", base + field.offset)
            else:
                leaves[name] = (field.shape, base + field.offset)

    walk(layout, "", 0)
    flat = data.StructLayout({name: shape for name, (shape, _) in leaves.items()})
    assert flat.size == layout.size
    for name, (_, offset) in leaves.items():
        assert flat[name].offset == offset, name
    return flat


# ----------------------------------------------------------------------------- stimulus


def _entry(kind: int, mb: int, length: int) -> int:
    """The u16 index entry, packed with the decoder's ``IndexEntry`` layout (which, unlike
    ``frame.pack_index``, also packs the invalid combinations malformed blocks need;
    tests/hw/test_hw_blockdecode.py checks the two agree on valid ones)."""
    return ENTRY.pack({"kind": kind, "mb_minus_1": mb - 1, "length": length})


def _code(symbols: np.ndarray, choose: str = "auto") -> tuple[int, bytes]:
    """(index entry, payload) of one block as the reference codes it. ``choose``: ``auto`` (the
    shorter of CODED and DENSE, ties to CODED, as ``reference.compress``), ``coded``, ``dense``
    (the other one when the asked one does not exist)."""
    if not symbols.any():
        return _entry(Kind.ZERO, 1, 0), b""
    if MODE is Mode.MASK:
        mb, chunk = reference.encode_block(symbols, with_values=False)
        return _entry(Kind.CODED, mb, len(chunk)), chunk
    coded = reference.encode_block(symbols)
    dense = reference.encode_dense(symbols)
    assert coded is not None or dense is not None, "stimulus bug: no coding exists"
    use_dense = coded is None or (dense is not None and (
        choose == "dense" or (choose == "auto" and len(dense) < len(coded[1]))))
    if use_dense:
        return _entry(Kind.DENSE, 1, len(dense)), dense
    return _entry(Kind.CODED, coded[0], len(coded[1])), coded[1]


_CHECK_FLAG = {  # a reference decoder's check (docs/format.md 10) -> the lane's flag
    Check.CODED_MASK: BlockError.MASK,
    Check.MASK_TRAILING: BlockError.LENGTH,
    Check.CODED_SHORT: BlockError.LENGTH,
    Check.CODED_LENGTH: BlockError.LENGTH,
    Check.DENSE_LENGTH: BlockError.LENGTH,
}


def _expect(entry: int, chunk: bytes) -> tuple[np.ndarray, BlockError]:
    """Reference symbols (scan order) and the flag the decoder must raise (0: none) for one block
    given as index entry + payload bytes."""
    kind, mb, length = (int(a[0]) for a in unpack_index(np.array([entry])))
    mb_field = ENTRY.unpack(entry)["mb_minus_1"]
    assert length == len(chunk), "stimulus bug: the splitter sends what the entry says"
    zeros = np.zeros(64, dtype=np.int64)
    # index checks (section 10, #21) for one entry; a lane never decodes RAW
    if kind == Kind.RAW or (kind == Kind.ZERO and (length or mb_field)) or (
            kind == Kind.DENSE and (mb_field or MODE is Mode.MASK)):
        return zeros, BlockError.INDEX
    if kind == Kind.ZERO:
        return zeros, BlockError(0)
    if kind == Kind.DENSE and length < DENSE_HEADER:
        return zeros, BlockError.LENGTH
    try:
        if kind == Kind.DENSE:
            symbols = reference.decode_dense(chunk)
        else:
            symbols = reference.decode_block(chunk, mb, with_values=MODE is not Mode.MASK)
    except FrameError as exc:
        return zeros, _CHECK_FLAG[exc.check]
    if MODE is Mode.SFPR8 and np.abs(symbols).max() > spec.SFPR_MAX:
        return symbols, BlockError.RANGE
    return symbols, BlockError(0)


def _random_symbols(rng, n: int) -> np.ndarray:
    """Blocks of varied sparsity (2 % .. 100 % nonzero) and magnitude (1 .. VMAX, log-uniform
    per block), both signs."""
    out = np.zeros((n, 64), dtype=np.int64)
    for b in range(n):
        nz = rng.random(64) < rng.choice([0.02, 0.1, 0.3, 0.6, 0.9, 1.0])
        if MODE is Mode.MASK:
            out[b] = nz
            continue
        top = min(VMAX, 1 << int(rng.integers(1, VMAX.bit_length() + 1)))
        mag = rng.integers(1, top + 1, size=64)
        out[b] = np.where(nz, np.where(rng.random(64) < 0.5, -mag, mag), 0)
    return out


def _real_blocks(rng) -> list[tuple[int, bytes]]:
    """Index entries and payloads of frames ``reference.compress`` writes for real-ish
    activations (ReLU fields, scikit-learn digits, and their signed pre-activation versions);
    RAW blocks are left out (the splitter routes them around the lanes)."""
    relu = stimulus.relu_smooth(rng, 48).astype(np.float32) / 32
    digits = stimulus.digits(rng, 48).astype(np.float32) / 32
    x = np.concatenate([relu, digits, relu - relu.mean(), digits - 2.0]).reshape(1, -1, 8, 8)
    table_id, table_arg, table = resolve_table("optL") if MODE is Mode.DCT else (0, 0, None)
    param = {Mode.DCT: 4.5, Mode.SFPR8: 4.5, Mode.EB: 0.01, Mode.MASK: 0.0}[MODE]
    header = Header(MODE, DType.FLOAT32, x.shape, param, table_id, table_arg, table)
    _, index, payload = parse_frame(reference.compress(x.view(np.uint32), header))
    kinds, _, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [(int(index[b]), bytes(payload[offsets[b]:offsets[b + 1]]))
            for b in range(len(kinds)) if kinds[b] != Kind.RAW]


def _edge_symbols() -> list[np.ndarray]:
    blocks = [np.zeros(64, np.int64) for _ in range(3)]
    for pos in (0, 7, 8, 62, 63):  # a single nonzero symbol
        for v in (VMAX, -VMAX, 1):
            s = np.zeros(64, np.int64)
            s[pos] = v
            blocks.append(s)
    blocks += [np.full(64, VMAX), np.full(64, 1), np.where(np.arange(64) % 2, VMAX, -VMAX)]
    if MODE is not Mode.MASK:
        blocks += [np.full(64, -VMAX), np.full(64, -1), np.where(np.arange(64) % 3, -1, 1)]
        # the widest DENSE codes: u = 2 |v| - (v < 0) has 15 bits for -2**14 .. 2**14 - 1
        top = VMAX - 1 if MODE is not Mode.SFPR8 else VMAX
        blocks.append(np.where(np.arange(64) % 2, -VMAX, top))
    for k in range(1, 10):  # the last k scan positions: groups straddling scan rows
        s = np.zeros(64, np.int64)
        s[64 - k:] = np.arange(1, k + 1) * (-1) ** np.arange(k) * min(VMAX, 97)
        blocks.append(s if MODE is not Mode.MASK else (s != 0).astype(np.int64))
    return blocks


def _corrupt(rng, entry: int, chunk: bytes, how: str) -> tuple[int, bytes, dict]:
    """A malformed (or, for a flipped value bit, possibly still valid) version of one block.
    Returns (entry, payload, beat corruption)."""
    kind, mb, _ = (int(a[0]) for a in unpack_index(np.array([entry])))
    b = bytearray(chunk)
    if how == "flip" and b:
        k = int(rng.integers(0, 8 * len(b)))
        b[k // 8] ^= 1 << (k % 8)
    elif how == "longer":
        b.append(int(rng.integers(0, 256)))
    elif how == "shorter" and b:
        b = b[:int(rng.integers(0, len(b)))]
    elif how == "empty_mask" and kind == Kind.CODED:
        b[:mb] = bytes(mb)
    elif how == "nonminimal" and kind == Kind.CODED and mb < 8:
        b[mb:mb] = b"\0"
        mb += 1
    elif how == "mb_field":
        mb = mb % 8 + 1 if kind == Kind.CODED else 2
    elif how == "kind":
        kind = {Kind.CODED: Kind.DENSE, Kind.DENSE: Kind.CODED, Kind.ZERO: Kind.CODED,
                Kind.RAW: Kind.CODED}[Kind(kind)]
    elif how == "raw":  # a RAW block (256 bytes of float32) reaching a lane by mistake
        kind, mb, b = Kind.RAW, 1, bytearray(rng.bytes(256))
    elif how == "zero_with_bytes":
        kind, mb, b = Kind.ZERO, 1, bytearray(rng.bytes(int(rng.integers(1, 40))))
    elif how == "garbage":  # longer than any block: more beats than a block buffer holds
        kind, b = Kind.CODED, bytearray(rng.bytes(int(rng.integers(133, 400))))
    elif how == "dense_short":
        kind, mb, b = Kind.DENSE, 1, bytearray(rng.bytes(int(rng.integers(0, DENSE_HEADER))))
    beats = {}
    if how == "beat_last" and b:
        beats = {"flip_last": int(rng.integers(0, -(-len(b) // BEAT_BYTES)))}
    elif how == "beat_count" and b:
        beats = {"count_delta": 1 if len(b) % BEAT_BYTES else -1}
    return _entry(kind, mb, len(b)), bytes(b), beats


CORRUPTIONS = ("flip", "flip", "longer", "shorter", "empty_mask", "nonminimal", "mb_field", "kind",
               "raw", "zero_with_bytes", "garbage", "dense_short", "beat_last", "beat_count")


def _beats(chunk: bytes, flip_last: int | None = None, count_delta: int = 0) -> list[dict]:
    """The beats a splitter sends for one block (optionally with a wrong ``last`` flag or a wrong
    ``count`` on the last beat)."""
    out = []
    for k in range(0, len(chunk), BEAT_BYTES):
        part = chunk[k:k + BEAT_BYTES]
        last = k + BEAT_BYTES >= len(chunk)
        out.append({"data": int.from_bytes(part, "little"),
                    "count": len(part) + (count_delta if last else 0), "last": int(last)})
    if flip_last is not None:
        out[flip_last]["last"] ^= 1
    return out


def _stimulus(name: str, rng) -> list[tuple[int, bytes, dict]]:
    """Blocks as (entry, payload, beat corruption)."""
    if name == "random":
        return [(*_code(s, str(rng.choice(["auto", "coded", "dense"]))), {})
                for s in _random_symbols(rng, 96)]
    if name == "real":
        return [(*blk, {}) for blk in _real_blocks(rng)]
    if name == "edge":
        return [(*_code(s, choose), {}) for s in _edge_symbols() for choose in ("coded", "dense")]
    if name == "malformed":  # each bad block followed by a good one
        good = [_code(s) for s in _random_symbols(rng, 3 * len(CORRUPTIONS))]
        good += [_code(np.zeros(64, np.int64))] * 4
        out = []
        for k, how in enumerate(CORRUPTIONS * 2):
            base = good[int(rng.integers(0, len(good)))]
            out.append(_corrupt(rng, *base, how))
            out.append((*good[k % len(good)], {}))
        if MODE is Mode.SFPR8:  # values beyond +-127 in well-formed codes
            big = np.zeros((4, 64), np.int64)
            big[:, 5] = [128, -128, 1 << (spec.WIDTH_MAX - 1), 300]
            big[:, 60] = 1
            out += [(*_code(s, c), {}) for s in big for c in ("coded", "dense")]
        return out
    raise ValueError(name)


# ----------------------------------------------------------------------------- decoder tests


class DecoderTB(StreamTB):
    def __init__(self, dut, *, idle=None, backpressure=None, rng=None):
        super().__init__(dut)
        pauses = (lambda: random_pauses(rng, 0.3)) if idle else (lambda: None)
        self.idx = self.source("index", IndexEntry, idle=pauses())
        self.dat = self.source("data", CodeBeat, idle=pauses())
        self.snk = self.sink("o", _flat(DecodedRow), backpressure=backpressure)

    def send(self, blocks):
        for entry, chunk, corrupt in blocks:
            self.idx.send([ENTRY.unpack(entry)])
            self.dat.send(_beats(chunk, **corrupt))

    async def check(self, blocks, *, timing: bool):
        first = len(self.snk.transfers)
        self.send(blocks)
        nrows = 8 * len(blocks)
        nbeats = sum(-(-len(chunk) // BEAT_BYTES) for _, chunk, _ in blocks)
        rows = await self.snk.recv(nrows, timeout_cycles=20 * (nrows + nbeats) + 200)
        got = np.array([[r[f"symbols.{i}"] for i in range(8)] for r in rows]).reshape(-1, 64)
        errors = np.array([r["error"] for r in rows]).reshape(-1, 8)
        lasts = np.array([r["last"] for r in rows]).reshape(-1, 8)
        assert (lasts == [0] * 7 + [1]).all(), "last must mark row 7 of every block"
        for b, (entry, chunk, corrupt) in enumerate(blocks):
            symbols, flag = _expect(entry, chunk)
            if corrupt:
                flag |= BlockError.BEATS
            verdict = BlockError(int(errors[b, -1]))
            where = (f"block {b}: entry {entry:#06x} ({len(chunk)} bytes {chunk.hex()}, beats "
                     f"{corrupt}):\nexpected {symbols.tolist()} {flag!r}\n"
                     f"got      {got[b].tolist()} {verdict!r}")
            assert (flag in verdict) and (bool(verdict) == bool(flag)), where
            if flag and flag is not BlockError.RANGE:
                assert not got[b].any(), "a block flagged at parse time gives zero rows\n" + where
                assert (errors[b] == errors[b, -1]).all(), where
            else:
                assert np.array_equal(got[b], symbols), where
        if timing:  # sources and sink never pause: the decoder sets the pace
            outs = self.snk.transfers[first:]
            span = outs[-1] - outs[0] + 1
            sizes = [-(-len(chunk) // BEAT_BYTES) for _, chunk, _ in blocks]
            if _full_rate(blocks):  # no bubble anywhere
                gaps = np.diff(outs)
                assert (gaps == 1).all(), f"output bubbles after rows {np.flatnonzero(gaps != 1)}"
            # a block of b beats takes max(8, b + 1) cycles (the first one's beats are in)
            bound = 8 + sum(max(8, b + 1) for b in sizes[1:])
            assert span <= bound, f"{len(blocks)} blocks took {span} cycles, more than {bound}"
        bad = sum(bool(_expect(e, c)[1]) or bool(k) for e, c, k in blocks)
        self.dut._log.info("%s %s: %d blocks (%d flagged), %d beats, %d rows in %d cycles",
                           MODE.label, "timed" if timing else "untimed", len(blocks), bad, nbeats,
                           nrows, self.snk.transfers[-1] - self.snk.transfers[first] + 1)


def _full_rate(blocks) -> bool:
    return all(-(-len(chunk) // BEAT_BYTES) <= BlockDecoder.FULL_RATE_BEATS
               for _, chunk, _ in blocks)


if UNIT == "decode":

    @cocotb.test()
    async def latency(dut):
        """Row 0 leaves LATENCY cycles after a block's last beat, ZERO_LATENCY after the entry of
        a block without payload."""
        rng = np.random.default_rng([SEED, 1])
        tb = DecoderTB(dut)
        await tb.reset()
        s = np.zeros(64, np.int64)
        s[[0, 9, 40]] = [3, -1, 1] if MODE is not Mode.MASK else 1
        await tb.check([(*_code(s), {})], timing=True)
        assert tb.snk.transfers[0] - tb.dat.transfers[-1] == BlockDecoder.LATENCY
        await tb.cycles(16)
        await tb.check([(*_code(np.zeros(64, np.int64)), {})], timing=True)
        assert tb.snk.transfers[8] - tb.idx.transfers[1] == BlockDecoder.ZERO_LATENCY
        await tb.check([(*_code(s), {}) for s in _random_symbols(rng, 4)], timing=False)
        await tb.finish(drain_cycles=24)

    @cocotb.test()
    @cocotb.parametrize(
        data=["random", "real", "edge", "malformed"],
        idle=[False, True],
        backpressure=[False, True],
    )
    async def run_test(dut, data, idle, backpressure):
        rng = np.random.default_rng([SEED, zlib.crc32(f"{data}{idle}{backpressure}".encode())])
        blocks = _stimulus(data, rng)
        tb = DecoderTB(dut, idle=idle, rng=rng,
                       backpressure=random_pauses(rng, 0.3) if backpressure else None)
        await tb.reset()
        await tb.check(blocks, timing=not idle and not backpressure)
        await tb.finish(drain_cycles=24)


# ----------------------------------------------------------------------------- unzigzag tests

if UNIT == "unzigzag":
    LEVEL_LO, LEVEL_HI = -(1 << (LEVEL.width - 1)), (1 << (LEVEL.width - 1)) - 1

    @cocotb.test()
    @cocotb.parametrize(idle=[False, True], backpressure=[False, True])
    async def unzigzag(dut, idle, backpressure):
        rng = np.random.default_rng([SEED, 2, int(idle), int(backpressure)])
        tb = StreamTB(dut)
        src = tb.source("i", LevelRow, idle=random_pauses(rng, 0.3) if idle else None)
        snk = tb.sink("o", LevelRow,
                      backpressure=random_pauses(rng, 0.3) if backpressure else None)
        await tb.reset()
        scan = rng.integers(LEVEL_LO, LEVEL_HI + 1, size=(40, 64))
        scan[:3] = [np.arange(64), np.full(64, LEVEL_LO), np.full(64, LEVEL_HI)]
        src.send(scan.reshape(-1, 8).tolist())
        got = np.array(await snk.recv(8 * len(scan), timeout_cycles=40 * len(scan) + 100))
        expected = np.empty_like(scan)
        expected[:, ZIGZAG] = scan  # raster position ZIGZAG[k] holds scan symbol k
        assert np.array_equal(got.reshape(-1, 64), expected), (
            f"first block: expected\n{expected[0].reshape(8, 8)}\ngot\n{got[:8]}")
        if not idle and not backpressure:
            ins, outs = np.array(src.transfers), np.array(snk.transfers)
            assert (np.diff(outs) == 1).all(), "output bubble"
            assert set((outs - ins).tolist()) == {Unzigzag.LATENCY}
        await tb.finish(drain_cycles=24)
