"""DCT2D / IDCT2D: widths from the worst case, and bit-exact Verilator runs of the testbench."""

import numpy as np
import pytest

from actpack.codec import reference, spec
from actpack.codec.tables import DCT_MATRIX
from actpack.hw.dct import COEF, DCT2D, IDCT2D, PIXEL
from actpack.sim import stimulus
from actpack.sim.build import build


def test_shapes_come_from_the_spec():
    assert PIXEL.signed and PIXEL.width == 8
    assert COEF.signed and COEF.width == 12
    assert (1 << (COEF.width - 1)) - 1 == spec.DCT_COEF_MAX
    assert DCT2D.LATENCY == IDCT2D.LATENCY == 11


def _shape_bounds(shape):
    return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1


@pytest.mark.parametrize("cls", [DCT2D, IDCT2D])
def test_edge_stimulus_reaches_the_intermediate_widths(cls):
    """The worst-case sign patterns the testbench sends drive the row-pass results to both ends
    of the range the gateware sized its registers for: the edge test exercises every bit."""
    if cls is DCT2D:
        blocks = np.concatenate([stimulus.pixel_worst_case(127, -128),
                                 stimulus.pixel_worst_case(-128, 127)])
        t = (blocks @ DCT_MATRIX.T + (1 << (spec.DCT_SHIFT_1 - 1))) >> spec.DCT_SHIFT_1
    else:
        blocks = np.concatenate([stimulus.coef_worst_case(2047, -2048),
                                 stimulus.coef_worst_case(-2048, 2047)])
        t = (blocks @ DCT_MATRIX + (1 << (spec.IDCT_SHIFT_1 - 1))) >> spec.IDCT_SHIFT_1
    lo, hi = _shape_bounds(cls.intermediate_shapes()["t"])
    assert lo <= t.min() and t.max() <= hi
    # the register is as narrow as it can be: one bit less would not hold the extremes
    assert t.min() < lo // 2 or t.max() > hi // 2
    out = reference.dct2(blocks) if cls is DCT2D else reference.idct2(blocks)
    if cls is DCT2D:
        assert np.abs(out).max() <= spec.DCT_COEF_MAX
    else:
        assert out.min() == -spec.SFPR_MAX and out.max() == spec.SFPR_MAX


@pytest.mark.parametrize("transform, cls", [("dct", DCT2D), ("idct", IDCT2D)])
def test_verilator(verilator, seed, transform, cls):
    """Bit-exact vs the reference on random, real-ish and edge blocks, idle and backpressure
    inserters crossed; 8 cycles per block and the documented latency (sim/test_dct.py)."""
    sim = build(cls, name=f"{transform}2d")
    sim.run("actpack.sim.test_dct", seed=seed,
            env={"ACTPACK_TB_TRANSFORM": transform, "ACTPACK_TB_SEED": str(seed)})
