"""SQRL Acorn CLE-215+ / RHS NiteFury II: xc7a200t-fbg484-2 on an M.2 card, PCIe Gen2 x4.

The platform is amaranth-boards' ``NitefuryIIPlatform`` with its ``pcie`` resource replaced:
upstream declares PERST# (``rst``) an output and gives the reference clock an I/O standard,
which an MGT reference-clock pin does not take. Pins as upstream (and litex-boards'
``sqrl_acorn``): refclk F6/E6 (MGTREFCLK0 of quad 216), PERST# J1, CLKREQ# G1, lanes 0..3 RX
B10/A10 B8/A8 D11/C11 D9/C9, TX B6/A6 B4/A4 D5/C5 D7/C7.

Link: Gen2 x4 with a 128-bit AXI-Stream at 125 MHz (the XDMA core's other choice for Gen2 x4,
64 bits at 250 MHz, would ask the card for twice the clock). The part has 134,600 LUT6, 740
DSP48E1 and 365 RAMB36 (~1.6 MiB): by the estimate in docs/boards.md every mode on one dtype
fits (4 engine pairs). The frame buffer defaults to 64 KiB, what fits while the card's buffers
are read combinationally (LUT RAM); up to 1 MiB once they are block RAM.
"""

from amaranth.build import Attrs, Clock, DiffPairs, PinsN, Resource, Subsignal
from amaranth_boards.nitefury import NitefuryIIPlatform

from . import register
from .pcie import PcieBoard, XdmaLink

__all__ = ["NITEFURY", "NitefuryPciePlatform"]


class NitefuryPciePlatform(NitefuryIIPlatform):
    """``NitefuryIIPlatform`` with a ``pcie`` resource an endpoint can use (see module)."""

    resources = [r for r in NitefuryIIPlatform.resources if r.name != "pcie"] + [
        Resource("pcie", 0,
                 Subsignal("clkreq", PinsN("G1", dir="o"), Attrs(IOSTANDARD="LVCMOS33")),
                 Subsignal("perst", PinsN("J1", dir="i"),
                           Attrs(IOSTANDARD="LVCMOS33", PULLUP="TRUE")),
                 Subsignal("clk", DiffPairs(p="F6", n="E6", dir="i"), Clock(100e6)),
                 Subsignal("rx", DiffPairs(p="B10 B8 D11 D9", n="A10 A8 C11 C9", dir="i")),
                 Subsignal("tx", DiffPairs(p="B6 B4 D5 D7", n="A6 A4 C5 C7", dir="o"))),
    ]


class _Nitefury(PcieBoard):
    name = "nitefury"
    title = "SQRL Acorn CLE-215+ / NiteFury II"
    platform = NitefuryPciePlatform
    xdma = XdmaLink(gen=2, lanes=4, axi_bits=128, axi_mhz=125)
    # docs/boards.md "Area estimate": ~39k LUT6 for a one-engine-pair card, ~25k a pair more
    max_engines = 4
    buffer_kib = 64
    max_buffer_kib = 1024
    # the platform's own toolchain_prepare adds CFGBVS / CONFIG_VOLTAGE 3.3 and the SPI flash
    # image; nothing more is needed here
    board_constraints = ()


NITEFURY = register(_Nitefury())
