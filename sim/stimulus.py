"""Test data for the gateware testbenches: random, real-ish and edge-case blocks.

Every function returns ``(n, 8, 8)`` int64 blocks and takes a ``numpy.random.Generator``.
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np

from actpack.codec import reference, spec
from actpack.codec.tables import DCT_MATRIX, NAMED_TABLES, jpeg_table

__all__ = [
    "coef_worst_case",
    "decoded_coefficients",
    "digits",
    "pixel_worst_case",
    "relu_smooth",
    "sparse_coefficients",
]

_SIGNS = np.where(DCT_MATRIX >= 0, 1, -1)  # sign pattern of each basis function


def relu_smooth(rng, n: int) -> np.ndarray:
    """Real-ish conv activations: smooth random fields (sums of low-frequency cosines plus a
    little noise) through ReLU, scaled per block to SFPR int8 exactly as the codec does
    (``reference.sfpr`` with ``spec.sfpr_scales`` at range 4.5)."""
    yy, xx = np.mgrid[0:8, 0:8] / 8.0
    out = np.empty((n, 8, 8), dtype=np.float32)
    for b in range(n):
        field = rng.normal(0, 0.2, (8, 8))
        for _ in range(3):
            fy, fx = rng.uniform(0, 1.5, 2)
            phase = rng.uniform(0, 2 * np.pi)
            field += rng.normal(0, 1) * np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
        out[b] = np.maximum(field + rng.normal(0, 0.5), 0)
    scales = spec.sfpr_scales(np.abs(out).max(axis=(1, 2)), 4.5)
    value = np.array([s.value for s in scales])[:, None, None]
    return reference.sfpr(out, value, spec.SFPR_MAX)


@functools.cache
def _digits() -> np.ndarray:
    # The data file inside the scikit-learn wheel, read without importing sklearn (an import
    # costs seconds per simulator process). Rows: 64 pixels (0..16) and the label.
    spec_ = importlib.util.find_spec("sklearn")
    if spec_ is None or not spec_.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is needed for the digits data set")
    path = Path(spec_.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8)  # (1797, 8, 8)


def digits(rng, n: int) -> np.ndarray:
    """Real images: scikit-learn's 8x8 handwritten digits, scaled 0..16 -> 0..127."""
    images = _digits()
    pick = rng.choice(len(images), size=n, replace=False)
    return (images[pick] * spec.SFPR_MAX + 8) // 16


def pixel_worst_case(pos: int = spec.SFPR_MAX, neg: int = -spec.SFPR_MAX) -> np.ndarray:
    """For each coefficient (u, v) the block p[y, x] = pos where sign(K[v, y] K[u, x]) > 0, else
    neg (64 blocks): it drives that coefficient of the forward DCT, and its row-pass
    intermediates, to their largest magnitude of that sign."""
    s = np.einsum("vy,ux->vuyx", _SIGNS, _SIGNS).reshape(64, 8, 8)
    return np.where(s > 0, pos, neg).astype(np.int64)


def coef_worst_case(pos: int = spec.DCT_COEF_MAX, neg: int = -spec.DCT_COEF_MAX) -> np.ndarray:
    """For each pixel (x, y) the coefficient block y[v, u] = pos where sign(K[v, y] K[u, x]) > 0,
    else neg (64 blocks): the largest inverse-DCT intermediates and outputs of that sign."""
    s = np.einsum("vy,ux->yxvu", _SIGNS, _SIGNS).reshape(64, 8, 8)
    return np.where(s > 0, pos, neg).astype(np.int64)


def decoded_coefficients(rng, n: int) -> np.ndarray:
    """What the decoder's IDCT sees: dequantize(quantize(dct2(real-ish blocks))) over several
    tables."""
    pixels = np.concatenate([relu_smooth(rng, n - n // 2), digits(rng, n // 2)])
    names = [NAMED_TABLES["optL"], NAMED_TABLES["optH"], NAMED_TABLES["optsH"], jpeg_table(75)]
    tables = [names[k % len(names)] for k in range(n)]
    out = np.empty((n, 8, 8), dtype=np.int64)
    for b in range(n):
        y = reference.dct2(pixels[b : b + 1])
        out[b] = reference.dequantize(reference.quantize(y, tables[b]), tables[b])[0]
    return out


def sparse_coefficients(rng, n: int) -> np.ndarray:
    """Mostly-zero coefficient blocks with a few large entries anywhere."""
    out = np.zeros((n, 64), dtype=np.int64)
    for b in range(n):
        k = rng.integers(1, 6)
        out[b, rng.choice(64, size=k, replace=False)] = rng.integers(-2048, 2048, size=k)
    return out.reshape(n, 8, 8)
