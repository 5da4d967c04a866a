"""What the card's job phases (``hw.descriptor``, ``hw.compressjob``, ``hw.decompressjob``) tell
``hw.card.CardCore``, and the status record that ends a job (docs/card.md 3.4).

A phase reports two things, each a ``valid``-only stream the core always takes:

- ``fault`` (``Fault``): a reason the job fails; the core keeps the job's first one, which the
  status record reports (a later ``LENGTH`` outranks it, as in the card model);
- ``done`` (``Next``): the phase is over, in the cycle it is, so the core's next phase starts
  on the same clock edge (a phase adds no cycle of its own).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

from . import protocol
from .beats import BEAT_BYTES, CodeBeat
from .protocol import STATUS

__all__ = ["DONE", "FAULT", "Fault", "Next", "StatusWriter", "job_ports", "report"]


class Next(enum.Enum, shape=3):
    """What the card core does when a phase ends."""

    DRAIN = 0  # read the packet up to its tlast, then the status record
    STATUS = 1  # the packet has ended: the status record
    DONE = 2  # the answer (a frame) is complete: no status record
    COMPRESS = 3  # (descriptor) run the compress job
    DECOMPRESS = 4  # (descriptor) run the decompress job


Fault = data.StructLayout({"code": 8, "detail": 32, "descriptor": 1})
"""A reason a job fails: ``code`` (``protocol.ErrorCode``), ``detail`` (the status record's
code-specific number) and ``descriptor``, set when the descriptor itself failed (then a packet
of the wrong length is not reported as ``LENGTH``)."""

FAULT = stream.Signature(Fault, always_ready=True)
"""A phase's ``fault`` port: valid in the cycle a fault is found."""
DONE = stream.Signature(Next, always_ready=True)
"""A phase's ``done`` port: valid in the phase's last cycle, with what the core does next."""



def job_ports() -> dict:
    """The ports of a job phase (``CompressJob``, ``DecompressJob``): ``start`` (a pulse: the
    job begins), ``seen_last`` (the packet's tlast is in), ``i`` (the packet's next beats),
    ``o`` (the answer), ``fault`` and ``done``."""
    return {"start": In(1), "seen_last": In(1), "i": In(stream.Signature(CodeBeat)),
            "o": Out(stream.Signature(CodeBeat)), "fault": Out(FAULT), "done": Out(DONE)}


def report(m: Module, fault, code, detail=0, *, descriptor=0) -> None:
    """Drive ``fault`` (a ``FAULT`` port) with a fault in this cycle, under ``m``'s current
    conditions; of two reports in one cycle the later statement wins."""
    m.d.comb += [fault.valid.eq(1), fault.payload.code.eq(code),
                 fault.payload.detail.eq(detail), fault.payload.descriptor.eq(descriptor)]


_BEAT_BITS = 8 * BEAT_BYTES
_STATUS_BEATS = STATUS.size // BEAT_BYTES
_STATUS_CRC_WORDS = STATUS.offset("crc") // 4  # the status CRC steps over 32-bit words
_STATUS_MAGIC = int.from_bytes(protocol.STATUS_MAGIC, "little")


class StatusWriter(wiring.Component):
    """A status record (``protocol.STATUS``, docs/card.md 3.4) as beats, ``last`` on the final
    one.

    Latency: ``start`` latches the fields; the CRC32C over the bytes before the ``crc`` field
    takes a 32-bit word a cycle (15 cycles), one cycle seals it, then the beats go out one a
    cycle. Backpressure: ``o.ready`` low holds the beat. ``busy`` from ``start`` until the last
    beat is taken; ``start`` while busy is ignored. No bad input: every field is sent as given.
    """

    code: In(32)
    tag: In(32)
    op: In(32)
    bytes_in: In(64)
    bytes_out: In(64)
    detail: In(32)
    start: In(1)
    busy: Out(1)
    o: Out(stream.Signature(CodeBeat))

    def elaborate(self, platform):
        m = Module()
        rec = Signal(STATUS.shape())
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=32).create()
        k = Signal(range(max(_STATUS_CRC_WORDS, _STATUS_BEATS) + 1))
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [rec.eq(0), rec.magic.eq(_STATUS_MAGIC), rec.code.eq(self.code),
                             rec.tag.eq(self.tag), rec.op.eq(self.op),
                             rec.bytes_in.eq(self.bytes_in), rec.bytes_out.eq(self.bytes_out),
                             rec.detail.eq(self.detail)]
                m.d.sync += [k.eq(0), self.busy.eq(1)]
                m.d.comb += crc.start.eq(1)
                m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [crc.data.eq(rec.as_value().word_select(k, 32)), crc.valid.eq(1)]
                m.d.sync += k.eq(k + 1)
                with m.If(k == _STATUS_CRC_WORDS - 1):
                    m.d.sync += k.eq(0)
                    m.next = "SEAL"
            with m.State("SEAL"):
                m.d.sync += rec.crc.eq(crc.crc)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.o.valid.eq(1),
                             self.o.payload.data.eq(rec.as_value().word_select(k, _BEAT_BITS)),
                             self.o.payload.count.eq(BEAT_BYTES),
                             self.o.payload.last.eq(k == _STATUS_BEATS - 1)]
                with m.If(self.o.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == _STATUS_BEATS - 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
        return m
