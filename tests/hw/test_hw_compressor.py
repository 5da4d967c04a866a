"""Compressor: parameters, and Verilator runs of sim/test_compressor.py that compare every index
entry and payload byte with reference frames (``Codec(mode=..., backend="numpy")``) of random,
digits-CNN and edge-case tensors, inserters crossed. Each configuration is built once."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from actpack.codec import Codec
from actpack.codec.frame import Kind, unpack_index
from actpack.hw.compressor import Compressor
from actpack.hw.regs import GATEWARE_MODES
from actpack.sim.build import build
from actpack.sim.frames import BUNDLE, bundle_prefix, compressor_bundle, frame_case, write_case

_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _codec(mode: str, case: str) -> Codec:
    if mode == "eb":
        return Codec(mode="eb", error_bound=1e-3 if case == "edge" else 1e-2, backend="numpy")
    if mode == "dct":  # the build holds optH: the testbench loads the frame's table first
        return Codec(mode="dct", table="optL" if case == "real" else "optH", backend="numpy")
    return Codec(mode=mode, backend="numpy")


@pytest.fixture(scope="module")
def cnn() -> torch.Tensor:
    """Conv and ReLU outputs of the digits CNN (tests/codec/activations.py), 4 images each."""
    path = Path(__file__).parents[1] / "codec" / "activations.py"
    spec = importlib.util.spec_from_file_location("_actpack_tests_hw_activations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    acts = module.digits_activations(batch=16, steps=40)
    return torch.cat([acts["conv1"][:4], acts["relu1"][:4]])


def _edge(rng) -> dict[str, torch.Tensor]:
    """All-zero plane, NaN/inf blocks, saturating outliers (eb bound failures), tiny values,
    and a one-block tensor."""
    x = torch.from_numpy(rng.standard_normal((1, 4, 8, 16)).astype(np.float32))
    x[0, 0] = 0
    x[0, 1, 0, 0] = float("nan")
    x[0, 1, 3, 12] = float("inf")
    x[0, 1, 5, 13] = -float("inf")
    x[0, 2] *= 30
    x[0, 2, 2, 2] = 5e4  # the group's max: the rest saturate in no mode, this block fails eb
    x[0, 2, 6, 9] = -6e4
    x[0, 3] *= 1e-6
    return {"edge": x, "single": torch.from_numpy(rng.standard_normal((5, 7)).astype(np.float32))}


def _tensors(cnn, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    noisy = rng.standard_normal((2, 3, 16, 24)) * np.array([0.05, 1, 30])[None, :, None, None]
    noisy[1] = np.maximum(noisy[1], 0)
    return {"random": torch.from_numpy(noisy.astype(np.float32)), "real": cnn, **_edge(rng)}


def _write_cases(folder: Path, cnn, seed: int, mode: str, dtype: str, lanes: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for name, t in _tensors(cnn, seed).items():
        codec = _codec(mode, name)
        t = t.to(_TORCH[dtype])
        case = frame_case(t, codec)
        k, _, lengths = unpack_index(case["index"])
        typical = lanes == 1 and name == "real" and not (k == Kind.RAW).any() and (
            lengths <= 128).all()
        write_case(folder / f"{name}.npz", t, codec, full_rate=bool(typical))
        kinds[name] = set(k.tolist())
    return kinds


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "jpeg"}, "mode"), ({"mode": "dct", "dtype": "float64"}, "dtype"),
    ({"mode": "sfpr8", "lanes": 3}, "lanes"), ({"mode": "dct", "table": "jpeg0"}, "table"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Compressor(**kwargs)


# Not every (mode, dtype, lanes): each is a Verilator build. Together they cover every mode
# (test_verilator_builds_cover_every_mode).
VERILATOR_CASES = [("dct", "float32", 1), ("eb", "float32", 1), *BUNDLE]


def test_verilator_builds_cover_every_mode():
    assert {mode for mode, _, _ in VERILATOR_CASES} == {m.label for m in GATEWARE_MODES}


@pytest.mark.parametrize("mode, dtype, lanes", VERILATOR_CASES)
def test_verilator_compressor(verilator, seed, cnn, tmp_path, mode, dtype, lanes):
    """Every index entry and payload byte of reference frames (random, digits CNN, edge cases,
    one block), inserters crossed; no input stall on the CNN data at one lane. The small
    configurations share one build (``frames.BUNDLE``); dct and eb have one each."""
    kinds = _write_cases(tmp_path / "stim", cnn, seed, mode, dtype, lanes)
    if mode != "mask":  # the edge tensor reaches RAW blocks (NaN/inf; eb: failed bounds too)
        assert Kind.RAW in kinds["edge"], kinds
    env = {"ACTPACK_TB_MODE": mode, "ACTPACK_TB_DTYPE": dtype, "ACTPACK_TB_LANES": str(lanes),
           "ACTPACK_TB_SEED": str(seed), "ACTPACK_TB_STIM": str(tmp_path / "stim")}
    if (mode, dtype, lanes) in BUNDLE:
        sim = build(compressor_bundle, name="compressor_bundle", params={"configs": BUNDLE})
        env["ACTPACK_TB_PREFIX"] = bundle_prefix(mode, dtype, lanes)
    else:
        sim = build(Compressor, name=f"compressor_{mode}_{dtype}_{lanes}",
                    params={"mode": mode, "dtype": dtype, "lanes": lanes})
    sim.run("actpack.sim.test_compressor", seed=seed, env=env)
