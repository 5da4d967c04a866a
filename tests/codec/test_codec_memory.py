"""The eager torch decode path (what CUDA runs) holds a small multiple of its output."""

from __future__ import annotations

import pytest
import torch

import actpack
from actpack.codec import torchpath
from actpack.codec.spec import Mode
from actpack.host.peak import measure_peak


def _decode_peak(x: torch.Tensor, kwargs: dict) -> int:
    blob = bytes(actpack.Codec(**kwargs).compress(x))
    out = {}
    peak = measure_peak(lambda: out.setdefault("t", torchpath.decompress(blob, kernels=False)))
    assert torch.equal(out["t"], actpack.Codec(**kwargs).decompress(blob))  # the kernels' bits
    return peak


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.label)
@pytest.mark.parametrize("data", ["zeros", "randn"])
def test_eager_decode_peak_grows_like_a_small_multiple_of_the_output(mode, data):
    # Blocks are decoded a chunk at a time: a constant for the chunk's temporaries, plus the
    # output and its untiled copy. All at once it held 10-27x the output (issue #11).
    kwargs = {"mode": mode.label} | ({"error_bound": 0.01} if mode.error_bounded else {})
    gen = torch.Generator().manual_seed(0)
    peaks = []
    for n in (2, 8):  # 8 and 32 MiB of float32
        x = torch.zeros(n, 64, 128, 128) if data == "zeros" else torch.randn(
            n, 64, 128, 128, generator=gen)
        peaks.append((x.numel() * 4, _decode_peak(x, kwargs)))
    (small, p_small), (large, p_large) = peaks
    assert (p_large - p_small) / (large - small) <= 2.5
    assert p_large <= 2.5 * large + 64 * 2**20
