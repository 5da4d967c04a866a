"""Where mode eb2's bits go, and what entropy codes of its residuals would save (issue 10).

A measurement, not a codec: the residuals are the reference model's own (``reference._symbols``,
i.e. docs/format.md 6.6), the breakdown is read back from the frames the torch path writes, and
the alternative codes are sized, not written. Every size counts what a frame of the format
would carry (the 2-byte index entry per block, each block's bytes rounded up to whole bytes,
and any table a code needs in the header), so the figures compare with eb2's frame bytes and
SZ3's compressed bytes directly.

Run ``python -m actpack.bench.ebbits`` (about two minutes): both models of ``actpack bench
codec``, its three bounds, conv and ReLU outputs; a markdown table on stdout.
"""

from __future__ import annotations

import heapq

import numpy as np

from actpack.codec import reference, spec
from actpack.codec.frame import DENSE_HEADER, Header, Kind, parse_frame, unpack_index
from actpack.codec.spec import DType, Mode

__all__ = ["breakdown", "cond_entropy_bits", "eb2_symbols", "huffman_lengths",
           "pair_huffman_bytes", "row_contexts", "row_rice_bytes"]

ESCAPE = 15  # pair-Huffman: codes u >= ESCAPE are coded as ESCAPE plus 15 raw bits
CONTEXTS = 10  # row contexts: 0 = a block's first row, 1 + min(bitlen(sum of u above), 8)
TABLE_BYTES = ESCAPE * ESCAPE // 2 + 1  # one context's table: a 4-bit length per pair symbol


def eb2_symbols(x: np.ndarray, error_bound: float) -> tuple[np.ndarray, np.ndarray]:
    """eb2's residuals (nblocks, 64) of the float32 array ``x`` (raster order per block, 0 in
    RAW blocks) and the RAW blocks, exactly as the reference encoder computes them."""
    header = Header(Mode.EB2, DType.FLOAT32, tuple(x.shape), float(error_bound))
    geo = header.geometry
    vals = reference.to_float32(reference.tile(x.reshape(-1).view(np.uint32), geo),
                                DType.FLOAT32)
    finite = np.where(np.isfinite(vals), np.abs(vals), 0)
    scale = spec.eb_scale(error_bound, float(finite.max(initial=0)), DType.FLOAT32)
    header = Header(Mode.EB2, DType.FLOAT32, tuple(x.shape), float(error_bound), scales=(scale,))
    groups = np.zeros(geo.nblocks, dtype=np.int64)
    return reference._symbols(vals, groups, header)


def breakdown(frame) -> dict[str, int]:
    """Bytes of an eb2 (or eb) frame by what they carry: ``frame`` (header, trailer and section
    padding), ``index``, ``mask``, ``widths`` and ``values`` of CODED blocks, ``dense_widths``
    and ``dense_values`` of DENSE blocks, ``raw``. They sum to the frame's length."""
    _, index, payload = parse_frame(frame)
    kinds, mbs, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    buf = np.frombuffer(payload, dtype=np.uint8)
    out = dict.fromkeys(("frame", "index", "mask", "widths", "values", "dense_widths",
                         "dense_values", "raw"), 0)
    out["index"] = 2 * len(kinds)
    coded = np.flatnonzero(kinds == Kind.CODED)
    for b in coded:  # the mask's popcount gives the group count, hence the width bytes
        mask = int.from_bytes(buf[offsets[b] : offsets[b] + mbs[b]].tobytes(), "little")
        ngroups = -(-mask.bit_count() // 8)
        wbytes = -(-ngroups // 2)
        out["mask"] += int(mbs[b])
        out["widths"] += wbytes
        out["values"] += int(lengths[b] - mbs[b] - wbytes)
    dense = kinds == Kind.DENSE
    out["dense_widths"] = DENSE_HEADER * int(dense.sum())
    out["dense_values"] = int(lengths[dense].sum()) - out["dense_widths"]
    out["raw"] = int(lengths[kinds == Kind.RAW].sum())
    out["frame"] = len(frame) - sum(out.values())
    return out


def _entropy_bits(v: np.ndarray) -> float:
    """Zero-order entropy of the values ``v``, times their count (bits)."""
    _, counts = np.unique(v, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def row_contexts(sym: np.ndarray) -> np.ndarray:
    """Per symbol (nblocks, 64) a context a block decoder knows before it decodes the symbol's
    row: 0 in a block's first row, else ``1 + min(bitlen(S), 8)`` with ``S`` the sum of the
    dense codes ``u = 2|v| - (v < 0)`` of the row above in the same block."""
    u = _codes(sym).reshape(-1, 8, 8)
    s = u.sum(axis=2)
    bits = np.minimum(np.floor(np.log2(np.maximum(s, 1))).astype(np.int64) + (s > 0), 8)
    ctx = np.zeros_like(s)
    ctx[:, 1:] = 1 + bits[:, :-1]
    return np.repeat(ctx, 8, axis=1)


def cond_entropy_bits(sym: np.ndarray, ctx: np.ndarray) -> float:
    """Sum over contexts of the zero-order entropy of the symbols in each (bits): what an ideal
    static code per context (no table, no per-block rounding) would spend."""
    sym, ctx = sym.reshape(-1), ctx.reshape(-1)
    return sum(_entropy_bits(sym[ctx == c]) for c in np.unique(ctx))


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths of symbols with ``counts`` (0 for symbols of count 0; a lone symbol
    gets length 1)."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    heap = [(int(c), i, (i,)) for i, c in enumerate(counts) if c > 0]
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[list(s1 + s2)] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def _codes(sym: np.ndarray) -> np.ndarray:
    return np.where(sym < 0, -2 * sym - 1, 2 * sym)


def pair_huffman_bytes(sym: np.ndarray, ctx: np.ndarray) -> int:
    """Payload bytes of a static canonical Huffman code per row context over horizontal pairs
    of dense codes (each clipped at ESCAPE, whose escape adds 15 raw bits), every block rounded
    up to whole bytes, plus one TABLE_BYTES table per context used (in the header)."""
    u = _codes(sym).reshape(-1, 32, 2)
    c = ctx.reshape(-1, 32, 2)[:, :, 0]
    clipped = np.minimum(u, ESCAPE)
    pair = clipped[:, :, 0] * (ESCAPE + 1) + clipped[:, :, 1]
    bits = 15 * (u >= ESCAPE).sum(axis=2)
    table = 0
    for k in np.unique(c):
        sel = c == k
        lengths = huffman_lengths(np.bincount(pair[sel], minlength=(ESCAPE + 1) ** 2))
        bits = bits + np.where(sel, lengths[pair], 0)
        table += TABLE_BYTES
    return int(((bits.sum(axis=1) + 7) // 8).sum()) + table


def row_rice_bytes(sym: np.ndarray) -> int:
    """Payload bytes of a Golomb-Rice code of the dense codes with one stored 4-bit parameter
    per block row (0..14; 15 = a row of zeros, no codes), the best one for each row, every block
    rounded up to whole bytes."""
    u = _codes(sym).reshape(-1, 8, 8)
    costs = np.stack([((u >> k) + 1 + k).sum(axis=2) for k in range(15)], axis=-1)
    rows = np.where((u == 0).all(axis=2), 0, costs.min(axis=-1)) + 4
    return int(((rows.sum(axis=1) + 7) // 8).sum())


def analyse(x: np.ndarray, error_bound: float, frame) -> dict[str, float]:
    """Every size (bytes, index included) of one activation at one bound: eb2's frame and its
    breakdown, the entropy bounds and the sized codes."""
    sym, raw = eb2_symbols(x, error_bound)
    coded = sym[~raw]
    nb = len(sym)
    ctx = row_contexts(coded)
    parts = breakdown(frame)
    raw_bytes = parts["raw"]
    extra = 2 * nb + parts["frame"] + raw_bytes  # what every candidate keeps as it is
    return {
        "input": x.nbytes,
        "eb2": len(frame),
        **{f"eb2.{k}": v for k, v in parts.items()},
        "H0": extra + _entropy_bits(coded) / 8,
        "Hrow": extra + cond_entropy_bits(coded, ctx) / 8,
        "pair_huffman": extra + pair_huffman_bytes(coded, ctx),
        "row_rice": extra + row_rice_bytes(coded),
        "zeros": float((coded == 0).mean()),
    }


def main() -> None:
    import pysz
    import torch

    from actpack import Codec
    from actpack.bench.codec import (
        EB2_KINDS,
        EB_FACTORS,
        _round_sig,
        load_layers,
        model_layers,
        pooled_std,
    )
    from actpack.models import digits_resnet

    sz = pysz.sz()

    def sz_bytes(a, eb):
        cfg = pysz.szConfig()
        cfg.setDims(list(a.shape))
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = eb
        return sz.compress(a, cfg)[0].nbytes

    models = {"digits_cnn": load_layers(batch=64, train_steps=100, numpy_bytes=1e6)[0],
              "digits_resnet": model_layers(digits_resnet(seed=0), batch=64, train_steps=100,
                                            numpy_bytes=1e6, kinds_kept=EB2_KINDS)[0]}
    cols = ("eb2", "H0", "Hrow", "pair_huffman", "row_rice")
    print("| model | bound | kind | SZ3 | " + " | ".join(cols) + " | eb2 bytes: index / mask /"
          " widths / values (coded, dense) | zeros |")
    print("|" + "---|" * (len(cols) + 6))
    for model, layers in models.items():
        layers = [la for la in layers if la.kind in EB2_KINDS]
        sigma = pooled_std([la.x for la in layers])
        for eb in (_round_sig(f * sigma) for f in EB_FACTORS):
            codec = Codec(mode="eb2", error_bound=eb, backend="torch")
            for kind in EB2_KINDS:
                tot: dict[str, float] = {}
                for la in (la for la in layers if la.kind == kind):
                    a = la.x.numpy()
                    r = analyse(a, eb, bytes(codec.compress(torch.from_numpy(a))))
                    r["SZ3"] = sz_bytes(a, eb)
                    r["zeros"] *= a.size
                    for k, v in r.items():
                        tot[k] = tot.get(k, 0) + v
                ratio = {k: tot["input"] / tot[k] for k in ("SZ3", *cols)}
                e = tot["eb2"]
                split = " / ".join(f"{100 * tot[f'eb2.{k}'] / e:.0f}%" for k in (
                    "index", "mask", "widths")) + (
                    f" / {100 * tot['eb2.values'] / e:.0f}%, "
                    f"{100 * (tot['eb2.dense_widths'] + tot['eb2.dense_values']) / e:.0f}%")
                print(f"| {model} | {eb:g} | {kind} | {ratio['SZ3']:.2f} | " + " | ".join(
                    f"{ratio[c]:.2f} ({ratio[c] / ratio['SZ3']:.2f}x)" for c in cols)
                    + f" | {split} | {100 * tot['zeros'] / tot['input'] * 4:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
