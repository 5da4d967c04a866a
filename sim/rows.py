"""Shared pieces of the value-conversion testbenches (test_sfpr, test_lorenzo): payload codecs
for nested layouts, float stimulus over every bit pattern class, and one test top per dtype.

``NestedCodec`` packs and unpacks payloads whose layouts nest (a ``StructLayout`` holding an
``ArrayLayout`` of raw values and a scale struct): a nested dict / list <-> the payload's bits,
checked against Amaranth's own ``layout.const(...).as_bits()`` like ``stream.LayoutCodec``.
``source``/``sink`` make ``stream`` drivers that use it.
"""

import numpy as np
from amaranth.hdl import Shape, unsigned
from amaranth.lib import data, wiring

from actpack.codec import reference, spec
from actpack.codec.spec import DType

from ..hw.sfpr import float_format
from .stream import LayoutCodec, StreamSink, StreamSource

__all__ = [
    "BITS_DTYPE",
    "LIMITS",
    "X2F_WIDTHS",
    "Bundle",
    "NestedCodec",
    "bound_reference",
    "check_full_rate",
    "eb_scales",
    "edge_bits",
    "lorenzo_stages",
    "near_bound",
    "random_bits",
    "sink",
    "source",
    "value_stages",
]

LIMITS = (spec.SFPR_MAX, spec.EB_Q_SAT)
# FixedToFloat widths of the decoders: sfpr8/dct values (int8) and eb prefix sums (int22).
X2F_WIDTHS = (8, 22)
BITS_DTYPE = {DType.FLOAT32: np.uint32, DType.FLOAT16: np.uint16, DType.BFLOAT16: np.uint16}


class NestedCodec(LayoutCodec):
    """``LayoutCodec`` for layouts whose fields may themselves be layouts. Values are nested
    dicts (struct fields) and lists (array elements) of ints."""

    def __init__(self, layout: data.Layout, *, check_rng=None):
        self.layout = layout
        self.struct = not isinstance(layout, data.ArrayLayout)
        self.fields = []  # (path, offset, width, signed), path a tuple of keys
        self._flatten(layout, (), 0)
        rng = check_rng if check_rng is not None else np.random.default_rng(0)
        for _ in range(8):
            bits = int.from_bytes(rng.bytes(-(-layout.size // 8)), "little") % (1 << layout.size)
            value = self.unpack(bits)
            if self.pack(value) != bits or layout.const(value).as_bits() != bits:
                raise AssertionError(f"NestedCodec disagrees with Amaranth on {layout!r}")

    def _flatten(self, layout, path, base):
        for key, field in layout:
            if isinstance(field.shape, data.Layout):
                self._flatten(field.shape, (*path, key), base + field.offset)
            else:
                shape = Shape.cast(field.shape)
                self.fields.append(((*path, key), base + field.offset, shape.width,
                                    shape.signed))

    def pack(self, value) -> int:
        bits = 0
        for path, offset, width, _ in self.fields:
            v = value
            for key in path:
                v = v[key]
            bits |= (int(v) & ((1 << width) - 1)) << offset
        return bits

    def unpack(self, bits: int):
        out = {}
        for path, offset, width, signed in self.fields:
            v = (bits >> offset) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = v
        return _lists(out)


def _lists(node):
    """Dicts keyed 0..n-1 (array elements) as lists, recursively."""
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(isinstance(k, int) for k in node):
        return [node[k] for k in range(len(node))]
    return node


def _with_codec(port, layout):
    port.codec = NestedCodec(layout)
    return port


def source(tb, prefix: str, layout: data.Layout, *, idle=None) -> StreamSource:
    """A ``StreamSource`` on ``tb`` (a ``StreamTB``) that packs nested payloads."""
    # The driver takes a stand-in layout of the same size; the codec then handles the nesting.
    port = tb.source(prefix, data.ArrayLayout(unsigned(1), layout.size), idle=idle)
    return _with_codec(port, layout)


def sink(tb, prefix: str, layout: data.Layout, *, backpressure=None) -> StreamSink:
    """A ``StreamSink`` on ``tb`` that unpacks nested payloads."""
    port = tb.sink(prefix, data.ArrayLayout(unsigned(1), layout.size), backpressure=backpressure)
    return _with_codec(port, layout)


def check_full_rate(src: StreamSource, snk: StreamSink, latency: int) -> None:
    """With no inserter: one transfer per cycle on both sides and ``latency`` cycles from each
    input row to its output row."""
    i_at, o_at = np.array(src.transfers), np.array(snk.transfers)
    assert np.all(np.diff(i_at) == 1), "input stalled"
    assert np.all(np.diff(o_at) == 1), "output bubble"
    assert set((o_at - i_at).tolist()) == {latency}, f"latency {set((o_at - i_at).tolist())}"


def random_bits(rng, dtype: DType, n: int) -> np.ndarray:
    """``n`` bit patterns of ``dtype``: uniform over all patterns (so every exponent field is
    equally likely: subnormals, NaN and ±inf included), a quarter of them with exponents near
    1.0 (where activations and scales put values)."""
    width = 8 * dtype.itemsize
    bits = rng.integers(0, 1 << width, size=n, dtype=np.uint64)
    near = rng.random(n) < 0.25
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))).astype(np.float32)
    bits[near] = reference.from_float32(x, dtype)[near]
    return bits.astype(BITS_DTYPE[dtype])


def edge_bits(dtype: DType) -> np.ndarray:
    """Every class boundary of ``dtype``: ±0, the smallest and largest subnormals, the smallest
    normal, 1.0 and its neighbours, the largest finite value, ±inf and quiet/signalling NaNs,
    with both signs; a multiple of 8 values."""
    fmt = float_format(dtype)
    width, frac, exp_max = fmt.width, fmt.frac_bits, fmt.exp_max
    one = int(reference.from_float32(np.float32(1.0), dtype))
    mags = [0, 1, 2, 3, (1 << frac) - 1, 1 << frac, (1 << frac) + 1, one - 1, one, one + 1,
            (exp_max << frac) - 1, exp_max << frac, (exp_max << frac) | 1,
            (exp_max << frac) | (1 << (frac - 1)), (1 << (width - 1)) - 1, 5 << (frac - 2)]
    out = [m | s << (width - 1) for s in (0, 1) for m in mags]
    return np.array(out, dtype=BITS_DTYPE[dtype])


class Bundle(wiring.Component):
    """Several components in one simulation top: member ``p`` of component ``name`` becomes
    port ``<name>_<p>``. One Verilator build then serves all of them (builds dominate the
    run time of these tests)."""

    def __init__(self, **components):
        self._parts = components
        members = {}
        for name, comp in components.items():
            for key, member in comp.signature.members.items():
                members[f"{name}_{key}"] = member
        super().__init__(members)

    def elaborate(self, platform):
        from amaranth.hdl import Module

        m = Module()
        for name, comp in self._parts.items():
            m.submodules[name] = comp
            for key, member in comp.signature.members.items():
                outer, inner = getattr(self, f"{name}_{key}"), getattr(comp, key)
                if member.flow == wiring.In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
        return m


def value_stages(dtype: str) -> Bundle:
    """The test top of one dtype: ``f2x127``/``f2x32768`` (``FloatToFixed`` at both limits),
    ``x2f8``/``x2f22`` (``FixedToFloat`` at ``X2F_WIDTHS``), ``bound`` (``BoundCheck``),
    ``menc``/``mdec`` (``MaskEncoder``/``MaskDecoder``)."""
    from ..hw.maskpack import MaskDecoder, MaskEncoder
    from ..hw.sfpr import BoundCheck, FixedToFloat, FloatToFixed

    parts = {f"f2x{limit}": FloatToFixed(dtype=dtype, limit=limit) for limit in LIMITS}
    parts.update({f"x2f{w}": FixedToFloat(dtype=dtype, width=w) for w in X2F_WIDTHS})
    return Bundle(**parts, bound=BoundCheck(dtype=dtype),
                  menc=MaskEncoder(dtype=dtype), mdec=MaskDecoder(dtype=dtype))


def lorenzo_stages() -> Bundle:
    """The test top of the Lorenzo pair: ``pred`` and ``recon``."""
    from ..hw.lorenzo import LorenzoPredictor, LorenzoReconstructor

    return Bundle(pred=LorenzoPredictor(), recon=LorenzoReconstructor())


def bound_reference(x_bits, q, inverse, eb: float, dtype: DType) -> np.ndarray:
    """Per value, the reference's eb bound test (the expressions of ``reference._symbols``):
    ``|x - to_float32(from_float32(float32(q) * r))| <= eb`` in binary64."""
    x = reference.to_float32(np.asarray(x_bits), dtype)
    decoded = reference.from_float32(reference.dequantize_values(np.asarray(q), inverse), dtype)
    xhat = reference.to_float32(decoded, dtype)
    with np.errstate(invalid="ignore"):
        return np.abs(x.astype(np.float64) - xhat.astype(np.float64)) <= eb


def near_bound(rng, dtype: DType, scale, n: int):
    """``n`` values (bits) at the midpoints ``(k + 1/2) / s`` between two quantization levels
    and their dtype neighbours, for random ``k`` (up to the saturation level): where the error
    ``|x - x_hat|`` is largest, so the bound test is decided by the last bits."""
    k = rng.integers(-spec.EB_Q_SAT - 1, spec.EB_Q_SAT + 1, n)
    k[: n // 4] = rng.integers(-40, 40, n // 4)
    mid = ((k + 0.5) / scale.value).astype(np.float32)
    bits = reference.from_float32(mid, dtype).astype(np.int64) + rng.integers(-2, 3, n)
    return (bits & ((1 << (8 * dtype.itemsize)) - 1)).astype(BITS_DTYPE[dtype])


def eb_scales(eb: float, amax: float, dtype: DType) -> list:
    """Scales for the bound test: the codec's ``eb_scale`` and, around the plain ``1/(2 eb)``,
    the two neighbouring mantissas (a step just below and just above ``2 eb``, so that the
    midpoints' errors straddle the bound). All satisfy ``s <= (1 + 2**-15) / eb``, the
    precondition of ``BoundCheck``."""
    plain = spec.eb_scale(eb)  # float32: h is negligible, s = 1/(2 eb) rounded up
    lower = max(plain.mantissa - 1, 1 << 15)
    return [spec.eb_scale(eb, amax, dtype), plain, spec.Scale(lower, plain.exponent)]
