"""The UART and the serial link's gateware under Amaranth's simulator: characters against an
independent bit-level model, and the link packets of ``hw.linkproto`` against a register file
and stream ends driven here (the whole card behind the link runs under Verilator in
tests/host/test_card_serial.py)."""

import itertools
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.sim import Simulator

from actpack.hw.axis import axis_layout
from actpack.hw.linkproto import (
    LINK_VERSION,
    REPLY_SYNC,
    REQUEST_SYNC,
    LinkError,
    LinkFlags,
    LinkOp,
    link_word,
    pack_packet,
    unpack_packet,
)
from actpack.hw.regfile import RegisterFile
from actpack.hw.regs import CARD_MAGIC, REGS, CardConfig
from actpack.hw.seriallink import SerialLink
from actpack.hw.uart import UARTRx, UARTTx, uart_divisor


def character(byte: int, bit_cycles) -> list[int]:
    """The line, cycle by cycle, for one 8N1 character; ``bit_cycles`` per bit (an int, or a
    list of 10 for a sender whose rate is off)."""
    widths = bit_cycles if isinstance(bit_cycles, list) else [bit_cycles] * 10
    bits = [0, *((byte >> i) & 1 for i in range(8)), 1]
    return [b for b, w in zip(bits, widths, strict=True) for _ in range(w)]


def decode_line(samples: list[int], divisor: int, starts=None) -> list[int]:
    """Bytes from a line sampled every cycle: a start bit is a fall from idle; each bit is read
    in its middle; a character whose stop bit is 0 raises. ``starts`` gets the start bits'
    cycles."""
    out, t = [], 1
    while t < len(samples):
        if samples[t - 1] == 1 and samples[t] == 0:
            mid = t + divisor // 2
            bits = [samples[mid + i * divisor] for i in range(10)]
            assert bits[0] == 0 and bits[9] == 1, f"bad character at cycle {t}: {bits}"
            out.append(sum(b << i for i, b in enumerate(bits[1:9])))
            if starts is not None:
                starts.append(t)
            t = mid + 9 * divisor
        t += 1
    return out


def test_divisor_from_rates():
    assert uart_divisor(12e6, 3e6) == 4
    assert uart_divisor(100e6, 3e6) == 33
    assert uart_divisor(25e6, 1e6) == 25
    with pytest.raises(ValueError, match=r"4\.2% off"):
        uart_divisor(25e6, 3e6)  # 25 / 8 = 3.125 Mbaud
    with pytest.raises(ValueError, match="lower the baud rate"):
        uart_divisor(12e6, 6e6)
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(divisor=3)


def test_tx_characters_back_to_back():
    divisor = 5
    data = [0x00, 0xFF, 0x55, 0xA5, *random.Random(1).randbytes(12)]
    dut = UARTTx(divisor=divisor)
    line = []

    async def bench(ctx):
        for byte in data:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, byte)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    async def watch(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            line.append(tx)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(watch)
    sim.run()
    starts = []
    assert decode_line(line, divisor, starts) == data
    # back to back: a character every 10 bits
    assert {b - a for a, b in itertools.pairwise(starts)} == {10 * divisor}


def test_rx_bytes_glitch_framing_error_and_rate_error():
    divisor = 8
    rng = random.Random(2)
    data = list(rng.randbytes(10))
    line = [1] * 10
    line += [0, 0, 1] + [1] * 10  # a glitch shorter than half a bit: no character
    for byte in data[:5]:
        line += character(byte, divisor)
    line += character(0x3C, divisor)[:-divisor] + [0] * divisor + [1] * divisor  # stop bit 0
    for byte in data[5:]:  # a sender 5 % slow (widths 8 and 9 alternating, ~8.4)
        line += character(byte, [8, 9, 8, 8, 9, 8, 8, 9, 8, 8]) + [1] * 3
    line += [1] * 20
    dut = UARTRx(divisor=divisor)
    got, errors = [], []

    async def bench(ctx):
        for level in line:
            ctx.set(dut.rx, level)
            await ctx.tick()
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            errors.append(ctx.get(dut.framing_error))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == data
    assert sum(errors) == 1


# ---------------------------------------------------------------- the link on a register file

DIV, GAP, MAXP = 4, 400, 16


class LinkTop(wiring.Component):
    """``SerialLink`` on a ``RegisterFile``; its streams are the bench's."""

    def __init__(self):
        self.link = SerialLink(divisor=DIV, max_payload=MAXP, gap_cycles=GAP, stream_bytes=8)
        axis = stream.Signature(axis_layout(8))
        super().__init__({"rx": wiring.In(1, init=1), "tx": wiring.Out(1, init=1),
                          "h2c": wiring.Out(axis), "c2h": wiring.In(axis)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.regs = regs = RegisterFile(config=CardConfig())
        wiring.connect(m, link.bus, regs.bus)
        wiring.connect(m, link.h2c, wiring.flipped(self.h2c))
        wiring.connect(m, wiring.flipped(self.c2h), link.c2h)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        return m


def run_link(wire: list, *, c2h: bytes = b"", h2c_ready=lambda cycle: True, quiet=3000):
    """Send the items of ``wire`` (bytes to put on ``rx`` back to back, or an int: that many
    idle cycles), offer ``c2h`` as one message on the card side, run until the line has been
    quiet for ``quiet`` cycles; returns (the bytes on ``tx``, the h2c beats taken)."""
    dut = LinkTop()
    line, beats = [], []
    levels = []
    for item in wire:
        if isinstance(item, int):
            levels += [1] * item
        else:
            for byte in item:
                levels += character(byte, DIV)
    levels += [1] * quiet

    async def drive(ctx):
        for level in levels:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def watch(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            line.append(tx)

    async def sink(ctx):
        cycle = 0
        async for _, _, valid, ready, payload in ctx.tick().sample(
                dut.h2c.valid, dut.h2c.ready, dut.h2c.payload):
            if valid and ready:
                n = bin(payload.keep).count("1")
                beats.append((int(payload.data).to_bytes(8, "little")[:n], int(payload.last)))
            cycle += 1
            ctx.set(dut.h2c.ready, h2c_ready(cycle))

    async def source(ctx):
        for i in range(0, len(c2h), 8):
            part = c2h[i:i + 8]
            ctx.set(dut.c2h.valid, 1)
            ctx.set(dut.c2h.payload.data, int.from_bytes(part, "little"))
            ctx.set(dut.c2h.payload.keep, (1 << len(part)) - 1)
            ctx.set(dut.c2h.payload.last, i + 8 >= len(c2h))
            await ctx.tick().until(dut.c2h.ready)
        ctx.set(dut.c2h.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_process(watch)
    sim.add_process(sink)
    if c2h:
        sim.add_testbench(source, background=True)
    sim.run()
    return bytes(decode_line(line, DIV)), beats


def replies(data: bytes):
    """The reply packets in ``data`` (each parsed and CRC-checked)."""
    out = []
    while data:
        assert data[0] == REPLY_SYNC
        n = 12 + int.from_bytes(data[8:10], "little") + 4
        out.append(unpack_packet(data[:n]))
        data = data[n:]
    return out


def req(op, seq, arg=0, payload=b"", flags=0):
    return pack_packet(sync=REQUEST_SYNC, op=op, seq=seq, arg=arg, payload=payload, flags=flags)


def test_link_registers_ping_and_h2c():
    job = bytes(range(1, 24))  # 23 bytes: two packets, the last beat short
    wire = [req(LinkOp.PING, 1), 200,
            req(LinkOp.REG_READ, 2, REGS.MAGIC.offset), 200,
            req(LinkOp.REG_WRITE, 3, REGS.SCRATCH.offset, (0xDEADBEEF).to_bytes(4, "little")),
            200, req(LinkOp.REG_READ, 4, REGS.SCRATCH.offset), 200,
            req(LinkOp.H2C, 5, 0, job[:16]), 200,
            req(LinkOp.H2C, 6, 0, job[16:], LinkFlags.LAST), 200]
    out, beats = run_link(wire)
    r = replies(out)
    assert [(p.op, p.seq) for p in r] == [(LinkOp.PING, 1), (LinkOp.REG_READ, 2),
                                          (LinkOp.REG_WRITE, 3), (LinkOp.REG_READ, 4),
                                          (LinkOp.H2C, 5), (LinkOp.H2C, 6)]
    assert r[0].arg == link_word(MAXP) and r[0].arg >> 16 == LINK_VERSION
    assert r[0].flags & LinkFlags.H2C_READY
    assert r[1].arg == CARD_MAGIC and r[3].arg == 0xDEADBEEF
    assert b"".join(d for d, _ in beats) == job
    assert [last for _, last in beats] == [0, 0, 1]


def test_link_c2h_message_in_parts():
    message = bytes(random.Random(3).randbytes(21))
    # back to back: each request waits in the receive FIFO until the reply before it is out
    wire = [req(LinkOp.C2H, 1, 8), req(LinkOp.C2H, 2, 100), req(LinkOp.C2H, 3, 100), 2000]
    out, _ = run_link(wire, c2h=message)
    r = replies(out)
    assert [p.op for p in r] == [LinkOp.C2H] * 3
    assert len(r[0].payload) == 8 and not r[0].flags & LinkFlags.LAST
    assert r[0].flags & LinkFlags.C2H_MORE
    assert b"".join(p.payload for p in r[:2]) == message and r[1].flags & LinkFlags.LAST
    assert r[2].payload == b"" and not r[2].flags & (LinkFlags.LAST | LinkFlags.C2H_MORE)


def test_link_faults_are_nak_and_the_link_recovers():
    good = req(LinkOp.REG_READ, 9, REGS.MAGIC.offset)
    bad_crc = bytearray(req(LinkOp.REG_WRITE, 1, REGS.SCRATCH.offset, b"\1\2\3\4"))
    bad_crc[13] ^= 0x10
    short = req(LinkOp.H2C, 2, 0, bytes(10))[:15]
    too_long = bytearray(req(LinkOp.H2C, 3, 0, bytes(8)))
    too_long[8:10] = (MAXP + 1).to_bytes(2, "little")
    wrong_length = req(LinkOp.REG_READ, 4, 0, b"\0")
    unknown = req(9, 5)
    wire = [bytes(bad_crc), GAP + 200, short, 2 * GAP, bytes(too_long), 2 * GAP, wrong_length,
            300, unknown, 300, good, 300]
    out, beats = run_link(wire)
    r = replies(out)
    assert [(p.op, p.seq, p.arg) for p in r] == [
        (LinkOp.NAK, 1, LinkError.CRC), (LinkOp.NAK, 2, LinkError.SHORT),
        (LinkOp.NAK, 3, LinkError.LENGTH), (LinkOp.NAK, 4, LinkError.LENGTH),
        (LinkOp.NAK, 5, LinkError.BAD_OP), (LinkOp.REG_READ, 9, CARD_MAGIC)]
    assert beats == []  # nothing of the faulty H2C packets reached the card


def test_link_h2c_credit_when_the_card_stalls():
    # the card takes nothing: two packets fill the ring (2 x max_payload), the third is BUSY
    wire = [req(LinkOp.H2C, 1, 0, bytes(16)), 300, req(LinkOp.H2C, 2, 0, bytes(16)), 300,
            req(LinkOp.H2C, 3, 0, bytes(16)), 300]
    out, beats = run_link(wire, h2c_ready=lambda cycle: False)
    assert beats == []
    r = replies(out)
    assert [(p.op, p.arg) for p in r] == [(LinkOp.H2C, 0), (LinkOp.H2C, 0),
                                          (LinkOp.NAK, LinkError.BUSY)]
    assert r[0].flags & LinkFlags.H2C_READY and not r[1].flags & LinkFlags.H2C_READY
