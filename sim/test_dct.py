"""cocotb testbench of ``DCT2D`` and ``IDCT2D`` against ``reference.dct2`` / ``reference.idct2``.

Run through ``actpack.sim.build`` (see tests/hw/test_dct.py). Environment:
``ACTPACK_TB_TRANSFORM`` = ``dct`` | ``idct`` (which top was built), ``ACTPACK_TB_SEED``,
``ACTPACK_TB_BLOCKS`` (random blocks per test), ``ACTPACK_TB_ORDER`` (the ``order`` the top was
built with: the coefficient blocks, the DCT's output or the IDCT's input, are reordered the same
way, ``dct.ORDERS``).

Each stimulus runs with the idle inserter (source) and the backpressure inserter (sink) each on
and off. Every output row is compared bit for bit; without inserters the testbench also checks
throughput (one row per cycle, 8 cycles per block, no bubble anywhere) and latency.
"""

import os
import zlib

import cocotb
import numpy as np

from actpack.codec import reference

from ..hw.dct import DCT2D, IDCT2D, ORDERS, CoefRow, PixelRow
from . import stimulus
from .stream import StreamTB, random_pauses

TRANSFORM = os.environ.get("ACTPACK_TB_TRANSFORM", "dct")
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
BLOCKS = int(os.environ.get("ACTPACK_TB_BLOCKS", "48"))
ORDER_NAME = os.environ.get("ACTPACK_TB_ORDER", "raster")
ORDER = list(ORDERS[ORDER_NAME])

DUT_CLASS = {"dct": DCT2D, "idct": IDCT2D}[TRANSFORM]
LATENCY = DUT_CLASS(order=ORDER_NAME).LATENCY
MODEL = {"dct": reference.dct2, "idct": reference.idct2}[TRANSFORM]
LAYOUT_IN, LAYOUT_OUT = {"dct": (PixelRow, CoefRow), "idct": (CoefRow, PixelRow)}[TRANSFORM]


def _blocks(name: str, rng) -> np.ndarray:
    if TRANSFORM == "dct":
        if name == "random":  # the full int8 range, -128 included
            return rng.integers(-128, 128, size=(BLOCKS, 8, 8))
        if name == "real":
            return np.concatenate([stimulus.relu_smooth(rng, 16), stimulus.digits(rng, 16)])
        if name == "edge":  # all zero, saturated, one-hot, worst-case signs
            return np.concatenate([
                np.zeros((2, 8, 8), np.int64), np.full((1, 8, 8), 127), np.full((1, 8, 8), -127),
                np.full((1, 8, 8), -128), np.eye(8, dtype=np.int64)[None] * 127,
                stimulus.pixel_worst_case(127, -127), stimulus.pixel_worst_case(-127, 127),
                stimulus.pixel_worst_case(127, -128), stimulus.pixel_worst_case(-128, 127),
            ])
        if name == "single":
            return rng.integers(-127, 128, size=(1, 8, 8))
    else:
        if name == "random":  # the full 12-bit range, -2048 included
            return rng.integers(-2048, 2048, size=(BLOCKS, 8, 8))
        if name == "real":
            return np.concatenate([stimulus.decoded_coefficients(rng, 24),
                                   stimulus.sparse_coefficients(rng, 16)])
        if name == "edge":
            return np.concatenate([
                np.zeros((2, 8, 8), np.int64), np.full((1, 8, 8), 2047),
                np.full((1, 8, 8), -2047), np.full((1, 8, 8), -2048),
                stimulus.coef_worst_case(2047, -2047), stimulus.coef_worst_case(-2047, 2047),
                stimulus.coef_worst_case(2047, -2048), stimulus.coef_worst_case(-2048, 2047),
            ])
        if name == "single":
            return rng.integers(-2047, 2048, size=(1, 8, 8))
    raise ValueError(name)


@cocotb.test()
@cocotb.parametrize(
    data=["random", "real", "edge", "single"],
    idle=[False, True],
    backpressure=[False, True],
)
async def run_test(dut, data, idle, backpressure):
    # One generator per test case, independent of test order.
    rng = np.random.default_rng([SEED, zlib.crc32(f"{data}{idle}{backpressure}".encode())])
    blocks = _blocks(data, rng)
    expected = MODEL(blocks)

    def ordered(b):
        return b.reshape(-1, 64)[:, ORDER].reshape(-1, 8, 8)

    if TRANSFORM == "dct":
        expected = ordered(expected)
    else:
        blocks = ordered(blocks)
    rows = len(blocks) * 8

    tb = StreamTB(dut)
    src = tb.source("i", LAYOUT_IN, idle=random_pauses(rng, 0.3) if idle else None)
    snk = tb.sink("o", LAYOUT_OUT, backpressure=random_pauses(rng, 0.3) if backpressure else None)
    src.send(row.tolist() for block in blocks for row in block)
    await tb.reset()

    got = np.array(await snk.recv(rows, timeout_cycles=8 * rows + 200)).reshape(-1, 8, 8)
    bad = np.flatnonzero((got != expected).any(axis=(1, 2)))
    assert bad.size == 0, (
        f"{bad.size} of {len(blocks)} blocks differ; first {bad[0]}:\n"
        f"input\n{blocks[bad[0]]}\nexpected\n{expected[bad[0]]}\ngot\n{got[bad[0]]}"
    )

    if not idle and not backpressure:
        ins, outs = np.array(src.transfers), np.array(snk.transfers)
        assert len(ins) == len(outs) == rows
        # one row per cycle in and out: 8 cycles per block, no bubble, also across blocks
        stalls = np.flatnonzero(np.diff(ins) != 1)
        bubbles = np.flatnonzero(np.diff(outs) != 1)
        assert stalls.size == 0, f"input stalled after rows {stalls[:10]}"
        assert bubbles.size == 0, f"output bubble after rows {bubbles[:10]}"
        latency = set((outs - ins).tolist())
        assert latency == {LATENCY}, f"latency {latency}, documented {LATENCY}"
        dut._log.info("%s: %d blocks in %d cycles (%.2f cycles/block), latency %d cycles",
                      TRANSFORM, len(blocks), outs[-1] - outs[0] + 1,
                      (outs[-1] - outs[0] + 1) / len(blocks), LATENCY)

    await tb.finish(drain_cycles=2 * LATENCY + 16)
