"""Shared helpers of the codec tests: hypothesis strategies for tensors and codec arguments, and
bit-level comparisons.

Tensors are kept small (at most a few hundred elements) so that the numpy model, which codes one
block at a time in Python, stays fast enough for thousands of examples.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import re
import struct
import sys

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import actpack
from actpack.codec import torchpath
from actpack.codec.frame import FIXED_HEADER, TRAILER, crc32c_of, header_length, parse_frame
from actpack.codec.spec import RANGE_MAX_LIMIT, RANGE_MIN_LIMIT, Mode
from actpack.codec.tables import NAMED_TABLES
from actpack.errors import Check, FrameError

__all__ = [
    "CHECK_MESSAGES",
    "DECODERS",
    "DTYPES",
    "FIXED",
    "INT_OF",
    "MODES",
    "NAMED",
    "OFF_MODE",
    "OFF_NDIM",
    "OFF_NGROUPS",
    "OFF_VERSION",
    "SPECIALS",
    "VALUE_MODES",
    "Layout",
    "assert_backends_agree",
    "assert_check",
    "assert_rejected",
    "bits",
    "codec_cases",
    "codec_kwargs",
    "compress_all",
    "compress_eager",
    "decode",
    "decompress_eager",
    "expected_check",
    "load_local",
    "max_finite_abs",
    "parse_check",
    "reseal",
    "tensors",
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# From the enum and the table registry, so a new mode or named table is tested without an edit.
MODES = tuple(m.label for m in Mode)
VALUE_MODES = tuple(m.label for m in Mode if m is not Mode.MASK)  # mask stores no values
EB_MODES = tuple(m.label for m in Mode if m.error_bounded)  # the modes that take error_bound
NAMED = tuple(NAMED_TABLES)
MAX_NUMEL = 640

# Bit patterns worth injecting: +-Inf, quiet NaN, NaN with sign and payload, signaling NaN, -0,
# smallest subnormal, largest finite, smallest normal.
SPECIALS = {
    torch.float32: (0x7F800000, -0x00800000, 0x7FC00000, -0x003FFFFF, 0x7F800001, -0x80000000,
                    0x00000001, 0x7F7FFFFF, 0x00800000),
    torch.float16: (0x7C00, -0x0400, 0x7E00, -0x01FF, 0x7C01, -0x8000, 0x0001, 0x7BFF, 0x0400),
    torch.bfloat16: (0x7F80, -0x0080, 0x7FC0, -0x003F, 0x7F81, -0x8000, 0x0001, 0x7F7F, 0x0080),
}  # negative entries are the two's complement (signed int view) of patterns with the sign bit


def load_local(name: str):
    """Import ``tests/codec/<name>.py`` under a unique module name (tests/ has no packages, and
    a bare ``import activations`` could pick up another directory's module of that name)."""
    key = f"_actpack_tests_codec_{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as a signed integer tensor (for bit-exact comparison)."""
    return t.view(INT_OF[t.dtype])


def max_finite_abs(t: torch.Tensor) -> float:
    x = t.detach().float()
    x = x[torch.isfinite(x)]
    return float(x.abs().max()) if x.numel() else 0.0


# ----------------------------------------------------------------------------- strategies


# Sizes drawn uniformly from these lists (hypothesis' integers() favours the bounds, which
# would make a third of all tensors empty); 0 and 1 stay in, at a lower rate.
_FLAT_DIMS = (0, 1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 24, 31, 40, 64, 65, 100, 130)
_LEAD_DIMS = (0, 1, 1, 2, 2, 2, 3, 3)
_PLANE_DIMS = (0, 1, 2, 3, 5, 7, 8, 8, 9, 11, 12, 15, 16, 16, 17, 19)
# Decimal exponents of the data's magnitude: mostly ordinary, some huge or tiny (down into the
# float32 subnormals, up to float32 overflow).
_EXPONENTS = (0, 0, 0, 0, 0, 0, -1, 1, -3, 3, -8, 8, -20, 20, -30, 30, -38, 37, -40, -44)


@st.composite
def shapes(draw, max_rank: int = 5, min_rank: int = 0, max_numel: int = MAX_NUMEL):
    """Shapes of rank ``min_rank..max_rank``: planes with H, W not multiples of 8, zero sizes."""
    rank = draw(st.sampled_from(range(min_rank, max_rank + 1)))
    if rank <= 2:
        dims = [draw(st.sampled_from(_FLAT_DIMS)) for _ in range(rank)]
        while math.prod(dims) > max_numel:
            dims[int(np.argmax(dims))] //= 2
        return tuple(dims)
    lead = [draw(st.sampled_from(_LEAD_DIMS)) for _ in range(rank - 2)]
    h = draw(st.sampled_from(_PLANE_DIMS))
    w = draw(st.sampled_from(_PLANE_DIMS))
    dims = [*lead, h, w]
    while math.prod(dims) > max_numel:
        i = int(np.argmax(dims))
        dims[i] = dims[i] // 2
    return tuple(dims)


_KINDS = ("normal", "relu", "zeros", "sparse", "uniform", "integers", "constant", "smooth",
          "mixed_scales")


def _values(rng: np.random.Generator, kind: str, n: int, shape) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "relu":
        return np.maximum(rng.standard_normal(n), 0)
    if kind == "zeros":
        return np.zeros(n)
    if kind == "sparse":
        return rng.standard_normal(n) * (rng.random(n) < 0.1)
    if kind == "uniform":
        return rng.uniform(-1, 1, n)
    if kind == "integers":
        return rng.integers(-4, 5, n).astype(np.float64)
    if kind == "constant":
        return np.full(n, rng.standard_normal())
    if kind == "smooth":
        i = np.arange(n)
        return np.sin(i / 7.0 + rng.random() * 6) + 0.01 * i
    # mixed_scales: a few values far above the rest, the hard case for a per-channel scale
    return rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)


@st.composite
def tensors(draw, dtypes=DTYPES, max_rank: int = 5, min_rank: int = 0, specials: bool = True,
            layouts: bool = True, scale_exponents=None):
    """Small tensors of float32/float16/bfloat16 with varied shapes, values and layouts.

    Values: zeros, ReLU'd, sparse, normal, smooth, wide-range magnitudes from 1e-45 to 1e38,
    and injected bit patterns (NaN with payloads, +-Inf, -0, subnormals, max finite). Layouts:
    contiguous, transposed, strided slice, permuted, expanded (stride 0).
    """
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(max_rank=max_rank, min_rank=min_rank))
    n = math.prod(shape)
    kind = draw(st.sampled_from(_KINDS))
    if scale_exponents is None:
        exp = draw(st.sampled_from(_EXPONENTS))
    else:
        exp = draw(st.sampled_from(scale_exponents))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    layout = draw(st.sampled_from(("contiguous", "transpose", "slice", "permute", "expand")))
    if not layouts or len(shape) == 0 or n == 0:
        layout = "contiguous"
    if layout in ("transpose", "permute") and len(shape) < 2:
        layout = "slice"
    if layout == "expand" and (len(shape) < 1 or shape[0] < 2):
        layout = "slice"

    # The tensor's values are made in a base layout and brought to ``shape`` by a view.
    if layout == "transpose":
        base_shape = (*shape[:-2], shape[-1], shape[-2])
    elif layout == "permute":
        perm = draw(st.permutations(range(len(shape))))
        inv = [perm.index(i) for i in range(len(shape))]
        base_shape = tuple(shape[p] for p in perm)
    elif layout == "slice":
        dim = draw(st.integers(0, len(shape) - 1))
        base_shape = tuple(2 * d + 1 if i == dim else d for i, d in enumerate(shape))
    elif layout == "expand":
        base_shape = (1, *shape[1:])
    else:
        base_shape = shape
    nb = math.prod(base_shape)
    with np.errstate(over="ignore"):
        vals = (_values(rng, kind, nb, base_shape) * 10.0**exp).astype(np.float32)
    base = torch.from_numpy(vals).reshape(base_shape).to(dtype)
    if specials and nb:
        count = draw(st.sampled_from((0, 0, 0, 0, 1, 1, 2, 3)))
        if count:
            ib = base.view(INT_OF[dtype]).reshape(-1).clone()
            for _ in range(count):
                pos = draw(st.integers(0, nb - 1))
                ib[pos] = draw(st.sampled_from(SPECIALS[dtype]))
            base = ib.view(dtype).reshape(base_shape)
    if layout == "transpose":
        t = base.transpose(-1, -2)
    elif layout == "permute":
        t = base.permute(*inv)
    elif layout == "slice":
        index = [slice(None)] * len(shape)
        index[dim] = slice(1, None, 2)
        t = base[tuple(index)]
    elif layout == "expand":
        t = base.expand(shape)
    else:
        t = base
    assert tuple(t.shape) == tuple(shape) and t.dtype == dtype
    return t


def _table_forms(entries: list[int]):
    return st.sampled_from((
        entries,
        np.array(entries, dtype=np.int64),
        np.array(entries, dtype=np.uint8).reshape(8, 8),
        torch.tensor(entries, dtype=torch.int32),
        [float(e) for e in entries],
    ))


tables = st.one_of(
    st.sampled_from(NAMED),
    st.integers(1, 100).map(lambda q: f"jpeg{q}"),
    st.lists(st.integers(1, 255), min_size=64, max_size=64).flatmap(_table_forms),
    st.integers(1, 255).map(lambda v: [v] * 64),
)


range_maxes = st.one_of(
    st.none(),
    st.sampled_from((RANGE_MIN_LIMIT, 0.5, 1.0, 3.0, 127 / 32, 4.5, 8.0, RANGE_MAX_LIMIT)),
    st.floats(RANGE_MIN_LIMIT, RANGE_MAX_LIMIT),
)


@st.composite
def codec_kwargs(draw, mode: str, data_exp: int = 0):
    """Keyword arguments of ``Codec`` for ``mode`` (without backend). ``data_exp`` is the decimal
    exponent of the data's magnitude, so that error bounds are sometimes relative to it."""
    if mode == "dct":
        kw = {"mode": mode, "table": draw(st.one_of(st.none(), tables))}
        rm = draw(range_maxes)
        if rm is not None:
            kw["range_max"] = rm
        return kw
    if mode == "sfpr8":
        rm = draw(range_maxes)
        return {"mode": mode} if rm is None else {"mode": mode, "range_max": rm}
    if mode in EB_MODES:
        relative = draw(st.booleans())
        if relative:
            k = draw(st.integers(-7, 1))
            eb = draw(st.floats(1.0, 9.99)) * 10.0 ** (k + data_exp)
        else:
            eb = draw(st.floats(1.0, 9.99)) * 10.0 ** draw(st.integers(-30, 29))
        return {"mode": mode, "error_bound": min(max(eb, 1e-30), 1e30)}
    return {"mode": mode}


@st.composite
def codec_cases(draw, modes=MODES, **tensor_kw):
    """(Codec keyword arguments, tensor) pairs."""
    mode = draw(st.sampled_from(modes))
    exp = draw(st.sampled_from(_EXPONENTS))
    t = draw(tensors(scale_exponents=(exp,), **tensor_kw))
    kw = draw(codec_kwargs(mode, data_exp=exp))
    return kw, t


def compress_eager(kw: dict, t: torch.Tensor) -> bytes:
    """The torch path's eager tensor ops (what runs on CUDA), forced on CPU: ``Codec`` itself
    uses the compiled CPU kernels there."""
    codec = actpack.Codec(**kw, backend="torch")
    return torchpath.compress(t.detach().contiguous(), codec.header(t), kernels=False)


def decompress_eager(data: bytes) -> torch.Tensor:
    return torchpath.decompress(data, kernels=False)


def compress_all(kw: dict, t: torch.Tensor) -> tuple[actpack.Frame, actpack.Frame, bytes]:
    """Compress ``t`` with the numpy model, the torch backend (compiled kernels on CPU) and the
    torch eager ops; returns the numpy and torch frames and the eager bytes."""
    fn = actpack.Codec(**kw, backend="numpy").compress(t)
    ft = actpack.Codec(**kw, backend="torch").compress(t)
    return fn, ft, compress_eager(kw, t)


# ----------------------------------------------------------------------------- frames and decoders

DECODERS = ("numpy", "torch", "eager")  # the default backend is "torch"

# Byte offsets of the fixed header fields (frame.FIXED_HEADER).
OFF_VERSION, OFF_MODE, OFF_NDIM, OFF_NGROUPS = (FIXED_HEADER.offset(n) for n in
                                                ("version", "mode", "ndim", "ngroups"))
FIXED = FIXED_HEADER.size


class Layout:
    """Where a frame's sections are (mirrors frame.parse_frame)."""

    def __init__(self, buf: bytes):
        h = FIXED_HEADER.unpack_from(buf, 0)
        self.head_len = header_length(h.mode, h.ndim, h.ngroups)
        self.head_total = -(-(self.head_len + 4) // 64) * 64
        self.total = len(buf)
        self.trailer = self.total - TRAILER.size
        self.index_end = self.head_total + 2 * h.nblocks
        self.payload = self.head_total + -(-2 * h.nblocks // 64) * 64
        self.payload_end = self.payload + h.payload_bytes

    def checked_bytes(self) -> list[int]:
        """Bytes a CRC, a length or the status word covers."""
        return [*range(self.head_len + 4), *range(self.head_total, self.trailer + 16)]

    def padding_bytes(self) -> list[int]:
        """Zero padding after the header CRC and after the trailer's fields."""
        return [*range(self.head_len + 4, self.head_total), *range(self.trailer + 16, self.total)]


def reseal(buf: bytearray) -> bytes:
    """Recompute the header CRC and the body CRC, so that a mutation reaches the decoders."""
    lay = Layout(bytes(buf))
    struct.pack_into("<I", buf, lay.head_len, crc32c_of(bytes(buf[: lay.head_len])))
    struct.pack_into("<I", buf, lay.trailer, crc32c_of(bytes(buf[lay.head_total : lay.trailer])))
    return bytes(buf)


def decode(data: bytes, backend: str) -> torch.Tensor:
    if backend == "eager":  # the torch path's tensor ops (CUDA's decoder), forced on CPU
        return decompress_eager(data)
    return actpack.decompress(data, backend=backend)


# The test's oracle for FrameError.check: each check's message, as docs/format.md section 10
# lists them (the code under test names its check without reading messages). Decoder messages
# may carry a "block b: " prefix; codec.Frame's own "truncated frame" has no byte count.
CHECK_MESSAGES = {
    Check.NOT_FRAME: r"not an actpack frame: magic is",
    Check.TRUNCATED_FIXED: r"truncated frame(: \d+ bytes, shorter than the 40-byte header)?$",
    Check.VERSION_NEWER: r"frame format version \d+ is newer than this actpack reads",
    Check.VERSION: r"unknown frame format version",
    Check.NDIM: r"corrupted header: ndim",
    Check.NGROUPS: r"corrupted header: \d+ scale groups$",
    Check.TRUNCATED_HEADER: r"truncated frame: \d+ bytes, header needs",
    Check.HEADER_CRC: r"header CRC mismatch",
    Check.HEADER_PADDING: r"corrupted header: nonzero padding",
    Check.MODE_DTYPE: r"corrupted header: mode \d+ / dtype \d+ unknown",
    Check.NUMEL: r"corrupted header: shape \(.*\) has more than",
    Check.TABLE_ZERO: r"corrupted header: quantization table has a zero entry",
    Check.SCALE: r"corrupted header: scale \d+ is",
    Check.SCALE_INVERSE: r"corrupted header: scale \d+ inverse",
    Check.NBLOCKS: r"corrupted header: \d+ blocks",
    Check.GROUPS: r"corrupted header: \d+ scale groups, expected",
    Check.PARAM: r"corrupted header: (range_max|error bound|mask frame with parameter) ",
    Check.EB_SCALE: r"corrupted header: error-bound scale",
    Check.TRUNCATED: r"truncated frame: \d+ bytes, expected",
    Check.TRAILING: r"trailing bytes after the frame",
    Check.TRAILER_RESERVED: r"corrupted trailer: nonzero reserved bytes",
    Check.BODY_CRC: r"payload CRC mismatch",
    Check.LENGTH: r"corrupted trailer: frame length",
    Check.STATUS: r"the producer flagged this frame with status 0x",
    Check.INDEX_ENTRY: r"corrupted index: block \d+ has kind",
    Check.INDEX_SUM: r"corrupted index: block lengths sum to",
    Check.CODED_MASK: r"(block \d+: )?coded block has an empty or non-minimal mask",
    Check.MASK_TRAILING: r"(block \d+: )?mask block has trailing bytes",
    Check.CODED_SHORT: r"(block \d+: )?coded block is shorter than its width nibbles",
    Check.CODED_LENGTH: r"(block \d+: )?coded block length does not match its widths",
    Check.SFPR8_RANGE: r"(block \d+: )?sfpr8 value out of range",
    Check.DENSE_LENGTH: r"(block \d+: )?dense block length does not match its widths",
}


def expected_check(message: str) -> Check:
    """The check whose message ``message`` is (exactly one must match)."""
    hits = [c for c, pattern in CHECK_MESSAGES.items() if re.match(pattern, message)]
    assert len(hits) == 1, f"{message!r} is the message of {hits}, expected one check"
    return hits[0]


def assert_check(exc: FrameError) -> Check:
    """``exc`` carries the check (and block) its message names; returns the check."""
    msg = str(exc)
    assert exc.check is expected_check(msg), f"{msg!r} carries {exc.check}"
    block = re.match(r"block (\d+): ", msg)
    assert exc.block == (int(block.group(1)) if block else None), f"{msg!r}: block {exc.block}"
    return exc.check


def _outcome(data: bytes, backend: str):
    """("error", message) for a FrameError, ("ok", bits) for a tensor; anything else fails."""
    try:
        t = decode(data, backend)
    except FrameError as exc:
        assert_check(exc)
        return "error", str(exc)
    return "ok", bits(t)


def parse_check(data: bytes) -> Check | None:
    """The check ``parse_frame`` names for ``data`` (asserting it is its message's), or None
    when ``data`` passes it."""
    try:
        parse_frame(data)
    except FrameError as exc:
        assert not exc.check.block
        return assert_check(exc)
    return None


def assert_rejected(data: bytes, match: str | None = None, *, check: Check | None = None) -> None:
    """Every decoder raises FrameError (its message matching ``match``) and names the check
    its message is; parse_frame's check, where it raises, is ``check`` (where given)."""
    parsed = parse_check(data)
    if check is not None:
        assert parsed is check, f"parse_frame names {parsed}, expected {check}"
    for backend in DECODERS:
        with pytest.raises(FrameError, match=match) as info:
            decode(data, backend)
        assert_check(info.value)


def assert_backends_agree(data: bytes) -> str:
    """All decoders raise FrameError, or all return the same bits. Returns which."""
    outcomes = {backend: _outcome(data, backend) for backend in DECODERS}
    kinds = {k for k, _ in outcomes.values()}
    assert len(kinds) == 1, {b: (k, v if k == "error" else "tensor") for b, (k, v) in
                             outcomes.items()}
    kind = kinds.pop()
    if kind == "ok":
        ref = outcomes["numpy"][1]
        for _, v in outcomes.values():
            assert torch.equal(v, ref)
    return kind
