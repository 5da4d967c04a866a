"""``host.lossless``: integer and bool tensors stored exactly, narrowed where they fit."""

from __future__ import annotations

import pytest
import torch

from actpack.host.lossless import LOSSLESS, lossless_takes

CASES = [
    ("pool indices 32x32", lambda g: torch.randint(0, 1024, (4, 8, 16, 16), generator=g),
     torch.int16),
    ("pool indices 16x16", lambda g: torch.randint(0, 256, (4, 8, 8, 8), generator=g),
     torch.uint8),
    ("negative span", lambda g: torch.randint(-70000, 70000, (999,), generator=g), torch.int32),
    ("offset span", lambda g: torch.randint(0, 200, (77,), generator=g) + 2**40, torch.uint8),
    ("full int64", lambda g: torch.tensor([-2**63, 2**63 - 1, 0]), torch.int64),
    ("int32 narrow", lambda g: torch.randint(0, 100, (10,), generator=g, dtype=torch.int32),
     torch.uint8),
    ("uint8 stays", lambda g: torch.randint(0, 256, (10,), generator=g, dtype=torch.uint8),
     torch.uint8),
    ("bool", lambda g: torch.rand(3, 5, 7, generator=g) > 0.5, torch.uint8),
    ("bool one", lambda g: torch.tensor([True]), torch.uint8),
    ("empty", lambda g: torch.zeros(0, 3, dtype=torch.int64), torch.int64),
]


@pytest.mark.parametrize(("name", "make", "stored"), CASES, ids=[c[0] for c in CASES])
def test_round_trip_is_exact_and_narrow(name, make, stored):
    t = make(torch.Generator().manual_seed(0))
    packed = LOSSLESS.compress(t)
    back = LOSSLESS.decompress(packed)
    assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)
    assert packed.data.dtype == stored
    if t.dtype == torch.bool:
        assert packed.nbytes == -(-t.numel() // 8)
    else:
        assert packed.nbytes == t.numel() * stored.itemsize


def test_non_contiguous_input():
    t = torch.arange(600, dtype=torch.int64).view(20, 30).t()[::2]
    assert torch.equal(LOSSLESS.decompress(LOSSLESS.compress(t)), t)


def test_floats_are_refused():
    assert not lossless_takes(torch.float32) and lossless_takes(torch.bool)
    with pytest.raises(TypeError, match="bool and integer"):
        LOSSLESS.compress(torch.zeros(3))


POOLS = [
    ("2x2", dict(kernel_size=2), (2, 3, 32, 32), 2),
    ("3x3 stride 2 padded", dict(kernel_size=3, stride=2, padding=1), (2, 3, 17, 19), 4),
    ("ceil mode", dict(kernel_size=2, ceil_mode=True), (2, 3, 15, 15), 2),
    ("dilated", dict(kernel_size=2, stride=1, dilation=2), (1, 2, 9, 10), 2),
    ("3-D input", dict(kernel_size=(2, 3), stride=(1, 2)), (3, 8, 11), 4),
    ("1x1", dict(kernel_size=1), (2, 2, 4, 4), 1),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "bits"), POOLS, ids=[p[0] for p in POOLS])
def test_max_pool_indices_are_stored_as_window_positions(name, kwargs, shape, bits):
    from actpack.host.lossless import Window

    pool = torch.nn.MaxPool2d(return_indices=True, **kwargs)
    _, idx = pool(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    packed = LOSSLESS.compress(idx, window=Window.of(pool))
    assert packed.window is not None and packed.nbytes == -(-idx.numel() * bits // 8)
    back = LOSSLESS.decompress(packed)
    assert back.dtype == torch.int64 and torch.equal(back, idx)


def test_indices_that_are_not_the_pools_are_narrowed_instead():
    from actpack.host.lossless import Window

    window = Window.of(torch.nn.MaxPool2d(2))
    t = torch.randint(0, 1024, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    packed = LOSSLESS.compress(t, window=window)  # not positions inside 2x2 windows
    assert packed.window is None and torch.equal(LOSSLESS.decompress(packed), t)
