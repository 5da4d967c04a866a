"""Lattice ECP5-5G Evaluation Board (LFE5UM5G-85F, CABGA381, speed 8): the card behind the
board's FT2232H USB-UART at 3 Mbaud, clocked by the 12 MHz oscillator (4 clock cycles a bit).

The FT2232H's channel B reaches the FPGA's UART pins (P2, P3) only after swapping two resistor
jumpers (R34/R35 -> R21/R22, the board's user guide section 6.2) and, on boards whose FTDI
EEPROM sets channel B to FIFO mode, reprogramming it to UART (e.g. with
https://github.com/trabucayre/fixFT2232_ecp5evn); the host then sees ``/dev/ttyUSB1``.
"""

from amaranth_boards.ecp5_5g_evn import ECP55GEVNPlatform

from actpack.codec.spec import Mode

from .ecp5_board import ECP5Board

__all__ = ["BOARD", "ECP5EVNCardPlatform"]


class ECP5EVNCardPlatform(ECP55GEVNPlatform):
    """The amaranth-boards platform as the card uses it: the default banks (VCCIO1 2.5 V,
    VCCIO6 3.3 V for the UART pins), the 12 MHz clock, the reset button."""


BOARD = ECP5Board(
    name="ecp5_5g_evn", title="Lattice ECP5-5G Evaluation Board", platform=ECP5EVNCardPlatform,
    baud=3_000_000, modes=(Mode.SFPR8, Mode.MASK), lut4=83_640, mult18=156, dp16kd=208,
    link="FT2232H channel B, 3 Mbaud: serial:/dev/ttyUSB1")
