"""cocotb module: the card's RTL served to ``host.simcard.SimTransport`` over a Unix socket.

One test, ``serve``: starts the clock (``clk``, 10 ns) and the reset (``rst``, active high, two
cycles), connects to the socket in ``ACTPACK_CARD_SOCKET`` (the host listens), sends ``HELLO`` and
answers the host's requests (wire protocol: ``sim.cardwire``) until ``CLOSE`` or until the host
closes the socket; then the test passes and the simulator exits.

The top must have the card's ports: ``bus__*`` (AXI4-Lite slave, ``hw.regfile``), ``h2c__*`` and
``c2h__*`` (``lib.stream`` of ``hw.axis.axis_layout(n)``; ``n`` is read from the payload width),
``clk``, ``rst``.

One coroutine does everything, once per cycle: after the rising edge it drives the inputs (the
next H2C beat, the AXI4-Lite master's channels), in the ``ReadOnly`` phase it samples the
handshakes (an H2C beat taken, a C2H beat received, bus channels accepted or answered) and,
when due, looks at the socket. One coroutine instead of one per port halves the scheduler's work
per cycle, which is what bounds the simulation's speed.

- H2C: submitted jobs are cut into beats (``keep`` on the last, ``tlast``) and offered back to
  back, one per cycle while ``h2c.ready``; ``valid`` and the payload hold until taken.
- C2H: ``ready`` is high from reset on; beats are collected into messages at ``tlast`` and kept
  until the host asks for them. A beat that breaks ``hw.axis``'s keep rule marks its message bad.
- Stalls (``ACTPACK_CARD_STALLS=p``, default 0): each cycle with probability ``p`` the next H2C
  beat is held back (``valid`` low) and, independently, ``c2h.ready`` is low, from a generator
  seeded by ``ACTPACK_CARD_SEED``: the card's streams under a DMA engine that pauses.
- AXI4-Lite master: one access at a time; ``bready``/``rready`` always high; AW and W offered
  together and each dropped once accepted. An access not answered within
  ``BUS_TIMEOUT_CYCLES`` is reported to the host and stays posted (AXI forbids withdrawing it).

Polling (the simulator must answer fast without spinning the host's CPU), three regimes:

- the host waits (a ``WAIT``/``RECEIVE`` pending, H2C beats queued, a bus access or a C2H message
  in progress, a beat moved in the last ``POLL_CYCLES`` cycles): the socket is looked at with
  ``select(timeout=0)`` every ``POLL_CYCLES`` cycles (for the host's close and the deadlines);
- the host may ask soon (``ACTIVE_CYCLES`` cycles after the last request or beat, nothing else
  going on): ``select(timeout=0)`` every cycle, ~1 us against the ~15 us a cycle costs, so a
  register access a driver makes right after the last one is seen within a cycle;
- idle: the simulator blocks in ``select`` for up to ``IDLE_S`` (10 ms) per cycle: ~100 wake-ups
  a second, and a request is seen at once.

Simulated time is not wall time: an idle card advances a cycle per ``IDLE_S``, which no request
can tell apart from running on (the card acts on its inputs, all of which come from the host).
Environment overrides: ``ACTPACK_CARD_POLL_CYCLES``, ``ACTPACK_CARD_ACTIVE_CYCLES``,
``ACTPACK_CARD_IDLE_MS``.
"""

import collections
import os
import random
import select
import socket
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from ..hw.axis import axis_layout
from .cardwire import (
    HELLO,
    PAIR64,
    PAYLOADS,
    RECEIVE,
    SECONDS,
    SOCKET_ENV,
    U32,
    U64,
    WIRE_VERSION,
    WRITE,
    Reply,
    Request,
    recv_message,
    send_message,
)
from .stream import LayoutCodec

PERIOD_NS = 10
POLL_CYCLES = int(os.environ.get("ACTPACK_CARD_POLL_CYCLES", "16"))
ACTIVE_CYCLES = int(os.environ.get("ACTPACK_CARD_ACTIVE_CYCLES", "512"))
IDLE_S = float(os.environ.get("ACTPACK_CARD_IDLE_MS", "10")) / 1000
STALLS = float(os.environ.get("ACTPACK_CARD_STALLS", "0"))
BUS_TIMEOUT_CYCLES = 4096
FULL_WSTRB = 0xF


class _Closed(Exception):
    """The host said CLOSE or closed the socket."""


class _Bus:
    """The AXI4-Lite master: one access in flight; ``step`` drives, ``sample`` watches."""

    def __init__(self, dut):
        self.dut = dut
        self.p = {n: getattr(dut, f"bus__{n}") for n in (
            "awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp",
            "bvalid", "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid",
            "rready")}
        for n in ("awvalid", "wvalid", "arvalid"):
            self.p[n].value = 0
        self.p["bready"].value = 1
        self.p["rready"].value = 1
        self.op = None  # "read" / "write"
        self.offset = 0
        self.drive: dict[str, int] = {}  # port values to set after the next edge
        self.pending: set[str] = set()  # channels offered, not yet accepted: aw, w, ar
        self.drop: set[str] = set()  # channels accepted: valid goes low after the edge
        self.cycles = 0
        self.orphan = False  # the host was told it timed out; it completes silently

    @property
    def busy(self) -> bool:
        return self.op is not None

    def start(self, op: str, offset: int, value: int = 0) -> None:
        """Post an access (from the ReadOnly phase: the ports change after the next edge)."""
        self.op, self.offset, self.cycles, self.orphan = op, offset, 0, False
        if op == "write":
            self.drive = {"awaddr": offset, "wdata": value, "wstrb": FULL_WSTRB, "awvalid": 1,
                          "wvalid": 1}
            self.pending = {"aw", "w"}
        else:
            self.drive = {"araddr": offset, "arvalid": 1}
            self.pending = {"ar"}

    def step(self) -> None:
        """After the edge: withdraw the channels accepted at it, offer a new access."""
        for ch in self.drop:
            self.p[f"{ch}valid"].value = 0
        for name, value in self.drive.items():
            self.p[name].value = value
        self.drop, self.drive = set(), {}

    def sample(self):
        """In ReadOnly: None while in flight, else ``(op, resp, value)`` of the finished
        access."""
        p = self.p
        self.cycles += 1
        if self.pending:
            for ch in tuple(self.pending):
                if p[f"{ch}ready"].value:
                    self.pending.discard(ch)
                    self.drop.add(ch)
            return None
        # The response can only come after the request channels' acceptance edge.
        if self.op == "write" and p["bvalid"].value:
            resp, value = int(p["bresp"].value), 0
        elif self.op == "read" and p["rvalid"].value:
            resp, value = int(p["rresp"].value), p["rdata"].value.to_unsigned()
        else:
            return None
        op, self.op = self.op, None
        return op, resp, value


class CardServer:
    """The state between cycles: queued H2C beats, received C2H messages, the bus access, the
    host's pending request. Construct before reset (it drives the inputs' idle values), set
    ``sock``, then ``await run()`` until it raises ``_Closed``."""

    def __init__(self, dut):
        self.dut = dut
        self.sock: socket.socket | None = None
        width = len(dut.h2c__payload)
        n = (width - 1) // 9
        if width != 9 * n + 1 or len(dut.c2h__payload) != width:
            raise ValueError(f"h2c/c2h payloads of {width}/{len(dut.c2h__payload)} bits are not "
                             "an axis_layout (9 n + 1 bits)")
        self.n = n
        self.codec = LayoutCodec(axis_layout(n))
        self.full_keep = (1 << n) - 1
        self.last_bit = next(offset for key, offset, *_ in self.codec.fields if key == "last")
        dut.h2c__valid.value = 0
        dut.c2h__ready.value = 1
        self.bus = _Bus(dut)
        # H2C
        self.beats: collections.deque[int] = collections.deque()
        self.offered: int | None = None  # payload bits on h2c now, not yet taken
        self.submitted = self.taken = 0
        # C2H: (bytes, problem or None) per complete message; the one in progress
        self.messages: collections.deque[tuple[bytes, str | None]] = collections.deque()
        self.partial = bytearray()
        self.problem: str | None = None
        # The host's WAIT or RECEIVE while it waits: (request, deadline, limit)
        self.waiting: tuple[Request, float, int] | None = None
        self.cycle = 0
        self.quiet_from = 0  # from this cycle on the card counts as idle (no event since)
        self.streaming_until = 0  # a beat moved in the last POLL_CYCLES cycles
        self.stats = collections.Counter()

    # ---------------------------------------------------------------- cycle loop

    async def run(self):
        dut = self.dut
        edge, settled = RisingEdge(dut.clk), ReadOnly()
        h2c_valid, h2c_payload, h2c_ready = dut.h2c__valid, dut.h2c__payload, dut.h2c__ready
        c2h_valid, c2h_payload = dut.c2h__valid, dut.c2h__payload
        bus = self.bus
        next_poll = offering = 0
        pause = random.Random(int(os.environ.get("ACTPACK_CARD_SEED", "1"))).random
        c2h_ready = dut.c2h__ready
        ready = 1
        while True:
            await edge
            # Drive.
            if STALLS:
                ready = int(pause() >= STALLS)
                c2h_ready.value = ready
            if self.offered is None:
                if self.beats and not (STALLS and pause() < STALLS):
                    self.offered = self.beats.popleft()
                    h2c_payload.value = self.offered
                    if not offering:
                        h2c_valid.value = offering = 1
                elif offering:
                    h2c_valid.value = offering = 0
            if bus.drop or bus.drive:
                bus.step()
            await settled
            self.cycle += 1
            # Sample.
            if self.offered is not None and h2c_ready.value:
                if self.offered >> self.last_bit & 1:
                    self.taken += 1
                    if self.waiting is not None and self.waiting[0] is Request.WAIT and (
                            self.taken == self.submitted):
                        self._answer_wait(Reply.OK)
                self.offered = None
                self.stats["h2c_beats"] += 1
                self.quiet_from = self.cycle + ACTIVE_CYCLES
                self.streaming_until = self.cycle + POLL_CYCLES
            if ready and c2h_valid.value:
                self._c2h_beat(c2h_payload.value.to_unsigned())
            if bus.busy:
                done = bus.sample()
                if done is not None:
                    self._bus_done(*done)
                elif bus.cycles == BUS_TIMEOUT_CYCLES and not bus.orphan:
                    bus.orphan = True
                    self._send(Reply.BUS_TIMEOUT, f"AXI4-Lite {bus.op} of {bus.offset:#05x} not "
                               f"answered within {BUS_TIMEOUT_CYCLES} cycles".encode())
            # Look at the socket.
            if self._host_waits():
                if self.cycle >= next_poll:
                    next_poll = self.cycle + POLL_CYCLES
                    self._expire()
                    if self._readable(0):
                        self._request()
            elif self.cycle < self.quiet_from:  # a request may follow the last reply soon
                if self._readable(0):
                    self._request()
            elif self._readable(IDLE_S):
                self._request()

    def _host_waits(self) -> bool:
        """Data or an answer is on its way: the host is unlikely to send a request."""
        return bool(self.waiting or self.beats or self.offered is not None or self.bus.busy
                    or self.partial or self.cycle < self.streaming_until)

    def _readable(self, timeout: float) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])

    # ---------------------------------------------------------------- C2H

    def _c2h_beat(self, bits: int) -> None:
        beat = self.codec.unpack(bits)
        keep, last = beat["keep"], beat["last"]
        data = beat["data"].to_bytes(self.n, "little")
        if keep == self.full_keep:
            self.partial += data
        elif last and keep and not keep & (keep + 1):  # the low bytes, at least one
            self.partial += data[: keep.bit_length()]
        else:
            if self.problem is None:
                self.problem = (f"C2H beat {len(self.partial) // self.n} of a message breaks the "
                                f"keep rule of hw.axis: keep {keep:#x} on a "
                                f"{'last' if last else 'non-last'} beat of {self.n} bytes")
            self.partial += bytes(b for k, b in enumerate(data) if keep >> k & 1)
        self.stats["c2h_beats"] += 1
        self.quiet_from = self.cycle + ACTIVE_CYCLES
        self.streaming_until = self.cycle + POLL_CYCLES
        if last:
            self.messages.append((bytes(self.partial), self.problem))
            self.partial.clear()
            self.problem = None
            if self.waiting is not None and self.waiting[0] is Request.RECEIVE:
                self._answer_receive()
        elif self.waiting is not None and self.waiting[0] is Request.RECEIVE and (
                len(self.partial) > self.waiting[2]):
            self._answer_receive()

    def _answer_receive(self, expired: bool = False) -> bool:
        """Answer the pending or new RECEIVE if there is an answer (or ``expired``)."""
        limit = self.waiting[2]
        if self.messages:
            msg, problem = self.messages[0]
            if problem is not None:
                self.messages.popleft()
                self._send(Reply.BAD_STREAM, problem.encode())
            elif len(msg) > limit:
                self._send(Reply.TOO_LONG, U64.pack(len(msg)))
            else:
                self.messages.popleft()
                self._send(Reply.OK, msg)
        elif len(self.partial) > limit:
            self._send(Reply.TOO_LONG, U64.pack(len(self.partial)))
        elif expired:
            self._send(Reply.NOT_YET, U64.pack(len(self.partial)))
        else:
            return False
        self.waiting = None
        return True

    def _answer_wait(self, code: Reply) -> None:
        self.waiting = None
        self._send(code, PAIR64.pack(self.taken, self.submitted))

    def _expire(self) -> None:
        if self.waiting is not None and time.monotonic() >= self.waiting[1]:
            if self.waiting[0] is Request.WAIT:
                self._answer_wait(Reply.NOT_YET)
            else:
                self._answer_receive(expired=True)

    # ---------------------------------------------------------------- requests

    def _send(self, code: Reply, payload=b"") -> None:
        try:
            send_message(self.sock, code, payload)
        except OSError:
            raise _Closed("the host closed the socket") from None

    def _bus_done(self, op: str, resp: int, value: int) -> None:
        if self.bus.orphan:
            return  # the host already got BUS_TIMEOUT for it
        if resp:
            what = {2: "SLVERR", 3: "DECERR"}.get(resp, str(resp))
            self._send(Reply.BUS_ERROR, f"AXI4-Lite {op} of {self.bus.offset:#05x} answered "
                       f"{what}".encode())
        else:
            self._send(Reply.OK, U32.pack(value) if op == "read" else b"")

    def _request(self) -> None:
        try:
            code, body = recv_message(self.sock)
        except (EOFError, ConnectionError):
            raise _Closed("the host closed the socket") from None
        self.quiet_from = self.cycle + ACTIVE_CYCLES
        self.stats["requests"] += 1
        try:
            request = Request(code)
            size = PAYLOADS[request]
        except (ValueError, KeyError):
            self._send(Reply.ERROR, f"unknown request code {code}".encode())
            return
        if (len(body) != size) if size is not None else not body:
            self._send(Reply.ERROR, f"{request.name} with a payload of {len(body)} bytes".encode())
            return
        if request in (Request.READ, Request.WRITE):
            if self.bus.busy:
                self._send(Reply.ERROR, f"the AXI4-Lite {self.bus.op} of {self.bus.offset:#05x} "
                           "is still unanswered".encode())
            elif request is Request.READ:
                self.bus.start("read", U32.unpack(body)[0])
            else:
                self.bus.start("write", *WRITE.unpack(body))
        elif request is Request.SUBMIT:
            self._queue(body)
            self._send(Reply.OK, U64.pack(self.submitted))
        elif request is Request.WAIT:
            self.waiting = (request, time.monotonic() + SECONDS.unpack(body)[0], 0)
            if self.taken == self.submitted:
                self._answer_wait(Reply.OK)
        elif request is Request.RECEIVE:
            seconds, limit = RECEIVE.unpack(body)
            self.waiting = (request, time.monotonic() + seconds, limit)
            self._answer_receive()
        elif request is Request.FLUSH:
            n = sum(len(m) for m, _ in self.messages) + len(self.partial)
            self.messages.clear()
            self.partial.clear()
            self.problem = None
            self._send(Reply.OK, U64.pack(n))
        else:  # CLOSE
            self._send(Reply.OK)
            raise _Closed("the host said CLOSE")

    def _queue(self, job: bytes) -> None:
        n, pack = self.n, self.codec.pack
        end = len(job)
        for at in range(0, end, n):
            chunk = job[at : at + n]
            self.beats.append(pack({"data": int.from_bytes(chunk, "little"),
                                    "keep": (1 << len(chunk)) - 1, "last": int(at + n >= end)}))
        self.submitted += 1



@cocotb.test()
async def serve(dut):
    """Serve the host until it says CLOSE or closes the socket."""
    path = os.environ[SOCKET_ENV]
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    server = CardServer(dut)
    edge = RisingEdge(dut.clk)
    for _ in range(2):
        await edge
    dut.rst.value = 0
    server.sock = sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    send_message(sock, Request.HELLO, HELLO.pack(WIRE_VERSION, os.getpid(), server.n))
    start = time.monotonic()
    try:
        await server.run()
    except _Closed as why:
        dut._log.info("card server: %s", why)
    finally:
        sock.close()
    wall = time.monotonic() - start
    dut._log.info("card server: %d cycles in %.2f s (%.0f cycles/s); %s", server.cycle, wall,
                  server.cycle / max(wall, 1e-9), dict(server.stats))
