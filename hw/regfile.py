"""The card's register file: ``hw.regs.REGS`` as an AXI4-Lite slave, built from the map.

Every register, field, access type and reset value comes from ``hw.regs`` (nothing is repeated
here): constants (MAGIC, VERSION, CAPS, CONFIG_HASH, BUFFER_KIB) from a ``CardConfig``, RW
registers as outputs (``StructLayout`` views from ``regs.field_layout``), card-owned RO words as
inputs, IRQ_STATUS as W1C bits set by ``irq_set``, the 64-bit counters as adders fed by
``<name>_inc``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .regs import REG_SPACE, REGS, CardConfig, field_layout

__all__ = ["AXI4Lite", "RegisterFile"]

_ADDR_WIDTH = (REG_SPACE - 1).bit_length()
_CONSTANTS = ("MAGIC", "VERSION", "CAPS", "CONFIG_HASH", "BUFFER_KIB")
_CARD_WORDS = ("STATUS", "LAST_TAG")  # RO words the card drives
_COUNTERS = [r for r in REGS if r.width == 64]


class AXI4Lite(wiring.Signature):
    """AXI4-Lite with 32-bit data, seen from the master (the XDMA core's ``M_AXI_LITE``)."""

    def __init__(self, *, addr_width: int = _ADDR_WIDTH):
        if addr_width < _ADDR_WIDTH:
            raise ValueError(f"addr_width: at least {_ADDR_WIDTH} bits cover the register "
                             f"space, got {addr_width}")
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


def _port(name: str) -> str:
    return name.lower()


class RegisterFile(wiring.Component):
    """``hw.regs.REGS`` behind an AXI4-Lite slave port ``bus``.

    Card-side ports: ``control``, ``irq_enable``, ``scratch`` (RW, ``Out``; CONTROL's pulse
    fields SOFT_RESET and CLEAR_COUNTERS are high for exactly the cycle after the write);
    ``table`` (``Out``, 64 x u8, row-major ``8v+u``); ``status`` and ``last_tag`` (``In``);
    ``irq_set`` (``In``, IRQ_STATUS layout: bits to set this cycle); ``irq`` (``Out``:
    ``IRQ_STATUS & IRQ_ENABLE`` non-zero); ``<counter>_inc`` (``In``, 16 bits: added this cycle).

    Bus contract: a write is taken when AW and W are both valid (``awready``/``wready`` high for
    that cycle), answered with ``bvalid`` the next cycle and held until ``bready``; a read is
    taken when ``arvalid`` and no read answer is pending, and ``rdata``/``rvalid`` follow the next
    cycle and are held until ``rready``. Latency 1 cycle each way; one write and one read may be
    in flight at once. ``wstrb`` selects bytes of RW words and of W1C clears. Every response is
    OKAY: writes to RO words and holes are ignored, holes read 0.

    IRQ_STATUS: ``irq_set`` wins over a W1C clear of the same bit in the same cycle; SOFT_RESET
    clears it. CLEAR_COUNTERS zeroes the counters (an increment in that cycle is lost). 64-bit
    counters are read LO and HI directly: the host reads HI, LO, HI (``regs.read64``).
    """

    def __init__(self, *, config: CardConfig | None = None, addr_width: int = _ADDR_WIDTH):
        if config is not None and not isinstance(config, CardConfig):
            raise TypeError(f"config: expected a CardConfig, got {type(config).__name__}")
        self.config = config if config is not None else CardConfig()
        ports = {
            "bus": In(AXI4Lite(addr_width=addr_width)),
            "control": Out(field_layout(REGS.CONTROL)),
            "irq_enable": Out(field_layout(REGS.IRQ_ENABLE)),
            "scratch": Out(32),
            "table": Out(data.ArrayLayout(8, 4 * REGS.TABLE.count)),
            "status": In(field_layout(REGS.STATUS)),
            "last_tag": In(32),
            "irq_set": In(field_layout(REGS.IRQ_STATUS)),
            "irq": Out(1),
        }
        ports.update({f"{_port(r.name)}_inc": In(16) for r in _COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        words = self.config.reset_words()
        control = REGS.CONTROL
        pulses = Const(control.pulse_mask, 32)

        # Storage: RW words (with reset values from the map), W1C word, counters.
        ctl = Signal(32, init=control.reset_value)
        irq_en = Signal(32, init=REGS.IRQ_ENABLE.reset_value)
        scratch = Signal(32, init=REGS.SCRATCH.reset_value)
        table = [Signal(32, name=f"table{k}") for k in range(REGS.TABLE.count)]
        irq_status = Signal(32, init=REGS.IRQ_STATUS.reset_value)
        counters = {r.name: Signal(64, name=_port(r.name)) for r in _COUNTERS}
        m.d.comb += [
            self.control.as_value().eq(ctl),
            self.irq_enable.as_value().eq(irq_en),
            self.scratch.eq(scratch),
            self.table.as_value().eq(Cat(*table)),
            self.irq.eq((irq_status & irq_en).any()),
        ]
        rw = {control.offset: ctl, REGS.IRQ_ENABLE.offset: irq_en,
              REGS.SCRATCH.offset: scratch}
        rw.update(zip(REGS.TABLE.words, table, strict=True))

        # Read mux: every word of the map at its offset.
        readable = {REGS[n].offset: Const(words[REGS[n].offset], 32) for n in _CONSTANTS}
        readable.update(rw)
        readable[REGS.STATUS.offset] = self.status.as_value()
        readable[REGS.LAST_TAG.offset] = self.last_tag
        readable[REGS.IRQ_STATUS.offset] = irq_status
        for r in _COUNTERS:
            readable[r.lo], readable[r.hi] = counters[r.name][:32], counters[r.name][32:]
        covered = {w for r in REGS for w in r.words}
        if set(readable) != covered:
            raise AssertionError("register file does not cover the map")  # a map change

        rvalid = Signal()
        rdata = Signal(32)
        m.d.comb += [bus.arready.eq(~rvalid), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata),
                     bus.rresp.eq(0)]
        with m.If(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        with m.If(bus.arvalid & ~rvalid):
            m.d.sync += rvalid.eq(1)
            with m.Switch(bus.araddr[2:]):
                for offset, value in readable.items():
                    with m.Case(offset >> 2):
                        m.d.sync += rdata.eq(value)
                with m.Default():
                    m.d.sync += rdata.eq(0)

        bvalid = Signal()
        take = Signal()
        mask = Signal(32)
        m.d.comb += [
            take.eq(bus.awvalid & bus.wvalid & ~bvalid),
            bus.awready.eq(take), bus.wready.eq(take),
            bus.bvalid.eq(bvalid), bus.bresp.eq(0),
            mask.eq(Cat(*(b.replicate(8) for b in bus.wstrb))),
        ]
        with m.If(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)

        # Pulses last one cycle; the write below (later in program order) may set them again.
        m.d.sync += ctl.eq(ctl & ~pulses)
        w1c = Signal(32)
        with m.If(take):
            m.d.sync += bvalid.eq(1)
            with m.Switch(bus.awaddr[2:]):
                for offset, reg in rw.items():
                    with m.Case(offset >> 2):
                        m.d.sync += reg.eq((reg & ~mask) | (bus.wdata & mask))
                with m.Case(REGS.IRQ_STATUS.offset >> 2):
                    m.d.comb += w1c.eq(bus.wdata & mask)

        soft_reset = self.control.soft_reset
        m.d.sync += irq_status.eq((irq_status & ~w1c) | self.irq_set.as_value())
        with m.If(soft_reset):
            m.d.sync += irq_status.eq(self.irq_set.as_value())
        clear = self.control.clear_counters
        for r in _COUNTERS:
            inc = getattr(self, f"{_port(r.name)}_inc")
            m.d.sync += counters[r.name].eq(counters[r.name] + inc)
            with m.If(clear):
                m.d.sync += counters[r.name].eq(0)
        return m

