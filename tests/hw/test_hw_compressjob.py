"""hw.compressjob.HeaderTemplate under Amaranth's simulator: the header template of real frames
(every mode, ranks 0 to 5, several scale groups) against the bytes ``Codec.compress`` writes,
with the scale memory's registered read modelled (a row a cycle after its address) and the
builder stalling at random; a word a cycle when it does not."""

import random

import pytest

pytest.importorskip("amaranth")

import torch
from amaranth.sim import Simulator

from actpack.codec import Codec
from actpack.codec.frame import FIXED_HEADER, header_length
from actpack.codec.spec import Mode
from actpack.hw.beats import BEAT_BYTES
from actpack.hw.compressjob import HeaderTemplate
from actpack.hw.regs import GATEWARE_MODES

CODECS = {Mode.DCT: {"mode": "dct", "table": "optH"}, Mode.EB: {"mode": "eb", "error_bound": 1e-2},
          Mode.SFPR8: {"mode": "sfpr8"}, Mode.MASK: {"mode": "mask"}}
SHAPES = [(), (150,), (3, 50), (2, 3, 20, 21), (2, 3, 4, 5, 9)]


def template(frame: bytes) -> bytes:
    """The header bytes before the CRC, ``payload_bytes`` 0 (what the card sends the builder)."""
    h = FIXED_HEADER.unpack_from(frame, 0)
    out = bytearray(frame[:header_length(h.mode, h.ndim, h.ngroups)])
    FIXED_HEADER.pack_into(out, 0, **{**h._asdict(), "payload_bytes": 0})
    return bytes(out)


def run(frame: bytes, *, stalls: float, seed: int = 0) -> tuple[bytes, int]:
    """The template's beats for ``frame``'s header, and the cycles from ``run`` to ``done``."""
    h = FIXED_HEADER.unpack_from(frame, 0)
    hlen = header_length(h.mode, h.ndim, h.ngroups)
    off = FIXED_HEADER.size
    shape = frame[off:off + 8 * h.ndim]
    off += 8 * h.ndim
    table = frame[off:off + 64] if h.mode == Mode.DCT else bytes(64)
    records = frame[hlen - 8 * h.ngroups:hlen]
    rows = [int.from_bytes(records[i:i + BEAT_BYTES], "little")
            for i in range(0, len(records), BEAT_BYTES)] or [0]
    dut = HeaderTemplate(max_groups=64)
    rng = random.Random(seed)
    got, cycles = bytearray(), []

    async def testbench(ctx):
        for name in ("mode", "dtype", "ndim", "table_id", "table_arg", "ngroups", "nblocks"):
            ctx.set(getattr(dut.desc, name), getattr(h, name))
        ctx.set(dut.desc.param, int.from_bytes(frame[FIXED_HEADER.offset("param"):][:8],
                                               "little"))
        ctx.set(dut.shape.as_value(), int.from_bytes(shape.ljust(64, b"\0"), "little"))
        ctx.set(dut.table.as_value(), int.from_bytes(table, "little"))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.run, 1)
        for cycle in range(400):
            ready = rng.random() >= stalls
            ctx.set(dut.o.ready, ready)
            if ctx.get(dut.o.valid) and ready:
                beat = ctx.get(dut.o.payload)
                got.extend(beat.data.to_bytes(BEAT_BYTES, "little")[:beat.count])
                assert bool(beat.last) == (len(got) == hlen)
            if ctx.get(dut.done):
                cycles.append(cycle)
                return
            row = ctx.get(dut.record_row)
            await ctx.tick()
            ctx.set(dut.records, rows[row] if row < len(rows) else 0)  # registered read
        raise AssertionError("no done in 400 cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return bytes(got), cycles[0]


@pytest.mark.parametrize("mode", sorted(GATEWARE_MODES), ids=lambda m: m.label)
def test_header_template_is_the_frames(mode):
    g = torch.Generator().manual_seed(3)
    for shape in SHAPES:
        frame = bytes(Codec(backend="numpy", **CODECS[mode]).compress(
            torch.randn(shape, generator=g)))
        want = template(frame)
        got, cycles = run(frame, stalls=0.0)
        assert got == want, (mode, shape)
        # a word a cycle: the last beat goes in cycle words - 1, done the cycle after
        assert cycles == len(want) // 8, (mode, shape, cycles)
        assert run(frame, stalls=0.4, seed=len(shape))[0] == want, (mode, shape)
