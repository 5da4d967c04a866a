"""The card's job protocol: what the host streams to the card (H2C) and what comes back (C2H).

docs/card.md is the prose form of this module. One job is one H2C transfer (one ``tlast``, one
``write()`` on the XDMA H2C node) and one C2H message (one ``tlast``, one ``read()`` on the C2H node
opened with ``O_TRUNC``). Every field is fixed width and little-endian; every section starts on a
64-byte boundary, so a 512-bit AXI4-Stream sees whole beats and narrower streams whole words.

Compress job::

    H2C  descriptor (64 B, op COMPRESS) | shape (64 B: 8 x u64) | scale records (A(8 G))
         | values: nblocks x 64 values of the input dtype, in block order, raster order inside a
           block, padding already applied (the host tiles; the card needs no line buffer)
    C2H  exactly the frame ``actpack.Codec.compress`` produces   (or a 64-byte status record)

Decompress job::

    H2C  descriptor (64 B, op DECOMPRESS, ``in_bytes`` = frame length) | the frame
    C2H  nblocks x 64 decoded values of the frame's dtype, in block order (padding positions
         included, their values unspecified) | 64-byte status record
         (or only the status record, when the card rejected the frame before its first block)

The host computes the scales (one reduction) and sends them as the frame's own 8-byte scale
records; the card applies ``(m, e)`` and copies the records into the frame header verbatim.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from actpack.codec.frame import ALIGN, DIM_BYTES, MAX_NDIM, SCALE_RECORD, crc32c_of
from actpack.codec.layout import Field, Layout
from actpack.codec.spec import DType, Mode
from actpack.errors import Check

__all__ = [
    "DESCRIPTOR",
    "DESCRIPTOR_BYTES",
    "JOB_MAGIC",
    "PROTOCOL_VERSION",
    "SCALE_RECORD_BYTES",
    "SHAPE_BYTES",
    "STATUS",
    "STATUS_BYTES",
    "STATUS_MAGIC",
    "Descriptor",
    "ErrorCode",
    "Op",
    "ProtocolError",
    "StatusRecord",
    "align",
    "compress_in_bytes",
    "frame_error_code",
    "pack_shape",
    "seal",
    "table_crc",
    "unpack_shape",
    "values_bytes",
]

PROTOCOL_VERSION = 1  # bump on any change of the layouts below (reported in regs VERSION)

JOB_MAGIC = b"AJOB"
STATUS_MAGIC = b"ASTS"
SHAPE_BYTES = DIM_BYTES * MAX_NDIM  # the shape section is always 8 x u64, unused dimensions zero
SCALE_RECORD_BYTES = SCALE_RECORD.size  # the frame's own scale record (frame.SCALE_RECORD)

DESCRIPTOR = Layout("Descriptor", [  # docs/card.md 3.1
    Field("magic", "4s", "JOB_MAGIC"),
    Field("op", "B", "Op"),
    Field("mode", "B", "frame header field (compress; else 0)"),
    Field("dtype", "B", "frame header field"),
    Field("ndim", "B", "frame header field"),
    Field("table_id", "B", "frame header field"),
    Field("table_arg", "B", "frame header field"),
    Field("flags", "H", "0", reserved=True),
    Field("ngroups", "I", "frame header field"),
    Field("nblocks", "Q", "frame header field"),
    Field("param", "d", "frame header field"),
    Field("table_crc", "I", "table_crc of the TABLE window (dct), else 0"),
    Field("tag", "I", "echoed in the status record and LAST_TAG"),
    Field("in_bytes", "Q", "H2C bytes after the descriptor up to tlast"),
    Field("reserved", "12s", "zero", reserved=True),
    Field("crc", "I", "CRC32C of the bytes before it"),
])
STATUS = Layout("Status", [  # docs/card.md 3.4
    Field("magic", "4s", "STATUS_MAGIC"),
    Field("code", "I", "ErrorCode"),
    Field("tag", "I", "the descriptor's tag"),
    Field("op", "I", "the descriptor's op"),
    Field("bytes_in", "Q", "this job's H2C bytes, descriptor included"),
    Field("bytes_out", "Q", "this job's C2H bytes, this record excluded"),
    Field("detail", "I", "code-specific number"),
    Field("reserved", "24s", "zero", reserved=True),
    Field("crc", "I", "CRC32C of the bytes before it"),
])
DESCRIPTOR_BYTES = DESCRIPTOR.size
STATUS_BYTES = STATUS.size
assert DESCRIPTOR_BYTES == STATUS_BYTES == ALIGN


class ProtocolError(ValueError):
    """Bytes that are not a well-formed descriptor or status record."""


class Op(enum.IntEnum):
    """Job operation: the descriptor's ``op`` and the CONTROL register's ``OP`` field.

    ``NONE`` with ``in_bytes`` 0 is a fence: the card answers with an OK status record echoing the
    tag; after a soft reset the driver drops every C2H byte up to that record."""

    NONE = 0
    COMPRESS = 1
    DECOMPRESS = 2


class ErrorCode(enum.IntEnum):
    """A status record's ``code`` (and STATUS.LAST_CODE). 0 is success."""

    OK = 0
    BAD_DESCRIPTOR = 1  # magic, CRC, reserved bytes, field ranges, shape vs nblocks/ngroups
    BAD_OP = 2  # descriptor op differs from CONTROL.OP (host and card out of step)
    UNSUPPORTED = 3  # mode or dtype not in CAPS
    TABLE_MISMATCH = 4  # table window CRC differs from the descriptor's table_crc, or a 0 entry
    TOO_LARGE = 5  # the frame could exceed the card's frame buffer (BUFFER_KIB)
    LENGTH = 6  # tlast early or late: H2C bytes differ from what the descriptor announces
    HEADER_CRC = 7  # decompress: frame header CRC mismatch
    BODY_CRC = 8  # decompress: frame body CRC mismatch
    BAD_FRAME = 9  # decompress: any other frame check of docs/format.md section 10
    ABORTED = 10  # the job was cut short by CONTROL.SOFT_RESET
    CONTRACT = 11  # model only: tiles or scales break the host's side of the contract
    INTERNAL = 255

    @property
    def is_crc(self) -> bool:
        return self in (ErrorCode.HEADER_CRC, ErrorCode.BODY_CRC)

    @property
    def check(self) -> Check | None:
        """The check of docs/format.md section 10 this code names, where it names one (the CRC
        codes); ``BAD_FRAME`` stands for every other check and names none."""
        return _CHECK_OF_CODE.get(self)


_CODE_OF_CHECK = {Check.HEADER_CRC: ErrorCode.HEADER_CRC, Check.BODY_CRC: ErrorCode.BODY_CRC}
_CHECK_OF_CODE = {code: check for check, code in _CODE_OF_CHECK.items()}


def frame_error_code(check: Check) -> ErrorCode:
    """The code a decompress job answers for a frame that fails ``check`` (an
    ``actpack.errors.Check``): the two CRC checks have their own codes, every other one is
    ``BAD_FRAME``."""
    if not isinstance(check, Check):
        raise TypeError(f"check: expected an actpack.errors.Check, got {check!r}")
    return _CODE_OF_CHECK.get(check, ErrorCode.BAD_FRAME)


def align(n: int) -> int:
    """``n`` rounded up to a multiple of 64 (the section alignment, ``frame.ALIGN``)."""
    return -(-n // ALIGN) * ALIGN


def values_bytes(dtype: DType, nblocks: int) -> int:
    """Bytes of ``nblocks`` tiled blocks of ``dtype`` values (always a multiple of 64)."""
    return 64 * dtype.itemsize * nblocks


def compress_in_bytes(dtype: DType, ngroups: int, nblocks: int) -> int:
    """``in_bytes`` of a compress descriptor: shape, scale records and values sections."""
    return SHAPE_BYTES + align(SCALE_RECORD_BYTES * ngroups) + values_bytes(dtype, nblocks)


def table_crc(table) -> int:
    """CRC32C of the 64 quantization table entries (u8, row-major), as the card computes it over
    its table window."""
    return crc32c_of(np.asarray(table, dtype=np.uint8).tobytes())


def pack_shape(shape) -> bytes:
    """The 64-byte shape section: ``ndim`` x u64, outermost first, the rest zero."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_NDIM:
        raise ValueError(f"shape: at most {MAX_NDIM} dimensions, got {len(shape)}")
    return struct.pack(f"<{MAX_NDIM}Q", *shape, *([0] * (MAX_NDIM - len(shape))))


def unpack_shape(data, ndim: int) -> tuple[int, ...]:
    """Inverse of ``pack_shape``; raises ``ProtocolError`` if an unused dimension is nonzero."""
    dims = struct.unpack_from(f"<{MAX_NDIM}Q", data, 0)
    if ndim > MAX_NDIM or any(dims[ndim:]):
        raise ProtocolError(f"shape section: ndim {ndim} with dims {dims}")
    return tuple(dims[:ndim])


def seal(layout: Layout, **fields) -> bytes:
    """``fields`` packed by ``layout`` (``DESCRIPTOR`` or ``STATUS``) with its ``crc`` field, the
    CRC32C of the bytes before it; reserved fields zero unless given (tests give them)."""
    body = layout.pack(**fields, crc=0)[: layout.offset("crc")]
    return layout.pack(**fields, crc=crc32c_of(body))


def _check_crc(layout: Layout, data, what: str):
    """``data`` unpacked by ``layout``; ``ProtocolError`` if its ``crc`` field does not match."""
    record = layout.unpack_from(data, 0)
    if crc32c_of(bytes(data[: layout.offset("crc")])) != record.crc:
        raise ProtocolError(f"{what}: CRC mismatch")
    return record


@dataclass(frozen=True)
class Descriptor:
    """The first 64 bytes of every job.

    ``mode``/``dtype``/``ndim``/``table_id``/``table_arg``/``ngroups``/``nblocks``/``param`` are the
    frame header's fields (compress; 0 for decompress); ``table_crc`` is ``table_crc`` of the
    table the host loaded into the TABLE window (dct only, else 0); ``tag`` is echoed in the status
    record and LAST_TAG; ``in_bytes`` counts the H2C bytes after the descriptor up to ``tlast``.
    """

    op: Op
    in_bytes: int
    tag: int = 0
    mode: int = 0
    dtype: int = 0
    ndim: int = 0
    table_id: int = 0
    table_arg: int = 0
    ngroups: int = 0
    nblocks: int = 0
    param: float = 0.0
    table_crc: int = 0

    def to_bytes(self) -> bytes:
        return seal(DESCRIPTOR, magic=JOB_MAGIC, op=int(self.op), mode=self.mode,
                     dtype=self.dtype, ndim=self.ndim, table_id=self.table_id,
                     table_arg=self.table_arg, ngroups=self.ngroups, nblocks=self.nblocks,
                     param=self.param, table_crc=self.table_crc, tag=self.tag,
                     in_bytes=self.in_bytes)

    @classmethod
    def from_bytes(cls, data) -> Descriptor:
        """Parse and check magic, CRC, reserved bytes and op; ``ProtocolError`` otherwise."""
        data = memoryview(data).cast("B")
        if len(data) < DESCRIPTOR_BYTES or bytes(data[:4]) != JOB_MAGIC:
            raise ProtocolError(f"descriptor: magic {bytes(data[:4])!r}, expected {JOB_MAGIC!r}")
        d = _check_crc(DESCRIPTOR, data, "descriptor")
        if d.flags or any(d.reserved):
            raise ProtocolError("descriptor: reserved bytes are not zero")
        try:
            op = Op(d.op)
        except ValueError:
            raise ProtocolError(f"descriptor: unknown op {d.op}") from None
        return cls(op, d.in_bytes, d.tag, d.mode, d.dtype, d.ndim, d.table_id, d.table_arg,
                   d.ngroups, d.nblocks, d.param, d.table_crc)

    def frame_mode(self) -> Mode:
        return Mode(self.mode)

    def frame_dtype(self) -> DType:
        return DType(self.dtype)


@dataclass(frozen=True)
class StatusRecord:
    """The 64-byte record that ends every decompress result and replaces a rejected compress
    result. ``bytes_in``/``bytes_out`` count this job's H2C bytes (descriptor included) and C2H
    bytes (this record excluded); ``detail`` is a code-specific number (e.g. a block index)."""

    code: ErrorCode
    tag: int = 0
    op: Op = Op.NONE
    bytes_in: int = 0
    bytes_out: int = 0
    detail: int = 0

    def to_bytes(self) -> bytes:
        return seal(STATUS, magic=STATUS_MAGIC, code=int(self.code), tag=self.tag,
                     op=int(self.op), bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                     detail=self.detail)

    @classmethod
    def from_bytes(cls, data) -> StatusRecord:
        data = memoryview(data).cast("B")
        if len(data) != STATUS_BYTES or bytes(data[:4]) != STATUS_MAGIC:
            raise ProtocolError(f"status record: {len(data)} bytes starting {bytes(data[:4])!r}")
        r = _check_crc(STATUS, data, "status record")
        try:
            code = ErrorCode(r.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        try:
            op = Op(r.op)
        except ValueError:
            raise ProtocolError(f"status record: unknown op {r.op}") from None
        return cls(code, r.tag, op, r.bytes_in, r.bytes_out, r.detail)

    @staticmethod
    def looks_like(data) -> bool:
        """True if ``data`` is exactly one status record with a valid CRC."""
        try:
            StatusRecord.from_bytes(data)
        except ProtocolError:
            return False
        return True
