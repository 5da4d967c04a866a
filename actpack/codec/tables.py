"""Constant tables of the codec: quantization tables, zigzag order and the fixed-point DCT matrix.

This module is the one definition of every constant; the numpy model, the torch path and the
gateware import from here. All tables are 64 entries in row-major order (index ``8 * v + u`` for
vertical frequency ``v`` and horizontal frequency ``u``), DC first.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DCT_FRAC_BITS",
    "DCT_MATRIX",
    "JPEG_LUMA",
    "NAMED_TABLES",
    "TABLE_IDS",
    "ZIGZAG",
    "jpeg_table",
    "resolve_table",
]

# Ref: Evans, Liu, Aamodt, "JPEG-ACT", ISCA 2020, Table 2 (optL/optsL/optH/optsH).
_OPT_L = (
    "8 7 7 7 7 6 6 6  8 7 7 7 6 6 6 6  7 7 6 6 6 6 6 6  7 6 6 6 6 6 5 5 "
    "7 6 6 6 6 6 5 5  7 6 6 6 6 6 5 5  7 6 6 6 6 5 5 5  6 6 6 6 5 5 5 5"
)
_OPT_H = (
    "8 26 25 25 24 24 23 22  26 24 24 23 22 22 21 20  26 24 24 23 22 21 20 20 "
    "25 23 23 22 21 21 20 19  25 23 22 21 21 20 19 19  24 22 21 20 20 20 19 19 "
    "23 21 20 20 19 19 19 19  22 20 20 19 19 19 19 19"
)
_OPTS_H = (
    "8 32 32 32 32 32 32 16  32 32 32 32 16 16 16 16  32 32 32 32 16 16 16 16 "
    "32 32 32 16 16 16 16 16  32 32 16 16 16 16 16 16  32 16 16 16 16 16 16 16 "
    "32 16 16 16 16 16 16 16  16 16 16 16 16 16 16 16"
)

# Ref: ITU-T T.81 (JPEG), Annex K, Table K.1 (luminance quantization table).
JPEG_LUMA = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.uint8,
)  # fmt: skip


def _parse(text: str) -> np.ndarray:
    table = np.array([int(v) for v in text.split()], dtype=np.uint8)
    assert table.shape == (64,)
    return table


NAMED_TABLES: dict[str, np.ndarray] = {
    "optL": _parse(_OPT_L),
    "optH": _parse(_OPT_H),
    "optsL": np.full(64, 8, dtype=np.uint8),
    "optsH": _parse(_OPTS_H),
}
for _t in NAMED_TABLES.values():
    _t.flags.writeable = False

# Table ids written in the frame header (informational: the frame always carries the table itself).
TABLE_IDS = {"custom": 255, "optL": 1, "optH": 2, "optsL": 3, "optsH": 4, "jpeg": 5}


def jpeg_table(quality: int) -> np.ndarray:
    """The JPEG luminance table scaled by ``quality`` (1..100), exactly as IJG libjpeg does it.

    scale = 5000 / Q for Q < 50, else 200 - 2 Q (percent); entry = (base * scale + 50) // 100,
    clipped to 1..255. This is the design's "50/Q below 50, else 2 - Q/50, rounded" in integers.
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise TypeError(f"table: jpeg quality must be an integer, got {quality!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"table: jpeg quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * int(quality)
    table = (JPEG_LUMA.astype(np.int64) * scale + 50) // 100
    return np.clip(table, 1, 255).astype(np.uint8)


def resolve_table(table) -> tuple[int, int, np.ndarray]:
    """Resolve a user's ``table=`` argument to ``(table_id, table_arg, entries)``.

    ``table`` is a name ("optL", "optH", "optsL", "optsH", "jpeg<Q>") or 64 integers in 1..255
    (a sequence, numpy array or tensor, row-major). Raises ``ValueError``/``TypeError`` naming
    ``table`` when it is none of these.
    """
    if isinstance(table, str):
        if table in NAMED_TABLES:
            return TABLE_IDS[table], 0, NAMED_TABLES[table]
        if table.startswith("jpeg") and table[4:].isdigit():
            quality = int(table[4:])
            return TABLE_IDS["jpeg"], quality, jpeg_table(quality)
        names = ", ".join([*NAMED_TABLES, "jpeg<Q>"])
        raise ValueError(f"table: unknown table {table!r}; expected one of {names} or 64 entries")
    if hasattr(table, "detach"):  # a torch tensor
        table = table.detach().cpu().numpy()
    try:
        arr = np.asarray(table)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds here
        raise TypeError(f"table: cannot read {type(table).__name__} as 64 integers") from exc
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"table: entries must be integers, got dtype {arr.dtype}")
    if arr.size != 64:
        raise ValueError(f"table: needs exactly 64 entries, got {arr.size}")
    flat = arr.reshape(64)
    if not np.issubdtype(flat.dtype, np.integer) and (
        not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat))
    ):
        raise ValueError("table: entries must be whole numbers")
    if np.any(flat < 1) or np.any(flat > 255):
        bad = int(np.flatnonzero((flat < 1) | (flat > 255))[0])
        raise ValueError(f"table: entry {bad} is {flat[bad]}; entries must be in 1..255")
    return TABLE_IDS["custom"], 0, flat.astype(np.uint8)


def _zigzag() -> np.ndarray:
    """JPEG zigzag scan: ZIGZAG[k] is the row-major index of the k-th coefficient in scan order."""
    order = sorted(
        ((v, u) for v in range(8) for u in range(8)),
        key=lambda vu: (vu[0] + vu[1], vu[0] if (vu[0] + vu[1]) % 2 else vu[1]),
    )
    return np.array([8 * v + u for v, u in order], dtype=np.int64)


ZIGZAG = _zigzag()
ZIGZAG.flags.writeable = False

# Orthonormal 8-point DCT-II matrix C[u, x] = c(u) cos((2x + 1) u pi / 16), c(0) = sqrt(1/8),
# c(u > 0) = 1/2, as 12-bit signed integers K = round(C * 2**12). 12 bits keep every row gain
# within 0.03 % of 1 (8 bits would be 1 % off on DC, a visible bias after a round trip).
DCT_FRAC_BITS = 12


def _dct_matrix() -> np.ndarray:
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    c = np.where(u == 0, np.sqrt(1 / 8), 0.5) * np.cos((2 * x + 1) * u * np.pi / 16)
    return np.floor(c * (1 << DCT_FRAC_BITS) + 0.5).astype(np.int64)


DCT_MATRIX = _dct_matrix()
DCT_MATRIX.flags.writeable = False
