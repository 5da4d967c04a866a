"""Decompressor: parameters, the per-block model against ``reference.decompress``, and Verilator
runs of sim/test_decompressor.py that compare every output bit with the reference decoder on
random, digits-CNN and edge-case tensors (ZERO/RAW/DENSE blocks, NaN/inf, one block) and
malformed blocks, inserters crossed, plus a reset mid-block. Each configuration is built once."""

from pathlib import Path

import numpy as np
import pytest
import torch

from actpack.codec import Codec, reference
from actpack.codec.frame import Kind, unpack_index
from actpack.codec.spec import DType
from actpack.hw.decompressor import Decompressor
from actpack.hw.regs import GATEWARE_MODES
from actpack.sim.build import build
from actpack.sim.decompcases import block_model, write_case
from actpack.sim.frames import frame_case

_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _codec(mode: str, case: str) -> Codec:
    if mode == "eb":
        return Codec(mode="eb", error_bound=1e-3 if case == "edge" else 1e-2, backend="numpy")
    if mode == "dct":  # the build holds optH: the testbench loads the frame's table first
        return Codec(mode="dct", table="optL" if case == "full_rate" else "optH",
                     backend="numpy")
    return Codec(mode=mode, backend="numpy")


@pytest.fixture(scope="module")
def cnn() -> torch.Tensor:
    """conv1 and relu1 outputs of ``actpack.data.digits_cnn`` (16 x 16 input, briefly trained)
    on one test image: 2 x 16 channels of 16 x 16, 128 blocks."""
    from actpack import data

    model = data.digits_cnn(size=16)
    data.train_digits(model, steps=10, progress=False)
    acts = data.capture_activations(model, data.digits_batch(1).x)
    return torch.cat([acts["conv1"], acts["relu1"]])


def _tensors(cnn, seed: int) -> dict[str, torch.Tensor]:
    """random (three magnitudes, a ReLU'd image), real (CNN), edge (zero plane, NaN/inf,
    saturating outliers, tiny values: ZERO, RAW and DENSE blocks), single (one block)."""
    rng = np.random.default_rng(seed)
    noisy = rng.standard_normal((1, 3, 16, 16)) * np.array([0.05, 1, 30])[None, :, None, None]
    x = rng.standard_normal((1, 4, 8, 16)).astype(np.float32)
    x[0, 0] = 0
    x[0, 1, 0, 0] = float("nan")
    x[0, 1, 3, 12] = float("inf")
    x[0, 1, 5, 13] = -float("inf")
    x[0, 2] *= 30
    x[0, 2, 2, 2] = 5e4
    x[0, 2, 6, 9] = -6e4
    x[0, 3] *= 1e-6
    return {"random": torch.from_numpy(noisy.astype(np.float32)), "full_rate": cnn,
            "edge": torch.from_numpy(x),
            "single": torch.from_numpy(rng.standard_normal((5, 7)).astype(np.float32))}


def _corruptions(case: dict, rng, mode: str) -> list:
    """Malformed blocks among good ones: a flipped bit in every block of the first few with
    payload (some stay well-formed: the model says), a length one short and one long, a ZERO
    entry with a length, a RAW entry of the wrong length, a level of 200; each followed by good
    blocks."""
    kinds, _, lengths = unpack_index(case["index"])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    payload = bytes(case["payload"])
    coded = [b for b in range(len(kinds)) if lengths[b] > 1 and kinds[b] != Kind.RAW]
    out = []
    for j, b in enumerate(coded[:-1:3][:8]):  # every third: the blocks after it stay intact
        entry = int(case["index"][b])
        chunk = bytearray(payload[offsets[b]:offsets[b + 1]])
        if j % 4 == 0:
            k = int(rng.integers(8 * len(chunk)))
            chunk[k // 8] ^= 1 << (k % 8)
        elif j % 4 == 1:
            chunk, entry = chunk[:-1], entry - 1
        elif j % 4 == 2:
            chunk, entry = chunk + b"\x5a", entry + 1
        else:
            chunk = bytearray(16)
            entry = (int(Kind.RAW) << 14) | 16
        out.append((b, entry, bytes(chunk)))
    if mode != "mask" and len(coded) > 2:  # a level of 200: sfpr8 flags it (#27), others decode
        symbols = np.zeros(64, dtype=np.int64)
        symbols[5] = 200
        mb, chunk = reference.encode_block(symbols)
        out.append((coded[1], (int(Kind.CODED) << 14) | ((mb - 1) << 11) | len(chunk), chunk))
    zeros = [b for b in range(len(kinds) - 1) if kinds[b] == Kind.ZERO]
    if zeros:
        out.append((zeros[0], (int(Kind.ZERO) << 14) | 3, b"abc"))
    return out


def _write_cases(folder: Path, cnn, seed: int, mode: str, dtype: str, *, lanes: int,
                 malformed: bool):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds, bad = {}, 0
    for name, t in _tensors(cnn, seed).items():
        codec = _codec(mode, name)
        case = frame_case(t.to(_TORCH[dtype]), codec)
        k, _, lengths = unpack_index(case["index"])
        if name == "full_rate" and (lanes > 1 or (k == Kind.RAW).any() or (lengths > 96).any()):
            name = "real"  # not one lane on typical data: no bubble check
        write_case(folder / f"{name}.npz", case, mode=mode, dtype=DType[dtype.upper()])
        kinds[name] = set(k.tolist())
        if malformed and name == "random":
            corrupt = _corruptions(case, rng, mode)
            path = write_case(folder / "malformed.npz", case, mode=mode,
                              dtype=DType[dtype.upper()], corrupt=corrupt)
            with np.load(path) as f:
                bad = int(f["bad"].sum())
    return kinds, bad


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "jpeg"}, "mode"), ({"mode": "dct", "dtype": "float64"}, "dtype"),
    ({"mode": "sfpr8", "lanes": 3}, "lanes"), ({"mode": "dct", "table": "jpeg0"}, "table"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decompressor(**kwargs)


@pytest.mark.parametrize("mode", [m.label for m in sorted(GATEWARE_MODES)])
def test_block_model_is_the_reference(cnn, mode):
    """The testbench's per-block model, untiled, is ``reference.decompress`` of the frame."""
    t = _tensors(cnn, 3)["edge"]
    codec = _codec(mode, "edge")
    frame = bytes(codec.compress(t))
    case = frame_case(t, codec)
    kinds, mbs, lengths = unpack_index(case["index"])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    blocks = [block_model(int(kinds[b]), int(mbs[b]),
                          bytes(case["payload"][offsets[b]:offsets[b + 1]]), int(case["r"][b]),
                          mode=mode, dtype=DType.FLOAT32, table=case.get("table"))
              for b in range(len(kinds))]
    out, header = reference.decompress(frame)
    flat = reference.untile(np.array(blocks).reshape(-1, 8, 8), header.geometry)
    assert np.array_equal(flat.reshape(out.shape).view(np.uint32), out.view(np.uint32))


@pytest.mark.parametrize("mode, dtype, lanes", [
    ("sfpr8", "float32", 1), ("dct", "float32", 1), ("eb", "float32", 1), ("mask", "float32", 1),
    ("sfpr8", "bfloat16", 1), ("dct", "float16", 1), ("sfpr8", "float32", 2),
    ("sfpr8", "float32", 4),
])
def test_verilator_decompressor(verilator, seed, cnn, tmp_path, mode, dtype, lanes):
    """Every output bit of the reference decoder's blocks (random, digits CNN, edge cases, one
    block; malformed blocks flagged with the next decoding fine), inserters crossed; no output
    bubble on typical CNN data at one lane; a reset mid-block."""
    full = lanes == 1 and dtype == "float32"
    kinds, bad = _write_cases(tmp_path / "stim", cnn, seed, mode, dtype, lanes=lanes,
                                malformed=full)
    if mode != "mask":  # the edge tensor reaches RAW blocks (NaN/inf; eb: failed bounds too)
        assert Kind.RAW in kinds["edge"], kinds
    if full:
        assert bad >= 3, bad
    sim = build(Decompressor, name=f"decompressor_{mode}_{dtype}_{lanes}",
                params={"mode": mode, "dtype": dtype, "lanes": lanes})
    sim.run("actpack.sim.test_decompressor", seed=seed,
            env={"ACTPACK_TB_MODE": mode, "ACTPACK_TB_DTYPE": dtype,
                 "ACTPACK_TB_LANES": str(lanes), "ACTPACK_TB_SEED": str(seed),
                 "ACTPACK_TB_STIM": str(tmp_path / "stim")})
