"""Float <-> scaled fixed point (SFPR) rows, bit-exact with ``actpack.codec.reference``.

``FloatToFixed`` is the encoder's first integer stage (``reference.sfpr``, docs/format.md 6.1):
raw float bit patterns of any codec dtype and a scale ``m * 2**e`` in, ``SFPR(x, s, L)`` out.
``FixedToFloat`` is the decoder's last stage (``reference.dequantize_values`` then
``reference.from_float32``, format 4 and 6): an integer times the float32 inverse scale ``r``,
rounded to float32, clamped and rounded to the dtype. ``BoundCheck`` is the ``eb`` encoder's
test of what the decoder will output against the error bound (format 6.4), exact in integers.

Next to the gateware sit numpy integer models of the same algorithms (``sfpr_model``,
``fixed_to_float_model``, ``bound_check_model``), written the way the hardware computes
(fields, integer products, shifts); tests/hw/test_hw_sfpr.py checks them against the reference
over millions of values and the cocotb testbench checks the gateware against the reference
directly.

Every block here carries 8 values (one raster row of a block) per transfer and has no state
besides its pipeline, so row and block order do not matter to it.
"""

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.spec import DType

__all__ = [
    "BOUND_WINDOW",
    "SCALE_EXP",
    "SCALE_MANT",
    "BoundCheck",
    "BoundOut",
    "FixedToFloat",
    "FloatFormat",
    "FloatToFixed",
    "ScaleLayout",
    "bound_check_model",
    "bound_in_layout",
    "fixed_in_layout",
    "fixed_to_float_model",
    "float_format",
    "raw_row",
    "sfpr_in_layout",
    "sfpr_model",
    "sfpr_out_layout",
]

N = spec.BLOCK  # values per row

# Ref: docs/format.md 5: s = m * 2**e, m a 16-bit mantissa in [2**15, 2**16).
SCALE_MANT = unsigned(16)
# The exponent as the frame's scale record stores it (int16); valid scales use far less
# (format 5.2: e in [-148, 145]), but any record exponent is applied exactly.
SCALE_EXP = signed(16)
ScaleLayout = data.StructLayout({"m": SCALE_MANT, "e": SCALE_EXP})

_LIMITS = (spec.SFPR_MAX, spec.EB_Q_SAT)  # L for dct/sfpr8 and for eb (format 6)


@dataclass(frozen=True)
class FloatFormat:
    """Bit fields of an IEEE-style binary float: ``width`` bits = sign, ``exp_bits``, ``frac_bits``.

    A finite value is ``(-1)**sign * M * 2**E`` with the integer significand ``M`` (hidden bit
    included for normals) and ``E = max(exp_field, 1) - bias - frac_bits``.
    """

    width: int
    exp_bits: int
    frac_bits: int

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self) -> int:
        """The exponent field of infinities and NaNs."""
        return (1 << self.exp_bits) - 1

    @property
    def sig_bits(self) -> int:
        return self.frac_bits + 1

    @property
    def ulp_min(self) -> int:
        """``E`` of subnormals (and of the smallest normals): log2 of the smallest step."""
        return 1 - self.bias - self.frac_bits


def float_format(dtype: DType) -> FloatFormat:
    """Fields of ``dtype``, from the precision ``spec.half_ulp`` uses (one definition)."""
    precision, emin = spec._PRECISION[dtype]  # (significand bits, smallest normal exponent)
    width = 8 * dtype.itemsize
    frac = precision - 1
    fmt = FloatFormat(width=width, exp_bits=width - 1 - frac, frac_bits=frac)
    assert 1 - fmt.bias == emin, dtype
    return fmt


_F32 = float_format(DType.FLOAT32)
_F16 = float_format(DType.FLOAT16)
_BF16 = float_format(DType.BFLOAT16)
# bfloat16 keeps float32's top 16 bits; rounding adds half of the dropped part minus one (and
# the kept lsb, for ties to even): 0x7FFF, format 4.
_BF16_SHIFT = _F32.frac_bits - _BF16.frac_bits
_BF16_HALF = (1 << (_BF16_SHIFT - 1)) - 1
# float32 exponent field of float16's smallest normal (113), float16's rounding shift of a
# float32 significand in the normal range (13), and a shift that rounds any significand to 0.
_F16_MIN_NORMAL = _F32.bias - _F16.bias + 1
_F16_NORMAL_SHIFT = _F32.frac_bits - _F16.frac_bits
_F16_SHIFT_CAP = _F32.sig_bits + 2


def _dtype(dtype) -> DType:
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        for d in DType:
            if d.label == dtype:
                return d
    raise ValueError(f"dtype: expected a spec.DType or one of "
                     f"{', '.join(repr(d.label) for d in DType)}, not {dtype!r}")


def raw_row(dtype: DType) -> data.ArrayLayout:
    """8 raw bit patterns of ``dtype`` (a raster row of a block, column 0 first)."""
    return data.ArrayLayout(unsigned(8 * dtype.itemsize), N)


def sfpr_in_layout(dtype: DType) -> data.StructLayout:
    """Input of ``FloatToFixed``: a row and the scale of its block's group."""
    return data.StructLayout({"x": raw_row(dtype), "scale": ScaleLayout})


def sfpr_out_layout(limit: int) -> data.StructLayout:
    """Output of ``FloatToFixed``: 8 SFPR values (``|q| <= limit``) and whether any of the 8
    inputs was NaN or infinite (such a value gives 0; its block must be stored RAW)."""
    return data.StructLayout({"q": data.ArrayLayout(range(-limit, limit + 1), N),
                              "nonfinite": unsigned(1)})


def fixed_in_layout(width: int) -> data.StructLayout:
    """Input of ``FixedToFloat``: 8 signed integers and the float32 inverse scale's bits."""
    return data.StructLayout({"v": data.ArrayLayout(signed(width), N),
                              "r": unsigned(_F32.width)})


# ----------------------------------------------------------------------------- integer models


def _fields(bits: np.ndarray, fmt: FloatFormat):
    """(sign, M, E, exp_field) of raw bit patterns as int64 arrays."""
    b = np.asarray(bits).astype(np.int64)
    sign = (b >> (fmt.width - 1)) & 1
    expf = (b >> fmt.frac_bits) & fmt.exp_max
    frac = b & ((1 << fmt.frac_bits) - 1)
    sig = np.where(expf == 0, frac, frac | (1 << fmt.frac_bits))
    exp = np.maximum(expf, 1) - fmt.bias - fmt.frac_bits
    return sign, sig, exp, expf


def sfpr_model(bits, dtype: DType, m: int, e: int, limit: int):
    """``(q, nonfinite)`` of ``SFPR(x, m * 2**e, limit)`` computed as ``FloatToFixed`` does
    (format 6.1, "the same in integers"), elementwise over raw bit patterns ``bits``."""
    fmt = float_format(dtype)
    sign, sig, exp, expf = _fields(bits, fmt)
    nonfinite = expf == fmt.exp_max
    prod = sig * m  # < 2**(sig_bits + 16): exact
    k = exp + e
    sh = np.clip(-k, 0, fmt.sig_bits + 17)  # a shift beyond sig_bits + 16 already gives 0
    # floor(P / 2**sh + 1/2) = (floor(P * 2 / 2**sh) + 1) >> 1, for sh >= 1
    rounded = (((prod << 1) >> sh) + 1) >> 1
    q = np.where(k >= 0, limit, np.minimum(rounded, limit))
    q = np.where(nonfinite | (sig == 0), 0, q)
    return np.where(sign == 1, -q, q), nonfinite


def _rne_shift(value: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """``value / 2**sh`` rounded to nearest, ties to even (``value >= 0``, ``sh >= 0``)."""
    floor = value >> sh
    rem = value - (floor << sh)
    half = np.where(sh > 0, np.left_shift(1, np.maximum(sh - 1, 0)), 0)
    up = (sh > 0) & ((rem > half) | ((rem == half) & (floor & 1 == 1)))
    return floor + up


def _max_bits32(dtype: DType) -> int:
    """float32 bit pattern of the dtype's largest finite value (the decoder's clamp)."""
    return int(np.array(dtype.max_finite, dtype=np.float32).view(np.uint32))


def _f32_product_magnitude(a: np.ndarray, r_bits: int) -> np.ndarray:
    """Bits of ``|float32(a) * r|`` (``a >= 0`` an integer below 2**24, ``r`` finite), the
    float32 multiply rounded to nearest even, with overflow clamped to 0x7F800000 (inf)."""
    _, sig_r, exp_r, _ = _fields(np.int64(r_bits), _F32)
    prod = a * sig_r  # exact, < 2**48
    n = np.where(prod > 0, np.floor(np.log2(np.maximum(prod, 1))).astype(np.int64), 0)
    # log2 in float64 can be off by one just below a power of two: fix it exactly
    n = np.where((prod >> n) == 0, n - 1, n)
    n = np.where((prod >> n) >= 2, n + 1, n)
    # The exact product is a multiple of 2**exp_r >= 2**-149: only precision rounds it, so the
    # result's step is 2**(exp_r + sh), and its bits are ((step exponent + 149) << 23) + R
    # (R in [2**23, 2**24] for normals, R < 2**23 for subnormals; a carry to 2**24 simply
    # increments the exponent field).
    sh = np.maximum(n - _F32.frac_bits, 0)
    rounded = _rne_shift(prod, sh)
    mag = ((exp_r + sh - _F32.ulp_min) << _F32.frac_bits) + rounded
    inf = _F32.exp_max << _F32.frac_bits
    return np.where(prod == 0, 0, np.minimum(mag, inf))


def _f16_shift(expf):
    """float16 rounding shift of a float32 magnitude with exponent field ``expf``: the float16
    step 2**max(floor(log2 v) - 10, -24) over the float32 step 2**(max(expf, 1) - 150), capped
    at 26 (a 24-bit significand shifted by 25 or more rounds to 0 anyway)."""
    return np.minimum(np.maximum(_F16_NORMAL_SHIFT, _F16_MIN_NORMAL + _F16_NORMAL_SHIFT
                                 - np.maximum(expf, 1)), _F16_SHIFT_CAP)


def _f32_to_f16_magnitude(mag: np.ndarray) -> np.ndarray:
    """Finite float32 magnitude bits (at most 65504) to float16 bits, round to nearest even.

    With the float16 step 2**u, the bits are ``((u + 24) << 10) + R``, ``R`` the rounded
    significand in steps (in [2**10, 2**11] for normals: a carry increments the exponent field),
    and ``u + 24 = max(expf - 113, 0)`` (113: float32's exponent field of float16's smallest
    normal)."""
    _, sig, _, expf = _fields(mag, _F32)
    rounded = _rne_shift(sig, _f16_shift(expf))
    return (np.maximum(expf - _F16_MIN_NORMAL, 0) << _F16.frac_bits) + rounded


def fixed_to_float_model(v, r_bits: int, dtype: DType) -> np.ndarray:
    """Bits (in ``dtype``) of ``from_float32(float32(v) * r)`` computed as ``FixedToFloat``
    does, elementwise over integers ``v`` (``|v| < 2**24``); ``r_bits`` finite."""
    v = np.asarray(v, dtype=np.int64)
    r_sign = (r_bits >> (_F32.width - 1)) & 1
    sign = (v < 0).astype(np.int64) ^ r_sign
    mag = np.minimum(_f32_product_magnitude(np.abs(v), r_bits), _max_bits32(dtype))
    if dtype is DType.FLOAT32:
        return (sign << (_F32.width - 1)) | mag
    if dtype is DType.BFLOAT16:  # format 4: (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        rounded = (mag + _BF16_HALF + ((mag >> _BF16_SHIFT) & 1)) >> _BF16_SHIFT
        return (sign << (_BF16.width - 1)) | rounded
    return (sign << (_F16.width - 1)) | _f32_to_f16_magnitude(mag)


# ----------------------------------------------------------------------------- gateware helpers


class _Pipeline:
    """A pipeline whose stages all advance together while ``en`` (= the output register is
    empty or being read): full throughput, ``i.ready = en`` depends only on ``o.ready`` and
    the registered ``o.valid``; ``o.valid`` is a register."""

    def __init__(self, m: Module, i, o, stages: int):
        self.m = m
        self.en = Signal()
        m.d.comb += [self.en.eq(~o.valid | o.ready), i.ready.eq(self.en)]
        valid = i.valid
        for s in range(stages - 1):
            v = Signal(name=f"valid_{s}")
            with m.If(self.en):
                m.d.sync += v.eq(valid)
            valid = v
        with m.If(self.en):
            m.d.sync += o.valid.eq(valid)

    def reg(self, value, name: str):
        """``value`` registered (updated while the pipeline advances)."""
        value = Value.cast(value)
        r = Signal(value.shape(), name=name)
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r


def _decode(m: Module, bits, fmt: FloatFormat, name: str):
    """(sign, M, E, nonfinite) signals of a raw bit pattern."""
    sign = bits[fmt.width - 1]
    expf = bits[fmt.frac_bits:fmt.width - 1]
    frac = bits[:fmt.frac_bits]
    sig = Signal(fmt.sig_bits, name=f"{name}_sig")
    exp = Signal(range(fmt.ulp_min, fmt.exp_max - fmt.bias - fmt.frac_bits + 1),
                 name=f"{name}_exp")
    m.d.comb += [
        sig.eq(Cat(frac, expf != 0)),
        exp.eq(Mux(expf == 0, 1, expf) - fmt.bias - fmt.frac_bits),
    ]
    return sign, sig, exp, expf == fmt.exp_max


def _rne(m: Module, value, sh, out_shape, name: str):
    """``value >> sh`` rounded to nearest even (``sh`` unsigned, may be 0)."""
    floor = Signal(out_shape, name=f"{name}_floor")
    # guard = the bit just below the kept ones (bit sh - 1), sticky = any bit below it
    guard = Signal(name=f"{name}_guard")
    sticky = Signal(name=f"{name}_sticky")
    m.d.comb += [
        floor.eq(value >> sh),
        guard.eq(((value << 1) >> sh)[0]),
        sticky.eq((value & (((Const(1, len(value) + 1) << sh) - 1) >> 1)) != 0),
    ]
    return floor + (guard & (sticky | floor[0]))


def _bitlen_minus_1(m: Module, value, name: str):
    """Index of the highest set bit of ``value`` (0 for 0): a priority encoder."""
    n = Signal(range(max(len(value), 2)), name=name)
    for b in range(len(value)):  # later assignments win: the highest set bit
        with m.If(value[b]):
            m.d.comb += n.eq(b)
    return n


def _f32_magnitude(m: Module, p: _Pipeline, a, r_bits, name: str):
    """Two stages: bits of ``|float32(a) * r|`` (see ``_f32_product_magnitude``), saturated to
    the infinity pattern; ``a`` unsigned, ``r_bits`` the 32 bits of a finite float32 ``r``.
    A non-finite ``r`` gives the infinity pattern (or 0 for ``a = 0``)."""
    _, sig_r, exp_r, r_nonfinite = _decode(m, r_bits, _F32, f"{name}_r")
    prod = p.reg(a * sig_r, f"{name}_prod")
    exp_r1 = p.reg(exp_r, f"{name}_exp_r")
    big = p.reg(r_nonfinite, f"{name}_rinf")

    n = _bitlen_minus_1(m, prod, f"{name}_n")
    sh = Signal(range(max(len(prod) - _F32.frac_bits, 2)), name=f"{name}_sh")
    m.d.comb += sh.eq(Mux(n > _F32.frac_bits, n - _F32.frac_bits, 0))
    rounded = _rne(m, prod, sh, unsigned(_F32.sig_bits), f"{name}_rnd")
    mag = Signal(signed(_F32.width + 2), name=f"{name}_mag")
    m.d.comb += mag.eq(((exp_r1 + sh - _F32.ulp_min) << _F32.frac_bits) + rounded)
    inf = _F32.exp_max << _F32.frac_bits
    out = Mux(prod == 0, 0, Mux(big | (mag >= inf), inf, mag))
    return p.reg(out[:_F32.width - 1], f"{name}_mag32")


def _to_dtype(m: Module, mag, dtype: DType, name: str):
    """Clamped float32 magnitude bits -> magnitude bits of ``dtype`` (format 4, steps 1-2)."""
    limit = _max_bits32(dtype)
    clamped = Signal(_F32.width - 1, name=f"{name}_clamp")
    m.d.comb += clamped.eq(Mux(mag > limit, limit, mag))
    if dtype is DType.FLOAT32:
        return clamped
    if dtype is DType.BFLOAT16:
        return ((clamped + _BF16_HALF + clamped[_BF16_SHIFT]) >> _BF16_SHIFT)[:_BF16.width - 1]
    _, sig, _, _ = _decode(m, Cat(clamped, Const(0, 1)), _F32, f"{name}_c")
    expf = clamped[_F32.frac_bits:]
    eff = Mux(expf == 0, 1, expf)
    sh = Signal(range(_F16_SHIFT_CAP + 1), name=f"{name}_sh16")
    with m.If(eff >= _F16_MIN_NORMAL):
        m.d.comb += sh.eq(_F16_NORMAL_SHIFT)
    with m.Elif(eff <= _F16_MIN_NORMAL + _F16_NORMAL_SHIFT - _F16_SHIFT_CAP):
        m.d.comb += sh.eq(_F16_SHIFT_CAP)
    with m.Else():
        m.d.comb += sh.eq(_F16_MIN_NORMAL + _F16_NORMAL_SHIFT - eff)
    rounded = _rne(m, sig, sh, unsigned(_F16.sig_bits + 1), f"{name}_r16")
    high = Mux(expf >= _F16_MIN_NORMAL, expf - _F16_MIN_NORMAL, 0)
    return ((high << _F16.frac_bits) + rounded)[:_F16.width - 1]


# ----------------------------------------------------------------------------- components


class FloatToFixed(wiring.Component):
    """SFPR of 8 raw floats per row: ``sign(x) * min(floor(|x| * m * 2**e + 1/2), limit)``,
    bit-exact with ``reference.sfpr`` (format 6.1, "the same in integers").

    Input ``i`` (``sfpr_in_layout(dtype)``): ``x``, 8 bit patterns of ``dtype``, and ``scale``
    (``m``, ``e``: the scale of the row's group). The scale travels with every row, so a block's
    rows may carry any group's scale and the stream needs no side channel; a frame builder
    repeats its block's scale on each of its 8 rows. Output ``o`` (``sfpr_out_layout(limit)``):
    ``q``, 8 SFPR values, and ``nonfinite``, high when any of the row's inputs is NaN or ±inf
    (OR it over a block's 8 rows: such a block is stored RAW, format 7).

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 2 cycles (integer
    product ``M * m``, then shift, round, saturate). Backpressure: all stages stall together
    while ``o.valid & ~o.ready``; ``i.ready = ~o.valid | o.ready``. Bad input: NaN/±inf give
    ``q = 0`` and ``nonfinite``; ``m`` below 2**15 (not a valid scale) still saturates every
    product with ``e + E >= 0`` to ``limit``, which the exact formula would not.
    """

    LATENCY = 2

    def __init__(self, *, dtype, limit):
        self.dtype = _dtype(dtype)
        if limit not in _LIMITS:
            raise ValueError(f"limit: expected one of {_LIMITS} (format 6), not {limit!r}")
        self.limit = limit
        self.fmt = float_format(self.dtype)
        super().__init__({
            "i": In(stream.Signature(sfpr_in_layout(self.dtype))),
            "o": Out(stream.Signature(sfpr_out_layout(limit))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, fmt, limit = self.i, self.o, self.fmt, self.limit
        p = _Pipeline(m, i, o, stages=self.LATENCY)
        prod_bits = fmt.sig_bits + SCALE_MANT.width
        bad = []
        for u in range(N):
            sign, sig, exp, nonfinite = _decode(m, i.payload.x[u], fmt, f"x{u}")
            # stage 1: the exact product P = M * m and its exponent k = E + e
            prod = p.reg(sig * i.payload.scale.m, f"prod_{u}")
            k = p.reg(exp + i.payload.scale.e, f"k_{u}")
            neg = p.reg(sign, f"neg_{u}")
            zero = p.reg(nonfinite | (sig == 0), f"zero_{u}")
            bad.append(nonfinite)
            # stage 2: q = min((P + 2**(-k-1)) >> -k, L), k >= 0 saturates, sign applied
            sh = Signal(range(prod_bits + 2), name=f"sh_{u}")
            m.d.comb += sh.eq(Mux(k >= 0, 0, Mux(-k > prod_bits + 1, prod_bits + 1, -k)))
            rounded = Signal(prod_bits, name=f"rounded_{u}")
            m.d.comb += rounded.eq((((prod << 1) >> sh) + 1) >> 1)
            mag = Signal(range(limit + 1), name=f"mag_{u}")
            with m.If(zero):
                m.d.comb += mag.eq(0)
            with m.Elif((k >= 0) | (rounded >= limit)):
                m.d.comb += mag.eq(limit)
            with m.Else():
                m.d.comb += mag.eq(rounded)
            with m.If(p.en):
                m.d.sync += o.payload.q[u].eq(Mux(neg, -mag, mag))
        nonfinite = p.reg(Cat(*bad).any(), "nonfinite")
        with m.If(p.en):
            m.d.sync += o.payload.nonfinite.eq(nonfinite)
        return m


class FixedToFloat(wiring.Component):
    """Decoded values of 8 integers per row: ``from_float32(float32(v) * r, dtype)``, bit-exact
    with ``reference.dequantize_values`` followed by ``reference.from_float32`` (format 4, 6).

    Input ``i`` (``fixed_in_layout(width)``): ``v``, 8 signed integers (``width`` bits: 8 for
    ``sfpr8``/``dct`` values, 22 for the ``eb`` prefix sums), and ``r``, the float32 bits of the
    row's inverse scale. Output ``o`` (``raw_row(dtype)``): 8 bit patterns of ``dtype``.

    The float32 multiply is exact integer arithmetic: ``|v| * M_r`` (an exact product), then one
    round to nearest even at the 24th significant bit; subnormal ``r`` and results are exact
    (their products are multiples of 2**-149, so only precision rounds). Overflow saturates to
    the dtype's largest finite value, as the format's clamp does; float16 then rounds once more
    (RNE, subnormals kept), bfloat16 adds ``0x7FFF + lsb`` and keeps the top 16 bits.

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 3 cycles (product;
    normalize and round; clamp and convert). Backpressure: as ``FloatToFixed``. Bad input: a
    non-finite ``r`` gives ±MAX for every value (the reference gives NaN for ``v = 0`` there;
    frames never carry one: ``r`` is the float32 of a finite 1/s, format 5.3).
    """

    LATENCY = 3

    def __init__(self, *, dtype, width=22):
        self.dtype = _dtype(dtype)
        if not isinstance(width, int) or not 2 <= width <= _F32.sig_bits + 1:
            raise ValueError(f"width: expected an int in 2..{_F32.sig_bits + 1} (float32(v) "
                             f"must be exact), not {width!r}")
        self.width = width
        super().__init__({
            "i": In(stream.Signature(fixed_in_layout(width))),
            "o": Out(stream.Signature(raw_row(self.dtype))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        p = _Pipeline(m, i, o, stages=self.LATENCY)
        r_sign = i.payload.r[_F32.width - 1]
        width = 8 * self.dtype.itemsize
        for u in range(N):
            v = i.payload.v[u]
            sign = p.reg(p.reg(v[-1] ^ r_sign, f"s1_{u}"), f"s2_{u}")
            mag = _f32_magnitude(m, p, abs(v), i.payload.r, f"l{u}")
            with m.If(p.en):
                m.d.sync += o.payload[u].eq(
                    Cat(_to_dtype(m, mag, self.dtype, f"l{u}"), sign)[:width])
        return m


# ----------------------------------------------------------------------------- eb bound check

# Exponent distance (in steps of the two values' significands) within which |x - x_hat| is
# formed exactly: both aligned significands stay below 2**52, so the difference (or sum) fits
# binary64's 53 bits and equals the reference's binary64 subtraction. Outside it, the values'
# magnitudes differ by more than 2**28 and the lane fails (see BoundCheck).
_F64 = FloatFormat(width=64, exp_bits=11, frac_bits=52)  # binary64, the error bound's type
BOUND_WINDOW = _F64.frac_bits - _F32.sig_bits


def bound_check_model(x_bits, q, r_bits: int, eb: float, dtype: DType) -> np.ndarray:
    """Per value: does the decoded ``x_hat = dtype(float32(q) * r)`` satisfy ``|x - x_hat| <= eb``
    (format 6.4), computed as ``BoundCheck`` does. Non-finite ``x`` fail.

    Exact integer comparison: ``x = ±A 2**a``, ``x_hat = ±B 2**b`` (native fields of
    ``dtype``; a zero takes the other value's exponent); with ``g = min(a, b)`` and both within
    ``BOUND_WINDOW`` of each other, ``|x - x_hat| = N 2**g`` with ``N < 2**53`` exactly, and
    ``N 2**g <= eb = M_eb 2**e_eb`` iff ``g < e_eb`` or ``N <= M_eb >> (g - e_eb)``.
    """
    fmt = float_format(dtype)
    sa, a_sig, a_exp, a_expf = _fields(x_bits, fmt)
    xhat = fixed_to_float_model(q, r_bits, dtype)
    sb, b_sig, b_exp, _ = _fields(xhat, fmt)
    a_exp, b_exp = np.where(a_sig == 0, b_exp, a_exp), np.where(b_sig == 0, a_exp, b_exp)
    g = np.minimum(a_exp, b_exp)
    inside = np.abs(a_exp - b_exp) <= BOUND_WINDOW
    a_al = a_sig << np.clip(a_exp - g, 0, BOUND_WINDOW)
    b_al = b_sig << np.clip(b_exp - g, 0, BOUND_WINDOW)
    n = np.where(sa != sb, a_al + b_al, np.abs(a_al - b_al))
    eb_bits = int(np.float64(eb).view(np.uint64))
    _, eb_sig, eb_exp, _ = _fields(np.array(eb_bits, dtype=np.uint64).view(np.int64), _F64)
    d = g - eb_exp
    ok = (d < 0) | (n <= (eb_sig >> np.clip(d, 0, 63)))
    return ok & inside & (a_expf != fmt.exp_max)


def bound_in_layout(dtype: DType) -> data.StructLayout:
    """Input of ``BoundCheck``: a row of inputs, their eb SFPR values, the float32 bits of the
    inverse scale and the binary64 bits of the error bound."""
    return data.StructLayout({"x": raw_row(dtype),
                              "q": data.ArrayLayout(range(-spec.EB_Q_SAT, spec.EB_Q_SAT + 1), N),
                              "r": unsigned(_F32.width), "eb": unsigned(_F64.width)})


# ``ok``: every lane passes; ``lanes``: each lane's result (column k at bit k)
BoundOut = data.StructLayout({"ok": unsigned(1), "lanes": data.ArrayLayout(1, N)})


class BoundCheck(wiring.Component):
    """The ``eb`` bound check of a row (format 6.4): ``ok`` when every value satisfies
    ``|x - dtype(float32(q) * r)| <= eb``, bit-exact with the reference's binary64 test
    (``reference._symbols``) for every scale the codec computes (see below).

    Input ``i`` (``bound_in_layout(dtype)``): ``x`` (8 raw inputs), ``q`` (their
    ``FloatToFixed(limit=2**15)`` values), ``r`` (float32 bits of the inverse of the eb scale),
    ``eb`` (binary64 bits of the error bound). Output ``o`` (``BoundOut``): ``ok`` (all 8
    values pass) and ``lanes`` (each value's result); AND ``ok`` over a block's 8 rows: a block
    with any failing row is stored RAW (format 7).

    How it stays exact in integers (``bound_check_model``): ``x_hat`` is computed as
    ``FixedToFloat`` does; both values are taken as ``A 2**a`` and ``B 2**b`` in the dtype's own
    fields; within ``BOUND_WINDOW`` (28) of exponent distance their difference is an integer
    ``N < 2**53`` times ``2**min(a, b)``, exactly what the reference's binary64 subtraction
    gives, and it is compared with ``eb = M 2**e`` by one shift of ``M``. A lane outside the
    window fails. That matches the reference whenever the scale is ``spec.eb_scale(eb, amax,
    dtype)`` for any ``amax`` (``s <= (1 + 2**-15) / eb``) and ``r`` its inverse: for
    ``q != 0`` not saturated, ``x_hat`` is within a factor 5 of ``x`` (``q >= |x| s / 2``,
    ``q <= 2 |x| s``, ``r`` and the two roundings change it by at most a factor 2 each way);
    ``q = 0`` gives ``x_hat = +0`` (taking ``x``'s exponent); so only a saturated lane
    (``|x| s >= 2**15 - 1/2``) can leave the window, and then the reference's error is at
    least ``|x| (1 - 2**-27) > 2**14 eb``: it fails too. A non-finite ``x`` fails (its block is
    RAW anyway).

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 5 cycles (x_hat in 3, as
    ``FixedToFloat``; align and subtract; compare). Backpressure: as ``FloatToFixed``. Bad
    input: ``eb`` must be a positive normal binary64 (the codec's 1e-30..1e30); a non-finite
    ``r`` makes ``x_hat`` ±MAX.
    """

    LATENCY = 5

    def __init__(self, *, dtype):
        self.dtype = _dtype(dtype)
        super().__init__({
            "i": In(stream.Signature(bound_in_layout(self.dtype))),
            "o": Out(stream.Signature(BoundOut)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, dtype = self.i, self.o, self.dtype
        fmt = float_format(dtype)
        p = _Pipeline(m, i, o, stages=self.LATENCY)

        def delay(value, name, n):
            for s in range(n):
                value = p.reg(value, f"{name}_d{s}")
            return value

        eb = delay(i.payload.eb, "eb", 4)
        eb_sig = Cat(eb[:_F64.frac_bits], 1)
        eb_exp = eb[_F64.frac_bits:_F64.width - 1] - _F64.bias - _F64.frac_bits
        r_sign = i.payload.r[_F32.width - 1]
        oks = []
        for u in range(N):
            q = i.payload.q[u]
            # x_hat: three stages, as FixedToFloat
            b_sign = delay(q[-1] ^ r_sign, f"bs{u}", 2)
            mag = _f32_magnitude(m, p, abs(q), i.payload.r, f"l{u}")
            b_bits = p.reg(Cat(_to_dtype(m, mag, dtype, f"l{u}"), b_sign), f"xhat_{u}")
            x_bits = delay(i.payload.x[u], f"x{u}", 3)
            # stage 4: align both significands to the smaller exponent, subtract (or add)
            sa, a_sig, a_exp0, a_bad = _decode(m, x_bits, fmt, f"a{u}")
            sb, b_sig, b_exp0, _ = _decode(m, b_bits, fmt, f"b{u}")
            a_exp = Mux(a_sig == 0, b_exp0, a_exp0)
            b_exp = Mux(b_sig == 0, a_exp0, b_exp0)
            dist = Signal(range(-BOUND_WINDOW - 300, BOUND_WINDOW + 300), name=f"dist_{u}")
            m.d.comb += dist.eq(a_exp - b_exp)
            sh_a = Signal(range(BOUND_WINDOW + 1), name=f"sh_a_{u}")
            sh_b = Signal(range(BOUND_WINDOW + 1), name=f"sh_b_{u}")
            m.d.comb += [
                sh_a.eq(Mux(dist > 0, Mux(dist > BOUND_WINDOW, BOUND_WINDOW, dist), 0)),
                sh_b.eq(Mux(dist < 0, Mux(dist < -BOUND_WINDOW, BOUND_WINDOW, -dist), 0)),
            ]
            a_al = Signal(fmt.sig_bits + BOUND_WINDOW, name=f"a_al_{u}")
            b_al = Signal(fmt.sig_bits + BOUND_WINDOW, name=f"b_al_{u}")
            m.d.comb += [a_al.eq(a_sig << sh_a), b_al.eq(b_sig << sh_b)]
            diff = Mux(sa != sb, a_al + b_al, Mux(a_al >= b_al, a_al - b_al, b_al - a_al))
            n = p.reg(diff, f"n_{u}")
            g = p.reg(Mux(dist > 0, b_exp, a_exp), f"g_{u}")
            fail = p.reg(a_bad | (dist > BOUND_WINDOW) | (dist < -BOUND_WINDOW), f"fail_{u}")
            # stage 5: N * 2**g <= M_eb * 2**e_eb
            d = Signal(range(-2048, 2048), name=f"d_{u}")
            m.d.comb += d.eq(g - eb_exp)
            limit = Signal(_F64.sig_bits, name=f"lim_{u}")
            m.d.comb += limit.eq(eb_sig >> Mux(d > _F64.sig_bits, _F64.sig_bits, d)[:7])
            oks.append(~fail & ((d < 0) | (n <= limit)))
        with m.If(p.en):
            m.d.sync += [o.payload.lanes.eq(Cat(*oks)), o.payload.ok.eq(Cat(*oks).all())]
        return m
