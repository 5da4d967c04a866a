"""The numpy model and the torch path give identical bytes, and decode to identical bits.

The torch backend has two implementations: compiled kernels (numba) on CPU, which ``Codec`` uses
here, and eager tensor ops, which serve CUDA; both are compared with the numpy model. Over 1,000
generated (codec, tensor) cases in all: every mode, named/jpeg<Q>/custom tables,
range_max and error_bound across their range, float32/float16/bfloat16, rank 0..5, H/W not
multiples of 8, zero and one element, non-contiguous views, NaN/+-Inf/subnormal/huge values.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from codec_testlib import (
    EB_MODES,
    INT_OF,
    MODES,
    VALUE_MODES,
    bits,
    codec_cases,
    compress_all,
    decompress_eager,
    tensors,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actpack
from actpack.codec import reference
from actpack.codec.frame import frame_bound
from actpack.codec.spec import DType, Mode, sfpr_scales
from actpack.codec.tables import DCT_MATRIX, NAMED_TABLES
from actpack.codec.torchpath import TORCH_DTYPES


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def check_backends_agree(kw: dict, t: torch.Tensor) -> None:
    fn, ft, be = compress_all(kw, t)
    bn, bt = bytes(fn), bytes(ft)
    assert bn == bt, f"numpy and torch frames differ for {kw}, shape {tuple(t.shape)}, {t.dtype}"
    assert bn == be, f"numpy and eager torch frames differ for {kw}, {tuple(t.shape)}, {t.dtype}"
    # Format facts that hold for every frame.
    assert len(bn) % 64 == 0
    assert len(bn) <= frame_bound(t.shape, TORCH_DTYPES[t.dtype], Mode.parse(kw["mode"]))
    assert fn.mode == kw["mode"] and fn.dtype == t.dtype and fn.shape == t.shape
    # Both decoders, on the frame object and on plain bytes, give the same bits.
    dn = actpack.decompress(fn, backend="numpy")
    dt = actpack.decompress(bn, backend="torch")
    de = decompress_eager(bn)
    for d in (dn, dt, de):
        assert d.shape == t.shape and d.dtype == t.dtype and d.device == t.device
        assert d.is_contiguous()
    assert torch.equal(bits(dn), bits(dt)), f"decoded bits differ for {kw}, {tuple(t.shape)}"
    assert torch.equal(bits(dn), bits(de)), f"eager decoded bits differ, {kw}, {tuple(t.shape)}"


@given(codec_cases(modes=("dct",)))  # dct only: its tables get their own case budget
@_settings(350)
def test_backends_agree_dct(case):
    check_backends_agree(*case)


@given(codec_cases(modes=("eb",)))
@_settings(250)
def test_backends_agree_eb(case):
    check_backends_agree(*case)


@given(codec_cases(modes=("sfpr8",)))
@_settings(250)
def test_backends_agree_sfpr8(case):
    check_backends_agree(*case)


@given(codec_cases(modes=("mask",)))
@_settings(200)
def test_backends_agree_mask(case):
    check_backends_agree(*case)


@given(st.sampled_from(MODES),
       tensors(dtypes=(torch.float32, torch.bfloat16), min_rank=4, max_rank=4, specials=False,
               scale_exponents=(0,)))
@_settings(60)
def test_backends_agree_nchw_default_parameters(mode, t):
    """The common case of training: NCHW activations with the default parameters."""
    check_backends_agree({"mode": mode, **({"error_bound": 0.01} if mode in EB_MODES else {})}, t)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(INT_OF))
def test_backends_agree_on_multi_block_planes(mode, dtype):
    """Bigger than the generated tensors: many blocks per plane, many channels, mixed kinds of
    blocks (zero, coded, raw) in one frame."""
    g = torch.Generator().manual_seed(7)
    t = torch.randn(3, 5, 21, 37, generator=g)
    t[0, 1] = 0  # an all-zero plane
    t[1, 2, :8, :8] = torch.relu(t[1, 2, :8, :8])
    t[2, 3, 9, 30] = float("nan")
    t[2, 4] *= 1e4  # one channel far larger than the others
    t = t.to(dtype)
    kw = {"mode": mode, **({"error_bound": 0.003} if mode in EB_MODES else {})}
    check_backends_agree(kw, t)
    check_backends_agree(kw, t.transpose(-1, -2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_numpy(mode):
    g = torch.Generator().manual_seed(3)
    for dtype in INT_OF:
        t = (torch.randn(2, 3, 13, 20, generator=g) * 3).to(dtype)
        t[0, 0, 0, 0] = float("inf")
        kw = {"mode": mode, **({"error_bound": 0.01} if mode in EB_MODES else {})}
        fn = actpack.Codec(**kw, backend="numpy").compress(t)
        fc = actpack.Codec(**kw, backend="torch").compress(t.cuda())
        assert bytes(fn) == bytes(fc)
        d = actpack.Codec(**kw).decompress(fc)
        assert d.device.type == "cuda"
        assert torch.equal(bits(d.cpu()), bits(actpack.decompress(fn, backend="numpy")))
    assert DType.FLOAT32 in TORCH_DTYPES.values()


# ----------------------------------------------------------------------------- rounding ties

# Generated tensors rarely land exactly on a rounding tie of the fixed-point DCT (a column-pass
# tie is about one block in a thousand), and a tie is exactly where two implementations of
# "round half up" part ways. These tests build tensors whose SFPR values are chosen blocks that
# hit a tie at each rounding point.

_K = DCT_MATRIX.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _tie_blocks(table_key: tuple[int, ...], per_kind: int = 48) -> np.ndarray:
    """int8-range blocks (n, 8, 8) with a tie in the forward row pass, forward column pass,
    inverse row pass and inverse column pass (for this quantization table), ``per_kind`` each."""
    table = np.array(table_key, dtype=np.uint8)
    rng = np.random.default_rng(sum(table_key))
    p = rng.integers(-127, 128, (100_000, 8, 8))
    p[::2] = np.clip(np.cumsum(p[::2] // 16, axis=2), -127, 127)  # smoother half
    a1 = p @ _K.T
    t = (a1 + (1 << 7)) >> 8
    a2 = _K @ t
    y = (a2 + (1 << 15)) >> 16
    yd = reference.dequantize(reference.quantize(y, table), table)
    a3 = yd @ _K
    t2 = (a3 + (1 << 7)) >> 8
    a4 = _K.T @ t2
    ties = [((a1 & 0xFF) == 0x80), ((a2 & 0xFFFF) == 0x8000), ((a3 & 0xFF) == 0x80),
            ((a4 & 0xFFFF) == 0x8000)]
    chosen = []
    for tie in ties:
        idx = np.flatnonzero(tie.any(axis=(1, 2)))[:per_kind]
        assert idx.size >= 4, "the search found too few ties; widen it"
        chosen.append(p[idx])
    return np.concatenate(chosen)


def _exact_sfpr_tensor(p_blocks: np.ndarray, dtype) -> torch.Tensor:
    """A (n + 2, 1, 8, 8) tensor whose SFPR values at range_max 127/32 are exactly
    ``p_blocks``, plus an anchor block holding +-127 (so the scale is exactly 32) and a block of
    SFPR ties (k + 1/2) / 32."""
    anchor = np.zeros((1, 8, 8))
    anchor[0, 0, 0], anchor[0, 0, 1] = 127, -127
    halves = (np.arange(-128, -64) + 0.5).reshape(1, 8, 8)
    halves[0, 4:] = (np.arange(64, 96) + 0.5).reshape(4, 8)
    vals = np.concatenate([anchor, halves, p_blocks.astype(np.float64)]) / 32
    return torch.from_numpy(vals.astype(np.float32)).unsqueeze(1).to(dtype)


def test_exact_sfpr_tensor_has_scale_32():
    (s,) = sfpr_scales(np.array([127 / 32], dtype=np.float32), 127 / 32)
    assert s.value == 32.0


@pytest.mark.parametrize("dtype", list(INT_OF), ids=str)
@pytest.mark.parametrize("table", [*NAMED_TABLES, "jpeg50", "jpeg95", "ones"])
def test_backends_agree_on_dct_rounding_ties(table, dtype):
    tab = [1] * 64 if table == "ones" else table
    entries = actpack.Codec(mode="dct", table=tab).table
    t = _exact_sfpr_tensor(_tie_blocks(tuple(int(v) for v in entries)), dtype)
    check_backends_agree({"mode": "dct", "table": tab, "range_max": 127 / 32}, t)


@pytest.mark.parametrize("dtype", list(INT_OF), ids=str)
def test_backends_agree_on_sfpr_and_eb_rounding_ties(dtype):
    t = _exact_sfpr_tensor(_tie_blocks(tuple(NAMED_TABLES["optL"].tolist()))[:8], dtype)
    check_backends_agree({"mode": "sfpr8", "range_max": 127 / 32}, t)
    # eb = 2**-6: the pre-quantization scale is exactly 32, so (k + 1/2) / 32 are ties
    check_backends_agree({"mode": "eb", "error_bound": 2.0**-6}, t)
    check_backends_agree({"mode": "eb", "error_bound": 2.0**-6}, t * 3)


# ----------------------------------------------------------------------------- every 16-bit value


def _all_patterns(dtype) -> torch.Tensor:
    """Every bit pattern of a 16-bit dtype (or 2**16 spread over float32), finite ones sorted by
    value, as (n, 8, 8) planes: each block is its own scale group, so every magnitude gets a
    scale of its own and the float conversions are exercised at every exponent."""
    if dtype == torch.float32:
        g = torch.Generator().manual_seed(9)
        pats = torch.randint(-(2**31), 2**31 - 1, (1 << 16,), generator=g, dtype=torch.int64)
        vals = pats.to(torch.int32).view(torch.float32)
    else:
        vals = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = vals[torch.isfinite(vals)]
    ordered = finite[torch.argsort(finite.float(), stable=True)]
    rest = vals[~torch.isfinite(vals)]
    out = torch.cat([ordered, rest])
    n = out.numel() // 64 * 64
    return out[:n].reshape(-1, 8, 8)


@pytest.mark.parametrize("dtype", list(INT_OF), ids=str)
@pytest.mark.parametrize("kw", [
    {"mode": "sfpr8"}, {"mode": "sfpr8", "range_max": 1.0},
    {"mode": "dct", "table": "optL"}, {"mode": "dct", "table": [1] * 64, "range_max": 127 / 32},
    {"mode": "eb", "error_bound": 1e-3}, {"mode": "eb", "error_bound": 3e-7},
    {"mode": "eb", "error_bound": 0.7}, {"mode": "mask"},
], ids=lambda kw: "-".join(str(v)[:6] for v in kw.values()))
def test_backends_agree_on_every_16bit_pattern(kw, dtype):
    check_backends_agree(kw, _all_patterns(dtype))


# ----------------------------------------------------------------------------- volume


@pytest.mark.parametrize("dtype", list(INT_OF), ids=str)
@pytest.mark.parametrize("mode", VALUE_MODES)  # rounding ties and code widths: modes with values
def test_backends_agree_on_many_random_blocks(mode, dtype):
    """About 2,000 blocks of random data per case, so that events of about one in a thousand
    blocks (a DCT rounding tie, a code width at the limit) occur."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(4, 16, 16, 32, generator=g)
    x[1] = torch.relu(x[1])
    x[2] *= torch.rand(16, 1, 1, generator=g) * 100
    x[3] = torch.round(x[3] * 4) / 4
    kw = {"mode": mode, **({"error_bound": 0.004} if mode in EB_MODES else {})}
    check_backends_agree(kw, x.to(dtype))


@pytest.mark.parametrize("dtype", list(INT_OF), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_backends_agree_on_interior_and_edge_blocks(mode, dtype):
    """The CPU kernels read and write blocks lying wholly inside the tensor row by row and use
    the replicated-padding index only for edge blocks: planes of whole blocks only, planes with
    edge blocks on the right and bottom, flat tensors with and without a partial last block;
    NaN and inf in interior and edge blocks (RAW); ReLU'd copies for sparse and zero blocks."""
    g = torch.Generator().manual_seed(5)
    shapes = [(2, 3, 16, 24), (2, 13, 19), (64 * 5,), (64 * 5 + 9,)]
    kw = {"mode": mode, **({"error_bound": 0.004} if mode in EB_MODES else {})}
    for shape in shapes:
        t = torch.randn(shape, generator=g)
        check_backends_agree(kw, t.to(dtype))
        check_backends_agree(kw, (torch.relu(t) * 3).to(dtype))
        special = t.clone().view(-1)
        special[70] = float("nan")  # interior of every shape above
        special[-1] = float("inf")  # an edge block where there are any
        check_backends_agree(kw, special.view(shape).to(dtype))
