"""A stand-in card top for the simulated card's own tests: the card's ports, an echo inside.

``LoopbackCard(stream_bytes=n)`` has exactly the ports of the card top (``hw.card.Card``), so the
simulated-card link (``host.simcard.SimTransport`` and its server ``sim.card_server``) is tested
without the card's engines:

- ``bus``: the card's ``hw.regfile.RegisterFile`` (AXI4-Lite slave) with
  ``CardConfig(caps=Caps(stream_bytes=n))``: MAGIC, VERSION, CAPS, CONFIG_HASH, BUFFER_KIB read as
  on the card, CONTROL/SCRATCH/TABLE/IRQ_ENABLE are plain RW words, STATUS and LAST_TAG read 0;
- ``h2c`` -> a 16-beat FIFO -> ``c2h``: every beat comes back unchanged (data, keep, last), so an
  H2C packet returns as one C2H message of the same bytes. ``h2c.ready`` is low while
  CONTROL.RUN is 0 (the card's "H2C stalls"), so a test can see ``wait`` time out;
- counters: FRAMES counts H2C packets (beats with ``last``), BYTES_IN the kept H2C bytes;
  IRQ_STATUS.JOB_DONE is set at each packet's end, and ``irq`` follows the register file.

Throughput: one beat per cycle each way; latency two cycles (the FIFO's buffered read port).
SOFT_RESET and CLEAR_COUNTERS act as the register file defines; nothing else is reset by them.
"""

from amaranth.hdl import Module
from amaranth.lib import fifo, wiring

from ..hw.card import card_ports
from ..hw.regfile import RegisterFile
from ..hw.regs import Caps, CardConfig

__all__ = ["LoopbackCard"]


class LoopbackCard(wiring.Component):
    """The card's ports (``bus``, ``h2c``, ``c2h``, ``irq``) around an H2C -> C2H echo."""

    def __init__(self, *, stream_bytes: int = 64, depth: int = 16):
        ports = card_ports(stream_bytes)  # validates stream_bytes
        if depth < 2:
            raise ValueError(f"depth: at least 2 beats, got {depth}")
        self.stream_bytes = stream_bytes
        self.depth = depth
        self.config = CardConfig(caps=Caps(stream_bytes=stream_bytes))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.regs = regs = RegisterFile(config=self.config)
        wiring.connect(m, wiring.flipped(self.bus), regs.bus)

        m.submodules.fifo = echo = fifo.SyncFIFOBuffered(width=self.h2c.payload.shape().size,
                                                         depth=self.depth)
        take = self.h2c.valid & self.h2c.ready
        m.d.comb += [
            # FIFO ports by hand: the stream's payload is a struct, the FIFO's a plain word.
            self.h2c.ready.eq(echo.w_rdy & regs.control.run),
            echo.w_data.eq(self.h2c.payload),
            echo.w_en.eq(take),
            self.c2h.payload.eq(echo.r_data),
            self.c2h.valid.eq(echo.r_rdy),
            echo.r_en.eq(self.c2h.ready),
            regs.frames_inc.eq(take & self.h2c.payload.last),
            regs.bytes_in_inc.eq(sum(bit & take for bit in self.h2c.payload.keep)),
            regs.irq_set.job_done.eq(take & self.h2c.payload.last),
            self.irq.eq(regs.irq),
        ]
        return m
