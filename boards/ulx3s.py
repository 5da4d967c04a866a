"""Radiona ULX3S with the LFE5U-85F (CABGA381, speed 6): the card behind the board's FT231X
USB-UART (the ``US1`` port) at 1 Mbaud, clocked by the 25 MHz oscillator (25 clock cycles a
bit: the FT231X's 3 Mbaud does not divide 25 MHz within 2 %).

The ULX3S's FTDI also drives the FPGA's configuration (``fujprog`` / ``openFPGALoader -b
ulx3s``); after loading the bitstream the same port is the card's serial link:
``serial:/dev/ttyUSB0`` with ``baudrate=1_000_000``.
"""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from . import register
from .ecp5 import ECP5Board

__all__ = ["ULX3S", "ULX3SCardPlatform"]


class ULX3SCardPlatform(ULX3S_85F_Platform):
    """The amaranth-boards ULX3S-85F platform as the card uses it: the 25 MHz clock, no reset
    pin (the clock domain's power-on reset), the FTDI's ``uart`` 0."""


class _ULX3S(ECP5Board):
    name = "ulx3s"
    title = "Radiona ULX3S (LFE5U-85F)"
    platform = ULX3SCardPlatform
    baud = 1_000_000
    link = "FT231X (US1), 1 Mbaud: serial:/dev/ttyUSB0"
    lut4, mult18, dp16kd = 83_640, 156, 208


ULX3S = register(_ULX3S())
