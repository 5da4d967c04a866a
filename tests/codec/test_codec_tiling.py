"""The CPU kernels' tiling (what the card's driver streams) against the reference's."""

from __future__ import annotations

import numpy as np
import pytest

from actpack.codec import cpukernels, reference, torchpath
from actpack.codec.spec import geometry

SHAPES = [(1,), (63,), (64,), (200,), (8, 8), (9, 17), (2, 3, 13, 8), (3, 1, 24, 40), (5, 0, 8),
          (2, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [np.uint32, np.uint16])
@pytest.mark.parametrize("threads", [1, 4])
def test_tile_and_untile_match_the_reference(shape, bits, threads):
    geo = geometry(shape)
    flat = np.random.default_rng(1).integers(0, np.iinfo(bits).max, geo.numel, dtype=bits)
    g = torchpath.cpu_geometry(geo)[0]
    tiles = cpukernels.tile_blocks(flat, g, geo.nblocks, threads=threads)
    want = (reference.tile(flat, geo).reshape(-1, 64) if geo.nblocks
            else np.zeros((0, 64), bits))
    assert tiles.dtype == bits and np.array_equal(tiles, want)
    out = np.zeros(geo.numel, bits)
    cpukernels.untile_blocks(tiles, g, out, threads=threads)
    assert np.array_equal(out, flat)
