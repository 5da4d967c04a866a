"""The torch implementation of the codec: the fast path training uses, on CPU or CUDA.

It produces exactly the bytes of the numpy model (``reference``) and is tested against it. All
block work is vectorized over the whole tensor: the transforms run as batched matmuls in float64
(exact: every intermediate is an integer below 2**53), and the entropy coder computes every
value's bit position with prefix sums and scatters the bits with one ``index_add_``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from actpack.codec import spec
from actpack.codec.frame import Header, Kind, build_frame, pack_index, parse_frame, unpack_index
from actpack.codec.reference import NUMPY_BITS, tile_index, untile_index
from actpack.codec.spec import WIDTH_MAX, DType, Geometry, Mode
from actpack.codec.tables import DCT_MATRIX, ZIGZAG
from actpack.errors import Check, FrameError

__all__ = ["TORCH_DTYPES", "compress", "decompress"]

try:  # the compiled CPU kernels; without numba the eager path runs everywhere
    from actpack.codec import cpukernels
except ImportError:  # pragma: no cover - numba is a dependency; this keeps odd installs working
    cpukernels = None

TORCH_DTYPES = {torch.float32: DType.FLOAT32, torch.float16: DType.FLOAT16,
                torch.bfloat16: DType.BFLOAT16}
TORCH_OF = {v: k for k, v in TORCH_DTYPES.items()}
TORCH_BITS = {DType.FLOAT32: torch.int32, DType.FLOAT16: torch.int16, DType.BFLOAT16: torch.int16}


@functools.lru_cache(maxsize=64)
def _consts(device: torch.device):
    k = torch.tensor(DCT_MATRIX, dtype=torch.float64, device=device)
    zz = torch.tensor(ZIGZAG, dtype=torch.long, device=device)
    return k, zz, torch.argsort(zz), torch.arange(64, device=device)


@functools.lru_cache(maxsize=64)
def _indices(geo: Geometry, device: torch.device):
    tile = torch.from_numpy(tile_index(geo).reshape(-1)).to(device)
    untile = torch.from_numpy(untile_index(geo)).to(device)
    groups = torch.from_numpy(np.repeat(geo.group_of_plane(), geo.blocks_per_plane)).to(device)
    return tile, untile, groups


@functools.lru_cache(maxsize=64)
def _block_groups(geo: Geometry, device: torch.device) -> torch.Tensor:
    """Scale group of each block (without ``_indices``' element-sized tile indices)."""
    return torch.from_numpy(np.repeat(geo.group_of_plane(), geo.blocks_per_plane)).to(device)


def _round_shift(x: torch.Tensor, s: int) -> torch.Tensor:
    # floor((x + 2**(s-1)) / 2**s): exact in float64 for the integers here.
    return torch.floor((x + (1 << (s - 1))) * (1.0 / (1 << s)))


def _sfpr(x: torch.Tensor, finite: torch.Tensor, scale: torch.Tensor, limit: int) -> torch.Tensor:
    mag = torch.where(finite, x, 0).abs().double() * scale
    q = torch.floor(mag + 0.5).clamp_(max=limit)
    return torch.where(x < 0, -q, q)


def _to_dtype(values: torch.Tensor, dtype: DType) -> torch.Tensor:
    lim = dtype.max_finite
    return values.clamp(-lim, lim).to(TORCH_OF[dtype])


def _dequantize_values(p: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    return p.float() * inverse


# ----------------------------------------------------------------------------- compiled CPU path



def _use_kernels(device: torch.device, kernels: bool | None) -> bool:
    if kernels is None:
        kernels = cpukernels is not None
    return kernels and device.type == "cpu"


@functools.lru_cache(maxsize=64)
def cpu_geometry(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The CPU kernels' geometry array (flat, numel, height, width, blocks_x, blocks_per_plane)
    and each block's scale group."""
    g = np.array([geo.flat, geo.numel, geo.height, geo.width, geo.blocks_x,
                  max(geo.blocks_per_plane, 1)], dtype=np.int64)
    groups = np.repeat(geo.group_of_plane(), geo.blocks_per_plane).astype(np.int64)
    return g, groups


def _scale_arrays(header: Header, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not header.scales:
        return np.zeros(len(groups)), np.zeros(len(groups), np.float32)
    if header.mode.error_bounded:
        groups = np.zeros_like(groups)
    # Scale.value and Scale.inverse for every record at once (a layer has a record per channel):
    # the same IEEE operations (exact ldexp, a float64 division, rounding to float32).
    n = len(header.scales)
    value = np.ldexp(np.fromiter((s.mantissa for s in header.scales), np.float64, n),
                     np.fromiter((s.exponent for s in header.scales), np.int32, n))
    return value[groups], (1.0 / value).astype(np.float32)[groups]


def _table(header: Header) -> np.ndarray:
    return (np.ones(64, np.int64) if header.table is None
            else np.asarray(header.table, dtype=np.int64))


def cpu_scales(flat: np.ndarray, header: Header) -> tuple:
    """The frame's scale records for the flat bit patterns ``flat`` (numpy, the dtype's width):
    exactly what ``reference.compress`` computes, with the CPU kernels (also the reduction the
    card's driver does on the host)."""
    geo, dtype, mode = header.geometry, header.dtype, header.mode
    g, groups = cpu_geometry(geo)
    threads = torch.get_num_threads()
    if mode in (Mode.DCT, Mode.SFPR8):
        gmax = cpukernels.group_maxabs(flat, g, geo.nblocks, int(dtype), groups, geo.groups,
                                      threads=threads)
        return tuple(spec.sfpr_scales(gmax, header.param))
    if mode.error_bounded:
        amax = cpukernels.group_maxabs(flat, g, geo.nblocks, int(dtype), np.zeros_like(groups),
                                       1, threads=threads)[0]
        return (spec.eb_scale(header.param, float(amax), dtype),)
    return ()


def cpu_flat_bits(t: torch.Tensor, dtype: DType) -> np.ndarray:
    """The bit patterns of a contiguous CPU tensor as a flat numpy array (no copy)."""
    return t.reshape(-1).view(TORCH_BITS[dtype]).numpy().view(NUMPY_BITS[dtype])


def _compress_cpu(t: torch.Tensor, header: Header) -> bytes:
    geo, dtype, mode = header.geometry, header.dtype, header.mode
    nb = geo.nblocks
    flat = cpu_flat_bits(t, dtype)
    g, groups = cpu_geometry(geo)
    if mode is Mode.MASK:
        kind, mbs, length, payload = cpukernels.mask_encode_blocks(
            flat, g, nb, int(dtype), threads=torch.get_num_threads())
        return build_frame(dataclasses.replace(header, payload_bytes=payload.size),
                           pack_index(kind, mbs, length), payload)
    header = dataclasses.replace(header, scales=cpu_scales(flat, header))
    if mode is Mode.EB2:
        s = header.scales[0]
        kind, mbs, length, payload = cpukernels.eb2_encode_blocks(
            flat, g, geo, int(dtype), s.value, s.inverse, float(header.param),
            64 * dtype.itemsize, threads=torch.get_num_threads())
        return build_frame(dataclasses.replace(header, payload_bytes=payload.size),
                           pack_index(kind, mbs, length), payload)
    scale_blk, inv_blk = _scale_arrays(header, groups)
    kind, mbs, length, payload = cpukernels.encode_blocks(
        flat, g, nb, int(dtype), int(mode), scale_blk, inv_blk, _table(header),
        float(header.param), 64 * dtype.itemsize, threads=torch.get_num_threads())
    index = pack_index(kind, mbs, length)
    return build_frame(dataclasses.replace(header, payload_bytes=payload.size), index, payload)


def _decompress_cpu(header: Header, index: np.ndarray, payload) -> torch.Tensor:
    geo, dtype = header.geometry, header.dtype
    kind, mbs, length = unpack_index(index)
    offsets = np.cumsum(length) - length
    g, groups = cpu_geometry(geo)
    _, inv_blk = _scale_arrays(header, groups)
    out = torch.empty(geo.numel, dtype=TORCH_BITS[dtype])
    if header.mode is Mode.EB2:
        errors = cpukernels.eb2_decode_blocks(
            np.frombuffer(payload, dtype=np.uint8), kind, mbs, length, offsets, int(dtype),
            header.scales[0].inverse, g, geo, out.numpy().view(NUMPY_BITS[dtype]),
            threads=torch.get_num_threads())
    elif header.mode is Mode.MASK and kind.max(initial=0) <= 1:
        errors = cpukernels.mask_decode_blocks(
            np.frombuffer(payload, dtype=np.uint8), kind, mbs, length, offsets, int(dtype), g,
            out.numpy().view(NUMPY_BITS[dtype]), threads=torch.get_num_threads())
    else:
        errors = cpukernels.decode_blocks(
            np.frombuffer(payload, dtype=np.uint8), kind, mbs, length, offsets,
            int(header.mode), int(dtype), inv_blk, _table(header), g,
            out.numpy().view(NUMPY_BITS[dtype]), threads=torch.get_num_threads())
    bad = np.flatnonzero(errors)
    if bad.size:
        b = int(bad[0])
        check, message = cpukernels.DECODE_ERRORS[int(errors[b])]
        raise FrameError(f"block {b}: {message}", check=check, block=b)
    return out.view(TORCH_OF[dtype]).view(header.shape)


# ----------------------------------------------------------------------------- compress


def compress(t: torch.Tensor, header: Header, *, kernels: bool | None = None) -> bytes:
    """Compress tensor ``t`` (float32/float16/bfloat16, any device) into a frame; see reference.

    On CPU the compiled kernels run (``kernels=False`` forces the eager torch ops, which also
    serve CUDA); both give the numpy model's bytes."""
    if _use_kernels(t.device, kernels):
        return _compress_cpu(t.contiguous(), header)
    geo, dtype, mode = header.geometry, header.dtype, header.mode
    dev = t.device
    nb = geo.nblocks
    tile_idx, _, groups = _indices(geo, dev)
    blocks = t.reshape(-1)[tile_idx].view(nb, 8, 8) if nb else t.new_zeros((0, 8, 8))
    x = blocks.float()
    finite_v = torch.isfinite(x)
    finite = finite_v.view(nb, 64).all(1)
    raw_len = 64 * dtype.itemsize

    if mode in (Mode.DCT, Mode.SFPR8):
        mags = torch.where(finite_v, x.abs(), 0).view(nb, 64).amax(1) if nb else x.new_zeros(0)
        gmax = torch.zeros(geo.groups, dtype=torch.float32, device=dev)
        gmax.scatter_reduce_(0, groups, mags, "amax")
        scales = spec.sfpr_scales(gmax.cpu().numpy(), header.param)
    elif mode.error_bounded:
        amax = torch.where(finite_v, x.abs(), 0).amax() if nb else 0.0
        scales = [spec.eb_scale(header.param, float(amax), dtype)]
    else:
        scales = []
    header = dataclasses.replace(header, scales=tuple(scales))
    force_raw = torch.zeros(nb, dtype=torch.bool, device=dev)

    if mode is Mode.MASK:
        sym = (x > 0).view(nb, 64).to(torch.int32)
    else:
        if mode.error_bounded:
            scale = torch.full((nb, 1, 1), scales[0].value, dtype=torch.float64, device=dev)
            inverse = torch.full((nb, 1, 1), float(scales[0].inverse), device=dev)
        else:
            sv = torch.tensor([s.value for s in scales], dtype=torch.float64, device=dev)
            scale = sv[groups].view(nb, 1, 1)
        force_raw |= ~finite
        if mode is Mode.SFPR8:
            sym = _sfpr(x, finite_v, scale, spec.SFPR_MAX).view(nb, 64).to(torch.int32)
        elif mode is Mode.DCT:
            k, zz, _, _ = _consts(dev)
            p = _sfpr(x, finite_v, scale, spec.SFPR_MAX)
            y = _round_shift(k @ _round_shift(p @ k.T, spec.DCT_SHIFT_1), spec.DCT_SHIFT_2)
            qt = torch.tensor(header.table, dtype=torch.float64, device=dev).view(8, 8)
            q = torch.floor(y.abs() / qt) * torch.sign(y)
            sym = q.view(nb, 64)[:, zz].to(torch.int32)
        else:  # EB, EB2
            q = _sfpr(x, finite_v, scale, spec.EB2_Q_SAT if mode is Mode.EB2 else spec.EB_Q_SAT)
            xhat = _to_dtype(_dequantize_values(q, inverse), dtype).double()
            err_ok = ((x.double() - xhat).abs() <= header.param).view(nb, 64).all(1)
            force_raw |= ~err_ok
            if mode is Mode.EB2:
                sym = _eb2_residuals(_eb2_reference(q.long(), force_raw, geo), geo)
            else:
                qi = torch.nn.functional.pad(q.to(torch.int32), (1, 0, 1, 0))
                d = qi[:, 1:, 1:] - qi[:, :-1, 1:] - qi[:, 1:, :-1] + qi[:, :-1, :-1]
                sym = d.reshape(nb, 64)

    kind, mb, length, payload = _encode(sym, force_raw, blocks, raw_len, mode is not Mode.MASK)
    index = (kind << 14) | (torch.where(kind == Kind.CODED, mb - 1, 0) << 11) | length
    index = index.to(torch.int32).cpu().numpy().astype("<u2")
    payload = payload.cpu().numpy()
    return build_frame(dataclasses.replace(header, payload_bytes=payload.size), index, payload)


def _to_planes(blocks: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(n, 8, 8) blocks of whole planes as the padded planes (see ``reference.to_planes``)."""
    n = blocks.shape[0] // max(geo.blocks_per_plane, 1)
    return (blocks.reshape(n, geo.blocks_y, geo.blocks_x, 8, 8).permute(0, 1, 3, 2, 4)
            .reshape(n, geo.padded_height, geo.padded_width))


def _from_planes(planes: torch.Tensor, geo: Geometry) -> torch.Tensor:
    n = planes.shape[0]
    return (planes.reshape(n, geo.blocks_y, 8, geo.blocks_x, 8).permute(0, 1, 3, 2, 4)
            .reshape(n * geo.blocks_per_plane, 8, 8))


def _eb2_reference(q: torch.Tensor, raw: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``reference.eb2_reference``: RAW blocks filled in block order, all planes at once per
    block position."""
    ref = torch.where(raw[:, None, None], 0, q)
    if not bool(raw.any()):
        return ref
    planes = torch.nn.functional.pad(_to_planes(ref, geo), (1, 0, 1, 0))
    raw_at = raw.view(geo.planes, geo.blocks_per_plane)
    for pos in torch.nonzero(raw_at.any(0)).flatten().tolist():
        by, bx = divmod(pos, geo.blocks_x)
        ps = torch.nonzero(raw_at[:, pos]).flatten()
        y0, x0 = 8 * by + 1, 8 * bx + 1
        top = planes[ps, y0 - 1, x0:x0 + 8]
        left = planes[ps, y0:y0 + 8, x0 - 1]
        corner = planes[ps, y0 - 1, x0 - 1]
        planes[ps, y0:y0 + 8, x0:x0 + 8] = spec.eb2_wrap(
            top[:, None, :] + left[:, :, None] - corner[:, None, None])
    return _from_planes(planes[:, 1:, 1:], geo)


def _eb2_residuals(ref: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``reference.eb2_residuals``: (nblocks, 64) int32."""
    p = torch.nn.functional.pad(_to_planes(ref, geo), (1, 0, 1, 0))
    d = p[:, 1:, 1:] - p[:, :-1, 1:] - p[:, 1:, :-1] + p[:, :-1, :-1]
    return spec.eb2_wrap(_from_planes(d, geo)).reshape(geo.nblocks, 64).to(torch.int32)


def _eb2_reconstruct(sym: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``reference.eb2_reconstruct`` of the (n, 64) symbols of whole planes: (n, 8, 8) int64."""
    planes = spec.eb2_wrap(_to_planes(sym, geo).cumsum(1))
    return _from_planes(spec.eb2_wrap(planes.cumsum(2)), geo)


def _encode(sym, force_raw, blocks, raw_len, with_values):
    """Entropy-code all blocks. Returns per-block kind, mask bytes, length and the payload."""
    nb = sym.shape[0]
    dev = sym.device
    ar64 = _consts(dev)[3]
    nz = sym != 0
    count = nz.sum(1)
    last = torch.where(nz, ar64, -1).amax(1) if nb else count
    mb = torch.div(last, 8, rounding_mode="floor") + 1
    if with_values:
        a = sym.abs()
        u = torch.where(nz, 2 * (a - 1) + (sym < 0), 0)
        bitlen = torch.frexp(u.float())[1]  # bit length of u (u < 2**16 is exact in float32)
        rank = nz.cumsum(1) - 1
        grp = torch.div(rank, 8, rounding_mode="floor")
        slot = (torch.arange(nb, device=dev)[:, None] * 8 + grp.clamp(0, 7))
        widths = torch.zeros(nb * 8, dtype=torch.int32, device=dev)
        widths.scatter_reduce_(0, slot[nz], bitlen[nz].to(torch.int32), "amax")
        widths = widths.view(nb, 8)
        ngroups = torch.div(count + 7, 8, rounding_mode="floor")
        wbytes = torch.div(ngroups + 1, 2, rounding_mode="floor")
        sizes = (count[:, None] - 8 * torch.arange(8, device=dev)).clamp(0, 8)
        gbits = sizes * widths
        databits = gbits.sum(1)
        coded_len = mb + wbytes + torch.div(databits + 7, 8, rounding_mode="floor")
        too_wide = (widths > WIDTH_MAX).any(1)
        # The dense alternative: all 64 codes 2|v| - (v < 0), 8 groups of 8 positions.
        ud = 2 * sym.abs() - (sym < 0).to(sym.dtype)
        dwidths = torch.frexp(ud.view(nb, 8, 8).amax(2).float())[1].to(torch.int64)
        dense_len = 4 + dwidths.sum(1)
        dense_fits = ~(dwidths > WIDTH_MAX).any(1) & (dense_len <= raw_len)
    else:
        coded_len = mb
        too_wide = torch.zeros_like(force_raw)
        dense_len = coded_len
        dense_fits = torch.zeros_like(force_raw)
    live = (count > 0) & ~force_raw
    sparse_fits = ~too_wide & (coded_len <= raw_len)
    dense = live & dense_fits & (~sparse_fits | (dense_len < coded_len))  # ties go to sparse
    coded = live & sparse_fits & ~dense
    raw = force_raw | (live & ~coded & ~dense)
    kind = torch.where(raw, int(Kind.RAW), torch.where(coded, int(Kind.CODED), int(Kind.ZERO)))
    kind = torch.where(dense, int(Kind.DENSE), kind)
    length = torch.where(raw, raw_len, torch.where(coded, coded_len, 0))
    length = torch.where(dense, dense_len, length)
    offsets = length.cumsum(0) - length
    total = int(length.sum()) if nb else 0
    buf = torch.zeros(total + 4, dtype=torch.int32, device=dev)

    # Mask bytes.
    weights = (1 << torch.arange(8, device=dev, dtype=torch.int32))
    mask_bytes = (nz.view(nb, 8, 8).to(torch.int32) * weights).sum(2)
    j8 = torch.arange(8, device=dev)
    sel = coded[:, None] & (j8 < mb[:, None])
    buf.index_add_(0, (offsets[:, None] + j8)[sel], mask_bytes[sel].to(torch.int32))
    if with_values:
        # Width nibbles, two groups a byte, low nibble first.
        wb = widths.view(nb, 4, 2)
        nib = wb[:, :, 0] | (wb[:, :, 1] << 4)
        j4 = torch.arange(4, device=dev)
        sel = coded[:, None] & (j4 < wbytes[:, None])
        buf.index_add_(0, (offsets + mb)[:, None].add(j4)[sel], nib[sel].to(torch.int32))
        # Values, LSB-first at their bit positions; no two share a bit, so add == or.
        gstart = gbits.cumsum(1) - gbits
        vsel = nz & coded[:, None]
        g = grp[vsel]
        rows = torch.nonzero(vsel)[:, 0]
        w = widths[rows, g]
        pos = 8 * (offsets + mb + wbytes)[rows] + gstart[rows, g] + (rank[vsel] - 8 * g) * w
        val = u[vsel].to(torch.int32) << (pos & 7).to(torch.int32)
        byte = torch.div(pos, 8, rounding_mode="floor")
        for k in range(3):
            buf.index_add_(0, byte + k, (val >> (8 * k)) & 0xFF)
        if dense.any():
            rows = torch.nonzero(dense)[:, 0]
            nib = dwidths[rows].view(-1, 4, 2)
            nib = nib[:, :, 0] | (nib[:, :, 1] << 4)
            buf.index_add_(0, (offsets[rows, None] + j4).reshape(-1),
                           nib.reshape(-1).to(torch.int32))
            w = dwidths[rows].repeat_interleave(8, dim=1)  # (n, 64): each position's width
            gstart = 8 * (dwidths[rows].cumsum(1) - dwidths[rows])  # group start, in bits
            i8 = torch.arange(64, device=dev) % 8
            pos = (8 * (offsets[rows] + 4))[:, None] + gstart.repeat_interleave(8, dim=1) + i8 * w
            val = (ud[rows].to(torch.int32) << (pos & 7).to(torch.int32)).reshape(-1)
            byte = torch.div(pos, 8, rounding_mode="floor").reshape(-1)
            for k in range(3):
                buf.index_add_(0, byte + k, (val >> (8 * k)) & 0xFF)
    out = buf[:total].to(torch.uint8)
    if raw.any():
        rb = blocks.view(nb, 64)[raw].view(torch.uint8).reshape(-1, raw_len)
        dst = offsets[raw][:, None] + torch.arange(raw_len, device=dev)
        out[dst.reshape(-1)] = rb.reshape(-1)
    return kind, mb, length, out


# ----------------------------------------------------------------------------- decompress


def decompress(frame, device=None, *, kernels: bool | None = None) -> torch.Tensor:
    """Decode a frame (bytes-like) to a tensor on ``device`` (default CPU)."""
    header, index, payload = parse_frame(frame)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if _use_kernels(dev, kernels):
        return _decompress_cpu(header, index, payload)
    geo, dtype = header.geometry, header.dtype
    nb = geo.nblocks
    tdtype = TORCH_OF[dtype]
    if nb == 0:
        return torch.zeros(header.shape, dtype=tdtype, device=dev)
    idx = torch.from_numpy(index.astype(np.int32)).to(dev).long()
    kind, mb, length = idx >> 14, ((idx >> 11) & 7) + 1, idx & 0x7FF
    offsets = length.cumsum(0) - length
    data = torch.zeros(len(payload) + 8, dtype=torch.uint8)
    if len(payload):
        data[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    data = data.to(dev)  # bytes; each chunk widens what it gathers
    # Blocks a chunk at a time: the int64 temporaries of a chunk are a few MiB, so a decode
    # holds about its output plus that, whatever the tensor's size (all at once it held 10-27x
    # the output). Chunks go in block order, so the first bad block is the one reported.
    eb2 = header.mode is Mode.EB2
    # eb2 reconstructs whole planes: its chunks give symbols (|v| <= 2**14, int16), which are
    # then turned into values a chunk of whole planes at a time.
    sym = torch.empty(nb, 64, dtype=torch.int16, device=dev) if eb2 else None
    out = torch.empty(nb, 64, dtype=tdtype, device=dev)
    for b0 in range(0, nb, _DECODE_CHUNK):
        b1 = min(nb, b0 + _DECODE_CHUNK)
        (sym if eb2 else out)[b0:b1] = _decode_chunk(
            header, data, kind[b0:b1], mb[b0:b1], length[b0:b1], offsets[b0:b1], b0, dev,
            symbols=eb2)
    if eb2:
        inverse = torch.tensor(float(header.scales[0].inverse), device=dev)
        per = geo.blocks_per_plane
        step = max(1, _DECODE_CHUNK // per) * per
        for b0 in range(0, nb, step):
            b1 = min(nb, b0 + step)
            values = _dequantize_values(_eb2_reconstruct(sym[b0:b1].long(), geo), inverse)
            out[b0:b1] = _to_dtype(values, dtype).reshape(-1, 64)
        del sym
        out = _raw_blocks(out, data, kind == Kind.RAW, offsets, dtype, dev)
    return _untile(out, geo, dev).view(header.shape)


def _raw_blocks(out: torch.Tensor, data: torch.Tensor, raw, offsets, dtype: DType,
                dev) -> torch.Tensor:
    """``out`` (n, 64) with its RAW blocks' rows replaced by their payload values."""
    if bool(raw.any()):
        rl = 64 * dtype.itemsize
        src = (offsets[raw][:, None] + torch.arange(rl, device=dev)).reshape(-1)
        out[raw] = data[src].view(TORCH_OF[dtype]).view(-1, 64)
    return out


_DECODE_CHUNK = 8192  # blocks: 4 MiB per int64 (blocks, 64) temporary


def _untile(blocks: torch.Tensor, geo: Geometry, dev) -> torch.Tensor:
    """The flat tensor from its (nblocks, 64) blocks, padding dropped: a view and one copy where
    the planes are whole blocks, else a gather through the reference's index."""
    if geo.flat:
        return blocks.reshape(-1)[:geo.numel]
    if geo.height % 8 == 0 and geo.width % 8 == 0:
        return (blocks.view(-1, geo.height // 8, geo.width // 8, 8, 8).permute(0, 1, 3, 2, 4)
                .reshape(-1))
    return blocks.reshape(-1)[_indices(geo, dev)[1]]


def _decode_chunk(header: Header, data: torch.Tensor, kind, mb, length, offsets, b0: int,
                  dev, *, symbols: bool = False) -> torch.Tensor:
    """Blocks ``b0`` .. ``b0 + len(kind)`` of the frame as (n, 64) values of its dtype, or with
    ``symbols`` their decoded symbols (int64; 0 in RAW and ZERO blocks)."""
    dtype, mode = header.dtype, header.mode
    nb = len(kind)

    coded = kind == Kind.CODED
    raw = kind == Kind.RAW
    j8 = torch.arange(8, device=dev)

    # Mask bytes -> nonzero positions.
    mbytes = torch.where(coded[:, None] & (j8 < mb[:, None]), data[offsets[:, None] + j8].long(), 0)
    nz = ((mbytes[:, :, None] >> j8) & 1).view(nb, 64).bool()
    lastbyte = mbytes.gather(1, (mb - 1)[:, None])[:, 0]
    if bool((coded & (lastbyte == 0)).any()):
        b = b0 + int(torch.nonzero(coded & (lastbyte == 0))[0])
        raise FrameError(f"block {b}: coded block has an empty or non-minimal mask",
                         check=Check.CODED_MASK, block=b)
    count = nz.sum(1)
    if mode is Mode.MASK:
        sym = nz.to(torch.int64)
    else:
        ngroups = torch.div(count + 7, 8, rounding_mode="floor")
        wbytes = torch.div(ngroups + 1, 2, rounding_mode="floor")
        nib = data[(offsets + mb)[:, None] + torch.arange(4, device=dev)].long()
        widths = torch.stack([nib & 15, nib >> 4], 2).view(nb, 8)
        g8 = torch.arange(8, device=dev)
        widths = torch.where(g8 < ngroups[:, None], widths, 0)
        sizes = (count[:, None] - 8 * g8).clamp(0, 8)
        gbits = sizes * widths
        databits = gbits.sum(1)
        need = mb + wbytes + torch.div(databits + 7, 8, rounding_mode="floor")
        bad = coded & (need != length)
        if bool(bad.any()):
            b = b0 + int(torch.nonzero(bad)[0])
            raise FrameError(f"block {b}: coded block length does not match its widths",
                             check=Check.CODED_LENGTH, block=b)
        vsel = nz & coded[:, None]
        rank = nz.cumsum(1) - 1
        g = torch.div(rank[vsel], 8, rounding_mode="floor")
        rows = torch.nonzero(vsel)[:, 0]
        w = widths[rows, g]
        gstart = gbits.cumsum(1) - gbits
        pos = 8 * (offsets + mb + wbytes)[rows] + gstart[rows, g] + (rank[vsel] - 8 * g) * w
        byte = torch.div(pos, 8, rounding_mode="floor")
        word = data[byte].long() | (data[byte + 1].long() << 8) | (data[byte + 2].long() << 16)
        u = (word >> (pos & 7)) & ((1 << w) - 1)
        mag = (u >> 1) + 1
        sym = torch.zeros(nb, 64, dtype=torch.int64, device=dev)
        sym[vsel] = torch.where((u & 1) == 1, -mag, mag)
        dense = kind == Kind.DENSE
        if bool(dense.any()):
            rows = torch.nonzero(dense)[:, 0]
            nib = data[offsets[rows, None] + torch.arange(4, device=dev)].long()
            dw = torch.stack([nib & 15, nib >> 4], 2).view(-1, 8)
            bad = length[rows] != 4 + dw.sum(1)
            if bool(bad.any()):
                b = b0 + int(rows[torch.nonzero(bad)[0]])
                raise FrameError(f"block {b}: dense block length does not match its widths",
                                 check=Check.DENSE_LENGTH, block=b)
            w = dw.repeat_interleave(8, dim=1)
            gstart = (8 * (dw.cumsum(1) - dw)).repeat_interleave(8, dim=1)
            i8 = torch.arange(64, device=dev) % 8
            pos = (8 * (offsets[rows] + 4))[:, None] + gstart + i8 * w
            byte = torch.div(pos, 8, rounding_mode="floor")
            word = data[byte].long() | (data[byte + 1].long() << 8) | (data[byte + 2].long() << 16)
            u = (word >> (pos & 7)) & ((1 << w) - 1)
            sym[rows] = torch.where((u & 1) == 1, -((u + 1) >> 1), u >> 1)

    if symbols:
        return sym
    values = _reconstruct(sym, header, dev, b0)
    return _raw_blocks(_to_dtype(values, dtype).view(nb, 64), data, raw, offsets, dtype, dev)


def _reconstruct(sym: torch.Tensor, header: Header, dev, b0: int = 0) -> torch.Tensor:
    nb = sym.shape[0]
    mode = header.mode
    if mode is Mode.MASK:
        return sym.view(nb, 8, 8).float()
    if mode is Mode.EB:
        inverse = torch.tensor(float(header.scales[0].inverse), device=dev)
        d = sym.view(nb, 8, 8)
        return _dequantize_values(d.cumsum(1).cumsum(2), inverse)
    groups = _block_groups(header.geometry, dev)
    inv = torch.tensor([float(s.inverse) for s in header.scales], dtype=torch.float32, device=dev)
    inverse = inv[groups[b0:b0 + nb]].view(nb, 1, 1)
    if mode is Mode.SFPR8:
        p = sym.view(nb, 8, 8)
        if bool((p.abs() > spec.SFPR_MAX).any()):
            raise FrameError("sfpr8 value out of range", check=Check.SFPR8_RANGE)
        return _dequantize_values(p, inverse)
    k, _, izz, _ = _consts(dev)
    q = sym[:, izz].view(nb, 8, 8).double()
    qt = torch.tensor(header.table, dtype=torch.float64, device=dev).view(8, 8)
    y = (torch.sign(q) * torch.floor((2 * q.abs() + 1) * qt * 0.5)).clamp(-spec.DCT_COEF_MAX,
                                                                           spec.DCT_COEF_MAX)
    p = _round_shift(k.T @ _round_shift(y @ k, spec.IDCT_SHIFT_1), spec.IDCT_SHIFT_2)
    return _dequantize_values(p.clamp(-spec.SFPR_MAX, spec.SFPR_MAX), inverse)
