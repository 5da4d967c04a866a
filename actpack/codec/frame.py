"""The frame: the wire format between host and card and the stored form of a compressed tensor.

Layout (little-endian; every section starts on a 64-byte boundary, zero padded)::

    header   fixed fields, shape, table (dct), scales, header CRC32C
    index    one u16 per block: kind (2 bits) | mask bytes - 1 (3 bits) | length in bytes (11 bits)
    payload  the blocks' bytes, back to back in block order
    trailer  64 bytes: CRC32C of index and payload sections (with padding), status, frame length

docs/format.md is the prose form of this module; the gateware's frame builder and parser follow it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import crc32c
import numpy as np

from actpack.codec.layout import Field, Layout
from actpack.codec.spec import (
    ERROR_BOUND_RANGE,
    MAX_GROUPS,
    MAX_NUMEL,
    RANGE_MAX_LIMIT,
    RANGE_MIN_LIMIT,
    SCALE_EXP_RANGE,
    DType,
    Geometry,
    Mode,
    Scale,
    eb_scale_range,
    geometry,
    nonzero_numel,
)
from actpack.errors import Check, FrameError

__all__ = [
    "ALIGN",
    "DENSE_HEADER",
    "DIM_BYTES",
    "FIXED_HEADER",
    "HEADER_CRC_BYTES",
    "MAGIC",
    "MAX_NDIM",
    "SCALE_RECORD",
    "TABLE_BYTES",
    "TRAILER",
    "VERSION",
    "Header",
    "Kind",
    "build_frame",
    "crc32c_of",
    "frame_bound",
    "frame_length",
    "groups_of",
    "header_length",
    "pack_index",
    "parse_frame",
    "scale_record",
    "unpack_index",
]

MAGIC = b"ACTP"
VERSION = 1
ALIGN = 64  # section alignment: one beat of a 512-bit AXI-Stream, whole beats at any XDMA width
MAX_NDIM = 8

DIM_BYTES = 8  # a shape entry: u64
TABLE_BYTES = 64  # the dct quantization table: 64 u8, row-major
HEADER_CRC_BYTES = 4  # CRC32C of the header fields, right after them

FIXED_HEADER = Layout("FixedHeader", [  # docs/format.md 2.1
    Field("magic", "4s", "MAGIC"),
    Field("version", "H", "VERSION"),
    Field("mode", "B", "spec.Mode"),
    Field("dtype", "B", "spec.DType"),
    Field("ndim", "B", "shape entries that follow, at most MAX_NDIM"),
    Field("table_id", "B"),
    Field("table_arg", "B"),
    Field("reserved", "B", "written 0, not checked", reserved=True),
    Field("ngroups", "I", "scale records that follow (groups_of)"),
    Field("nblocks", "Q", "index entries"),
    Field("payload_bytes", "Q", "payload section bytes before padding"),
    Field("param", "d", "range_max (dct, sfpr8), error bound (eb, eb2), 0 (mask)"),
])
SCALE_RECORD = Layout("ScaleRecord", [  # docs/format.md 2.1
    Field("mantissa", "H", "in [2**15, 2**16)"),
    Field("exponent", "h", "in spec.SCALE_EXP_RANGE"),
    Field("inverse", "f", "float32 inverse of mantissa * 2**exponent"),
])
TRAILER = Layout("Trailer", [  # docs/format.md 2.5
    Field("body_crc", "I", "CRC32C of the index and payload sections, padding included"),
    Field("status", "I", "0: good"),
    Field("length", "Q", "frame bytes"),
    Field("reserved", "48s", "zero", reserved=True),
])
assert TRAILER.size == ALIGN

# scale records per mode: one per scale group of the geometry (None) or a fixed count
_GROUPS = {Mode.DCT: None, Mode.EB: 1, Mode.SFPR8: None, Mode.MASK: 0, Mode.EB2: 1}
assert set(_GROUPS) == set(Mode)


def header_length(mode, ndim, ngroups):
    """Header bytes before the header CRC: fixed part, shape, table (dct), scale records. Works
    on ints and on Amaranth values alike (the gateware computes it with this function)."""
    return (FIXED_HEADER.size + DIM_BYTES * ndim + TABLE_BYTES * (mode == Mode.DCT)
            + SCALE_RECORD.size * ngroups)


def groups_of(mode, geo_groups):
    """Scale records a frame of ``mode`` carries, given its geometry's group count
    (``Geometry.groups``): one per group (dct, sfpr8), one (eb), none (mask). Ints or Amaranth
    values alike; 0 for a code that is no mode."""
    total = 0
    for m, n in _GROUPS.items():
        total = total + (mode == m) * (geo_groups if n is None else n)
    return total


def frame_length(header_len: int, nblocks: int, payload_bytes: int) -> int:
    """Bytes of a frame whose header (before its CRC) is ``header_len`` bytes."""
    return (_align(header_len + HEADER_CRC_BYTES) + _align(2 * nblocks) + _align(payload_bytes)
            + TRAILER.size)


class Kind(enum.IntEnum):
    """Block kind in the index."""

    ZERO = 0  # every coded value is zero: no payload bytes
    CODED = 1  # sparse: mask + widths + packed nonzero values
    RAW = 2  # the 64 input values, bit for bit, in the input dtype
    DENSE = 3  # all 64 values (zeros included) in 8 groups: 4 width bytes + packed values


DENSE_HEADER = 4  # width bytes of a DENSE block (8 nibbles)


def crc32c_of(*parts) -> int:
    """CRC32C (Castagnoli, reflected, init and xorout 0xFFFFFFFF) over bytes-like ``parts``."""
    crc = 0
    for part in parts:
        crc = crc32c.crc32c(part, crc)
    return crc


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack_index(kind: np.ndarray, mask_bytes: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Index entries (u16) from per-block kind, mask byte count (1..8, coded only) and length."""
    kind = np.asarray(kind, dtype=np.uint16)
    mb = np.where(kind == Kind.CODED, np.asarray(mask_bytes, dtype=np.int64) - 1, 0)
    return (kind << 14) | (mb.astype(np.uint16) << 11) | np.asarray(length, dtype=np.uint16)


def unpack_index(index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``pack_index``: (kind, mask bytes, length) as int64 arrays."""
    index = np.asarray(index, dtype=np.int64)
    return index >> 14, ((index >> 11) & 7) + 1, index & 0x7FF


@dataclass(frozen=True, eq=False)
class Header:
    """Everything a decoder needs besides the index and payload."""

    mode: Mode
    dtype: DType
    shape: tuple[int, ...]
    param: float  # range_max for dct/sfpr8, error bound for eb/eb2, 0 for mask
    table_id: int = 0
    table_arg: int = 0
    table: np.ndarray | None = None  # 64 uint8, dct only
    scales: tuple[Scale, ...] = ()
    payload_bytes: int = 0
    geometry: Geometry = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "geometry", geometry(self.shape))

    @property
    def nblocks(self) -> int:
        return self.geometry.nblocks

    def to_bytes(self) -> bytes:
        """The header section: fields, header CRC32C over them, zero padding to 64 bytes."""
        parts = [
            FIXED_HEADER.pack(
                magic=MAGIC, version=VERSION, mode=int(self.mode), dtype=int(self.dtype),
                ndim=len(self.shape), table_id=self.table_id, table_arg=self.table_arg,
                ngroups=len(self.scales), nblocks=self.nblocks,
                payload_bytes=self.payload_bytes, param=float(self.param),
            ),
            struct.pack(f"<{len(self.shape)}Q", *self.shape),
        ]
        if self.mode is Mode.DCT:
            parts.append(np.asarray(self.table, dtype=np.uint8).tobytes())
        # the record's struct directly (its fields in order): a layer has a record per channel
        parts += [SCALE_RECORD.struct.pack(s.mantissa, s.exponent, s.inverse) for s in self.scales]
        body = b"".join(parts)
        body += struct.pack("<I", crc32c_of(body))
        return body + bytes(_align(len(body)) - len(body))


def build_frame(header: Header, index: np.ndarray, payload) -> bytes:
    """Assemble a frame from its header, u16 index and payload bytes (any bytes-like object)."""
    payload = memoryview(payload).cast("B")
    if header.payload_bytes != len(payload):
        raise AssertionError("header.payload_bytes does not match the payload")
    head = header.to_bytes()
    idx = np.ascontiguousarray(index, dtype="<u2").tobytes()
    idx_len, pay_len = _align(len(idx)), _align(len(payload))
    total = len(head) + idx_len + pay_len + TRAILER.size
    out = bytearray(total)
    pos = len(head)
    out[:pos] = head
    out[pos : pos + len(idx)] = idx
    pos += idx_len
    out[pos : pos + len(payload)] = payload
    pos += pay_len
    body_crc = crc32c_of(memoryview(out)[len(head) : pos])
    TRAILER.pack_into(out, pos, body_crc=body_crc, status=0, length=total)
    return bytes(out)


def frame_bound(shape, dtype: DType, mode: Mode) -> int:
    """Largest possible frame for these arguments (every block raw); buffers can be sized up front.

    For every input: frame bytes <= 64 * itemsize * nblocks + 2 * nblocks + header + 192.
    """
    geo = geometry(shape)
    head = len(
        Header(mode, dtype, tuple(int(d) for d in shape), 1.0, table=np.ones(64, np.uint8),
               scales=(Scale(1 << 15, -15),) * groups_of(mode, geo.groups)).to_bytes()
    )
    payload = _align(64 * dtype.itemsize * geo.nblocks)
    return head + _align(2 * geo.nblocks) + payload + TRAILER.size


def _fail(check: Check, msg: str):
    raise FrameError(msg, check=check)


def parse_frame(buf) -> tuple[Header, np.ndarray, memoryview]:
    """Validate ``buf`` as a frame and split it into (header, index, payload).

    Raises ``FrameError`` naming what is wrong: foreign data, a newer version, truncation, trailing
    bytes, a CRC mismatch, a producer's error status, or fields that are inconsistent.
    """
    mv = memoryview(buf).cast("B")
    if len(mv) < 4 or bytes(mv[:4]) != MAGIC:
        _fail(Check.NOT_FRAME,
              f"not an actpack frame: magic is {bytes(mv[:4])!r}, expected {MAGIC!r}")
    if len(mv) < FIXED_HEADER.size:
        _fail(Check.TRUNCATED_FIXED, f"truncated frame: {len(mv)} bytes, shorter than the "
              f"{FIXED_HEADER.size}-byte header")
    fixed = FIXED_HEADER.unpack_from(mv, 0)
    version, mode, dtype, ndim = fixed.version, fixed.mode, fixed.dtype, fixed.ndim
    ngroups, nblocks, payload_bytes, param = (fixed.ngroups, fixed.nblocks, fixed.payload_bytes,
                                              fixed.param)
    if version > VERSION:
        _fail(Check.VERSION_NEWER,
              f"frame format version {version} is newer than this actpack reads ({VERSION}); "
              "upgrade actpack")
    if version != VERSION:
        _fail(Check.VERSION, f"unknown frame format version {version}")
    if ndim > MAX_NDIM:
        _fail(Check.NDIM, f"corrupted header: ndim {ndim} > {MAX_NDIM}")
    if ngroups > MAX_GROUPS:
        _fail(Check.NGROUPS, f"corrupted header: {ngroups} scale groups")
    head_len = header_length(mode, ndim, ngroups)
    if len(mv) < head_len + HEADER_CRC_BYTES:
        _fail(Check.TRUNCATED_HEADER, f"truncated frame: {len(mv)} bytes, header needs "
              f"{head_len + HEADER_CRC_BYTES}")
    (head_crc,) = struct.unpack_from("<I", mv, head_len)
    if crc32c_of(mv[:head_len]) != head_crc:
        _fail(Check.HEADER_CRC, "header CRC mismatch: the frame header is corrupted")
    head_end = head_len + HEADER_CRC_BYTES
    if any(mv[head_end : min(len(mv), _align(head_end))]):
        _fail(Check.HEADER_PADDING, "corrupted header: nonzero padding after the header CRC")
    try:
        mode, dtype = Mode(mode), DType(dtype)
    except ValueError:
        _fail(Check.MODE_DTYPE, f"corrupted header: mode {mode} / dtype {dtype} unknown")
    shape = struct.unpack_from(f"<{ndim}Q", mv, FIXED_HEADER.size)
    if nonzero_numel(shape) > MAX_NUMEL:
        _fail(Check.NUMEL, f"corrupted header: shape {shape} has more than {MAX_NUMEL} elements "
              "(zero dims counted as 1)")
    pos = FIXED_HEADER.size + DIM_BYTES * ndim
    table = None
    if mode is Mode.DCT:
        table = np.frombuffer(mv[pos : pos + TABLE_BYTES], dtype=np.uint8).copy()
        pos += TABLE_BYTES
        if np.any(table == 0):
            _fail(Check.TABLE_ZERO, "corrupted header: quantization table has a zero entry")
    scales = [scale_record(i, *SCALE_RECORD.unpack_from(mv, pos + SCALE_RECORD.size * i))
              for i in range(ngroups)]
    header = Header(mode, dtype, tuple(shape), param, fixed.table_id, fixed.table_arg, table,
                    tuple(scales), payload_bytes)
    geo = header.geometry
    if nblocks != geo.nblocks:
        _fail(Check.NBLOCKS,
              f"corrupted header: {nblocks} blocks, shape {tuple(shape)} has {geo.nblocks}")
    if ngroups != groups_of(mode, geo.groups):
        _fail(Check.GROUPS, f"corrupted header: {ngroups} scale groups, expected "
              f"{groups_of(mode, geo.groups)}")
    _check_param(mode, param, scales)

    head_total = _align(head_end)
    idx_len = _align(2 * nblocks)
    total = frame_length(head_len, nblocks, payload_bytes)
    if len(mv) < total:
        _fail(Check.TRUNCATED, f"truncated frame: {len(mv)} bytes, expected {total}")
    if len(mv) > total:
        _fail(Check.TRAILING, f"trailing bytes after the frame: {len(mv)} bytes, expected {total}")
    trailer = TRAILER.unpack_from(mv, total - TRAILER.size)
    body_crc, status, length = trailer.body_crc, trailer.status, trailer.length
    if any(trailer.reserved):
        _fail(Check.TRAILER_RESERVED, "corrupted trailer: nonzero reserved bytes")
    if crc32c_of(mv[head_total : total - TRAILER.size]) != body_crc:
        _fail(Check.BODY_CRC, "payload CRC mismatch: the frame's index or payload is corrupted")
    if length != total:
        _fail(Check.LENGTH, f"corrupted trailer: frame length {length}, actual {total}")
    if status != 0:
        _fail(Check.STATUS, f"the producer flagged this frame with status 0x{status:08x}")
    index = np.frombuffer(mv[head_total : head_total + 2 * nblocks], dtype="<u2")
    _check_index(header, index)
    pay = mv[head_total + idx_len : head_total + idx_len + payload_bytes]
    return header, index, pay


def scale_record(i: int, mantissa: int, exponent: int, inverse: float) -> Scale:
    """Scale record ``i`` as a ``Scale`` (docs/format.md 10 #11, #12): a mantissa in
    ``[2**15, 2**16)``, an exponent an encoder writes (``SCALE_EXP_RANGE``, so the inverse is
    finite) and the inverse that belongs to them; else ``FrameError``."""
    lo, hi = SCALE_EXP_RANGE
    if not (1 << 15) <= mantissa < (1 << 16) or not lo <= exponent <= hi:
        _fail(Check.SCALE, f"corrupted header: scale {i} is {mantissa} * 2**{exponent}, outside "
              f"[2**15, 2**16) * 2**[{lo}, {hi}]")
    s = Scale(mantissa, exponent)
    if np.float32(inverse) != s.inverse:
        _fail(Check.SCALE_INVERSE,
              f"corrupted header: scale {i} inverse does not match its mantissa and exponent")
    return s


def _check_param(mode: Mode, param: float, scales: list[Scale]) -> None:
    if mode in (Mode.DCT, Mode.SFPR8):
        if not RANGE_MIN_LIMIT <= param <= RANGE_MAX_LIMIT:
            _fail(Check.PARAM, f"corrupted header: range_max {param}")
    elif mode.error_bounded:
        lo, hi = ERROR_BOUND_RANGE
        if not lo <= param <= hi:
            _fail(Check.PARAM, f"corrupted header: error bound {param}")
        lo, hi = eb_scale_range(param)
        if not lo <= scales[0].value <= hi:
            _fail(Check.EB_SCALE,
                  "corrupted header: error-bound scale does not match the error bound")
    elif param != 0:
        _fail(Check.PARAM, f"corrupted header: mask frame with parameter {param}")


def _check_index(header: Header, index: np.ndarray) -> None:
    kind, mb, length = unpack_index(index)
    raw_len = 64 * header.dtype.itemsize
    bad = (
        ((kind == Kind.ZERO) & ((length != 0) | (mb != 1)))
        | ((kind == Kind.RAW) & ((length != raw_len) | (mb != 1)))
        | ((kind == Kind.CODED) & (length < mb))
        | ((kind == Kind.DENSE) & ((length < DENSE_HEADER) | (mb != 1)))
    )
    if header.mode is Mode.MASK:
        bad |= (kind == Kind.RAW) | (kind == Kind.DENSE) | ((kind == Kind.CODED) & (length != mb))
    if np.any(bad):
        b = int(np.flatnonzero(bad)[0])
        _fail(Check.INDEX_ENTRY,
              f"corrupted index: block {b} has kind {kind[b]}, length {length[b]}")
    if int(length.sum()) != header.payload_bytes:
        _fail(Check.INDEX_SUM, f"corrupted index: block lengths sum to {int(length.sum())}, "
              f"payload is {header.payload_bytes} bytes")
