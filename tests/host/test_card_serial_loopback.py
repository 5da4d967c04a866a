"""``SerialTransport`` (pyserial on a real pseudo-terminal) against the link's gateware
(``hw.seriallink.SerialCard`` with ``sim.loopback.LoopbackCard``: the card's register file, H2C
echoed to C2H) under Amaranth's simulator in a thread: registers, a job larger than the link's
buffers (the H2C credit and C2H polling), flush; faults on the wire and a board that stops
answering give named errors and the link recovers. No Verilator needed; the card itself behind
the link is tests/host/test_card_serial.py."""

import os
import threading
import time
import tty

import pytest
from amaranth.sim import Simulator

from actpack.hw.regs import CARD_MAGIC, REGS, Caps, CardConfig
from actpack.hw.seriallink import SerialCard
from actpack.sim.loopback import LoopbackCard

pytest.importorskip("serial")

from serial_testlib import FaultyPort

from actpack.host.serialcard import (
    SerialLinkError,
    SerialTimeoutError,
    SerialTransport,
)
from actpack.hw.linkproto import LinkError

DIV = 4


class PtyBoard:
    """``SerialCard(loopback=True)`` under Amaranth's simulator, its UART pins bridged to a pty
    (the slave's path is ``port``) bit by bit."""

    def __init__(self):
        self.dut = SerialCard(config=CardConfig(caps=Caps(stream_bytes=8)), divisor=DIV,
                              max_payload=64, gap_cycles=400,
                              card=LoopbackCard(stream_bytes=8))
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self.stop = self.paused = False
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        dut = self.dut
        sim = Simulator(dut)
        sim.add_clock(1e-6)

        async def bridge(ctx):
            levels = []  # rx levels still to drive, one a cycle
            rx_state = None  # tx decoding: (cycle of the start bit, bits so far)
            cycle = 0
            while not self.stop:
                if self.paused:  # the board hangs: no clock, no bytes either way
                    time.sleep(0.01)
                    continue
                await ctx.tick()
                tx = ctx.get(dut.tx)
                cycle += 1
                if not levels and cycle % DIV == 0:
                    try:
                        data = os.read(self.master, 256)
                    except BlockingIOError:
                        data = b""
                    for byte in data:
                        bits = [0, *((byte >> i) & 1 for i in range(8)), 1]
                        levels += [b for b in bits for _ in range(DIV)]
                ctx.set(dut.rx, levels.pop(0) if levels else 1)
                if rx_state is None:
                    if not tx:
                        rx_state = (cycle, [])
                else:
                    start, bits = rx_state
                    if (cycle - start - DIV // 2) % DIV == 0 and cycle > start + DIV:
                        bits.append(tx)
                        if len(bits) == 9:
                            if bits[8]:
                                os.write(self.master, bytes([sum(b << i for i, b in
                                                                 enumerate(bits[:8]))]))
                            rx_state = None

        sim.add_testbench(bridge)
        try:
            sim.run()
        except BaseException as exc:
            self.error = exc

    def close(self):
        self.stop = True
        self.thread.join(10)
        os.close(self.master)
        os.close(self.slave)
        assert self.error is None, self.error


@pytest.fixture
def board():
    b = PtyBoard()
    yield b
    b.close()


def test_transport_on_the_link_gateware_through_a_pty(board):
    t = SerialTransport(board.port, reply_timeout=20.0, quiet_s=0.5)
    try:
        assert t.max_payload == 64
        assert t.reg_read(REGS.MAGIC.offset) == CARD_MAGIC
        assert t.caps() == Caps(stream_bytes=8)
        t.write(REGS.CONTROL, REGS.CONTROL.value(RUN=1))
        t.reg_write(REGS.SCRATCH.offset, 0xC0FFEE)
        assert t.reg_read(REGS.SCRATCH.offset) == 0xC0FFEE
        job = bytes((7 * i + 3) & 0xFF for i in range(333))  # > 2 x max_payload: credit
        t.submit(job)
        t.wait(60.0)
        assert t.receive(lambda data: None, limit=1000, timeout=60.0) == job
        assert t.read(REGS.FRAMES) == 1 and t.read(REGS.BYTES_IN) == len(job)
        assert t.flush() == 0
    finally:
        t.close()


def test_faults_are_named_errors_and_the_link_recovers(board):
    port = FaultyPort(board.port)
    t = SerialTransport(port, reply_timeout=20.0, quiet_s=0.5)
    try:
        t.reg_write(REGS.SCRATCH.offset, 0x1234)
        port.flip_write = True  # a payload bit of the REG_WRITE: the card's CRC check fails
        with pytest.raises(SerialLinkError, match=r"refused REG_WRITE.*CRC") as info:
            t.reg_write(REGS.SCRATCH.offset, 0x5678)
        assert info.value.code is LinkError.CRC
        assert t.reg_read(REGS.SCRATCH.offset) == 0x1234  # the corrupted write did nothing
        port.cut_write = True  # the bytes stop mid-packet: the card's gap timer answers
        with pytest.raises(SerialLinkError, match="SHORT") as info:
            t.reg_write(REGS.SCRATCH.offset, 0x9ABC)
        assert info.value.code is LinkError.SHORT
        port.flip_read = True  # the reply is corrupted on its way back
        with pytest.raises(SerialLinkError, match="corrupted") as info:
            t.reg_read(REGS.MAGIC.offset)
        assert info.value.code is None
        assert t.reg_read(REGS.SCRATCH.offset) == 0x1234
        board.paused = True
        t.reply_timeout = 1.0
        with pytest.raises(SerialTimeoutError, match="did not answer REG_READ"):
            t.reg_read(REGS.MAGIC.offset)
        board.paused = False
        t.reply_timeout = 20.0
        # the late reply to the abandoned request is skipped (its sequence number)
        assert t.reg_read(REGS.SCRATCH.offset) == 0x1234
    finally:
        t.close()
