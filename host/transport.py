"""The register-level link between the driver and a card, whatever carries it.

``Transport`` is what ``actpack.host.card.CardDevice`` is written against: 32-bit register reads
and writes (``hw.regs.REGS``), one H2C transfer per job (``submit``/``wait``) and one C2H message
per job (``receive``). Implementations: ``host.xdma.XdmaTransport`` (a PCIe card through the
Xilinx XDMA character devices, or the emulated nodes of ``host.xdma.XdmaEmulator``),
``host.cardmodel.ModelTransport`` (the behavioural card model in-process) and
``host.simcard.SimTransport`` (the RTL card under Verilator in a separate process).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from actpack.hw.regs import REGS, Caps, Register, read64

__all__ = ["Expect", "Transport"]

# How ``receive`` knows a message is complete when the link splits it: called with the bytes
# received so far, returns the message's total length once it can tell (else None).
Expect = Callable[[bytes], "int | None"]


class Transport(abc.ABC):
    """A card's registers and data streams. Not thread-safe: one job at a time (the driver
    holds a lock). Close it (or use it as a context manager) to stop its threads."""

    name = "transport"

    @abc.abstractmethod
    def reg_read(self, offset: int) -> int:
        """The 32-bit word at byte ``offset`` (4-byte aligned)."""

    @abc.abstractmethod
    def reg_write(self, offset: int, value: int) -> None:
        """Write the 32-bit word at byte ``offset`` (4-byte aligned)."""

    @abc.abstractmethod
    def submit(self, data) -> None:
        """Start streaming ``data`` (bytes-like, one job) to the card, ending with ``tlast``.
        Returns at once; ``wait`` says when the card has taken all of it."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> None:
        """Block until the last ``submit`` has been taken by the card; ``CardTimeoutError``
        after ``timeout`` seconds."""

    @abc.abstractmethod
    def receive(self, expect: Expect, *, limit: int, timeout: float) -> bytes:
        """The next C2H message (up to ``tlast``; ``expect`` completes it if the link splits
        it). ``CardTimeoutError`` after ``timeout`` seconds without a complete message,
        ``CardProtocolError`` if it would exceed ``limit`` bytes."""

    @abc.abstractmethod
    def flush(self) -> int:
        """Drop C2H bytes already received but not yet read (after a soft reset); returns how
        many were dropped."""

    def close(self) -> None:  # noqa: B027 - optional for transports without resources
        """Release files, mappings and threads."""

    # ---------------------------------------------------------------- helpers on the map

    def read(self, reg: Register) -> int:
        """A register's value: 64-bit counters consistently (``regs.read64``)."""
        if reg.width == 64:
            return read64(self.reg_read, reg)
        return self.reg_read(reg.offset)

    def write(self, reg: Register, value: int) -> None:
        self.reg_write(reg.offset, value)

    def caps(self) -> Caps:
        """The card's capabilities (CAPS)."""
        return Caps.from_word(self.reg_read(REGS.CAPS.offset))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
