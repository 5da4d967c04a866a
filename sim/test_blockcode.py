"""cocotb testbench of ``Zigzag`` and ``BlockEncoder`` against the numpy reference
(``tables.ZIGZAG``; ``blockcode.block_model``, i.e. ``reference.encode_block`` /
``encode_dense`` and the kind decision of ``reference.compress``).

Run through ``actpack.sim.build`` (see tests/hw/test_hw_blockcode.py). Environment:
``ACTPACK_TB_UNIT`` = ``zigzag`` | ``encoder`` (which top was built), ``ACTPACK_TB_MODE`` and
``ACTPACK_TB_DTYPE`` (the encoder's parameters), ``ACTPACK_TB_SEED``.

Every stimulus runs with the idle inserter (source) and the backpressure inserter (sinks) each on
and off. Every index entry and every coded byte is compared, beat framing included (16 bytes a
beat, ``count`` and ``last`` on the last, zero bytes beyond ``count``). Without inserters the
testbench also checks throughput (no input stall: one row per cycle) and latency.
"""

import os
import zlib

import cocotb
import numpy as np
from amaranth.lib import data

from actpack.codec import reference, spec
from actpack.codec.frame import Kind
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import NAMED_TABLES, ZIGZAG

from ..hw.beats import BEAT_BYTES, CodeBeat, IndexEntry
from ..hw.blockcode import BlockEncoder, Zigzag, block_model, symbol_shape
from ..hw.quant import LEVEL, LevelRow
from . import stimulus
from .stream import StreamTB, random_pauses

UNIT = os.environ.get("ACTPACK_TB_UNIT", "encoder")
MODE = Mode.parse(os.environ.get("ACTPACK_TB_MODE", "dct"))
DTYPE = DType[os.environ.get("ACTPACK_TB_DTYPE", "float32").upper()]
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))

_CODE_MAG = 1 << (spec.WIDTH_MAX - 1)  # |v| of the widest codable nonzero symbol (15-bit code)


# ----------------------------------------------------------------------------- stimulus


def _clip(blocks: np.ndarray) -> np.ndarray:
    """Symbols as the port carries them (the shape's range)."""
    shape = symbol_shape(MODE)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else 1
    return np.clip(blocks, lo, hi)


def _random(rng, n: int) -> np.ndarray:
    """Varied sparsity and magnitude: per block a density and a magnitude bit count."""
    if MODE is Mode.MASK:
        density = rng.choice([0.0, 0.02, 0.1, 0.5, 0.9, 1.0], size=(n, 1))
        return (rng.random((n, 64)) < density).astype(np.int64)
    top = {Mode.DCT: 12, Mode.SFPR8: 7, Mode.EB: 17}[MODE]
    density = rng.choice([0.0, 0.03, 0.1, 0.3, 0.6, 0.9, 1.0], size=(n, 1))
    bits = rng.integers(0, top + 1, size=(n, 1))
    mag = rng.integers(1, 2 ** bits + 1, size=(n, 64))
    sign = rng.choice([-1, 1], size=(n, 64))
    return _clip(np.where(rng.random((n, 64)) < density, sign * mag, 0))


def _real(rng) -> np.ndarray:
    """Symbols of real-ish activations as each mode's pipeline makes them (scan order)."""
    pixels = np.concatenate([stimulus.relu_smooth(rng, 12), stimulus.digits(rng, 12)])
    if MODE is Mode.DCT:
        out = [reference.quantize(reference.dct2(pixels), NAMED_TABLES[name]).reshape(-1, 64)
               for name in ("optL", "optH")]
        return np.concatenate(out)[:, ZIGZAG]
    if MODE is Mode.SFPR8:
        return np.concatenate([pixels, pixels - 40]).reshape(-1, 64)  # after ReLU and not
    if MODE is Mode.EB:  # Lorenzo residuals of pre-quantized values at several step sizes
        q = np.concatenate([pixels, pixels * 16, pixels * 200, pixels - 60])
        return _clip(reference.lorenzo(np.clip(q, -spec.EB_Q_SAT, spec.EB_Q_SAT)).reshape(-1, 64))
    return (pixels > 20).reshape(-1, 64).astype(np.int64)


def _edge(rng) -> list[np.ndarray]:
    z = np.zeros(64, np.int64)
    blocks = [z, z.copy(), np.eye(1, 64, 63, dtype=np.int64)[0],
              np.eye(1, 64, 0, dtype=np.int64)[0], np.ones(64, np.int64)]
    if MODE is Mode.MASK:
        blocks += [np.eye(1, 64, k, dtype=np.int64)[0] for k in (7, 8, 56)]
        return blocks
    one63 = z.copy()
    one63[63] = -1
    blocks += [one63, -np.ones(64, np.int64), np.arange(1, 65) * (-1) ** np.arange(64),
               np.tile([1, 0], 32), np.where(np.arange(64) < 57, 2, 0)]
    big = {Mode.DCT: _CODE_MAG, Mode.SFPR8: spec.SFPR_MAX, Mode.EB: _CODE_MAG}[MODE]
    for v in (big, -big, big - 1, -(big - 1)):
        blocks += [np.full(64, v), np.where(np.arange(64) % 3 == 0, v, 0), one63 * -v]
    if MODE is not Mode.SFPR8:
        # 15-bit codes in every group, and codes just over 15 bits (RAW or the other kind in eb)
        for v in (_CODE_MAG + 1, -(_CODE_MAG + 1), _CODE_MAG, -_CODE_MAG):
            b = rng.integers(-3, 4, size=64)
            b[rng.integers(0, 64)] = v
            blocks += [b, np.full(64, v)]
        lim = (1 << 17) if MODE is Mode.EB else (1 << 15) - 1
        blocks += [np.full(64, lim), np.full(64, -lim),
                   rng.integers(-(1 << 14), (1 << 14) + 1, size=64)]
    return [_clip(b) for b in blocks]


def _long(rng, n: int) -> np.ndarray:
    """Long blocks back to back: every symbol nonzero, at the port's largest codable
    magnitudes (124-byte DENSE blocks, and 132-byte CODED ones where the mode reaches them)."""
    if MODE is Mode.MASK:
        return np.ones((n, 64), np.int64)
    top = min(_CODE_MAG, int(np.abs(_clip(np.array([_CODE_MAG]))[0])))
    mag = rng.integers(top // 4, top + 1, size=(n, 64))
    mag[rng.random((n, 64)) < rng.choice([0.0, 0.2], size=(n, 1))] = 1
    out = mag * rng.choice([-1, 1], size=(n, 64))
    if top == _CODE_MAG:  # +2**14 has a 16-bit dense code: CODED of up to 132 bytes instead
        out[::2, 5] = _CODE_MAG
    return out


def _cnn() -> tuple[np.ndarray, np.ndarray]:
    """Symbols and force_raw flags that ``reference.compress`` computed for activations of the
    digits CNN (written by tests/hw/test_hw_blockcode.py, file named by ACTPACK_TB_CNN)."""
    path = os.environ.get("ACTPACK_TB_CNN")
    if not path:
        raise RuntimeError("ACTPACK_TB_CNN names no file of CNN symbols")
    with np.load(path) as f:
        return f["symbols"], f["force_raw"]


def _stimulus(name: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """(blocks (n, 64) in scan order, force_raw (n,) bools)."""
    if name == "cnn":
        return _cnn()
    if name == "random":
        blocks = _random(rng, 48)
    elif name == "real":
        blocks = _real(rng)
    elif name == "long":
        blocks = _long(rng, 24)
    else:
        blocks = np.stack(_edge(rng))
    force = rng.random(len(blocks)) < 0.1 if MODE is not Mode.MASK else np.zeros(len(blocks), bool)
    if name == "edge" and MODE is not Mode.MASK:
        force[:] = False
        force[[1, -1]] = True  # a forced zero block and the widest block
    if name == "long":
        force[:] = False
    return blocks.astype(np.int64), force


# ----------------------------------------------------------------------------- testbench


def _flat(layout: data.StructLayout) -> data.StructLayout:
    """The encoder's row layout with the symbol array spelled as fields ``s0``..``s7`` (the
    stream driver packs flat layouts only); checked bit for bit against the nested layout."""
    arr = layout["symbols"].shape
    fields = {f"s{u}": arr.elem_shape for u in range(arr.length)}
    fields.update({k: f.shape for k, f in layout if k != "symbols"})
    flat = data.StructLayout(fields)
    rng = np.random.default_rng(0)
    for _ in range(4):
        syms = [int(x) for x in rng.integers(-1, 2, size=arr.length)]
        if not arr.elem_shape.signed:
            syms = [abs(x) for x in syms]
        extra = {k: 1 for k, _ in layout if k != "symbols"}
        nested = layout.const({"symbols": syms, **extra}).as_bits()
        assert flat.const({**{f"s{u}": s for u, s in enumerate(syms)}, **extra}).as_bits() == nested
    return flat


class EncoderTB(StreamTB):
    def __init__(self, dut, *, idle=None, backpressure=None, backpressure_index=None):
        super().__init__(dut)
        self.enc = BlockEncoder(mode=MODE, dtype=DTYPE)
        self.row_layout = self.enc.row_layout
        self.src = self.source("i", _flat(self.row_layout), idle=idle)
        self.beats = self.sink("o", CodeBeat, backpressure=backpressure)
        self.entries = self.sink("index", IndexEntry, backpressure=backpressure_index)

    async def check(self, blocks, force, *, timing: bool, latency: bool = False):
        expected = [block_model(b, mode=MODE, dtype=DTYPE, force_raw=f)
                    for b, f in zip(blocks, force, strict=True)]
        rows = []
        for b, f in zip(blocks, force, strict=True):
            for j in range(8):
                row = {f"s{u}": int(b[8 * j + u]) for u in range(8)}
                if MODE is not Mode.MASK:
                    row["force_raw"] = int(f and j == 7 - (int(b[0]) & 7))  # any row of the block
                rows.append(row)
        self.src.send(rows)
        n = len(blocks)
        budget = 20 * 8 * n + 200
        got_entries = await self.entries.recv(n, timeout_cycles=budget)
        got_entries = [self.entries.codec.pack(e) for e in got_entries]
        nbeats = sum(-(-len(c) // BEAT_BYTES) for _, c in expected)
        beats = await self.beats.recv(nbeats, timeout_cycles=budget)
        pos = 0
        for b, ((entry, chunk), got) in enumerate(zip(expected, got_entries, strict=True)):
            ctx = f"block {b} ({MODE.label}, {DTYPE.label}) symbols {blocks[b].tolist()}"
            assert got == entry, f"{ctx}: index entry {got:#06x}, expected {entry:#06x}"
            k = -(-len(chunk) // BEAT_BYTES)
            mine = beats[pos: pos + k]
            pos += k
            out = b""
            for x, beat in enumerate(mine):
                final = x == k - 1
                assert beat["last"] == final, f"{ctx}: beat {x} last={beat['last']}"
                want = len(chunk) - BEAT_BYTES * x if final else BEAT_BYTES
                assert beat["count"] == want, f"{ctx}: beat {x} count {beat['count']} != {want}"
                raw = beat["data"].to_bytes(BEAT_BYTES, "little")
                assert not any(raw[want:]), f"{ctx}: beat {x} has non-zero bytes beyond count"
                out += raw[:want]
            assert out == chunk, f"{ctx}: bytes\n{out.hex()}\nexpected\n{chunk.hex()}"
        if timing:
            self._timing(blocks, expected, latency=latency)

    def _timing(self, blocks, expected, *, latency: bool):
        """No input stall but one cycle per block over 128 bytes (9 beats); with ``latency``
        (no stall at all expected) every index entry and last beat on time."""
        ins = np.array(self.src.transfers)
        stalls = int(np.sum(np.diff(ins) - 1))
        over = sum(len(c) > 8 * BEAT_BYTES for _, c in expected[:-1])
        assert stalls <= over, f"input stalled {stalls} cycles ({over} blocks over 128 bytes)"
        self.dut._log.info("%s %s: %d blocks in %d input cycles (%d stalls), %d beats",
                           MODE.label, DTYPE.label, len(expected), ins[-1] - ins[0] + 1, stalls,
                           len(self.beats.transfers))
        if not latency or over:  # latency is defined for an unstalled stream
            return
        last_rows = ins[7::8]
        idx = np.array(self.entries.transfers)
        lat = set((idx - last_rows).tolist())
        assert lat == {self.enc.INDEX_LATENCY}, f"index latency {lat}"
        # a block's last beat: BEAT_LATENCY + its last slot with bits, + 1 if two beats were left
        beats = np.array(self.beats.transfers)
        ends = np.cumsum([-(-len(c) // BEAT_BYTES) for _, c in expected]) - 1
        for b, (entry, chunk) in enumerate(expected):
            if not chunk:
                continue
            kind = entry >> 14
            slot = 0 if MODE is Mode.MASK else 7 if kind == Kind.DENSE else (
                -(-np.count_nonzero(blocks[b]) // 8) - 1)
            extra = beats[ends[b]] - last_rows[b] - self.enc.BEAT_LATENCY - slot
            assert extra in (0, 1), f"block {b}: last beat {extra} cycles late"


class ZigzagTB(StreamTB):
    def __init__(self, dut, *, idle=None, backpressure=None):
        super().__init__(dut)
        self.src = self.source("i", LevelRow, idle=idle)
        self.snk = self.sink("o", LevelRow, backpressure=backpressure)

    async def check(self, blocks, *, timing: bool):
        self.src.send(row.tolist() for b in blocks for row in b.reshape(8, 8))
        rows = len(blocks) * 8
        got = np.array(await self.snk.recv(rows, timeout_cycles=8 * rows + 100)).reshape(-1, 64)
        expected = blocks.reshape(-1, 64)[:, ZIGZAG]
        bad = np.flatnonzero((got != expected).any(axis=1))
        assert bad.size == 0, f"block {bad[0]}: got {got[bad[0]]} expected {expected[bad[0]]}"
        if timing:
            ins, outs = np.array(self.src.transfers), np.array(self.snk.transfers)
            assert np.all(np.diff(ins) == 1), "input stalled"
            assert np.all(np.diff(outs) == 1), "output bubble"
            lat = set((outs - ins).tolist())
            assert lat == {Zigzag.LATENCY}, f"latency {lat}"


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode())])


def _pauses(rng, on: bool):
    return random_pauses(rng, 0.3) if on else None


if UNIT == "zigzag":

    @cocotb.test()
    @cocotb.parametrize(idle=[False, True], backpressure=[False, True])
    async def zigzag(dut, idle, backpressure):
        rng = _rng("zigzag", idle, backpressure)
        lim = 1 << (LEVEL.width - 1)
        blocks = rng.integers(-lim, lim, size=(24, 64))
        tb = ZigzagTB(dut, idle=_pauses(rng, idle), backpressure=_pauses(rng, backpressure))
        await tb.reset()
        await tb.check(blocks, timing=not idle and not backpressure)
        await tb.finish(drain_cycles=24)

else:

    @cocotb.test()
    @cocotb.parametrize(
        stim=["random", "real", "cnn", "long", "edge"], idle=[False, True],
        backpressure=[False, True])
    async def encoder(dut, stim, idle, backpressure):
        rng = _rng(stim, idle, backpressure)
        blocks, force = _stimulus(stim, rng)
        tb = EncoderTB(dut, idle=_pauses(rng, idle), backpressure=_pauses(rng, backpressure),
                       backpressure_index=_pauses(rng, backpressure))
        await tb.reset()
        timing = stim in ("real", "cnn", "long") and not idle and not backpressure
        await tb.check(blocks, force, timing=timing, latency=stim != "long")
        await tb.finish(drain_cycles=64)
