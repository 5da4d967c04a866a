"""The wire protocol between ``host.simcard.SimTransport`` and the card server
(``actpack.sim.card_server``, running in the simulator): message codes, payload layouts,
framing.

Here, imported by both ends, so that the server needs neither the host driver nor torch (it
starts in every simulator run) and the host side depends on ``actpack.sim`` one way.

Wire protocol (a Unix stream socket; the host listens, the simulator connects): every message is
a ``HEADER`` (``<II``: code, payload length) and a payload. The server's first message is
``HELLO`` (``<III``: ``WIRE_VERSION``, simulator pid, stream_bytes). Then strictly request ->
reply, one at a time:

============  ============================  ==================================================
request       payload                       reply (``Reply`` code: payload)
============  ============================  ==================================================
``READ``      ``<I`` offset                 ``OK``: ``<I`` value
``WRITE``     ``<II`` offset, value         ``OK``
``SUBMIT``    the job's bytes (>= 1)        ``OK``: ``<Q`` jobs submitted so far
``WAIT``      ``<d`` seconds                ``OK`` / ``NOT_YET`` (after seconds): ``<QQ`` taken,
                                            submitted
``RECEIVE``   ``<dQ`` seconds, limit        ``OK``: the message; ``NOT_YET`` (after seconds):
                                            ``<Q`` bytes of a message in progress; ``TOO_LONG``:
                                            ``<Q`` bytes so far (> limit; the message stays);
                                            ``BAD_STREAM``: text (the message is dropped)
``FLUSH``     (none)                        ``OK``: ``<Q`` bytes dropped
``CLOSE``     (none)                        ``OK``; the simulator then finishes
============  ============================  ==================================================

``BUS_TIMEOUT`` (text) and ``ERROR`` (text: a malformed request, the bus busy) answer any request.
"""

from __future__ import annotations

import enum
import socket
import struct

__all__ = ["HEADER", "HELLO", "PAIR64", "PAYLOADS", "RECEIVE", "SECONDS", "SOCKET_ENV", "U32",
           "U64", "WIRE_VERSION", "WRITE", "Reply", "Request", "recv_message", "send_message"]

WIRE_VERSION = 1
HEADER = struct.Struct("<II")  # code, payload length
HELLO = struct.Struct("<III")  # WIRE_VERSION, pid, stream_bytes
U32, U64, PAIR64 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<QQ")
WRITE = struct.Struct("<II")
RECEIVE = struct.Struct("<dQ")
SECONDS = struct.Struct("<d")
SOCKET_ENV = "ACTPACK_CARD_SOCKET"  # the socket the server connects to


class Request(enum.IntEnum):
    HELLO = 0  # server -> host, once, first
    READ = 1
    WRITE = 2
    SUBMIT = 3
    WAIT = 4
    RECEIVE = 5
    FLUSH = 6
    CLOSE = 7


class Reply(enum.IntEnum):
    OK = 0
    NOT_YET = 1
    TOO_LONG = 2
    BAD_STREAM = 3
    BUS_TIMEOUT = 4
    BUS_ERROR = 5
    ERROR = 6


def send_message(sock: socket.socket, code: int, payload=b"") -> None:
    """One message: ``HEADER`` then ``payload`` (bytes-like)."""
    payload = memoryview(payload).cast("B")
    # MSG_NOSIGNAL: a closed peer is an EPIPE error, not SIGPIPE (which the simulator, an
    # embedding of Python, does not ignore).
    if len(payload) < 1 << 16:
        sock.sendall(HEADER.pack(code, len(payload)) + payload, socket.MSG_NOSIGNAL)
    else:  # no copy of a large job or message
        sock.sendall(HEADER.pack(code, len(payload)), socket.MSG_NOSIGNAL)
        sock.sendall(payload, socket.MSG_NOSIGNAL)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError("the peer closed the socket")
        view = view[got:]
    return buf


def recv_message(sock: socket.socket) -> tuple[int, bytearray]:
    """The next message's code and payload; ``EOFError`` when the peer has closed."""
    code, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    return code, _recv_exact(sock, length)


# For the card server: what a request's payload must be (None: any length >= 1).
PAYLOADS: dict[Request, int | None] = {
    Request.READ: U32.size, Request.WRITE: WRITE.size, Request.SUBMIT: None,
    Request.WAIT: SECONDS.size, Request.RECEIVE: RECEIVE.size, Request.FLUSH: 0,
    Request.CLOSE: 0,
}
