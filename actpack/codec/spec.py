"""Shared definitions of the codec: modes, dtypes, fixed-point constants, tiling and scales.

Everything here is host-side and implementation-neutral; the numpy model (``reference``), the
torch path (``torchpath``), the gateware and docs/format.md all take their numbers from here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLOCK",
    "DCT_COEF_MAX",
    "DCT_SHIFT_1",
    "DCT_SHIFT_2",
    "EB2_MODULUS_BITS",
    "EB2_Q_SAT",
    "EB_Q_SAT",
    "ERROR_BOUND_RANGE",
    "IDCT_SHIFT_1",
    "IDCT_SHIFT_2",
    "MAX_GROUPS",
    "MAX_NUMEL",
    "NUMEL_BITS",
    "RANGE_MAX_LIMIT",
    "RANGE_MIN_LIMIT",
    "SCALE_EXP_RANGE",
    "SFPR_FRAC_BITS",
    "SFPR_MAX",
    "WIDTH_MAX",
    "DType",
    "Geometry",
    "Mode",
    "Scale",
    "eb2_wrap",
    "eb_scale",
    "eb_scale_range",
    "geometry",
    "half_ulp",
    "nonzero_numel",
    "sfpr_scales",
]

BLOCK = 8  # tiles are 8 x 8 values

# Scaled fixed point (SFPR): int8 with 5 fraction bits, symmetric saturation to +-127.
# Ref: JPEG-ACT (ISCA 2020) Sec. 4.1: values rescaled to +-4.5, then x32 into int8.
SFPR_FRAC_BITS = 5
SFPR_MAX = 127
RANGE_MAX_LIMIT = 64.0  # largest accepted range_max (scaled values up to 32 * 64 = 2048 pre-clamp)
# Smallest accepted range_max: the scale is then >= 2 / max|x|, so its float32 inverse stays
# finite even for max|x| near float32's largest value.
RANGE_MIN_LIMIT = 1 / 16

# Fixed-point DCT (see tables.DCT_MATRIX, 12 fraction bits). The forward transform keeps 4 fraction
# bits between the two passes; both passes round half up (add 2**(s-1), arithmetic shift right).
DCT_SHIFT_1 = 8  # row pass: 12 fraction bits -> 4
DCT_SHIFT_2 = 16  # column pass: 4 + 12 fraction bits -> integer coefficient
IDCT_SHIFT_1 = 8
IDCT_SHIFT_2 = 16
DCT_COEF_MAX = 2047  # dequantized coefficients saturate to +-2047 in the decoder (12-bit signed)
MAX_GROUPS = 1 << 24  # scale groups a frame may carry
# A frame's shape holds fewer than 2**NUMEL_BITS elements, zero dims counted as 1 (nonzero_numel):
# 1 PiB of float32, beyond any memory, yet it bounds the dims of an empty tensor too, whose
# other dims would otherwise be unbounded u64s that numpy and torch refuse differently.
NUMEL_BITS = 48
MAX_NUMEL = (1 << NUMEL_BITS) - 1

# Error-bounded mode: pre-quantized integers saturate here; a saturated block is stored raw.
EB_Q_SAT = 1 << 15
ERROR_BOUND_RANGE = (1e-30, 1e30)
# Mode "eb2": pre-quantized integers saturate at 2**14 - 1, so that they, the plane-wide
# reconstruction and every residual live in Z / 2**15 (15-bit two's complement, ``eb2_wrap``):
# every residual code then fits the 15-bit group widths and no block is ever too long to code.
EB2_Q_SAT = (1 << 14) - 1
EB2_MODULUS_BITS = 15

WIDTH_MAX = 15  # a coded value group's bit width is a 4-bit field


def _by_label(cls, value, message: str):
    """``value`` as a member of the enum ``cls``: a member itself, or a member's ``label``;
    otherwise ``ValueError(message)`` with ``{value!r}`` and ``{names}`` (the labels) filled in."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if member.label == value:
                return member
    names = ", ".join(repr(m.label) for m in cls)
    raise ValueError(message.format(value=value, names=names))


class Mode(enum.IntEnum):
    """Codec mode, as written in the frame header."""

    DCT = 1
    EB = 2
    SFPR8 = 3
    MASK = 4
    EB2 = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def error_bounded(self) -> bool:
        """True for the modes whose parameter is an absolute error bound ("eb", "eb2")."""
        return self in (Mode.EB, Mode.EB2)

    @classmethod
    def parse(cls, mode) -> Mode:
        """``mode`` as a ``Mode``: a member, or its label (``"dct"``, ...)."""
        return _by_label(cls, mode, "mode: unknown mode {value!r}; expected one of {names}")


class DType(enum.IntEnum):
    """Element type of the compressed tensor, as written in the frame header."""

    FLOAT32 = 1
    FLOAT16 = 2
    BFLOAT16 = 3

    @property
    def itemsize(self) -> int:
        return 4 if self is DType.FLOAT32 else 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def max_finite(self) -> float:
        """Largest finite value; decoded values saturate here instead of becoming infinite."""
        return {
            DType.FLOAT32: float(np.finfo(np.float32).max),
            DType.FLOAT16: 65504.0,
            DType.BFLOAT16: float.fromhex("0x1.fe00000000000p+127"),
        }[self]

    @classmethod
    def parse(cls, dtype) -> DType:
        """``dtype`` as a ``DType``: a member, or its label (``"float32"``, ...)."""
        return _by_label(cls, dtype,
                         "dtype: expected a spec.DType or one of {names}, not {value!r}")


def nonzero_numel(shape) -> int:
    """The element count of ``shape`` with zero dims counted as 1: what ``MAX_NUMEL`` bounds."""
    return math.prod(max(int(d), 1) for d in shape)


@dataclass(frozen=True)
class Geometry:
    """How a tensor of ``shape`` is cut into 8 x 8 blocks.

    The tensor is viewed as ``planes`` planes of ``height`` x ``width`` values; each plane is padded
    to ``padded_height`` x ``padded_width`` (multiples of 8) by edge replication and cut into
    ``blocks_y`` x ``blocks_x`` blocks, plane-major then row-major. ``group_of_plane[p]`` is the
    scale group of plane ``p`` and ``groups`` their number.

    Rule: rank >= 2: the last two dims are the plane, the leading dims enumerate planes; the scale
    group is dim 1 for rank >= 4 (the channel of NCHW), dim 0 for rank 3 (CHW) and the whole
    tensor for rank 2 (a linear layer's batch x features is one plane: neighbouring samples and
    features both predict). Rank <= 1: the values are padded to a multiple of 64 by repeating the
    last value and form one plane of width 8, so every 64 consecutive values are one block; one
    scale group.
    """

    shape: tuple[int, ...]
    planes: int
    height: int
    width: int
    groups: int
    group_stride: int  # planes per group index step (product of dims between the group dim and H)

    @property
    def padded_height(self) -> int:
        return -(-self.height // BLOCK) * BLOCK

    @property
    def padded_width(self) -> int:
        return -(-self.width // BLOCK) * BLOCK

    @property
    def blocks_y(self) -> int:
        return self.padded_height // BLOCK

    @property
    def blocks_x(self) -> int:
        return self.padded_width // BLOCK

    @property
    def blocks_per_plane(self) -> int:
        return self.blocks_y * self.blocks_x

    @property
    def nblocks(self) -> int:
        return self.planes * self.blocks_per_plane

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def flat(self) -> bool:
        """True when the tensor is tiled as a flat sequence (rank <= 1)."""
        return len(self.shape) <= 1

    def group_of_plane(self) -> np.ndarray:
        return (np.arange(self.planes) // self.group_stride) % max(self.groups, 1)


def geometry(shape) -> Geometry:
    """The tiling of a tensor of ``shape`` (see ``Geometry``)."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    if len(shape) <= 1:
        rows = -(-n // BLOCK)  # the flat values as rows of 8 ...
        height = -(-rows // BLOCK) * BLOCK  # ... padded to whole blocks
        return Geometry(shape, planes=1 if n else 0, height=height, width=BLOCK, groups=1,
                        group_stride=1)
    lead = shape[:-2]
    planes = math.prod(lead)
    if not lead:
        groups, stride = 1, 1
    elif len(lead) == 1:
        groups, stride = lead[0], 1
    else:
        groups, stride = lead[1], math.prod(lead[2:])
    height, width = shape[-2], shape[-1]
    if height == 0 or width == 0:
        planes = 0
    return Geometry(shape, planes=planes, height=height, width=width, groups=groups,
                    group_stride=max(stride, 1))


@dataclass(frozen=True)
class Scale:
    """A scale that hardware applies exactly: ``value = mantissa * 2**exponent``.

    ``mantissa`` is a 16-bit integer in [2**15, 2**16) (2**15 * 2**-15 = 1.0 for a group without a
    finite nonzero value); ``inverse`` is ``float32(1 / value)``, the multiplier of the decoder.
    """

    mantissa: int
    exponent: int

    @property
    def value(self) -> float:
        return math.ldexp(self.mantissa, self.exponent)

    @property
    def inverse(self) -> np.float32:
        return np.float32(1.0 / self.value)


def _encode_scale(target: float, *, round_up: bool) -> Scale:
    mant, exp = math.frexp(target)  # target = mant * 2**exp, mant in [0.5, 1)
    m = mant * (1 << 16)  # exact: a power-of-two scaling
    m = math.ceil(m) if round_up else math.floor(m)
    exp -= 16
    if m == 1 << 16:  # ceil carried out of 16 bits
        m, exp = 1 << 15, exp + 1
    return Scale(int(m), int(exp))


_UNIT = Scale(1 << 15, -15)  # 1.0, used for groups without a finite nonzero value


def sfpr_scales(maxabs: np.ndarray, range_max: float) -> list[Scale]:
    """Per-group SFPR scales from the per-group max |x| over finite values (float32).

    The scale maps ``maxabs`` to at most ``32 * range_max``; the mantissa rounds down so that no
    value maps above it. Groups whose max is 0 (or that have no finite values) get scale 1.
    """
    scales = []
    for amax in np.asarray(maxabs, dtype=np.float64).reshape(-1):
        if not amax > 0 or not math.isfinite(amax):
            scales.append(_UNIT)
            continue
        scales.append(_encode_scale((1 << SFPR_FRAC_BITS) * range_max / amax, round_up=False))
    return scales


_PRECISION = {DType.FLOAT32: (24, -126), DType.FLOAT16: (11, -14), DType.BFLOAT16: (8, -126)}


def half_ulp(value: float, dtype: DType) -> float:
    """Half the spacing of ``dtype`` at ``value`` (>= 0): the largest rounding error of a value
    of that magnitude converted to ``dtype``."""
    bits, emin = _PRECISION[dtype]
    exp = max(math.frexp(value)[1] - 1, emin) if value > 0 else emin  # floor(log2(value))
    return math.ldexp(1.0, exp - bits)


def eb_scale(error_bound: float, amax: float = 0.0, dtype: DType = DType.FLOAT32) -> Scale:
    """The pre-quantization scale of mode "eb": ``q = round(x * s)``, ``x_hat = q / s`` rounded
    to ``dtype``.

    The step ``1/s`` is ``2 (eb - h)``, where ``h`` is the dtype's largest rounding error at the
    tensor's magnitude (``half_ulp(amax + eb)``; ``amax`` = max |x| over finite values): the
    quantization error plus the output rounding then stays within ``eb``. ``h`` is at most
    ``eb / 2`` here (a coarser dtype cannot meet the bound by quantizing; such values go raw).
    For float32 ``h`` is negligible; for bfloat16 at eb = 0.02 and |x| ~ 2 it halves the raw
    blocks. The mantissa rounds up, so the step never exceeds ``2 (eb - h)``; the encoder still
    checks every decoded value against ``eb`` and stores violating blocks raw.
    """
    h = min(half_ulp(float(amax) + error_bound, dtype), error_bound / 2)
    return _encode_scale(1.0 / (2.0 * (error_bound - h)), round_up=True)


def eb2_wrap(v):
    """``v`` reduced into ``[-2**14, 2**14)`` modulo ``2**15`` (mode "eb2"'s integer ring);
    works on ints, numpy and torch integer arrays alike."""
    half = 1 << (EB2_MODULUS_BITS - 1)
    return ((v + half) & ((1 << EB2_MODULUS_BITS) - 1)) - half


def eb_scale_range(error_bound: float) -> tuple[float, float]:
    """Smallest and largest scale value ``eb_scale`` can give for ``error_bound`` (a reader's
    check of a frame's eb scale)."""
    return eb_scale(error_bound).value, _encode_scale(1.0 / error_bound, round_up=True).value


def _scale_exp_range() -> tuple[int, int]:
    # The encoders' extreme scales (sfpr_scales falls with max|x| and rises with range_max,
    # eb_scale falls with the error bound): max|x| from the largest finite float32 to its
    # smallest subnormal, range_max and the error bound over their accepted ranges.
    f32 = np.finfo(np.float32)
    lo_eb, hi_eb = ERROR_BOUND_RANGE
    extremes = [
        _UNIT,
        *sfpr_scales(np.array([f32.max]), RANGE_MIN_LIMIT),
        *sfpr_scales(np.array([f32.smallest_subnormal]), RANGE_MAX_LIMIT),
        eb_scale(hi_eb),
        _encode_scale(1.0 / lo_eb, round_up=True),  # eb_scale_range(lo_eb)'s upper end
    ]
    return min(s.exponent for s in extremes), max(s.exponent for s in extremes)


# The exponents an encoder writes, and so the ones a reader accepts (docs/format.md 10 #11).
# The smallest scale, max|x| = float32 max at range_max 1/16, still has a finite float32 inverse
# (RANGE_MIN_LIMIT's reason), so every accepted record decodes a zero symbol to a finite 0; the
# largest ones (a subnormal max|x|) have an inverse that rounds to 0, which decodes finite too.
SCALE_EXP_RANGE = _scale_exp_range()
