"""cocotb testbench of ``Compressor`` against reference frames.

Run through ``actpack.sim.build`` (see tests/hw/test_hw_compressor.py). Environment:
``ACTPACK_TB_MODE``, ``ACTPACK_TB_DTYPE``, ``ACTPACK_TB_LANES`` (the engine's parameters),
``ACTPACK_TB_PREFIX`` (its ports' prefix: ``<name>_`` in a ``frames.compressor_bundle`` top),
``ACTPACK_TB_STIM``: a folder of ``<case>.npz`` files, each the tiled input of one tensor and
the index and payload of its reference frame (``Codec(mode=..., backend="numpy").compress``),
written by ``actpack.sim.frames.write_case``; ``ACTPACK_TB_SEED``. With ``ACTPACK_TB_MEASURE``
(a folder) the module instead runs each case once without inserters, checks it the same way
and writes ``<case>.json`` with the cycles from the first input transfer to the first and to
the last output transfer (``actpack bench rtl``).

Every case runs with the idle inserter (source) and the backpressure inserter (both sinks) each
on and off. Every index entry and every payload byte is compared, beat framing included (16
bytes a beat, ``count`` and ``last`` on a block's final beat, zero bytes beyond ``count``).
Cases marked ``full_rate`` also check, without inserters, that the input never stalls.
"""

import json
import os
import zlib
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from actpack.codec.frame import unpack_index
from actpack.codec.spec import DType, Mode

from ..hw.beats import BEAT_BYTES, CodeBeat, IndexEntry
from ..hw.compressor import row_layout
from . import rows
from .stream import StreamTB, random_pauses

__all__ = ["case_rng", "case_rows", "expected_beats", "pauses"]

MODE = Mode.parse(os.environ.get("ACTPACK_TB_MODE", "sfpr8"))
DTYPE = DType[os.environ.get("ACTPACK_TB_DTYPE", "float32").upper()]
LANES = int(os.environ.get("ACTPACK_TB_LANES", "1"))
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
PREFIX = os.environ.get("ACTPACK_TB_PREFIX", "")
STIM = Path(os.environ.get("ACTPACK_TB_STIM", "."))
CASES = sorted(p.stem for p in STIM.glob("*.npz")) or ["none"]
MEASURE = os.environ.get("ACTPACK_TB_MEASURE")


def case_rows(case) -> list:
    """Input transfers of a case (an npz mapping): per transfer ``LANES`` rows (dicts)."""
    tiles = case["tiles"].reshape(-1, 8, 8)
    out = []
    for b, block in enumerate(tiles):
        extra = {}
        if MODE is not Mode.MASK:
            extra["scale"] = {"m": int(case["m"][b]), "e": int(case["e"][b])}
        if MODE is Mode.EB:
            extra["r"] = int(case["r"][b])
            extra["eb"] = int(case["eb"])
        block_rows = [{"x": [int(v) for v in row], **extra} for row in block]
        out += [block_rows[k: k + LANES] for k in range(0, 8, LANES)]
    return out


def expected_beats(index, payload) -> list[bytes]:
    """The payload cut into beats: each block's bytes in 16-byte beats (the last shorter)."""
    _, _, lengths = unpack_index(np.asarray(index, dtype=np.uint16))
    out, pos = [], 0
    for n in lengths.tolist():
        out += [bytes(payload[pos + k: pos + min(k + BEAT_BYTES, n)])
                for k in range(0, n, BEAT_BYTES)]
        pos += n
    return out


class CompressorTB(StreamTB):
    def __init__(self, dut, *, idle=None, backpressure=None, backpressure_index=None):
        super().__init__(dut)
        layout = row_layout(MODE, DTYPE)
        from amaranth.lib import data

        self.src = rows.source(self, f"{PREFIX}i", data.ArrayLayout(layout, LANES), idle=idle)
        self.beats = self.sink(f"{PREFIX}o", CodeBeat, backpressure=backpressure)
        self.entries = self.sink(f"{PREFIX}index", IndexEntry, backpressure=backpressure_index)

    async def load_table(self, table):
        """Write the 64 entries through ``table_wr``, one a cycle (before any block)."""
        edge = RisingEdge(self.dut.clk)
        port = {k: getattr(self.dut, f"{PREFIX}table_wr__{k}") for k in ("addr", "data", "en")}
        for addr, q in enumerate(table):
            port["addr"].value = addr
            port["data"].value = int(q)
            port["en"].value = 1
            await edge
        port["en"].value = 0
        await edge

    async def check(self, name, case, *, timing: bool):
        index, payload = case["index"], case["payload"]
        self.src.send(case_rows(case))
        n = len(index)
        want = expected_beats(index, payload)
        budget = 64 * n + 400
        got_idx = await self.entries.recv(n, timeout_cycles=budget)
        got_idx = [self.entries.codec.pack(e) for e in got_idx]
        beats = await self.beats.recv(len(want), timeout_cycles=budget)
        kinds = index >> 14
        for b, (got, exp) in enumerate(zip(got_idx, index.tolist(), strict=True)):
            assert got == exp, (f"{name} block {b}: index entry {got:#06x}, expected {exp:#06x} "
                                f"(tiles {case['tiles'][b].tolist()})")
        ends = set(np.cumsum(_beats_per_block(index)).tolist())
        for k, (beat, exp) in enumerate(zip(beats, want, strict=True)):
            ctx = f"{name} beat {k} (block kinds {sorted(set(kinds.tolist()))})"
            raw = beat["data"].to_bytes(BEAT_BYTES, "little")
            assert beat["count"] == len(exp), f"{ctx}: count {beat['count']} != {len(exp)}"
            assert beat["last"] == ((k + 1) in ends), f"{ctx}: last={beat['last']}"
            assert raw[: len(exp)] == exp, f"{ctx}: bytes {raw.hex()} expected {exp.hex()}"
            assert not any(raw[len(exp):]), f"{ctx}: non-zero bytes beyond count"
        ins = np.array(self.src.transfers)
        cycles = int(ins[-1] - ins[0] + 1)
        self.dut._log.info("%s: %d blocks, %d input transfers in %d cycles, %d beats", name, n,
                           len(ins), cycles, len(beats))
        if timing:
            assert cycles == len(ins), f"{name}: input stalled {cycles - len(ins)} cycles"
        outs = self.entries.transfers + self.beats.transfers
        return {"blocks": n, "values": 64 * n, "transfers": len(ins), "beats": len(beats),
                "input_cycles": cycles, "first_out": int(min(outs) - ins[0]),
                "last_out": int(max(outs) - ins[0])}


def _beats_per_block(index) -> np.ndarray:
    _, _, lengths = unpack_index(np.asarray(index, dtype=np.uint16))
    return -(-lengths // BEAT_BYTES)


def case_rng(*key) -> np.random.Generator:
    """The generator of one case of a run (``ACTPACK_TB_SEED`` and the case's key): the
    compressor's and the decompressor's testbench pause the same case the same way."""
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode())])


def pauses(rng, on: bool):
    """Random pauses 30 % of the cycles where ``on``, else none (``StreamTB``'s idle and
    backpressure arguments)."""
    return random_pauses(rng, 0.3) if on else None


def _load(stim: str) -> dict:
    with np.load(STIM / f"{stim}.npz") as f:
        return {k: f[k] for k in f.files}


async def _start(dut, case, **stalls) -> CompressorTB:
    tb = CompressorTB(dut, **stalls)
    await tb.reset()
    if MODE is Mode.DCT:
        await tb.load_table(case["table"])
    return tb


if MEASURE:

    @cocotb.test()
    @cocotb.parametrize(stim=CASES)
    async def measure(dut, stim):
        """Timing of a case, no stalls: first input -> first / last output."""
        case = _load(stim)
        tb = await _start(dut, case)
        result = await tb.check(stim, case, timing=False)
        await tb.finish(drain_cycles=64)
        (Path(MEASURE) / f"{stim}.json").write_text(json.dumps(result))


else:

    @cocotb.test()
    @cocotb.parametrize(stim=CASES, idle=[False, True], backpressure=[False, True])
    async def compressor(dut, stim, idle, backpressure):
        case = _load(stim)
        rng = case_rng(stim, idle, backpressure)
        tb = await _start(dut, case, idle=pauses(rng, idle),
                          backpressure=pauses(rng, backpressure),
                          backpressure_index=pauses(rng, backpressure))
        timing = bool(case["full_rate"]) and not idle and not backpressure
        await tb.check(stim, case, timing=timing)
        await tb.finish(drain_cycles=64)
