"""A card behind a serial line (an ECP5 board's FTDI USB-UART): ``SerialTransport`` speaks the
link packets of ``hw.linkproto`` to ``hw.seriallink.SerialLink`` through pyserial, behind the
same ``Transport`` interface as the XDMA card, so ``CardDevice`` runs on it unchanged:
``actpack.open_device("serial:/dev/ttyUSB1")``.

Semantics against the ``Transport`` contract:

- ``reg_read``/``reg_write``: one ``REG_READ``/``REG_WRITE`` request each, answered when the
  card's register file has answered.
- ``submit`` keeps the job; ``wait`` streams it in ``H2C`` packets of up to the card's
  ``max_payload`` bytes (``LAST`` on the final one), each sent only after a reply that said
  ``H2C_READY`` (between them it polls ``C2H``, keeping what arrives for ``receive``, so a job
  whose answer streams out while its input streams in cannot deadlock); ``CardTimeoutError``
  when the card has not taken it all within ``timeout``.
- ``receive`` polls ``C2H`` until a reply says ``LAST``: one message, exactly what the card sent
  up to ``tlast``.
- ``flush`` drops the C2H bytes kept here and those waiting on the card.
- A ``CONTROL`` write with ``SOFT_RESET`` while a job's H2C transfer is open (a ``wait`` that
  timed out) closes that transfer with one dropped byte and ``LAST``, which the card drains, as
  the XDMA driver's kernel timeout ends a stuck DMA transfer.

Faults: a reply that does not come within ``reply_timeout`` seconds raises
``SerialTimeoutError`` (a ``CardTimeoutError``: the board stopped answering); a reply that is
corrupted or cut short, or a ``NAK`` (the card found the request corrupted, short, too long...)
raises ``SerialLinkError`` (a ``CardProtocolError``) with the ``LinkError`` in ``code``. After
either the transport waits for the line to go quiet and drops what it received, so the next
request starts clean; ``CardDevice`` resets the card before its next job.
"""

from __future__ import annotations

import time

from actpack.hw.linkproto import (
    CRC_BYTES,
    HEADER_BYTES,
    LINK_HEADER,
    LINK_VERSION,
    REPLY_SYNC,
    REQUEST_SYNC,
    LinkError,
    LinkFlags,
    LinkOp,
    pack_packet,
    unpack_packet,
)
from actpack.hw.regs import REG_SPACE, REGS

from .errors import (
    CardError,
    CardMismatchError,
    CardProtocolError,
    CardTimeoutError,
    DeviceUnavailableError,
)
from .transport import Expect, Transport

__all__ = ["DEFAULT_BAUD", "SerialLinkError", "SerialTimeoutError", "SerialTransport",
           "open_serial"]

DEFAULT_BAUD = 3_000_000  # an FT2232H's top rate; the boards' bitstreams use it (boards.ecp5)


class SerialLinkError(CardProtocolError):
    """A link packet went wrong on the wire: the card answered ``NAK`` (``code`` is the
    ``hw.linkproto.LinkError``: CRC, SHORT, LENGTH, BUSY, BAD_OP, BUS), or its reply was
    corrupted or cut short (``code`` None). Check the cable and the baud rate (the board's
    bitstream and ``baudrate=`` must agree)."""

    def __init__(self, message: str, *, code: LinkError | None = None):
        super().__init__(message)
        self.code = code


class SerialTimeoutError(CardTimeoutError):
    """The board did not answer a link request within ``reply_timeout`` seconds (unplugged,
    not configured with an actpack bitstream, or hung)."""


class SerialTransport(Transport):
    """The card's registers and streams over a serial port (see the module docstring).

    ``port``: a device path (``/dev/ttyUSB1``, a pseudo-terminal) or an open pyserial
    ``Serial``-like object (``read``, ``write``, ``reset_input_buffer``, ``close``);
    ``baudrate``: the board's rate; ``reply_timeout``: seconds a reply may take;
    ``quiet_s``: how long the line must be quiet after a fault (longer than the card's
    ``gap_cycles``).
    """

    name = "serial"

    def __init__(self, port, *, baudrate: int = DEFAULT_BAUD, reply_timeout: float = 1.0,
                 quiet_s: float = 0.05):
        self.reply_timeout = float(reply_timeout)
        self.quiet_s = float(quiet_s)
        if isinstance(port, str):
            try:
                import serial
            except ImportError as exc:
                raise DeviceUnavailableError(
                    "device 'serial' needs pyserial: pip install 'actpack[serial]'") from exc
            try:
                self._port = serial.Serial(port, baudrate=baudrate, timeout=0.01,
                                           write_timeout=self.reply_timeout)
            except (serial.SerialException, OSError) as exc:
                raise DeviceUnavailableError(f"device 'serial:{port}': cannot open it: {exc}"
                                             ) from exc
            self.path = port
        else:
            self._port, self.path = port, getattr(port, "port", repr(port))
        self._seq = 0
        self._h2c_ready = False
        self._pending: memoryview | None = None  # the submitted job's bytes not yet sent
        self._open = False  # H2C bytes of a job went out, its LAST did not
        self._c2h = bytearray()  # C2H bytes received, not yet handed out
        self._messages: list[bytes] = []
        self._rx = bytearray()
        try:
            ping = self._request(LinkOp.PING)
        except CardError as exc:
            self._port.close()
            raise DeviceUnavailableError(f"device 'serial:{self.path}': no actpack link answers "
                                         f"({exc})") from exc
        version, self.max_payload = ping.arg >> 16 & 0xFF, ping.arg & 0xFFFF
        if version != LINK_VERSION:
            self._port.close()
            raise CardMismatchError(f"device 'serial:{self.path}': the board speaks link "
                                    f"version {version}, this driver {LINK_VERSION}; load a "
                                    f"matching bitstream or actpack")

    def __repr__(self) -> str:
        return f"SerialTransport({self.path!r})"

    # ---------------------------------------------------------------- link

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self._rx) < n:
            if time.monotonic() > deadline:
                got = len(self._rx)
                self._resync()
                raise SerialTimeoutError(
                    f"device 'serial:{self.path}': the board did not answer {what} within "
                    f"{self.reply_timeout:g} s ({got} of {n} bytes of the reply)")
            chunk = self._port.read(max(1, n - len(self._rx)))
            if chunk:
                self._rx += chunk
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def _resync(self) -> None:
        """Wait until the line has been quiet for ``quiet_s`` and drop what came meanwhile."""
        self._rx.clear()
        self._h2c_ready = False
        quiet_until = time.monotonic() + self.quiet_s
        while time.monotonic() < quiet_until:
            if self._port.read(4096):
                quiet_until = time.monotonic() + self.quiet_s
        self._port.reset_input_buffer()

    def _request(self, op: LinkOp, arg: int = 0, payload=b"", flags: int = 0):
        self._seq = (self._seq + 1) & 0xFF
        what = f"{op.name} (seq {self._seq})"
        self._port.write(pack_packet(sync=REQUEST_SYNC, op=op, seq=self._seq, flags=flags,
                                     arg=arg, payload=payload))
        deadline = time.monotonic() + self.reply_timeout
        while True:
            # hunt for the reply's sync byte: an earlier, abandoned reply may precede it
            head = self._read_exact(1, deadline, what)
            if head[0] != REPLY_SYNC:
                continue
            head += self._read_exact(HEADER_BYTES - 1, deadline, what)
            h = LINK_HEADER.unpack_from(head)
            if h.length > max(getattr(self, "max_payload", 0), 4096):
                self._resync()
                raise SerialLinkError(f"device 'serial:{self.path}': the reply to {what} is "
                                      f"corrupted (length {h.length})")
            rest = self._read_exact(h.length + CRC_BYTES, deadline, what)
            try:
                reply = unpack_packet(head + rest)
            except ValueError as exc:
                self._resync()
                raise SerialLinkError(f"device 'serial:{self.path}': the reply to {what} is "
                                      f"corrupted: {exc}") from exc
            if reply.seq != self._seq:
                continue  # the late answer to a request that timed out
            break
        self._h2c_ready = bool(reply.flags & LinkFlags.H2C_READY)
        if reply.op == LinkOp.NAK:
            try:
                code = LinkError(reply.arg)
            except ValueError:
                code = None
            self._resync()
            raise SerialLinkError(f"device 'serial:{self.path}': the board refused {what}: "
                                  f"{code.name if code else reply.arg}", code=code)
        if reply.op != op:
            self._resync()
            raise SerialLinkError(f"device 'serial:{self.path}': the reply to {what} is a "
                                  f"{reply.op.name} reply")
        return reply

    def _poll(self) -> bool:
        """One C2H request; keeps its bytes; True if it brought any."""
        reply = self._request(LinkOp.C2H, self.max_payload)
        self._c2h += reply.payload
        if reply.flags & LinkFlags.LAST:
            self._messages.append(bytes(self._c2h))
            self._c2h.clear()
        return bool(reply.payload)

    # ---------------------------------------------------------------- Transport

    def reg_read(self, offset: int) -> int:
        return self._request(LinkOp.REG_READ, _offset(offset)).arg

    def reg_write(self, offset: int, value: int) -> None:
        self._request(LinkOp.REG_WRITE, _offset(offset),
                      (value & 0xFFFFFFFF).to_bytes(4, "little"))
        if (offset == REGS.CONTROL.offset and REGS.CONTROL.SOFT_RESET.get(value)
                and self._open):
            self._close_transfer()

    def _close_transfer(self) -> None:
        """End the open H2C transfer with one byte and LAST (the card drains it)."""
        self._pending = None
        deadline = time.monotonic() + self.reply_timeout
        while not self._h2c_ready:
            if time.monotonic() > deadline:
                raise SerialTimeoutError(f"device 'serial:{self.path}': the board does not take "
                                         f"H2C bytes to end the aborted transfer")
            self._poll()
        self._request(LinkOp.H2C, 0, b"\0", LinkFlags.LAST)
        self._open = False

    def submit(self, data) -> None:
        data = memoryview(data).cast("B")
        if not len(data):
            raise ValueError("data: an H2C transfer carries at least one byte")
        if self._pending is not None:
            raise CardError(f"device 'serial:{self.path}': a transfer is still pending")
        self._pending = data

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        data = self._pending
        if data is None:
            return
        if not self._h2c_ready:
            self._request(LinkOp.PING)
        while len(data):
            if self._h2c_ready:
                chunk = data[: self.max_payload]
                last = len(chunk) == len(data)
                self._request(LinkOp.H2C, 0, chunk, LinkFlags.LAST if last else 0)
                data = data[len(chunk):]
                self._pending = data if len(data) else None
                self._open = not last
                continue
            if time.monotonic() > deadline:
                raise CardTimeoutError(f"device 'serial:{self.path}': the card did not take the "
                                       f"job within {timeout:g} s ({len(data)} bytes left)")
            self._poll()
        self._pending = None

    def receive(self, expect: Expect, *, limit: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not self._messages:
            if len(self._c2h) > limit:
                raise CardProtocolError(f"the card is sending a message of more than {limit} "
                                        f"bytes ({len(self._c2h)} so far), the most this job "
                                        f"produces")
            if time.monotonic() > deadline:
                raise CardTimeoutError(f"device 'serial:{self.path}': no complete C2H message "
                                       f"within {timeout:g} s ({len(self._c2h)} bytes of one "
                                       f"received)")
            self._poll()
        return self._messages.pop(0)

    def flush(self) -> int:
        deadline = time.monotonic() + self.reply_timeout
        while time.monotonic() < deadline:
            reply = self._request(LinkOp.C2H, self.max_payload)
            self._c2h += reply.payload
            if not reply.payload and not reply.flags & LinkFlags.C2H_MORE:
                break
        dropped = len(self._c2h) + sum(len(msg) for msg in self._messages)
        self._c2h.clear()
        self._messages.clear()
        return dropped

    def close(self) -> None:
        self._port.close()


def _offset(offset: int) -> int:
    if offset % 4 or not 0 <= offset < REG_SPACE:
        raise ValueError(f"offset: a 4-byte aligned address below {REG_SPACE:#x}, got {offset:#x}")
    return offset


def open_serial(port: str, *, baudrate: int = DEFAULT_BAUD, timeout: float = 10.0,
                reset_timeout: float = 2.0, **transport_args):
    """A ``CardDevice`` on the board at serial ``port`` (``transport_args`` go to
    ``SerialTransport``: ``reply_timeout``, ``quiet_s``)."""
    from .card import CardDevice

    if not port:
        raise DeviceUnavailableError("device 'serial' needs a port: 'serial:/dev/ttyUSB1'")
    transport = SerialTransport(port, baudrate=baudrate, **transport_args)
    try:
        return CardDevice(transport, name=f"serial:{port}", timeout=timeout,
                          reset_timeout=reset_timeout)
    except BaseException:
        transport.close()
        raise
