"""actpack.bench.ebbits: the eb2 bit breakdown adds up to the frame, the residuals are the ones
the frame codes, and the sized codes are consistent with their entropy bounds."""

import numpy as np
import torch

from actpack import Codec
from actpack.bench import ebbits
from actpack.codec import reference


def _smooth(seed: int, shape=(2, 3, 13, 21)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(shape[2]), np.arange(shape[3]), indexing="ij")
    base = np.sin(x / 3.0) * np.cos(y / 4.0)
    a = base + 0.05 * rng.standard_normal(shape)
    a[0, 0, 3, 5] = np.nan  # one RAW block
    return np.maximum(a, 0).astype(np.float32) if seed % 2 else a.astype(np.float32)


def test_breakdown_sums_to_the_frame_and_symbols_are_the_frames():
    for seed in range(2):
        a = _smooth(seed)
        frame = bytes(Codec(mode="eb2", error_bound=0.02, backend="torch").compress(
            torch.from_numpy(a)))
        parts = ebbits.breakdown(frame)
        assert sum(parts.values()) == len(frame)
        assert parts["raw"] == 256 and parts["mask"] > 0
        sym, raw = ebbits.eb2_symbols(a, 0.02)
        _, index, payload = reference.parse_frame(frame)
        decoded = np.zeros_like(sym)
        kinds, mbs, lengths = reference.unpack_index(index)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for b, k in enumerate(kinds):
            chunk = bytes(payload[offsets[b]: offsets[b + 1]])
            if k == reference.Kind.CODED:
                decoded[b] = reference.decode_block(chunk, int(mbs[b]))
            elif k == reference.Kind.DENSE:
                decoded[b] = reference.decode_dense(chunk)
        assert np.array_equal(decoded, sym)
        assert np.array_equal(raw, kinds == reference.Kind.RAW)


def test_huffman_lengths_are_optimal_and_complete():
    assert ebbits.huffman_lengths(np.array([5, 0, 1, 1, 2])).tolist() == [1, 0, 3, 3, 2]
    assert ebbits.huffman_lengths(np.array([0, 7])).tolist() == [0, 1]
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=40)
    lengths = ebbits.huffman_lengths(counts)
    used = lengths[counts > 0]
    assert np.sum(2.0 ** -used) == 1.0  # a complete prefix code


def test_sized_codes_respect_their_bounds():
    sym, raw = ebbits.eb2_symbols(_smooth(0, (4, 8, 32, 32)), 0.01)
    coded = sym[~raw]
    ctx = ebbits.row_contexts(coded)
    h0 = ebbits._entropy_bits(coded)
    hrow = ebbits.cond_entropy_bits(coded, ctx)
    assert hrow <= h0
    # Huffman over pairs per context: at least the pairs' entropy (>= half the symbols'), at
    # most the symbols' entropy (clipping only lowers it) plus one bit per pair, the escapes'
    # raw bits and each block's rounding to bytes
    table = ebbits.TABLE_BYTES * len(np.unique(ctx))
    pair_bits = 8 * (ebbits.pair_huffman_bytes(coded, ctx) - table)
    escapes = int((ebbits._codes(coded) >= ebbits.ESCAPE).sum())
    assert escapes > 0
    assert hrow / 2 <= pair_bits <= hrow + (32 + 7) * len(coded) + 15 * escapes
    rice = ebbits.row_rice_bytes(coded)
    assert 8 * rice >= 32 * len(coded)  # at least the 4-bit parameter of each row
