"""The card as an actpack ``Device``: ``CardDevice`` over any ``Transport``, and ``FallbackDevice``.

``CardDevice`` probes the card (MAGIC, VERSION, CAPS, CONFIG_HASH, BUFFER_KIB; a mismatch raises
``CardMismatchError``), soft-resets it, and then runs one job at a time (docs/card.md):

- compress: the host does what needs the whole tensor (the per-group max |x| reduction and the
  scales, ``torchpath.cpu_scales``) and the tiling into padded 8 x 8 blocks
  (``cpukernels.tile_blocks``, ``reference.tile``'s order), both on the codec's CPU kernels;
  it loads the quantization table through the TABLE window, streams
  descriptor + shape + scale records + tiles, receives the frame and checks that it parses. The
  frame's bytes are ``codec.compress(tensor)``'s.
- decompress: streams the frame, receives the decoded blocks and the status record, and untiles
  them (``cpukernels.untile_blocks``).

Faults raise ``CardError`` subclasses (``host.errors``): ``CardTimeoutError`` when the card does
not answer in ``timeout`` seconds (the next job soft-resets it first), ``CardFrameError`` for a
frame that fails its checks, ``CardProtocolError`` for a rejected job, ``CardCapabilityError`` for
a job the card cannot run. ``counters()`` reads the card's counters and the driver's own.

``FallbackDevice(primary)`` redoes a failed job on the reference codec (same bytes, so no tensor is
lost) and logs one warning.

Codec helpers used here (one definition, not copied): ``torchpath.TORCH_BITS``,
``reference.NUMPY_BITS``, ``torchpath.TORCH_OF``, ``Codec.header``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from actpack.codec import Codec, Frame, cpukernels, reference, torchpath
from actpack.codec.frame import (
    FIXED_HEADER,
    MAGIC,
    MAX_NDIM,
    SCALE_RECORD,
    frame_bound,
    frame_length,
    header_length,
    parse_frame,
)
from actpack.codec.spec import MAX_GROUPS, DType, Mode, geometry
from actpack.errors import FrameError
from actpack.hw.protocol import (
    DESCRIPTOR_BYTES,
    SHAPE_BYTES,
    STATUS_BYTES,
    STATUS_MAGIC,
    Descriptor,
    ErrorCode,
    Op,
    ProtocolError,
    StatusRecord,
    compress_in_bytes,
    frame_error_code,
    pack_shape,
    table_crc,
    values_bytes,
)
from actpack.hw.regs import (
    CARD_MAGIC,
    FORMAT_VERSION,
    REGMAP_VERSION,
    REGS,
    Caps,
    version_word,
)

from .cardmodel import BITS, CardModel, ModelTransport
from .errors import (
    CardCapabilityError,
    CardError,
    CardFrameError,
    CardMismatchError,
    CardProtocolError,
    CardTimeoutError,
)
from .refdevice import Device, RefDevice
from .transport import Transport

__all__ = ["CardDevice", "CardInfo", "FallbackDevice", "open_model", "open_xdma"]

log = logging.getLogger("actpack.host.card")



@dataclass(frozen=True)
class CardInfo:
    """What the probe read."""

    version: int
    caps: Caps
    config_hash: int
    buffer_bytes: int


def _frame_expect(data: bytes) -> int | None:
    """Length of the frame (or status record) that starts ``data``, once its header tells."""
    if len(data) >= 4 and data[:4] == STATUS_MAGIC:
        return STATUS_BYTES
    if len(data) < FIXED_HEADER.size:
        return None
    h = FIXED_HEADER.unpack_from(data, 0)
    return frame_length(header_length(h.mode, h.ndim, h.ngroups), h.nblocks, h.payload_bytes)


def _early_status(data: bytes) -> bool:
    """A decompress answer that is only a status record (the card rejected the frame early)."""
    return len(data) >= STATUS_BYTES and data[:4] == STATUS_MAGIC and StatusRecord.looks_like(
        data[:STATUS_BYTES]) and StatusRecord.from_bytes(data[:STATUS_BYTES]).code != ErrorCode.OK


def _frame_layout(data: bytes) -> tuple[Mode, DType, tuple[int, ...]] | None:
    """Mode, dtype and shape from a frame's fixed header fields, or None if they are not valid
    (the card then rejects the frame)."""
    if len(data) < FIXED_HEADER.end("ndim"):
        return None
    # only the fields up to ndim need to be in
    h = FIXED_HEADER.unpack_from(bytes(data[:FIXED_HEADER.size]).ljust(FIXED_HEADER.size, b"\0"))
    try:
        shape = struct.unpack_from(f"<{h.ndim}Q", data, FIXED_HEADER.size)
        if h.magic != MAGIC or h.ndim > MAX_NDIM:
            return None
        return Mode(h.mode), DType(h.dtype), shape
    except (struct.error, ValueError):
        return None



class CardDevice:
    """An actpack ``Device`` on a card behind ``transport``. Thread-safe: jobs run one at a time.

    ``timeout``: seconds to wait for the card to take a job and to answer it;
    ``reset_timeout``: seconds for a soft reset (and the fence after it) to complete.
    """

    def __init__(self, transport: Transport, *, name: str | None = None, timeout: float = 10.0,
                 reset_timeout: float = 2.0):
        self.transport = transport
        self.name = name if name is not None else transport.name
        self.timeout = float(timeout)
        self.reset_timeout = float(reset_timeout)
        self._lock = threading.Lock()
        self._tag = 0
        self._control: int | None = None
        self._table: int | None = None
        self._needs_reset = True
        self.host_counters = {"timeouts": 0, "crc_errors": 0, "frame_errors": 0, "rejected": 0,
                              "resets": 0}
        self.info = self._probe()
        with self._lock:
            self._reset()

    # ---------------------------------------------------------------- probe, reset, registers

    def _probe(self) -> CardInfo:
        t = self.transport
        magic = t.reg_read(REGS.MAGIC.offset)
        if magic != CARD_MAGIC:
            why = (" (all ones: the card does not answer; link down or BAR not mapped)"
                   if magic == 0xFFFFFFFF else "")
            raise CardMismatchError(f"device {self.name!r}: no actpack card at {t!r}: MAGIC reads "
                                    f"{magic:#010x}{why}, expected {CARD_MAGIC:#010x} ('ACTC')")
        version = t.reg_read(REGS.VERSION.offset)
        if version != version_word():
            got, want = REGS.VERSION.decode(version), REGS.VERSION.decode(version_word())
            raise CardMismatchError(f"device {self.name!r}: the card speaks {got}, this driver "
                                    f"{want} (frame format {FORMAT_VERSION}, register map "
                                    f"{REGMAP_VERSION}); load a matching bitstream or actpack")
        return CardInfo(version, t.caps(), t.reg_read(REGS.CONFIG_HASH.offset),
                        t.reg_read(REGS.BUFFER_KIB.offset) * 1024)

    def _set_control(self, op: Op) -> None:
        value = REGS.CONTROL.value(RUN=1, OP=int(op))
        if value != self._control:
            self.transport.write(REGS.CONTROL, value)
            self._control = value

    def _reset(self) -> None:
        """Soft reset, then a fence job: every C2H byte before its status record is dropped."""
        t = self.transport
        c, s = REGS.CONTROL, REGS.STATUS
        t.write(c, c.value(RUN=1, SOFT_RESET=1))
        self._control = None
        self.host_counters["resets"] += 1
        deadline = time.monotonic() + self.reset_timeout
        while (c.SOFT_RESET.get(t.read(c)) or s.RESETTING.get(t.read(s))):
            if time.monotonic() > deadline:
                self.host_counters["timeouts"] += 1
                raise CardTimeoutError(f"device {self.name!r}: the card did not finish a soft "
                                       f"reset within {self.reset_timeout:g} s; "
                                       f"{self._counter_text()}")
            time.sleep(0.0005)
        t.flush()
        self._table = None
        self._set_control(Op.NONE)
        tag = self._next_tag()

        def fence(data: bytes) -> int | None:
            at = data.find(STATUS_MAGIC)
            while at >= 0 and len(data) >= at + STATUS_BYTES:
                record = data[at : at + STATUS_BYTES]
                if StatusRecord.looks_like(record) and StatusRecord.from_bytes(record).tag == tag:
                    return at + STATUS_BYTES
                at = data.find(STATUS_MAGIC, at + 1)
            return None

        t.submit(Descriptor(Op.NONE, 0, tag).to_bytes())
        t.wait(self.reset_timeout)
        # A transport that ends messages at tlast hands over what was in flight before the
        # fence (an aborted job's answer, a rejection) as messages of their own: skip them.
        while fence(t.receive(fence, limit=1 << 62, timeout=self.reset_timeout)) is None:
            if time.monotonic() > deadline + self.reset_timeout:
                raise CardProtocolError(f"device {self.name!r}: no answer to the fence after a "
                                        f"soft reset; {self._counter_text()}")
        self._needs_reset = False

    def reset(self) -> None:
        """Soft-reset the card (the driver does this itself after a fault)."""
        with self._lock:
            self._reset()

    def _next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        return self._tag

    def counters(self) -> dict[str, int]:
        """The card's 64-bit counters (lower-case register names) and the driver's own
        (``host_``-prefixed: timeouts, CRC and other frame errors, rejected jobs, resets)."""
        out = {r.name.lower(): self.transport.read(r) for r in REGS if r.width == 64}
        out.update({f"host_{k}": v for k, v in self.host_counters.items()})
        return out

    def _counter_text(self) -> str:
        try:
            c = self.counters()
        except Exception as exc:  # a card gone from the bus: report that, not a second error
            return f"counters unreadable ({exc})"
        return "counters: " + ", ".join(f"{k}={v}" for k, v in c.items())

    # ---------------------------------------------------------------- jobs

    def _run(self, op: Op, job, expect, limit: int) -> bytes:
        """Send ``job`` (bytes-like: the descriptor, then the body) and return the card's
        answer (a frame, values or a status record)."""
        if self._needs_reset:
            self._reset()
        self._set_control(op)
        t = self.transport
        try:
            t.submit(job)
            t.wait(self.timeout)
            return t.receive(expect, limit=limit, timeout=self.timeout)
        except CardTimeoutError as exc:
            self._needs_reset = True
            self.host_counters["timeouts"] += 1
            raise CardTimeoutError(f"device {self.name!r}: {exc}; the card will be reset before "
                                   f"the next job; {self._counter_text()}") from exc
        except CardError:
            self._needs_reset = True
            raise

    def _check_caps(self, mode: Mode, dtype: DType, engine: str) -> None:
        caps = self.info.caps
        if not getattr(caps, engine) or mode not in caps.modes or dtype not in caps.dtypes:
            raise CardCapabilityError(f"device {self.name!r}: this card cannot {engine} mode "
                                      f"{mode.label!r} {dtype.label} (CAPS {caps})")

    def _rejected(self, status: StatusRecord, what: str) -> CardError:
        self.host_counters["rejected"] += 1
        text = (f"device {self.name!r}: the card rejected the {what} job: {status.code.name} "
                f"(detail {status.detail})")
        if status.code in (ErrorCode.HEADER_CRC, ErrorCode.BODY_CRC, ErrorCode.BAD_FRAME):
            # the CRC codes name their check; BAD_FRAME stands for any other and names none
            return CardFrameError(f"{text}: the frame is corrupted", check=status.code.check)
        if status.code in (ErrorCode.UNSUPPORTED, ErrorCode.TOO_LARGE):
            return CardCapabilityError(text)
        self._needs_reset = True
        return CardProtocolError(text)

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        if not isinstance(codec, Codec):
            raise TypeError(f"codec: expected an actpack.Codec, got {type(codec).__name__}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"t: expected a torch.Tensor, got {type(tensor).__name__}")
        header = codec.header(tensor)  # the codec's own checks of dtype
        geo = header.geometry
        if len(header.shape) > MAX_NDIM or geo.groups > MAX_GROUPS:
            return codec.compress(tensor)  # raises the codec's error for this tensor
        mode, dtype = header.mode, header.dtype
        self._check_caps(mode, dtype, "compress")
        bound = frame_bound(header.shape, dtype, mode)
        if bound > self.info.buffer_bytes:
            raise CardCapabilityError(f"device {self.name!r}: a {tuple(header.shape)} tensor "
                                      f"may need {bound} bytes, the card buffers "
                                      f"{self.info.buffer_bytes}")
        # The host's share of the job, on the codec's CPU kernels (the numpy reference's int64
        # gathers cost about as much as compressing in software): scales and tiles, the tiles
        # written straight into the job's one buffer (descriptor, shape, scale records, values;
        # hw.protocol's layout), which the transport sends as it is.
        flat = torchpath.cpu_flat_bits(tensor.detach().contiguous().cpu(), dtype)
        scales = torchpath.cpu_scales(flat, header)
        nb = geo.nblocks
        body_bytes = compress_in_bytes(dtype, len(scales), nb)
        job = np.zeros(DESCRIPTOR_BYTES + body_bytes, np.uint8)
        at = DESCRIPTOR_BYTES
        job[at:at + SHAPE_BYTES] = np.frombuffer(pack_shape(header.shape), np.uint8)
        at += SHAPE_BYTES
        if scales:
            records = b"".join(SCALE_RECORD.pack(mantissa=s.mantissa, exponent=s.exponent,
                                                 inverse=s.inverse) for s in scales)
            job[at:at + len(records)] = np.frombuffer(records, np.uint8)
        values = job[len(job) - values_bytes(dtype, nb):].view(BITS[dtype])
        cpukernels.tile_blocks(flat, torchpath.cpu_geometry(geo)[0], nb,
                               threads=torch.get_num_threads(),
                               out=values.view(flat.dtype).reshape(nb, 64))
        if not values.dtype.isnative:  # the kernel wrote the host's byte order
            values.view(flat.dtype).byteswap(inplace=True)
        tcrc = table_crc(codec.table) if mode is Mode.DCT else 0
        with self._lock:
            desc = Descriptor(Op.COMPRESS, body_bytes, self._next_tag(), int(mode), int(dtype),
                              len(header.shape), header.table_id, header.table_arg, len(scales),
                              nb, float(header.param), tcrc)
            job[:DESCRIPTOR_BYTES] = np.frombuffer(desc.to_bytes(), np.uint8)
            if self._needs_reset:
                self._reset()
            if mode is Mode.DCT and self._table != tcrc:
                self._load_table(codec.table, tcrc)
            msg = self._run(Op.COMPRESS, memoryview(job), _frame_expect, bound)
            if len(msg) == STATUS_BYTES and StatusRecord.looks_like(msg):
                raise self._rejected(StatusRecord.from_bytes(msg), "compress")
        try:
            parse_frame(msg)
        except FrameError as exc:
            key = "crc_errors" if frame_error_code(exc.check).is_crc else "frame_errors"
            self.host_counters[key] += 1
            self._needs_reset = True  # a card that sent a bad frame may be out of step
            raise CardFrameError(f"device {self.name!r}: the frame the card sent fails its "
                                 f"checks: {exc}", check=exc.check, block=exc.block) from exc
        return Frame(msg, device=tensor.device)

    def _load_table(self, table, crc: int) -> None:
        words = np.frombuffer(np.asarray(table, dtype=np.uint8).tobytes(), dtype="<u4")
        for offset, word in zip(REGS.TABLE.words, words, strict=True):
            self.transport.reg_write(offset, int(word))
        self._table = crc

    def decompress(self, frame, *, device=None) -> torch.Tensor:
        if isinstance(frame, Frame):
            target = frame.device if device is None else torch.device(device)
        elif isinstance(frame, (bytes, bytearray, memoryview)):
            target = torch.device("cpu") if device is None else torch.device(device)
        else:
            raise TypeError(f"frame: expected a Frame or bytes, got {type(frame).__name__}")
        data = bytes(frame)
        layout = _frame_layout(data)
        nvalues = 0
        if layout is not None:
            mode, dtype, shape = layout
            self._check_caps(mode, dtype, "decompress")
            nvalues = values_bytes(dtype, geometry(shape).nblocks)

        def expect(buf: bytes) -> int:
            return STATUS_BYTES if _early_status(buf) else nvalues + STATUS_BYTES

        with self._lock:
            desc = Descriptor(Op.DECOMPRESS, len(data), self._next_tag())
            msg = self._run(Op.DECOMPRESS, desc.to_bytes() + data, expect,
                            nvalues + STATUS_BYTES)
            try:
                status = StatusRecord.from_bytes(msg[-STATUS_BYTES:])
            except ProtocolError as exc:
                self._needs_reset = True
                raise CardProtocolError(f"device {self.name!r}: the card's answer does not end "
                                        f"with a status record ({exc})") from exc
            if status.tag != desc.tag:
                self._needs_reset = True
                raise CardProtocolError(f"device {self.name!r}: status record of job "
                                        f"{status.tag}, expected {desc.tag}")
            if status.code is not ErrorCode.OK:
                if status.code.is_crc:
                    self.host_counters["crc_errors"] += 1
                raise self._rejected(status, "decompress")
        if layout is None or len(msg) != nvalues + STATUS_BYTES:
            raise CardProtocolError(f"device {self.name!r}: the card sent {len(msg)} bytes for a "
                                    f"frame that decodes to {nvalues} (+ status)")
        mode, dtype, shape = layout
        geo = geometry(shape)
        tiles = np.frombuffer(msg, dtype=BITS[dtype], count=64 * geo.nblocks).reshape(-1, 64)
        out = torch.empty(geo.numel, dtype=torchpath.TORCH_BITS[dtype])
        cpukernels.untile_blocks(tiles.astype(BITS[dtype].newbyteorder("="), copy=False),
                                 torchpath.cpu_geometry(geo)[0],
                                 out.numpy().view(reference.NUMPY_BITS[dtype]),
                                 threads=torch.get_num_threads())
        return out.view(torchpath.TORCH_OF[dtype]).view(shape).to(target)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CardDevice({self.transport!r})"


class FallbackDevice:
    """``primary`` with the reference codec behind it.

    A job that fails on the primary with a ``CardError`` (timeout, dead card, a bad frame from
    the card, a rejected job) is redone on ``fallback`` (default ``RefDevice()``): the frames are
    the same bytes whoever makes them, so nothing is lost and decompress works on frames from
    either. The first fault logs one warning on the ``actpack.host.card`` logger. With ``sticky``
    (default) later jobs go straight to the fallback: a dead card would cost a timeout each.
    ``faults`` counts the fallbacks; ``last_error`` keeps the latest fault.

    Not card faults: a job the card cannot run (``CardCapabilityError``: mode, dtype, size) goes
    to the fallback alone (counted in ``unsupported``); a frame that is itself corrupted raises
    ``FrameError`` from the fallback as it would from any device, and the card stays in use.
    """

    def __init__(self, primary: Device, fallback: Device | None = None, *, sticky: bool = True):
        self.primary = primary
        self.fallback = fallback if fallback is not None else RefDevice()
        self.sticky = sticky
        self.name = primary.name
        self.faults = 0
        self.unsupported = 0
        self.last_error: BaseException | None = None
        self._failed = False
        self._lock = threading.Lock()

    def _fault(self, exc: CardError) -> None:
        with self._lock:
            self.faults += 1
            self.last_error = exc
            first, self._failed = not self._failed, True
        if first:
            log.warning("device %r failed (%s); using %r from now on%s", self.primary.name, exc,
                        self.fallback.name, "" if self.sticky else " for failed jobs")

    @property
    def using_fallback(self) -> bool:
        return self._failed and self.sticky

    def compress(self, tensor: torch.Tensor, codec: Codec) -> Frame:
        if not self.using_fallback:
            try:
                return self.primary.compress(tensor, codec)
            except CardCapabilityError:
                self.unsupported += 1  # this job only: the card is fine
            except CardError as exc:
                self._fault(exc)
        return self.fallback.compress(tensor, codec)

    def decompress(self, frame, *, device=None) -> torch.Tensor:
        if device is None:
            device = frame.device if isinstance(frame, Frame) else torch.device("cpu")
        if not self.using_fallback:
            try:
                return self.primary.decompress(frame, device=device)
            except CardCapabilityError:
                self.unsupported += 1
            except CardFrameError as exc:
                # A corrupted frame is not the card's fault: the fallback raises FrameError for
                # it too, and the card stays in use. If the fallback decodes it, the card erred.
                out = self.fallback.decompress(frame, device=device)
                self._fault(exc)
                return out
            except CardError as exc:
                self._fault(exc)
        return self.fallback.decompress(frame, device=device)

    def __repr__(self) -> str:
        return f"FallbackDevice({self.primary!r}, {self.fallback!r})"


def open_xdma(prefix: str = "/dev/xdma0", *, timeout: float = 10.0, reset_timeout: float = 2.0,
              **transport_args) -> CardDevice:
    """A ``CardDevice`` on the XDMA nodes ``<prefix>_user``/``_h2c_0``/``_c2h_0``
    (``transport_args`` go to ``XdmaTransport``)."""
    from .xdma import XdmaTransport

    transport = XdmaTransport(prefix, **transport_args)
    try:
        return CardDevice(transport, timeout=timeout, reset_timeout=reset_timeout)
    except BaseException:
        transport.close()
        raise


def open_model(*, timeout: float = 10.0, reset_timeout: float = 2.0, **model_args
               ) -> CardDevice:
    """A ``CardDevice`` on the behavioural card model in-process (``host.cardmodel``;
    ``model_args`` go to ``CardModel``)."""
    return CardDevice(ModelTransport(CardModel(**model_args)), timeout=timeout,
                      reset_timeout=reset_timeout)


def open_sim(*, config=None, params=None, timeout: float = 600.0, reset_timeout: float = 60.0,
             **transport_args) -> CardDevice:
    """A ``CardDevice`` on the RTL card (``hw.card.Card``) under Verilator in a separate process
    (``host.simcard.SimTransport``): ``config`` (a ``CardConfig``, default ``hw.card.SIM_CARD``)
    and ``params`` (``Card``'s capacities, default ``hw.card.SIM_PARAMS``) choose the build,
    which is made once and cached under ``build/sim/``. Simulated time is slow: timeouts are
    generous by default."""
    from actpack.hw.card import SIM_CARD, SIM_PARAMS, Card

    from .simcard import SimTransport

    params = {"config": config if config is not None else SIM_CARD,
              **(params if params is not None else SIM_PARAMS)}
    transport = SimTransport(Card, params, name="card", **transport_args)
    try:
        return CardDevice(transport, name="sim", timeout=timeout, reset_timeout=reset_timeout)
    except BaseException:
        transport.close()
        raise
