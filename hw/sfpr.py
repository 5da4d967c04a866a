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
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.spec import DType

from .dsp import DSP_WIDTH, RegisteredMultiply

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
    "fixed_to_float_latency",
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


class Pipeline:
    """A pipeline whose stages all advance together while ``en`` (= the output register is
    empty or being read): full throughput, ``i.ready = en`` depends only on ``o.ready`` and
    the registered ``o.valid``; ``o.valid`` is a register."""

    def __init__(self, m: Module, i, o, stages: int):
        self.m = m
        self.en = Signal()
        m.d.comb += [self.en.eq(~o.valid | o.ready), i.ready.eq(self.en)]
        valid = i.valid
        self.valid = []  # the valid bit beside each stage's registers, the output's excepted
        for s in range(stages - 1):
            v = Signal(name=f"valid_{s}")
            with m.If(self.en):
                m.d.sync += v.eq(valid)
            valid = v
            self.valid.append(v)
        with m.If(self.en):
            m.d.sync += o.valid.eq(valid)

    def reg(self, value, name: str):
        """``value`` registered (updated while the pipeline advances)."""
        value = Value.cast(value)
        r = Signal(value.shape(), name=name)
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r

    def delay(self, value, name: str, n: int):
        """``value`` through ``n`` registers."""
        for s in range(n):
            value = self.reg(value, f"{name}_d{s}")
        return value

    def product(self, a, b, name: str, *, stages: int = 2):
        """``a * b`` (at most 18 bits each) ``stages`` stages later: with ``stages=2`` the
        operands registered, then their product; with 1 the product only. A
        ``dsp.RegisteredMultiply`` (submodule ``name``): on ECP5 one MULT18X18D holding these
        registers itself, so no fabric register sits 20-30 rows from it (the engines' limit
        when the registers were the fabric's)."""
        a, b = Value.cast(a), Value.cast(b)
        mul = RegisteredMultiply(a.shape(), b.shape(), stages=stages)
        self.m.submodules[name] = mul
        self.m.d.comb += [mul.a.eq(a), mul.b.eq(b), mul.en.eq(self.en)]
        return mul.p


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


def _partial_products(p: Pipeline, a, b, name: str, *, stages: int):
    """The products of ``b`` (at most 18 bits) by ``a``'s 18-bit slices as ``(offset, product)``,
    ``stages`` stages later (``Pipeline.product``: one MULT18X18D each). Their sum
    (``_sum_products``) is the next stage: the adder joining them would otherwise follow the
    multipliers' delay in the same cycle."""
    return [(lo, p.product(a[lo:lo + DSP_WIDTH], b, f"{name}_pp{lo}", stages=stages))
            for lo in range(0, len(a), DSP_WIDTH)]


def _sum_products(parts, width: int):
    """The exact product from ``_partial_products``' slices, ``width`` bits."""
    total = parts[0][1] << parts[0][0]
    for lo, pp in parts[1:]:
        total = total + (pp << lo)
    return total[:width]


def _product_stages(wide: bool) -> int:
    """Stages of ``_dsp_product``: operands, partial products, (``wide``: two partial sums,)
    the product."""
    return 4 if wide else 3


def _dsp_product(p: Pipeline, a, b, name: str):
    """``a * b`` (both unsigned, at most 36 bits) registered after ``_product_stages(wide)``
    stages, ``wide`` when ``b`` is over 18 bits; each stage one MULT18X18D or one carry chain.

    1 and 2: the products of 18-bit slices of both operands (one MULT18X18D each: a slice
    product never needs the adders yosys adds after a DSP for a wider operand), operands and
    products registered (``Pipeline.product``: inside the MULT18X18D on ECP5; as fabric
    registers nextpnr placed them 20-30 rows away, and the ~3 ns product with ~2 ns of routing
    to and from the DSP missed 150 MHz). ``wide`` only: 3 the two sums that need no carry between
    them, the outer products side by side and the inner ones (both at 18) added. Last: their
    sum."""
    assert len(a) <= 2 * DSP_WIDTH and len(b) <= 2 * DSP_WIDTH
    width = len(a) + len(b)
    if len(b) <= DSP_WIDTH:
        parts = _partial_products(p, a, b, name, stages=2)
        return p.reg(_sum_products(parts, width), f"{name}_prod")
    lo = DSP_WIDTH
    assert len(a) > lo, "wide: both operands over 18 bits (a is r's 24-bit significand)"
    ll = p.product(a[:lo], b[:lo], f"{name}_pp_ll")
    lh = p.product(a[:lo], b[lo:], f"{name}_pp_lh")
    hl = p.product(a[lo:], b[:lo], f"{name}_pp_hl")
    hh = p.product(a[lo:], b[lo:], f"{name}_pp_hh")
    outer = p.reg(Cat(ll, hh), f"{name}_outer")  # ll < 2**36: no carry into hh's bits
    inner = p.reg(lh + hl, f"{name}_inner")
    return p.reg((outer + (inner << lo))[:width], f"{name}_prod")


def _top_bit_index4(bits) -> Value:
    """Index (0..3) of the highest set bit of up to 4 bits, 0 when none is set: one LUT level."""
    idx = Const(0, 2)
    for b in range(1, len(bits)):
        idx = Mux(bits[b], b, idx)
    return idx


def _magnitude_stages(width: int) -> int:
    """Stages of ``_f32_magnitude`` for a ``width``-bit ``v``."""
    return 6 + _product_stages(width > DSP_WIDTH)


def _f32_magnitude(m: Module, p: Pipeline, v, r_bits, dtype: DType, name: str):
    """``_magnitude_stages(len(v))`` stages (9, or 10 for ``v`` over 18 bits): bits of
    ``|float32(v) * r|`` (see ``_f32_product_magnitude``) clamped to the largest finite value of
    ``dtype`` (``_max_bits32``), as a register; ``v`` signed, ``r_bits`` the 32 bits of a
    float32 ``r``. A non-finite ``r`` gives the clamp (or 0 where ``v = 0``).

    Each stage keeps to a few LUT levels or one carry chain: 1 ``|v|`` and ``r``'s fields;
    then ``_dsp_product``'s stages: the product ``P = |v| * M_r`` (3, or 4 for ``v`` over 18
    bits); then 1 which 4-bit group of ``P >> 23``
    holds ``P``'s top bit (one-hot), that group's top-bit index and the sticky ORs at group
    boundaries; 2 the coarse shift by 4 groups (AND-OR of the one-hot); 3 the fine shift (0..3),
    guard, sticky and round-up bit, and the result's exponent field ``E`` (a short chain);
    4 ``E:significand + round-up`` (one chain; a carry out of the significand increments
    ``E``, as in ``_f32_product_magnitude``); 5 saturation and the dtype's clamp."""
    width = len(v)
    before = _product_stages(width > DSP_WIDTH)  # stages from |v| to P
    a = p.reg(abs(v)[:width], f"{name}_a")
    _, sig_r, _, _ = _decode(m, r_bits, _F32, f"{name}_r")
    sig_r1 = p.reg(sig_r, f"{name}_sig_r")
    # r's other tests a stage later, from its exponent field and a fraction-is-0 flag registered
    # first: ``r`` (in a Compressor one register, far off) reaches every lane, so a wide test of
    # it (M_r = 0: 31 bits) or a carry chain after it must not share its cycle with that hop
    r_expf = p.reg(r_bits[_F32.frac_bits:_F32.width - 1], f"{name}_r_expf")
    r_frac0 = p.reg(r_bits[:_F32.frac_bits] == 0, f"{name}_r_frac0")
    _, _, exp_r, r_nonfinite = _decode(m, Cat(Const(0, _F32.frac_bits), r_expf, Const(0, 1)),
                                       _F32, f"{name}_r1")
    # M_r = 0 a register of its own too (one for all lanes: its test ends before the hop to them)
    zero_r = p.reg(r_frac0 & (r_expf == 0), f"{name}_zero_r")
    zero_v = p.delay(v == 0, f"{name}_zero_v", 2)
    zero = p.delay(zero_v | zero_r, f"{name}_zero", before + 3)
    big = p.delay(r_nonfinite, f"{name}_rinf", before + 4)
    e0 = p.delay(exp_r - _F32.ulp_min, f"{name}_e0", before + 1)  # R 2**exp_r's field, R < 2**23

    prod = _dsp_product(p, sig_r1, a, f"{name}_p")
    # stage 4: P's bit length n is above 24 iff hi = P >> 23 is above 1; the rounding shift is
    # then sh = n - 23 = the index of hi's top bit (0 for hi <= 1), found per 4-bit group.
    hi = prod[_F32.frac_bits:]
    groups = [hi[4 * g:4 * g + 4] for g in range((len(hi) + 3) // 4)]
    # group g is the top one when nothing above it is set (group 0 also when hi is 0)
    onehot = p.reg(Cat(*((groups[g].any() if g else Const(1, 1)) & ~hi[4 * g + 4:].any()
                         for g in range(len(groups)))),
                   f"{name}_oh")
    idx_g = [p.reg(_top_bit_index4(grp), f"{name}_idx{g}") for g, grp in enumerate(groups)]
    # sticky below a coarse shift by 4 g: the bits of 2P under 2**(4g), i.e. P's under 4g - 1
    low_or = [Const(0, 1)] + [p.reg(prod[:4 * g - 1].any(), f"{name}_low{g}")
                              for g in range(1, len(groups))]
    hi_any = p.reg(hi.any(), f"{name}_hiany")
    prod4 = p.reg(prod, f"{name}_prod4")
    # stage 5: coarse shift of 2P by 4 g (AND-OR over the one-hot), the group's index
    keep = _F32.sig_bits + 5  # 2P >> 4g: bits 1..24 after the fine shift (0..3) + guard
    wide = Cat(Const(0, 1), prod4)
    coarse = Const(0, keep)
    fine = Const(0, 2)
    sticky = Const(0, 1)
    gbin = Const(0, 3)
    for g in range(len(groups)):
        sel = onehot[g]
        coarse = coarse | Mux(sel, (wide >> (4 * g))[:keep], 0)
        fine = fine | Mux(sel, idx_g[g], 0)
        sticky = sticky | (sel & low_or[g])
        gbin = gbin | Mux(sel, g, 0)
    c5 = p.reg(coarse, f"{name}_c")
    fine5 = p.reg(fine, f"{name}_fine")
    sticky5 = p.reg(sticky, f"{name}_stk")
    sh5 = p.reg(Cat(fine, gbin), f"{name}_sh")  # sh = 4 g + fine
    # E = field of 2**(exp_r + sh) plus floor's bit 23 (1 when sh > 0, else P's bit 23 = hi != 0)
    e5 = p.reg(e0 + hi_any, f"{name}_e5")
    # stage 6: fine shift; guard = bit sh of 2P, sticky = the bits below it, RNE round-up bit
    y = Signal(_F32.sig_bits + 1, name=f"{name}_y")
    m.d.comb += y.eq(c5 >> fine5)
    below = Signal(name=f"{name}_below")
    m.d.comb += below.eq(sticky5 | (c5[:3] & ((Const(1, 4) << fine5) - 1)[:3]).any())
    floor = p.reg(y[1:], f"{name}_floor")
    rup = p.reg(y[0] & (below | y[1]), f"{name}_rup")
    e6 = p.reg(e5 + sh5, f"{name}_e")
    # stage 7: one chain; 33 bits so that no overflow wraps
    mag = p.reg(Cat(floor[:_F32.frac_bits], e6) + rup, f"{name}_mag")
    # stage 8: saturate (the field reached 255: inf) and clamp to the dtype's largest value
    limit = _max_bits32(dtype)
    over = big | (mag[_F32.frac_bits:] >= _F32.exp_max)
    if dtype is not DType.FLOAT32:  # float32's limit is just below inf: `over` is the clamp
        over = over | (mag > limit)
    return p.reg(Mux(zero, 0, Mux(over, limit, mag[:_F32.width - 1])), f"{name}_mag32")


def _to_dtype(m: Module, clamped, dtype: DType, name: str):
    """Clamped float32 magnitude bits -> magnitude bits of ``dtype`` (format 4, step 2)."""
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


def fixed_to_float_latency(width: int) -> int:
    """Cycles ``FixedToFloat`` takes for ``width``-bit values (``_fixed_to_float``'s stages)."""
    return _magnitude_stages(width) + 1


def _fixed_to_float(m: Module, p: Pipeline, v, r_bits, dtype: DType, name: str):
    """``from_float32(float32(v) * r, dtype)`` bits of one signed ``v``: the value to register
    as the last of ``fixed_to_float_latency(len(v))`` stages (``_f32_magnitude``'s, then the
    conversion to ``dtype``)."""
    sign = p.delay(v[-1] ^ r_bits[_F32.width - 1], f"{name}_s", _magnitude_stages(len(v)))
    mag = _f32_magnitude(m, p, v, r_bits, dtype, name)
    if dtype is DType.FLOAT32:  # nothing to convert: the stage is a plain register
        return Cat(mag, sign)
    return Cat(_to_dtype(m, mag, dtype, name), sign)[:8 * dtype.itemsize]


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

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 6 cycles, each stage a
    few LUT levels or one carry chain for 150 MHz on ECP5: 1 the partial products of
    ``M * m`` (MULT18X18D) and ``k = E + e``; 2 their sum ``P`` and the shift ``clip(-k)``;
    3 and 4 the shift of ``2P`` in two steps (by a multiple of 8, then 0..7), keeping the bits
    that decide saturation; 5 round half up and saturate; 6 the sign. Backpressure: all stages
    stall together while ``o.valid & ~o.ready``; ``i.ready = ~o.valid | o.ready``. Bad input:
    NaN/±inf give ``q = 0`` and ``nonfinite``; ``m`` below 2**15 (not a valid scale) still
    saturates every product with ``e + E >= 0`` to ``limit``, which the exact formula would
    not.
    """

    LATENCY = 6

    def __init__(self, *, dtype, limit):
        self.dtype = DType.parse(dtype)
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
        p = Pipeline(m, i, o, stages=self.LATENCY)
        prod_bits = fmt.sig_bits + SCALE_MANT.width
        span = prod_bits + 1  # bits of 2P: a shift by span or more leaves 0
        # t = floor(2P / 2**sh) saturates from 2L - 1 on (then (t + 1) >> 1 >= L): its low
        # t_bits bits and whether any bit above them is set decide everything
        t_bits = (2 * limit - 1).bit_length()
        bad = []
        for u in range(N):
            sign, sig, _, nonfinite = _decode(m, i.payload.x[u], fmt, f"x{u}")
            bad.append(nonfinite)
            neg = p.delay(sign, f"neg_{u}", self.LATENCY - 1)
            zero = p.delay(nonfinite | (sig == 0), f"zero_{u}", self.LATENCY - 1)
            # stage 1: the partial products of P = M * m, and k + bias' = max(field, 1) + e
            # (E = max(field, 1) - bias', bias' = bias + frac_bits: one carry chain a stage)
            parts = _partial_products(p, sig, i.payload.scale.m, f"p{u}", stages=1)
            expf = i.payload.x[u][fmt.frac_bits:fmt.width - 1]
            kb = p.reg(Mux(expf == 0, 1, expf) + i.payload.scale.e, f"kb_{u}")
            # stage 2: P; the shift sh = clip(-k, 0, span); k >= 0 saturates
            prod = p.reg(_sum_products(parts, prod_bits), f"prod_{u}")
            nk = Signal(range(-(1 << 16), 1 << 17), name=f"nk_{u}")  # -k
            m.d.comb += nk.eq(fmt.bias + fmt.frac_bits - kb)
            sh = p.reg(Mux(nk <= 0, 0, Mux(nk > span, span, nk)), f"sh_{u}")
            # sh >> 3 as a one-hot, from the same compares (one LUT level, like sh's clip)
            csel = p.reg(Cat(*(Mux(nk <= 0, j == 0, Mux(nk > span, j == span >> 3,
                                                         nk[3:6] == j))
                               for j in range((span >> 3) + 1))), f"csel_{u}")
            pos = p.delay(p.reg(nk <= 0, f"pos_{u}"), f"pos_{u}", 2)
            # stage 3: 2P shifted by sh's multiple of 8 (an AND-OR over the one-hot: two LUT
            # levels where a barrel shifter took six); stage 4: by the rest (0..7), keeping
            # t's low bits and ORs of 4 of the bits above them
            p2 = Cat(Const(0, 1), prod)
            coarse = Const(0, span)
            for j in range(len(csel)):
                coarse = coarse | Mux(csel[j], p2[8 * j:], 0)
            coarse = p.reg(coarse, f"coarse_{u}")
            fine = p.reg(sh[:3], f"fine_{u}")
            t = Signal(span, name=f"t_{u}")
            m.d.comb += t.eq(coarse >> fine)
            t_lo = p.reg(t[:t_bits], f"t_lo_{u}")
            above = p.reg(Cat(*(t[b:b + 4].any() for b in range(t_bits, span, 4))),
                          f"above_{u}")
            # stage 5: round half up, saturation; stage 6: the sign
            rounded = p.reg(((t_lo + 1) >> 1)[:t_bits], f"rounded_{u}")
            sat = p.reg(pos | above.any() | (t_lo >= 2 * limit - 1), f"sat_{u}")
            mag = Signal(range(limit + 1), name=f"mag_{u}")
            m.d.comb += mag.eq(Mux(zero, 0, Mux(sat, limit, rounded)))
            with m.If(p.en):
                m.d.sync += o.payload.q[u].eq(Mux(neg, -mag, mag))
        nonfinite = p.delay(Cat(*bad).any(), "nonfinite", self.LATENCY - 1)
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

    Throughput: 8 values per cycle, no bubbles. Latency: ``latency`` =
    ``fixed_to_float_latency(width)`` cycles, 10 (11 for ``width`` over 18), each stage a few LUT
    levels, one carry chain or one MULT18X18D for 150 MHz on ECP5 (``_f32_magnitude``'s: ``|v|``;
    the multipliers' operands again, beside them; partial products; for ``width`` over 18 two
    partial sums; product; leading-bit group; coarse shift; fine shift and round-up bit; round;
    saturate and clamp; then the conversion to the dtype, a plain register for float32).
    Backpressure: as ``FloatToFixed``. Bad input: a
    non-finite ``r`` gives ±MAX for every value (the reference gives NaN for ``v = 0`` there;
    frames never carry one: ``r`` is the float32 of a finite 1/s, format 5.3).
    """

    def __init__(self, *, dtype, width=22):
        self.dtype = DType.parse(dtype)
        if not isinstance(width, int) or not 2 <= width <= _F32.sig_bits + 1:
            raise ValueError(f"width: expected an int in 2..{_F32.sig_bits + 1} (float32(v) "
                             f"must be exact), not {width!r}")
        self.width = width
        self.latency = fixed_to_float_latency(width)
        super().__init__({
            "i": In(stream.Signature(fixed_in_layout(width))),
            "o": Out(stream.Signature(raw_row(self.dtype))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        p = Pipeline(m, i, o, stages=self.latency)
        for u in range(N):
            value = _fixed_to_float(m, p, i.payload.v[u], i.payload.r, self.dtype, f"l{u}")
            with m.If(p.en):
                m.d.sync += o.payload[u].eq(value)
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


_EB_Q = range(-spec.EB_Q_SAT, spec.EB_Q_SAT + 1)  # the values BoundCheck takes


def bound_in_layout(dtype: DType) -> data.StructLayout:
    """Input of ``BoundCheck``: a row of inputs, their eb SFPR values, the float32 bits of the
    inverse scale and the binary64 bits of the error bound."""
    return data.StructLayout({"x": raw_row(dtype),
                              "q": data.ArrayLayout(_EB_Q, N),
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

    Throughput: 8 values per cycle, no bubbles. Latency: ``LATENCY`` = 18 cycles (x_hat in
    ``XHAT_STAGES`` = 10, as ``FixedToFloat`` for ``q``'s 17 bits; then fields, exponent
    distance, shift amounts, the alignment in two shifts, sum and difference, ``N``, and the
    compare: a few LUT levels or one carry chain each, for 150 MHz on ECP5). Backpressure: as
    ``FloatToFixed``. Bad input: ``eb`` must be a positive normal binary64 (the codec's
    1e-30..1e30); a non-finite ``r`` makes ``x_hat`` ±MAX.
    """

    XHAT_STAGES = fixed_to_float_latency(Shape.cast(_EB_Q).width)
    LATENCY = XHAT_STAGES + 8

    def __init__(self, *, dtype):
        self.dtype = DType.parse(dtype)
        super().__init__({
            "i": In(stream.Signature(bound_in_layout(self.dtype))),
            "o": Out(stream.Signature(BoundOut)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, dtype = self.i, self.o, self.dtype
        fmt = float_format(dtype)
        p = Pipeline(m, i, o, stages=self.LATENCY)

        xhat_stages = self.XHAT_STAGES
        eb = p.delay(i.payload.eb, "eb", xhat_stages + 1)  # its fields: the stage after x_hat
        eb_sig = p.delay(Cat(eb[:_F64.frac_bits], 1), "eb_sig", 4)  # for the coarse shift
        eb_exp = p.reg(eb[_F64.frac_bits:_F64.width - 1] - _F64.bias - _F64.frac_bits, "eb_exp")
        # d = g - e_eb follows g (stage 3 after x_hat) by a stage, M_eb >> clip(d, 0, 53) by 3
        eb_exp = p.reg(eb_exp, "eb_exp2")
        al_bits = fmt.sig_bits + BOUND_WINDOW
        oks = []
        for u in range(N):
            # x_hat: as FixedToFloat
            b_bits = p.reg(_fixed_to_float(m, p, i.payload.q[u], i.payload.r, dtype, f"l{u}"),
                           f"xhat_{u}")
            x_bits = p.delay(i.payload.x[u], f"x{u}", xhat_stages)
            # 1: both values' fields (a zero takes the other's exponent)
            sa, a_sig, a_exp0, a_bad = _decode(m, x_bits, fmt, f"a{u}")
            sb, b_sig, b_exp0, _ = _decode(m, b_bits, fmt, f"b{u}")
            a_exp = p.reg(Mux(a_sig == 0, b_exp0, a_exp0), f"a_exp_{u}")
            b_exp = p.reg(Mux(b_sig == 0, a_exp0, b_exp0), f"b_exp_{u}")
            a_sig = p.delay(a_sig, f"a_sig_{u}", 3)
            b_sig = p.delay(b_sig, f"b_sig_{u}", 3)
            opp = p.delay(sa != sb, f"opp_{u}", 6)
            # 2: their distance; 3: the shifts (clipped to the window), g, the window test
            dist = p.reg(a_exp - b_exp, f"dist_{u}")
            b_exp2 = p.reg(b_exp, f"b_exp2_{u}")
            a_exp2 = p.reg(a_exp, f"a_exp2_{u}")
            sh_a = p.reg(Mux(dist > 0, Mux(dist > BOUND_WINDOW, BOUND_WINDOW, dist), 0),
                         f"sh_a_{u}")
            sh_b = p.reg(Mux(dist < 0, Mux(dist < -BOUND_WINDOW, BOUND_WINDOW, -dist), 0),
                         f"sh_b_{u}")
            g = p.reg(Mux(dist > 0, b_exp2, a_exp2), f"g_{u}")
            bad = p.delay(a_bad, f"bad_{u}", 2)
            fail = p.delay(p.reg(bad | (dist > BOUND_WINDOW) | (dist < -BOUND_WINDOW),
                                 f"fail_{u}"), f"fail_{u}", 4)
            # 4, 5: both significands aligned to the smaller exponent (by 8s, then 0..7)
            a_c = p.reg((a_sig << Cat(Const(0, 3), sh_a[3:]))[:al_bits], f"a_c_{u}")
            b_c = p.reg((b_sig << Cat(Const(0, 3), sh_b[3:]))[:al_bits], f"b_c_{u}")
            a_al = p.reg((a_c << p.reg(sh_a[:3], f"sh_af_{u}"))[:al_bits], f"a_al_{u}")
            b_al = p.reg((b_c << p.reg(sh_b[:3], f"sh_bf_{u}"))[:al_bits], f"b_al_{u}")
            # 6: sum and difference; 7: N = |x - x_hat| / 2**g
            total = p.reg(a_al + b_al, f"sum_{u}")
            diff = p.reg(a_al - b_al, f"diff_{u}")  # as wide as the sum: its top bit is the sign
            n = p.reg(Mux(opp, total, Mux(diff[-1], -diff, diff)[:al_bits + 1]), f"n_{u}")
            # beside 4..7: d = g - e_eb (4); ds = clip(d, 0, 53), its multiple of 8 as a
            # one-hot from the same compares (5); M_eb >> ds in two steps: by the multiple of 8
            # (6, an AND-OR over the one-hot), by the rest (7)
            d = p.reg(g - eb_exp, f"d_{u}")
            low, high = d < 0, d > _F64.sig_bits
            ds = p.reg(Mux(high, _F64.sig_bits, Mux(low, 0, d))[:3], f"ds_f_{u}")
            csel = p.reg(Cat(*(Mux(low, j == 0, Mux(high, j == _F64.sig_bits >> 3, d[3:6] == j))
                               for j in range((_F64.sig_bits >> 3) + 1))), f"ds_c_{u}")
            lim_c = Const(0, len(eb_sig))
            for j in range(len(csel)):
                lim_c = lim_c | Mux(csel[j], eb_sig >> (8 * j), 0)
            lim_c = p.reg(lim_c, f"lim_c_{u}")
            lim = p.reg(lim_c >> p.reg(ds, f"ds_f2_{u}"), f"lim_{u}")
            early = p.delay(low, f"early_{u}", 3)
            # last: N * 2**g <= M_eb * 2**e_eb
            oks.append(~fail & (early | (n <= lim)))
        with m.If(p.en):
            m.d.sync += [o.payload.lanes.eq(Cat(*oks)), o.payload.ok.eq(Cat(*oks).all())]
        return m
