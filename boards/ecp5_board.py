"""What an ECP5 board file declares (``ECP5Board``); ``boards.ecp5`` builds them."""

from __future__ import annotations

from dataclasses import dataclass

from actpack.codec.spec import Mode

__all__ = ["ECP5Board"]


@dataclass(frozen=True)
class ECP5Board:
    """One board: ``platform`` (an amaranth-boards platform class, subclassed in the board's
    file), the UART link's ``baud`` (the board's FTDI; the bitstream runs its UART at it),
    ``modes`` (the default build: what fits), and the part's capacity."""

    name: str
    title: str
    platform: type
    baud: int
    modes: tuple[Mode, ...]
    lut4: int
    mult18: int
    dp16kd: int
    link: str  # how the host reaches it

    @property
    def part(self) -> str:
        return self.platform.device
