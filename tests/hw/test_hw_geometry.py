# amaranth: UnusedElaboratable=no
"""hw.geometry under Amaranth's simulator: Geometry's counts against ``spec.geometry`` (doc
examples, every rank, edge dims, overflow at small and full widths, random shapes) and its fixed
latency; GroupWalker, fed by Geometry, against ``reference.block_groups`` block by block (the
first line silences the warning of the components built only to check their parameters)."""

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module
from amaranth.sim import Simulator

from actpack.codec import reference, spec
from actpack.hw.geometry import (
    ElementCount,
    Geometry,
    GroupWalker,
    ShapeLayout,
    counts_model,
    numel_overflow_model,
)

U64 = (1 << 64) - 1
EDGE_DIMS = (0, 1, 7, 8, 9, 63, 65)
# format.md section 3: shape -> (groups, nblocks)
DOC_EXAMPLES = {
    (): (1, 1),
    (150,): (1, 3),
    (3, 50): (1, 7),
    (2, 3, 5, 9): (3, 12),
    (2, 3, 4, 5, 9): (3, 48),
    (7, 9, 10): (7, 28),
    (2, 3, 0, 5): (3, 0),
}


def edge_shapes() -> list[tuple[int, ...]]:
    """Every rank 0..8, each rank with every edge dim in every position (rotations)."""
    shapes = [()]
    for rank in range(1, 9):
        for i in range(len(EDGE_DIMS)):
            shapes.append(tuple(EDGE_DIMS[(i + 3 * j) % len(EDGE_DIMS)] for j in range(rank)))
    return shapes


# Around 16-bit limits: exact at 2**16 - 1, overflow at 2**16, and zero factors that win.
OVERFLOW_16 = [
    (64 * 65535,), (64 * 65535 + 1,), (U64,), (0,),
    (8 * 65535, 1), (8 * 65535 + 1, 8), (8 * 256, 8 * 256), (8 * 256, 8 * 255 + 1), (U64, U64),
    (U64, 0), (65535, 8, 8), (65536, 8, 8), (65536, 0, 8), (0, U64, U64),
    (3, 5, 17 * 8, 257 * 8), (3, 5, 17 * 8, 257 * 8 + 1),  # nblocks 65535, then 65535 + 255
    (2**40, 2**40, 0, 5), (0, 2**40, 5, 5), (2**63, 0, 9, 9), (3, 0, 5, 5), (1, 65535, 1, 1),
    (1, 1, 2**32, 2**32, 1, 1), (1, 1, U64, 0, 1, 1), (1, 1, 256, 256, 1, 1),
    (1, 1, 255, 257, 1, 1), (2, 2, 128, 128, 1, 1), (2, 2, 128, 128, 0, 1),
    (U64, 1, 1, 1, 1, 1, 1, 1), (1, 1, 1, 1, 1, 1, 8 * 65535, 8), (1, 1, 1, 1, 1, 1, 8 * 65536, 8),
    (2, 3, 4, 5, 6, 7, 8, 9), (9, 9, 9, 9, 9, 9, 9, 9),
]
# At 64 bits: a product of exactly 2**64 overflows, 2**64 - 2**32 does not.
OVERFLOW_64 = [
    (U64,), (U64, U64), (2**32, 2**32, 8, 8), (2**32, 2**32 - 1, 8, 8), (8 << 32, 8 << 32),
    (8 << 32, (8 << 32) - 8), (U64, 1, 1),
    (1, U64, 1, 1), (1, 1, 2**32, 2**32, 1, 1), (1, 1, 2**32, 2**32 - 1, 1, 1), (2**64 - 2, 0, 1),
]
TINY_1 = [(), (0,), (64,), (65,), (8, 8), (8, 9), (1, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1, 1)]


def random_shapes(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    def dim():
        if rng.random() < 0.75:
            return rng.randint(0, 20)
        return max(0, min(U64, (1 << rng.randint(0, 64)) + rng.randint(-1, 1)))

    return [tuple(dim() for _ in range(rng.randint(0, 8))) for _ in range(n)]


def simulate_geometry(shapes, count_bits):
    """Run every shape through one Geometry; return its outputs and cycles to ``done`` each."""
    dut = Geometry(count_bits=count_bits)

    def outputs(ctx):
        return (ctx.get(dut.nblocks), ctx.get(dut.groups), ctx.get(dut.blocks_per_plane),
                ctx.get(dut.group_stride), bool(ctx.get(dut.overflow)))

    return dut, _simulate_shapes(dut, shapes, outputs, dut.latency)


def _simulate_shapes(dut, shapes, outputs, latency):
    """Each shape on a ``start`` pulse, dims past ``ndim`` junk; (outputs, cycles) per shape."""
    results = []

    async def testbench(ctx):
        assert ctx.get(dut.done) == 0  # after reset
        for shape in shapes:
            assert all(0 <= d <= U64 for d in shape), shape  # a table error, not the unit's
            # Dims past ndim hold junk the unit must ignore.
            junk = [U64 - k for k in range(8 - len(shape))]
            ctx.set(dut.shape, ShapeLayout.const([*shape, *junk]))
            ctx.set(dut.ndim, len(shape))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            assert ctx.get(dut.done) == 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
                assert cycles <= latency, shape
            out = outputs(ctx)
            await ctx.tick().repeat(2)
            assert ctx.get(dut.done) and outputs(ctx) == out, shape  # held until the next start
            results.append((out, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return results


# ElementCount at 48 bits (spec.NUMEL_BITS): 2**48 - 1 elements pass, 2**48 overflow, zero dims
# count as 1; at 16 bits, products around 2**16.
NUMEL_48 = [
    (), (0,), (0, (1 << 48) - 1), (0, 1 << 48), ((1 << 48) - 1, 0), (0, 1 << 63), (0, U64),
    (1 << 24, 1 << 24), (1 << 24, (1 << 24) - 1), (1 << 24, 0, (1 << 24) - 1), (2, 3, 20, 21),
    (2**47, 3, 20, 21), (2**47, 2), (2**47, 1, 1, 1, 1, 1, 1, 1), (64,) * 8, (63,) * 8,
    (0, 0, 0, 0, 0, 0, 0, 0), (65535, 65537, 65535), (65535, 65537, 65536),
]
NUMEL_16 = [(65535,), (65536,), (255, 257), (256, 256), (0, 65535, 0), (0, 65536), (U64, 0),
            (2, 2, 2, 2, 2, 2, 2, 4096), (2, 2, 2, 2, 2, 2, 2, 8191)]


@pytest.mark.parametrize("count_bits", [16, 48])
def test_element_count_matches_spec(count_bits, seed):
    shapes = {16: NUMEL_16, 48: NUMEL_48}[count_bits] + edge_shapes()[::5] + random_shapes(
        random.Random(seed * 7 + count_bits), 20)
    dut = ElementCount(count_bits=count_bits)
    results = _simulate_shapes(dut, shapes, lambda ctx: bool(ctx.get(dut.overflow)),
                               dut.latency(8))
    overflowed = 0
    for shape, (out, cycles) in zip(shapes, results, strict=True):
        assert out == numel_overflow_model(shape, count_bits=count_bits), shape
        assert cycles == dut.latency(len(shape)), shape
        overflowed += out
    assert 0 < overflowed < len(shapes)
    if count_bits == spec.NUMEL_BITS:
        assert dut.latency(4) == 54 and dut.latency(8) == 106  # ElementCount's docstring
        assert numel_overflow_model((0, spec.MAX_NUMEL)) is False
        assert numel_overflow_model((0, spec.MAX_NUMEL + 1)) is True


def test_parameters_are_checked():
    for bad in (0, 65, True, "32", 16.0):
        with pytest.raises(ValueError, match="count_bits"):
            Geometry(count_bits=bad)
        with pytest.raises(ValueError, match="count_bits"):
            GroupWalker(count_bits=bad)
        with pytest.raises(ValueError, match="count_bits"):
            counts_model((), count_bits=bad)


def test_model_matches_doc_examples():
    for shape, (groups, nblocks) in DOC_EXAMPLES.items():
        got = counts_model(shape)
        assert (got.groups, got.nblocks, got.overflow) == (groups, nblocks, False), shape
    assert counts_model((2, 3, 4, 5, 9)).group_stride == 4
    assert counts_model((2**40, 2**40, 0, 5)) == (0, 2**32 - 1, 0, 1, True)
    assert counts_model((2**40, 2**40, 0, 5), count_bits=41) == (0, 2**40, 0, 1, False)


@pytest.mark.parametrize("count_bits", [1, 16, 32, 63, 64])
def test_geometry_matches_spec(count_bits, seed):
    rng = random.Random(seed * 100 + count_bits)
    shapes = {
        1: TINY_1,
        16: OVERFLOW_16 + edge_shapes()[::3] + random_shapes(rng, 40),
        32: list(DOC_EXAMPLES) + edge_shapes() + random_shapes(rng, 40),
        63: OVERFLOW_64,
        64: OVERFLOW_64 + list(DOC_EXAMPLES) + random_shapes(rng, 10),
    }[count_bits]
    dut, results = simulate_geometry(shapes, count_bits)
    assert dut.latency == 7 * -(-count_bits // 4) + 26
    if count_bits == 32:
        assert dut.latency == 82  # the figure in Geometry's docstring and hw/README.md
    overflowed = 0
    for shape, (out, cycles) in zip(shapes, results, strict=True):
        assert out == tuple(counts_model(shape, count_bits=count_bits)), shape
        assert cycles == dut.latency, shape
        overflowed += out[-1]
    if count_bits in (16, 63, 64):
        assert 0 < overflowed < len(shapes)  # the tables hold both kinds


WALK_SHAPES = [
    (), (1,), (150,), (0,), (3, 50), (0, 5), (7, 9, 10), (3, 1, 1), (1, 1, 1, 1), (2, 3, 5, 9),
    (2, 3, 0, 5), (2, 3, 4, 5, 9), (2, 2, 1, 3, 9, 9), (3, 2, 2, 3, 1, 9),
]


def test_group_walker_matches_reference(seed):
    """Geometry feeds GroupWalker as a parser would; each shape is walked twice: a random prefix,
    then a restart and the whole frame, with random idle cycles between the blocks."""
    rng = random.Random(seed)
    m = Module()
    m.submodules.geo = geo = Geometry(count_bits=16)
    m.submodules.walk = walk = GroupWalker(count_bits=16)
    m.d.comb += [walk.blocks_per_plane.eq(geo.blocks_per_plane),
                 walk.group_stride.eq(geo.group_stride), walk.groups.eq(geo.groups)]
    walks = []

    async def walk_blocks(ctx, n):
        ctx.set(walk.start, 1)
        await ctx.tick()
        ctx.set(walk.start, 0)
        seen = []
        for _ in range(n):
            seen.append(ctx.get(walk.group))
            while rng.random() < 0.3:  # an idle cycle: the group holds
                await ctx.tick()
                assert ctx.get(walk.group) == seen[-1]
            ctx.set(walk.next, 1)
            await ctx.tick()
            ctx.set(walk.next, 0)
        return seen

    async def testbench(ctx):
        assert ctx.get(walk.group) == 0
        for shape in WALK_SHAPES:
            ctx.set(geo.shape, ShapeLayout.const([*shape, *[0] * (8 - len(shape))]))
            ctx.set(geo.ndim, len(shape))
            ctx.set(geo.start, 1)
            await ctx.tick()
            ctx.set(geo.start, 0)
            while not ctx.get(geo.done):
                await ctx.tick()
            nblocks = ctx.get(geo.nblocks)
            prefix = await walk_blocks(ctx, rng.randint(0, nblocks))
            walks.append((shape, prefix, await walk_blocks(ctx, nblocks)))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert len(walks) == len(WALK_SHAPES)
    for shape, prefix, full in walks:
        expected = reference.block_groups(spec.geometry(shape)).tolist()
        assert full == expected, shape
        assert prefix == expected[:len(prefix)], shape
    assert max(max(full, default=0) for _, _, full in walks) == 6  # groups were walked


def test_group_walker_zero_inputs_count_like_one():
    """Inputs Geometry never gives a frame with blocks (0 blocks a plane, 0 groups, stride 0)
    still walk by the formula with each 0 read as 1, and a group count of 1 stays at group 0."""
    dut = GroupWalker(count_bits=8)
    cases = [(0, 1, 3), (2, 0, 3), (1, 1, 0), (3, 2, 1), (1, 2, 255), (255, 255, 255)]
    seen = []

    async def testbench(ctx):
        for bpp, stride, groups in cases:
            ctx.set(dut.blocks_per_plane, bpp)
            ctx.set(dut.group_stride, stride)
            ctx.set(dut.groups, groups)
            ctx.set(dut.start, 1)
            ctx.set(dut.next, 1)  # start wins
            await ctx.tick()
            ctx.set(dut.start, 0)
            groups_seen = []
            for _ in range(24):
                groups_seen.append(ctx.get(dut.group))
                await ctx.tick()
            ctx.set(dut.next, 0)
            seen.append(groups_seen)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    for (bpp, stride, groups), got in zip(cases, seen, strict=True):
        expected = [b // max(bpp, 1) // max(stride, 1) % max(groups, 1) for b in range(24)]
        assert got == expected, (bpp, stride, groups)
