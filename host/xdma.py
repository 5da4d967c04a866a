"""The card through the Xilinx XDMA Linux driver, and an emulation of its device nodes for tests.

``XdmaTransport(prefix)`` uses the nodes the ``xdma`` kernel module creates (``/dev/xdma0_*``):

- registers: ``mmap`` of ``<prefix>_user`` (the AXI4-Lite BAR); every access is one aligned
  32-bit load or store through a ``memoryview`` cast to ``"I"`` (never a byte-wise copy);
- H2C data: one ``os.write`` of the whole job on ``<prefix>_h2c_<n>`` (the driver ends the
  transfer with ``tlast``), from a page-aligned buffer (``mmap``-allocated, so the kernel can map
  it for DMA without a bounce copy), in a writer thread so ``submit`` returns at once;
- C2H data: ``<prefix>_c2h_<n>`` opened with ``O_TRUNC`` (the driver's "end of packet" mode: a
  read returns at ``tlast`` or when the buffer is full); a reader thread keeps a read posted into
  a page-aligned buffer at all times, because the card stalls its stream while no read is posted;
- timeouts: ``receive``/``wait`` give up after the driver's timeout (``CardTimeoutError``); the
  kernel's own DMA timeout (10 s by default) ends a read with ``ETIMEDOUT``, after which the
  reader posts the next read.

``XdmaEmulator(directory, card=...)`` creates stand-ins for those nodes and serves them in a thread,
so the transport's real file, buffer and thread logic runs in CI without a card. The card behind
them (a ``CardBackend``) is ``CardModel`` (``card="model"``, the default) or the card behind any
other ``Transport``, e.g. the RTL card under Verilator (``host.simcard.SimTransport``):

- ``<prefix>_user`` is a regular file of ``REG_SPACE`` bytes; both sides ``mmap`` it. The
  emulator polls it (``CardBackend.sync``): pulses in CONTROL, W1C writes to IRQ_STATUS and stray
  writes to RO words are acted on within a poll period. Differences from a real AXI4-Lite slave:
  a host write that leaves a word unchanged is invisible (so writing IRQ_STATUS with exactly its
  current value clears nothing), pulses read 1 until the poll acts on them (a real card clears
  them within cycles), and 64-bit counters are two stores (the driver's HI-LO-HI read covers it).
- ``<prefix>_h2c_<n>`` and ``<prefix>_c2h_<n>`` are FIFOs (``os.mkfifo``). A FIFO carries bytes,
  not packets: the emulator finds the end of each job from the descriptor's ``in_bytes`` (a real
  card sees ``tlast``), and writes each C2H message with one ``write``; with the pipe at least as
  large as the message (``pipe_bytes``, 1 MiB by default) the transport's read then returns the
  whole message, as a read that ends at ``tlast`` would. Larger messages arrive in parts; the
  transport then completes them from the message's own length (``tlast_reads=False``).
- Faults for tests: ``dead`` (nothing answers, registers freeze), ``stall_next`` (the next job is
  taken but never answered until a soft reset), ``corrupt_next`` (flip one bit of the next
  message at that byte offset). The emulator injects them, so they work with either card; a card
  behind a transport never sees a stalled job (its STATUS.BUSY stays 0, the model's reads 1).
- A card behind a ``Transport`` (``_TransportCard``): each poll mirrors the host's stores into it
  (register words that changed: RW words, pulses, IRQ_STATUS as a W1C write) and copies its
  words back (STATUS, IRQ_STATUS, LAST_TAG, the counters; CONTROL while a pulse is pending).
  Register accesses there are slow (a simulated bus transaction each, ~4 ms under Verilator), so
  it reads them only after a host store, after each job (before the answer goes out, so a host
  that has the answer reads the job's counters) and while a pulse or STATUS.RESETTING is
  pending; other polls restore the words from the last copy. MAGIC, VERSION, CAPS, CONFIG_HASH
  and BUFFER_KIB are read once. A job is ``submit`` + ``wait`` + one ``receive`` (the transport
  must end messages at ``tlast``, as ``SimTransport`` does); a card that fails (``CardError``:
  no answer within ``job_timeout``, the simulator gone) makes the emulator dead, its error in
  ``XdmaEmulator.error``. The transport stays the caller's to close, after ``stop``.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from actpack.hw.protocol import DESCRIPTOR_BYTES, Descriptor, ProtocolError
from actpack.hw.regs import REG_SPACE, REGS, Access, CardConfig

from .cardmodel import CardModel
from .errors import CardError, CardProtocolError, CardTimeoutError, DeviceUnavailableError
from .transport import Expect, Transport

__all__ = ["CardBackend", "XdmaEmulator", "XdmaTransport", "node_paths"]

_PAGE = mmap.PAGESIZE
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python >= 3.10 has it on Linux; older lack the name)
_TIMEOUT_ERRNOS = {errno.ETIMEDOUT, getattr(errno, "ETIME", errno.ETIMEDOUT)}


def node_paths(prefix: str, channel: int = 0) -> dict[str, str]:
    """The device nodes of one XDMA card and channel: ``user``, ``h2c``, ``c2h``."""
    return {"user": f"{prefix}_user", "h2c": f"{prefix}_h2c_{channel}",
            "c2h": f"{prefix}_c2h_{channel}"}


class _PageBuffer:
    """A page-aligned buffer (anonymous ``mmap``) that grows to the largest job."""

    def __init__(self):
        self._map = None

    def fill(self, data) -> memoryview:
        data = memoryview(data).cast("B")
        n = len(data)
        if self._map is None or len(self._map) < n:
            self.close()
            self._map = mmap.mmap(-1, max(_PAGE, -(-n // _PAGE) * _PAGE))
        view = memoryview(self._map)[:n]
        view[:] = data
        return view

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class XdmaTransport(Transport):
    """A card behind the XDMA driver's nodes ``<prefix>_user``, ``_h2c_<channel>``,
    ``_c2h_<channel>`` (see the module docstring). ``c2h_buffer``: bytes of the posted C2H read;
    ``tlast_reads``: a read shorter than the buffer ended at ``tlast`` (true for the XDMA driver in
    ``O_TRUNC`` mode; false for a link that may split messages anywhere)."""

    name = "xdma"

    def __init__(self, prefix: str = "/dev/xdma0", *, channel: int = 0,
                 c2h_buffer: int = 4 << 20, tlast_reads: bool = True):
        if c2h_buffer < _PAGE or c2h_buffer % _PAGE:
            raise ValueError(f"c2h_buffer: a multiple of the page size {_PAGE}, got {c2h_buffer}")
        if sys.byteorder != "little":  # register words are read as native 32-bit integers
            raise DeviceUnavailableError("device 'xdma': the driver needs a little-endian host")
        self.prefix = prefix
        self.paths = node_paths(prefix, channel)
        for path in self.paths.values():
            if not os.path.exists(path):
                raise DeviceUnavailableError(
                    f"device 'xdma': {path} does not exist; is the card in the slot, its "
                    "bitstream loaded and the xdma kernel module loaded (dma_ip_drivers)? "
                    "Use device='ref' for the software codec.")
        self.tlast_reads = tlast_reads
        self._fds: list[int] = []
        try:
            user = self._open(self.paths["user"], os.O_RDWR | os.O_SYNC)
            self._map = mmap.mmap(user, REG_SPACE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self._bytes = memoryview(self._map)
            self._words = self._bytes.cast("I")
            self._h2c = self._open(self.paths["h2c"], os.O_WRONLY)
            c2h = os.open(self.paths["c2h"], os.O_RDONLY | os.O_TRUNC)
        except OSError as exc:
            self._close_fds()
            raise DeviceUnavailableError(f"device 'xdma': cannot open {exc.filename}: "
                                         f"{exc.strerror}") from exc
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._rest = b""
        self._stop = threading.Event()
        self._sent = threading.Event()
        self._sent.set()
        self._send_error: BaseException | None = None
        self._tx = _PageBuffer()
        # The reader owns the C2H descriptor and closes it when it stops: a read posted in the
        # kernel cannot be cancelled from another thread, and closing the number under it could
        # let the reader read from a reused descriptor.
        self._reader = threading.Thread(target=self._read_loop, args=(c2h, c2h_buffer),
                                        name=f"xdma-c2h {prefix}", daemon=True)
        self._reader.start()

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags)
        self._fds.append(fd)
        return fd

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    # ---------------------------------------------------------------- registers

    def reg_read(self, offset: int) -> int:
        return self._words[_word(offset)]

    def reg_write(self, offset: int, value: int) -> None:
        self._words[_word(offset)] = value & 0xFFFFFFFF

    # ---------------------------------------------------------------- H2C

    def submit(self, data) -> None:
        if not self._sent.is_set():
            raise CardTimeoutError(f"{self.paths['h2c']}: the previous transfer has not "
                                   "completed; the card takes no data")
        view = self._tx.fill(data)
        self._sent.clear()
        self._send_error = None
        # The writer gets its own descriptor so close() never pulls one from under it.
        fd = os.dup(self._h2c)
        threading.Thread(target=self._write, args=(fd, view), daemon=True,
                         name=f"xdma-h2c {self.prefix}").start()

    def _write(self, fd: int, view: memoryview) -> None:
        try:
            pos = 0
            while pos < len(view):
                pos += os.write(fd, view[pos:])
        except OSError as exc:
            self._send_error = exc
        finally:
            view.release()
            os.close(fd)
            self._sent.set()

    def wait(self, timeout: float) -> None:
        if not self._sent.wait(timeout):
            raise CardTimeoutError(f"{self.paths['h2c']}: the card did not take the job within "
                                   f"{timeout:g} s")
        exc = self._send_error
        if exc is not None:
            if exc.errno in _TIMEOUT_ERRNOS:
                raise CardTimeoutError(f"{self.paths['h2c']}: the DMA transfer timed out in "
                                       "the driver") from exc
            raise CardError(f"{self.paths['h2c']}: write failed: {exc.strerror}") from exc

    # ---------------------------------------------------------------- C2H

    def _read_loop(self, fd: int, size: int) -> None:
        buf = mmap.mmap(-1, size)
        view = memoryview(buf)
        try:
            while not self._stop.is_set():
                try:
                    n = os.readv(fd, [view])
                except OSError as exc:
                    if exc.errno in _TIMEOUT_ERRNOS:
                        continue  # the kernel's DMA timeout: post the next read
                    self._chunks.put(exc)
                    return
                if n == 0:
                    self._chunks.put(EOFError(f"{self.paths['c2h']} was closed"))
                    return
                self._chunks.put((bytes(view[:n]), n < size))
        finally:
            view.release()
            buf.close()
            os.close(fd)

    def receive(self, expect: Expect, *, limit: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf, self._rest = bytearray(self._rest), b""
        ended = False
        while True:
            if buf:
                if ended and self.tlast_reads:
                    # The read ended at tlast: the message is what the card sent, whatever its
                    # header claims (the caller's checks judge it).
                    return bytes(buf)
                need = expect(bytes(buf))
                if need is not None and len(buf) >= need:
                    self._rest = bytes(buf[need:])
                    return bytes(buf[:need])
                if (need or 0) > limit or len(buf) > limit:
                    raise CardProtocolError(f"the card is sending a message of more than "
                                            f"{limit} bytes, the most this job produces")
            try:
                item = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._rest = bytes(buf)
                raise CardTimeoutError(f"{self.paths['c2h']}: no complete answer from the card "
                                       f"within {timeout:g} s ({len(buf)} bytes received)"
                                       ) from None
            if isinstance(item, BaseException):
                self._chunks.put(item)  # the channel stays dead for every later call
                raise CardError(f"{self.paths['c2h']}: the C2H channel failed: {item}")
            chunk, ended = item
            buf += chunk

    def flush(self) -> int:
        n, self._rest = len(self._rest), b""
        while True:
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                return n
            if isinstance(item, BaseException):
                self._chunks.put(item)
                return n
            n += len(item[0])

    def close(self) -> None:
        """Unmap, close, stop the reader (it exits when its posted read returns: at once for a
        closed emulator, after the kernel's DMA timeout for a real card)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._words.release()
        self._bytes.release()
        self._map.close()
        self._close_fds()
        if self._sent.is_set():
            self._tx.close()  # else the pending writer still reads it; it is freed with self

    def __repr__(self) -> str:
        return f"XdmaTransport({self.prefix!r})"


def _word(offset: int) -> int:
    if offset % 4 or not 0 <= offset < REG_SPACE:
        raise ValueError(f"offset: a 4-byte aligned address below {REG_SPACE:#x}, got {offset:#x}")
    return offset >> 2


class CardBackend(Protocol):
    """The card behind ``XdmaEmulator``: what the emulator calls, from its thread only.
    ``CardModel`` is one (its words are the shared file); ``_TransportCard`` puts any
    ``Transport`` behind the same calls."""

    @property
    def running(self) -> bool:
        """CONTROL.RUN as the card has it (0: H2C stalls, the emulator reads nothing)."""

    def sync(self) -> None:
        """Act on the host's stores into the shared words and show the card's own words there."""

    def run_job(self, job: bytes) -> bytes:
        """One H2C transfer (descriptor .. tlast) in, its C2H message out; the words show the
        job's effects (STATUS, LAST_TAG, IRQ_STATUS, counters) when it returns."""

    def set_busy(self, busy: bool) -> None:
        """The emulator holds a job (``stall_next``) or has dropped it."""

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when a soft reset drops the job in flight."""


# Words the host stores that the card must see (RW, and IRQ_STATUS as a W1C write), words the
# card changes (read after host stores and jobs), and RO words fixed for a build (read once).
_HOST_WORDS = [w for r in REGS if r.access is not Access.RO for w in r.words]
_LIVE_WORDS = [w for r in (REGS.STATUS, REGS.IRQ_STATUS, REGS.LAST_TAG) for w in r.words] + [
    w for r in REGS if r.width == 64 for w in r.words]
_FIXED_WORDS = [w for r in REGS if r.access is Access.RO for w in r.words
                if w not in _LIVE_WORDS]


class _TransportCard:
    """A ``CardBackend`` on the card behind ``transport`` (see the module docstring), with the
    register words mirrored in ``words`` (the shared file). ``timeout``: seconds a job may take
    to be taken and to be answered."""

    def __init__(self, transport: Transport, words: memoryview, *, timeout: float):
        self.transport = transport
        self.timeout = timeout
        self._words = words
        self._hooks: list[Callable[[], None]] = []
        # The file starts as the card's registers; _seen is the file as the emulator last left
        # it, so a word that differs from it is a host store.
        self._seen = {w: transport.reg_read(w) for r in REGS for w in r.words}
        for off, value in self._seen.items():
            words[off >> 2] = value
        self._pending = False  # a pulse or STATUS.RESETTING still to see cleared

    @property
    def running(self) -> bool:
        return bool(REGS.CONTROL.RUN.get(self._seen[REGS.CONTROL.offset]))

    def on_reset(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def set_busy(self, busy: bool) -> None:
        pass  # the card never saw the held job: nothing to show

    def sync(self) -> None:
        if self._mirror() or self._pending:
            self._pull()
        else:
            for off in _LIVE_WORDS + _FIXED_WORDS:  # undo stray stores into card-owned words
                self._words[off >> 2] = self._seen[off]

    def _mirror(self) -> bool:
        """Write the host's changed words to the card; True if there were any."""
        changed = [off for off in _HOST_WORDS if self._words[off >> 2] != self._seen[off]]
        for off in changed:
            value = self._seen[off] = self._words[off >> 2]
            self.transport.reg_write(off, value)
            if off == REGS.CONTROL.offset and REGS.CONTROL.SOFT_RESET.get(value):
                self.transport.flush()  # what the aborted job had sent is not the next answer
                for hook in self._hooks:
                    hook()
        return bool(changed)

    def _pull(self) -> None:
        """Copy the card's changing words into the file; CONTROL too while a pulse is pending
        (the host waits for it then and stores nothing there; otherwise CONTROL is the host's).
        CONTROL is read first and written last, so the file never shows a cleared pulse next
        to a STATUS older than it."""
        ctl = REGS.CONTROL.offset
        control = None
        if self._seen[ctl] & REGS.CONTROL.pulse_mask:
            control = self.transport.reg_read(ctl)
        for off in _LIVE_WORDS:
            self._words[off >> 2] = self._seen[off] = self.transport.reg_read(off)
        if control is not None:
            self._words[ctl >> 2] = self._seen[ctl] = control
        self._pending = bool(self._seen[ctl] & REGS.CONTROL.pulse_mask or
                             REGS.STATUS.RESETTING.get(self._seen[REGS.STATUS.offset]))

    def run_job(self, job: bytes) -> bytes:
        # The host stored CONTROL.OP and the TABLE window before it wrote the job: the card
        # must have them before the job's first beat.
        if self._mirror():
            self._pull()
        t = self.transport
        t.submit(job)
        t.wait(self.timeout)
        out = t.receive(_at_tlast, limit=1 << 62, timeout=self.timeout)
        self._pull()
        return out


def _at_tlast(data: bytes) -> None:
    return None  # the transport ends each message at tlast


class XdmaEmulator:
    """Emulated XDMA nodes in ``directory`` served by a card (see the module docstring).

    ``prefix`` is what ``XdmaTransport`` (or ``actpack.open_device("xdma:" + prefix)``) opens.
    Use as a context manager, or call ``stop``.

    ``card``: ``"model"`` (default) for a ``CardModel`` made here (``config``/``magic``/
    ``version`` go to it; ``model`` is it), or an open ``Transport`` whose card serves the
    nodes (``model`` is None; the emulator's thread is the transport's only user until ``stop``,
    and the caller closes it); ``job_timeout``: seconds a job may take on such a card.
    ``error``: the ``CardError`` that made a transport's card dead, else None.
    """

    def __init__(self, directory, *, name: str = "xdma0", channel: int = 0,
                 card: str | Transport = "model", config: CardConfig | None = None,
                 pipe_bytes: int = 1 << 20, poll_s: float = 0.001, job_timeout: float = 600.0,
                 **model_args):
        if not (isinstance(card, Transport) or card == "model"):
            raise ValueError(f"card: 'model' or a Transport, got {card!r}")
        if isinstance(card, Transport) and (config is not None or model_args):
            raise ValueError("config, magic, version: for card='model' only (a transport's "
                             "card has its own)")
        self.prefix = os.path.join(os.fspath(directory), name)
        self.paths = node_paths(self.prefix, channel)
        self.poll_s = poll_s
        self.dead = False
        self.stall_next = False
        self.corrupt_next: int | None = None
        self.jobs_served = 0
        self.error: CardError | None = None
        fd = os.open(self.paths["user"], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, REG_SPACE)
            self._map = mmap.mmap(fd, REG_SPACE, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._bytes = memoryview(self._map)
        self._words = self._bytes.cast("I")
        self.model: CardModel | None = None
        self.card: CardBackend
        if isinstance(card, Transport):
            self.card = _TransportCard(card, self._words, timeout=job_timeout)
        else:
            self.card = self.model = CardModel(config=config, words=self._words, **model_args)
        self.card.on_reset(self._drop_job)
        for key in ("h2c", "c2h"):
            os.mkfifo(self.paths[key], 0o600)
        # O_RDWR: opening a FIFO never blocks then, and each side always has a peer.
        self._h2c = os.open(self.paths["h2c"], os.O_RDWR | os.O_NONBLOCK)
        self._c2h = os.open(self.paths["c2h"], os.O_RDWR | os.O_NONBLOCK)
        for fd in (self._h2c, self._c2h):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, pipe_bytes)
        self._inbuf = bytearray()
        self._held: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"xdma-emulator {name}",
                                        daemon=True)
        self._thread.start()

    def _drop_job(self) -> None:
        # Soft reset: the job in flight and its unread input are gone, as on the card.
        self._held = None
        self._inbuf.clear()
        self.card.set_busy(False)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._h2c, select.POLLIN)
        while not self._stop.is_set():
            if self.dead:
                time.sleep(self.poll_s)
                continue
            try:
                self.card.sync()
                if self._held is not None or not self.card.running:
                    time.sleep(self.poll_s)  # H2C stalls: nothing is read
                    continue
                if poller.poll(self.poll_s * 1000):
                    self._read_input()
                self._run_jobs()
            except CardError as exc:  # a transport's card failed: it is dead from now on
                self.error = exc
                self.dead = True

    def _read_input(self) -> None:
        while not self.dead:  # a card that dies stops taking data at once (the tests' fault)
            try:
                chunk = os.read(self._h2c, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._inbuf += chunk

    def _run_jobs(self) -> None:
        while len(self._inbuf) >= DESCRIPTOR_BYTES and not self.dead:
            try:
                end = DESCRIPTOR_BYTES + Descriptor.from_bytes(self._inbuf).in_bytes
            except ProtocolError:
                end = len(self._inbuf)  # no length to go by: take what came as one transfer
            if len(self._inbuf) < end:
                return
            job = bytes(self._inbuf[:end])
            del self._inbuf[:end]
            if self.stall_next:
                self.stall_next = False
                self._held = job
                self.card.set_busy(True)
                return
            out = bytearray(self.card.run_job(job))
            self.jobs_served += 1
            if self.corrupt_next is not None:
                out[self.corrupt_next % len(out)] ^= 0x10
                self.corrupt_next = None
            self._send(bytes(out))

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._c2h, select.POLLOUT)
        while view and not self._stop.is_set():
            if not poller.poll(self.poll_s * 1000):
                continue
            try:
                view = view[os.write(self._c2h, view):]
            except BlockingIOError:
                continue

    def stop(self) -> None:
        """Stop serving and close the nodes: the transport's reader sees end of file, a pending
        H2C write fails with EPIPE."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        os.close(self._h2c)
        os.close(self._c2h)
        self._words.release()
        self._bytes.release()
        self._map.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"XdmaEmulator({self.prefix!r})"
