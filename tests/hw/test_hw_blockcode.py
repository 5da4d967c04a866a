"""Zigzag / BlockEncoder: the software model ``block_model`` against ``reference.compress``,
parameters, and Verilator runs of sim/test_blockcode.py for every mode."""

import numpy as np
import pytest

from actpack.codec import reference
from actpack.codec.frame import Header, Kind, parse_frame, unpack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import resolve_table
from actpack.hw.blockcode import BlockEncoder, Zigzag, block_model
from actpack.sim.build import build

_PARAM = {Mode.DCT: 4.5, Mode.SFPR8: 4.5, Mode.EB: 1e-3, Mode.MASK: 0.0}


def _tensor(rng, dtype: DType) -> np.ndarray:
    """Bit patterns of a (2, 3, 16, 24) tensor: smooth and noisy planes, ReLU'd and not, a wide
    dynamic range (eb codes beyond 15 bits), an all-zero plane and a NaN and an inf."""
    yy, xx = np.mgrid[0:16, 0:24]
    x = rng.normal(0, 1, (2, 3, 16, 24)) * np.array([0.05, 1, 30])[None, :, None, None]
    x += np.sin(yy / 3 + xx / 5)[None, None]
    x[0, 1] = np.maximum(x[0, 1], 0)
    x[1, 0] = 0
    x[1, 2, 3, 4] = np.nan
    x[1, 2, 9, 17] = np.inf
    if dtype is DType.FLOAT32:
        return x.astype(np.float32).view(np.uint32)
    return x.astype(np.float16).view(np.uint16)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
def test_block_model_is_reference_compress(monkeypatch, mode, dtype):
    """``block_model`` on the symbols ``reference.compress`` codes gives the frame's index
    entries and payload bytes (RAW blocks: the entry; their bytes are the input values)."""
    seen = []
    symbols_of = reference._symbols

    def spy(*args):
        out = symbols_of(*args)
        seen.append(out)  # compress ORs the non-finite blocks into force_raw in place
        return out

    monkeypatch.setattr(reference, "_symbols", spy)
    table_id, table_arg, table = resolve_table("optL") if mode is Mode.DCT else (0, 0, None)
    bits = _tensor(np.random.default_rng(int(mode) * 7 + int(dtype)), dtype)
    header = Header(mode, dtype, bits.shape, _PARAM[mode], table_id, table_arg, table)
    _, index, payload = parse_frame(reference.compress(bits, header))
    (symbols, force), = seen
    kinds, _, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for b in range(len(index)):
        entry, chunk = block_model(symbols[b], mode=mode, dtype=dtype, force_raw=force[b])
        assert entry == index[b], f"block {b}"
        if kinds[b] != Kind.RAW:
            assert chunk == bytes(payload[offsets[b]:offsets[b + 1]]), f"block {b}"
    # the tensor reaches every kind the mode has
    want = {Kind.ZERO, Kind.CODED} | ({Kind.RAW, Kind.DENSE} if mode is not Mode.MASK else set())
    assert set(kinds.tolist()) == want


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "jpeg"}, "mode"), ({"mode": "dct", "dtype": "float64"}, "dtype"),
    ({"mode": "eb", "dtype": 4}, "dtype"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockEncoder(**kwargs)


def test_zigzag_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        Zigzag(shape="wide")


def test_verilator_zigzag(verilator, seed):
    """Scan order, 8 values/cycle with no bubbles, latency 9, inserters crossed."""
    sim = build(Zigzag, name="zigzag")
    sim.run("actpack.sim.test_blockcode", seed=seed,
            env={"ACTPACK_TB_UNIT": "zigzag", "ACTPACK_TB_SEED": str(seed)})


@pytest.mark.parametrize("mode, dtype", [
    # one dtype per mode (a build costs ~50 s): float16's 128-byte limit is reached by dct edge
    # blocks (levels up to 2**14), eb float32 reaches the 132-byte, 9-beat blocks
    ("dct", "float16"), ("sfpr8", "float32"), ("eb", "float32"), ("mask", "float32"),
])
def test_verilator_encoder(verilator, seed, mode, dtype):
    """Every index entry and byte vs ``block_model`` on random, real and edge symbols, inserters
    crossed; throughput and latency on real data (sim/test_blockcode.py)."""
    sim = build(BlockEncoder, name=f"blockenc_{mode}_{dtype}",
                params={"mode": mode, "dtype": dtype})
    sim.run("actpack.sim.test_blockcode", seed=seed,
            env={"ACTPACK_TB_UNIT": "encoder", "ACTPACK_TB_MODE": mode,
                 "ACTPACK_TB_DTYPE": dtype, "ACTPACK_TB_SEED": str(seed)})
