"""Zigzag / BlockEncoder: the software model ``block_model`` against ``reference.compress``,
parameters, and Verilator runs of sim/test_blockcode.py for every mode (random, real-ish,
digits-CNN, long and edge-case symbols)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from actpack.codec import reference
from actpack.codec.frame import Header, Kind, parse_frame, unpack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import resolve_table
from actpack.hw.blockcode import BlockEncoder, Zigzag, block_model
from actpack.hw.regs import GATEWARE_MODES
from actpack.sim.build import build

_PARAM = {Mode.DCT: 4.5, Mode.SFPR8: 4.5, Mode.EB: 1e-3, Mode.MASK: 0.0}
_CNN_BLOCKS = 160  # digits-CNN blocks per encoder run (simulation time)


def _compress(bits: np.ndarray, mode: Mode, dtype: DType, param: float):
    """``reference.compress`` of ``bits``: (frame, the blocks' symbols, their force_raw flags)
    as compress computed them (its ``_symbols`` is wrapped for the call)."""
    seen = []
    symbols_of = reference._symbols

    def spy(*args):
        seen.append(symbols_of(*args))  # compress ORs non-finite blocks into force_raw in place
        return seen[-1]

    table_id, table_arg, table = resolve_table("optL") if mode is Mode.DCT else (0, 0, None)
    header = Header(mode, dtype, bits.shape, param, table_id, table_arg, table)
    reference._symbols = spy
    try:
        frame = reference.compress(bits, header)
    finally:
        reference._symbols = symbols_of
    (symbols, force), = seen
    return frame, symbols, force


def _bits(x: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype is DType.FLOAT32:
        return x.astype(np.float32).view(np.uint32)
    return x.astype(np.float16).view(np.uint16)


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
    return _bits(x, dtype)


@pytest.mark.parametrize("mode", sorted(GATEWARE_MODES))
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
def test_block_model_is_reference_compress(mode, dtype):
    """``block_model`` on the symbols ``reference.compress`` codes gives the frame's index
    entries and payload bytes (RAW blocks: the entry; their bytes are the input values)."""
    bits = _tensor(np.random.default_rng(int(mode) * 7 + int(dtype)), dtype)
    frame, symbols, force = _compress(bits, mode, dtype, _PARAM[mode])
    _, index, payload = parse_frame(frame)
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


@pytest.fixture(scope="module")
def cnn_activations() -> dict[str, np.ndarray]:
    """Conv and ReLU outputs of the digits CNN of tests/codec/activations.py (float32)."""
    path = Path(__file__).parents[1] / "codec" / "activations.py"
    spec = importlib.util.spec_from_file_location("_actpack_tests_hw_activations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    acts = module.digits_activations(batch=16, steps=40)
    return {k: acts[k].numpy() for k in ("conv1", "relu1", "conv2", "relu2")}


def _cnn_symbols(acts, mode: Mode, dtype: DType, path: Path) -> Path:
    """A sample of the blocks ``reference.compress`` makes of the CNN's activations (for eb
    at two bounds), saved for the testbench."""
    layers = ("relu1", "relu2") if mode is Mode.MASK else ("conv1", "relu1", "conv2", "relu2")
    params = (1e-2, 1e-3) if mode is Mode.EB else (_PARAM[mode],)
    symbols, force = [], []
    for layer in layers:
        for param in params:
            _, s, f = _compress(_bits(acts[layer], dtype), mode, dtype, param)
            symbols.append(s)
            force.append(f)
    symbols, force = np.concatenate(symbols), np.concatenate(force)
    pick = np.sort(np.random.default_rng(0).choice(len(symbols), _CNN_BLOCKS, replace=False))
    np.savez(path, symbols=symbols[pick], force_raw=force[pick])
    return path


def test_verilator_zigzag(verilator, seed):
    """Scan order, 8 values/cycle with no bubbles, latency 9, inserters crossed."""
    sim = build(Zigzag, name="zigzag")
    sim.run("actpack.sim.test_blockcode", seed=seed,
            env={"ACTPACK_TB_UNIT": "zigzag", "ACTPACK_TB_SEED": str(seed)})


# one dtype per mode (a build costs ~50 s): float16's 128-byte limit is reached by dct edge
# blocks (levels up to 2**14), eb float32 reaches the 132-byte, 9-beat blocks
ENCODER_BUILDS = [("dct", "float16"), ("sfpr8", "float32"), ("eb", "float32"), ("mask", "float32")]


def test_encoder_builds_cover_every_mode():
    assert sorted(mode for mode, _ in ENCODER_BUILDS) == sorted(m.label for m in GATEWARE_MODES)


@pytest.mark.parametrize("mode, dtype", ENCODER_BUILDS)
def test_verilator_encoder(verilator, seed, cnn_activations, tmp_path, mode, dtype):
    """Every index entry and byte vs ``block_model`` on random, real-ish, digits-CNN, long and
    edge symbols, inserters crossed; throughput and latency without them
    (sim/test_blockcode.py)."""
    cnn = _cnn_symbols(cnn_activations, Mode.parse(mode), DType[dtype.upper()],
                       tmp_path / "cnn.npz")
    sim = build(BlockEncoder, name=f"blockenc_{mode}_{dtype}",
                params={"mode": mode, "dtype": dtype})
    sim.run("actpack.sim.test_blockcode", seed=seed,
            env={"ACTPACK_TB_UNIT": "encoder", "ACTPACK_TB_MODE": mode,
                 "ACTPACK_TB_DTYPE": dtype, "ACTPACK_TB_SEED": str(seed),
                 "ACTPACK_TB_CNN": str(cnn)})
