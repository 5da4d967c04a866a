"""cocotb stream driver and monitor for Amaranth ``lib.stream`` ports.

Amaranth flattens a stream member ``i`` of a component to ``i__payload``, ``i__valid`` and
``i__ready``. ``StreamSource`` drives such an input, ``StreamSink`` accepts an output; payloads are
packed and unpacked with the Amaranth layout the gateware uses: ``LayoutCodec`` reads field
offsets and shapes from the layout and checks itself against ``layout.const(...).as_bits()`` and
``layout.from_bits(...)`` (which are ~80 us a row, too slow to call every cycle), so the testbench
cannot drift from the hardware's bit order.

Timing discipline (one pass per clock cycle): after the rising edge the driver writes its
outputs, then in the ``ReadOnly`` phase, when everything has settled, it samples the handshake. A
transfer is recorded when ``valid`` and ``ready`` are both high in that phase, i.e. it happens at
the next rising edge; its cycle number is the count of rising edges since time zero.

Pause generators: ``idle`` (source: keep ``valid`` low this cycle before offering the next item)
and ``backpressure`` (sink: keep ``ready`` low this cycle) are iterables of booleans;
``random_pauses(rng, p)`` yields True with probability ``p``. The source never drops ``valid``
before its transfer, and the sink checks that the device under test does not either (stream
rule: ``valid`` and ``payload`` hold until accepted).
"""

import collections
import itertools

import cocotb
import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["LayoutCodec", "StreamSink", "StreamSource", "StreamTB", "random_pauses"]


class LayoutCodec:
    """Fast pack/unpack of a flat ``data.ArrayLayout`` or ``data.StructLayout`` (fields of plain
    shapes): a list of ints (array) or a dict (struct) <-> the payload's bits as an int."""

    def __init__(self, layout: data.Layout, *, check_rng=None):
        self.layout = layout
        self.struct = not isinstance(layout, data.ArrayLayout)
        self.fields = []
        for key, field in layout:
            if isinstance(field.shape, data.Layout):
                raise TypeError(f"field {key!r}: nested layout {field.shape!r} is not supported")
            shape = Shape.cast(field.shape)
            self.fields.append((key, field.offset, shape.width, shape.signed))
        rng = check_rng if check_rng is not None else np.random.default_rng(0)
        for _ in range(8):
            bits = int.from_bytes(rng.bytes(-(-layout.size // 8)), "little") % (1 << layout.size)
            value = self.unpack(bits)
            if value != self._reference_unpack(bits) or self.pack(value) != (
                    layout.const(value).as_bits()):
                raise AssertionError(f"LayoutCodec disagrees with Amaranth on {layout!r}")

    def _reference_unpack(self, bits):
        view = self.layout.from_bits(bits)
        if self.struct:
            return {key: view[key] for key, *_ in self.fields}
        return list(view)

    def pack(self, value) -> int:
        bits = 0
        for key, offset, width, _ in self.fields:
            bits |= (int(value[key]) & ((1 << width) - 1)) << offset
        return bits

    def unpack(self, bits: int):
        out = {} if self.struct else []
        for key, offset, width, signed in self.fields:
            v = (bits >> offset) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            if self.struct:
                out[key] = v
            else:
                out.append(v)
        return out


def random_pauses(rng, probability: float):
    """Endless booleans, True with ``probability`` (``rng``: a ``numpy.random.Generator``)."""
    while True:
        yield from (rng.random(256) < probability).tolist()


def _never():
    return itertools.repeat(False)


class _Port:
    def __init__(self, dut, prefix, layout, period_ns):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.codec = LayoutCodec(layout)
        self.clk = dut.clk
        self.period_ns = period_ns
        self.transfers: list[int] = []  # cycle number of each transfer
        self._task = None

    def cycle(self) -> int:
        return round(get_sim_time("ns") / self.period_ns)

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None


class StreamSource(_Port):
    """Drives an Amaranth stream input ``<prefix>__{payload,valid}``."""

    def __init__(self, dut, prefix, layout, *, period_ns, idle=None):
        super().__init__(dut, prefix, layout, period_ns)
        self.queue: collections.deque = collections.deque()
        self.idle = iter(idle) if idle is not None else _never()
        self.valid.value = 0
        self._busy = False

    def send(self, items):
        """Queue payloads (each a list of ints for an array layout, a dict for a struct). Values
        must fit their fields: out-of-range values are a testbench bug, not wrapped."""
        for item in items:
            bits = self.codec.pack(item)
            if self.codec.unpack(bits) != (list(item) if not self.codec.struct else dict(item)):
                raise ValueError(f"payload {item!r} does not fit {self.codec.layout!r}")
            self.queue.append(bits)

    @property
    def done(self) -> bool:
        return not self.queue and not self._busy

    def start(self):
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        edge, settled = RisingEdge(self.clk), ReadOnly()
        while True:
            await edge
            if not self._busy:
                if self.queue and not next(self.idle):
                    self.payload.value = self.queue.popleft()
                    self.valid.value = 1
                    self._busy = True
                else:
                    self.valid.value = 0
            await settled
            if self._busy and self.ready.value:
                self.transfers.append(self.cycle())
                self._busy = False

    async def wait_done(self, timeout_cycles: int):
        edge = RisingEdge(self.clk)
        for _ in range(timeout_cycles):
            if self.done:
                return
            await edge
        raise TimeoutError(f"source still holds {len(self.queue) + self._busy} items "
                           f"after {timeout_cycles} cycles")


class StreamSink(_Port):
    """Accepts an Amaranth stream output ``<prefix>__{payload,valid}``, driving ``__ready``."""

    def __init__(self, dut, prefix, layout, *, period_ns, backpressure=None):
        super().__init__(dut, prefix, layout, period_ns)
        self.queue: collections.deque = collections.deque()
        self.backpressure = iter(backpressure) if backpressure is not None else _never()
        self.ready.value = 0
        self.violations: list[str] = []

    @property
    def empty(self) -> bool:
        return not self.queue

    def start(self):
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        edge, settled = RisingEdge(self.clk), ReadOnly()
        held = None  # payload offered but not accepted in the previous cycle
        while True:
            await edge
            ready = not next(self.backpressure)
            self.ready.value = int(ready)
            await settled
            valid = bool(self.valid.value)
            if held is not None:
                if not valid:
                    self.violations.append(f"cycle {self.cycle()}: valid dropped before transfer")
                elif self.payload.value.to_unsigned() != held:
                    self.violations.append(f"cycle {self.cycle()}: payload changed while stalled")
            held = None
            if valid:
                bits = self.payload.value.to_unsigned()
                if ready:
                    self.queue.append(self.codec.unpack(bits))
                    self.transfers.append(self.cycle())
                else:
                    held = bits

    async def recv(self, count: int, timeout_cycles: int) -> list:
        """The next ``count`` payloads (lists of ints), waiting up to ``timeout_cycles``."""
        edge = RisingEdge(self.clk)
        for _ in range(timeout_cycles):
            if len(self.queue) >= count:
                break
            await edge
        else:
            raise TimeoutError(f"sink got {len(self.queue)} of {count} items "
                               f"in {timeout_cycles} cycles")
        return [self.queue.popleft() for _ in range(count)]


class StreamTB:
    """Clock, reset and the stream ports of one device under test.

    ``clk``/``rst`` are Amaranth's default sync domain ports (synchronous, active-high reset).
    """

    PERIOD_NS = 10

    def __init__(self, dut):
        self.dut = dut
        self.sources: list[StreamSource] = []
        self.sinks: list[StreamSink] = []
        Clock(dut.clk, self.PERIOD_NS, unit="ns").start()

    def source(self, prefix, layout, *, idle=None) -> StreamSource:
        s = StreamSource(self.dut, prefix, layout, period_ns=self.PERIOD_NS, idle=idle)
        self.sources.append(s)
        return s

    def sink(self, prefix, layout, *, backpressure=None) -> StreamSink:
        s = StreamSink(self.dut, prefix, layout, period_ns=self.PERIOD_NS,
                       backpressure=backpressure)
        self.sinks.append(s)
        return s

    async def reset(self, cycles: int = 2):
        edge = RisingEdge(self.dut.clk)
        self.dut.rst.value = 1
        for _ in range(cycles):
            await edge
        self.dut.rst.value = 0
        await edge
        for port in (*self.sources, *self.sinks):
            port.start()

    async def cycles(self, n: int):
        edge = RisingEdge(self.dut.clk)
        for _ in range(n):
            await edge

    async def finish(self, drain_cycles: int):
        """Let the device run ``drain_cycles`` more with every sink ready, then check that no
        sink received anything unexpected and no stream rule was broken; stop the ports."""
        for sink in self.sinks:
            sink.backpressure = _never()
        await self.cycles(drain_cycles)
        for sink in self.sinks:
            assert not sink.violations, f"stream rule broken: {sink.violations[:5]}"
            assert sink.empty, f"sink holds {len(sink.queue)} unexpected items after the run"
        for port in (*self.sources, *self.sinks):
            port.stop()
