"""The RTL card under Verilator, in a separate process, behind the ``Transport`` interface.

``SimTransport(top, params)`` builds ``top(**params)`` with ``actpack.sim.build.build`` (cached:
``build/sim/<name>-<hash>/``), listens on a Unix socket in a fresh temporary folder, and runs the
cocotb module ``actpack.sim.card_server`` on the build in a background thread
(``SimBuild.run``, which blocks until the simulator exits). The server connects back and serves
the requests below until ``close()``; the simulator's log is ``SimTransport.log``.

``top`` is a ``wiring.Component`` factory with the card's ports (``bus``: ``hw.regfile.AXI4Lite``
slave; ``h2c``/``c2h``: ``lib.stream`` of ``hw.axis.axis_layout(stream_bytes)``; ``irq``), e.g.
the card top or ``actpack.sim.loopback.LoopbackCard``; or an already built ``SimBuild``.

Semantics against the ``Transport`` contract:

- ``reg_read``/``reg_write``: one AXI4-Lite transaction each (full ``wstrb``), answered when the
  bus answers; a slave that does not answer within ``card_server.BUS_TIMEOUT_CYCLES`` cycles
  gives ``CardTimeoutError`` (the access stays posted, as on a real bus; register accesses then
  fail with ``CardError`` until it completes), a SLVERR/DECERR response ``CardProtocolError``.
- ``submit``: queued in the simulator and streamed on ``h2c`` in ``stream_bytes`` beats (``keep``
  on the last beat, ``tlast`` at the end), one beat per cycle while the card is ready. Several
  submits queue in order. ``wait`` returns once the card has taken every submitted beat.
- ``receive``: the simulator keeps ``c2h.ready`` high and collects beats into messages ended by
  ``tlast``; a message is exactly what the card sent (``expect`` is not needed: ``tlast`` ends
  every message). A beat that breaks ``hw.axis``'s keep rule (kept bytes are the low ones, all of
  them except on the last beat) makes that message a ``CardProtocolError``. ``flush`` drops the
  complete messages and the bytes of one in progress.
- a simulator that has ended (crash, kill, failed start) raises ``SimulatorExitedError`` (a
  ``CardError``: ``FallbackDevice`` treats it as a card fault) naming its log, on the first call
  after it ended and on every later one; one that stops answering for ``reply_timeout`` seconds
  raises ``CardTimeoutError`` and the link is closed.

Wire protocol: ``actpack.sim.cardwire`` (shared with the card server).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping

from actpack.hw.regs import REG_SPACE
from actpack.sim.cardwire import (
    HEADER,
    HELLO,
    PAIR64,
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

from .errors import CardError, CardProtocolError, CardTimeoutError, DeviceUnavailableError
from .transport import Expect, Transport

__all__ = ["HEADER", "WIRE_VERSION", "Reply", "Request", "SimTransport", "SimulatorExitedError",
           "recv_message", "send_message"]

SERVER_MODULE = "actpack.sim.card_server"
# COCOTB_TRUST_INERTIAL_WRITES: cocotb applies writes itself in an extra ReadWrite phase of every
# cycle that writes unless it may trust the simulator's inertial writes; Verilator 5 applies them
# after the eval step (``doInertialPuts`` in cocotb's verilator.cpp), and trusting them doubles the
# card's speed. COCOTB_REWRITE_ASSERTION_FILES: cocotb's default ("*.py") has pytest rewrite the
# asserts of every module imported after the hook, uncached: torch and sympy compiled from source,
# 6 s of the simulator's start; the server needs no rewritten asserts.
_SIM_ENV = {"COCOTB_TRUST_INERTIAL_WRITES": "1", "COCOTB_REWRITE_ASSERTION_FILES": ""}


class SimulatorExitedError(CardError):
    """The simulator process of a ``SimTransport`` has ended (it crashed, was killed, failed to
    start or finished): the card is gone. The message names the simulator's log."""


_RUNS = itertools.count()


class SimTransport(Transport):
    """The card's RTL under Verilator (see the module docstring).

    ``top``: a component factory (called as ``top(**params)``) or a built ``SimBuild``;
    ``name``: the build's name (default: the factory's name in lower case);
    ``start_timeout``: seconds for the simulator to start and connect (the build before it is not
    counted); ``reply_timeout``: seconds a register access, submit or flush may take, and the
    margin over a ``wait``/``receive`` timeout, before the simulator counts as hung;
    ``env``: extra environment variables for the simulator.
    """

    name = "sim"

    def __init__(self, top, params: Mapping[str, object] | None = None, *,
                 name: str | None = None, start_timeout: float = 120.0,
                 reply_timeout: float = 30.0, env: Mapping[str, str] | None = None):
        self.reply_timeout = float(reply_timeout)
        self.build = _build(top, params, name)
        self._error: BaseException | None = None
        tag = f"card-server-{next(_RUNS)}"
        # SimBuild.run names its log from the tag and this process's id.
        self.log = self.build.directory / f"sim-{tag}-{os.getpid()}.log"
        self._dir = tempfile.mkdtemp(prefix="actpack-sim-")
        if len(self._dir) > 90:  # a Unix socket's path has at most 107 bytes
            os.rmdir(self._dir)
            self._dir = tempfile.mkdtemp(prefix="actpack-sim-", dir="/tmp")
        path = os.path.join(self._dir, "card.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock: socket.socket | None = None
        self._done = threading.Event()
        outcome: dict[str, BaseException] = {}
        self._outcome = outcome
        socks = [listener]
        # The thread holds no reference to self, so an unclosed transport can be collected; its
        # finalizer closes the socket, and the simulator ends when it sees the socket close.
        self._thread = threading.Thread(
            target=_run_server, args=(self.build, {**_SIM_ENV, **(env or {}), SOCKET_ENV: path},
                                      tag, outcome, self._done),
            name=f"actpack-sim {self.build.directory.name}", daemon=True)
        self._finalizer = weakref.finalize(self, _cleanup, socks, self._dir)
        try:
            listener.bind(path)
            listener.listen(1)
            self._thread.start()
            self._sock = self._accept(listener, start_timeout)
            socks.append(self._sock)
            self._hello(start_timeout)
        except BaseException:
            self._finalizer()
            self._thread.join(5.0)
            raise
        listener.close()

    # ---------------------------------------------------------------- start

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        listener.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock, _ = listener.accept()
                sock.settimeout(None)
                return sock
            except TimeoutError:
                pass
            if self._done.is_set():
                raise DeviceUnavailableError(f"device 'sim': the simulator ended before it "
                                             f"connected{self._ending()}")
            if time.monotonic() > deadline:
                raise DeviceUnavailableError(
                    f"device 'sim': the simulator did not connect within {timeout:g} s (slow "
                    f"start or a hang in {SERVER_MODULE}); its log: {self.log}")

    def _hello(self, timeout: float) -> None:
        try:
            code, body = self._reply(timeout, "start")
        except CardError as exc:
            raise DeviceUnavailableError(f"device 'sim': no HELLO from the simulator: {exc}"
                                         ) from exc
        if code != Request.HELLO or len(body) != HELLO.size:
            raise DeviceUnavailableError(f"device 'sim': the simulator's first message is not a "
                                         f"HELLO (code {code}); its log: {self.log}")
        version, self.pid, self.stream_bytes = HELLO.unpack(body)
        if version != WIRE_VERSION:
            raise DeviceUnavailableError(f"device 'sim': the card server speaks wire version "
                                         f"{version}, this transport {WIRE_VERSION}")

    # ---------------------------------------------------------------- link

    def _ending(self) -> str:
        """How the simulator ended, for an error message (waits briefly for its thread)."""
        self._done.wait(5.0)
        exc = self._outcome.get("error")
        how = (f": {str(exc).splitlines()[0]}" if exc is not None else
               " (its cocotb test passed)" if self._done.is_set() else " (still shutting down)")
        return f"{how}; its log: {self.log}"

    def _died(self, cause: BaseException | None = None) -> SimulatorExitedError:
        self._shut()
        self._error = SimulatorExitedError(f"device 'sim': the simulator (pid "
                                           f"{getattr(self, 'pid', '?')}) has ended"
                                           f"{self._ending()}")
        self._error.__cause__ = cause
        return self._error

    def _shut(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reply(self, timeout: float, what: str) -> tuple[int, bytearray]:
        sock = self._sock
        sock.settimeout(timeout)
        try:
            return recv_message(sock)
        except TimeoutError:
            # A reply may still be on its way: the stream is out of step, so the link ends.
            self._shut()
            self._error = CardTimeoutError(f"device 'sim': the simulator stopped answering "
                                           f"({what}: no reply within {timeout:g} s); its log: "
                                           f"{self.log}")
            raise self._error from None
        except (EOFError, OSError) as exc:
            raise self._died(exc) from exc

    def _call(self, request: Request, payload=b"", *, timeout: float | None = None
              ) -> tuple[Reply, bytearray]:
        if self._error is not None:  # a fresh exception each time (a raise extends __traceback__)
            raise type(self._error)(*self._error.args)
        if self._sock is None:
            raise CardError("device 'sim': the transport is closed")
        try:
            send_message(self._sock, request, payload)
        except OSError as exc:
            raise self._died(exc) from exc
        code, body = self._reply(self.reply_timeout if timeout is None else
                                 timeout + self.reply_timeout, request.name)
        code = Reply(code)
        if code is Reply.BUS_TIMEOUT:
            raise CardTimeoutError(f"device 'sim': {body.decode(errors='replace')}")
        if code is Reply.BUS_ERROR:
            raise CardProtocolError(f"device 'sim': {body.decode(errors='replace')}")
        if code is Reply.ERROR:
            raise CardError(f"device 'sim': the card server refused {request.name}: "
                            f"{body.decode(errors='replace')}")
        return code, body

    # ---------------------------------------------------------------- Transport

    def reg_read(self, offset: int) -> int:
        _, body = self._call(Request.READ, U32.pack(_offset(offset)))
        return U32.unpack(body)[0]

    def reg_write(self, offset: int, value: int) -> None:
        self._call(Request.WRITE, WRITE.pack(_offset(offset), value & 0xFFFFFFFF))

    def submit(self, data) -> None:
        data = memoryview(data).cast("B")
        if not len(data):
            raise ValueError("data: an H2C transfer carries at least one byte")
        self._call(Request.SUBMIT, data)

    def wait(self, timeout: float) -> None:
        code, body = self._call(Request.WAIT, SECONDS.pack(timeout), timeout=timeout)
        if code is not Reply.OK:
            taken, submitted = PAIR64.unpack(body)
            raise CardTimeoutError(f"device 'sim': the card did not take the job within "
                                   f"{timeout:g} s ({taken} of {submitted} transfers taken)")

    def receive(self, expect: Expect, *, limit: int, timeout: float) -> bytes:
        code, body = self._call(Request.RECEIVE,
                                RECEIVE.pack(timeout, min(max(0, limit), (1 << 64) - 1)),
                                timeout=timeout)
        if code is Reply.OK:
            return bytes(body)
        if code is Reply.NOT_YET:
            raise CardTimeoutError(f"device 'sim': no complete C2H message within {timeout:g} s "
                                   f"({U64.unpack(body)[0]} bytes of one received)")
        if code is Reply.TOO_LONG:
            raise CardProtocolError(f"the card is sending a message of more than {limit} bytes "
                                    f"({U64.unpack(body)[0]} so far), the most this job produces")
        raise CardProtocolError(f"device 'sim': {body.decode(errors='replace')}")

    def flush(self) -> int:
        _, body = self._call(Request.FLUSH)
        return U64.unpack(body)[0]

    def close(self) -> None:
        """Tell the simulator to finish and wait for it (killing it if it does not end within
        ``reply_timeout``); idempotent."""
        if self._sock is not None and self._error is None:
            try:
                send_message(self._sock, Request.CLOSE)
                self._reply(self.reply_timeout, "CLOSE")
            except (CardError, OSError):
                pass  # it ended or hung; the kill below covers it
        self._shut()
        self._thread.join(self.reply_timeout)
        if self._thread.is_alive() and hasattr(self, "pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._thread.join(self.reply_timeout)
        self._finalizer()
        if self._error is None:
            self._error = CardError("device 'sim': the transport is closed")

    @property
    def running(self) -> bool:
        """The simulator process is still there (its thread has not returned)."""
        return not self._done.is_set()

    def __repr__(self) -> str:
        return f"SimTransport({self.build.directory.name!r})"


def _offset(offset: int) -> int:
    if offset % 4 or not 0 <= offset < REG_SPACE:
        raise ValueError(f"offset: a 4-byte aligned address below {REG_SPACE:#x}, got {offset:#x}")
    return offset


def _build(top, params: Mapping[str, object] | None, name: str | None):
    try:
        from actpack.sim.build import BUILD_ROOT, SimBuild, build
    except ImportError as exc:  # amaranth or cocotb missing
        raise DeviceUnavailableError(f"device 'sim' needs the hw and sim extras "
                                     f"(pip install actpack[hw,sim]): {exc}") from exc
    if isinstance(top, SimBuild):
        return top
    if not callable(top):
        raise TypeError(f"top: expected a component factory or a SimBuild, got "
                        f"{type(top).__name__}")
    name = name if name is not None else getattr(top, "__name__", "card").lower()
    try:
        return build(top, name=name, params=params)
    except (Exception, SystemExit) as exc:  # the cocotb runner exits on a failed compile
        logs = sorted(BUILD_ROOT.glob(f"{name}-*/build.log"), key=lambda p: p.stat().st_mtime)
        where = f"; the Verilator log: {logs[-1]}" if logs else ""
        raise DeviceUnavailableError(f"device 'sim': building {name} failed: {exc!r}{where}"
                                     ) from exc


def _run_server(sim, env: dict[str, str], tag: str, outcome: dict, done: threading.Event
                ) -> None:
    try:
        sim.run(SERVER_MODULE, env=env, tag=tag)
    except BaseException as exc:  # reported by the transport
        outcome["error"] = exc
    finally:
        done.set()


def _cleanup(socks: list[socket.socket], directory: str) -> None:
    for sock in socks:
        sock.close()
    shutil.rmtree(directory, ignore_errors=True)
