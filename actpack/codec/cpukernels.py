"""Compiled CPU kernels of the torch path (numba): one fused pass per 8x8 block.

The eager torch implementation runs one tensor operation after another, each a full pass over
memory; on a 2-core CPU that caps it well below the link rates the codec must keep up with. These
kernels do a block's whole pipeline (fixed point, transform, quantization, zero-value and entropy
coding, or the inverse) in registers, in parallel over blocks, and produce the same bytes as the
numpy model (tested). They work on the tensor's memory through numpy views, without copies.

Integer arithmetic only after the float -> fixed conversion, exactly as docs/format.md specifies;
float64 is used where the model uses it (exact products of 24- and 16-bit significands).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from actpack.codec import spec
from actpack.codec.tables import DCT_MATRIX, ZIGZAG
from actpack.errors import Check

__all__ = ["DECODE_ERRORS", "decode_blocks", "eb2_decode_blocks", "eb2_encode_blocks",
           "encode_blocks", "group_maxabs"]

_K = np.ascontiguousarray(DCT_MATRIX, dtype=np.int64)
_ZZ = np.ascontiguousarray(ZIGZAG, dtype=np.int64)
_IZZ = np.ascontiguousarray(np.argsort(ZIGZAG), dtype=np.int64)

# Mode and dtype codes (spec.Mode / spec.DType values) as plain ints for the compiled code.
_DCT, _EB, _SFPR8, _MASK = int(spec.Mode.DCT), int(spec.Mode.EB), int(spec.Mode.SFPR8), \
    int(spec.Mode.MASK)
_F32, _F16, _BF16 = int(spec.DType.FLOAT32), int(spec.DType.FLOAT16), int(spec.DType.BFLOAT16)
_SFPR_MAX = spec.SFPR_MAX
_EB_Q_SAT = spec.EB_Q_SAT
_EB2_Q_SAT = spec.EB2_Q_SAT
_S1, _S2 = spec.DCT_SHIFT_1, spec.DCT_SHIFT_2
_IS1, _IS2 = spec.IDCT_SHIFT_1, spec.IDCT_SHIFT_2
_COEF_MAX = spec.DCT_COEF_MAX
_WIDTH_MAX = spec.WIDTH_MAX
_F16_MAX = np.float32(65504.0)
_BF16_MAX = np.float32(spec.DType.BFLOAT16.max_finite)
_F32_MAX = np.float32(np.finfo(np.float32).max)

# mask bytes + width nibbles + 8 groups of at most 15 bytes, + 16 bytes _put_group may overshoot
SCRATCH = 8 + 4 + 120 + 16

# Decoder error codes -> (check of docs/format.md 10, message) (0 = fine).
DECODE_ERRORS = {
    1: (Check.CODED_MASK, "coded block has an empty or non-minimal mask"),
    2: (Check.CODED_LENGTH, "coded block length does not match its widths"),
    3: (Check.SFPR8_RANGE, "sfpr8 value out of range"),
    4: (Check.MASK_TRAILING, "mask block has trailing bytes"),
    5: (Check.DENSE_LENGTH, "dense block length does not match its widths"),
}


# ----------------------------------------------------------------------------- element helpers
# Every helper is inlined into the kernels at numba's level (inline="always"): left to LLVM, the
# per-block helpers (block origin, row loads and stores, entropy coding) stay calls, each call
# passing every array as a dozen arguments and keeping the helper's arrays opaque, which cost
# 20-50 ns a block (measured: the block-origin step 23 ns a call against 1 ns inlined; ResNet-18
# mask encode and decode 4-6x faster inlined). The price is a longer first compilation
# (cached after it).


@njit(cache=True, inline="always")
def _to_f32(bits, dtype):
    """float32 value of one element's bit pattern."""
    if dtype == _F32:
        return np.uint32(bits).view(np.float32)
    if dtype == _BF16:
        return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)
    # float16 -> float32, exact.
    h = np.uint32(bits)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    m = h & np.uint32(0x3FF)
    if e == 0x1F:
        out = sign | np.uint32(0x7F800000) | (m << np.uint32(13))
    elif e != 0:
        out = sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))
    elif m == 0:
        out = sign
    else:  # subnormal half: m * 2**-24
        v = np.float32(m) * np.float32(2.0**-24)
        out = sign | np.float32(v).view(np.uint32)
    return np.uint32(out).view(np.float32)


@njit(cache=True, inline="always")
def _from_f32(v, dtype):
    """Bit pattern of finite float32 ``v`` in ``dtype``: round to nearest even, saturating."""
    if dtype == _F32:
        v = min(max(v, -_F32_MAX), _F32_MAX)
        return np.uint32(np.float32(v).view(np.uint32))
    if dtype == _BF16:
        v = np.float32(min(max(v, -_BF16_MAX), _BF16_MAX))
        b = np.uint64(v.view(np.uint32))
        return np.uint32((b + np.uint64(0x7FFF) + ((b >> np.uint64(16)) & np.uint64(1)))
                         >> np.uint64(16))
    v = np.float32(min(max(v, -_F16_MAX), _F16_MAX))
    b = v.view(np.uint32)
    sign = (b >> np.uint32(16)) & np.uint32(0x8000)
    a = b & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x38800000):  # a normal half
        h = (a >> np.uint32(13)) - np.uint32(112 << 10)
        rem = a & np.uint32(0x1FFF)
        if rem > np.uint32(0x1000) or (rem == np.uint32(0x1000) and (h & np.uint32(1))):
            h += np.uint32(1)
    elif a < np.uint32(0x33000000):  # below half the smallest subnormal: zero
        h = np.uint32(0)
    else:  # subnormal half: round(value * 2**24) to nearest even
        e = a >> np.uint32(23)
        m = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        shift = np.uint32(126) - e
        h = m >> shift
        rem = m & ((np.uint32(1) << shift) - np.uint32(1))
        half = np.uint32(1) << (shift - np.uint32(1))
        if rem > half or (rem == half and (h & np.uint32(1))):
            h += np.uint32(1)
    return np.uint32(sign | h)


@njit(cache=True, inline="always")
def _sfpr(x, scale, limit):
    """SFPR of one value: round(|x| * scale) saturated to ``limit``, with x's sign; 0 for a
    non-finite x. Branch-free (selects), so the loops over a block vectorize."""
    a = abs(np.float64(x)) if np.isfinite(x) else 0.0
    q = np.int64(min(np.floor(a * scale + 0.5), np.float64(limit)))
    return -q if x < 0 else q


@njit(cache=True, inline="always")
def _rshift_round(v, s):
    return (v + (1 << (s - 1))) >> s


@njit(cache=True, inline="always")
def _divmod(a, d):
    """divmod of non-negative ints below 2**40 via a truncated float64 quotient: exact (a
    quotient just under an integer k is at least 1/(a + d) below it, far above float64's
    rounding error) and several times cheaper than a 64-bit integer divide."""
    q = np.int64(np.float64(a) / np.float64(d))
    return q, a - q * d


@njit(cache=True, inline="always")
def _block_index(b, geo, src, dst):
    """Element indices of block ``b``: ``src[k]`` the flat index that fills position ``k`` (edge
    replication), ``dst[k]`` the same or -1 for a padding position.

    ``geo`` = (flat, numel, height, width, blocks_x, blocks_per_plane) as int64."""
    if geo[0]:
        n = geo[1]
        for k in range(64):
            i = b * 64 + k
            dst[k] = i if i < n else -1
            src[k] = min(i, n - 1)
        return
    h, w = geo[2], geo[3]
    plane, r = _divmod(b, geo[5])
    by, bx = _divmod(r, geo[4])
    base = plane * h * w
    for i in range(8):
        row = by * 8 + i
        for j in range(8):
            col = bx * 8 + j
            src[8 * i + j] = base + min(row, h - 1) * w + min(col, w - 1)
            dst[8 * i + j] = base + row * w + col if row < h and col < w else -1


@njit(cache=True, inline="always")
def _block_origin(b, geo, cur):
    """(first flat index of the plane, first row, first column) of block ``b`` (2-D geometry).
    ``cur`` (4 int64, -1 before the first call) keeps the last block's (plane, row, column,
    number): kernels go through blocks in order, so the next block is a step, not two divides."""
    if b == cur[3] + 1 and cur[3] >= 0:
        plane, by, bx = cur[0], cur[1], cur[2] + 1
        if bx == geo[4]:
            bx = 0
            by += 1
            if by * geo[4] == geo[5]:
                by = 0
                plane += 1
    else:
        plane, r = _divmod(b, geo[5])
        by, bx = _divmod(r, geo[4])
    cur[0], cur[1], cur[2], cur[3] = plane, by, bx, b
    return plane * geo[2] * geo[3], by * 8, bx * 8


@njit(cache=True, inline="always")
def _interior(b, geo, cur):
    """(True, flat index of the block's first element, row stride) for a block lying wholly
    inside the tensor (no replicated padding), else (False, 0, 0): the fast paths read and write
    such blocks row by row instead of through ``_block_index``."""
    if geo[0]:
        if (b + 1) * 64 <= geo[1]:
            return True, b * 64, 8
        return False, 0, 0
    base, y0, x0 = _block_origin(b, geo, cur)
    h, w = geo[2], geo[3]
    if y0 + 8 > h or x0 + 8 > w:
        return False, 0, 0
    return True, base + y0 * w + x0, w


@njit(cache=True)  # a call, not inlined: see _load_bits
def _load_edge(flat, geo, b, bits, src, dst):
    """``_load_bits`` of a block with replicated padding, through ``_block_index``."""
    _block_index(b, geo, src, dst)
    for k in range(64):
        bits[k] = flat[src[k]]


@njit(cache=True)  # a call, not inlined: see _load_bits
def _store_edge(out, geo, b, bits, src, dst):
    """``_store_bits`` of a block with padding positions, through ``_block_index``."""
    _block_index(b, geo, src, dst)
    for k in range(64):
        if dst[k] >= 0:
            out[dst[k]] = bits[k]


@njit(cache=True, inline="always")
def _load_bits(flat, geo, b, bits, src, dst, cur):
    """Bit patterns of block ``b`` (edge replicated) into ``bits`` (64 uint32). Edge blocks
    go through a call (``_load_edge``): with their index code inlined beside it, the interior
    path's 64 loads cost 4x as much (measured)."""
    full, o, s = _interior(b, geo, cur)
    if full:
        for i in range(8):
            r = np.uint64(o + i * s)  # unsigned: no negative-index fix-up per element
            for j in range(8):
                bits[8 * i + j] = flat[r + np.uint64(j)]
    else:
        _load_edge(flat, geo, b, bits, src, dst)


@njit(cache=True, inline="always")
def _store_bits(out, geo, b, bits, src, dst, cur):
    """Write block ``b``'s 64 bit patterns to ``out``, dropping padding positions (edge blocks
    through a call, ``_store_edge``, as in ``_load_bits``)."""
    full, o, s = _interior(b, geo, cur)
    if full:
        for i in range(8):
            r = np.uint64(o + i * s)  # unsigned: no negative-index fix-up per element
            for j in range(8):
                out[r + np.uint64(j)] = bits[8 * i + j]
    else:
        _store_edge(out, geo, b, bits, src, dst)


@njit(cache=True, inline="always")
def _bits_to_f32(bits, dtype, x):
    """float32 values of 64 bit patterns (float32 patterns are reinterpreted, no conversion)."""
    if dtype == _F32:
        for k in range(64):
            x[k] = np.uint32(bits[k]).view(np.float32)
    else:
        for k in range(64):
            x[k] = _to_f32(bits[k], dtype)


@njit(cache=True, inline="always")
def _bit_length(v):
    """Bit length of 0 <= v < 2**52: the exponent of float64(v) (exact), 0 for 0."""
    if v == 0:
        return 0
    return np.int64((np.float64(v).view(np.uint64) >> np.uint64(52)) - np.uint64(1022))


@njit(cache=True, inline="always")
def _positive_limit(dtype):
    """x > 0 <=> 0 < bits <= this (the bits of +inf; NaN patterns are above it)."""
    if dtype == _F32:
        return np.uint32(0x7F800000)
    if dtype == _BF16:
        return np.uint32(0x7F80)
    return np.uint32(0x7C00)


@njit(cache=True, nogil=True)
def _block_maxabs(flat, geo, b0, b1, dtype, out):
    """Max |x| over finite values of blocks b0..b1-1 into ``out``. Works on bit patterns:
    magnitudes order as their sign-cleared patterns do and the non-finite ones are those from
    infinity's up; replicated padding repeats counted values, so only real elements are read."""
    top = _positive_limit(dtype)
    magnitude = np.uint32(0x7FFFFFFF) if dtype == _F32 else np.uint32(0x7FFF)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    for b in range(b0, b1):
        if geo[0]:
            o, s, rows, cols = b * 64, 64, 1, min(64, geo[1] - b * 64)
        else:
            base, y0, x0 = _block_origin(b, geo, cur)
            o, s = base + y0 * geo[3] + x0, geo[3]
            rows, cols = min(8, geo[2] - y0), min(8, geo[3] - x0)
        m = np.uint32(0)
        for i in range(rows):
            r = o + i * s
            for j in range(cols):
                a = np.uint32(flat[r + j]) & magnitude
                m = max(m, a if a < top else np.uint32(0))
        out[b] = _to_f32(m, dtype)


# ----------------------------------------------------------------------------- encoder


@njit(cache=True, inline="always")
def _symbols(x, mode, scale, inv, table, recip, error_bound, dtype, sym, p, eo):
    """Fill ``sym`` (64 int64, scan order); return False if the block must be stored raw.
    ``recip`` is 1 / ``table`` (float64); ``p`` (64) and ``eo`` (8 int64) are scratch space."""
    ok = True
    if mode == _MASK:
        for k in range(64):
            sym[k] = 1 if x[k] > 0 else 0
        return True
    if mode != _EB:  # sfpr8 or dct
        for k in range(64):
            ok &= np.isfinite(x[k])
            sym[k] = _sfpr(x[k], scale, _SFPR_MAX)
        if mode == _SFPR8:
            return ok
        # Even/odd butterflies: K[u, 7 - c] = (-1)**u K[u, c] holds exactly for the integer
        # matrix, so each pass needs 32 multiplies per row instead of 64 (same sums, same bits).
        # The sums and differences are formed once per row/column (``eo``: 4 even, 4 odd).
        for i in range(8):  # row pass: sym -> p
            r = 8 * i
            for c in range(4):
                eo[c] = sym[r + c] + sym[r + 7 - c]
                eo[4 + c] = sym[r + c] - sym[r + 7 - c]
            for u in range(8):
                h = 4 * (u & 1)
                acc = _K[u, 0] * eo[h] + _K[u, 1] * eo[h + 1] + _K[u, 2] * eo[h + 2] \
                    + _K[u, 3] * eo[h + 3]
                p[r + u] = _rshift_round(acc, _S1)
        for u in range(8):  # column pass, quantization, zigzag: p -> sym
            for i in range(4):
                eo[i] = p[8 * i + u] + p[8 * (7 - i) + u]
                eo[4 + i] = p[8 * i + u] - p[8 * (7 - i) + u]
            for v in range(8):
                h = 4 * (v & 1)
                acc = _K[v, 0] * eo[h] + _K[v, 1] * eo[h + 1] + _K[v, 2] * eo[h + 2] \
                    + _K[v, 3] * eo[h + 3]
                y = _rshift_round(acc, _S2)
                # |y| // table without a divide: the float64 estimate a * (1/t) is within one
                # of the quotient (two roundings, operands far below 2**52), then corrected.
                a = abs(y)
                t = table[8 * v + u]
                q = np.int64(np.float64(a) * recip[8 * v + u])
                q += ((q + 1) * t <= a) - (q * t > a)
                sym[_IZZ[8 * v + u]] = -q if y < 0 else q
        return ok
    # Error-bounded: pre-quantize, check exactly what the decoder will produce, Lorenzo.
    q = p
    ok = _eb_quantize(x, scale, inv, error_bound, dtype, _EB_Q_SAT, q)
    for i in range(8):
        for j in range(8):
            up = q[8 * (i - 1) + j] if i > 0 else 0
            left = q[8 * i + j - 1] if j > 0 else 0
            diag = q[8 * (i - 1) + j - 1] if i > 0 and j > 0 else 0
            sym[8 * i + j] = q[8 * i + j] - up - left + diag
    return ok


@njit(cache=True, inline="always")
def _eb_quantize(x, scale, inv, error_bound, dtype, limit, q):
    """Modes eb/eb2: ``q = SFPR(x, scale, limit)`` into ``q`` (64 int64); True if every value
    the decoder produces from it is within ``error_bound`` (False for a non-finite value)."""
    ok = True
    for k in range(64):
        q[k] = _sfpr(x[k], scale, limit)
    if dtype == _F32:  # the decoder's value is the clamped product itself
        for k in range(64):
            xhat = min(max(np.float32(q[k]) * inv, -_F32_MAX), _F32_MAX)
            ok &= abs(np.float64(x[k]) - np.float64(xhat)) <= error_bound
    else:
        for k in range(64):
            xhat = _to_f32(_from_f32(np.float32(q[k]) * inv, dtype), dtype)
            ok &= abs(np.float64(x[k]) - np.float64(xhat)) <= error_bound
    return ok


@njit(cache=True, inline="always")
def _store_u64(out, pos, v):
    """``out[pos:pos + 8]`` = the uint64 ``v``, little-endian (byte stores LLVM merges)."""
    u = np.uint64(pos)  # unsigned indices: no negative-index fix-up, so LLVM merges the stores
    for j in range(8):
        out[u + np.uint64(j)] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))


@njit(cache=True, inline="always")
def _put_group(out, pos, codes, k0, cnt, w):
    """Write ``codes[k0:k0 + cnt]`` (``cnt`` <= 8 codes, each below 2**``w``, ``w`` <= 15) as a
    ``w``-bit little-endian bit stream at byte ``pos`` of ``out``; return the byte after it.

    Every group of both entropy codes starts on a byte boundary (8 codes of ``w`` bits are ``w``
    bytes; only a block's last group is shorter), so a group is packed on its own, without a
    bit cursor: codes 0-3 and 4-7 into two 60-bit halves, joined into two words stored whole.
    16 bytes are written every time, up to 16 past the group's end (scratch rows have room;
    later groups overwrite them)."""
    lo = np.uint64(0)
    hi = np.uint64(0)
    for i in range(4):
        sh = np.uint64(i * w)
        lo |= np.uint64(codes[k0 + i] if i < cnt else 0) << sh
        hi |= np.uint64(codes[k0 + 4 + i] if 4 + i < cnt else 0) << sh
    h = np.uint64(4 * w)  # bits in ``lo``, <= 60
    _store_u64(out, pos, lo | (hi << h))
    _store_u64(out, pos + 8, (hi >> np.uint64(1)) >> (np.uint64(63) - h))  # hi >> (64 - h)
    return pos + (cnt * w + 7) // 8


@njit(cache=True, inline="always")
def _code(sym, with_values, raw_len, out, codes):
    """Code one block's symbols into ``out``: the shorter of CODED (sparse) and DENSE, ties to
    CODED, neither when longer than ``raw_len`` or too wide for a width nibble. Both lengths are
    computed before any byte is written, so only the winner is packed. Returns (kind, mask
    bytes, length); kind as in the index (0 zero, 1 coded, 2 raw, 3 dense). ``codes`` is scratch
    space (2 x 64 int64: the CODED codes of the nonzero values, the DENSE code of every value)."""
    sparse, dense = codes[0], codes[1]
    # Every value's two codes, the mask, the count and the last nonzero position: no
    # loop-carried state but reductions, so the loop vectorizes (zeros are unpredictable).
    n = 0
    last = 0
    mask = np.uint64(0)
    for k in range(64):
        v = sym[k]
        a = abs(v)
        s = 1 if v < 0 else 0
        nz = v != 0
        dense[k] = 2 * a - s
        sparse[k] = 2 * (a - 1) + s  # the CODED code, kept for nonzero values below
        mask |= np.uint64(nz) << np.uint64(k)
        n += nz
        last = max(last, k if nz else 0)
    if n < 64:  # CODED codes of the nonzero values only, in order (in place: j <= k)
        j = 0
        for k in range(64):
            sparse[j] = sparse[k]
            j += sym[k] != 0
    dense_widths = 0
    dense_len = 4
    dense_wide = False
    for g in range(8):
        o = 0
        for i in range(8):
            o |= dense[8 * g + i]
        w = _bit_length(o)
        dense_wide |= w > _WIDTH_MAX
        dense_widths |= (w & 15) << (4 * g)
        dense_len += w
    if n == 0:
        return 0, 1, 0
    mb = last // 8 + 1
    if not with_values:
        for j in range(mb):
            out[j] = (mask >> np.uint64(8 * j)) & np.uint64(0xFF)
        return 1, mb, mb
    ngroups = (n + 7) // 8
    wbytes = (ngroups + 1) // 2
    widths = 0
    nbits = 0
    wide = False
    for g in range(ngroups):
        hi = min(8 * g + 8, n)
        o = 0
        for i in range(8 * g, hi):
            o |= sparse[i]
        w = _bit_length(o)
        wide |= w > _WIDTH_MAX
        widths |= (w & 15) << (4 * g)
        nbits += (hi - 8 * g) * w
    sparse_len = mb + wbytes + (nbits + 7) // 8
    sparse_ok = not wide and sparse_len <= raw_len
    if not dense_wide and dense_len <= raw_len and (not sparse_ok or dense_len < sparse_len):
        for j in range(4):
            out[j] = (dense_widths >> (8 * j)) & 0xFF
        pos = 4
        for g in range(8):
            pos = _put_group(out, pos, dense, 8 * g, 8, (dense_widths >> (4 * g)) & 15)
        return 3, 1, dense_len
    if not sparse_ok:
        return 2, 1, raw_len
    for j in range(mb):
        out[j] = (mask >> np.uint64(8 * j)) & np.uint64(0xFF)
    for j in range(wbytes):
        out[mb + j] = (widths >> (8 * j)) & 0xFF
    pos = mb + wbytes
    for g in range(ngroups):
        pos = _put_group(out, pos, sparse, 8 * g, min(8, n - 8 * g), (widths >> (4 * g)) & 15)
    return 1, mb, sparse_len


@njit(cache=True, nogil=True)
def _encode_range(flat, geo, b0, b1, dtype, mode, scale_blk, inv_blk, table, error_bound,
                  raw_len, scratch, kind, mbs, length):
    """Code blocks b0..b1-1 into their ``scratch`` rows; set kind, mask bytes and length."""
    with_values = mode != _MASK
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    bits = np.empty(64, np.uint32)
    x = np.empty(64, np.float32)
    sym = np.empty(64, np.int64)
    work = np.empty(64, np.int64)
    codes = np.empty((2, 64), np.int64)
    recip = 1.0 / table.astype(np.float64)
    eo = np.empty(8, np.int64)
    for b in range(b0, b1):
        _load_bits(flat, geo, b, bits, src, dst, cur)
        _bits_to_f32(bits, dtype, x)
        if _symbols(x, mode, scale_blk[b], inv_blk[b], table, recip, error_bound, dtype, sym,
                    work, eo):
            kind[b], mbs[b], length[b] = _code(sym, with_values, raw_len, scratch[b], codes)
        else:
            kind[b], mbs[b], length[b] = 2, 1, raw_len


@njit(cache=True, inline="always")
def _wrap15(v):
    return ((v + 16384) & 32767) - 16384  # spec.eb2_wrap


@njit(cache=True, inline="always")
def _eb2_block(rec, b, by, bx, bx_n, d, raw, encode, sym, top):
    """Mode eb2's plane-wide Lorenzo recurrence over block ``b`` (block row ``by``, column
    ``bx`` of its plane), values row-major: each value's neighbours above, left and above-left
    are final, in this block or in the blocks above and to the left (docs/format.md 6.6).
    ``rec`` (nb, 64) is the reconstruction ``R``; ``top`` is scratch (9 int64: the corner, then
    the row above).

    ``encode``: ``rec[b]`` holds ``q``; a RAW block's row becomes the prediction (residual 0),
    another block's residuals go to ``sym``. Else ``d`` holds the block's decoded residuals (0
    in RAW blocks) and ``rec[b]`` becomes ``R``."""
    if by > 0:
        up_b = b - bx_n
        top[0] = rec[up_b - 1, 63] if bx > 0 else 0
        for j in range(8):
            top[1 + j] = rec[up_b, 56 + j]
    else:
        top[:] = 0
    for i in range(8):
        left = rec[b - 1, 8 * i + 7] if bx > 0 else 0
        ul = top[0]
        for j in range(8):
            k = 8 * i + j
            up = top[1 + j]
            pred = up + left - ul
            if not encode:
                v = _wrap15(d[k] + pred)
                rec[b, k] = v
            elif raw:
                v = _wrap15(pred)
                rec[b, k] = v
            else:
                v = rec[b, k]
                sym[k] = _wrap15(v - pred)
            ul = up
            left = v
        top[0] = rec[b - 1, 8 * i + 7] if bx > 0 else 0
        for j in range(8):
            top[1 + j] = rec[b, 8 * i + j]


@njit(cache=True, nogil=True)
def _eb2_encode_range(flat, geo, by_n, bx_n, p0, p1, dtype, scale, inv, error_bound, raw_len,
                      rec, scratch, kind, mbs, length):
    """Mode eb2's encoder over planes p0..p1-1, one pass: each block pre-quantized and
    bound-checked (RAW when it fails), the plane recurrence (``rec`` (nb, 64) becomes the
    reconstruction), the block coded into its ``scratch`` row; kind, mask bytes and length set."""
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    bits = np.empty(64, np.uint32)
    x = np.empty(64, np.float32)
    sym = np.empty(64, np.int64)
    codes = np.empty((2, 64), np.int64)
    top = np.empty(9, np.int64)
    for p in range(p0, p1):
        for by in range(by_n):
            for bx in range(bx_n):
                b = (p * by_n + by) * bx_n + bx
                _load_bits(flat, geo, b, bits, src, dst, cur)
                _bits_to_f32(bits, dtype, x)
                raw = not _eb_quantize(x, scale, inv, error_bound, dtype, _EB2_Q_SAT, rec[b])
                _eb2_block(rec, b, by, bx, bx_n, sym, raw, True, sym, top)
                if raw:
                    kind[b], mbs[b], length[b] = 2, 1, raw_len
                else:
                    kind[b], mbs[b], length[b] = _code(sym, True, raw_len, scratch[b], codes)


@njit(cache=True, nogil=True)
def _eb2_decode_range(data, kind, mbs, length, offsets, by_n, bx_n, p0, p1, rec, inv, dtype,
                      geo, out, errors):
    """Mode eb2's decoder over planes p0..p1-1, one pass: each block's symbols, the plane
    recurrence into ``rec`` (nb, 64), its values into ``out`` (flat bit patterns, padding
    dropped; RAW blocks copied). Per-block error codes into ``errors``; after any error the
    output is garbage, to be discarded."""
    size = out.itemsize
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    row = np.empty(64, np.uint32)
    d = np.empty(64, np.int64)
    where = np.empty(64, np.int64)
    codes = np.empty(8, np.int64)
    top = np.empty(9, np.int64)
    for p in range(p0, p1):
        for by in range(by_n):
            for bx in range(bx_n):
                b = (p * by_n + by) * bx_n + bx
                err = _block_symbols(data, kind[b], offsets[b], length[b], mbs[b], True, d, where,
                                     codes)
                errors[b] = err
                if err:
                    d[:] = 0
                _eb2_block(rec, b, by, bx, bx_n, d, False, False, d, top)
                if kind[b] == 2:
                    _load_raw(data, offsets[b], size, row)
                else:
                    _dequantize(rec[b], inv, dtype, row)
                _store_bits(out, geo, b, row, src, dst, cur)


@njit(cache=True, nogil=True)
def _assemble_range(flat, geo, b0, b1, kind, length, offsets, scratch, raw_len, payload):
    """Copy blocks b0..b1-1 (coded from scratch, raw from the tensor) to their payload offsets."""
    size = raw_len // 64
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    bits = np.empty(64, np.uint32)
    for b in range(b0, b1):
        o = offsets[b]
        if kind[b] == 1 or kind[b] == 3:
            for j in range(length[b]):
                payload[o + j] = scratch[b, j]
        elif kind[b] == 2:
            _load_bits(flat, geo, b, bits, src, dst, cur)
            for k in range(64):
                v = bits[k]
                for j in range(size):  # little-endian
                    payload[o + size * k + j] = (v >> np.uint32(8 * j)) & np.uint32(0xFF)


# ----------------------------------------------------------------------------- decoder


@njit(cache=True, inline="always")
def _load_u64(data, p):
    """The 8 bytes at ``data[p]`` as a little-endian uint64; bytes past the end read as 0 (only
    bits beyond a block's last field, which the callers have checked to lie inside it)."""
    v = np.uint64(0)
    if p + 8 <= data.size:  # all but the frame's last few groups
        u = np.uint64(p)  # unsigned indices: no negative-index fix-up, so LLVM merges the loads
        for j in range(8):
            v |= np.uint64(data[u + np.uint64(j)]) << np.uint64(8 * j)
        return v
    last = data.size - 1
    for j in range(8):
        v |= (np.uint64(data[min(p + j, last)]) if p + j <= last else np.uint64(0)) \
            << np.uint64(8 * j)
    return v


@njit(cache=True, inline="always")
def _get_group(data, pos, w, codes):
    """The 8 ``w``-bit codes (``w`` <= 15) of the group at byte ``pos`` into ``codes`` (8 int64):
    the inverse of ``_put_group``, from two 64-bit words (a short last group's missing codes come
    out as whatever bits follow it; the callers use only its real ones)."""
    lo_word = _load_u64(data, pos)
    hi_word = _load_u64(data, pos + 8)
    h = np.uint64(4 * w)  # bits of codes 0-3, <= 60
    hi = (lo_word >> h) | ((hi_word << np.uint64(1)) << (np.uint64(63) - h))  # bits h.. on
    m = (np.uint64(1) << np.uint64(w)) - np.uint64(1)
    for i in range(4):
        sh = np.uint64(i * w)
        codes[i] = np.int64((lo_word >> sh) & m)
        codes[4 + i] = np.int64((hi >> sh) & m)


@njit(cache=True, inline="always")
def _block_symbols(data, kind, start, length, mb, with_values, sym, where, codes):
    """A non-RAW block's 64 symbols into ``sym`` (all zero for a ZERO block): CODED (1) through
    ``_unpack``, DENSE (3) through ``_unpack_dense``. Returns the error code (0: good).
    ``where`` (64 int64) and ``codes`` (8 int64) are scratch space."""
    sym[:] = 0
    if kind == 1:
        return _unpack(data, start, length, mb, with_values, sym, where, codes)
    if kind == 3:
        return _unpack_dense(data, start, length, sym, codes)
    return 0


@njit(cache=True, inline="always")
def _unpack(data, start, length, mb, with_values, sym, where, codes):
    """Decode one coded block into ``sym`` (zeroed by the caller); 0 or an error code.
    ``where`` (64 int64, the positions of the mask's ones) and ``codes`` (8 int64, a group's
    codes) are scratch space."""
    if data[start + mb - 1] == 0:
        return 1
    n = 0
    for j in range(mb):  # branch-free: mask bits are unpredictable
        byte = data[start + j]
        for b in range(8):
            bit = (byte >> b) & 1
            sym[8 * j + b] = bit
            where[n] = 8 * j + b
            n += bit
    if not with_values:
        return 0 if length == mb else 4
    ngroups = (n + 7) // 8
    wbytes = (ngroups + 1) // 2
    if length < mb + wbytes:
        return 2
    nbits = 0
    for g in range(ngroups):
        w = (data[start + mb + g // 2] >> (4 * (g % 2))) & 15
        nbits += min(8, n - 8 * g) * w
    if length != mb + wbytes + (nbits + 7) // 8:
        return 2
    pos = start + mb + wbytes
    for g in range(ngroups):
        w = (data[start + mb + g // 2] >> (4 * (g % 2))) & 15
        _get_group(data, pos, w, codes)
        pos += w  # a whole group is w bytes; only the last may be shorter
        for i in range(min(8, n - 8 * g)):
            u = codes[i]
            mag = (u >> 1) + 1
            sym[where[8 * g + i]] = -mag if u & 1 else mag
    return 0


@njit(cache=True, inline="always")
def _unpack_dense(data, start, length, sym, codes):
    """Decode one DENSE block into ``sym``; 0 or an error code. ``codes`` is scratch (8 int64)."""
    total = 4
    for g in range(8):
        total += (data[start + g // 2] >> (4 * (g % 2))) & 15
    if length != total:
        return 5
    pos = start + 4
    for g in range(8):
        w = (data[start + g // 2] >> (4 * (g % 2))) & 15
        _get_group(data, pos, w, codes)
        pos += w
        for i in range(8):
            u = codes[i]
            sym[8 * g + i] = -((u + 1) >> 1) if u & 1 else u >> 1
    return 0


@njit(cache=True, inline="always")
def _dequantize(p, inv, dtype, out_row):
    """``out_row[k]`` = the bits of ``p[k] * inv`` in ``dtype``. For float32 that is a clamp and
    a reinterpretation, in a loop of its own (no per-element dtype dispatch)."""
    if dtype == _F32:
        for k in range(64):
            v = min(max(np.float32(p[k]) * inv, -_F32_MAX), _F32_MAX)
            out_row[k] = np.float32(v).view(np.uint32)
    else:
        for k in range(64):
            out_row[k] = _from_f32(np.float32(p[k]) * inv, dtype)


@njit(cache=True, inline="always")
def _reconstruct(sym, mode, inv, table, dtype, out_row, p, y):
    """Decoded values of one coded or zero block into ``out_row`` (bit patterns); error code.
    ``p`` and ``y`` are scratch space (64 int64)."""
    if mode == _MASK:
        for k in range(64):
            out_row[k] = _from_f32(np.float32(sym[k]), dtype)
        return 0
    if mode == _SFPR8:
        bad = False
        for k in range(64):  # no early exit: the check is a reduction and the loop vectorizes
            bad |= abs(sym[k]) > _SFPR_MAX
            p[k] = sym[k]
        if bad:
            return 3
    elif mode == _EB:
        for i in range(8):
            run = 0
            for j in range(8):
                run += sym[8 * i + j]
                p[8 * i + j] = run + (p[8 * (i - 1) + j] if i > 0 else 0)
    else:
        for k in range(64):
            q = sym[_IZZ[k]]
            qq = ((2 * abs(q) + 1) * table[k]) >> 1 if q != 0 else 0
            qq = min(qq, _COEF_MAX)
            y[k] = -qq if q < 0 else qq
        t = sym  # decoded symbols are consumed: reuse as scratch
        # Even/odd butterflies (see _symbols): T[v, c] = E + O and T[v, 7 - c] = E - O.
        for v in range(8):  # row pass: T = Y K
            r = 8 * v
            nonzero = 0
            for u in range(8):
                nonzero |= y[r + u]
            if nonzero == 0:  # most high-frequency rows: the rounded shift of 0 is 0
                for c in range(8):
                    t[r + c] = 0
                continue
            for c in range(4):
                even = 0
                odd = 0
                for u in range(0, 8, 2):
                    even += y[r + u] * _K[u, c]
                    odd += y[r + u + 1] * _K[u + 1, c]
                t[r + c] = _rshift_round(even + odd, _IS1)
                t[r + 7 - c] = _rshift_round(even - odd, _IS1)
        for c in range(8):  # column pass: P = K^T T
            for r in range(4):
                even = 0
                odd = 0
                for v in range(0, 8, 2):
                    even += _K[v, r] * t[8 * v + c]
                    odd += _K[v + 1, r] * t[8 * (v + 1) + c]
                p[8 * r + c] = min(max(_rshift_round(even + odd, _IS2), -_SFPR_MAX), _SFPR_MAX)
                p[8 * (7 - r) + c] = min(max(_rshift_round(even - odd, _IS2), -_SFPR_MAX),
                                         _SFPR_MAX)
    _dequantize(p, inv, dtype, out_row)
    return 0


@njit(cache=True, inline="always")
def _load_raw(data, o, size, row):
    """A RAW block's 64 little-endian values of ``size`` bytes at ``data[o]`` into ``row``."""
    for k in range(64):
        v = np.uint32(0)
        for j in range(size):
            v |= np.uint32(data[o + size * k + j]) << np.uint32(8 * j)
        row[k] = v


@njit(cache=True, nogil=True)
def _decode_range(data, kind, mbs, length, offsets, b0, b1, mode, dtype, inv_blk, table, geo,
                  out, errors):
    """Decode blocks b0..b1-1 into ``out`` (the tensor's flat bit patterns, padding dropped);
    per-block error codes (see DECODE_ERRORS) into ``errors``; a bad block writes nothing."""
    with_values = mode != _MASK
    size = out.itemsize
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    row = np.empty(64, np.uint32)
    sym = np.empty(64, np.int64)
    p = np.empty(64, np.int64)
    y = np.empty(64, np.int64)
    where = np.empty(64, np.int64)
    codes = np.empty(8, np.int64)
    for b in range(b0, b1):
        errors[b] = 0
        if kind[b] == 2:
            _load_raw(data, offsets[b], size, row)
        else:
            err = _block_symbols(data, kind[b], offsets[b], length[b], mbs[b], with_values, sym,
                                 where, codes)
            if err:
                errors[b] = err
                continue
            err = _reconstruct(sym, mode, inv_blk[b], table, dtype, row, p, y)
            if err:
                errors[b] = err
                continue
        _store_bits(out, geo, b, row, src, dst, cur)


# ----------------------------------------------------------------------------- mask mode
# The mask is what offload stores for every ReLU output, so it gets kernels of its own: no
# float conversion and no symbol arrays, just a compare on the bit pattern per value. Bytes equal
# to the generic path's (the backend tests run both).


@njit(cache=True, inline="always")
def _mask_byte(v, top):
    """Bit of one value in a mask byte: 1 for 0 < x, i.e. 0 < bits <= ``top``; one unsigned
    compare (the bits of zero wrap to the largest value), no branch."""
    return np.uint32(np.uint32(v) - np.uint32(1) < top)


@njit(cache=True, nogil=True)
def _mask_encode_range(flat, geo, b0, b1, dtype, rows, mbs, length):
    """Mask bytes of blocks b0..b1-1 into ``rows`` (8 per block), with their trimmed length.
    Blocks inside the tensor are read row by row from ``flat`` (no block copy); edge blocks go
    through ``_load_bits``."""
    top = _positive_limit(dtype)
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    bits = np.empty(64, np.uint32)
    for b in range(b0, b1):
        full, o, s = _interior(b, geo, cur)
        if not full:
            _load_bits(flat, geo, b, bits, src, dst, cur)
        mb = 0
        for i in range(8):
            r = np.uint64(o + i * s)  # unsigned: no negative-index fix-up per element
            byte = np.uint32(0)
            for j in range(8):
                v = flat[r + np.uint64(j)] if full else bits[8 * i + j]
                byte |= _mask_byte(v, top) << np.uint32(j)
            rows[b, i] = byte
            mb = i + 1 if byte else mb
        mbs[b] = max(mb, 1)
        length[b] = mb


@njit(cache=True, nogil=True)
def _mask_assemble_range(rows, length, offsets, b0, b1, payload):
    for b in range(b0, b1):
        for j in range(length[b]):
            payload[offsets[b] + j] = rows[b, j]


@njit(cache=True, nogil=True)
def _mask_decode_range(data, mbs, length, offsets, b0, b1, dtype, geo, out, errors):
    """Decode mask blocks b0..b1-1 (kinds ZERO and CODED only) into ``out``: blocks inside the
    tensor written row by row straight into ``out``, edge blocks through ``_store_bits``."""
    one = _from_f32(np.float32(1.0), dtype)
    src = np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    dst = np.empty(64, np.int64)
    row = np.empty(64, np.uint32)
    for b in range(b0, b1):
        errors[b] = 0
        n, mb, o = length[b], mbs[b], offsets[b]
        if n:
            if data[o + mb - 1] == 0:
                errors[b] = 1
                continue
            if n != mb:
                errors[b] = 4
                continue
        full, at, s = _interior(b, geo, cur)
        for i in range(8):
            byte = np.uint32(data[o + i]) if i < n else np.uint32(0)
            r = np.uint64(at + i * s)
            for j in range(8):
                v = one * ((byte >> np.uint32(j)) & np.uint32(1))  # branch-free
                if full:
                    out[r + np.uint64(j)] = v
                else:
                    row[8 * i + j] = v
        if not full:
            _store_bits(out, geo, b, row, src, dst, cur)


def mask_encode_blocks(flat, geo, nb, dtype, threads=1):
    """``encode_blocks`` for mode ``mask``: per-block kind, mask bytes, length, and payload."""
    rows = np.empty((nb, 8), np.uint8)
    mbs = np.empty(nb, np.int64)
    length = np.empty(nb, np.int64)
    ranges = _ranges(nb, threads)
    _run(_mask_encode_range, ranges, flat, geo, args_after=(dtype, rows, mbs, length))
    kind = (length > 0).astype(np.int64)
    offsets = np.cumsum(length) - length
    payload = np.empty(int(length.sum()), np.uint8)
    _run(_mask_assemble_range, ranges, rows, length, offsets, args_after=(payload,))
    return kind, mbs, length, payload


def mask_decode_blocks(data, kind, mbs, length, offsets, dtype, geo, out, threads=1):
    """``decode_blocks`` for mode ``mask`` when every block is ZERO or CODED (the caller checks;
    other kinds go to ``decode_blocks``)."""
    nb = kind.shape[0]
    errors = np.empty(nb, np.int64)
    _run(_mask_decode_range, _ranges(nb, threads), data, mbs, length, offsets,
         args_after=(dtype, geo, out, errors))
    return errors


# ----------------------------------------------------------------------------- drivers

_MIN_BLOCKS_PER_THREAD = 256
_POOL = None


def _ranges(nb: int, threads: int) -> list[tuple[int, int]]:
    parts = max(1, min(threads, nb // _MIN_BLOCKS_PER_THREAD))
    edges = [nb * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def _run(fn, ranges, *args_before, args_after=()):
    """Run ``fn(*args_before, b0, b1, *args_after)`` over block ranges, in threads when several
    (the kernels release the GIL)."""
    global _POOL
    if len(ranges) == 1:
        fn(*args_before, *ranges[0], *args_after)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                   thread_name_prefix="actpack-codec")
    futures = [_POOL.submit(fn, *args_before, b0, b1, *args_after) for b0, b1 in ranges]
    for f in futures:
        f.result()


@njit(cache=True, nogil=True)
def _tile_range(flat, geo, b0, b1, out):
    """Blocks b0..b1-1 of ``flat`` (edge replicated) into the rows of ``out`` (nb, 64)."""
    src, dst = np.empty(64, np.int64), np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)  # see _block_origin
    for b in range(b0, b1):
        _load_bits(flat, geo, b, out[b], src, dst, cur)


@njit(cache=True, nogil=True)
def _untile_range(blocks, geo, b0, b1, out):
    """Rows b0..b1-1 of ``blocks`` (nb, 64) into the flat tensor ``out``, padding dropped."""
    src, dst = np.empty(64, np.int64), np.empty(64, np.int64)
    cur = np.full(4, -1, np.int64)
    for b in range(b0, b1):
        _store_bits(out, geo, b, blocks[b], src, dst, cur)


def tile_blocks(flat, geo, nb, threads=1, out=None):
    """``reference.tile`` of the flat bit patterns ``flat``: (nb, 64) blocks, edge replicated
    (what the host streams to the card), into ``out`` (an (nb, 64) array of ``flat``'s width,
    e.g. a view of the job buffer) or a new array."""
    out = np.empty((nb, 64), flat.dtype) if out is None else out
    if nb:
        _run(_tile_range, _ranges(nb, threads), flat, geo, args_after=(out,))
    return out


def untile_blocks(blocks, geo, out, threads=1):
    """``reference.untile``: the (nb, 64) ``blocks`` into the flat ``out``, padding dropped."""
    nb = blocks.shape[0]
    if nb:
        _run(_untile_range, _ranges(nb, threads), blocks, geo, args_after=(out,))
    return out


def group_maxabs(flat, geo, nb, dtype, groups, ngroups, threads=1):
    """Per-group max |x| over finite values (float32), for the per-group scales."""
    per_block = np.zeros(nb, np.float32)
    _run(_block_maxabs, _ranges(nb, threads), flat, geo, args_after=(dtype, per_block))
    out = np.zeros(ngroups, np.float32)
    np.maximum.at(out, groups, per_block)
    return out


def encode_blocks(flat, geo, nb, dtype, mode, scale_blk, inv_blk, table, error_bound, raw_len,
                  threads=1):
    """Encode the tensor ``flat`` (its bit patterns, 1-D) block by block.

    Returns per-block kind, mask bytes and length, and the payload."""
    scratch = np.empty((nb, SCRATCH), np.uint8)
    kind = np.empty(nb, np.int64)
    mbs = np.empty(nb, np.int64)
    length = np.empty(nb, np.int64)
    ranges = _ranges(nb, threads)
    _run(_encode_range, ranges, flat, geo, args_after=(
        dtype, mode, scale_blk, inv_blk, table, error_bound, raw_len, scratch, kind, mbs, length))
    offsets = np.cumsum(length) - length
    payload = np.empty(int(length.sum()), np.uint8)
    _run(_assemble_range, ranges, flat, geo, args_after=(
        kind, length, offsets, scratch, raw_len, payload))
    return kind, mbs, length, payload


def eb2_encode_blocks(flat, geo, geometry, dtype, scale, inv, error_bound, raw_len, threads=1):
    """Mode eb2: each block pre-quantized, bound-checked, predicted across the blocks of its
    plane and coded in one pass, planes in parallel. Returns per-block kind, mask bytes and
    length, and the payload."""
    nb = geometry.nblocks
    scratch = np.empty((nb, SCRATCH), np.uint8)
    kind = np.empty(nb, np.int64)
    mbs = np.empty(nb, np.int64)
    length = np.empty(nb, np.int64)
    if nb:
        rec = np.empty((nb, 64), np.int64)
        _run(_eb2_encode_range, _ranges(geometry.planes, threads), flat, geo, geometry.blocks_y,
             geometry.blocks_x, args_after=(dtype, scale, inv, error_bound, raw_len, rec,
                                             scratch, kind, mbs, length))
        del rec
    offsets = np.cumsum(length) - length
    payload = np.empty(int(length.sum()), np.uint8)
    _run(_assemble_range, _ranges(nb, threads), flat, geo, args_after=(
        kind, length, offsets, scratch, raw_len, payload))
    return kind, mbs, length, payload


def eb2_decode_blocks(data, kind, mbs, length, offsets, dtype, inv, geo, geometry, out,
                      threads=1):
    """Mode eb2: each block's symbols, the plane-wide reconstruction and the values in one
    pass, planes in parallel. Returns the per-block error codes (DECODE_ERRORS); with any,
    ``out`` is garbage, to be discarded."""
    nb = kind.shape[0]
    errors = np.zeros(nb, np.int64)
    if nb:
        rec = np.empty((nb, 64), np.int64)
        _run(_eb2_decode_range, _ranges(geometry.planes, threads), data, kind, mbs, length,
             offsets, geometry.blocks_y, geometry.blocks_x,
             args_after=(rec, inv, dtype, geo, out, errors))
    return errors


def decode_blocks(data, kind, mbs, length, offsets, mode, dtype, inv_blk, table, geo, out,
                  threads=1):
    """Decode every block into ``out``, the tensor's flat bit patterns (padding dropped).

    Returns per-block error codes (see DECODE_ERRORS); blocks with an error write nothing."""
    nb = kind.shape[0]
    errors = np.empty(nb, np.int64)
    _run(_decode_range, _ranges(nb, threads), data, kind, mbs, length, offsets,
         args_after=(mode, dtype, inv_blk, table, geo, out, errors))
    return errors
