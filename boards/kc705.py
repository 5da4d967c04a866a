"""Xilinx KC705: xc7k325t-ffg900-2 on a PCIe x8 card, run at Gen2 x8.

The platform is amaranth-boards' ``KC705Platform``, which has no ``pcie`` resource; it is added
here from the board's user guide (UG810) as litex-boards' ``xilinx_kc705`` has it: refclk U8/U7
(MGTREFCLK0 of quad 116), PERST# G25 (LVCMOS25), lanes 0..7 RX M6/M5 P6/P5 R4/R3 T6/T5 V6/V5
W4/W3 Y6/Y5 AA4/AA3, TX L4/L3 M2/M1 N4/N3 P2/P1 T2/T1 U4/U3 V2/V1 Y2/Y1.

Link: Gen2 x8, which the 7-series XDMA core serves with a 128-bit AXI-Stream at 250 MHz: the
card must close timing at 250 MHz here (the Artix-7 board runs it at 125 MHz). The part has
203,800 LUT6, 840 DSP48E1 and 445 RAMB36 (~2 MiB): by the estimate in docs/boards.md, 6 engine
pairs fit (every mode on one dtype, or three modes on two). Frame buffer as the NiteFury's: 64 KiB
by default, up to 1.5 MiB once the card's buffers are block RAM.
"""

from amaranth.build import Attrs, Clock, DiffPairs, PinsN, Resource, Subsignal
from amaranth_boards.kc705 import KC705Platform

from . import register
from .pcie import PcieBoard, XdmaLink

__all__ = ["KC705", "KC705PciePlatform"]


class KC705PciePlatform(KC705Platform):
    """``KC705Platform`` with the PCIe edge connector as a ``pcie`` resource (see module)."""

    # a class-level list, as every amaranth-boards platform declares its resources
    resources = [*KC705Platform.resources,  # noqa: RUF012
                 Resource("pcie", 0,
                          Subsignal("perst", PinsN("G25", dir="i"), Attrs(IOSTANDARD="LVCMOS25")),
                          Subsignal("clk", DiffPairs(p="U8", n="U7", dir="i"), Clock(100e6)),
                          Subsignal("rx", DiffPairs(p="M6 P6 R4 T6 V6 W4 Y6 AA4",
                                                    n="M5 P5 R3 T5 V5 W3 Y5 AA3", dir="i")),
                          Subsignal("tx", DiffPairs(p="L4 M2 N4 P2 T2 U4 V2 Y2",
                                                    n="L3 M1 N3 P1 T1 U3 V1 Y1", dir="o")))]


class _KC705(PcieBoard):
    name = "kc705"
    title = "Xilinx KC705 (Kintex-7)"
    platform = KC705PciePlatform
    xdma = XdmaLink(gen=2, lanes=8, axi_bits=128, axi_mhz=250)
    # docs/boards.md "Area estimate": ~39k LUT6 for a one-engine-pair card, ~25k a pair more
    max_engines = 6
    buffer_kib = 64
    max_buffer_kib = 1536
    # bank 0 at 2.5 V (UG810), as the board's own example designs set it
    board_constraints = ("set_property CFGBVS VCCO [current_design]",
                         "set_property CONFIG_VOLTAGE 2.5 [current_design]",
                         "set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]")


KC705 = register(_KC705())
