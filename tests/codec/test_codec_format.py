"""Format facts, checked against outside references: the JPEG zigzag and quantization tables,
the fixed-point DCT matrix, the quantizer the RTL implements, frame sizes and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from codec_testlib import DTYPES, EB_MODES, MODES, VALUE_MODES, tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actpack
from actpack import FrameError
from actpack.codec import reference
from actpack.codec.frame import (
    ALIGN,
    DENSE_HEADER,
    Kind,
    frame_bound,
    pack_index,
    parse_frame,
    unpack_index,
)
from actpack.codec.spec import (
    DCT_COEF_MAX,
    SFPR_MAX,
    WIDTH_MAX,
    DType,
    Mode,
    Scale,
    eb_scale,
    geometry,
    sfpr_scales,
)
from actpack.codec.tables import (
    DCT_FRAC_BITS,
    DCT_MATRIX,
    JPEG_LUMA,
    NAMED_TABLES,
    ZIGZAG,
    jpeg_table,
    resolve_table,
)
from actpack.codec.torchpath import TORCH_DTYPES

# ITU-T T.81 Figure A.6, as libjpeg's jpeg_natural_order: the k-th coefficient in zigzag
# order is at row-major position ZIGZAG_T81[k].
ZIGZAG_T81 = [
    0, 1, 8, 16, 9, 2, 3, 10,
    17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36,
    29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46,
    53, 60, 61, 54, 47, 55, 62, 63,
]  # fmt: skip

# ITU-T T.81 Annex K, Table K.1, written out independently of tables.JPEG_LUMA.
K1 = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- tables


def test_zigzag_is_the_jpeg_order():
    assert ZIGZAG.tolist() == ZIGZAG_T81
    assert sorted(ZIGZAG.tolist()) == list(range(64))


def test_jpeg50_is_the_standard_luminance_table():
    assert JPEG_LUMA.tolist() == K1
    assert jpeg_table(50).tolist() == K1
    assert np.array_equal(jpeg_table(50), JPEG_LUMA)


def _ijg_table(quality: int) -> list[int]:
    """libjpeg jcparam.c: jpeg_quality_scaling + jpeg_add_quant_table(force_baseline=TRUE)."""
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    out = []
    for base in K1:
        temp = (base * scale + 50) // 100
        out.append(min(max(temp, 1), 255))
    return out


@pytest.mark.parametrize("quality", range(1, 101))
def test_jpeg_table_matches_ijg(quality):
    assert jpeg_table(quality).tolist() == _ijg_table(quality)
    assert resolve_table(f"jpeg{quality}")[2].tolist() == _ijg_table(quality)


def test_jpeg_table_extremes():
    assert jpeg_table(100).tolist() == [1] * 64
    assert jpeg_table(1).tolist() == [255] * 64
    with pytest.raises(ValueError, match="table: jpeg quality"):
        jpeg_table(0)
    with pytest.raises(TypeError, match="table: jpeg quality must be an integer"):
        jpeg_table(50.0)


def test_named_tables_are_jpeg_act_table_2():
    optl = NAMED_TABLES["optL"].reshape(8, 8)
    assert optl[0].tolist() == [8, 7, 7, 7, 7, 6, 6, 6]
    assert optl[7].tolist() == [6, 6, 6, 6, 5, 5, 5, 5]
    assert NAMED_TABLES["optsL"].tolist() == [8] * 64
    assert NAMED_TABLES["optH"].reshape(8, 8)[0].tolist() == [8, 26, 25, 25, 24, 24, 23, 22]
    assert NAMED_TABLES["optH"].reshape(8, 8)[7].tolist() == [22, 20, 20, 19, 19, 19, 19, 19]
    # The "s" tables are powers of two: quantization is a shift in hardware.
    for name in ("optsL", "optsH"):
        t = NAMED_TABLES[name].astype(int)
        assert all(v & (v - 1) == 0 for v in t), name
    for t in NAMED_TABLES.values():
        assert t.dtype == np.uint8 and t.shape == (64,) and int(t[0]) == 8
        assert not t.flags.writeable


# ----------------------------------------------------------------------------- DCT


def test_dct_matrix_is_rounded_orthonormal_dct():
    """Every entry is round(C * 4096) of the orthonormal DCT-II; rows are orthogonal up to what
    that rounding allows: |(K K^T)_ij - 4096^2 d_ij| <= sum_x (|K_ix| + |K_jx|) / 2 + 8 / 4."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    c = np.where(u == 0, math.sqrt(1 / 8), 0.5) * np.cos((2 * x + 1) * u * math.pi / 16)
    k = DCT_MATRIX.astype(np.int64)
    assert k.shape == (8, 8) and DCT_FRAC_BITS == 12
    assert np.all(np.abs(k - c * 4096) <= 0.5)
    assert np.all(np.abs(k) < 2048)  # 12-bit signed constants
    gram = k @ k.T
    one = 1 << (2 * DCT_FRAC_BITS)
    l1 = np.abs(k).sum(1)
    tol = (l1[:, None] + l1[None, :]) / 2 + 8 / 4
    assert np.all(np.abs(gram - one * np.eye(8)) <= tol)
    # and in fact much better than that worst case: within 0.05 % of a unit gram matrix
    assert np.all(np.abs(gram / one - np.eye(8)) < 5e-4)


def test_dct_pair_round_trips_every_block_within_a_step():
    """Fixed-point forward then inverse DCT (no quantization) returns each int8 value within
    1, and DC of a constant block is exact: the pair is what the RTL will implement."""
    rng = np.random.default_rng(0)
    p = rng.integers(-127, 128, (2000, 8, 8))
    p[:10] = 127
    p[10:20] = -127
    p[20:30] = np.where(rng.random((10, 8, 8)) < 0.5, 127, -127)  # extreme checkerboards
    y = reference.dct2(p)
    assert np.abs(y).max() <= DCT_COEF_MAX
    assert np.abs(reference.idct2(y) - p).max() <= 1
    const = np.full((1, 8, 8), 100)
    assert reference.dct2(const)[0, 0, 0] == 800
    assert np.count_nonzero(reference.dct2(const)[0]) == 1


def test_forward_coefficients_fit_12_bits_for_any_int8_block():
    """The largest |coefficient| any block of int8 values can give is below DCT_COEF_MAX: the
    sum over x, y of |K_ux K_vy| * 127, scaled back (and the rounding adds < 1)."""
    k = np.abs(DCT_MATRIX.astype(np.int64))
    worst = (np.einsum("ux,vy->uv", k, k) * SFPR_MAX) / (1 << 24)
    assert worst.max() + 1 <= DCT_COEF_MAX
    # The sign pattern p[y, x] = 127 sign(K_vy K_ux) reaches it for coefficient (v, u), at
    # row-major index 8 v + u; the fixed-point transform gets within 1 of the exact worst case.
    s = np.sign(DCT_MATRIX)
    blocks = np.einsum("ux,vy->vuyx", s, s).reshape(64, 8, 8) * SFPR_MAX
    y = reference.dct2(blocks).reshape(64, 64)
    assert np.abs(y).max() <= DCT_COEF_MAX
    assert np.all(np.abs(np.abs(np.diag(y)) - worst.T.reshape(-1)) <= 1)


def test_quantize_equals_reciprocal_multiply():
    """The RTL divides by Q with a multiply: (|y| * ceil(2**20 / Q)) >> 20, the sign restored.
    That equals truncation toward zero for every |y| <= 2047 and Q in 1..255."""
    y = np.arange(-2047, 2048)
    for q in range(1, 256):
        table = np.full(64, q, dtype=np.uint8)
        blocks = np.resize(y, (-(-y.size // 64)) * 64).reshape(-1, 8, 8)
        ref = reference.quantize(blocks, table).reshape(-1)[: y.size]
        recip = -(-(1 << 20) // q)
        rtl = np.sign(y) * ((np.abs(y) * recip) >> 20)
        assert np.array_equal(ref, rtl), q
        assert np.array_equal(ref, np.trunc(y / q).astype(np.int64)), q


def test_dequantize_is_midpoint_and_saturates():
    q = np.array([0, 1, -1, 2, -3, 200, -200]).reshape(1, 7)
    q = np.pad(q, ((0, 0), (0, 57))).reshape(1, 8, 8)
    for t in (1, 7, 8, 255):
        table = np.full(64, t, dtype=np.uint8)
        y = reference.dequantize(q, table).reshape(-1)[:7]
        expect = [int(np.sign(v)) * min((2 * abs(v) + 1) * t // 2, DCT_COEF_MAX)
                  for v in (0, 1, -1, 2, -3, 200, -200)]
        assert y.tolist() == expect


def test_torch_quantizer_matches_reference_on_every_coefficient():
    """The torch path quantizes with a float64 division and floor; on all |y| <= 2047 and every
    Q it agrees with the reference (and thus with the reciprocal multiply)."""
    y = torch.arange(-2047, 2048, dtype=torch.float64)
    for q in range(1, 256):
        t = torch.floor(y.abs() / q) * torch.sign(y)
        assert torch.equal(t.long(), torch.from_numpy(np.trunc(y.numpy() / q).astype(np.int64)))


# ----------------------------------------------------------------------------- scales


@given(st.floats(1e-37, 3e38), st.floats(1e-3, 64.0))
@_settings(300)
def test_sfpr_scale_never_maps_max_above_range(amax, range_max):
    (s,) = sfpr_scales(np.array([amax], dtype=np.float32), range_max)
    a = float(np.float32(amax))
    assert (1 << 15) <= s.mantissa < (1 << 16)
    assert a * s.value <= 32 * range_max
    assert a * s.value >= 32 * range_max * (1 - 2.0**-15)


@given(st.floats(1e-30, 1e30))
@_settings(300)
def test_eb_scale_step_at_most_twice_the_bound(eb):
    s = eb_scale(eb)
    assert (1 << 15) <= s.mantissa < (1 << 16)
    assert 1 / s.value <= 2 * eb * (1 + 1e-15)
    assert 1 / s.value >= 2 * eb * (1 - 2.0**-15)


def test_scale_inverse_is_float32_of_reciprocal():
    s = Scale(40000, -20)
    assert s.value == 40000 * 2.0**-20
    assert s.inverse == np.float32(1 / s.value) and s.inverse.dtype == np.float32


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("shape", "planes", "hw", "groups", "nblocks"), [
    ((), 1, (8, 8), 1, 1),
    ((0,), 0, (0, 8), 1, 0),
    ((64,), 1, (8, 8), 1, 1),
    ((65,), 1, (16, 8), 1, 2),
    ((3, 50), 1, (3, 50), 1, 7),  # rank 2 is one plane (batch x features), one group
    ((2, 0), 0, (2, 0), 1, 0),
    ((4, 9, 10), 4, (9, 10), 4, 16),
    ((2, 3, 16, 17), 6, (16, 17), 3, 36),
    ((2, 3, 4, 8, 8), 24, (8, 8), 3, 24),
    ((2, 3, 0, 8), 0, (0, 8), 3, 0),
])
def test_geometry_rule(shape, planes, hw, groups, nblocks):
    geo = geometry(shape)
    assert (geo.planes, (geo.height, geo.width), geo.groups, geo.nblocks) == (planes, hw, groups,
                                                                            nblocks)


def test_padding_is_edge_replication():
    """A plane of 9 x 10 is padded to 16 x 16 by repeating its last row and column: what the
    block-wise model sees equals np.pad(mode="edge")."""
    x = np.arange(90, dtype=np.uint32).reshape(1, 9, 10)
    geo = geometry(x.shape)
    blocks = reference.tile(x.reshape(-1), geo)
    padded = np.pad(x[0], ((0, 7), (0, 6)), mode="edge")
    expect = padded.reshape(2, 8, 2, 8).transpose(0, 2, 1, 3).reshape(4, 8, 8)
    assert np.array_equal(blocks, expect)
    assert np.array_equal(reference.untile(blocks, geo), x.reshape(-1))


# ----------------------------------------------------------------------------- entropy code


@given(st.lists(st.integers(-(1 << 14), 1 << 14), min_size=64, max_size=64),
       st.lists(st.booleans(), min_size=64, max_size=64))
@_settings(300)
def test_block_code_round_trips(values, keep):
    sym = np.array([v if k else 0 for v, k in zip(values, keep, strict=True)], dtype=np.int64)
    if not sym.any():
        sym[63] = -1
    coded = reference.encode_block(sym)
    u = [2 * (abs(int(v)) - 1) + int(v < 0) for v in sym if v]
    if max(u).bit_length() > WIDTH_MAX:
        assert coded is None
        return
    mb, data = coded
    assert mb == int(np.flatnonzero(sym)[-1]) // 8 + 1
    assert np.array_equal(reference.decode_block(data, mb), sym)
    # the length is exactly mask + width nibbles + packed bits
    nz = np.flatnonzero(sym).size
    groups = [u[i : i + 8] for i in range(0, nz, 8)]
    nbits = sum(len(g) * max(v.bit_length() for v in g) for g in groups)
    assert len(data) == mb + (len(groups) + 1) // 2 + (nbits + 7) // 8


@given(st.lists(st.integers(-(1 << 14), 1 << 14), min_size=64, max_size=64),
       st.lists(st.booleans(), min_size=64, max_size=64))
@_settings(300)
def test_dense_code_round_trips(values, keep):
    """DENSE: 4 width bytes (one nibble per group of 8 scan positions), then each group's codes
    u = 2|v| - (v < 0) in its width, LSB-first: a group of width w is exactly w bytes."""
    sym = np.array([v if k else 0 for v, k in zip(values, keep, strict=True)], dtype=np.int64)
    data = reference.encode_dense(sym)
    codes = [2 * abs(int(v)) - int(v < 0) for v in sym]
    widths = [max(u.bit_length() for u in codes[8 * g : 8 * g + 8]) for g in range(8)]
    if max(widths) > WIDTH_MAX:
        assert data is None
        return
    assert len(data) == DENSE_HEADER + sum(widths)
    assert [data[g // 2] >> (4 * (g % 2)) & 15 for g in range(8)] == widths
    assert np.array_equal(reference.decode_dense(data), sym)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00", b"\x11\x00\x00\x00\xff"])
def test_short_or_inconsistent_dense_block_is_a_frame_error(data):
    with pytest.raises(FrameError, match="dense block length"):
        reference.decode_dense(data)


def _chosen_symbols(kind: int, chunk: bytes, mb: int, mode: Mode) -> np.ndarray:
    if kind == Kind.DENSE:
        return reference.decode_dense(chunk)
    return reference.decode_block(chunk, mb, with_values=mode is not Mode.MASK)


@given(tensors(specials=False), st.sampled_from(MODES))
@_settings(120)
def test_block_kind_is_the_shortest_coding(t, mode):
    """Each nonzero block is coded sparse (CODED) or DENSE, whichever is shorter (ties go to
    sparse), and RAW only when neither fits the raw size or 15-bit widths."""
    kw = {"mode": mode, **({"error_bound": 1e-3} if mode in EB_MODES else {})}
    header, index, payload = parse_frame(bytes(actpack.Codec(**kw).compress(t)))
    kinds, mbs, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    raw_len = 64 * header.dtype.itemsize
    for b, (kind, mb) in enumerate(zip(kinds.tolist(), mbs.tolist(), strict=True)):
        if kind not in (Kind.CODED, Kind.DENSE):
            continue
        sym = _chosen_symbols(kind, bytes(payload[offsets[b] : offsets[b + 1]]), mb, header.mode)
        sparse = reference.encode_block(sym, with_values=header.mode is not Mode.MASK)
        dense = reference.encode_dense(sym) if header.mode is not Mode.MASK else None
        options = [len(c[1]) for c in [sparse] if c is not None]
        options += [len(dense)] if dense is not None else []
        assert lengths[b] == min(options) <= raw_len
        if kind == Kind.DENSE:
            assert sparse is None or len(dense) < len(sparse[1])


def test_index_entry_packing():
    kind = np.array([Kind.ZERO, Kind.CODED, Kind.RAW, Kind.CODED, Kind.DENSE])
    mb = np.array([1, 8, 1, 3, 1])
    length = np.array([0, 2047, 256, 5, 36])
    idx = pack_index(kind, mb, length)
    assert idx.dtype == np.uint16
    assert idx.tolist() == [0, (1 << 14) | (7 << 11) | 2047, (2 << 14) | 256,
                            (1 << 14) | (2 << 11) | 5, (3 << 14) | 36]
    k, m, n = unpack_index(idx)
    assert k.tolist() == kind.tolist() and n.tolist() == length.tolist()
    assert m.tolist() == [1, 8, 1, 3, 1]


# ----------------------------------------------------------------------------- frames


@given(tensors(), st.sampled_from(MODES))
@_settings(150)
def test_frame_size_facts(t, mode):
    kw = {"mode": mode, **({"error_bound": 1e-3} if mode in EB_MODES else {})}
    frame = actpack.Codec(**kw).compress(t)
    dtype = TORCH_DTYPES[t.dtype]
    assert frame.nbytes % ALIGN == 0
    bound = frame_bound(t.shape, dtype, Mode.parse(mode))
    assert frame.nbytes <= bound
    nb = geometry(t.shape).nblocks
    # the documented closed form of the bound
    head = len(parse_frame(bytes(frame))[0].to_bytes())
    assert bound <= 64 * dtype.itemsize * nb + 2 * nb + head + 192
    assert len(frame) == frame.nbytes == len(bytes(frame))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_incompressible_input_meets_the_bound(dtype):
    """Every block raw (a NaN in each): the frame is exactly the bound."""
    x = torch.randn(3, 2, 16, 24).to(dtype)
    x[..., ::8, ::8] = float("nan")
    for mode in VALUE_MODES:  # a mask frame has no RAW blocks
        kw = {"mode": mode, **({"error_bound": 1e-3} if mode in EB_MODES else {})}
        frame = actpack.Codec(**kw).compress(x)
        assert frame.nbytes == frame_bound(x.shape, TORCH_DTYPES[dtype], Mode.parse(mode))
        _, index, _ = parse_frame(bytes(frame))
        assert (unpack_index(index)[0] == Kind.RAW).all()


def test_frame_properties_and_from_bytes():
    x = torch.randn(2, 3, 9, 10, dtype=torch.bfloat16)
    frame = actpack.Codec(mode="dct", table="jpeg75").compress(x)
    assert frame.mode == "dct" and frame.dtype == torch.bfloat16 and frame.shape == x.shape
    assert "dct" in repr(frame)
    again = actpack.Frame.from_bytes(bytes(frame))
    assert bytes(again) == bytes(frame) and again.shape == x.shape
    assert actpack.Frame.from_bytes(bytearray(bytes(frame))).nbytes == frame.nbytes
    header, _, _ = parse_frame(bytes(frame))
    assert header.table.tolist() == jpeg_table(75).tolist()
    assert header.table_arg == 75
    with pytest.raises(FrameError):
        actpack.Frame.from_bytes(bytes(frame)[:-1])
    with pytest.raises(FrameError):
        actpack.Frame.from_bytes(bytes(frame)[::-1])


def test_header_records_the_parameters():
    x = torch.randn(4, 20)
    for kw, param in [({"mode": "dct", "range_max": 2.5}, 2.5), ({"mode": "sfpr8"}, 4.5),
                      ({"mode": "eb", "error_bound": 0.125}, 0.125), ({"mode": "mask"}, 0.0)]:
        header, _, _ = parse_frame(bytes(actpack.Codec(**kw).compress(x)))
        assert header.param == param
        assert header.mode is Mode.parse(kw["mode"]) and header.dtype is DType.FLOAT32
    header, _, _ = parse_frame(bytes(actpack.Codec(mode="dct", table=[3] * 64).compress(x)))
    assert header.table.tolist() == [3] * 64
