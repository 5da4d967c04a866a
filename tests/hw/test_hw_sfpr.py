# amaranth: UnusedElaboratable=no
"""FloatToFixed / FixedToFloat / BoundCheck / MaskEncoder / MaskDecoder: the integer models
against the reference, parameters, and the Verilator runs of sim/test_sfpr.py.

The first line silences Amaranth's UnusedElaboratable for the components the parameter tests
construct and never elaborate.
"""

import numpy as np
import pytest

from actpack.codec import reference, spec
from actpack.codec.frame import Header
from actpack.codec.spec import DType, Mode
from actpack.hw.maskpack import mask_model, one_bits
from actpack.hw.sfpr import (
    BOUND_WINDOW,
    FixedToFloat,
    FloatToFixed,
    bound_check_model,
    fixed_to_float_model,
    float_format,
    sfpr_model,
)
from actpack.sim.build import build
from actpack.sim.rows import (
    bound_reference,
    eb_scales,
    edge_bits,
    near_bound,
    random_bits,
    value_stages,
)

LIMITS = (spec.SFPR_MAX, spec.EB_Q_SAT)


def test_float_formats():
    assert [(f.exp_bits, f.frac_bits, f.bias) for f in map(float_format, DType)] == [
        (8, 23, 127), (5, 10, 15), (8, 7, 127)]


@pytest.mark.parametrize("dtype", list(DType))
def test_sfpr_model_matches_reference(dtype):
    """Random bit patterns over every exponent (subnormals, ±0, NaN, ±inf included) and the
    edge values, with random scales of every exponent that moves values across the rounding
    and saturation points, for both limits."""
    rng = np.random.default_rng([1, dtype])
    bits = np.concatenate([random_bits(rng, dtype, 100_000), edge_bits(dtype)])
    x = reference.to_float32(bits, dtype)
    for limit in LIMITS:
        for _ in range(24):
            m, e = int(rng.integers(1 << 15, 1 << 16)), int(rng.integers(-170, 160))
            scale = spec.Scale(m, e)
            q, nonfinite = sfpr_model(bits, dtype, m, e, limit)
            expected = reference.sfpr(x, np.float64(scale.value), limit)
            assert np.array_equal(q, expected), (limit, m, e)
            assert np.array_equal(nonfinite, ~np.isfinite(x))


@pytest.mark.parametrize("dtype", list(DType))
def test_sfpr_model_on_real_scales(dtype):
    """The scales the codec computes (sfpr at several ranges, eb at several bounds) on values
    near them: every rounding tie and the saturation edge."""
    rng = np.random.default_rng([2, dtype])
    x = (rng.standard_normal(20_000) * rng.choice([1e-3, 1, 30], 20_000)).astype(np.float32)
    bits = reference.from_float32(x, dtype)
    x = reference.to_float32(bits, dtype)
    amax = float(np.abs(x).max())
    cases = [(s, spec.SFPR_MAX) for s in spec.sfpr_scales(np.array([amax]), 4.5)]
    cases += [(spec.eb_scale(eb, amax, dtype), spec.EB_Q_SAT) for eb in (1e-3, 0.02, 0.5)]
    for scale, limit in cases:
        # values exactly at the rounding ties (k + 1/2) / s where representable
        ties = reference.from_float32((np.arange(-300, 300) + 0.5) / scale.value, dtype)
        b = np.concatenate([bits, ties])
        q, _ = sfpr_model(b, dtype, scale.mantissa, scale.exponent, limit)
        xs = reference.to_float32(b, dtype)
        assert np.array_equal(q, reference.sfpr(xs, np.float64(scale.value), limit))


@pytest.mark.parametrize("dtype", list(DType))
def test_fixed_to_float_model_matches_reference(dtype):
    """Every int22 magnitude class times inverse scales of every exponent (subnormal r
    included) and both signs: float32 rounding, overflow clamp, dtype rounding."""
    rng = np.random.default_rng([3, dtype])
    v = np.concatenate([rng.integers(-(1 << 21), 1 << 21, 30_000),
                        rng.integers(-300, 300, 2_000), [0, 1, -1, (1 << 21) - 1, -(1 << 21)]])
    for _ in range(60):
        r_bits = int(rng.integers(0, 0x7F800000)) | int(rng.integers(0, 2)) << 31
        r = np.array(r_bits, dtype=np.uint32).view(np.float32)
        expected = reference.from_float32(reference.dequantize_values(v, r), dtype)
        assert np.array_equal(fixed_to_float_model(v, r_bits, dtype), expected), hex(r_bits)


@pytest.mark.parametrize("dtype", list(DType))
def test_fixed_to_float_model_on_header_inverses(dtype):
    """The inverses frames carry (every header exponent with a finite r)."""
    rng = np.random.default_rng([4, dtype])
    v = rng.integers(-(1 << 21), 1 << 21, 4_000)
    for e in range(-140, 401, 3):
        inv = spec.Scale(int(rng.integers(1 << 15, 1 << 16)), e).inverse
        r_bits = int(np.float32(inv).view(np.uint32))
        expected = reference.from_float32(reference.dequantize_values(v, inv), dtype)
        assert np.array_equal(fixed_to_float_model(v, r_bits, dtype), expected), e


@pytest.mark.parametrize("kwargs, name", [
    ({"dtype": "float64", "limit": 127}, "dtype"),
    ({"dtype": DType.FLOAT32, "limit": 128}, "limit"),
    ({"dtype": DType.FLOAT32, "limit": None}, "limit"),
])
def test_float_to_fixed_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FloatToFixed(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"dtype": 2}, "dtype"),
    ({"dtype": "float16", "width": 1}, "width"),
    ({"dtype": "float16", "width": 26}, "width"),
    ({"dtype": "float16", "width": 8.0}, "width"),
])
def test_fixed_to_float_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FixedToFloat(**kwargs)


@pytest.mark.parametrize("dtype", [d.label for d in DType])
def test_verilator(verilator, seed, dtype):
    """FloatToFixed (both limits), FixedToFloat (widths 8, 22), BoundCheck, MaskEncoder and
    MaskDecoder of one dtype, bit-exact vs the reference on random/edge/real rows, inserters
    crossed, row per cycle and latency (sim/test_sfpr.py)."""
    sim = build(value_stages, name=f"values_{dtype}", params={"dtype": dtype})
    sim.run("actpack.sim.test_sfpr", seed=seed,
            env={"ACTPACK_TB_DTYPE": dtype, "ACTPACK_TB_SEED": str(seed)})


def _bound_inputs(rng, dtype, eb, k):
    """64 values of each kind (activations, midpoints between levels, random bits) and a
    scale of ``rows.eb_scales``."""
    x = (rng.standard_normal(64) * rng.choice([eb, 30 * eb, 3e4 * eb])).astype(np.float32)
    amax = float(np.abs(x).max())
    scale = eb_scales(eb, amax, dtype)[k % 3]
    bits = np.concatenate([reference.from_float32(x, dtype), near_bound(rng, dtype, scale, 64),
                           random_bits(rng, dtype, 64)])
    return bits, scale


@pytest.mark.parametrize("dtype", list(DType))
def test_bound_model_matches_reference(dtype):
    """The integer bound check against the reference's binary64 test, value by value, over
    error bounds across 1e-30..1e30, the codec's scale and the two scales whose steps
    straddle 2 eb, values at the midpoints (largest errors), activations and random bits; and
    block by block against ``reference._symbols`` (the reference's RAW decision)."""
    rng = np.random.default_rng([5, dtype])
    straddled = 0
    for k in range(300):
        eb = float(rng.choice([1e-3, 0.02, 0.05, 1 / 3])) if k % 2 else float(
            np.exp(rng.uniform(np.log(1e-30), np.log(1e30))))
        bits, scale = _bound_inputs(rng, dtype, eb, k)
        x = reference.to_float32(bits, dtype)
        q = reference.sfpr(x, np.float64(scale.value), spec.EB_Q_SAT)
        r_bits = int(np.float32(scale.inverse).view(np.uint32))
        got = bound_check_model(bits, q, r_bits, eb, dtype)
        expected = bound_reference(bits, q, scale.inverse, eb, dtype)
        assert np.array_equal(got, expected), (eb, scale, np.flatnonzero(got != expected)[:4])
        straddled += int(expected[64:128].any() and not expected[64:128].all())
        header = Header(Mode.EB, dtype, (x.size,), eb, scales=(scale,))
        blocks = x.reshape(-1, 8, 8)
        _, force_raw = reference._symbols(blocks, np.zeros(len(blocks), np.int64), header)
        finite = np.isfinite(blocks).all(axis=(1, 2))
        assert np.array_equal(force_raw & finite, ~got.reshape(-1, 64).all(axis=1) & finite)
    assert straddled > 50  # the midpoint values really sit on both sides of the bound


def test_bound_window_fits_binary64():
    """Aligned significands stay below 2**52, so their sum or difference is exact in 53 bits."""
    assert float_format(DType.FLOAT32).sig_bits + BOUND_WINDOW <= 52


@pytest.mark.parametrize("dtype", list(DType))
def test_mask_model_matches_reference(dtype):
    """``x > 0`` from raw bits: every 16-bit pattern (float16, bfloat16) or random float32
    patterns plus the edge values; decoded 1.0 as the reference writes it."""
    rng = np.random.default_rng([6, dtype])
    if dtype.itemsize == 2:
        bits = np.arange(1 << 16, dtype=np.uint16)
    else:
        bits = np.concatenate([random_bits(rng, dtype, 200_000), edge_bits(dtype)])
    expected = reference.to_float32(bits, dtype) > 0
    assert np.array_equal(mask_model(bits, dtype), expected)
    assert one_bits(dtype) == int(reference.from_float32(np.float32(1.0), dtype))


@pytest.mark.parametrize("dtype", [DType.FLOAT16, DType.BFLOAT16])
def test_sfpr_model_exhaustive_16_bit(dtype):
    """Every 16-bit pattern under scales that put each exponent at the rounding point."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = reference.to_float32(bits, dtype)
    for e in range(-160, 40, 7):
        for limit in LIMITS:
            q, _ = sfpr_model(bits, dtype, 40961, e, limit)
            assert np.array_equal(q, reference.sfpr(x, np.float64(spec.Scale(40961, e).value),
                                                     limit)), (e, limit)
