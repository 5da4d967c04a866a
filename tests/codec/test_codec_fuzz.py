"""Differential fuzzing of the decoders (issue #11): valid frames of every mode, mutated and
resealed (both CRCs recomputed, lengths kept consistent where the mutation allows), go to the
numpy model, the default backend and the eager torch path. Either every decoder raises
``FrameError`` or every one returns the same bits: never another exception, never a
disagreement (NaN-safe: the bits are compared as integers).

Mutations: byte flips anywhere a CRC covers; header fields rewritten as values (shape dims,
ndim, mode, dtype, param, scale mantissas and exponents with or without their matching
inverse, the table, block and group counts, payload length); index entries. A shape change
keeps the frame self-consistent (block and group counts, index, scale records, payload) so
that it reaches the decoders: an empty tensor with huge dims, or a scale record whose inverse
is infinite, is what the decoders would otherwise get.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time

import numpy as np
import pytest
import torch
from codec_testlib import Layout, assert_backends_agree, reseal

import actpack
from actpack.codec.frame import FIXED_HEADER, SCALE_RECORD, crc32c_of
from actpack.codec.spec import DType, Mode, geometry

SEED = 11
BUDGET_S = 15.0  # the whole fuzz run, all modes
MIN_CASES = 150  # per mode, however slow the machine: a floor on what the budget buys

_FIXED = FIXED_HEADER.struct  # docs/format.md 2.1
_SCALE = SCALE_RECORD.struct
_KWARGS = {Mode.DCT: {"table": "optL"}, Mode.EB: {"error_bound": 0.01},
           Mode.EB2: {"error_bound": 0.01}}  # others: defaults
_U64 = (1 << 64) - 1
_DIMS = (0, 1, 2, 7, 8, 9, 63, 64, 65, 1 << 24, (1 << 24) + 1, (1 << 31), (1 << 32) - 1,
         1 << 47, 1 << 48, (1 << 48) - 1, 1 << 62, 1 << 63, _U64)
_EXPONENTS = (-400, -200, -150, -143, -142, -141, -127, -126, -15, 0, 100, 134, 135, 145, 146,
              200, 400, -32768, 32767)
_PARAMS = (0.0, -0.0, 1 / 16, 64.0, 65.0, 1e-30, 1e30, 1e31, 1e-31, math.inf, -math.inf,
           math.nan, 4.5, 0.01, -1.0, 5e-324)


@dataclasses.dataclass
class Parts:
    """A frame as its fields; ``assemble`` writes them back with valid CRCs and a trailer that
    gives the real length, whatever the fields say."""

    fixed: list  # the 12 fields of _FIXED
    shape: list[int]
    table: bytes  # 64 bytes for dct, else empty
    scales: list[tuple[int, int, float]]
    index: list[int]
    payload: bytes
    status: int = 0

    @classmethod
    def of(cls, frame: bytes) -> Parts:
        lay = Layout(frame)
        fixed = list(_FIXED.unpack_from(frame, 0))
        ndim, mode, ngroups = fixed[4], fixed[2], fixed[8]
        pos = _FIXED.size + 8 * ndim
        table = frame[pos:pos + 64] if mode == Mode.DCT else b""
        pos += len(table)
        scales = [_SCALE.unpack_from(frame, pos + _SCALE.size * i) for i in range(ngroups)]
        index = list(np.frombuffer(frame[lay.head_total:lay.index_end], "<u2").tolist())
        return cls(fixed, list(struct.unpack_from(f"<{ndim}Q", frame, _FIXED.size)), table,
                   scales, index, frame[lay.payload:lay.payload_end])

    def copy(self) -> Parts:
        return dataclasses.replace(self, fixed=list(self.fixed), shape=list(self.shape),
                                   scales=list(self.scales), index=list(self.index))

    def assemble(self) -> bytes:
        head = _FIXED.pack(*self.fixed) + struct.pack(f"<{len(self.shape)}Q", *self.shape)
        head += self.table + b"".join(_SCALE.pack(*s) for s in self.scales)
        head += struct.pack("<I", crc32c_of(head))
        body = _pad(np.array(self.index, "<u2").tobytes()) + _pad(self.payload)
        total = len(_pad(head)) + len(body) + 64
        trailer = struct.pack("<IIQ", crc32c_of(body), self.status, total)
        return _pad(head) + body + trailer + bytes(64 - len(trailer))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]  # the element itself: numpy would cast big ints


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 64)


def _inverse(m: int, e: int) -> float:
    """float32(1 / (m 2**e)) as a writer would compute it, for any int16 exponent."""
    if m == 0:
        return math.inf
    try:
        r = math.ldexp(1.0 / m, -e)
    except OverflowError:
        return math.inf
    with np.errstate(over="ignore"):
        return float(np.float32(r))


def _base_frames(mode: Mode) -> list[bytes]:
    g = torch.Generator().manual_seed(int(mode))
    x = torch.randn(2, 2, 9, 11, generator=g)
    x[0, 0, 0, 0] = float("nan")  # a raw block
    x[1, 1] = 0  # zero blocks
    x[1, 0, :8, :8] = torch.randn(8, 8, generator=g) * 1e-3  # small values next to large ones
    tensors = [x, torch.randn(150, generator=g).to(torch.float16),
               torch.randn(3, 5, 17, generator=g).to(torch.bfloat16),
               torch.tensor(2.5), torch.zeros(0, 5)]
    codec = actpack.Codec(mode=mode.label, **_KWARGS.get(mode, {}))
    return [bytes(codec.compress(t)) for t in tensors]


def _fit(p: Parts, rng) -> None:
    """Make counts, scale records, index and payload match the (new) shape and mode, where that
    stays small: the frame then reaches the decoders with whatever the shape says."""
    geo = geometry(p.shape)
    if geo.nblocks > 4096 or geo.groups > 4096:
        return
    mode = p.fixed[2]
    groups = {Mode.DCT: geo.groups, Mode.SFPR8: geo.groups, Mode.EB: 1, Mode.EB2: 1}.get(mode, 0)
    p.scales = (p.scales * groups)[:groups] if p.scales else [(1 << 15, -15, 1.0)] * groups
    p.index = (p.index * geo.nblocks)[:geo.nblocks] if p.index else [0] * geo.nblocks
    if rng.random() < 0.3:  # all ZERO blocks: only the scales and the shape matter
        p.index = [0] * geo.nblocks
    offsets = [0]
    for e in p.index:
        offsets.append(offsets[-1] + (e & 0x7FF))
    data = p.payload or bytes(1)
    p.payload = (data * (offsets[-1] // len(data) + 1))[:offsets[-1]]
    p.fixed[8], p.fixed[9], p.fixed[10] = groups, geo.nblocks, len(p.payload)
    p.fixed[4] = len(p.shape)


def _mutate(base: Parts, rng) -> Parts | bytes:
    """One mutation of ``base``: new ``Parts``, or resealed bytes for a byte flip."""
    p = base.copy()
    what = int(rng.integers(10))
    if what == 0:  # a byte flip anywhere the CRCs cover, then reseal
        frame = bytearray(p.assemble())
        lay = Layout(bytes(frame))
        pos = _pick(rng, [*range(lay.head_len), *range(lay.head_total, lay.payload_end)])
        frame[pos] ^= 1 << int(rng.integers(8))
        try:
            return reseal(frame)
        except struct.error:  # the flip moved the header CRC beyond the frame
            return bytes(frame)
    if what in (1, 2) and p.shape:  # a dim
        i = int(rng.integers(len(p.shape)))
        wild = int(rng.integers(1 << 62)) << 2 | int(rng.integers(4))  # any u64
        p.shape[i] = _pick(rng, _DIMS) if rng.random() < 0.8 else wild
        if rng.random() < 0.5:  # an empty tensor: another dim 0
            p.shape[int(rng.integers(len(p.shape)))] = 0
        if rng.random() < 0.9:
            _fit(p, rng)
    elif what == 3:  # ndim
        n = int(rng.integers(10))
        p.shape = (p.shape + [_pick(rng, _DIMS) for _ in range(n)])[:n]
        if rng.random() < 0.8:
            _fit(p, rng)
        else:
            p.fixed[4] = n
    elif what in (4, 5) and p.scales:  # a scale record
        i = int(rng.integers(len(p.scales)))
        m, e, inv = p.scales[i]
        e = _pick(rng, _EXPONENTS) if rng.random() < 0.7 else int(rng.integers(-600, 600))
        e = max(-32768, min(32767, e))
        if rng.random() < 0.3:
            m = int(rng.integers(1 << 16))
        inv = _inverse(m, e) if rng.random() < 0.8 else _pick(rng, [math.inf, 0.0, inv])
        p.scales[i] = (m, e, inv)
        if rng.random() < 0.5:  # every block ZERO: symbols 0 times the inverse
            p.index = [0] * len(p.index)
            p.payload, p.fixed[10] = b"", 0
    elif what == 6:  # mode, dtype, param
        field = _pick(rng, [2, 3, 11])
        if field == 11:
            p.fixed[11] = _pick(rng, _PARAMS)
        else:
            choices = [*map(int, Mode if field == 2 else DType), 0, 5, 255]
            p.fixed[field] = _pick(rng, choices)
            if field == 2 and rng.random() < 0.7:
                mode = p.fixed[2]
                p.table = bytes(p.table or bytes(range(1, 65))) if mode == Mode.DCT else b""
                _fit(p, rng)
    elif what == 7:  # counts and lengths as numbers
        field = _pick(rng, [8, 9, 10])
        top = (1 << 32) - 1 if field == 8 else _U64
        p.fixed[field] = _pick(rng, [0, 1, top, p.fixed[field] + 1, max(p.fixed[field] - 1, 0)])
    elif what == 8 and p.index:  # an index entry, the payload length following it
        i = int(rng.integers(len(p.index)))
        p.index[i] ^= 1 << int(rng.integers(16))
        if rng.random() < 0.7:
            p.fixed[10] = sum(e & 0x7FF for e in p.index)
            p.payload = (p.payload + bytes(p.fixed[10]))[:p.fixed[10]]
    elif p.table:  # a table entry
        t = bytearray(p.table)
        t[int(rng.integers(64))] = int(rng.integers(256))
        p.table = bytes(t)
    else:  # producer status
        p.status = int(rng.integers(1, 1 << 32))
    return p


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.label)
def test_mutated_frames_are_rejected_or_decode_alike(mode):
    bases = [Parts.of(f) for f in _base_frames(mode)]
    for f, p in zip(_base_frames(mode), bases, strict=True):
        assert p.assemble() == f  # the fuzzer's writer is the format's writer
    rng = np.random.default_rng([SEED, int(mode)])
    deadline = time.monotonic() + BUDGET_S / len(Mode)
    seen = {"error": 0, "ok": 0}
    n = 0
    while n < MIN_CASES or (time.monotonic() < deadline and n < 20 * MIN_CASES):
        m = _mutate(bases[n % len(bases)], rng)
        seen[assert_backends_agree(m.assemble() if isinstance(m, Parts) else m)] += 1
        n += 1
    assert seen["error"] and seen["ok"], seen
