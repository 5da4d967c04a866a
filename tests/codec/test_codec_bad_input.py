"""Every bad input gets a named error: corrupted, truncated, foreign, newer and padded frames
(``FrameError`` from both backends, never a silent wrong tensor), and bad codec arguments
(``ValueError``/``TypeError`` whose message starts with the argument's name)."""

from __future__ import annotations

import io
import math
import pathlib
import re
import struct

import numpy as np
import pytest
import torch
from codec_testlib import (
    CHECK_MESSAGES,
    MODES,
    OFF_NGROUPS,
    OFF_VERSION,
    Layout,
    assert_backends_agree,
    assert_rejected,
    bits,
    parse_check,
    reseal,
)

import actpack
from actpack import FrameError
from actpack.codec.frame import VERSION, Header, build_frame, parse_frame
from actpack.codec.spec import MAX_NUMEL, SCALE_EXP_RANGE, DType, Mode, Scale
from actpack.errors import Check

BACKENDS = ("numpy", "torch")
CONFIGS = {  # a codec per mode: a new Mode fails here (KeyError) until it has one
    "dct": {"mode": "dct", "table": "optL"},
    "eb": {"mode": "eb", "error_bound": 0.01},
    "eb2": {"mode": "eb2", "error_bound": 0.01},
    "sfpr8": {"mode": "sfpr8"},
    "mask": {"mode": "mask"},
}

def _tensor(dtype=torch.float32) -> torch.Tensor:
    """Two batches, two channels, 9 x 11 planes: zero, coded and raw blocks in one frame."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 11, generator=g)
    x[0, 0, 0, 0] = float("nan")  # a raw block
    x[1, 1] = 0  # zero blocks
    return x.to(dtype)


def _frame(mode: str, dtype=torch.float32) -> bytes:
    return bytes(actpack.Codec(**CONFIGS[mode]).compress(_tensor(dtype)))


# ----------------------------------------------------------------------------- corrupted frames


@pytest.mark.parametrize("mode", MODES)
def test_every_single_bit_flip_is_detected(mode):
    """Flip each bit of the frame in turn (header, its padding, index, payload, trailer and its
    reserved bytes): both backends raise FrameError, every time."""
    frame = _frame(mode)
    lay = Layout(frame)
    assert lay.payload_end > lay.payload  # the frame has a payload to corrupt
    assert sorted(lay.checked_bytes() + lay.padding_bytes()) == list(range(len(frame)))
    for pos in range(len(frame)):
        for bit in range(8):
            corrupted = bytearray(frame)
            corrupted[pos] ^= 1 << bit
            assert_rejected(bytes(corrupted))
            with pytest.raises(FrameError):
                actpack.Frame.from_bytes(bytes(corrupted))


@pytest.mark.parametrize("mode", MODES)
def test_nonzero_padding_is_named(mode):
    frame = _frame(mode)
    lay = Layout(frame)
    head_pad = range(lay.head_len + 4, lay.head_total)
    assert len(head_pad) and len(range(lay.trailer + 16, lay.total)) == 48
    for pos, match, check in [
            (head_pad[0], "padding after the header CRC", Check.HEADER_PADDING),
            (head_pad[-1], "padding after the header CRC", Check.HEADER_PADDING),
            (lay.trailer + 16, "trailer: nonzero reserved", Check.TRAILER_RESERVED),
            (lay.total - 1, "trailer: nonzero reserved", Check.TRAILER_RESERVED)]:
        corrupted = bytearray(frame)
        corrupted[pos] = 0x80
        assert_rejected(bytes(corrupted), match=match, check=check)


@pytest.mark.parametrize("mode", MODES)
def test_multi_byte_corruption_is_detected(mode):
    frame = _frame(mode)
    lay = Layout(frame)
    rng = np.random.default_rng(1)
    checked = np.array(lay.checked_bytes())
    for _ in range(200):
        corrupted = bytearray(frame)
        for pos in rng.choice(checked, size=rng.integers(2, 9), replace=False):
            corrupted[pos] ^= int(rng.integers(1, 256))
        assert_rejected(bytes(corrupted))


@pytest.mark.parametrize("mode", MODES)
def test_every_truncation_is_detected(mode):
    frame = _frame(mode)
    for n in range(len(frame)):
        assert_rejected(frame[:n])
    assert_rejected(frame[: len(frame) - 64], match="truncated", check=Check.TRUNCATED)


@pytest.mark.parametrize("mode", MODES)
def test_trailing_bytes_are_rejected(mode):
    frame = _frame(mode)
    for extra in (b"\x00", bytes(64), frame):
        assert_rejected(frame + extra, match="trailing bytes", check=Check.TRAILING)


def _torch_saved() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.zeros(3), buf)
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    b"", b"A", b"ACT", b"actp" + bytes(200), b"\x89PNG\r\n\x1a\n" + bytes(100), bytes(4096),
    b"\xff" * 4096, bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)),
    _torch_saved(),
], ids=["empty", "1B", "3B", "lowercase_magic", "png", "zeros", "ones", "random", "torch_save"])
def test_foreign_bytes_are_rejected(data):
    assert_rejected(data, match="not an actpack frame", check=Check.NOT_FRAME)
    with pytest.raises(FrameError, match="not an actpack frame") as info:
        actpack.Frame.from_bytes(data)
    assert info.value.check is Check.NOT_FRAME


def test_header_only_prefixes_say_truncated():
    frame = _frame("dct")
    assert_rejected(frame[:4], match="truncated", check=Check.TRUNCATED_FIXED)
    assert_rejected(frame[:39], match="truncated", check=Check.TRUNCATED_FIXED)
    assert_rejected(frame[:64], match="truncated", check=Check.TRUNCATED_HEADER)


@pytest.mark.parametrize("mode", MODES)
def test_newer_version_is_named(mode):
    frame = bytearray(_frame(mode))
    struct.pack_into("<H", frame, OFF_VERSION, VERSION + 1)
    newer = reseal(frame)
    assert_rejected(newer, match=rf"version {VERSION + 1} is newer .*upgrade",
                    check=Check.VERSION_NEWER)
    struct.pack_into("<H", frame, OFF_VERSION, 0xFFFF)
    assert_rejected(reseal(frame), match="newer", check=Check.VERSION_NEWER)
    struct.pack_into("<H", frame, OFF_VERSION, 0)
    assert_rejected(reseal(frame), match="version 0", check=Check.VERSION)


def test_crc_errors_name_the_section():
    frame = _frame("eb")
    lay = Layout(frame)
    bad = bytearray(frame)
    bad[OFF_NGROUPS + 4] ^= 1  # nblocks, under the header CRC
    assert_rejected(bytes(bad), match="header CRC", check=Check.HEADER_CRC)
    bad = bytearray(frame)
    bad[lay.payload] ^= 1
    assert_rejected(bytes(bad), match="payload CRC", check=Check.BODY_CRC)
    bad = bytearray(frame)
    bad[lay.trailer + 4] = 1  # status word
    assert_rejected(bytes(bad), match="status", check=Check.STATUS)
    bad = bytearray(frame)
    bad[lay.trailer + 8] ^= 64  # frame length
    assert_rejected(bytes(bad), match="frame length", check=Check.LENGTH)


def _section_10_rows() -> list[str]:
    text = (pathlib.Path(__file__).parents[2] / "docs" / "format.md").read_text()
    section = text.split("\n## 10.")[1].split("\n## 11.")[0]
    return re.findall(r"^\| (\d+a?) \|", section, re.MULTILINE)


def test_checks_are_the_numbered_rows_of_format_section_10():
    """``Check`` is the list of format.md 10's rows, in their order; the test's message oracle
    knows every one."""
    assert [c.value for c in Check] == _section_10_rows()
    assert set(CHECK_MESSAGES) == set(Check)


def test_every_corruption_names_its_check():
    """The corruptions of the tests here (truncations, trailing bytes, bit flips, with and
    without resealing the CRCs, multi-byte changes), in every mode: parse_frame's FrameError
    carries the check its message is, and so does every decoder's (``assert_rejected``,
    ``assert_check``); together they reach every check of parse_frame."""
    seen = set()
    for mode in MODES:
        frame = _frame(mode)
        lay = Layout(frame)
        rng = np.random.default_rng(4)
        corrupted = [frame[:n] for n in range(len(frame))] + [frame + b"\x00", frame + frame]
        for pos in range(len(frame)):
            for bit in range(8):
                m = bytearray(frame)
                m[pos] ^= 1 << bit
                corrupted.append(bytes(m))
                if (pos < lay.head_len or lay.head_total <= pos < lay.payload_end) and \
                        _resealable(m):
                    corrupted.append(reseal(m))
        checked = np.array(lay.checked_bytes())
        for _ in range(200):
            m = bytearray(frame)
            for pos in rng.choice(checked, size=rng.integers(2, 9), replace=False):
                m[pos] ^= int(rng.integers(1, 256))
            corrupted.append(bytes(m))
        seen |= {parse_check(c) for c in corrupted}
    assert seen == {None} | {c for c in Check if not c.block}


def _resealable(m: bytearray) -> bool:
    try:
        reseal(bytearray(m))
    except struct.error:
        return False
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_resealed_mutations_get_the_same_answer_from_both_backends(mode, dtype):
    """Corrupt the index or payload and recompute the CRCs, so the corruption gets past them to
    the block decoders: both backends must reject the same frames (FrameError, never another
    exception) and decode the others to the same bits."""
    frame = _frame(mode, dtype)
    lay = Layout(frame)
    rng = np.random.default_rng(2)
    seen = {"error": 0, "ok": 0}
    region = np.arange(lay.head_total, lay.payload_end)
    region = region[(region < lay.index_end) | (region >= lay.payload)]
    for i in range(300):
        m = bytearray(frame)
        if i % 3 == 0:  # one bit
            pos = int(rng.choice(region))
            m[pos] ^= 1 << int(rng.integers(8))
        elif i % 3 == 1:  # one byte
            m[int(rng.choice(region))] = int(rng.integers(256))
        else:  # an index entry's kind, mask-byte count or length changed
            entry = lay.head_total + 2 * int(rng.integers((lay.index_end - lay.head_total) // 2))
            (v,) = struct.unpack_from("<H", m, entry)
            v ^= 1 << int(rng.integers(16))
            struct.pack_into("<H", m, entry, v)
        seen[assert_backends_agree(reseal(m))] += 1
    assert seen["error"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_resealed_header_mutations_are_rejected_or_agree(mode):
    """Header fields changed (with a valid header CRC): shape, ndim, dtype, mode, table, scales,
    parameter, group/block/payload counts. Either FrameError from both, or the same bits."""
    frame = _frame(mode)
    lay = Layout(frame)
    rng = np.random.default_rng(3)
    positions = [p for p in range(lay.head_len) if not OFF_VERSION <= p < OFF_VERSION + 2]
    for i in range(400):
        m = bytearray(frame)
        pos = positions[i % len(positions)] if i < len(positions) else int(rng.choice(positions))
        m[pos] ^= 1 << int(rng.integers(8))
        try:
            sealed = reseal(m)
        except struct.error:  # the mutation moved the header CRC beyond the frame
            assert_rejected(bytes(m))
            continue
        assert_backends_agree(sealed)


# Issue #11: frames that passed parse_frame, then failed in the decoders with other exceptions
# (an empty tensor with a 2**63 dim) or decoded ZERO blocks to 0 * inf = NaN (2**15 * 2**-400).
EMPTY_HUGE_DIM = bytes.fromhex(  # mask, float32, shape (0, 2**63)
    "41435450010004010200000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000080d5573af20000000000000000000000008000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000")
INF_INVERSE = bytes.fromhex(  # sfpr8, float16, shape (), one ZERO block, inverse +inf
    "41435450010003020000000001000000010000000000000000000000000000000000000000001240"
    "008070fe0000807fccbfbe3700000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000067ebc80300000000c00000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000")


@pytest.mark.parametrize(("data", "match", "check"), [
    (EMPTY_HUGE_DIM, r"^corrupted header: shape \(0, 9223372036854775808\) has more than",
     Check.NUMEL),
    (INF_INVERSE, r"^corrupted header: scale 0 is 32768 \* 2\*\*-400, outside", Check.SCALE),
], ids=["empty-huge-dim", "inf-inverse"])
def test_issue_11_reproducers_are_named_by_every_decoder(data, match, check):
    assert_rejected(data, match, check=check)


def _empty_frame(shape) -> bytes:
    header = Header(Mode.MASK, DType.FLOAT32, tuple(shape), 0.0)
    return build_frame(header, np.zeros(0, np.uint16), b"")


def test_element_count_bound_counts_zero_dims_as_one():
    for shape in [(0, MAX_NUMEL), (MAX_NUMEL, 0), (0, 1 << 24, (1 << 24) - 1, 0)]:
        assert assert_backends_agree(_empty_frame(shape)) == "ok"
        assert actpack.decompress(_empty_frame(shape)).shape == shape
    for shape in [(0, MAX_NUMEL + 1), (1 << 24, 0, 1 << 24), (0, 1 << 63), (0, (1 << 64) - 1)]:
        assert_rejected(_empty_frame(shape), r"^corrupted header: shape .* has more than",
                        check=Check.NUMEL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_many_elements_name_t(backend):
    with pytest.raises(ValueError, match=r"^t: shape \(0, 281474976710656\) has more than"):
        actpack.Codec(mode="mask", backend=backend).compress(torch.zeros(0, MAX_NUMEL + 1))


def test_scale_exponent_range_is_what_encoders_write():
    """The range's ends come from real encoder output (a float32 max at range_max 1/16, the
    smallest subnormal at range_max 64); every record in it has a finite inverse, and one step
    beyond either end is rejected."""
    lo, hi = SCALE_EXP_RANGE
    assert all(math.isfinite(Scale(m, e).inverse) for m in (1 << 15, (1 << 16) - 1)
               for e in (lo, hi))
    f32 = np.finfo(np.float32)
    for value, range_max, exponent in ((f32.max, 1 / 16, lo), (f32.smallest_subnormal, 64, hi)):
        t = torch.full((8, 8), float(value))
        for backend in BACKENDS:
            data = bytes(actpack.Codec(mode="sfpr8", range_max=range_max, backend=backend)
                         .compress(t))
            assert parse_frame(data)[0].scales[0].exponent == exponent
            assert assert_backends_agree(data) == "ok"
            at = Layout(data).head_len - 8
            for e in (exponent - 1, exponent + 1):
                if lo <= e <= hi:
                    continue
                m = bytearray(data)
                with np.errstate(over="ignore"):  # below lo the inverse is +inf
                    struct.pack_into("<Hhf", m, at, 1 << 15, e, Scale(1 << 15, e).inverse)
                assert_rejected(reseal(m), rf"^corrupted header: scale 0 is \d+ \* 2\*\*{e}")


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"mode": "DCT"}, ValueError, r"^mode: unknown mode 'DCT'"),
    ({"mode": "jpeg"}, ValueError, r"^mode: unknown mode"),
    ({"mode": None}, ValueError, r"^mode: "),
    ({"mode": 1}, ValueError, r"^mode: "),
    ({"mode": "dct", "table": "optl"}, ValueError, r"^table: unknown table 'optl'"),
    ({"mode": "dct", "table": "jpeg"}, ValueError, r"^table: unknown table"),
    ({"mode": "dct", "table": "JPEG50"}, ValueError, r"^table: unknown table"),
    ({"mode": "dct", "table": "jpeg0"}, ValueError, r"^table: jpeg quality must be in 1\.\.100"),
    ({"mode": "dct", "table": "jpeg101"}, ValueError, r"^table: jpeg quality"),
    ({"mode": "dct", "table": "jpeg-5"}, ValueError, r"^table: "),
    ({"mode": "dct", "table": [0] * 64}, ValueError, r"^table: entry 0 is 0"),
    ({"mode": "dct", "table": [8] * 63 + [0]}, ValueError, r"^table: entry 63 is 0"),
    ({"mode": "dct", "table": [256] * 64}, ValueError, r"^table: entry 0 is 256"),
    ({"mode": "dct", "table": [-1] * 64}, ValueError, r"^table: entry 0 is -1"),
    ({"mode": "dct", "table": [8] * 63}, ValueError, r"^table: needs exactly 64 entries, got 63"),
    ({"mode": "dct", "table": [8] * 65}, ValueError, r"^table: needs exactly 64"),
    ({"mode": "dct", "table": []}, ValueError, r"^table: needs exactly 64"),
    ({"mode": "dct", "table": 8}, ValueError, r"^table: needs exactly 64"),
    ({"mode": "dct", "table": [1.5] * 64}, ValueError, r"^table: entries must be whole numbers"),
    ({"mode": "dct", "table": [float("nan")] * 64}, ValueError, r"^table: .*whole numbers"),
    ({"mode": "dct", "table": [float("inf")] * 64}, ValueError, r"^table: .*whole numbers"),
    ({"mode": "dct", "table": ["a"] * 64}, TypeError, r"^table: entries must be integers"),
    ({"mode": "dct", "table": [True] * 64}, TypeError, r"^table: entries must be integers"),
    ({"mode": "dct", "table": {}}, TypeError, r"^table: "),
    ({"mode": "dct", "table": torch.zeros(64)}, ValueError, r"^table: entry 0 is 0"),
    ({"mode": "eb"}, ValueError, r"^error_bound: mode 'eb' needs an error bound"),
    ({"mode": "eb", "error_bound": None}, ValueError, r"^error_bound: "),
    ({"mode": "eb", "error_bound": 0}, ValueError, r"^error_bound: must be finite and > 0"),
    ({"mode": "eb", "error_bound": -0.1}, ValueError, r"^error_bound: must be finite and > 0"),
    ({"mode": "eb", "error_bound": float("nan")}, ValueError, r"^error_bound: must be finite"),
    ({"mode": "eb", "error_bound": float("inf")}, ValueError, r"^error_bound: must be finite"),
    ({"mode": "eb", "error_bound": float("-inf")}, ValueError, r"^error_bound: "),
    ({"mode": "eb", "error_bound": 1e-31}, ValueError, r"^error_bound: must be in"),
    ({"mode": "eb", "error_bound": 1e31}, ValueError, r"^error_bound: must be in"),
    ({"mode": "eb", "error_bound": "0.1"}, TypeError, r"^error_bound: expected a number"),
    ({"mode": "eb", "error_bound": True}, TypeError, r"^error_bound: expected a number"),
    ({"mode": "eb", "error_bound": 1j}, TypeError, r"^error_bound: "),
    ({"mode": "dct", "range_max": 0}, ValueError, r"^range_max: must be finite and > 0"),
    ({"mode": "sfpr8", "range_max": -1}, ValueError, r"^range_max: "),
    ({"mode": "sfpr8", "range_max": float("nan")}, ValueError, r"^range_max: "),
    ({"mode": "sfpr8", "range_max": float("inf")}, ValueError, r"^range_max: "),
    ({"mode": "sfpr8", "range_max": 65}, ValueError, r"^range_max: must be in"),
    ({"mode": "sfpr8", "range_max": 0.06}, ValueError, r"^range_max: must be in"),
    ({"mode": "dct", "range_max": 1e-3}, ValueError, r"^range_max: must be in"),
    ({"mode": "dct", "range_max": "4.5"}, TypeError, r"^range_max: expected a number"),
    ({"mode": "eb", "error_bound": 0.1, "table": "optL"}, ValueError,
     r"^table: only mode 'dct' takes a table"),
    ({"mode": "eb", "error_bound": 0.1, "range_max": 4.5}, ValueError, r"^range_max: only"),
    ({"mode": "mask", "table": "optL"}, ValueError, r"^table: only mode 'dct'"),
    ({"mode": "mask", "range_max": 1.0}, ValueError, r"^range_max: only"),
    ({"mode": "mask", "error_bound": 0.1}, ValueError, r"^error_bound: only modes 'eb' and 'eb2'"),
    ({"mode": "sfpr8", "table": "optH"}, ValueError, r"^table: only mode 'dct'"),
    ({"mode": "sfpr8", "error_bound": 0.1}, ValueError, r"^error_bound: only"),
    ({"mode": "dct", "error_bound": 0.1}, ValueError, r"^error_bound: only"),
    ({"mode": "dct", "backend": "cuda"}, ValueError, r"^backend: expected one of"),
    ({"mode": "dct", "backend": "Numpy"}, ValueError, r"^backend: "),
    ({"mode": "dct", "backend": None}, ValueError, r"^backend: "),
], ids=repr)
def test_bad_codec_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        actpack.Codec(**kw)


def test_codec_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        actpack.Codec("dct")  # type: ignore[misc]


@pytest.mark.parametrize("table", [
    list(range(1, 65)), np.arange(1, 65, dtype=np.uint8).reshape(8, 8), [8.0] * 64,
    torch.full((64,), 8, dtype=torch.int64), tuple([255] * 64), "jpeg1", "jpeg100", "jpeg050",
])
def test_good_tables_are_accepted(table):
    codec = actpack.Codec(mode="dct", table=table)
    assert codec.table.shape == (64,) and codec.table.dtype == np.uint8
    assert int(codec.table.min()) >= 1 and int(codec.table.max()) <= 255


def test_complex_table_is_rejected():
    with pytest.raises(TypeError, match=r"^table: "):
        actpack.Codec(mode="dct", table=[8 + 1j] * 64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                   torch.bool, torch.complex64, torch.complex128, torch.float64],
                         ids=str)
def test_unsupported_tensor_dtypes_name_t(dtype, backend):
    t = torch.zeros(2, 3, 8, 8, dtype=dtype)
    for mode, kw in CONFIGS.items():
        with pytest.raises(TypeError, match=rf"^t: dtype {dtype} is not supported"):
            actpack.Codec(**kw, backend=backend).compress(t)
        del mode


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [np.zeros((2, 8), np.float32), [1.0, 2.0], 1.0, None, b"x"],
                         ids=lambda v: type(v).__name__)
def test_non_tensor_input_names_t(value, backend):
    with pytest.raises(TypeError, match=r"^t: expected a torch\.Tensor"):
        actpack.Codec(mode="dct", backend=backend).compress(value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_many_dimensions_name_t(backend):
    with pytest.raises(ValueError, match=r"^t: at most 8 dimensions"):
        actpack.Codec(mode="sfpr8", backend=backend).compress(torch.zeros([1] * 9))
    # eight are fine
    t = torch.randn([1, 2, 1, 1, 1, 2, 3, 9])
    codec = actpack.Codec(mode="sfpr8", backend=backend)
    assert codec.decompress(codec.compress(t)).shape == t.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_many_scale_groups_name_t(backend):
    from actpack.codec.spec import MAX_GROUPS

    t = torch.zeros(1, MAX_GROUPS + 1, 0, 8)  # no elements, but more channels than a frame holds
    with pytest.raises(ValueError, match=r"^t: shape .* scale groups"):
        actpack.Codec(mode="sfpr8", backend=backend).compress(t)


@pytest.mark.parametrize("value", ["frame", [1, 2], 5, None, torch.zeros(3)],
                         ids=lambda v: type(v).__name__)
def test_decompress_of_non_frame_names_frame(value):
    for backend in BACKENDS:
        with pytest.raises(TypeError, match=r"^frame: expected a Frame or bytes"):
            actpack.decompress(value, backend=backend)


def test_decompress_accepts_bytes_like_and_rejects_unknown_backend():
    frame = actpack.Codec(mode="dct").compress(_tensor())
    ref = bits(actpack.decompress(frame))
    for data in (bytes(frame), bytearray(bytes(frame)), memoryview(bytes(frame))):
        for backend in BACKENDS:
            assert torch.equal(bits(actpack.decompress(data, backend=backend)), ref)
    for backend in ("cuda", None, "NUMPY"):
        with pytest.raises(ValueError, match=r"^backend: "):
            actpack.decompress(frame, backend=backend)
