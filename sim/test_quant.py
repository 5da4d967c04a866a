"""cocotb testbench of ``Quantizer`` and ``Dequantizer`` against ``reference.quantize`` /
``reference.dequantize``.

Run through ``actpack.sim.build`` (see tests/hw/test_quant.py). Environment:
``ACTPACK_TB_UNIT`` = ``quant`` | ``dequant`` (which top was built), ``ACTPACK_TB_TABLE`` (the
table the top was built with, a name ``resolve_table`` accepts), ``ACTPACK_TB_SEED``,
``ACTPACK_TB_ORDER`` (the unit's ``order``: blocks go in and come out in that order,
``dct.ORDERS``; the table is still written row-major).

The first test checks the table the hardware starts with; every later test loads its table
through the ``table_wr`` port, then streams blocks with the idle and backpressure inserters each on
and off, comparing every value and (without inserters) checking one row per cycle and latency.
"""

import os
import zlib

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from actpack.codec import reference, spec
from actpack.codec.tables import NAMED_TABLES, jpeg_table, resolve_table

from ..hw.dct import ORDERS, CoefRow
from ..hw.quant import LEVEL, Dequantizer, LevelRow, Quantizer
from . import stimulus
from .stream import StreamTB, random_pauses

UNIT = os.environ.get("ACTPACK_TB_UNIT", "quant")
INITIAL_TABLE = os.environ.get("ACTPACK_TB_TABLE", "optH")
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
ORDER = list(ORDERS[os.environ.get("ACTPACK_TB_ORDER", "raster")])

DUT_CLASS = {"quant": Quantizer, "dequant": Dequantizer}[UNIT]
MODEL = {"quant": reference.quantize, "dequant": reference.dequantize}[UNIT]
LAYOUT_IN = {"quant": CoefRow, "dequant": LevelRow}[UNIT]
LEVEL_MAX = (1 << (LEVEL.width - 1)) - 1  # largest level the port carries


def _table(name: str, rng) -> np.ndarray:
    if name == "random":  # every entry value, the extremes 1 and 255 included
        t = rng.integers(1, 256, size=64)
        t[rng.choice(64, size=4, replace=False)] = [1, 255, 2, 254]
        return t
    if name in NAMED_TABLES:
        return NAMED_TABLES[name].astype(np.int64)
    return jpeg_table(int(name.removeprefix("jpeg"))).astype(np.int64)


def _blocks(name: str, table: np.ndarray, rng) -> np.ndarray:
    q = table.reshape(8, 8)
    if UNIT == "quant":
        if name == "random":
            return rng.integers(-2048, 2048, size=(32, 8, 8))
        if name == "real":
            pixels = np.concatenate([stimulus.relu_smooth(rng, 12), stimulus.digits(rng, 12)])
            return reference.dct2(pixels)
        if name == "edge":  # zero, extremes, and both sides of every truncation step
            m = rng.integers(0, 2048, size=(8, 8, 8)) // q
            steps = [np.clip(s * (m * q + d), -2048, 2047) for s in (1, -1) for d in (-1, 0, 1)]
            return np.concatenate([
                np.zeros((1, 8, 8), np.int64), np.full((1, 8, 8), 2047),
                np.full((1, 8, 8), -2047), np.full((1, 8, 8), -2048), *steps,
            ])
    else:
        if name == "random":
            return rng.integers(-LEVEL_MAX - 1, LEVEL_MAX + 1, size=(32, 8, 8))
        if name == "real":
            pixels = np.concatenate([stimulus.relu_smooth(rng, 12), stimulus.digits(rng, 12)])
            return reference.quantize(reference.dct2(pixels), table)
        if name == "edge":  # zero, +-1, extremes, and both sides of the saturation point
            cmax = spec.DCT_COEF_MAX
            m = ((2 * cmax + 1) // q - 1) // 2  # largest level not saturating: (2m+1)Q <= 4095
            sides = [s * np.maximum(m + d, 0) for s in (1, -1) for d in (0, 1)]
            return np.concatenate([
                np.zeros((1, 8, 8), np.int64), np.ones((1, 8, 8), np.int64),
                -np.ones((1, 8, 8), np.int64), np.full((1, 8, 8), LEVEL_MAX),
                np.full((1, 8, 8), -LEVEL_MAX - 1), np.stack(sides),
            ])
    raise ValueError(name)


class TB(StreamTB):
    def __init__(self, dut, *, idle=None, backpressure=None):
        super().__init__(dut)
        self.src = self.source("i", LAYOUT_IN, idle=idle)
        self.snk = self.sink("o", CoefRow, backpressure=backpressure)
        dut.table_wr__en.value = 0

    async def write_table(self, table):
        """One entry per cycle through the write port, row-major."""
        edge = RisingEdge(self.dut.clk)
        for addr, entry in enumerate(table.tolist()):
            self.dut.table_wr__addr.value = addr
            self.dut.table_wr__data.value = entry
            self.dut.table_wr__en.value = 1
            await edge
        self.dut.table_wr__en.value = 0

    async def check(self, blocks, table, *, timing: bool):
        def ordered(b):
            return b.reshape(-1, 64)[:, ORDER].reshape(-1, 8, 8)

        expected = ordered(MODEL(blocks, table))
        blocks = ordered(blocks)
        rows = len(blocks) * 8
        self.src.send(row.tolist() for block in blocks for row in block)
        got = np.array(await self.snk.recv(rows, timeout_cycles=8 * rows + 100)).reshape(-1, 8, 8)
        bad = np.flatnonzero((got != expected).any(axis=(1, 2)))
        assert bad.size == 0, (
            f"{bad.size} of {len(blocks)} blocks differ; first {bad[0]}:\ntable\n"
            f"{table.reshape(8, 8)}\ninput\n{blocks[bad[0]]}\nexpected\n{expected[bad[0]]}\n"
            f"got\n{got[bad[0]]}"
        )
        if timing:
            ins, outs = np.array(self.src.transfers), np.array(self.snk.transfers)
            assert np.all(np.diff(ins) == 1), "input stalled"
            assert np.all(np.diff(outs) == 1), "output bubble"
            latency = set((outs - ins).tolist())
            assert latency == {DUT_CLASS.LATENCY}, f"latency {latency}"
            self.dut._log.info("%s: %d blocks in %d cycles, latency %d", UNIT, len(blocks),
                               outs[-1] - outs[0] + 1, DUT_CLASS.LATENCY)


@cocotb.test()
async def initial_table(dut):
    """The table the hardware starts with (no writes)."""
    rng = np.random.default_rng([SEED, 0])
    _, _, table = resolve_table(INITIAL_TABLE)
    tb = TB(dut)
    await tb.reset()
    await tb.check(_blocks("random", table.astype(np.int64), rng), table, timing=True)
    await tb.finish(drain_cycles=16)


@cocotb.test()
@cocotb.parametrize(
    data=["random", "real", "edge"],
    table=["random", "optL", "jpeg10"],
    idle=[False, True],
    backpressure=[False, True],
)
async def run_test(dut, data, table, idle, backpressure):
    rng = np.random.default_rng([SEED, zlib.crc32(f"{data}{table}{idle}{backpressure}".encode())])
    entries = _table(table, rng)
    tb = TB(dut, idle=random_pauses(rng, 0.3) if idle else None,
            backpressure=random_pauses(rng, 0.3) if backpressure else None)
    await tb.reset()
    await tb.write_table(entries)
    await tb.check(_blocks(data, entries, rng), entries, timing=not idle and not backpressure)
    await tb.finish(drain_cycles=16)
