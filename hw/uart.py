"""A UART (8 data bits, no parity, 1 stop bit, LSB first; the line idles high) at
``divisor`` clock cycles per bit: ``UARTTx`` and ``UARTRx``.

At 3 Mbaud (an FT2232H's top rate) a 12 MHz clock gives ``divisor`` 4, 48 MHz 16; the receiver
samples each bit once, in its middle, so the two ends' rates may differ by up to about 4 %
(half a bit over a 10-bit character, shared by both ends' errors).
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "UARTRx", "UARTTx", "uart_divisor"]

MIN_DIVISOR = 4  # the receiver needs a middle to sample: half a bit of 2 cycles or more


def check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor: clock cycles per bit, an int >= {MIN_DIVISOR}, got "
                         f"{divisor!r}")
    return divisor


def uart_divisor(clk_hz: float, baud: float, *, tolerance: float = 0.02) -> int:
    """The ``divisor`` for ``baud`` from a ``clk_hz`` clock; ``ValueError`` naming the rate
    error if the nearest divisor misses ``baud`` by more than ``tolerance`` (2 %) or is below
    ``MIN_DIVISOR``."""
    if clk_hz <= 0 or baud <= 0:
        raise ValueError(f"clk_hz {clk_hz} and baud {baud} must be positive")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud:g}: a {clk_hz / 1e6:g} MHz clock gives {clk_hz / baud:.2f} "
                         f"cycles a bit, the UART needs {MIN_DIVISOR}; lower the baud rate")
    error = abs(clk_hz / divisor - baud) / baud
    if error > tolerance:
        raise ValueError(f"baud {baud:g}: the nearest rate from a {clk_hz / 1e6:g} MHz clock is "
                         f"{clk_hz / divisor:.0f} ({error:.1%} off, more than {tolerance:.0%}); "
                         f"pick a baud rate that divides the clock")
    return divisor


class UARTTx(wiring.Component):
    """Bytes from ``i`` out on ``tx``, one character (10 bits) each.

    Latency: the start bit goes out the cycle after a byte is taken. Throughput: one byte per
    ``10 * divisor`` cycles, back to back (``i.ready`` is high in the stop bit's last cycle and
    when idle). Backpressure: ``i.ready`` low while a character is on the line.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, *, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(10)  # stop, data[7:0], start: shifted out LSB first
        left = Signal(range(11))  # bits still to send (the one on the line included)
        m.d.comb += self.i.ready.eq((left == 0) | ((left == 1) & (timer == 0)))
        with m.If(left != 0):
            with m.If(timer == 0):
                m.d.sync += [timer.eq(self.divisor - 1), left.eq(left - 1), bits.eq(bits >> 1),
                             self.tx.eq(bits[1] | (left == 1))]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        with m.If(self.i.valid & self.i.ready):
            # start bit, data LSB first, stop bit
            m.d.sync += [bits.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))), left.eq(10),
                         self.tx.eq(0), timer.eq(self.divisor - 1)]
        return m


class UARTRx(wiring.Component):
    """Characters on ``rx`` as bytes on ``o``.

    ``rx`` goes through a two-flip-flop synchronizer; a falling edge starts a character, checked
    again half a bit later (a shorter glitch is ignored); each data bit is sampled once, in its
    middle. A byte is offered on ``o`` for one cycle, 2 to 3 cycles after the middle of its stop
    bit; ``o`` has no backpressure (``always_ready``: the consumer takes every byte). A
    character whose stop bit reads 0 (a framing error, a break) is dropped and flagged on
    ``framing_error`` (a pulse); the receiver then waits for the line to go high.
    Throughput: one byte per character time, back to back.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8, always_ready=True))
    framing_error: Out(1)

    def __init__(self, *, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        shift = Signal(8)
        n = Signal(range(9))
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM():
            with m.State("IDLE"), m.If(~rx):
                m.d.sync += timer.eq(self.divisor // 2 - 1)
                m.next = "START"
            with m.State("START"), m.If(timer == 0):
                with m.If(rx):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), n.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"), m.If(timer == 0):
                m.d.sync += [shift.eq(Cat(shift[1:], rx)), timer.eq(self.divisor - 1), n.eq(n + 1)]
                with m.If(n == 7):
                    m.next = "STOP"
            with m.State("STOP"), m.If(timer == 0):
                with m.If(rx):
                    m.d.comb += self.o.valid.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"), m.If(rx):
                m.next = "IDLE"
        m.d.comb += self.o.payload.eq(shift)
        return m

