"""cocotb testbench of ``LorenzoPredictor`` and ``LorenzoReconstructor`` (top
``rows.lorenzo_stages``) against ``reference.lorenzo`` / ``reference.unlorenzo``.

Run through ``actpack.sim.build`` (see tests/hw/test_hw_lorenzo.py). Environment:
``ACTPACK_TB_SEED``, ``ACTPACK_TB_BLOCKS`` (random blocks per test).

Stimulus: random values over the whole port range (extremes included), the SFPR values of real
activations at eb scales, saturated blocks, smooth ramps, and a single block; idle and
backpressure inserters each on and off. Every output row is compared; without inserters the
test also checks one row per cycle (no bubble between blocks) and the latency.
"""

import os
import zlib

import cocotb
import numpy as np

from actpack.codec import reference, spec

from ..hw.lorenzo import QROW, AccRow, DiffRow, LorenzoPredictor, LorenzoReconstructor
from ..hw.quant import LEVEL, LevelRow
from . import rows, stimulus
from .stream import StreamTB, random_pauses

SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
BLOCKS = int(os.environ.get("ACTPACK_TB_BLOCKS", "40"))
SAT = spec.EB_Q_SAT


def _q_blocks(name: str, rng) -> np.ndarray:
    """eb SFPR values (|q| <= 2**15) as the predictor gets them."""
    if name == "random":
        return rng.integers(-SAT, SAT + 1, (BLOCKS, 8, 8))
    if name == "real":  # digits and relu fields at eb scales
        x = np.concatenate([stimulus.digits(rng, 8), stimulus.relu_smooth(rng, 8)]) / 30.0
        x = x.astype(np.float32)
        eb = float(rng.choice([1e-3, 0.02]))
        scale = spec.eb_scale(eb, float(np.abs(x).max()))
        return reference.sfpr(x, np.float64(scale.value), SAT)
    if name == "edge":  # saturated, alternating extremes (largest |d|), ramps, zeros
        checker = np.where((np.arange(8)[:, None] + np.arange(8)) % 2 == 0, SAT, -SAT)
        ramp = (np.arange(8)[:, None] * 1000 - np.arange(8) * 777)
        return np.stack([np.zeros((8, 8), np.int64), np.full((8, 8), SAT),
                         np.full((8, 8), -SAT), checker, -checker, ramp, -ramp])
    if name == "single":
        return rng.integers(-SAT, SAT + 1, (1, 8, 8))
    raise ValueError(name)


def _d_blocks(name: str, rng) -> np.ndarray:
    """Residuals as the entropy decoder delivers them (the LevelRow port: any int16)."""
    lo, hi = -(1 << (LEVEL.width - 1)), (1 << (LEVEL.width - 1)) - 1
    if name == "random":
        return rng.integers(lo, hi + 1, (BLOCKS, 8, 8))
    if name == "real":
        return reference.lorenzo(_q_blocks("real", rng))
    if name == "edge":  # the accumulators' extremes (q = -2**21 and 64 * hi), zeros, +-1
        return np.stack([np.full((8, 8), lo), np.full((8, 8), hi), np.zeros((8, 8), np.int64),
                         np.ones((8, 8), np.int64), -np.ones((8, 8), np.int64),
                         reference.lorenzo(_q_blocks("edge", rng)[3:4])[0] // 8])
    if name == "single":
        return rng.integers(lo, hi + 1, (1, 8, 8))
    raise ValueError(name)


UNITS = {
    "pred": (LorenzoPredictor, QROW, DiffRow, _q_blocks, reference.lorenzo),
    "recon": (LorenzoReconstructor, LevelRow, AccRow, _d_blocks, reference.unlorenzo),
}


@cocotb.test()
@cocotb.parametrize(
    unit=list(UNITS),
    data=["random", "real", "edge", "single"],
    idle=[False, True],
    backpressure=[False, True],
)
async def run_test(dut, unit, data, idle, backpressure):
    rng = np.random.default_rng([SEED, zlib.crc32(f"{unit}{data}{idle}{backpressure}".encode())])
    cls, layout_in, layout_out, blocks_of, model = UNITS[unit]
    blocks = blocks_of(data, rng)
    expected = model(blocks)
    n = len(blocks) * 8

    tb = StreamTB(dut)
    src = tb.source(f"{unit}_i", layout_in, idle=random_pauses(rng, 0.3) if idle else None)
    snk = tb.sink(f"{unit}_o", layout_out,
                  backpressure=random_pauses(rng, 0.3) if backpressure else None)
    await tb.reset()
    src.send(r.tolist() for block in blocks for r in block)
    got = np.array(await snk.recv(n, timeout_cycles=4 * n + 100)).reshape(-1, 8, 8)
    bad = np.flatnonzero((got != expected).any(axis=(1, 2)))
    assert bad.size == 0, (f"{unit}: {bad.size} of {len(blocks)} blocks differ; first {bad[0]}:"
                           f" input {blocks[bad[0]].tolist()} expected "
                           f"{expected[bad[0]].tolist()} got {got[bad[0]].tolist()}")
    if not idle and not backpressure:
        rows.check_full_rate(src, snk, cls.LATENCY)
    await tb.finish(drain_cycles=16)
