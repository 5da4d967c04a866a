"""The serial link's packets: the card's register reads and writes and its two data streams over
a byte pipe (a USB-UART), one definition for the gateware (``hw.seriallink``), the host driver
(``host.serialcard``) and the tests.

ECP5 boards have no open PCIe core; their host link is the board's FTDI USB-UART. The link
carries what the XDMA core gives the driver on a PCIe card: AXI4-Lite register accesses and the
AXI4-Stream jobs in both directions (docs/card.md 3), in packets that are strictly request (host)
-> reply (card), one at a time::

    packet = header (12 bytes, LINK_HEADER) | payload (``length`` bytes) | CRC32C (u32, LE)

The CRC32C covers the header and the payload (``crc32c_of(header + payload)``, appended
little-endian: the receiver checks the residue over all of it). Requests start with
``REQUEST_SYNC``, replies with ``REPLY_SYNC`` (an echo of the host's bytes is never a reply).

=============  ==========================  ===============  =====================================
op             request ``arg``             request payload  reply
=============  ==========================  ===============  =====================================
``PING``       0                           none             ``arg`` = ``link_word(max_payload)``
``REG_READ``   register byte offset        none             ``arg`` = the 32-bit value
``REG_WRITE``  register byte offset        u32 value        ``arg`` = 0
``H2C``        0                           1..max_payload   ``arg`` = 0, once the bytes are in
                                           job bytes;       the card's buffer (CRC checked);
                                           ``LAST`` ends    the card streams them on ``h2c``,
                                           the job (tlast)  ``LAST`` on the final one
``C2H``        most bytes wanted           none             up to ``arg`` bytes of the ``c2h``
                                                            stream as payload; ``LAST`` when
                                                            they end a message (tlast)
(reply only)   ``NAK``                                      ``arg`` = ``LinkError``
=============  ==========================  ===============  =====================================

Every reply's ``flags`` carry ``H2C_READY`` (the card can take an H2C packet of ``max_payload``
bytes now) and ``C2H_MORE`` (C2H bytes are waiting). Flow control is by credit: the host sends
H2C only after a reply that said ``H2C_READY``, and otherwise polls with ``C2H`` (which also
drains the card's output, so a job whose answer streams out while its input streams in never
deadlocks). An H2C packet the card has no room for is answered ``NAK BUSY`` and dropped.

Faults on the wire never hang the card: a CRC mismatch is answered ``NAK CRC``; a packet whose
bytes stop for ``gap`` (the card's ``gap_cycles``) before its end is answered ``NAK SHORT``; a
``length`` over ``max_payload`` or wrong for the op ``NAK LENGTH``; an unknown op ``NAK BAD_OP``.
After a NAK the card drops bytes until the line has been quiet for ``gap``, then hunts for the
next ``REQUEST_SYNC``. A request lost on the wire gets no reply: the host times out.
"""

from __future__ import annotations

import enum

from actpack.codec.frame import crc32c_of
from actpack.codec.layout import Field, Layout

__all__ = [
    "CRC_BYTES",
    "HEADER_BYTES",
    "LINK_HEADER",
    "LINK_VERSION",
    "REPLY_SYNC",
    "REQUEST_SYNC",
    "LinkError",
    "LinkFlags",
    "LinkOp",
    "LinkPacket",
    "link_word",
    "pack_packet",
    "packet_length",
    "unpack_packet",
]

LINK_VERSION = 1  # bump on any change below (the PING reply carries it)
REQUEST_SYNC = 0xA5  # first byte of a host -> card packet
REPLY_SYNC = 0x5A  # first byte of a card -> host packet
CRC_BYTES = 4

LINK_HEADER = Layout("LinkHeader", [
    Field("sync", "B", "REQUEST_SYNC (host -> card) or REPLY_SYNC (card -> host)"),
    Field("op", "B", "LinkOp; a reply echoes its request's op, or NAK"),
    Field("seq", "B", "request number (host's choice), echoed in the reply"),
    Field("flags", "B", "LinkFlags"),
    Field("arg", "I", "per op: register offset or value, bytes wanted, LinkError"),
    Field("length", "H", "payload bytes after the header (at most the card's max_payload)"),
    Field("reserved", "H", "zero", reserved=True),
])
HEADER_BYTES = LINK_HEADER.size
assert HEADER_BYTES == 12


class LinkOp(enum.IntEnum):
    """A packet's ``op``."""

    PING = 0
    REG_READ = 1
    REG_WRITE = 2
    H2C = 3
    C2H = 4
    NAK = 15  # reply only


class LinkFlags(enum.IntFlag):
    """A packet's ``flags``: ``LAST`` in requests (H2C: these bytes end the job) and replies
    (C2H: these bytes end a message); ``H2C_READY`` and ``C2H_MORE`` in replies."""

    H2C_READY = 1
    LAST = 2
    C2H_MORE = 4


class LinkError(enum.IntEnum):
    """A ``NAK`` reply's ``arg``: what was wrong with the request."""

    CRC = 1  # CRC32C mismatch over header + payload
    LENGTH = 2  # length over max_payload, or not what the op takes
    SHORT = 3  # the bytes stopped for gap_cycles before the packet's end
    BUSY = 4  # H2C while the card's buffer has no room (no H2C_READY)
    BAD_OP = 5  # an op the card does not know
    BUS = 6  # the register file did not answer


def link_word(max_payload: int) -> int:
    """The PING reply's ``arg``: ``max_payload`` in bits [15:0], ``LINK_VERSION`` in [23:16]."""
    if not 8 <= max_payload < 1 << 16:
        raise ValueError(f"max_payload: 8..65535 bytes, got {max_payload}")
    return max_payload | LINK_VERSION << 16


def pack_packet(*, sync: int, op: int, seq: int = 0, flags: int = 0, arg: int = 0,
                payload: bytes = b"") -> bytes:
    """One packet: header, payload, CRC32C of both (little-endian)."""
    head = LINK_HEADER.pack(sync=sync, op=int(op), seq=seq & 0xFF, flags=int(flags),
                            arg=arg & 0xFFFFFFFF, length=len(payload))
    body = head + bytes(payload)
    return body + crc32c_of(body).to_bytes(CRC_BYTES, "little")


def packet_length(header: bytes) -> int:
    """Total bytes of the packet whose header is ``header`` (12 bytes)."""
    return HEADER_BYTES + LINK_HEADER.unpack_from(header).length + CRC_BYTES


class LinkPacket:
    """A parsed packet: ``op``, ``seq``, ``flags``, ``arg``, ``payload``."""

    __slots__ = ("arg", "flags", "op", "payload", "seq", "sync")

    def __init__(self, sync, op, seq, flags, arg, payload):
        self.sync, self.op, self.seq, self.flags, self.arg = sync, op, seq, flags, arg
        self.payload = payload

    def __repr__(self) -> str:
        return (f"LinkPacket(op={self.op}, seq={self.seq}, flags={self.flags:#x}, "
                f"arg={self.arg:#x}, {len(self.payload)} bytes)")


def unpack_packet(data: bytes) -> LinkPacket:
    """Parse one whole packet; ``ValueError`` naming the fault if its length or CRC is wrong."""
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise ValueError(f"link packet: {len(data)} bytes, shorter than a header and a CRC")
    h = LINK_HEADER.unpack_from(data)
    if len(data) != packet_length(data):
        raise ValueError(f"link packet: {len(data)} bytes, its header says "
                         f"{packet_length(data)}")
    end = HEADER_BYTES + h.length
    if crc32c_of(bytes(data[:end])) != int.from_bytes(data[end:], "little"):
        raise ValueError("link packet: CRC32C mismatch")
    try:
        op = LinkOp(h.op)
    except ValueError:
        raise ValueError(f"link packet: unknown op {h.op}") from None
    return LinkPacket(h.sync, op, h.seq, LinkFlags(h.flags), h.arg, bytes(data[HEADER_BYTES:end]))
