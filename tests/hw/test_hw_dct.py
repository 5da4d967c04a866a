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
    # two transposes (rows in, columns out; then back), one adder level a stage: 7 levels a
    # pass, the rounding increment, and for the inverse the clamp (formula in _latency)
    assert (DCT2D.LATENCY, IDCT2D.LATENCY) == (38, 39)


@pytest.mark.parametrize("matrix", [DCT_MATRIX, DCT_MATRIX.T], ids=["K", "KT"])
def test_shift_add_network_is_the_matrix(matrix):
    """The pass network is exact: its linear forms are the matrix (checked on the unit vectors
    at elaboration; here also on random and extreme integer vectors), built from two-input
    adders only, one level a stage."""
    from actpack.hw.dct import _pass_network
    net, outs = _pass_network(matrix)
    assert (net.matrix(outs) == matrix.astype(object)).all()
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.integers(-(1 << 20), 1 << 20, size=(200, 8)),
                         np.array([[-2048, 2047] * 4, [2047] * 8, [-2048] * 8])])
    for x in xs.tolist():
        assert [net.value(t, x) for t in outs] == (matrix @ np.array(x)).tolist()
    adders = len(net.forms) - 8
    assert adders <= 72 and max(net.level) <= 7


@pytest.mark.parametrize("cls", [DCT2D, IDCT2D])
def test_no_multipliers(cls):
    """Constant products are shift-add networks: the netlist has no multiply cell."""
    from amaranth.back import rtlil
    assert "$mul" not in rtlil.convert(cls(), name="top", emit_src=False)


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


@pytest.mark.parametrize("transform, cls, order", [
    ("dct", DCT2D, "raster"), ("dct", DCT2D, "zigzag"), ("idct", IDCT2D, "raster"),
    ("idct", IDCT2D, "zigzag")])
def test_verilator(verilator, seed, transform, cls, order):
    """Bit-exact vs the reference on random, real-ish and edge blocks, idle and backpressure
    inserters crossed; 8 cycles per block and the documented latency (sim/test_dct.py); the
    zigzag orders the engines build (coefficients out of the DCT, into the IDCT)."""
    sim = build(cls, name=f"{transform}2d_{order}", params={"order": order})
    sim.run("actpack.sim.test_dct", seed=seed,
            env={"ACTPACK_TB_TRANSFORM": transform, "ACTPACK_TB_SEED": str(seed),
                 "ACTPACK_TB_ORDER": order})


def test_bad_order():
    with pytest.raises(ValueError, match="order"):
        DCT2D(order="columns")
    assert IDCT2D(order="zigzag").LATENCY == IDCT2D.LATENCY + 10  # the input reorder buffer
