"""AXI4-Stream as the card sees it: the data streams a PCIe DMA core (Xilinx XDMA in AXI-Stream
mode, LitePCIe) gives user logic, ``tdata`` of ``stream_bytes`` (8..64) bytes with ``tkeep`` and
``tlast``.

``axis_layout(stream_bytes)`` is the payload of an Amaranth ``lib.stream`` port (``valid`` /
``ready`` are the stream's own): the card's ``h2c`` and ``c2h`` ports use it, so their Verilog
ports are ``h2c__payload`` (``data``, ``keep``, ``last`` packed, data in the low bits),
``h2c__valid``, ``h2c__ready``. Byte ``k`` of a beat is ``data[8k:8k+8]`` (little-endian, as the
XDMA core maps host memory); ``keep`` bit ``k`` says byte ``k`` is there. The card accepts and
produces only beats whose kept bytes are the low ones, all of them except on a packet's last
beat (what XDMA's H2C engine emits for a single-buffer transfer, and what its C2H engine takes).

Inside, the card works on 16-byte ``blockcode.CodeBeat`` beats, ``last`` marking the end of a
packet (an H2C job, a C2H message) and only a packet's last beat short: ``AxisToBeats`` and
``BeatsToAxis`` convert between the two at every width of ``STREAM_BYTES``.
"""

import numbers

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .beats import BEAT_BYTES, CodeBeat
from .blockdecode import popcount

__all__ = ["STREAM_BYTES", "AxisToBeats", "BeatsToAxis", "axis_layout"]

STREAM_BYTES = (8, 16, 32, 64)  # tdata widths of 64 to 512 bits


def axis_layout(stream_bytes: int) -> data.StructLayout:
    """One AXI4-Stream beat of ``stream_bytes`` bytes: ``data``, ``keep``, ``last``."""
    stream_bytes = check_stream_bytes(stream_bytes)
    return data.StructLayout({"data": unsigned(8 * stream_bytes), "keep": unsigned(stream_bytes),
                              "last": unsigned(1)})


def check_stream_bytes(stream_bytes) -> int:
    # type check first: 16.0 == 16 and True == 1 would pass a plain membership test
    if (isinstance(stream_bytes, bool) or not isinstance(stream_bytes, numbers.Integral)
            or stream_bytes not in STREAM_BYTES):
        raise ValueError(f"stream_bytes: expected one of {STREAM_BYTES}, got {stream_bytes!r}")
    return int(stream_bytes)


def _byte_mask(count, nbytes: int):
    """``8 * nbytes`` bits: ones over the bytes below ``count``, zeros above."""
    return Cat(*((count > k).replicate(8) for k in range(nbytes)))


def thermometer(count, nbytes: int):
    """``nbytes`` bits: bit ``k`` set when ``k < count`` (a keep of ``count`` low bytes)."""
    return Cat(*(count > k for k in range(nbytes)))


class AxisToBeats(wiring.Component):
    """AXI4-Stream beats of ``stream_bytes`` bytes (``i``) to ``CodeBeat`` beats (``o``).

    A packet's bytes leave in order as 16-byte beats, every one full but the packet's last, which
    carries ``count`` (1..16) bytes and ``last``; bytes past ``count`` are zero. At 8 bytes two
    input beats make an output beat; at 16 a beat maps to a beat; at 32 and 64 an input beat
    gives 2 and 4 output beats, less on a packet's short last beat (parts without bytes are
    skipped, not sent empty).

    A full beat cannot go out before the unit knows whether the packet ends with it: AXIS may
    close a packet with a beat of ``keep == 0`` (and ``last``). So one output beat is always held
    back until the next input byte or the end of the packet shows up; an empty last beat then
    ends the packet by setting ``last`` on the beat held back. A packet of zero bytes (an empty
    last beat with nothing before it) has no ``CodeBeat`` form (``count >= 1``): it is dropped,
    the next packet is unaffected.

    Input rules and what happens when they are broken: the packet's last beat carries
    ``popcount(keep)`` bytes, read as the low ``popcount(keep)`` bytes (the kept ones when keep is
    contiguous from bit 0, as the card's DMA core gives them; a keep with holes keeps the
    packet's length but takes the wrong bytes); every other beat is taken as full whatever its
    keep says. The bytes the unit drops are zeroed. The output always obeys ``CodeBeat``'s rules.

    Throughput: ``min(stream_bytes, 16)`` bytes per cycle sustained when ``i`` is never idle and
    ``o`` never stalled, across packet boundaries too (an empty last beat costs one input cycle,
    a short last beat at 32/64 bytes only the cycles of its non-empty parts). Latency: a packet's
    last beat is offered on ``o`` 2 cycles after the input beat that ends it is taken (a cycle
    held back, a cycle in ``o``'s register); an earlier beat 1 cycle after the packet's next
    16 bytes (or its end) are taken. Storage: two output beats (``o``'s register and the one held
    back) and, at 8 bytes, a half beat.

    Backpressure: ``o.valid`` and ``o.payload`` are registers, so ``o.valid`` never depends on
    ``o.ready``; ``i.ready`` follows ``o.ready`` in the same cycle (no skid buffer) and, at 32/64
    bytes, is high only while the beat's last non-empty part is being passed on.
    """

    def __init__(self, *, stream_bytes):
        self.stream_bytes = check_stream_bytes(stream_bytes)
        super().__init__({
            "i": In(stream.Signature(axis_layout(stream_bytes))),
            "o": Out(stream.Signature(CodeBeat)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, n = self.i, self.o, self.stream_bytes
        beat_bits = 8 * BEAT_BYTES
        # The chunk: the next 16 bytes (or fewer, at a packet's end) of the input, offered
        # combinationally; count 0 only on an empty last chunk, which just ends the packet.
        c_valid, c_ready, c_last = Signal(), Signal(), Signal()
        c_data = Signal(beat_bits)
        c_count = Signal(range(BEAT_BYTES + 1))
        kept = popcount(i.payload.keep)
        if n < BEAT_BYTES:
            # two 8-byte beats per chunk: the first waits in `low`
            low, have_low = Signal(8 * n), Signal()
            nbytes = Signal(range(n + 1))
            m.d.comb += nbytes.eq(Mux(i.payload.last, kept, n))
            here = i.payload.data & _byte_mask(nbytes, n)
            emits = have_low | i.payload.last
            m.d.comb += [
                c_valid.eq(i.valid & emits),
                c_data.eq(Mux(have_low, Cat(low, here), here)),
                c_count.eq(Mux(have_low, n + nbytes, nbytes)),
                c_last.eq(i.payload.last),
                i.ready.eq(~emits | c_ready),
            ]
            with m.If(i.valid & i.ready):
                m.d.sync += have_low.eq(~emits)
                m.d.sync += low.eq(here)
        else:
            parts = n // BEAT_BYTES
            part = Signal(range(parts)) if parts > 1 else Const(0, 1)
            nbytes = Signal(range(n + 1))
            m.d.comb += nbytes.eq(Mux(i.payload.last, kept, n))
            rest = Signal(range(-n, n + 1))  # bytes from this part on
            m.d.comb += rest.eq(nbytes - part * BEAT_BYTES)
            # the beat's last part, or the last with bytes: the unit skips the empty ones
            final = (part == parts - 1) | (rest <= BEAT_BYTES)
            m.d.comb += [
                c_valid.eq(i.valid),
                c_count.eq(Mux(rest >= BEAT_BYTES, BEAT_BYTES, Mux(rest > 0, rest, 0))),
                c_data.eq(i.payload.data.word_select(part, beat_bits)
                          & _byte_mask(c_count, BEAT_BYTES)),
                c_last.eq(i.payload.last & final),
                i.ready.eq(c_ready & final),
            ]
            if parts > 1:
                with m.If(c_valid & c_ready):
                    m.d.sync += part.eq(Mux(final, 0, part + 1))

        # `held`: the packet's latest non-empty chunk, out once the next chunk (or its own
        # `last`) says whether it ends the packet
        held = Signal(CodeBeat)
        held_valid = Signal()
        o_free = ~o.valid | o.ready
        advance = held_valid & o_free & (held.last | c_valid)
        m.d.comb += c_ready.eq(~held_valid | o_free)
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(advance):
            ends = held.last | (c_valid & c_last & (c_count == 0))
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(held.data),
                o.payload.count.eq(held.count),
                o.payload.last.eq(ends),
                held_valid.eq(0),
            ]
        # an empty chunk is never held: it ended the packet above, or the packet had no bytes
        with m.If(c_valid & c_ready & (c_count != 0)):
            m.d.sync += [
                held.data.eq(c_data),
                held.count.eq(c_count),
                held.last.eq(c_last),
                held_valid.eq(1),
            ]
        return m


class BeatsToAxis(wiring.Component):
    """``CodeBeat`` beats (``i``) to AXI4-Stream beats of ``stream_bytes`` bytes (``o``).

    Every output beat but a packet's last is full (``keep`` all ones); the packet's last beat
    (the one holding the input's ``last`` beat's final byte) has ``last`` set and ``keep`` over
    exactly its bytes, the low ones. Bytes with ``keep`` 0 are zero (given ``CodeBeat``'s rule
    that bytes past ``count`` are). At 8 bytes a 16-byte beat gives two AXIS beats (one when it is
    a packet's last with ``count <= 8``); at 16 a beat maps to a beat; at 32 and 64 2 and 4 input
    beats are gathered per output beat, fewer when the packet's ``last`` beat comes first.

    Bad input: a non-last beat with ``count < 16`` breaks ``CodeBeat``'s contract and is taken as
    full (its 16 bytes go out, zeros past ``count`` included: the packet grows); a ``count`` of 0
    or above 16 is read as 16. The unit never waits on anything but ``o.ready``.

    Throughput: at 8 bytes 8 bytes per cycle (one AXIS beat a cycle, the output's full rate); at
    16..64 one input beat a cycle (16 bytes), across packet boundaries too, when ``i`` is never
    idle and ``o`` never stalled. Latency: an output beat is offered on ``o`` 1 cycle after the
    input beat that completes it is taken. Storage: ``o``'s register and, at 32/64 bytes, the
    parts gathered for the next output beat.

    Backpressure: ``o.valid`` and ``o.payload`` are registers, so ``o.valid`` never depends on
    ``o.ready``; ``i.ready`` follows ``o.ready`` in the same cycle (no skid buffer); at 8 bytes it
    is high only while the beat's last AXIS beat is being sent; at 32/64 bytes beats that only add
    to the output beat being gathered are taken even while ``o`` stalls.
    """

    def __init__(self, *, stream_bytes):
        self.stream_bytes = check_stream_bytes(stream_bytes)
        super().__init__({
            "i": In(stream.Signature(CodeBeat)),
            "o": Out(stream.Signature(axis_layout(stream_bytes))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, n = self.i, self.o, self.stream_bytes
        beat_bits = 8 * BEAT_BYTES
        count = i.payload.count
        nbytes = Signal(range(BEAT_BYTES + 1))  # bytes this beat carries, as the unit reads it
        m.d.comb += nbytes.eq(Mux(i.payload.last & (count != 0) & (count <= BEAT_BYTES),
                                  count, BEAT_BYTES))
        o_free = ~o.valid | o.ready
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)

        if n <= BEAT_BYTES:
            parts = BEAT_BYTES // n  # output beats per input beat
            part = Signal(range(parts)) if parts > 1 else Const(0, 1)
            rest = Signal(range(-BEAT_BYTES, BEAT_BYTES + 1))  # bytes from this part on
            m.d.comb += rest.eq(nbytes - part * n)
            final = (part == parts - 1) | (rest <= n)
            m.d.comb += i.ready.eq(o_free & final)
            with m.If(i.valid & o_free):
                m.d.sync += [
                    o.valid.eq(1),
                    o.payload.data.eq(i.payload.data.word_select(part, 8 * n)),
                    o.payload.keep.eq(thermometer(rest, n)),
                    o.payload.last.eq(i.payload.last & final),
                ]
                if parts > 1:
                    m.d.sync += part.eq(Mux(final, 0, part + 1))
            return m

        parts = n // BEAT_BYTES  # input beats per output beat
        acc = Signal(beat_bits * (parts - 1))  # the output beat's parts before `pos`
        pos = Signal(range(parts))
        completes = i.payload.last | (pos == parts - 1)
        m.d.comb += i.ready.eq(~completes | o_free)
        with m.If(i.valid & i.ready):
            with m.If(completes):
                data_parts, keep_parts = [], []
                for j in range(parts):
                    before = acc[beat_bits * j:beat_bits * (j + 1)] if j < parts - 1 else 0
                    data_parts.append(Mux(pos > j, before,
                                          Mux(pos == j, i.payload.data, 0)))
                    keep_parts.append(Mux(pos > j, Const((1 << BEAT_BYTES) - 1, BEAT_BYTES),
                                          Mux(pos == j, thermometer(nbytes, BEAT_BYTES), 0)))
                m.d.sync += [
                    o.valid.eq(1),
                    o.payload.data.eq(Cat(*data_parts)),
                    o.payload.keep.eq(Cat(*keep_parts)),
                    o.payload.last.eq(i.payload.last),
                    pos.eq(0),
                ]
            with m.Else():
                m.d.sync += [acc.word_select(pos, beat_bits).eq(i.payload.data), pos.eq(pos + 1)]
        return m
