"""Mode eb2 (docs/format.md 6.6): plane-wide Lorenzo prediction across block edges, RAW blocks
as residual-free extrapolation, residuals modulo 2**15. The generic codec tests (round trips,
backend equality, fuzzing, bad input) iterate every mode and cover eb2 too; these check what is
particular to it."""

from __future__ import annotations

import numpy as np
import torch
from codec_testlib import (
    OFF_MODE,
    assert_rejected,
    bits,
    compress_eager,
    decompress_eager,
    load_local,
    reseal,
)

import actpack
from actpack.codec import reference, spec
from actpack.codec.frame import Kind, parse_frame, unpack_index
from actpack.errors import Check

activations = load_local("activations")


def _kinds(frame) -> np.ndarray:
    return unpack_index(parse_frame(bytes(frame))[1])[0]


def _all_paths(kw: dict, t: torch.Tensor) -> actpack.Frame:
    """The numpy frame, after asserting the torch and eager frames and all decodes are equal."""
    fn = actpack.Codec(**kw, backend="numpy").compress(t)
    assert bytes(actpack.Codec(**kw).compress(t)) == bytes(fn)
    assert compress_eager(kw, t) == bytes(fn)
    yn = actpack.decompress(fn, backend="numpy")
    assert torch.equal(bits(actpack.decompress(fn)), bits(yn))
    assert torch.equal(bits(decompress_eager(bytes(fn))), bits(yn))
    return fn


def _ramp(h: int, w: int, step: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((y + x).float() * step).reshape(1, 1, h, w)


def test_prediction_crosses_block_edges():
    """On a plane ramp q = y + x, the plane-wide residual is 1 along the plane's first row and
    column and 0 elsewhere: every block but the first row and column of blocks is ZERO. Mode eb
    restarts at every block edge and codes every block."""
    t = _ramp(24, 32, 0.1)
    kw = {"mode": "eb2", "error_bound": 0.05}
    frame = _all_paths(kw, t)
    kinds = _kinds(frame).reshape(3, 4)
    assert (kinds[1:, 1:] == Kind.ZERO).all()
    assert (kinds[0, :] != Kind.ZERO).all() and (kinds[:, 0] != Kind.ZERO).all()
    assert (_kinds(actpack.Codec(mode="eb", error_bound=0.05).compress(t)) != Kind.ZERO).all()
    y = actpack.decompress(frame)
    assert float((y - t).abs().max()) <= 0.05


def test_raw_block_is_a_residual_free_extrapolation():
    """A block with a NaN is RAW; the reference there is the boundary extension of its
    neighbours' reconstructed edges (row above + column left - corner), so the blocks after it
    predict from it as the decoder reconstructs it; its values come back bit for bit."""
    t = _ramp(24, 24, 0.1)
    t[0, 0, 10, 11] = float("nan")  # block (1, 1)
    t[0, 0, 0, 0] = float("inf")  # block (0, 0): its extension is 0 (nothing above or left)
    kw = {"mode": "eb2", "error_bound": 0.05}
    frame = _all_paths(kw, t)
    kinds = _kinds(frame)
    assert kinds[4] == Kind.RAW and kinds[0] == Kind.RAW
    header = parse_frame(bytes(frame))[0]
    geo = header.geometry
    blocks = reference.tile(t.reshape(-1).numpy(), geo)
    q = reference.sfpr(blocks, header.scales[0].value, spec.EB2_Q_SAT)
    raw = ~np.isfinite(blocks).all(axis=(1, 2))
    ref = reference.eb2_reference(q, raw, geo)
    assert (ref[0] == 0).all()
    plane = reference.to_planes(ref, geo)[0]
    top, left, corner = plane[7, 8:16], plane[8:16, 7], plane[7, 7]
    assert np.array_equal(ref[4], top[None, :] + left[:, None] - corner)
    # the residuals of a RAW block's positions are 0, which is what the decoder assumes there
    assert not reference.eb2_residuals(ref, geo)[raw].any()
    y = actpack.decompress(frame)
    finite = torch.isfinite(t)
    assert torch.equal(bits(y)[~finite], bits(t)[~finite])
    assert float((y - t)[finite].abs().max()) <= 0.05


def test_extreme_residuals_are_always_coded():
    """Pre-quantized values spread over the whole range +-(2**14 - 1): residuals up to 4 times
    that wrap modulo 2**15 into 15-bit codes, so no block is RAW for its length (a DENSE block is
    at most 124 bytes, within even a 16-bit dtype's 128-byte RAW block)."""
    eb = 0.5
    s = spec.eb_scale(eb, 16383.0, spec.DType.FLOAT32).value
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-16383, 16384, (1, 1, 19, 21), generator=g)
    q[0, 0, 0, :2] = torch.tensor([16383, -16383])
    t = (q.double() / s).float()
    frame = _all_paths({"mode": "eb2", "error_bound": eb}, t)
    header, index, _ = parse_frame(bytes(frame))
    blocks = reference.tile(t.reshape(-1).numpy(), header.geometry)
    assert np.abs(reference.sfpr(blocks, header.scales[0].value, spec.EB2_Q_SAT)).max() == 16383
    kinds, _, lengths = unpack_index(index)
    assert (kinds != Kind.RAW).all()
    assert 100 < int(lengths.max()) <= 124
    assert float((actpack.decompress(frame).double() - t.double()).abs().max()) <= eb


def test_wrap_is_modulo_two_to_the_fifteen():
    v = np.array([-(1 << 14) - 1, -(1 << 14), 0, (1 << 14) - 1, 1 << 14, 3 << 14])
    assert spec.eb2_wrap(v).tolist() == [(1 << 14) - 1, -(1 << 14), 0, (1 << 14) - 1,
                                         -(1 << 14), -(1 << 14)]
    assert torch.equal(spec.eb2_wrap(torch.from_numpy(v)), torch.from_numpy(spec.eb2_wrap(v)))


def test_a_reader_without_the_mode_refuses_it_by_name():
    """A reader that predates a mode code (eb2 is 5; a version-1 reader of the first four modes
    knew 1..4) refuses the frame with the named MODE_DTYPE check, never decodes it: shown with
    the next code, which no reader knows."""
    frame = bytearray(bytes(actpack.Codec(mode="eb2", error_bound=0.01).compress(
        torch.randn(2, 9, 9))))
    assert frame[OFF_MODE] == int(spec.Mode.EB2) == 5
    frame[OFF_MODE] = len(spec.Mode) + 1
    assert_rejected(reseal(frame), r"mode \d+ / dtype \d+ unknown", check=Check.MODE_DTYPE)


def test_eb2_frames_are_smaller_than_eb_on_activations():
    """The point of the mode: on the digits CNN's conv and ReLU outputs, at a tight and a loose
    bound, eb2 frames are smaller than eb frames (measured on larger batches: 3-15 %)."""
    acts = activations.digits_activations(batch=16, steps=40)
    for name in ("conv1", "relu1", "conv2", "relu2"):
        a = acts[name]
        for eb in (0.01 * float(a.std()), 0.05 * float(a.std())):
            n_eb = actpack.Codec(mode="eb", error_bound=eb).compress(a).nbytes
            n_eb2 = actpack.Codec(mode="eb2", error_bound=eb).compress(a).nbytes
            if a.shape[-2:] == (8, 8):  # one block per plane: nothing to predict across
                assert n_eb2 == n_eb, (name, eb)
            else:
                assert n_eb2 < n_eb, (name, eb, n_eb2, n_eb)


def test_planes_in_parallel_threads_agree():
    """The CPU kernels split the plane recurrence over threads by whole planes (at least 256
    planes a thread): 600 planes with RAW blocks scattered over them give the numpy model's
    bytes and values at 1 and 2 threads."""
    g = torch.Generator().manual_seed(11)
    t = torch.randn(2, 300, 9, 19, generator=g).cumsum(-1)
    flat = t.view(-1)
    flat[torch.randint(0, flat.numel(), (40,), generator=g)] = float("nan")
    flat[torch.randint(0, flat.numel(), (10,), generator=g)] = float("-inf")
    kw = {"mode": "eb2", "error_bound": 0.02}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            frame = _all_paths(kw, t)
    finally:
        torch.set_num_threads(threads)
    assert (_kinds(frame) == Kind.RAW).sum() >= 40
    y = actpack.decompress(frame)
    finite = torch.isfinite(t)
    assert float((y - t)[finite].abs().max()) <= 0.02
    assert torch.equal(bits(y)[~finite], bits(t)[~finite])
