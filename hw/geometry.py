"""Tiling arithmetic of a frame header's shape (format.md section 3): how many 8 x 8 blocks and
scale groups a tensor has, and the scale group of each block in block order.

``Geometry`` reproduces the counts of ``actpack.codec.spec.geometry`` from the header's ``ndim``
and shape fields, one frame at a time, with a small sequential multiplier (a frame parser or job
parser needs them once per header, so no wide combinational products are spent on it).
``GroupWalker`` then follows the blocks of the frame one per cycle and says each block's scale
group, as ``actpack.codec.reference.block_groups`` lists them, with counters instead of dividers.
``counts_model`` is what ``Geometry`` outputs, computed from ``spec.geometry``.
``ElementCount`` bounds the element count of a header's shape (zero dims counted as 1,
format.md 10 #9a), which the block count alone does not bound for an empty tensor.
"""

from __future__ import annotations

from typing import NamedTuple

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec import spec
from actpack.codec.frame import MAX_NDIM

__all__ = [
    "DIGIT_BITS",
    "DIM",
    "Counts",
    "ElementCount",
    "Geometry",
    "GroupWalker",
    "ShapeLayout",
    "counts_model",
    "numel_overflow_model",
]

DIM = unsigned(64)  # a header's dimension field (u64)
ShapeLayout = data.ArrayLayout(DIM, MAX_NDIM)  # outermost dimension first; entries past ndim unused

# The multiplier takes this many bits of its operand a cycle: one step adds the shifted partial
# product to count_bits x 4 bits of product (5 terms of count_bits + 5 bits), which closes at
# 250 MHz in fabric or maps onto one DSP slice; 64 x 64 bit products in one cycle would not.
DIGIT_BITS = 4
_BLOCK_SHIFT = spec.BLOCK.bit_length() - 1  # ceil(H / 8) = (H >> 3) + (H % 8 != 0)
_FLAT_SHIFT = 2 * _BLOCK_SHIFT  # rank <= 1: 64 values a block


def _check_count_bits(count_bits) -> int:
    if not isinstance(count_bits, int) or isinstance(count_bits, bool) or \
            not 1 <= count_bits <= 64:
        raise ValueError(f"count_bits: expected an int in 1..64 (a count is at most a u64 "
                         f"product's worth), got {count_bits!r}")
    return count_bits


def _count_layout(count_bits: int) -> data.StructLayout:
    # A count that is exact or saturated: ``sat`` means ">= 2**count_bits", and then ``value`` is
    # all ones. Zero is always exact, so a zero factor wins over a saturated one in a product.
    return data.StructLayout({"value": unsigned(count_bits), "sat": 1})


class Counts(NamedTuple):
    """``Geometry``'s results: each count is exact, or ``2**count_bits - 1`` when it does not fit,
    and ``overflow`` says whether any of the four did not fit."""

    nblocks: int
    groups: int
    blocks_per_plane: int
    group_stride: int
    overflow: bool


def counts_model(shape, *, count_bits: int = 32) -> Counts:
    """What ``Geometry(count_bits=count_bits)`` outputs for ``shape`` (from ``spec.geometry``)."""
    _check_count_bits(count_bits)
    geo = spec.geometry(shape)
    exact = (geo.nblocks, geo.groups, geo.blocks_per_plane, geo.group_stride)
    limit = (1 << count_bits) - 1
    return Counts(*(min(x, limit) for x in exact), overflow=max(exact) > limit)


def numel_overflow_model(shape, *, count_bits: int = spec.NUMEL_BITS) -> bool:
    """What ``ElementCount(count_bits=count_bits)`` says for ``shape``: at least
    ``2**count_bits`` elements, zero dims counted as 1 (at the default width: more than
    ``spec.MAX_NUMEL``)."""
    _check_count_bits(count_bits)
    return spec.nonzero_numel(shape) >> count_bits != 0


# ------------------------------------------------------------------------------- the schedule
# Geometry runs a fixed list of steps on one accumulator: each step multiplies it (or, "fresh",
# replaces it) by an operand the step fetches from the shape, chosen by rank; some steps store
# the result. With P = the leading dims and M = dims 2 .. ndim-3 (rank >= 5):
#   steps 0-3: acc = prod(M)              -> group_stride (1 for an exact zero: spec's max(., 1))
#   steps 4-5: acc *= shape[0] * shape[1] -> planes (rank 3: shape[0]; rank <= 2: 1);
#              the operand of step 4 (rank 3) or step 5 (rank >= 4) is the group count
#   steps 6-7: acc = ceil(H/8) ceil(W/8)  -> blocks_per_plane (rank 1: ceil(numel/64); rank 0: 1)
#   step 8:    acc *= planes              -> nblocks


class _Src(NamedTuple):
    kind: str  # "one", "dim": shape[dim] >> shift rounded up, or "planes" (the stored count)
    dim: int = 0
    shift: int = 0


_ONE = _Src("one")
_FRESH = (0, 6)
_STEPS = 9
_STORE_STRIDE, _STORE_PLANES, _STORE_BPP, _STORE_NBLOCKS = 3, 5, 7, 8


def _operand(step: int, rank: int) -> _Src:
    if step < 4:  # the dims between the group dim and the plane
        return _Src("dim", 2 + step) if rank >= step + 5 else _ONE
    if step == 4:
        return _Src("dim", 0) if rank >= 3 else _ONE
    if step == 5:
        return _Src("dim", 1) if rank >= 4 else _ONE
    if step == 6:
        if rank >= 2:
            return _Src("dim", rank - 2, _BLOCK_SHIFT)
        return _Src("dim", 0, _FLAT_SHIFT) if rank == 1 else _ONE
    if step == 7:
        return _Src("dim", rank - 1, _BLOCK_SHIFT) if rank >= 2 else _ONE
    return _Src("planes")


def _group_step(rank: int) -> int | None:
    """The step whose operand is the group count (None: one group)."""
    return 4 if rank == 3 else 5 if rank >= 4 else None


class _Phase(enum.Enum, shape=3):
    IDLE = 0
    FETCH = 1  # select the step's operand from the shape
    CONVERT = 2  # round it up and saturate it to a count
    MULTIPLY = 3  # one DIGIT_BITS digit of the operand a cycle, most significant first
    WRITE = 4  # combine exact and saturated factors, store


class Geometry(wiring.Component):
    """Block count, scale-group count and group walk parameters of a tensor shape.

    Ports: ``shape`` (``ShapeLayout``: 8 x u64, outermost first, as the header carries them;
    entries at and past ``ndim`` are ignored), ``ndim`` (0..8), ``start`` (a one-cycle pulse)
    in; ``done`` and the results out. The caller holds ``shape`` and ``ndim`` stable from
    ``start`` until ``done``; the results are valid while ``done`` is 1, which it stays until
    the next ``start`` (``done`` is 0 after reset and drops the cycle after ``start``). A
    ``start`` while busy restarts. ``ndim`` 9..15 (the port is 4 bits wide) gives unspecified
    results: a header that says so is corrupted and the parser rejects it before.

    Results, as ``spec.geometry(shape[:ndim])`` (format.md section 3):

    - ``nblocks``: number of 8 x 8 blocks (rank <= 1: ``ceil(numel / 64)``, rank 0: 1);
    - ``groups``: scale groups ``G`` of ``dct``/``sfpr8``: rank <= 2: 1, rank 3: ``shape[0]``,
      rank >= 4: ``shape[1]`` (may be 0: then there are no blocks);
    - ``blocks_per_plane``: ``ceil(H/8) * ceil(W/8)`` (rank <= 1: ``nblocks``);
    - ``group_stride``: planes in a row that share a group, ``prod(shape[2:-2])`` for rank >= 4,
      else 1; 1 where that product is 0 (as ``spec.Geometry.group_stride``).

    ``GroupWalker`` takes the last three. Overflow: each result is exact when it is below
    ``2**count_bits``; otherwise it reads ``2**count_bits - 1`` and ``overflow`` is 1. So
    ``overflow`` is exactly "one of the four results is ``>= 2**count_bits``" (``counts_model``):
    a product with a zero factor is 0 however large its other factors (shape
    ``(2**40, 2**40, 0, 5)`` has 0 blocks; only its ``groups``, ``2**40``, overflows at 32 bits),
    and the planes count on its own never overflows anything. The header's ``ngroups`` is a u32
    and at most ``spec.MAX_GROUPS``: checking it is the parser's job.

    Latency: with ``start`` high in cycle ``c``, ``done`` is 1 from cycle ``c + latency``,
    ``latency = 7 * ceil(count_bits / 4) + 26`` whatever the shape (82 cycles for
    ``count_bits=32``, 54 for 16, 138 for 64): the start cycle, then nine steps on one
    accumulator, seven of them multiplies of ``ceil(count_bits / 4) + 3`` cycles (fetch,
    convert, one cycle per 4-bit digit, write) and two plain loads of 2 (fetch, convert).
    """

    def __init__(self, *, count_bits: int = 32):
        self.count_bits = _check_count_bits(count_bits)
        count = unsigned(count_bits)
        super().__init__({
            "shape": In(ShapeLayout),
            "ndim": In(range(MAX_NDIM + 1)),
            "start": In(1),
            "done": Out(1),
            "nblocks": Out(count),
            "groups": Out(count),
            "blocks_per_plane": Out(count),
            "group_stride": Out(count),
            "overflow": Out(1),
        })

    @property
    def digits(self) -> int:
        """Cycles of one multiply's digit loop."""
        return -(-self.count_bits // DIGIT_BITS)

    @property
    def latency(self) -> int:
        """Cycles from ``start`` to ``done`` (the same for every shape)."""
        multiplies = _STEPS - len(_FRESH)
        return 1 + multiplies * (self.digits + 3) + 2 * len(_FRESH)

    def elaborate(self, platform):
        m = Module()
        cb = self.count_bits
        ones = (1 << cb) - 1
        layout = _count_layout(cb)

        phase = Signal(_Phase)
        step = Signal(range(_STEPS))
        digit = Signal(range(self.digits))
        raw = Signal(DIM)  # the fetched dim, shifted ...
        round_up = Signal()  # ... and whether the shift dropped non-zero bits
        from_planes = Signal()
        is_groups = Signal()  # the operand is the group count
        b = Signal(layout)  # the operand as a count
        digits = Signal(self.digits * DIGIT_BITS)  # its digits, most significant at the top
        acc = Signal(layout)
        prod = Signal(cb)  # the exact product so far, while not prod_sat
        prod_sat = Signal()
        planes = Signal(layout)

        # Operand to count: a cb-bit increment for the ceiling, saturated above cb bits.
        ceil = Signal(cb + 1)
        conv = Signal(layout)
        high = raw[cb:].any() if cb < DIM.width else 0
        m.d.comb += ceil.eq(raw[:cb] + round_up)
        with m.If(from_planes):
            m.d.comb += conv.eq(planes)
        with m.Else():
            m.d.comb += [
                conv.sat.eq(high | ceil[cb]),
                conv.value.eq(Mux(conv.sat, ones, ceil[:cb])),
            ]

        # One multiply step: prod = prod * 2**DIGIT_BITS + acc * digit. Horner's order makes
        # every partial product a lower bound of the final one, so overflow is sticky and exact.
        partial = Signal(cb + DIGIT_BITS + 1)
        m.d.comb += partial.eq((prod << DIGIT_BITS) + acc.value * digits[-DIGIT_BITS:])

        # The product as a count: a zero factor wins, then saturation, then the exact value.
        # (Saturated counts are all ones, so a non-zero test on ``value`` sees them too.)
        res = Signal(layout)
        m.d.comb += [
            res.sat.eq(prod_sat | (acc.sat & b.value.any()) | (b.sat & acc.value.any())),
            res.value.eq(Mux(res.sat, ones, prod)),
        ]

        def next_step():
            with m.If(step == _STEPS - 1):
                m.d.sync += [self.done.eq(1), phase.eq(_Phase.IDLE)]
            with m.Else():
                m.d.sync += [step.eq(step + 1), phase.eq(_Phase.FETCH)]

        with m.Switch(phase):
            with m.Case(_Phase.FETCH):
                m.d.sync += phase.eq(_Phase.CONVERT)
                with m.Switch(step):
                    for i in range(_STEPS):
                        with m.Case(i):
                            self._fetch(m, i, raw, round_up, from_planes, is_groups)
            with m.Case(_Phase.CONVERT):
                m.d.sync += [b.eq(conv), digits.eq(conv.value), prod.eq(0), prod_sat.eq(0),
                             digit.eq(0)]
                with m.If(is_groups):
                    m.d.sync += [self.groups.eq(conv.value), self.overflow.eq(self.overflow
                                                                              | conv.sat)]
                with m.If((step == _FRESH[0]) | (step == _FRESH[1])):
                    m.d.sync += acc.eq(conv)
                    next_step()
                with m.Else():
                    m.d.sync += phase.eq(_Phase.MULTIPLY)
            with m.Case(_Phase.MULTIPLY):
                m.d.sync += [
                    prod.eq(partial[:cb]),
                    prod_sat.eq(prod_sat | partial[cb:].any()),
                    digits.eq(digits << DIGIT_BITS),
                    digit.eq(digit + 1),
                ]
                with m.If(digit == self.digits - 1):
                    m.d.sync += phase.eq(_Phase.WRITE)
            with m.Case(_Phase.WRITE):
                m.d.sync += acc.eq(res)
                next_step()
                # Only the results count towards overflow: a saturated partial product may
                # still meet a zero factor later, and planes alone is no result.
                results = {_STORE_STRIDE: self.group_stride, _STORE_BPP: self.blocks_per_plane,
                           _STORE_NBLOCKS: self.nblocks}
                with m.Switch(step):
                    with m.Case(_STORE_PLANES):
                        m.d.sync += planes.eq(res)
                    for i, port in results.items():
                        with m.Case(i):
                            value = res.value
                            if port is self.group_stride:  # spec's max(., 1)
                                value = Mux(res.value.any(), res.value, 1)
                            m.d.sync += [port.eq(value), self.overflow.eq(self.overflow
                                                                          | res.sat)]

        # Later assignments win: a start restarts from any phase.
        with m.If(self.start):
            m.d.sync += [phase.eq(_Phase.FETCH), step.eq(0), self.done.eq(0),
                         self.overflow.eq(0), self.groups.eq(1)]
        return m

    def _fetch(self, m, i, raw, round_up, from_planes, is_groups):
        """Select step ``i``'s operand by rank (ranks with the same operand share a case)."""
        by_source: dict[tuple[_Src, bool], list[int]] = {}
        for rank in range(MAX_NDIM + 1):
            by_source.setdefault((_operand(i, rank), _group_step(rank) == i), []).append(rank)
        with m.Switch(self.ndim):
            for (src, groups_here), ranks in by_source.items():
                with m.Case(*ranks):
                    dim = self.shape[src.dim]
                    m.d.sync += [
                        raw.eq(1 if src.kind == "one" else dim >> src.shift),
                        round_up.eq(dim[:src.shift].any() if src.shift else 0),
                        from_planes.eq(src.kind == "planes"),
                        is_groups.eq(groups_here),
                    ]


class GroupWalker(wiring.Component):
    """Scale group of each block of a frame, in block order (``reference.block_groups``).

    Inputs ``blocks_per_plane``, ``group_stride`` and ``groups`` come from ``Geometry`` and are
    held stable during the walk. ``start`` (a pulse) goes to block 0; each cycle with ``next``
    high advances one block (``start`` wins over ``next``). ``group`` is a register: the group
    of the current block, ``(b // blocks_per_plane // group_stride) % groups``, valid from the
    cycle after ``start`` and updated the cycle after each ``next``. Throughput one block a
    cycle; latency 1 cycle.

    Three nested down-counters (blocks left in the plane, planes left with this group, groups
    left before the group wraps to 0) replace the divisions. A 0 input counts like 1
    (``groups`` 0 or ``blocks_per_plane`` 0 mean a frame without blocks); ``groups`` 1 keeps
    ``group`` at 0. ``next`` past the last block wraps around as the formula does. ``group`` is
    0 after reset.
    """

    def __init__(self, *, count_bits: int = 32):
        self.count_bits = _check_count_bits(count_bits)
        count = unsigned(count_bits)
        super().__init__({
            "blocks_per_plane": In(count),
            "group_stride": In(count),
            "groups": In(count),
            "start": In(1),
            "next": In(1),
            "group": Out(count),
        })

    def elaborate(self, platform):
        m = Module()
        count = unsigned(self.count_bits)

        def last(n):  # the down-counter's reload: n - 1, and 0 for n = 0 (counts like 1)
            return Mux(n.any(), n - 1, 0)

        block_left = Signal(count)
        plane_left = Signal(count)
        group_left = Signal(count)

        with m.If(self.start):
            m.d.sync += [
                block_left.eq(last(self.blocks_per_plane)),
                plane_left.eq(last(self.group_stride)),
                group_left.eq(last(self.groups)),
                self.group.eq(0),
            ]
        with m.Elif(self.next):
            with m.If(block_left.any()):
                m.d.sync += block_left.eq(block_left - 1)
            with m.Else():
                m.d.sync += block_left.eq(last(self.blocks_per_plane))
                with m.If(plane_left.any()):
                    m.d.sync += plane_left.eq(plane_left - 1)
                with m.Else():
                    m.d.sync += plane_left.eq(last(self.group_stride))
                    with m.If(group_left.any()):
                        m.d.sync += [group_left.eq(group_left - 1),
                                     self.group.eq(self.group + 1)]
                    with m.Else():
                        m.d.sync += [group_left.eq(last(self.groups)), self.group.eq(0)]
        return m


class ElementCount(wiring.Component):
    """Whether a shape holds ``2**count_bits`` elements or more, zero dims counted as 1
    (``spec.nonzero_numel``; at the default ``count_bits = spec.NUMEL_BITS``: more than
    ``spec.MAX_NUMEL``, docs/format.md 10 #9a).

    Ports as ``Geometry``'s: ``shape``, ``ndim`` (0..8; dims past it are ignored) and a
    ``start`` pulse in; ``done`` and ``overflow`` out, held until the next ``start`` (``done``
    0 after reset and the cycle after ``start``; a ``start`` while busy restarts). The caller
    holds ``shape`` and ``ndim`` stable until ``done``.

    One running product, exact below ``2**count_bits``, times each dim in turn, with the
    multiply of ``Geometry`` (``DIGIT_BITS`` a cycle, most significant first, so the overflow
    of a partial product is the overflow of the product); a dim of ``2**count_bits`` or more
    overflows at once, as the product is never 0 (its multiply still runs: a fixed latency).
    Latency: with ``start`` in cycle ``c``, ``done`` from ``c + latency(ndim)``,
    ``latency(ndim) = 2 + ndim * (ceil(count_bits / 4) + 1)`` (54 for rank 4 and 106 for rank 8
    at 48 bits).
    """

    def __init__(self, *, count_bits: int = spec.NUMEL_BITS):
        self.count_bits = _check_count_bits(count_bits)
        super().__init__({
            "shape": In(ShapeLayout),
            "ndim": In(range(MAX_NDIM + 1)),
            "start": In(1),
            "done": Out(1),
            "overflow": Out(1),
        })

    @property
    def digits(self) -> int:
        return -(-self.count_bits // DIGIT_BITS)

    def latency(self, ndim: int) -> int:
        """Cycles from ``start`` to ``done`` for a shape of rank ``ndim``."""
        return 2 + ndim * (self.digits + 1)

    def elaborate(self, platform):
        m = Module()
        cb = self.count_bits

        dim_at = Signal(range(MAX_NDIM + 1))  # the next dim to multiply by
        busy = Signal()
        multiply = Signal()  # busy with a dim (else: fetch the next one, or finish)
        digit = Signal(range(self.digits))
        acc = Signal(cb)  # the product of the dims so far, exact while not overflow
        prod = Signal(cb)
        digits = Signal(self.digits * DIGIT_BITS)  # the dim, most significant digit at the top
        partial = Signal(cb + DIGIT_BITS + 1)
        m.d.comb += partial.eq((prod << DIGIT_BITS) + acc * digits[-DIGIT_BITS:])

        dim = self.shape[dim_at[:3]]
        with m.If(busy & ~multiply):
            with m.If(dim_at == self.ndim):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
            with m.Else():
                big = dim[cb:].any() if cb < DIM.width else 0
                m.d.sync += [digits.eq(Mux(dim.any(), dim[:cb], 1)), prod.eq(0), digit.eq(0),
                             dim_at.eq(dim_at + 1), multiply.eq(1),
                             self.overflow.eq(self.overflow | big)]
        with m.If(busy & multiply):
            m.d.sync += [prod.eq(partial[:cb]), digits.eq(digits << DIGIT_BITS),
                         digit.eq(digit + 1),
                         self.overflow.eq(self.overflow | partial[cb:].any())]
            with m.If(digit == self.digits - 1):
                m.d.sync += [acc.eq(partial[:cb]), multiply.eq(0)]
        with m.If(self.start):
            m.d.sync += [busy.eq(1), multiply.eq(0), dim_at.eq(0), acc.eq(1),
                         self.overflow.eq(0), self.done.eq(0)]
        return m
