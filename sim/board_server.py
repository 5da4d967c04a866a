"""cocotb module: the simulated board (``hw.seriallink.SerialCard`` or any top with UART pins
``rx``/``tx``) behind a pseudo-terminal, as a USB-UART puts a real board behind ``/dev/ttyUSBn``.

One test, ``serve``: starts the clock (``clk``, ``PERIOD_NS``) and the reset (``rst``, two
cycles), opens a pseudo-terminal pair in raw mode, writes ``{"pty": <slave path>, "pid": <this
process>}`` to the file named by ``ACTPACK_BOARD_INFO`` and then moves bytes until the file
``<ACTPACK_BOARD_INFO>.stop`` appears or the process that started it is gone:

- host -> board: every byte read from the pty's master is driven on ``rx`` as an 8N1 character
  of ``ACTPACK_BOARD_DIVISOR`` clock cycles a bit, back to back (the FTDI side of the cable);
- board -> host: ``tx`` is decoded from its edges (start bit, the data bits in their middles,
  the stop bit) and each byte is written to the master; a character whose stop bit is 0 is
  dropped, as a UART receiver drops a framing error.

The host end is the slave path, opened by pyserial like any serial port (``serial:<path>``).
Python wakes only at ``rx``/``tx`` transitions; while nothing moves for ``ACTIVE_BITS`` bit times
the simulator blocks on the pty for up to ``IDLE_S`` between short steps of simulated time, so an
idle board costs no CPU. Fault injection (environment): ``ACTPACK_BOARD_FLIP_TX=n`` flips bit 0
of the ``n``-th byte (from 1) the board sends (a corrupted reply on the wire).
"""

import json
import os
import select
import termios
import time
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer, ValueChange

PERIOD_NS = 10
INFO_ENV = "ACTPACK_BOARD_INFO"
DIVISOR_ENV = "ACTPACK_BOARD_DIVISOR"
ACTIVE_BITS = 4096
IDLE_S = 0.01


class Board:
    def __init__(self, dut, divisor: int, master: int):
        self.dut = dut
        self.bit_ns = divisor * PERIOD_NS
        self.master = master
        self.last_activity = 0.0  # sim ns of the last rx/tx transition
        self.to_host = bytearray()
        self.sent = 0
        self.flip = int(os.environ.get("ACTPACK_BOARD_FLIP_TX", "0"))
        self.stats = {"rx_bytes": 0, "tx_bytes": 0, "framing_errors": 0}

    def now(self) -> float:
        return get_sim_time("ns")

    async def decode_tx(self):
        """Bytes from ``tx``, written to the pty as they complete."""
        tx = self.dut.tx
        bit = self.bit_ns
        while True:
            await FallingEdge(tx)
            t0 = self.now()
            self.last_activity = t0
            edges = []  # (time, level after it)
            end = t0 + 9.5 * bit  # the stop bit's middle
            while True:
                left = end - self.now()
                if left <= 0:
                    break
                timer = Timer(left, unit="ns")
                if isinstance(await First(ValueChange(tx), timer), Timer):
                    break
                edges.append((self.now(), int(tx.value)))

            def level(t, edges=edges):
                value = 0
                for at, v in edges:
                    if at <= t:
                        value = v
                return value

            byte = sum(level(t0 + (i + 1.5) * bit) << i for i in range(8))
            self.last_activity = self.now()
            if not level(end):
                self.stats["framing_errors"] += 1
                continue
            self.sent += 1
            if self.sent == self.flip:
                byte ^= 1
            self.stats["tx_bytes"] += 1
            self.to_host.append(byte)
            self._write()

    def _write(self):
        try:
            n = os.write(self.master, self.to_host)
        except BlockingIOError:
            return
        del self.to_host[:n]

    async def drive_rx(self, data: bytes):
        rx = self.dut.rx
        for byte in data:
            bits = [0, *((byte >> i) & 1 for i in range(8)), 1]
            i = 0
            while i < 10:
                j = i
                while j < 10 and bits[j] == bits[i]:
                    j += 1
                rx.value = bits[i]
                await Timer((j - i) * self.bit_ns, unit="ns")
                i = j
            self.stats["rx_bytes"] += 1
        self.last_activity = self.now()


def _stop_requested(info: str, parent: int) -> bool:
    return os.path.exists(info + ".stop") or os.getppid() != parent


@cocotb.test()
async def serve(dut):
    """Serve the pty until asked to stop."""
    info = os.environ[INFO_ENV]
    divisor = int(os.environ[DIVISOR_ENV])
    parent = os.getppid()
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)  # the host side: no echo, no line editing
    os.set_blocking(master, False)
    board = Board(dut, divisor, master)
    tmp = info + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pty": os.ttyname(slave), "pid": os.getpid()}, f)
    os.replace(tmp, info)
    cocotb.start_soon(board.decode_tx())
    start = time.monotonic()
    step = Timer(64 * board.bit_ns, unit="ns")
    try:
        while not _stop_requested(info, parent):
            try:
                data = os.read(master, 4096)
            except (BlockingIOError, OSError):
                data = b""
            if data:
                await board.drive_rx(data)
                continue
            if board.to_host:
                board._write()
            if board.now() - board.last_activity > ACTIVE_BITS * board.bit_ns:
                select.select([master], [], [], IDLE_S)  # idle: wait for the host in real time
            await step
    finally:
        os.close(master)
        os.close(slave)
    dut._log.info("board server: %.0f ns simulated in %.1f s; %s", board.now(),
                  time.monotonic() - start, board.stats)
