# amaranth: UnusedElaboratable=no
"""hw.axis under Amaranth's simulator, at every width of ``STREAM_BYTES``: AxisToBeats and
BeatsToAxis on random packets (1..300 bytes and the edge lengths around 16 and the width,
packets closed by an empty last beat, packets of zero bytes) with the source idling, the sink
stalling, both or neither; every output beat checked against its stream's contract and the packets
reassembled, the stream rule (a beat offered stays offered, unchanged, until taken) checked on
every cycle, the round trip checked beat for beat, and the cycle counts without stalls against
the throughput the docstrings state (the first line silences the warning of the components built
only to check their parameters)."""

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from actpack.hw.axis import STREAM_BYTES, AxisToBeats, BeatsToAxis, axis_layout
from actpack.hw.beats import BEAT_BYTES, CodeBeat

# (chance of an idle source cycle, chance of a stalled sink cycle)
STALLS = {"none": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.3),
          "both": (0.3, 0.3)}
# cycles from the last input beat taken to the last output beat taken (the docstrings' latency)
A2B_LATENCY, B2A_LATENCY = 2, 1
LIMIT = 20_000  # cycles a test may wait for one transfer before it calls the unit hung


def packet_lengths(n: int, rng: random.Random) -> list[int]:
    edges = [1, 15, 16, 17, n - 1, n, n + 1, 64, 128, 192, 256, 300]
    return edges + [rng.randint(1, 300) for _ in range(36)]


def axis_packet(packet: bytes, n: int, rng: random.Random | None = None, *,
                empty_last: bool = False) -> list[tuple[int, int, int]]:
    """(data, keep, last) beats of one packet as the DMA core sends them: full beats, the last
    one short; with ``rng``, junk in the bytes keep drops (else zeros, as BeatsToAxis sends);
    ``empty_last`` closes the packet with a keep-0 beat (legal only after a full beat)."""
    assert not empty_last or len(packet) % n == 0
    beats = []
    for off in range(0, len(packet), n):
        part = packet[off:off + n]
        pad = rng.randbytes(n - len(part)) if rng else bytes(n - len(part))
        last = off + n >= len(packet) and not empty_last
        beats.append((int.from_bytes(part + pad, "little"), (1 << len(part)) - 1, int(last)))
    if empty_last or not packet:
        beats.append((rng.getrandbits(8 * n) if rng else 0, 0, 1))
    return beats


def code_packet(packet: bytes) -> list[tuple[int, int, int]]:
    """(data, count, last) CodeBeats of one non-empty packet."""
    return [(int.from_bytes(packet[off:off + BEAT_BYTES], "little"),
             len(packet[off:off + BEAT_BYTES]), int(off + BEAT_BYTES >= len(packet)))
            for off in range(0, len(packet), BEAT_BYTES)]


def packets_of(beats, width: int, size_of) -> list[bytes]:
    """Check the rules both beat forms share (1..width bytes a beat, the low ones, full but on a
    packet's last beat, zeros above) and return the packets the beats carry; ``size_of`` reads a
    beat's byte count from its count or keep."""
    packets, current = [], b""
    for data, tag, last in beats:
        size = size_of(tag)
        assert 1 <= size <= width and (last or size == width), (size, last)
        assert data >> (8 * size) == 0, "bytes past the beat's end must be zero"
        current += data.to_bytes(width, "little")[:size]
        if last:
            packets.append(current)
            current = b""
    assert current == b"", "beats after the last packet's end"
    return packets


def code_packets_of(beats) -> list[bytes]:
    """CodeBeat's contract on every beat; the packets."""
    return packets_of(beats, BEAT_BYTES, lambda count: count)


def axis_packets_of(beats, n: int) -> list[bytes]:
    """BeatsToAxis's contract on every AXIS beat (keep over the low bytes); the packets."""
    for _, keep, _ in beats:
        assert keep == (1 << keep.bit_length()) - 1, f"keep {keep:#x} not low bytes"
    return packets_of(beats, n, int.bit_length)


def a2b_cycles(beats, n: int) -> int:
    """Cycles AxisToBeats needs for these input beats at full rate: one per input beat at 8 and
    16 bytes, one per non-empty 16-byte part (at least one) at 32 and 64."""
    if n <= BEAT_BYTES:
        return len(beats)
    return sum(max(1, -(-(keep.bit_length() if last else n) // BEAT_BYTES))
               for _, keep, last in beats)


def b2a_cycles(beats, n: int) -> int:
    """Cycles BeatsToAxis needs at full rate: one per AXIS beat at 8 bytes, else one per input
    beat."""
    if n >= BEAT_BYTES:
        return len(beats)
    return sum(-(-(count if last else BEAT_BYTES) // n) for _, count, last in beats)


def simulate(top, i, o, in_layout, in_beats, *, lasts: int, stall, seed: int):
    """Send ``in_beats`` into ``i`` and take beats from ``o`` until ``lasts`` beats with ``last``
    came out, the source idling and the sink stalling at the chances ``stall`` gives; return them
    and the cycles that took. The sink checks the stream rule each cycle
    and, at the end, that nothing more comes out."""
    fields = tuple(o.payload.shape().members)  # data, keep or count, last
    idle, backpressure = stall
    src_rng, sink_rng = random.Random(seed), random.Random(seed + 1)
    got, cycles, sent = [], [0], [0]

    async def source(ctx):
        for beat in in_beats:
            while src_rng.random() < idle:
                await ctx.tick()
            ctx.set(i.payload, in_layout.const(dict(zip(in_layout.members, beat, strict=True))))
            ctx.set(i.valid, 1)
            for _ in range(LIMIT):
                _, _, ready = await ctx.tick().sample(i.ready)
                if ready:
                    break
            else:
                raise AssertionError(f"input beat {sent[0]} never taken")
            ctx.set(i.valid, 0)
            sent[0] += 1

    async def sink(ctx):
        seen, offered = 0, None
        while seen < lasts:
            ready = sink_rng.random() >= backpressure
            ctx.set(o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(o.valid, o.payload)
            cycles[0] += 1
            assert cycles[0] < LIMIT * 4, "output stopped"
            beat = tuple(int(getattr(payload, f)) for f in fields)
            if offered is not None:
                assert valid and beat == offered, "an offered beat changed or was withdrawn"
            offered = None
            if valid and ready:
                got.append(beat)
                seen += beat[-1]
            elif valid:
                offered = beat
        ctx.set(o.ready, 1)
        for _ in range(8):
            _, _, valid = await ctx.tick().sample(o.valid)
            assert not valid, "beats after the expected end"

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert sent[0] == len(in_beats)
    return got, cycles[0]


def random_packets(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    lengths = packet_lengths(n, rng)
    rng.shuffle(lengths)
    return [rng.randbytes(length) for length in lengths]


def axis_input(packets, n: int, seed: int):
    """AXIS beats of ``packets`` with junk past keep, about half the packets of a multiple of
    ``n`` bytes closed by an empty beat, and zero-byte packets first, after the first packet
    closed by an empty beat and last."""
    rng = random.Random(seed)
    beats = axis_packet(b"", n, rng)
    zero_after_empty = False
    for packet in packets:
        empty_last = len(packet) % n == 0 and rng.random() < 0.5
        beats += axis_packet(packet, n, rng, empty_last=empty_last)
        if empty_last and not zero_after_empty:
            beats += axis_packet(b"", n, rng)
            zero_after_empty = True
    return beats + axis_packet(b"", n, rng)


def test_parameters_are_checked():
    for bad in (0, 4, 12, 128, True, 16.0, "16", None):
        for build in (AxisToBeats, BeatsToAxis):
            with pytest.raises(ValueError, match="stream_bytes"):
                build(stream_bytes=bad)
        with pytest.raises(ValueError, match="stream_bytes"):
            axis_layout(bad)
    with pytest.raises(TypeError):
        AxisToBeats(16)  # keyword only


def test_model_helpers():
    """The helpers the tests trust: a packet's beats reassemble to it, and bad beats are caught."""
    rng = random.Random(3)
    packet = rng.randbytes(40)
    assert code_packets_of(code_packet(packet)) == [packet]
    assert axis_packets_of(axis_packet(packet, 16), 16) == [packet]
    with pytest.raises(AssertionError):
        code_packets_of([(1, 15, 0), (2, 1, 1)])  # short beat before the end
    with pytest.raises(AssertionError):
        code_packets_of([(1 << 8, 1, 1)])  # byte past count
    with pytest.raises(AssertionError):
        axis_packets_of([(0, 0b101, 1)], 8)  # keep with a hole


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
@pytest.mark.parametrize("n", STREAM_BYTES)
def test_axis_to_beats(n, stall, seed):
    packets = random_packets(n, seed)
    beats = axis_input(packets, n, seed)
    dut = AxisToBeats(stream_bytes=n)
    got, cycles = simulate(dut, dut.i, dut.o, axis_layout(n), beats, lasts=len(packets),
                           stall=stall, seed=seed)
    assert code_packets_of(got) == packets  # zero-byte packets dropped
    assert got == [b for p in packets for b in code_packet(p)]
    if stall == STALLS["none"]:
        assert cycles <= a2b_cycles(beats, n) + A2B_LATENCY, (cycles, a2b_cycles(beats, n))


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
@pytest.mark.parametrize("n", STREAM_BYTES)
def test_beats_to_axis(n, stall, seed):
    packets = random_packets(n, seed)
    beats = [b for p in packets for b in code_packet(p)]
    dut = BeatsToAxis(stream_bytes=n)
    got, cycles = simulate(dut, dut.i, dut.o, CodeBeat, beats, lasts=len(packets),
                           stall=stall, seed=seed)
    assert axis_packets_of(got, n) == packets
    assert got == [b for p in packets for b in axis_packet(p, n)]
    if stall == STALLS["none"]:
        assert cycles <= b2a_cycles(beats, n) + B2A_LATENCY, (cycles, b2a_cycles(beats, n))


def round_trip_top(n: int):
    m = Module()
    m.submodules.to_beats = to_beats = AxisToBeats(stream_bytes=n)
    m.submodules.to_axis = to_axis = BeatsToAxis(stream_bytes=n)
    wiring.connect(m, to_beats.o, to_axis.i)
    return m, to_beats.i, to_axis.o


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
@pytest.mark.parametrize("n", STREAM_BYTES)
def test_round_trip(n, stall, seed):
    """Beats as the DMA core sends them come back beat for beat, bytes past keep zeroed; the
    ones closed by an empty beat come back closed on their last full beat, zero-byte packets
    not at all."""
    packets = random_packets(n, seed + 7)
    top, i, o = round_trip_top(n)
    rng = random.Random(seed)
    plain = [b for p in packets for b in axis_packet(p, n, rng)]
    got, _ = simulate(top, i, o, axis_layout(n), plain, lasts=len(packets), stall=stall,
                      seed=seed)
    assert got == [(data & ((1 << 8 * keep.bit_length()) - 1), keep, last)
                   for data, keep, last in plain]
    top, i, o = round_trip_top(n)
    got, _ = simulate(top, i, o, axis_layout(n), axis_input(packets, n, seed), lasts=len(packets),
                      stall=stall, seed=seed)
    assert got == [b for p in packets for b in axis_packet(p, n)]


@pytest.mark.parametrize("n", STREAM_BYTES)
def test_long_packet_rate(n, seed):
    """A long packet, no stalls: min(n, 16) bytes a cycle into CodeBeats (4 cycles per 64-byte
    beat, 1 per 8-byte one) and 16 (n >= 16) or 8 bytes a cycle back to AXIS."""
    packet = random.Random(seed).randbytes(64 * 24 + 5)
    beats = axis_packet(packet, n)
    dut = AxisToBeats(stream_bytes=n)
    _, cycles = simulate(dut, dut.i, dut.o, axis_layout(n), beats, lasts=1,
                         stall=STALLS["none"], seed=seed)
    assert cycles <= -(-len(packet) // min(n, BEAT_BYTES)) + A2B_LATENCY
    dut = BeatsToAxis(stream_bytes=n)
    _, cycles = simulate(dut, dut.i, dut.o, CodeBeat, code_packet(packet), lasts=1,
                         stall=STALLS["none"], seed=seed)
    assert cycles <= -(-len(packet) // min(n, BEAT_BYTES)) + B2A_LATENCY


@pytest.mark.parametrize("n", STREAM_BYTES)
def test_storage_under_a_stalled_sink(n):
    """With ``o`` stalled from the start, AxisToBeats takes input until it holds two output
    beats (and at 8 bytes a half beat), BeatsToAxis until it holds one output beat and, at 32 and
    64 bytes, the parts of the next: what the docstrings state."""
    cases = [
        (AxisToBeats(stream_bytes=n), axis_layout(n), (0, (1 << n) - 1, 0),
         2 * BEAT_BYTES // n + (n == 8)),
        (BeatsToAxis(stream_bytes=n), CodeBeat, (0, BEAT_BYTES, 0),
         2 * n // BEAT_BYTES - 1 if n > BEAT_BYTES else n // BEAT_BYTES),
    ]
    for dut, layout, beat, expected in cases:
        taken = []

        async def testbench(ctx, dut=dut, layout=layout, beat=beat, taken=taken):
            ctx.set(dut.o.ready, 0)
            ctx.set(dut.i.payload, layout.const(dict(zip(layout.members, beat, strict=True))))
            ctx.set(dut.i.valid, 1)
            for _ in range(20):
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                taken.append(ready)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(testbench)
        sim.run()
        assert sum(taken) == expected, (type(dut).__name__, taken)


@pytest.mark.parametrize("n", STREAM_BYTES)
def test_bad_input_is_read_as_documented(n, seed):
    """AxisToBeats: a non-last beat is full whatever its keep, a last beat carries
    popcount(keep) low bytes. BeatsToAxis: a short non-last beat goes out full, a last beat's
    count of 0 or above 16 reads as 16. Neither hangs, both keep their output contract."""
    rng = random.Random(seed)
    full, tail = rng.getrandbits(8 * n), rng.getrandbits(8 * n)
    holes = 0b1011  # three bytes, one hole
    beats = [(full, 0b1, 0), (tail, holes, 1), (tail, 0, 1)]
    dut = AxisToBeats(stream_bytes=n)
    got, _ = simulate(dut, dut.i, dut.o, axis_layout(n), beats, lasts=1, stall=STALLS["both"],
                      seed=seed)
    assert code_packets_of(got) == [full.to_bytes(n, "little") + tail.to_bytes(n, "little")[:3]]

    short = int.from_bytes(bytes(range(1, 6)), "little")
    beats = [(short, 5, 0), (short, 0, 1), (short, 3, 0), (short, 17, 1), (short, 31, 1)]
    dut = BeatsToAxis(stream_bytes=n)
    got, _ = simulate(dut, dut.i, dut.o, CodeBeat, beats, lasts=3, stall=STALLS["both"],
                      seed=seed)
    whole = short.to_bytes(BEAT_BYTES, "little")
    assert axis_packets_of(got, n) == [whole * 2, whole * 2, whole]
