"""cocotb testbench of the value stages of one dtype (top ``rows.value_stages``):
``FloatToFixed`` at both limits, ``FixedToFloat`` at widths 8 and 22, ``BoundCheck``,
``MaskEncoder`` and ``MaskDecoder``, each against the reference functions (``reference.sfpr``,
``dequantize_values`` + ``from_float32``, the bound test of ``reference._symbols``, ``x > 0``).

Run through ``actpack.sim.build`` (see tests/hw/test_hw_sfpr.py). Environment:
``ACTPACK_TB_DTYPE`` (``float32`` | ``float16`` | ``bfloat16``: the top's dtype),
``ACTPACK_TB_SEED``, ``ACTPACK_TB_ROWS`` (random rows per test).

Every unit streams random bit patterns (all exponents, subnormals, ±0, NaN, ±inf), the edge
values, saturating values and activation-like data with the scales the codec computes, with the
idle and backpressure inserters each on and off; every output is compared bit for bit, and
without inserters the test also checks one row per cycle and the documented latency.
"""

import os
import zlib

import cocotb
import numpy as np

from actpack.codec import reference, spec
from actpack.codec.spec import DType

from ..hw.maskpack import MaskDecoder, MaskEncoder, MaskRow
from ..hw.sfpr import (
    BoundCheck,
    BoundOut,
    FloatToFixed,
    bound_in_layout,
    fixed_in_layout,
    fixed_to_float_latency,
    raw_row,
    sfpr_in_layout,
    sfpr_out_layout,
)
from . import rows, stimulus
from .stream import StreamTB, random_pauses

DTYPE = DType[os.environ.get("ACTPACK_TB_DTYPE", "float32").upper()]
SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
ROWS = int(os.environ.get("ACTPACK_TB_ROWS", "256"))


def _rows_of(bits: np.ndarray) -> list[list[int]]:
    return bits.astype(np.int64).reshape(-1, 8).tolist()


def _activations(rng, n: int) -> np.ndarray:
    """Activation-like values, as bits of the dtype (``n`` a multiple of 8): up to half real images
    (scikit-learn's digits, 0..1), half ReLU'd noise with signed outliers, each at a random
    magnitude."""
    images = stimulus.digits(rng, n // 128).reshape(-1) / spec.SFPR_MAX
    x = np.maximum(rng.standard_normal(n - images.size) + rng.standard_normal() * 0.5, 0)
    x = np.where(rng.random(x.size) < 0.3, rng.standard_normal(x.size), x)
    x = np.concatenate([images, x]) * rng.choice([1e-4, 1.0, 50.0])
    return reference.from_float32(x.astype(np.float32), DTYPE)


def _scales(rng, bits: np.ndarray, limit: int):
    """The scales the codec computes for these values, one per row: sfpr scales at range 4.5
    and 1/16, eb scales at several bounds."""
    x = reference.to_float32(bits, DTYPE)
    finite = np.isfinite(x)
    amax = float(np.abs(x[finite]).max()) if finite.any() else 0.0
    if limit == spec.SFPR_MAX:
        options = [s for r in (4.5, spec.RANGE_MIN_LIMIT, spec.RANGE_MAX_LIMIT)
                   for s in spec.sfpr_scales(np.array([amax, amax / 64]), r)]
    else:
        options = [spec.eb_scale(eb, amax, DTYPE) for eb in (1e-4, 0.02, 0.5, amax / 1e4 + 1e-30)]
    return [options[k] for k in rng.integers(0, len(options), len(bits) // 8)]


def _scale_near(rng, row: np.ndarray):
    """A random scale that maps one of the row's values to about 2**-2 .. 2**17 (so rows of
    random bit patterns get rounded, saturated and zero results alike); any exponent for a
    fifth of the rows."""
    with np.errstate(invalid="ignore"):  # signalling NaNs of float16
        x = reference.to_float32(row, DTYPE).astype(np.float64)
    m = int(rng.integers(1 << 15, 1 << 16))
    finite = x[np.isfinite(x) & (x != 0)]
    if not finite.size or rng.random() < 0.2:
        return spec.Scale(m, int(rng.integers(-170, 160)))
    exp = np.frexp(rng.choice(finite))[1]  # |x| in [2**(exp-1), 2**exp)
    return spec.Scale(m, int(-exp - 16 + rng.integers(-2, 18)))


def f2x_case(rng, limit: int):
    """(input rows, expected output rows) for ``FloatToFixed(limit)``."""
    n = 8 * ROWS
    parts = [rows.random_bits(rng, DTYPE, n), rows.edge_bits(DTYPE)]
    scales = [_scale_near(rng, row) for row in np.concatenate(parts).reshape(-1, 8)]
    real = _activations(rng, n // 2)
    saturating = real.copy()  # the same values with scales that push them past the limit
    parts += [real, saturating]
    scales += _scales(rng, real, limit)
    scales += [spec.Scale(s.mantissa, s.exponent + 6) for s in _scales(rng, saturating, limit)]
    bits = np.concatenate(parts)
    value = np.repeat([s.value for s in scales], 8)
    x = reference.to_float32(bits, DTYPE)
    q = reference.sfpr(x, value, limit).reshape(-1, 8)
    nonfinite = (~np.isfinite(x)).reshape(-1, 8).any(axis=1)
    ins = [{"x": r, "scale": {"m": s.mantissa, "e": s.exponent}}
           for r, s in zip(_rows_of(bits), scales, strict=True)]
    outs = [{"q": qr, "nonfinite": int(f)} for qr, f in zip(q.tolist(), nonfinite, strict=True)]
    return ins, outs


def _inverse_bits(rng, count: int) -> list[int]:
    """Inverse scales: those of header scales of every exponent (finite), and arbitrary float32
    bits of both signs (subnormal r included)."""
    out = []
    while len(out) < count:
        if rng.random() < 0.5:
            inv = spec.Scale(int(rng.integers(1 << 15, 1 << 16)), int(rng.integers(-140, 401)))
            out.append(int(np.float32(inv.inverse).view(np.uint32)))
        else:
            out.append(int(rng.integers(0, 0x7F800000)) | int(rng.integers(0, 2)) << 31)
    return out


def x2f_case(rng, width: int):
    n = 8 * ROWS
    lim = 1 << (width - 1)
    small = min(lim, spec.SFPR_MAX + 1)
    v = np.concatenate([
        rng.integers(-lim, lim, n // 2),
        rng.integers(-small, small, n // 4),  # dct/sfpr8-sized values
        rng.integers(-min(lim, spec.EB_Q_SAT), min(lim, spec.EB_Q_SAT), n // 4),
        np.tile([0, 1, -1, lim - 1, -lim, spec.SFPR_MAX, -spec.SFPR_MAX, small - 1], 4),
    ]).reshape(-1, 8)
    r = _inverse_bits(rng, len(v))
    r[-4:] = [int(np.float32(s.inverse).view(np.uint32)) for s in _scales(rng, _activations(
        rng, 32), spec.EB_Q_SAT)]  # eb inverses with the width's extremes
    expected = [reference.from_float32(reference.dequantize_values(
        row, np.array(rb, dtype=np.uint32).view(np.float32)), DTYPE).astype(np.int64).tolist()
        for row, rb in zip(v, r, strict=True)]
    ins = [{"v": row, "r": rb} for row, rb in zip(v.tolist(), r, strict=True)]
    return ins, expected


def bound_case(rng):
    ins, outs = [], []
    for k in range(max(ROWS // 16, 4)):
        eb = float(rng.choice([1e-3, 0.02, 0.05, 1 / 3, np.exp(rng.uniform(-60, 60))]))
        real = _activations(rng, 128)
        x = reference.to_float32(real, DTYPE)
        amax = float(np.abs(x).max())
        scale = rows.eb_scales(eb, amax, DTYPE)[k % 3]
        bits = np.concatenate([real, rows.near_bound(rng, DTYPE, scale, 64)])
        if k % 4 == 0:
            bits[:8] = rows.random_bits(rng, DTYPE, 8)  # NaN/inf/huge values in one row
        q = reference.sfpr(reference.to_float32(bits, DTYPE), np.float64(scale.value),
                           spec.EB_Q_SAT)
        lanes = rows.bound_reference(bits, q, scale.inverse, eb, DTYPE).reshape(-1, 8)
        r_bits = int(np.float32(scale.inverse).view(np.uint32))
        eb_bits = int(np.float64(eb).view(np.uint64))
        ins += [{"x": xr, "q": qr, "r": r_bits, "eb": eb_bits}
                for xr, qr in zip(_rows_of(bits), q.reshape(-1, 8).tolist(), strict=True)]
        outs += [{"ok": int(lane.all()), "lanes": lane.astype(int).tolist()} for lane in lanes]
    return ins, outs


def menc_case(rng):
    bits = np.concatenate([rows.random_bits(rng, DTYPE, 8 * ROWS), rows.edge_bits(DTYPE),
                           _activations(rng, 64)])
    expected = (reference.to_float32(bits, DTYPE) > 0).astype(np.int64)
    return _rows_of(bits), expected.reshape(-1, 8).tolist()


def mdec_case(rng):
    symbols = rng.integers(0, 2, (ROWS, 8))
    symbols[:2] = [[0] * 8, [1] * 8]
    expected = reference.from_float32(symbols.astype(np.float32), DTYPE).astype(np.int64)
    return symbols.tolist(), expected.tolist()


UNITS = {  # name: (latency, input layout, output layout, case)
    "f2x127": (FloatToFixed.LATENCY, sfpr_in_layout(DTYPE), sfpr_out_layout(spec.SFPR_MAX),
               lambda rng: f2x_case(rng, spec.SFPR_MAX)),
    "f2x32768": (FloatToFixed.LATENCY, sfpr_in_layout(DTYPE), sfpr_out_layout(spec.EB_Q_SAT),
                 lambda rng: f2x_case(rng, spec.EB_Q_SAT)),
    **{f"x2f{w}": (fixed_to_float_latency(w), fixed_in_layout(w), raw_row(DTYPE),
                   lambda rng, w=w: x2f_case(rng, w)) for w in rows.X2F_WIDTHS},
    "bound": (BoundCheck.LATENCY, bound_in_layout(DTYPE), BoundOut, bound_case),
    "menc": (MaskEncoder.LATENCY, raw_row(DTYPE), MaskRow, menc_case),
    "mdec": (MaskDecoder.LATENCY, MaskRow, raw_row(DTYPE), mdec_case),
}


@cocotb.test()
@cocotb.parametrize(
    unit=list(UNITS),
    idle=[False, True],
    backpressure=[False, True],
)
async def run_test(dut, unit, idle, backpressure):
    rng = np.random.default_rng([SEED, zlib.crc32(f"{DTYPE}{unit}{idle}{backpressure}".encode())])
    latency, layout_in, layout_out, case = UNITS[unit]
    ins, expected = case(rng)

    tb = StreamTB(dut)
    src = rows.source(tb, f"{unit}_i", layout_in,
                      idle=random_pauses(rng, 0.3) if idle else None)
    snk = rows.sink(tb, f"{unit}_o", layout_out,
                    backpressure=random_pauses(rng, 0.3) if backpressure else None)
    await tb.reset()
    src.send(ins)
    got = await snk.recv(len(ins), timeout_cycles=4 * len(ins) + 100)
    bad = [k for k, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not bad, (f"{unit} {DTYPE.label}: {len(bad)} of {len(ins)} rows differ; first "
                     f"{bad[0]}: input {ins[bad[0]]} expected {expected[bad[0]]} "
                     f"got {got[bad[0]]}")
    if not idle and not backpressure:
        rows.check_full_rate(src, snk, latency)
    dut._log.info("%s %s: %d rows", unit, DTYPE.label, len(ins))
    await tb.finish(drain_cycles=16)
