"""LorenzoPredictor / LorenzoReconstructor: port and accumulator widths from the spec, and the
Verilator run of sim/test_lorenzo.py."""

import numpy as np

from actpack.codec import reference, spec
from actpack.hw.lorenzo import ACC, COL, DIFF, QROW
from actpack.hw.quant import LEVEL
from actpack.sim.build import build
from actpack.sim.rows import lorenzo_stages


def _bounds(shape):
    return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1


def test_widths_hold_every_port_value():
    """The predictor's output holds d of any q in +-2**15 (the checkerboard reaches 2**17);
    the reconstructor's accumulators hold the column and prefix sums of any int16 residuals
    (constant extremes reach both ends), 22 bits as format 6.4 says."""
    sat = spec.EB_Q_SAT
    assert _bounds(QROW.elem_shape)[0] <= -sat and _bounds(QROW.elem_shape)[1] >= sat
    checker = np.where((np.arange(8)[:, None] + np.arange(8)) % 2 == 0, sat, -sat)
    d = reference.lorenzo(np.stack([checker, -checker]))
    lo, hi = _bounds(DIFF)
    assert lo <= d.min() and d.max() <= hi and np.abs(d).max() == 4 * sat
    lo, hi = _bounds(LEVEL)
    for value in (lo, hi):
        block = np.full((1, 8, 8), value)
        cols, q = np.cumsum(block, axis=1), reference.unlorenzo(block)
        assert _bounds(COL)[0] <= cols.min() and cols.max() <= _bounds(COL)[1]
        assert _bounds(ACC)[0] <= q.min() and q.max() <= _bounds(ACC)[1]
    assert ACC.width == 22 and ACC.signed


def test_verilator(verilator, seed):
    """Bit-exact vs reference.lorenzo / unlorenzo on random, real, edge and single blocks,
    inserters crossed; one row per cycle and the latency (sim/test_lorenzo.py)."""
    sim = build(lorenzo_stages, name="lorenzo")
    sim.run("actpack.sim.test_lorenzo", seed=seed, env={"ACTPACK_TB_SEED": str(seed)})
