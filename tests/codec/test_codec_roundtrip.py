"""Round trips: what comes back from every mode, dtype and rank, the error-bound guarantee of
"eb", error bounds of "sfpr8" and "dct" derived from the format, and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from codec_testlib import (
    DTYPES,
    EB_MODES,
    INT_OF,
    MODES,
    NAMED,
    SPECIALS,
    bits,
    codec_kwargs,
    max_finite_abs,
    tensors,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actpack
from actpack.codec.spec import RANGE_MAX_LIMIT, RANGE_MIN_LIMIT, SFPR_MAX, geometry

BACKENDS = ("torch", "numpy")
# One shape per rank, H and W not multiples of 8 (rank <= 1 tensors are tiled flat).
RANK_SHAPES = {0: (), 1: (77,), 2: (5, 19), 3: (3, 10, 13), 4: (2, 3, 9, 17), 5: (2, 2, 2, 7, 12)}
# Largest half ulp relative to the value (2**-(mantissa bits + 1)): the rounding of a decoded
# float32 to the output dtype.
HALF_ULP = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# Smallest positive subnormal: absolute rounding error of tiny outputs.
TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _kw(mode: str) -> dict:
    return {"dct": {"mode": "dct", "table": "optL", "range_max": 3.0},
            "eb": {"mode": "eb", "error_bound": 0.01},
            "eb2": {"mode": "eb2", "error_bound": 0.01},
            "sfpr8": {"mode": "sfpr8"},
            "mask": {"mode": "mask"}}[mode]


def _sample(shape, dtype, *, seed: int, specials: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if x.dim() >= 2 and x.numel():
        x[..., 0, :] = torch.relu(x[..., 0, :])  # some exact zeros
    x = x.to(dtype)
    if specials and x.numel() >= 4:
        flat = x.view(-1)
        flat[1], flat[-1], flat[x.numel() // 2] = float("nan"), float("inf"), float("-inf")
    return x


def group_amax(x: torch.Tensor) -> torch.Tensor:
    """Per-element max |x| over the finite values of its scale group (spec.Geometry: dim 1 for
    rank >= 4, dim 0 for rank 3, the whole tensor for rank <= 2), in float64."""
    a = torch.where(torch.isfinite(x), x.double().abs(), 0)
    if a.numel() == 0:
        return a
    if x.dim() >= 4:
        dims = [d for d in range(x.dim()) if d != 1]
    elif x.dim() == 3:
        dims = [1, 2]
    else:
        return a.max().expand_as(a)
    return a.amax(dim=dims, keepdim=True).expand_as(a)


def sfpr_error_bound(x: torch.Tensor, range_max: float) -> torch.Tensor:
    """Per-element bound on |x - decoded| in modes sfpr8 (and the SFPR stage of dct).

    The scale s = m 2**e rounds 32 range_max / amax down with a 16-bit mantissa, so
    32 range_max / amax * (1 - 2**-15) <= s <= 32 range_max / amax. A value is rounded to the
    nearest step 1/s (error <= 1/(2s)) unless |x| s > 127, where it saturates to 127/s. The
    decoded float32 product and the cast to the output dtype add a relative half ulp each.
    """
    amax = group_amax(x)
    xd = x.double().abs()
    s_hi = 32 * range_max / amax
    s_lo = s_hi * (1 - 2.0**-15)
    err = torch.maximum(0.5 / s_lo, xd - SFPR_MAX / s_hi)
    slack = xd * (HALF_ULP[x.dtype] + 2.0**-22) + TINY[x.dtype]
    return torch.where(amax > 0, err + slack, 0)


# ----------------------------------------------------------------------------- mode x dtype x rank


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_roundtrip(mode, dtype, rank, backend):
    x = _sample(RANK_SHAPES[rank], dtype, seed=rank)
    codec = actpack.Codec(**_kw(mode), backend=backend)
    frame = codec.compress(x)
    assert frame.mode == mode and frame.dtype == dtype and frame.shape == x.shape
    assert frame.device == x.device
    y = codec.decompress(frame)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    # The bytes alone decode to the same bits, with any codec and either backend.
    for other in (actpack.Codec(mode="mask", backend="torch"), actpack.Codec(mode="eb",
                                                                               error_bound=1.0,
                                                                               backend="numpy")):
        assert torch.equal(bits(other.decompress(bytes(frame))), bits(y))
    finite = torch.isfinite(x)
    if mode == "mask":
        assert torch.equal(y, (x > 0).to(dtype))
        return
    # Non-finite values come back exactly, bit for bit; finite ones come back finite.
    assert torch.equal(bits(y)[~finite], bits(x)[~finite])
    assert bool(torch.isfinite(y[finite]).all())
    err = (x.double() - y.double()).abs()[finite]
    if mode in EB_MODES:
        assert float(err.max()) <= 0.01 if err.numel() else True
    elif mode == "sfpr8":
        assert bool((err <= sfpr_error_bound(x, 4.5)[finite]).all())
    else:
        # dct/optL at range_max 3 on normal data: within 12 % of the group's max everywhere
        # (worst case per block is derived in test_dct_block_error_within_quantization_bound).
        assert bool((err <= 0.12 * group_amax(x)[finite] + 1e-6).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (2, 0, 5, 5), (2, 3, 0, 9), (1,), (1, 1, 1),
                                   (1, 1, 1, 1), (8, 8), (64,), (65,), (1, 1, 8, 8)], ids=str)
def test_roundtrip_degenerate_shapes(mode, shape, backend):
    for dtype in DTYPES:
        x = _sample(shape, dtype, seed=1, specials=False)
        codec = actpack.Codec(**_kw(mode), backend=backend)
        y = codec.decompress(codec.compress(x))
        assert y.shape == x.shape and y.dtype == dtype
        if x.numel() == 1 and mode == "sfpr8":
            # One element is its group's max: it saturates to 127/144 of itself at range_max 4.5.
            assert bool((x - y).abs().double() <= sfpr_error_bound(x, 4.5))
            assert abs(float(y) / float(x) - 127 / 144) < 0.01


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_all_zero_and_signed_zero(mode, dtype, backend):
    x = torch.zeros(2, 3, 9, 9, dtype=dtype)
    x[0, 1] = -0.0
    codec = actpack.Codec(**_kw(mode), backend=backend)
    frame = codec.compress(x)
    y = codec.decompress(frame)
    assert bool((y == 0).all())
    # All-zero blocks cost no payload: header, index and trailer only.
    assert frame.nbytes <= 64 * 4 + 64 * math.ceil(2 * geometry(x.shape).nblocks / 64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_every_special_bit_pattern_survives(mode, dtype, backend):
    """NaN payloads, signaling NaNs, -NaN, +-Inf, subnormals, -0: non-finite values come back
    bit-exact in every mode but mask (which keeps x > 0 only)."""
    base = _sample((2, 2, 8, 11), dtype, seed=5, specials=False)
    ib = base.view(INT_OF[dtype]).clone().view(-1)
    for i, pat in enumerate(SPECIALS[dtype]):
        ib[7 * i + 3] = pat
    x = ib.view(dtype).view(base.shape)
    codec = actpack.Codec(**_kw(mode), backend=backend)
    y = codec.decompress(codec.compress(x))
    if mode == "mask":
        assert torch.equal(y, (x > 0).to(dtype))
    else:
        nonfinite = ~torch.isfinite(x)
        assert int(nonfinite.sum()) == 5
        assert torch.equal(bits(y)[nonfinite], bits(x)[nonfinite])


# ----------------------------------------------------------------------------- mode "eb"


@given(tensors(), st.data())
@_settings(250)
def test_eb_error_bound_holds_for_every_finite_element(t, data):
    """|x - x_hat| <= error_bound for every finite element (computed in float64), for any
    dtype, shape, magnitude and bound; non-finite elements come back bit-exact."""
    mag = math.floor(math.log10(max(max_finite_abs(t), 1e-30)))
    kw = data.draw(codec_kwargs("eb", data_exp=mag))
    backend = data.draw(st.sampled_from(BACKENDS))
    codec = actpack.Codec(**kw, backend=backend)
    y = codec.decompress(codec.compress(t))
    assert y.shape == t.shape and y.dtype == t.dtype
    finite = torch.isfinite(t)
    err = (t.double() - y.double()).abs()[finite]
    if err.numel():
        assert float(err.max()) <= kw["error_bound"], kw
    assert torch.equal(bits(y)[~finite], bits(t)[~finite])


@pytest.mark.parametrize(("dtype", "limit"), [(torch.float32, 0.25), (torch.float16, 0.45),
                                              (torch.bfloat16, 0.5)], ids=str)
def test_eb_is_tight_enough_to_be_useful(dtype, limit):
    """The bound is not met by sending everything raw: on smooth data in [-2, 2] with a bound of
    0.02 the frame is well below the raw size, and the error uses the bound (> eb / 4).

    Measured: float32 0.15 of raw, float16 0.31, bfloat16 0.375, no raw block. The step leaves
    room for the dtype's rounding of the decoded value (spec.eb_scale); with a step of exactly
    2 eb, 29 of 64 bfloat16 blocks missed the bound and went raw (0.63 of raw).
    """
    i = torch.arange(4 * 32 * 32, dtype=torch.float32).view(4, 32, 32)
    x = (torch.sin(i / 50) + torch.cos(i / 37)).to(dtype)
    eb = 0.02
    codec = actpack.Codec(mode="eb", error_bound=eb)
    frame = codec.compress(x)
    err = (x.double() - codec.decompress(frame).double()).abs().max()
    assert eb / 4 < float(err) <= eb
    assert frame.nbytes < limit * x.numel() * x.element_size()


# ----------------------------------------------------------------------------- modes sfpr8, dct


@given(tensors(scale_exponents=(0, 0, -3, 3, -20, 20, -30, 30, 37), specials=True),
       st.sampled_from((RANGE_MIN_LIMIT, 0.5, 1.0, 3.0, 127 / 32, 4.5, 8.0, RANGE_MAX_LIMIT)),
       st.sampled_from(BACKENDS))
@_settings(150)
def test_sfpr8_error_within_step_or_saturation(t, range_max, backend):
    """Every finite element is within half a quantization step of the input, or saturated to
    127 steps (range_max > 127/32 clips the top of the range, as in JPEG-ACT)."""
    amax = group_amax(t)
    if t.numel():
        # Normal-range groups only: tiny maxima are test_subnormal_group_error_at_most_its_max.
        small = (amax > 0) & (amax < 2e-36)
        if bool(small.any()):
            return
    codec = actpack.Codec(mode="sfpr8", range_max=range_max, backend=backend)
    y = codec.decompress(codec.compress(t))
    finite = torch.isfinite(t)
    err = (t.double() - y.double()).abs()
    assert bool((err[finite] <= sfpr_error_bound(t, range_max)[finite]).all())


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(n, c, 8a, 8b) -> (blocks, 64)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("table", [*NAMED, "jpeg10", "jpeg50", "jpeg100", "ones", "max"])
def test_dct_block_error_within_quantization_bound(table, dtype):
    """Per 8x8 block, RMS error (in SFPR steps) <= RMS_k(Q_k - 1) + 2 (+ output rounding).

    Derivation (range_max <= 127/32, so SFPR never saturates): truncation toward zero with
    midpoint reconstruction leaves each coefficient within Q - 1 of the fixed-point coefficient
    (|y| < Q when q = 0; within Q/2 otherwise; exact for Q = 1). The DCT is orthonormal, so that
    is an RMS of RMS_k(Q_k - 1) in the pixel domain. Rounding adds at most 0.5 (SFPR) + 0.5
    (forward DCT) + 0.5 (inverse DCT) + the 12-bit matrix approximation (< 0.3), and the cast to
    the output dtype a relative half ulp of at most 127 steps.
    """
    if table == "ones":
        table = [1] * 64
    elif table == "max":
        table = [255] * 64
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(3, 4, 16, 24, generator=g) * 2 - 1)
    x[1] *= 1e-3
    x[2, 3] = torch.rand(16, 24, generator=g)  # one-signed plane
    x = x.to(dtype)
    rm = 3.0
    codec = actpack.Codec(mode="dct", table=table, range_max=rm)
    y = codec.decompress(codec.compress(x))
    q = torch.tensor(codec.table.astype(np.float64))
    bound = float(((q - 1) ** 2).mean().sqrt()) + 2.0 + 127 * HALF_ULP[dtype]
    step = group_amax(x) / (32 * rm) / (1 - 2.0**-15)
    e = _blocks((x.double() - y.double()) / step)
    rms = e.pow(2).mean(1).sqrt()
    assert float(rms.max()) <= bound, (float(rms.max()), bound)
    if table == [1] * 64:
        # Lossless quantization: what is left is fixed-point rounding, well under one step.
        assert float(rms.max()) <= 1.0


def _smooth(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    yy = torch.arange(h, dtype=torch.float32).view(h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, w)
    out = torch.empty(shape)
    for i in range(n):
        for j in range(c):
            a, b, ph, fx, fy = torch.rand(5, generator=g).tolist()
            out[i, j] = (torch.sin(xx * (0.05 + 0.15 * fx) + yy * (0.05 + 0.15 * fy) + 6 * ph)
                         * (0.5 + a) + 0.3 * b + 0.01 * (xx - yy))
    return out


@pytest.mark.parametrize(("table", "range_max", "limit"), [
    ("optL", 4.5, 0.02), ("optsL", 4.5, 0.02), ("jpeg90", 3.0, 0.012),
    ("optH", 4.5, 0.04), ("optsH", 4.5, 0.04),
])
def test_dct_relative_rmse_on_smooth_data(table, range_max, limit):
    """On smooth planes (low-frequency waves and ramps) the relative RMSE (RMSE / max |x|) is
    small. Measured: optL 1.4 %, optsL 1.5 %, jpeg90 at 3.0 0.7 %, optH 2.5 %, optsH 2.8 %;
    the limits leave ~1.4x room. The worst case from the tables alone (RMS_k(Q_k - 1) + 2 steps
    of max/144) would be 5.3 % for optL: smooth data is what lets dct beat it."""
    x = _smooth((2, 4, 32, 32))
    codec = actpack.Codec(mode="dct", table=table, range_max=range_max)
    frame = codec.compress(x)
    y = codec.decompress(frame)
    rel = float((x - y).pow(2).mean().sqrt() / x.abs().max())
    assert rel <= limit
    # and it compresses: smooth data is where the DCT pays off
    assert frame.nbytes < x.numel() * x.element_size() / 4


# ----------------------------------------------------------------------------- determinism


@given(tensors(), st.sampled_from(MODES), st.sampled_from(BACKENDS))
@_settings(120)
def test_deterministic_and_layout_independent(t, mode, backend):
    """Same values -> same bytes: twice with one codec, with a fresh codec, and from a
    contiguous copy, a channels-last copy and a transposed-back copy of the same values."""
    kw = _kw(mode)
    codec = actpack.Codec(**kw, backend=backend)
    b = bytes(codec.compress(t))
    assert bytes(codec.compress(t)) == b
    assert bytes(actpack.Codec(**kw, backend=backend).compress(t)) == b
    assert bytes(codec.compress(t.contiguous())) == b
    assert bytes(codec.compress(t.clone())) == b
    if t.dim() == 4:
        assert bytes(codec.compress(t.contiguous(memory_format=torch.channels_last))) == b
    if t.dim() >= 2:
        assert bytes(codec.compress(t.transpose(0, -1).contiguous().transpose(0, -1))) == b


def test_compress_does_not_modify_its_input():
    x = _sample((2, 3, 9, 10), torch.float32, seed=3)
    before = x.clone()
    for mode in MODES:
        for backend in BACKENDS:
            actpack.Codec(**_kw(mode), backend=backend).compress(x)
    assert torch.equal(bits(x), bits(before))


def test_requires_grad_input_is_accepted():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = actpack.Codec(mode="sfpr8").decompress(actpack.Codec(mode="sfpr8").compress(x))
    assert not y.requires_grad and y.shape == x.shape


def test_frame_device_and_decompress_device():
    x = torch.randn(2, 9)
    frame = actpack.Codec(mode="dct").compress(x)
    assert frame.device == torch.device("cpu")
    assert actpack.decompress(frame).device == torch.device("cpu")
    assert actpack.decompress(bytes(frame), device="cpu").device == torch.device("cpu")
    assert actpack.Frame.from_bytes(bytes(frame)).device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_roundtrip_keeps_cuda_device(mode):
    x = _sample((2, 3, 9, 17), torch.float32, seed=2).cuda()
    codec = actpack.Codec(**_kw(mode))
    frame = codec.compress(x)
    assert frame.device.type == "cuda"
    y = codec.decompress(frame)
    assert y.device.type == "cuda"
    assert codec.decompress(frame, device="cpu").device.type == "cpu"
    assert codec.decompress(bytes(frame)).device.type == "cpu"


# ----------------------------------------------------------------------------- scale extremes


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("mode", ["sfpr8", "dct"])  # the two modes with a range_max
def test_smallest_range_max_with_largest_values_decodes_finite(mode, backend):
    """The smallest range_max keeps the float32 inverse scale finite even for max|x| near
    float32's largest value (smaller range_max values are refused: the inverse overflowed to inf
    and zeros decoded as 0 * inf = NaN); products beyond float32 saturate to the largest value."""
    fmax = torch.finfo(torch.float32).max
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 0, :4] = torch.tensor([3.4e38, 1e37, 1.0, -3.4e38])
    x[0, 1] = fmax
    codec = actpack.Codec(mode=mode, range_max=RANGE_MIN_LIMIT, backend=backend)
    y = codec.decompress(codec.compress(x))
    assert bool(torch.isfinite(y).all())
    assert bool((y[x == 0] == 0).all())
    if mode == "sfpr8":
        assert bool((y[0, 1] == fmax).all())
    with pytest.raises(ValueError, match=r"^range_max: must be in"):
        actpack.Codec(mode=mode, range_max=RANGE_MIN_LIMIT * 0.99)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("mode", ["sfpr8", "dct"])  # the two modes with a range_max
def test_subnormal_group_error_at_most_its_max(mode, backend):
    """Documented limit (docs/format.md 5.3): a group whose max |x| is far below float32's normal
    range has a subnormal or zero float32 inverse; its values come back coarse or 0, never worse
    than an absolute error of the group's max |x|, and never non-finite."""
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0] = 1.0
    x[0, 1, 0, 0] = 1e-44  # channel 1 holds only a subnormal: inverse underflows to 0
    x[0, 2, 0, :2] = torch.tensor([3e-38, -1e-38])  # channel 2: a subnormal inverse
    codec = actpack.Codec(mode=mode, backend=backend)
    y = codec.decompress(codec.compress(x))
    assert bool(torch.isfinite(y).all())
    assert float((y[0, 1] - x[0, 1]).abs().max()) <= 1e-44
    assert float((y[0, 2] - x[0, 2]).abs().max()) <= 3e-38
