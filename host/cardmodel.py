"""A behavioural model of the card: the register map's semantics and the job protocol on bytes.

``CardModel`` stands in for the RTL card until it lands: it serves ``hw.regs.REGS`` (RO, RW with
self-clearing pulses, W1C, 64-bit counters, the table window) and runs jobs of ``hw.protocol``
(descriptor + sections in, frame or decoded blocks + status record out) with the numpy reference
model, so its frames are the reference's bytes. It is also the server behind the emulated XDMA
nodes (``host.xdma.XdmaEmulator``), where the register words live in a shared file.

What the model checks that the RTL will take on trust (``ErrorCode.CONTRACT``): that the host's
tiles are the tensor padded by edge replication and that its scales are the reference's. The
model computes the frame from the untiled values with ``reference.compress`` (so no codec logic is
duplicated here) and then compares; the RTL would code the tiles and scales it was given.

``ModelTransport`` puts the model behind the ``Transport`` interface in-process (exact register
semantics, no threads): ``actpack.open_device("model")``.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import threading
from collections.abc import Callable

import numpy as np

from actpack.codec import reference
from actpack.codec.frame import (
    FIXED_HEADER,
    SCALE_RECORD,
    Header,
    _check_param,
    frame_bound,
    groups_of,
    header_length,
    parse_frame,
    scale_record,
)
from actpack.codec.spec import MAX_GROUPS, DType, Mode, geometry
from actpack.errors import Check, FrameError
from actpack.hw.protocol import (
    DESCRIPTOR_BYTES,
    SCALE_RECORD_BYTES,
    SHAPE_BYTES,
    Descriptor,
    ErrorCode,
    Op,
    ProtocolError,
    StatusRecord,
    align,
    compress_in_bytes,
    frame_error_code,
    table_crc,
    unpack_shape,
    values_bytes,
)
from actpack.hw.regs import CARD_MAGIC, REG_SPACE, REGS, Access, CardConfig, version_word

from .errors import CardProtocolError, CardTimeoutError
from .transport import Expect, Transport

__all__ = ["BITS", "CardModel", "ModelTransport", "RecordedJob", "RecordingTransport"]

BITS = {DType.FLOAT32: np.dtype("<u4"), DType.FLOAT16: np.dtype("<u2"),
        DType.BFLOAT16: np.dtype("<u2")}
_COUNTERS = [r for r in REGS if r.width == 64]
_OWNED = [r for r in REGS if r.access is not Access.RW]  # words the card writes
# Checks of parse_frame on what follows the header (16 on), and a block decoder's check that names
# its block: a streaming decoder finds these only after it has sent blocks, so it sends the values
# section before the status record.
_CHECKS = list(Check)
_LATE = frozenset(c for c in _CHECKS[_CHECKS.index(Check.TRUNCATED):] if not c.block)


class _Reject(Exception):
    def __init__(self, code: ErrorCode, detail: int = 0, values: int = 0):
        super().__init__(code.name)
        self.code, self.detail, self.values = code, detail, values


class CardModel:
    """The card's behaviour. ``words``: the register space as a 32-bit word view (default: a
    private buffer); ``magic``/``version`` override MAGIC/VERSION (to model a foreign card).

    Host-side access with exact semantics: ``reg_read``/``reg_write``. Where the host stores into
    the words directly (a shared mapping), call ``sync`` periodically: it carries out pulses found
    in CONTROL, applies a changed IRQ_STATUS word as a W1C write, and restores card-owned words.
    Thread-safe.
    """

    def __init__(self, *, config: CardConfig | None = None, words: memoryview | None = None,
                 magic: int = CARD_MAGIC, version: int | None = None):
        self.config = config if config is not None else CardConfig()
        if words is None:
            words = memoryview(bytearray(REG_SPACE)).cast("I")
        if words.format != "I" or len(words) * 4 < REG_SPACE:
            raise ValueError(f"words: a 32-bit word view of {REG_SPACE} bytes")
        self._words = words
        self._lock = threading.RLock()
        self._reset_hooks: list[Callable[[], None]] = []
        self._counts = {r.name: 0 for r in _COUNTERS}
        self._own: dict[int, int] = {}
        self.jobs = 0
        for off, value in self.config.reset_words().items():
            words[off >> 2] = value
        self._own_set(REGS.MAGIC, magic)
        self._own_set(REGS.VERSION, version_word() if version is None else version)
        for r in _OWNED:
            for w in r.words:
                self._own.setdefault(w, words[w >> 2])

    # ---------------------------------------------------------------- registers

    def _own_set(self, reg, value: int, word: int | None = None) -> None:
        off = reg.offset if word is None else word
        self._own[off] = value
        self._words[off >> 2] = value

    def _word(self, reg) -> int:
        return self._words[reg.offset >> 2]

    def reg_read(self, offset: int) -> int:
        _check_offset(offset)
        return self._words[offset >> 2]

    def reg_write(self, offset: int, value: int) -> None:
        _check_offset(offset)
        value &= 0xFFFFFFFF
        reg = REGS.at(offset)
        with self._lock:
            if reg is None or reg.access is Access.RO:
                return  # AXI4-Lite answers OKAY and the write has no effect
            if reg.access is Access.W1C:
                self._own_set(reg, self._own[offset] & ~value)
                return
            self._words[offset >> 2] = value
            if reg is REGS.CONTROL:
                self._control(value)

    def sync(self) -> None:
        """Act on host stores made directly into the words (shared-memory emulation)."""
        with self._lock:
            control = self._word(REGS.CONTROL)
            if control & REGS.CONTROL.pulse_mask:
                self._control(control)
            irq = REGS.IRQ_STATUS.offset
            if self._words[irq >> 2] != self._own[irq]:
                self._own_set(REGS.IRQ_STATUS, self._own[irq] & ~self._words[irq >> 2])
            for off, value in self._own.items():
                if self._words[off >> 2] != value:
                    self._words[off >> 2] = value

    def _control(self, value: int) -> None:
        c = REGS.CONTROL
        if c.SOFT_RESET.get(value):
            self.soft_reset()
        if c.CLEAR_COUNTERS.get(value):
            for r in _COUNTERS:
                self._count(r, -self._counts[r.name])
        self._words[c.offset >> 2] = value & ~c.pulse_mask

    @property
    def running(self) -> bool:
        return bool(REGS.CONTROL.RUN.get(self._word(REGS.CONTROL)))

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (under the model's lock) when a soft reset drops the job in flight."""
        self._reset_hooks.append(hook)

    def soft_reset(self) -> None:
        with self._lock:
            s = REGS.STATUS
            self._own_set(s, s.value(RESETTING=1))
            for hook in self._reset_hooks:
                hook()
            self.jobs = 0
            self._own_set(REGS.IRQ_STATUS, 0)
            self._own_set(s, 0)

    def set_busy(self, busy: bool) -> None:
        """Mark a job in flight (the emulator holds one while it stalls)."""
        with self._lock:
            s = REGS.STATUS
            word = self._own[s.offset] & ~s.BUSY.mask
            self._own_set(s, word | s.BUSY.put(int(busy)))

    def _count(self, reg, n: int) -> None:
        value = self._counts[reg.name] = self._counts[reg.name] + n
        self._own_set(reg, value & 0xFFFFFFFF, reg.lo)
        self._own_set(reg, value >> 32, reg.hi)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def _table(self) -> np.ndarray:
        words = [self._words[w >> 2] for w in REGS.TABLE.words]
        return np.frombuffer(struct.pack(f"<{len(words)}I", *words), dtype=np.uint8)

    # ---------------------------------------------------------------- jobs

    def run_job(self, job) -> bytes:
        """One H2C transfer in (descriptor .. tlast), its C2H message out; updates STATUS,
        LAST_TAG, IRQ_STATUS and the counters."""
        job = bytes(job)
        with self._lock:
            self.set_busy(True)
            tag, op = 0, Op.NONE
            try:
                d = Descriptor.from_bytes(job)
                tag, op = d.tag, d.op
                if op != REGS.CONTROL.OP.get(self._word(REGS.CONTROL)):
                    raise _Reject(ErrorCode.BAD_OP, int(op))
                body = job[DESCRIPTOR_BYTES:]
                if len(body) != d.in_bytes:
                    raise _Reject(ErrorCode.LENGTH, len(body))
                if op is Op.COMPRESS:
                    out, code, detail = self._compress(d, body), ErrorCode.OK, 0
                elif op is Op.DECOMPRESS:
                    out, code, detail = self._decompress(body), ErrorCode.OK, 0
                else:  # NONE with no body: a fence, answered by a status record
                    out, code, detail = b"", ErrorCode.OK, 0
            except ProtocolError as exc:
                crc = "CRC" in str(exc)
                out, code, detail = b"", ErrorCode.BAD_DESCRIPTOR, int(crc)
            except _Reject as rej:
                out, code, detail = bytes(rej.values), rej.code, rej.detail
            if code is not ErrorCode.OK or op is not Op.COMPRESS:
                out += StatusRecord(code, tag, op, len(job), len(out), detail).to_bytes()
            self._finish(job, out, code, tag, frame=op is not Op.NONE, crc=code.is_crc or (
                code is ErrorCode.BAD_DESCRIPTOR and detail == 1))
            return out

    def _finish(self, job: bytes, out: bytes, code: ErrorCode, tag: int, *, frame: bool,
                crc: bool) -> None:
        self._count(REGS.BYTES_IN, len(job))
        self._count(REGS.BYTES_OUT, len(out))
        irq = REGS.IRQ_STATUS
        cause = irq.value(JOB_DONE=1)
        if code is ErrorCode.OK:
            self._count(REGS.FRAMES, int(frame))
        else:
            cause |= irq.value(JOB_ERROR=1)
            if crc:
                self._count(REGS.CRC_ERRORS, 1)
                cause |= irq.value(CRC_ERROR=1)
            else:
                self._count(REGS.PROTOCOL_ERRORS, 1)
                cause |= irq.value(PROTOCOL_ERROR=1)
        self._own_set(irq, self._own[irq.offset] | cause)
        self.jobs += 1
        s = REGS.STATUS
        self._own_set(s, s.value(ERROR=int(code is not ErrorCode.OK), LAST_CODE=int(code),
                                 JOBS_DONE=self.jobs & 0xFFFF))
        self._own_set(REGS.LAST_TAG, tag)

    def _supported(self, mode: Mode, dtype: DType) -> None:
        caps = self.config.caps
        if mode not in caps.modes or dtype not in caps.dtypes:
            raise _Reject(ErrorCode.UNSUPPORTED, int(mode) | int(dtype) << 8)

    def _compress(self, d: Descriptor, body: bytes) -> bytes:
        try:
            mode, dtype = d.frame_mode(), d.frame_dtype()
            shape = unpack_shape(body, d.ndim) if len(body) >= SHAPE_BYTES else None
        except (ValueError, ProtocolError):
            raise _Reject(ErrorCode.BAD_DESCRIPTOR) from None
        if not self.config.caps.compress:
            raise _Reject(ErrorCode.UNSUPPORTED)
        self._supported(mode, dtype)
        if shape is None:
            raise _Reject(ErrorCode.LENGTH, len(body))
        geo = geometry(shape)
        groups = groups_of(mode, geo.groups)
        if d.nblocks != geo.nblocks or d.ngroups != groups or groups > MAX_GROUPS:
            raise _Reject(ErrorCode.BAD_DESCRIPTOR)
        if d.in_bytes != compress_in_bytes(dtype, d.ngroups, d.nblocks):
            raise _Reject(ErrorCode.LENGTH, d.in_bytes)
        if frame_bound(shape, dtype, mode) > self.config.buffer_kib * 1024:
            raise _Reject(ErrorCode.TOO_LARGE)
        table = None
        if mode is Mode.DCT:
            table = self._table()
            if table_crc(table) != d.table_crc or not table.all():
                raise _Reject(ErrorCode.TABLE_MISMATCH)
        records = body[SHAPE_BYTES : SHAPE_BYTES + SCALE_RECORD_BYTES * d.ngroups]
        scales = []
        for i in range(d.ngroups):
            try:
                scales.append(scale_record(i, *SCALE_RECORD.unpack_from(
                    records, SCALE_RECORD_BYTES * i)))
            except FrameError:
                raise _Reject(ErrorCode.BAD_DESCRIPTOR, i) from None
        try:
            _check_param(mode, d.param, scales)
        except FrameError:
            raise _Reject(ErrorCode.BAD_DESCRIPTOR) from None
        tiles = np.frombuffer(body, dtype=BITS[dtype], count=64 * d.nblocks,
                              offset=SHAPE_BYTES + align(len(records)))
        tiles = tiles.reshape(-1, 8, 8)
        if geo.nblocks:
            bits = reference.untile(tiles, geo).reshape(shape)
        else:
            bits = np.zeros(shape, dtype=BITS[dtype])
        header = Header(mode, dtype, tuple(shape), d.param, d.table_id, d.table_arg, table)
        frame = reference.compress(bits.astype(BITS[dtype].newbyteorder("=")), header)
        at = header_length(mode, len(shape), 0)  # where the scale records start
        if frame[at : at + len(records)] != records or (
                geo.nblocks and not np.array_equal(reference.tile(bits.reshape(-1), geo), tiles)):
            raise _Reject(ErrorCode.CONTRACT)
        return frame

    def _decompress(self, data: bytes) -> bytes:
        if not self.config.caps.decompress:
            raise _Reject(ErrorCode.UNSUPPORTED)
        try:
            header = parse_frame(data)[0]
            self._supported(header.mode, header.dtype)
            bits, header = reference.decompress(data)
        except FrameError as exc:
            late = exc.check in _LATE or exc.block is not None
            values = _values_of(data) if late else 0
            raise _Reject(frame_error_code(exc.check), exc.block or 0, values) from None
        geo = header.geometry
        if not geo.nblocks:
            return b""
        tiles = reference.tile(bits.reshape(-1), geo)
        return tiles.astype(BITS[header.dtype]).tobytes()


def _values_of(frame: bytes) -> int:
    """Bytes of the values section a streaming decoder sends for this frame's header."""
    h = FIXED_HEADER.unpack_from(frame, 0)
    shape = struct.unpack_from(f"<{h.ndim}Q", frame, FIXED_HEADER.size)
    return values_bytes(DType(h.dtype), geometry(shape).nblocks)


def _check_offset(offset: int) -> None:
    if offset % 4 or not 0 <= offset < REG_SPACE:
        raise ValueError(f"offset: a 4-byte aligned address below {REG_SPACE:#x}, got {offset:#x}")


class ModelTransport(Transport):
    """``CardModel`` in-process behind the ``Transport`` interface. Jobs run when submitted
    (while CONTROL.RUN is 1; else they wait, as a stalled H2C stream would)."""

    name = "model"

    def __init__(self, model: CardModel | None = None):
        self.model = model if model is not None else CardModel()
        self._pending: collections.deque[bytes] = collections.deque()
        self._out: collections.deque[bytes] = collections.deque()
        self.model.on_reset(self._pending.clear)

    def reg_read(self, offset: int) -> int:
        return self.model.reg_read(offset)

    def reg_write(self, offset: int, value: int) -> None:
        self.model.reg_write(offset, value)
        self._pump()

    def submit(self, data) -> None:
        self._pending.append(bytes(data))
        self._pump()

    def _pump(self) -> None:
        while self._pending and self.model.running:
            self._out.append(self.model.run_job(self._pending.popleft()))

    def wait(self, timeout: float) -> None:
        if self._pending:
            raise CardTimeoutError("the card model is not running (CONTROL.RUN is 0): the H2C "
                                   "transfer stalls")

    def receive(self, expect: Expect, *, limit: int, timeout: float) -> bytes:
        if not self._out:
            raise CardTimeoutError("the card model has no message to send")
        msg = self._out.popleft()
        if len(msg) > limit:
            raise CardProtocolError(f"the card sent {len(msg)} bytes, more than the {limit} "
                                    "this job can produce")
        return msg

    def flush(self) -> int:
        n = sum(len(m) for m in self._out)
        self._out.clear()
        return n

    def __repr__(self) -> str:
        return f"ModelTransport({self.model.config})"


@dataclasses.dataclass
class RecordedJob:
    """One H2C job as the driver sent it, with the CONTROL word and TABLE window (64 bytes) it
    ran under, and what the caller said it was doing (``RecordingTransport.what``)."""

    data: bytes
    control: int
    table: bytes
    what: str = ""


class RecordingTransport(ModelTransport):
    """A ``ModelTransport`` that keeps every job it is given (``jobs``), so that a driver
    session can be replayed into another card (the RTL under simulation) and the answers
    compared with the model's."""

    def __init__(self, model: CardModel | None = None):
        super().__init__(model)
        self.jobs: list[RecordedJob] = []
        self.what = ""  # copied into each job: a label for the caller's next driver call

    def submit(self, data) -> None:
        control = self.model.reg_read(REGS.CONTROL.offset)
        table = b"".join(self.model.reg_read(w).to_bytes(4, "little") for w in REGS.TABLE.words)
        self.jobs.append(RecordedJob(bytes(data), control, table, self.what))
        super().submit(data)
