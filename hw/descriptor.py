"""The first phase of every card job: the 64-byte descriptor (``protocol.DESCRIPTOR``, docs/card.md
3.1) read off the packet and checked, and the job it asks for."""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

from actpack.codec import frame as fmt
from actpack.codec.layout import in_enum
from actpack.codec.spec import DType, Mode

from . import protocol
from .beats import BEAT_BYTES, CodeBeat
from .job import DONE, FAULT, Next, report
from .protocol import DESCRIPTOR, ErrorCode, Op
from .regs import REGS, field_layout

__all__ = ["DescriptorReader"]

_BEAT_BITS = 8 * BEAT_BYTES
_DESC_BEATS = DESCRIPTOR.size // BEAT_BYTES
_JOB_MAGIC = int.from_bytes(protocol.JOB_MAGIC, "little")


class DescriptorReader(wiring.Component):
    """Read a job's descriptor from ``i`` and say what the job is.

    ``start`` (a pulse) begins a descriptor; then ``i`` is taken a beat a cycle (``ready`` high)
    until the descriptor's 4 beats are in, and in the next cycle the checks report on ``done``
    (``Next``) and, if the job fails, ``fault``. Latency: 4 beats, then 1 cycle. No
    backpressure but the one cycle of the check. ``desc`` holds the descriptor from then until
    the next ``start``; ``engine`` is the index in ``engines`` of a compress job's engine.

    In order, as the card model checks (the first that fails ends the job):

    - the packet ends before the 4th beat: ``BAD_DESCRIPTOR`` and ``Next.STATUS``;
    - magic, CRC32C (a residue over the 64 bytes), reserved bytes zero, a known ``Op``:
      ``BAD_DESCRIPTOR`` (detail 1 when only the CRC failed); ``desc`` reads 0 (the model
      reports tag 0 and op 0 for a descriptor it cannot parse);
    - ``op`` is CONTROL.OP (``control_op``): else ``BAD_OP``, detail ``op``;
    - ``Op.NONE``: a fence, ``Next.DRAIN`` with no fault;
    - decompress: ``UNSUPPORTED`` without ``decompress``; ``BAD_FRAME`` and ``Next.STATUS``
      when the packet ended with the descriptor (no frame); else ``Next.DECOMPRESS``;
    - compress: ``mode``, ``dtype`` and ``ndim`` in range (``BAD_DESCRIPTOR``), an engine for
      (mode, dtype) in ``engines`` (``UNSUPPORTED``, detail mode | dtype << 8); else
      ``Next.COMPRESS``.

    The first three faults set ``Fault.descriptor`` (a wrong packet length does not outrank
    them); every fault but the first two ends in ``Next.DRAIN``.
    """

    def __init__(self, *, engines, decompress: bool):
        self.engines = list(engines)  # (Mode, DType) pairs with a compress engine
        self.decompress = bool(decompress)
        super().__init__({
            "start": In(1),
            "i": In(stream.Signature(CodeBeat)),
            "control_op": In(field_layout(REGS.CONTROL)["op"].shape),
            "desc": Out(DESCRIPTOR.shape()),
            "engine": Out(range(max(len(self.engines), 1))),
            "fault": Out(FAULT),
            "done": Out(DONE),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=_BEAT_BITS).create()
        desc = self.desc
        k = Signal(range(_DESC_BEATS))
        ended = Signal()  # the packet's tlast came with the descriptor's last beat
        take = self.i.valid & self.i.ready
        m.d.comb += crc.start.eq(self.start)

        def finish(next_, code=None, detail=0, descriptor=0):
            m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(next_)]
            if code is not None:
                report(m, self.fault, code, detail, descriptor=descriptor)
            m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += k.eq(0)
                m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [self.i.ready.eq(1), crc.data.eq(self.i.payload.data),
                             crc.valid.eq(take)]
                with m.If(take):
                    m.d.sync += [desc.as_value().word_select(k, _BEAT_BITS).eq(
                                 self.i.payload.data), k.eq(k + 1), ended.eq(self.i.payload.last)]
                    with m.If(self.i.payload.last & (k != _DESC_BEATS - 1)):
                        # shorter than a descriptor (the model's "magic" complaint)
                        m.d.sync += desc.eq(0)
                        finish(Next.STATUS, ErrorCode.BAD_DESCRIPTOR, descriptor=1)
                    with m.Elif(k == _DESC_BEATS - 1):
                        m.next = "CHECK"
            with m.State("CHECK"):
                self._check(m, desc, crc, ended, finish)
        return m

    def _check(self, m, desc, crc, ended, finish):
        op, mode, dtype = desc.op, desc.mode, desc.dtype
        magic_ok = desc.magic == _JOB_MAGIC
        reserved_ok = (desc.flags == 0) & (desc.reserved == 0)
        with m.If(~magic_ok | ~crc.match_detected | ~reserved_ok | ~in_enum(op, Op)):
            m.d.sync += desc.eq(0)
            finish(Next.DRAIN, ErrorCode.BAD_DESCRIPTOR, magic_ok & ~crc.match_detected, 1)
        with m.Elif(op != self.control_op):
            finish(Next.DRAIN, ErrorCode.BAD_OP, op, 1)
        with m.Elif(op == Op.NONE):
            finish(Next.DRAIN)  # a fence
        with m.Elif(op == Op.DECOMPRESS):
            if not self.decompress:
                finish(Next.DRAIN, ErrorCode.UNSUPPORTED)
            else:
                with m.If(ended):
                    finish(Next.STATUS, ErrorCode.BAD_FRAME)  # no frame at all
                with m.Else():
                    finish(Next.DECOMPRESS)
        with m.Else():
            hits = [(mode == int(p[0])) & (dtype == int(p[1])) for p in self.engines]
            with m.If(~in_enum(mode, Mode) | ~in_enum(dtype, DType) | (desc.ndim > fmt.MAX_NDIM)):
                finish(Next.DRAIN, ErrorCode.BAD_DESCRIPTOR)
            with m.Elif(~Cat(*hits, Const(0, 1)).any()):
                finish(Next.DRAIN, ErrorCode.UNSUPPORTED, Cat(mode, dtype))
            with m.Else():
                for i, hit in enumerate(hits):
                    with m.If(hit):
                        m.d.sync += self.engine.eq(i)
                finish(Next.COMPRESS)
