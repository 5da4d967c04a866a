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

from actpack.codec.frame import ALIGN, MAX_NDIM, crc32c_of
from actpack.codec.spec import DType, Mode
from actpack.errors import Check

__all__ = [
    "DESCRIPTOR_BYTES",
    "JOB_MAGIC",
    "PROTOCOL_VERSION",
    "SCALE_RECORD_BYTES",
    "SHAPE_BYTES",
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
    "table_crc",
    "unpack_shape",
    "values_bytes",
]

PROTOCOL_VERSION = 1  # bump on any change of the layouts below (reported in regs VERSION)

JOB_MAGIC = b"AJOB"
STATUS_MAGIC = b"ASTS"
DESCRIPTOR_BYTES = 64
STATUS_BYTES = 64
SHAPE_BYTES = 8 * MAX_NDIM  # the shape section is always 8 x u64, unused dimensions zero
SCALE_RECORD_BYTES = 8  # frame scale record <Hhf: mantissa, exponent, float32 inverse

# Descriptor: magic, op, mode, dtype, ndim, table_id, table_arg, flags (0), ngroups, nblocks,
# param, table_crc, tag, in_bytes, 12 reserved bytes (0); then CRC32C of bytes [0, 60).
_DESCRIPTOR = struct.Struct("<4sBBBBBBHIQdIIQ12x")
# Status: magic, code, tag, op, bytes_in, bytes_out, detail, 24 reserved bytes (0);
# then CRC32C of bytes [0, 60).
_STATUS = struct.Struct("<4sIIIQQI24x")
assert _DESCRIPTOR.size + 4 == DESCRIPTOR_BYTES and _STATUS.size + 4 == STATUS_BYTES


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


def _check_crc(data, what: str) -> None:
    (crc,) = struct.unpack_from("<I", data, 60)
    if crc32c_of(bytes(data[:60])) != crc:
        raise ProtocolError(f"{what}: CRC mismatch")


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
        body = _DESCRIPTOR.pack(JOB_MAGIC, int(self.op), self.mode, self.dtype, self.ndim,
                                self.table_id, self.table_arg, 0, self.ngroups, self.nblocks,
                                self.param, self.table_crc, self.tag, self.in_bytes)
        return body + struct.pack("<I", crc32c_of(body))

    @classmethod
    def from_bytes(cls, data) -> Descriptor:
        """Parse and check magic, CRC, reserved bytes and op; ``ProtocolError`` otherwise."""
        data = memoryview(data).cast("B")
        if len(data) < DESCRIPTOR_BYTES or bytes(data[:4]) != JOB_MAGIC:
            raise ProtocolError(f"descriptor: magic {bytes(data[:4])!r}, expected {JOB_MAGIC!r}")
        _check_crc(data, "descriptor")
        (_, op, mode, dtype, ndim, table_id, table_arg, flags, ngroups, nblocks, param,
         tcrc, tag, in_bytes) = _DESCRIPTOR.unpack_from(data, 0)
        if flags or any(data[48:60]):
            raise ProtocolError("descriptor: reserved bytes are not zero")
        try:
            op = Op(op)
        except ValueError:
            raise ProtocolError(f"descriptor: unknown op {op}") from None
        return cls(op, in_bytes, tag, mode, dtype, ndim, table_id, table_arg, ngroups, nblocks,
                   param, tcrc)

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
        body = _STATUS.pack(STATUS_MAGIC, int(self.code), self.tag, int(self.op), self.bytes_in,
                            self.bytes_out, self.detail)
        return body + struct.pack("<I", crc32c_of(body))

    @classmethod
    def from_bytes(cls, data) -> StatusRecord:
        data = memoryview(data).cast("B")
        if len(data) != STATUS_BYTES or bytes(data[:4]) != STATUS_MAGIC:
            raise ProtocolError(f"status record: {len(data)} bytes starting {bytes(data[:4])!r}")
        _check_crc(data, "status record")
        _, code, tag, op, bytes_in, bytes_out, detail = _STATUS.unpack_from(data, 0)
        try:
            code = ErrorCode(code)
        except ValueError:
            code = ErrorCode.INTERNAL
        try:
            op = Op(op)
        except ValueError:
            raise ProtocolError(f"status record: unknown op {op}") from None
        return cls(code, tag, op, bytes_in, bytes_out, detail)

    @staticmethod
    def looks_like(data) -> bool:
        """True if ``data`` is exactly one status record with a valid CRC."""
        try:
            StatusRecord.from_bytes(data)
        except ProtocolError:
            return False
        return True
