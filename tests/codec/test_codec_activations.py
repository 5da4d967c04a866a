"""Byte equality of the numpy model and the torch path (compiled CPU kernels and eager ops) on
real activations: the outputs of the conv, ReLU, pool and linear layers of a small CNN trained on
scikit-learn's digits."""

from __future__ import annotations

import functools

import pytest
import torch
from codec_testlib import bits, compress_eager, decompress_eager, load_local

import actpack

activations = load_local("activations")

CONFIGS = [
    {"mode": "dct", "table": "optL"},
    {"mode": "dct", "table": "optH"},
    {"mode": "dct", "table": "optsL"},
    {"mode": "dct", "table": "optsH"},
    {"mode": "dct", "table": "jpeg50", "range_max": 3.0},
    {"mode": "dct", "table": "jpeg90"},
    {"mode": "eb", "error_bound": 1e-3},
    {"mode": "eb", "error_bound": 0.05},
    {"mode": "eb2", "error_bound": 1e-3},
    {"mode": "eb2", "error_bound": 0.05},
    {"mode": "sfpr8"},
    {"mode": "mask"},
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@functools.lru_cache(maxsize=1)
def _acts():
    return activations.digits_activations(batch=16, steps=40)


def test_digits_cnn_trains_and_captures_every_layer_kind():
    losses = activations.training_losses(steps=40)
    # Training did something: the last losses are well below the first (chance is ln 10 = 2.3)
    # and the network classifies far above chance (0.1).
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert activations.accuracy(steps=40) > 0.6
    acts = _acts()
    assert list(acts) == ["conv1", "relu1", "conv2", "relu2", "pool", "fc1", "relu3", "fc2"]
    assert acts["conv1"].shape == (16, 8, 8, 8)
    assert acts["pool"].shape == (16, 16, 4, 4)
    assert acts["fc2"].shape == (16, 10)
    assert torch.equal(acts["relu1"], torch.relu(acts["conv1"]))
    # ReLU outputs are genuinely sparse: the case zero-value compression is for.
    assert 0.1 < float((acts["relu2"] == 0).float().mean()) < 0.95


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_backends_agree_on_digits_activations(kw, dtype):
    cn = actpack.Codec(**kw, backend="numpy")
    ct = actpack.Codec(**kw, backend="torch")
    for name, act in _acts().items():
        t = act.to(dtype)
        fn, ft = cn.compress(t), ct.compress(t)
        assert bytes(fn) == bytes(ft), f"{name}: frames differ"
        assert compress_eager(kw, t) == bytes(fn), f"{name}: eager torch frame differs"
        dn, dt = cn.decompress(fn), ct.decompress(ft)
        assert torch.equal(bits(dn), bits(dt)), f"{name}: decoded bits differ"
        assert torch.equal(bits(decompress_eager(bytes(fn))), bits(dn)), name
        assert dn.shape == t.shape and dn.dtype == dtype


def test_compression_ratio_on_digits_activations_is_recorded():
    """A sanity figure, not a benchmark: on conv activations (float32) the lossy modes compress
    well below the raw size (JPEG-ACT reports ~8x for dct on real networks; tiny 8x8 planes and
    frame overhead make this smaller here)."""
    t = _acts()["conv2"]
    raw = t.numel() * t.element_size()
    for kw, at_least in [({"mode": "dct", "table": "optH"}, 4.0), ({"mode": "sfpr8"}, 2.5),
                         ({"mode": "mask"}, 20.0)]:
        ratio = raw / actpack.Codec(**kw).compress(t).nbytes
        assert ratio >= at_least, (kw, ratio)
