"""The decompressor's cases: what the reference decoder makes of each block (``block_model``) and
the ``.npz`` a case is saved as (``write_case``), read by the testbench
(``sim/test_decompressor.py``) and written by its tests and by ``actpack bench rtl``
(``bench.rtl.measure_decompressor``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actpack.codec import reference, spec
from actpack.codec.frame import DENSE_HEADER, Kind, unpack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import ZIGZAG

from . import rows

__all__ = ["block_model", "write_case"]

_INVERSE_ZIGZAG = np.argsort(ZIGZAG)


def block_model(kind: int, mb: int, chunk: bytes, r_bits: int, *, mode, dtype, table=None):
    """What ``reference.decompress`` makes of one block before untiling: its 64 bit patterns
    (raster order), or None where it raises ``FrameError`` (format 8.2, 10 #21 for one entry,
    #27 sfpr8 range)."""
    mode, dtype = Mode.parse(mode), DType(dtype) if not isinstance(dtype, DType) else dtype
    bits_t = rows.BITS_DTYPE[dtype]
    length = len(chunk)
    try:
        if kind == Kind.ZERO:
            if length or mb != 1:
                return None
            symbols = np.zeros(64, dtype=np.int64)
        elif kind == Kind.RAW:
            if length != 64 * dtype.itemsize or mb != 1 or mode is Mode.MASK:
                return None
            return np.frombuffer(chunk, dtype=np.dtype(bits_t).newbyteorder("<")).astype(bits_t)
        elif kind == Kind.DENSE:
            if mb != 1 or mode is Mode.MASK or length < DENSE_HEADER:
                return None
            symbols = reference.decode_dense(chunk)
        else:
            if length < mb:
                return None
            symbols = reference.decode_block(chunk, mb, with_values=mode is not Mode.MASK)
    except reference.FrameError:
        return None
    if mode is Mode.MASK:
        values = symbols.reshape(1, 8, 8).astype(np.float32)
    else:
        if mode is Mode.SFPR8:
            if np.abs(symbols).max() > spec.SFPR_MAX:
                return None
            p = symbols.reshape(1, 8, 8)
        elif mode is Mode.DCT:
            p = reference.idct2(reference.dequantize(
                symbols[_INVERSE_ZIGZAG].reshape(1, 8, 8), np.asarray(table)))
        else:
            p = reference.unlorenzo(symbols.reshape(1, 8, 8))
        inverse = np.array([r_bits], dtype=np.uint32).view(np.float32)
        values = reference.dequantize_values(p, inverse[:, None, None])
    return reference.from_float32(values, dtype).reshape(64).astype(bits_t)


def write_case(path, frame_case: dict, *, mode, dtype, corrupt=()) -> Path:
    """Save the stimulus and expectation of one frame (``sim.frames.frame_case``) to ``path``.
    ``corrupt``: (block, entry, chunk) triples replacing a block's index entry and payload
    bytes (the model then says whether it is malformed)."""
    index = np.asarray(frame_case["index"], dtype=np.uint16).copy()
    kinds, mbs, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    payload = bytes(frame_case["payload"])
    chunks = [payload[offsets[b]:offsets[b + 1]] for b in range(len(index))]
    for b, entry, chunk in corrupt:
        index[b] = entry
        chunks[b] = bytes(chunk)
    kinds, mbs, _ = unpack_index(index)
    table = frame_case.get("table")
    r = np.asarray(frame_case["r"], dtype=np.int64)
    expected, bad = [], []
    for b in range(len(index)):
        out = block_model(int(kinds[b]), int(mbs[b]), chunks[b], int(r[b]), mode=mode,
                          dtype=dtype, table=table)
        bad.append(out is None)
        expected.append(np.zeros(64, np.int64) if out is None else out.astype(np.int64))
    path = Path(path)
    np.savez(path, index=index, r=r, table=table if table is not None else np.zeros(0),
             payload=np.frombuffer(b"".join(chunks), dtype=np.uint8),
             lengths=np.array([len(c) for c in chunks], dtype=np.int64),
             expected=np.array(expected, dtype=np.int64).reshape(-1, 64),
             bad=np.array(bad, dtype=bool))
    return path
