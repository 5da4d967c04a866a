"""The numpy reference model: the definition of the codec, written for clarity.

Every byte the torch path (``torchpath``) and the gateware produce must equal what this module
produces. Arrays are numpy; bfloat16 data, which numpy lacks, travels as its uint16 bit patterns.
The transforms are vectorized over blocks; the entropy coder works one block at a time with a
plain bit writer, exactly as docs/format.md describes it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from actpack.codec import spec
from actpack.codec.frame import (
    DENSE_HEADER,
    Header,
    Kind,
    build_frame,
    pack_index,
    parse_frame,
    unpack_index,
)
from actpack.codec.spec import BLOCK, WIDTH_MAX, DType, Geometry, Mode
from actpack.codec.tables import DCT_MATRIX, ZIGZAG
from actpack.errors import Check, FrameError

__all__ = ["compress", "decode_block", "decode_dense", "decompress", "encode_block",
           "encode_dense"]

NUMPY_BITS = {DType.FLOAT32: np.uint32, DType.FLOAT16: np.uint16, DType.BFLOAT16: np.uint16}
_INVERSE_ZIGZAG = np.argsort(ZIGZAG)


# ----------------------------------------------------------------------------- dtypes and tiles


def to_float32(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """Values as float32 (exact for every input dtype) from their bit patterns."""
    if dtype is DType.FLOAT32:
        return bits.view(np.float32)
    if dtype is DType.FLOAT16:
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def from_float32(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Bit patterns of ``values`` rounded to ``dtype``: round to nearest even, saturating to the
    dtype's largest finite value (decoded values are finite by construction)."""
    limit = np.float32(dtype.max_finite)
    values = np.clip(values.astype(np.float32), -limit, limit)
    if dtype is DType.FLOAT32:
        return values.view(np.uint32)
    if dtype is DType.FLOAT16:
        return values.astype(np.float16).view(np.uint16)
    b = values.view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def tile_index(geo: Geometry) -> np.ndarray:
    """For each block (nblocks, 8, 8) the flat index of its source element (edge replication)."""
    if geo.flat:
        n = geo.numel
        idx = np.minimum(np.arange(geo.nblocks * 64), n - 1)
        return idx.reshape(geo.nblocks, BLOCK, BLOCK)
    rows = np.minimum(np.arange(geo.padded_height), geo.height - 1)
    cols = np.minimum(np.arange(geo.padded_width), geo.width - 1)
    plane = np.arange(geo.planes)[:, None, None] * (geo.height * geo.width)
    idx = plane + rows[None, :, None] * geo.width + cols[None, None, :]
    idx = idx.reshape(geo.planes, geo.blocks_y, BLOCK, geo.blocks_x, BLOCK)
    return idx.transpose(0, 1, 3, 2, 4).reshape(geo.nblocks, BLOCK, BLOCK)


def tile(flat: np.ndarray, geo: Geometry) -> np.ndarray:
    """(nblocks, 8, 8) blocks of a flat array, plane-major then row-major, edge-replicated."""
    return flat[tile_index(geo)]


def untile_index(geo: Geometry) -> np.ndarray:
    """For each element of the flat tensor, its own position in the flattened (nblocks, 64)
    blocks (padding positions are never read back)."""
    if geo.flat:
        return np.arange(geo.numel)
    r = np.arange(geo.height)[:, None]
    c = np.arange(geo.width)[None, :]
    in_plane = ((r // BLOCK) * geo.blocks_x + c // BLOCK) * 64 + (r % BLOCK) * BLOCK + c % BLOCK
    plane = np.arange(geo.planes)[:, None, None] * (geo.blocks_per_plane * 64)
    return (plane + in_plane[None]).reshape(-1)


def untile(blocks: np.ndarray, geo: Geometry) -> np.ndarray:
    """Inverse of ``tile``: the flat array, padding dropped."""
    return blocks.reshape(-1)[untile_index(geo)]


def block_groups(geo: Geometry) -> np.ndarray:
    """Scale group of each block."""
    return np.repeat(geo.group_of_plane(), geo.blocks_per_plane)


# ----------------------------------------------------------------------------- the integer stages


def sfpr(values: np.ndarray, scale: np.ndarray, limit: int) -> np.ndarray:
    """Scaled fixed point: sign(x) * min(floor(|x| * scale + 1/2), limit), exact in float64.

    ``scale`` holds each value's ``mantissa * 2**exponent`` (float64); non-finite inputs give 0
    (their blocks are stored raw).
    """
    mag = np.abs(np.where(np.isfinite(values), values, 0).astype(np.float64)) * scale
    q = np.minimum(np.floor(mag + 0.5), limit).astype(np.int64)
    return np.where(values < 0, -q, q)


def _round_shift(x: np.ndarray, s: int) -> np.ndarray:
    return (x + (1 << (s - 1))) >> s


def dct2(p: np.ndarray) -> np.ndarray:
    """Forward 2-D DCT of (n, 8, 8) int blocks: rows, round-shift 8, columns, round-shift 16."""
    t = _round_shift(p @ DCT_MATRIX.T, spec.DCT_SHIFT_1)
    return _round_shift(DCT_MATRIX @ t, spec.DCT_SHIFT_2)


def idct2(y: np.ndarray) -> np.ndarray:
    """Inverse 2-D DCT of (n, 8, 8) coefficient blocks, clamped to +-127."""
    t = _round_shift(y @ DCT_MATRIX, spec.IDCT_SHIFT_1)
    p = _round_shift(DCT_MATRIX.T @ t, spec.IDCT_SHIFT_2)
    return np.clip(p, -spec.SFPR_MAX, spec.SFPR_MAX)


def quantize(y: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Divide by the table entry, truncating toward zero."""
    q = table.reshape(8, 8).astype(np.int64)
    return np.sign(y) * (np.abs(y) // q)


def dequantize(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Midpoint reconstruction sign(q) * floor((|q| + 1/2) * Q), saturated to +-2047."""
    t = table.reshape(8, 8).astype(np.int64)
    y = np.sign(q) * (((2 * np.abs(q) + 1) * t) >> 1)
    return np.clip(y, -spec.DCT_COEF_MAX, spec.DCT_COEF_MAX)


def lorenzo(q: np.ndarray) -> np.ndarray:
    """2-D Lorenzo residual within each block, zero outside: d = q - up - left + up_left."""
    padded = np.pad(q, ((0, 0), (1, 0), (1, 0)))
    return padded[:, 1:, 1:] - padded[:, :-1, 1:] - padded[:, 1:, :-1] + padded[:, :-1, :-1]


def unlorenzo(d: np.ndarray) -> np.ndarray:
    """Inverse Lorenzo: a 2-D prefix sum (down the columns, then along the rows)."""
    return np.cumsum(np.cumsum(d, axis=1), axis=2)


def to_planes(blocks: np.ndarray, geo: Geometry) -> np.ndarray:
    """(n, 8, 8) blocks of whole planes of ``geo`` (all of them, or a run of whole planes) as
    the padded planes (planes, padded height, padded width)."""
    n = blocks.shape[0] // max(geo.blocks_per_plane, 1)
    b = blocks.reshape(n, geo.blocks_y, geo.blocks_x, BLOCK, BLOCK)
    return b.transpose(0, 1, 3, 2, 4).reshape(n, geo.padded_height, geo.padded_width)


def from_planes(planes: np.ndarray, geo: Geometry) -> np.ndarray:
    """Inverse of ``to_planes``."""
    n = planes.shape[0]
    p = planes.reshape(n, geo.blocks_y, BLOCK, geo.blocks_x, BLOCK)
    return p.transpose(0, 1, 3, 2, 4).reshape(n * geo.blocks_per_plane, BLOCK, BLOCK)


def eb2_reference(q: np.ndarray, raw: np.ndarray, geo: Geometry) -> np.ndarray:
    """Mode eb2's prediction reference ``R`` (nblocks, 8, 8): the values the decoder
    reconstructs. ``R = q`` in every block that is not RAW; a RAW block carries no residuals
    (they count as 0), so the decoder's plane-wide prefix sums continue through it as the
    boundary extension ``R[y, x] = R[y0 - 1, x] + R[y, x0 - 1] - R[y0 - 1, x0 - 1]`` (row above
    the block, column left of it, their corner; 0 outside the plane), modulo 2**15. RAW blocks
    are filled in block order, so a RAW block's neighbours above and to the left are final."""
    ref = np.where(raw[:, None, None], 0, q).astype(np.int64)
    if not raw.any():
        return ref
    planes = np.pad(to_planes(ref, geo), ((0, 0), (1, 0), (1, 0)))  # row/column -1 are zeros
    for b in np.flatnonzero(raw):
        p, rest = divmod(int(b), geo.blocks_per_plane)
        by, bx = divmod(rest, geo.blocks_x)
        y0, x0 = BLOCK * by + 1, BLOCK * bx + 1  # in the padded array
        top = planes[p, y0 - 1, x0 : x0 + BLOCK]
        left = planes[p, y0 : y0 + BLOCK, x0 - 1]
        corner = planes[p, y0 - 1, x0 - 1]
        planes[p, y0 : y0 + BLOCK, x0 : x0 + BLOCK] = spec.eb2_wrap(
            top[None, :] + left[:, None] - corner)
    return from_planes(planes[:, 1:, 1:], geo)


def eb2_residuals(ref: np.ndarray, geo: Geometry) -> np.ndarray:
    """Mode eb2's symbols (nblocks, 64): the 2-D Lorenzo residual of ``ref`` over each whole
    padded plane (values outside the plane count as 0), reduced modulo 2**15."""
    planes = np.pad(to_planes(ref, geo), ((0, 0), (1, 0), (1, 0)))
    d = planes[:, 1:, 1:] - planes[:, :-1, 1:] - planes[:, 1:, :-1] + planes[:, :-1, :-1]
    return spec.eb2_wrap(from_planes(d, geo)).reshape(-1, 64)


def eb2_reconstruct(symbols: np.ndarray, geo: Geometry) -> np.ndarray:
    """Inverse of ``eb2_residuals``: ``R`` (n, 8, 8) from the residuals (n, 64) of whole planes
    (0 in RAW blocks), a 2-D prefix sum over each padded plane, down the columns then along the
    rows, each reduced modulo 2**15."""
    planes = to_planes(symbols.reshape(-1, BLOCK, BLOCK), geo)
    planes = spec.eb2_wrap(np.cumsum(planes, axis=1))
    planes = spec.eb2_wrap(np.cumsum(planes, axis=2))
    return from_planes(planes, geo)


def dequantize_values(p: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Decoded float32 values: float32(p) * inverse, one float32 multiply. A product beyond
    float32's range becomes inf here and saturates in ``from_float32``, as the format says."""
    with np.errstate(over="ignore"):
        return p.astype(np.float32) * inverse.astype(np.float32)


# ----------------------------------------------------------------------------- entropy coding


def _bitlength(u: int) -> int:
    return int(u).bit_length()


def encode_block(symbols: np.ndarray, *, with_values: bool = True) -> tuple[int, bytes] | None:
    """Code 64 integers in scan order: (mask byte count, bytes), or None if a width exceeds 15.

    Layout: the first ``mb`` bytes of the 64-bit little-endian nonzero mask (mb = index of the last
    nonzero // 8 + 1); then, if ``with_values``, one width nibble per group of 8 nonzero values
    (low nibble first) and the values' codes u = 2 (|v| - 1) + (v < 0) packed LSB-first, each group
    in its width. Requires at least one nonzero symbol.
    """
    nz = np.flatnonzero(symbols)
    mask = sum(1 << int(k) for k in nz)
    mb = int(nz[-1]) // 8 + 1
    out = bytearray(mask.to_bytes(8, "little")[:mb])
    if not with_values:
        return mb, bytes(out)
    values = symbols[nz]
    codes = [2 * (abs(int(v)) - 1) + int(v < 0) for v in values]
    groups = [codes[i : i + 8] for i in range(0, len(codes), 8)]
    widths = [max(_bitlength(u) for u in g) for g in groups]
    if max(widths) > WIDTH_MAX:
        return None
    for j in range(0, len(widths), 2):
        pair = [*widths[j : j + 2], 0]
        out.append(pair[0] | (pair[1] << 4))
    acc, nbits = 0, 0
    for g, w in zip(groups, widths, strict=True):
        for u in g:
            acc |= u << nbits
            nbits += w
    out += acc.to_bytes(-(-nbits // 8), "little")
    return mb, bytes(out)


def encode_dense(symbols: np.ndarray) -> bytes | None:
    """Code all 64 integers (zeros included), or None if a width exceeds 15.

    Layout: 4 bytes of width nibbles, one per group of 8 consecutive scan positions (low nibble
    first), then each group's codes u = 2 |v| - (v < 0) packed LSB-first in its width: a group of
    width w is exactly w bytes, so every group starts on a byte.
    """
    codes = [2 * abs(int(v)) - int(v < 0) for v in symbols]
    widths = [max(_bitlength(u) for u in codes[8 * g : 8 * g + 8]) for g in range(8)]
    if max(widths) > WIDTH_MAX:
        return None
    out = bytearray(widths[2 * j] | (widths[2 * j + 1] << 4) for j in range(4))
    for g, w in enumerate(widths):
        acc = sum(u << (w * i) for i, u in enumerate(codes[8 * g : 8 * g + 8]))
        out += acc.to_bytes(w, "little")
    return bytes(out)


def decode_dense(data: bytes) -> np.ndarray:
    """Inverse of ``encode_dense``. Raises FrameError unless ``data`` is exactly one such block."""
    if len(data) < DENSE_HEADER:
        raise FrameError("dense block length does not match its widths", check=Check.DENSE_LENGTH)
    widths = [data[g // 2] >> (4 * (g % 2)) & 15 for g in range(8)]
    if len(data) != DENSE_HEADER + sum(widths):
        raise FrameError("dense block length does not match its widths", check=Check.DENSE_LENGTH)
    symbols = np.zeros(64, dtype=np.int64)
    pos = DENSE_HEADER
    for g, w in enumerate(widths):
        acc = int.from_bytes(data[pos : pos + w], "little")
        pos += w
        for i in range(8):
            u = acc >> (w * i) & ((1 << w) - 1)
            symbols[8 * g + i] = -((u + 1) >> 1) if u & 1 else u >> 1
    return symbols


def decode_block(data: bytes, mb: int, *, with_values: bool = True) -> np.ndarray:
    """Inverse of ``encode_block``: 64 integers in scan order. Raises FrameError if ``data`` is not
    exactly one well-formed coded block."""
    mask = int.from_bytes(data[:mb], "little")
    if mask == 0 or mask >> (8 * (mb - 1)) == 0:
        raise FrameError("coded block has an empty or non-minimal mask", check=Check.CODED_MASK)
    positions = [k for k in range(64) if mask >> k & 1]
    symbols = np.zeros(64, dtype=np.int64)
    if not with_values:
        if len(data) != mb:
            raise FrameError("mask block has trailing bytes", check=Check.MASK_TRAILING)
        symbols[positions] = 1
        return symbols
    ngroups = -(-len(positions) // 8)
    wbytes = -(-ngroups // 2)
    if len(data) < mb + wbytes:
        raise FrameError("coded block is shorter than its width nibbles", check=Check.CODED_SHORT)
    nibbles = [data[mb + j // 2] >> (4 * (j % 2)) & 15 for j in range(ngroups)]
    sizes = [min(8, len(positions) - 8 * g) for g in range(ngroups)]
    nbits = sum(n * w for n, w in zip(sizes, nibbles, strict=True))
    if len(data) != mb + wbytes + -(-nbits // 8):
        raise FrameError("coded block length does not match its widths", check=Check.CODED_LENGTH)
    acc = int.from_bytes(data[mb + wbytes :], "little")
    pos = 0
    codes = []
    for n, w in zip(sizes, nibbles, strict=True):
        for _ in range(n):
            codes.append(acc >> pos & ((1 << w) - 1))
            pos += w
    values = [(u >> 1) + 1 if u & 1 == 0 else -((u >> 1) + 1) for u in codes]
    symbols[positions] = values
    return symbols


# ----------------------------------------------------------------------------- compress


def _group_maxabs(values: np.ndarray, groups: np.ndarray, ngroups: int) -> np.ndarray:
    """Per-group max |x| over finite values (float32), from (nblocks, 8, 8) blocks."""
    mags = np.where(np.isfinite(values), np.abs(values), 0).max(axis=(1, 2), initial=0)
    out = np.zeros(ngroups, dtype=np.float32)
    np.maximum.at(out, groups, mags)
    return out


def _scale_arrays(scales, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block (scale value float64, inverse float32) arrays, shaped (n, 1, 1)."""
    value = np.array([s.value for s in scales], dtype=np.float64)[groups]
    inverse = np.array([s.inverse for s in scales], dtype=np.float32)[groups]
    return value[:, None, None], inverse[:, None, None]


def compress(bits: np.ndarray, header: Header) -> bytes:
    """Compress ``bits`` (the tensor's bit patterns: uint32 for float32, uint16 for float16 and
    bfloat16) into a frame. ``header`` gives mode, dtype, shape and parameters; its scales are
    computed here and its payload length filled in."""
    geo = header.geometry
    dtype, mode = header.dtype, header.mode
    bit_blocks = tile(np.ascontiguousarray(bits).reshape(-1), geo) if geo.nblocks else (
        np.zeros((0, 8, 8), dtype=NUMPY_BITS[dtype]))
    x = to_float32(bit_blocks, dtype)
    groups = block_groups(geo)
    finite = np.isfinite(x).all(axis=(1, 2))

    if mode in (Mode.DCT, Mode.SFPR8):
        scales = spec.sfpr_scales(_group_maxabs(x, groups, geo.groups), header.param)
    elif mode.error_bounded:
        amax = _group_maxabs(x, np.zeros_like(groups), 1)[0]
        scales = [spec.eb_scale(header.param, amax, dtype)]
    else:
        scales = []
    header = dataclasses.replace(header, scales=tuple(scales))
    symbols, force_raw = _symbols(x, groups, header)
    force_raw |= ~finite if mode is not Mode.MASK else np.zeros_like(finite)

    raw_len = 64 * dtype.itemsize
    kinds, mbs, chunks = [], [], []
    for b in range(geo.nblocks):
        kind, mb, chunk = Kind.ZERO, 1, b""
        if force_raw[b]:
            kind = Kind.RAW
        elif np.any(symbols[b]):
            # (eb2 never gets here with a block that cannot be coded: its residuals are 15-bit
            # codes and a DENSE block of them is at most 124 bytes, section 6.6.)
            # The shortest of sparse (mask + nonzeros) and dense (all 64) coding; ties go to
            # sparse; raw when neither fits in 15-bit widths or both would expand the block.
            kind = Kind.RAW
            coded = encode_block(symbols[b], with_values=mode is not Mode.MASK)
            if coded is not None and len(coded[1]) <= raw_len:
                kind, (mb, chunk) = Kind.CODED, coded
            dense = encode_dense(symbols[b]) if mode is not Mode.MASK else None
            if dense is not None and len(dense) <= raw_len and (
                kind is Kind.RAW or len(dense) < len(chunk)
            ):
                kind, mb, chunk = Kind.DENSE, 1, dense
        if kind is Kind.RAW:
            chunk = bit_blocks[b].astype(bit_blocks.dtype.newbyteorder("<")).tobytes()
        kinds.append(kind)
        mbs.append(mb)
        chunks.append(chunk)
    payload = b"".join(chunks)
    index = pack_index(np.array(kinds, dtype=np.int64), np.array(mbs, dtype=np.int64),
                       np.array([len(c) for c in chunks], dtype=np.int64))
    return build_frame(dataclasses.replace(header, payload_bytes=len(payload)), index, payload)


def _symbols(x: np.ndarray, groups: np.ndarray, header: Header) -> tuple[np.ndarray, np.ndarray]:
    """Per-block symbols in scan order (nblocks, 64) and blocks that must be stored raw."""
    n = x.shape[0]
    force_raw = np.zeros(n, dtype=bool)
    if header.mode is Mode.MASK:
        return (x > 0).reshape(n, 64).astype(np.int64), force_raw
    if header.mode.error_bounded:  # one global scale
        groups = np.zeros_like(groups)
    scale, inverse = _scale_arrays(header.scales, groups)
    if header.mode is Mode.SFPR8:
        return sfpr(x, scale, spec.SFPR_MAX).reshape(n, 64), force_raw
    if header.mode is Mode.DCT:
        q = quantize(dct2(sfpr(x, scale, spec.SFPR_MAX)), header.table)
        return q.reshape(n, 64)[:, ZIGZAG], force_raw
    # Mode.EB/EB2: pre-quantize, check the bound on exactly what the decoder will produce,
    # predict.
    eb2 = header.mode is Mode.EB2
    q = sfpr(x, scale, spec.EB2_Q_SAT if eb2 else spec.EB_Q_SAT)
    xhat = to_float32(from_float32(dequantize_values(q, inverse), header.dtype), header.dtype)
    with np.errstate(invalid="ignore"):
        err = np.abs(x.astype(np.float64) - xhat.astype(np.float64))
        force_raw |= ~(err <= header.param).all(axis=(1, 2))
    if eb2:
        force_raw |= ~np.isfinite(x).all(axis=(1, 2))
        return eb2_residuals(eb2_reference(q, force_raw, header.geometry), header.geometry), \
            force_raw
    return lorenzo(q).reshape(n, 64), force_raw


# ----------------------------------------------------------------------------- decompress


def decompress(frame) -> tuple[np.ndarray, Header]:
    """Decode a frame (bytes-like). Returns (bit patterns shaped like the tensor, header)."""
    header, index, payload = parse_frame(frame)
    geo, dtype, mode = header.geometry, header.dtype, header.mode
    kinds, mbs, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    symbols = np.zeros((geo.nblocks, 64), dtype=np.int64)
    raw = np.zeros((geo.nblocks, 64), dtype=NUMPY_BITS[dtype])
    for b in range(geo.nblocks):
        chunk = bytes(payload[offsets[b] : offsets[b + 1]])
        try:
            if kinds[b] == Kind.CODED:
                symbols[b] = decode_block(chunk, int(mbs[b]), with_values=mode is not Mode.MASK)
            elif kinds[b] == Kind.DENSE:
                symbols[b] = decode_dense(chunk)
            elif kinds[b] == Kind.RAW:
                raw[b] = np.frombuffer(chunk, dtype=raw.dtype.newbyteorder("<"))
        except FrameError as exc:
            raise FrameError(f"block {b}: {exc}", check=exc.check, block=b) from None
    values = _reconstruct(symbols, header)
    out = from_float32(values, dtype).reshape(-1, 64)
    is_raw = kinds == Kind.RAW
    out[is_raw] = raw[is_raw]
    flat = untile(out.reshape(-1, 8, 8), geo) if geo.nblocks else np.zeros(0, raw.dtype)
    return flat.reshape(header.shape), header


def _reconstruct(symbols: np.ndarray, header: Header) -> np.ndarray:
    """float32 values (nblocks, 8, 8) of coded and zero blocks."""
    n = symbols.shape[0]
    geo = header.geometry
    if header.mode is Mode.MASK:
        return symbols.reshape(n, 8, 8).astype(np.float32)
    groups = np.zeros(n, dtype=np.int64) if header.mode.error_bounded else block_groups(geo)
    _, inverse = _scale_arrays(header.scales, groups)
    if header.mode is Mode.SFPR8:
        p = symbols.reshape(n, 8, 8)
        if np.abs(p).max(initial=0) > spec.SFPR_MAX:
            raise FrameError("sfpr8 value out of range", check=Check.SFPR8_RANGE)
    elif header.mode is Mode.DCT:
        p = idct2(dequantize(symbols[:, _INVERSE_ZIGZAG].reshape(n, 8, 8), header.table))
    elif header.mode is Mode.EB2:  # RAW blocks decoded no symbols: their residuals are 0
        p = eb2_reconstruct(symbols, geo)
    else:
        p = unlorenzo(symbols.reshape(n, 8, 8))
    return dequantize_values(p, inverse)
