"""cocotb testbench of ``Decompressor`` against the reference decoder (``sim.decompcases``), and
the ``measure`` test of ``bench.rtl.measure_decompressor`` (values per cycle and latency).

Run through ``actpack.sim.build`` (see tests/hw/test_hw_decompressor.py). Environment:
``ACTPACK_TB_MODE``, ``ACTPACK_TB_DTYPE``, ``ACTPACK_TB_LANES`` (the build's parameters),
``ACTPACK_TB_STIM``: a folder of ``<case>.npz`` files written by ``sim.decompcases.write_case``
(per block the index entry, ``r`` and payload bytes, and what the reference makes of the block:
its 64 bit patterns before untiling, or malformed); ``ACTPACK_TB_SEED``; ``ACTPACK_TB_RESULT``:
where the ``measure`` test writes its JSON.

``decompressor`` runs every case with the idle inserter (both sources) and the backpressure
inserter each on and off and compares every output bit: each block's 8 rows, ``last`` on row
7, ``error`` 0 on every row of a well-formed block and nonzero on row 7 of a malformed one.
``reset_mid_block`` resets the engine with a block half delivered and then checks a whole case.
"""

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from amaranth.lib import data

from actpack.codec.spec import Mode

from ..hw.beats import BEAT_BYTES, CodeBeat
from ..hw.decompressor import block_layout, out_row
from . import rows
from .stream import StreamTB

# the environment of the build (MODE, DTYPE, LANES), SEED, STIM and its CASES: as the
# compressor's bench reads them
from .test_compressor import CASES, DTYPE, LANES, MODE, STIM, CompressorTB, case_rng, pauses

# ----------------------------------------------------------------------------- the bench


def _case_items(case):
    """(blocks transfers, data beats) of a case."""
    blocks, beats, pos = [], [], 0
    for b, (entry, n) in enumerate(zip(case["index"].tolist(), case["lengths"].tolist(),
                                       strict=True)):
        item = {"entry": {"length": entry & 0x7FF, "mb_minus_1": (entry >> 11) & 7,
                          "kind": entry >> 14}}
        if MODE is not Mode.MASK:
            item["r"] = int(case["r"][b])
        blocks.append(item)
        chunk = bytes(case["payload"][pos:pos + n])
        pos += n
        for k in range(0, n, BEAT_BYTES):
            part = chunk[k:k + BEAT_BYTES]
            beats.append({"data": int.from_bytes(part, "little"), "count": len(part),
                          "last": int(k + BEAT_BYTES >= n)})
    return blocks, beats


class DecompressorTB(StreamTB):
    def __init__(self, dut, *, idle=None, idle_beats=None, backpressure=None):
        super().__init__(dut)
        self.blocks = rows.source(self, "blocks", block_layout(MODE), idle=idle)
        self.beats = self.source("data", CodeBeat, idle=idle_beats)
        self.out = rows.sink(self, "o", data.ArrayLayout(out_row(DTYPE), LANES),
                             backpressure=backpressure)

    load_table = CompressorTB.load_table  # the same table_wr port

    def send(self, case):
        blocks, beats = _case_items(case)
        self.blocks.send(blocks)
        self.beats.send(beats)

    async def check(self, name, case):
        n = len(case["index"])
        words = await self.out.recv(8 * n // LANES, timeout_cycles=80 * n + 400)
        got = [row for word in words for row in word]
        expected, bad = case["expected"], case["bad"]
        for b in range(n):
            block = got[8 * b: 8 * b + 8]
            ctx = f"{name} block {b} (entry {int(case['index'][b]):#06x})"
            assert [r["last"] for r in block] == [0] * 7 + [1], f"{ctx}: last flags"
            if bad[b]:
                assert block[7]["error"], f"{ctx}: malformed block not flagged"
                continue
            errors = [r["error"] for r in block]
            assert not any(errors), f"{ctx}: flagged {errors} but well-formed"
            vals = [v for r in block for v in r["x"]]
            exp = expected[b].tolist()
            assert vals == exp, f"{ctx}: got {list(map(hex, vals))}, expected {list(map(hex, exp))}"
        return got


def _load(stim):
    with np.load(STIM / f"{stim}.npz") as f:
        return {k: f[k] for k in f.files}


async def _start(tb, case):
    await tb.reset()
    if MODE is Mode.DCT:
        await tb.load_table(case["table"])


@cocotb.test()
@cocotb.parametrize(stim=CASES, idle=[False, True], backpressure=[False, True])
async def decompressor(dut, stim, idle, backpressure):
    case = _load(stim)
    rng = case_rng(stim, idle, backpressure)
    tb = DecompressorTB(dut, idle=pauses(rng, idle), idle_beats=pauses(rng, idle),
                        backpressure=pauses(rng, backpressure))
    await _start(tb, case)
    tb.send(case)
    await tb.check(stim, case)
    if stim.startswith("full_rate") and not idle and not backpressure:
        out = np.array(tb.out.transfers)
        gaps = np.flatnonzero(np.diff(out) > 1)
        assert not gaps.size, f"{stim}: output bubbles after rows {gaps.tolist()}"
    await tb.finish(drain_cycles=64)


@cocotb.test()
async def reset_mid_block(dut):
    """Deliver part of a case, reset with a block half in (and rows in flight), then the
    whole case must decode exactly."""
    case = _load(CASES[0])
    tb = DecompressorTB(dut)
    await _start(tb, case)
    blocks, beats = _case_items(case)
    cut = max(1, len(beats) // 2 + 1)  # mid-block in any case with multi-beat blocks
    tb.blocks.send(blocks)
    tb.beats.send(beats[:cut])
    await tb.cycles(cut + 6)
    for port in (*tb.sources, *tb.sinks):
        port.stop()
        port.queue.clear()
    tb.blocks._busy = tb.beats._busy = False
    tb.blocks.valid.value = tb.beats.valid.value = 0
    await _start(tb, case)  # reset (ports restart) and, for dct, the table again
    tb.send(case)
    await tb.check("after reset", case)
    await tb.finish(drain_cycles=64)


@cocotb.test()
async def measure(dut):
    """No inserters: cycles from the first input transfer to the first output row (latency),
    and values per cycle over the whole output (first to last row)."""
    result = os.environ.get("ACTPACK_TB_RESULT")
    if not result:
        return
    case = _load(CASES[0])
    tb = DecompressorTB(dut)
    await _start(tb, case)
    tb.send(case)
    await tb.check("measure", case)
    first_in = min(t[0] for t in (tb.blocks.transfers, tb.beats.transfers) if t)
    out = tb.out.transfers
    n = len(case["index"])
    Path(result).write_text(json.dumps({
        "latency": out[0] - first_in,
        "values_per_cycle": 64 * n / (out[-1] - out[0] + 1),
        "cycles": out[-1] - first_in + 1,
        "blocks": n,
    }))
    await tb.finish(drain_cycles=16)
