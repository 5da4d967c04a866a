"""Lattice ECP5-5G Evaluation Board (LFE5UM5G-85F, CABGA381, speed 8): the card behind the
board's FT2232H USB-UART at 3 Mbaud, clocked by the 12 MHz oscillator (4 clock cycles a bit).

The FT2232H's channel B reaches the FPGA's UART pins (P2, P3) only after swapping two resistor
jumpers (R34/R35 -> R21/R22, the board's user guide section 6.2) and, on boards whose FTDI
EEPROM sets channel B to FIFO mode, reprogramming it to UART (e.g. with
https://github.com/trabucayre/fixFT2232_ecp5evn); the host then sees ``/dev/ttyUSB1``.
"""

from amaranth_boards.ecp5_5g_evn import ECP55GEVNPlatform

from . import register
from .ecp5 import ECP5Board

__all__ = ["ECP5_5G_EVN", "ECP5EVNCardPlatform"]


class ECP5EVNCardPlatform(ECP55GEVNPlatform):
    """The amaranth-boards platform as the card uses it: the default banks (VCCIO1 2.5 V,
    VCCIO6 3.3 V for the UART pins), the 12 MHz clock, the reset button."""


class _ECP5EVN(ECP5Board):
    name = "ecp5_5g_evn"
    title = "Lattice ECP5-5G Evaluation Board"
    platform = ECP5EVNCardPlatform
    baud = 3_000_000
    link = "FT2232H channel B, 3 Mbaud: serial:/dev/ttyUSB1"
    lut4, mult18, dp16kd = 83_640, 156, 208


ECP5_5G_EVN = register(_ECP5EVN())
