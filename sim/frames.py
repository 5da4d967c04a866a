"""Engine stimulus from real frames: the tiled input a host sends the card for a tensor
(docs/card.md 3.2: padded 8 x 8 blocks in block order, each block's group scale) and the block
index and payload of the reference frame ``Codec(mode=..., backend="numpy").compress(t)`` for it.

``frame_case`` returns them as arrays; ``write_case`` saves them as the ``.npz`` that
sim/test_compressor.py reads (and ``actpack bench rtl`` measures with). ``compressor_bundle``
puts several small engine configurations into one simulation top (``BUNDLE``): a Verilator
build has a large fixed cost, so the tests and ``bench rtl --quick`` share one.
"""

from pathlib import Path

import numpy as np

from actpack.codec import reference
from actpack.codec.frame import parse_frame
from actpack.codec.spec import Mode

__all__ = ["BUNDLE", "bundle_prefix", "code_beats", "compressor_bundle", "frame_case",
           "write_case"]

# (mode, dtype, lanes) of the shared small build: every dtype's RAW row width and value decoding,
# and the lane dealing and merging (mask lanes build in seconds; a dct or eb lane takes a minute)
BUNDLE = (("sfpr8", "float32", 1), ("sfpr8", "float16", 1), ("mask", "float32", 1),
          ("mask", "bfloat16", 1), ("mask", "float32", 2), ("mask", "float32", 4))


def code_beats(blob: bytes) -> list[dict]:
    """``blob`` as ``CodeBeat`` payloads: 16 bytes a beat, the last with its ``count`` and
    ``last``."""
    from ..hw.beats import BEAT_BYTES

    return [{"data": int.from_bytes(blob[i:i + BEAT_BYTES], "little"),
             "count": len(blob[i:i + BEAT_BYTES]), "last": int(i + BEAT_BYTES >= len(blob))}
            for i in range(0, len(blob), BEAT_BYTES)]


def bundle_prefix(mode: str, dtype: str, lanes: int) -> str:
    """Port prefix of a configuration inside ``compressor_bundle``."""
    return f"{mode}_{dtype}_{lanes}_"


def compressor_bundle(configs=BUNDLE):
    """One simulation top holding a ``Compressor`` per (mode, dtype, lanes) of ``configs``; the
    ports of each carry ``bundle_prefix``."""
    from ..hw.compressor import Compressor
    from .rows import Bundle

    return Bundle(**{bundle_prefix(*c)[:-1]: Compressor(mode=c[0], dtype=c[1], lanes=c[2])
                     for c in configs})


def frame_case(t, codec) -> dict[str, np.ndarray]:
    """Tiles (nblocks, 64) as unsigned bit patterns, per-block scale ``m``, ``e`` and inverse
    ``r`` (float32 bits), ``eb`` (binary64 bits of the header's param), the frame's ``index``
    (u16) and ``payload`` (u8), and for dct the ``table`` the frame was coded with."""
    from actpack.codec.reference import NUMPY_BITS
    from actpack.codec.torchpath import TORCH_BITS

    frame = bytes(codec.compress(t))
    header, index, payload = parse_frame(frame)
    geo = header.geometry
    bits_t = NUMPY_BITS[header.dtype]
    bits = t.detach().contiguous().cpu().view(TORCH_BITS[header.dtype]).numpy()
    bits = bits.view(bits_t).reshape(-1)
    tiles = reference.tile(bits, geo).reshape(-1, 64)
    groups = reference.block_groups(geo)
    if header.mode is Mode.EB:
        groups = np.zeros_like(groups)
    scales = list(header.scales)
    m = np.array([scales[g].mantissa for g in groups] if scales else [0] * len(tiles))
    e = np.array([scales[g].exponent for g in groups] if scales else [0] * len(tiles))
    r = np.array([int(np.float32(scales[g].inverse).view(np.uint32)) for g in groups]
                 if scales else [0] * len(tiles), dtype=np.int64)
    out = {
        "tiles": tiles,
        "m": m.astype(np.int64), "e": e.astype(np.int64), "r": r,
        "eb": np.array(int(np.float64(header.param).view(np.uint64)), dtype=np.uint64),
        "index": np.asarray(index, dtype=np.uint16),
        "payload": np.frombuffer(bytes(payload), dtype=np.uint8),
    }
    if header.table is not None:
        out["table"] = np.asarray(header.table, dtype=np.int64).reshape(64)
    return out


def write_case(path, t, codec, *, full_rate: bool = False) -> Path:
    """``frame_case`` saved to ``path`` (``.npz``); ``full_rate`` asks the testbench to check
    that the input never stalls (typical data on one lane)."""
    path = Path(path)
    np.savez(path, full_rate=np.array(full_rate), **frame_case(t, codec))
    return path
