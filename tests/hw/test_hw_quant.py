# amaranth: UnusedElaboratable=no
"""Quantizer / Dequantizer: the reciprocal division, parameters, and Verilator runs.

The first line silences Amaranth's UnusedElaboratable for components this file creates: the
bad-table tests leave half-constructed components that warn when garbage-collected later, in
whatever test then runs (an error under filterwarnings=error).
"""

import numpy as np
import pytest

from actpack.codec import spec
from actpack.hw.quant import LEVEL, RECIP_SHIFT, Dequantizer, Quantizer, reciprocal
from actpack.sim.build import build

MAGNITUDES = np.arange(0, 2049)[:, None]  # every |y| a 12-bit coefficient can have
ENTRIES = np.arange(1, 256)[None, :]


def _exact(shift: int) -> bool:
    recip = -(-(1 << shift) // ENTRIES)
    return np.array_equal((MAGNITUDES * recip) >> shift, MAGNITUDES // ENTRIES)


def test_reciprocal_division_is_exact_exhaustively():
    recip = np.array([reciprocal(int(q)) for q in ENTRIES[0]])[None, :]
    assert np.array_equal((MAGNITUDES * recip) >> RECIP_SHIFT, MAGNITUDES // ENTRIES)
    assert reciprocal(0) == 0


def test_smallest_exact_shift():
    # 19 bits is the least that works; RECIP_SHIFT = 20 keeps a bit of margin (documented)
    assert _exact(19) and not _exact(18)
    assert RECIP_SHIFT >= 19


def test_level_port_covers_every_coded_level():
    assert LEVEL.signed and (1 << (LEVEL.width - 1)) >= 1 << (spec.WIDTH_MAX - 1)


@pytest.mark.parametrize("cls", [Quantizer, Dequantizer])
@pytest.mark.parametrize("table, error", [
    ("optX", ValueError), ([8] * 63, ValueError), ([0] + [8] * 63, ValueError),
    ([1.5] * 64, ValueError), (3, ValueError),
])
def test_bad_initial_table(cls, table, error):
    with pytest.raises(error, match="table"):
        cls(table=table)


@pytest.mark.parametrize("unit, cls, order", [
    ("quant", Quantizer, "raster"), ("quant", Quantizer, "zigzag"),
    ("dequant", Dequantizer, "raster"), ("dequant", Dequantizer, "zigzag")])
def test_verilator(verilator, seed, unit, cls, order):
    """Bit-exact vs reference.quantize / dequantize: initial table, tables written through the
    port (random, optL, jpeg10), random/real/edge data, inserters crossed (sim/test_quant.py);
    also in the zigzag order the engines use."""
    sim = build(cls, name=f"{unit}_{order}", params={"table": "optH", "order": order})
    sim.run("actpack.sim.test_quant", seed=seed,
            env={"ACTPACK_TB_UNIT": unit, "ACTPACK_TB_TABLE": "optH",
                 "ACTPACK_TB_SEED": str(seed), "ACTPACK_TB_ORDER": order})
