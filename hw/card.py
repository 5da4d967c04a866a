"""The card's top level: jobs of docs/card.md section 3 in, frames, values and status records out.

``CardCore`` runs the job protocol on the card's 16-byte internal beats (``CodeBeat``: data,
count, last) next to the register file's card-side ports; ``Card`` puts it behind what a PCIe DMA
core gives user logic: AXI4-Stream ``h2c``/``c2h`` of ``stream_bytes`` (``hw.axis``) and the
AXI4-Lite ``bus`` of ``hw.regfile.RegisterFile``.

Per job (one H2C packet, one C2H message), each phase a component of its own (``hw.descriptor``,
``hw.compressjob``, ``hw.decompressjob``, ``hw.job.StatusWriter``):

- **descriptor** (64 bytes): magic, CRC32C (as a residue over all 64 bytes), reserved bytes, op
  against CONTROL.OP;
- **fence** (op NONE): an OK status record;
- **compress**: the shape section into ``Geometry`` (nblocks and ngroups checked against it),
  the table window (CRC32C against ``table_crc``), the scale records (ranges), the parameter's
  range; then the header template into the ``FrameBuilder`` while the dct table goes into the
  engine, then the tiled values, a row (8 values) at a time with their block's group scale, into
  the ``Compressor`` of the job's mode and dtype; its index entries and payload into the
  builder, whose frame is the C2H message;
- **decompress**: the frame into the ``FrameParser``, its blocks into the ``Decompressor`` of the
  frame's mode and dtype, the decoded rows out as the values section, then a status record with
  the parser's verdict (or the first flagged block).

What the card takes on trust where the reference model (``host.cardmodel``) checks: the host's
tiles are edge-replicated padding and its scales are the reference's (``CONTRACT``), and a scale
record's float32 inverse matches its mantissa and exponent (a division the host has done).

Errors end a job with a status record (docs/card.md 3.4) after the input is read up to ``tlast``;
``LENGTH`` (the packet is not ``64 + in_bytes`` long) outranks every other code, as in the model.
Engines are reset between jobs and by ``CONTROL.SOFT_RESET``, which also drops the rest of the
packet in flight (STATUS.RESETTING while it drains) and whatever the job had not yet sent.
"""


import itertools

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.codec.spec import DType

from .axis import AxisToBeats, BeatsToAxis, axis_layout
from .beats import CodeBeat
from .compressjob import CompressJob
from .decompressjob import DecompressJob
from .descriptor import DescriptorReader
from .job import Next, StatusWriter
from .protocol import DESCRIPTOR, ErrorCode, Op
from .regfile import AXI4Lite, RegisterFile
from .regs import GATEWARE_MODES, REGS, Caps, CardConfig, field_layout

__all__ = ["SIM_CARD", "SIM_PARAMS", "Card", "CardCore", "card_ports"]

_COUNTERS = [r for r in REGS if r.width == 64]

SIM_CARD = CardConfig(caps=Caps(modes=GATEWARE_MODES, dtypes=frozenset({DType.FLOAT32}),
                                stream_bytes=64), buffer_kib=1024)
"""The card ``actpack.open_device("sim")`` simulates: every mode the gateware has on float32 (what
``Policy.auto`` offloads), a 512-bit stream as an XDMA Gen3 x16 core gives, a 1 MiB frame buffer."""
SIM_PARAMS = {"max_groups": 256, "max_blocks": 16384}


def _engines(config: CardConfig):
    """The (mode, dtype) pairs a card build has engines for, in a fixed order."""
    return list(itertools.product(sorted(config.caps.modes), sorted(config.caps.dtypes)))


class CardCore(wiring.Component):
    """The job protocol on 16-byte beats (``CodeBeat``: ``count`` bytes valid, the low ones;
    only a packet's last beat may hold fewer than 16).

    Ports: ``h2c`` (in) and ``c2h`` (out) beats; the register file's card side: ``control``,
    ``table`` (in), ``status``, ``last_tag``, ``irq_set``, ``<counter>_inc`` (out), wired to a
    ``RegisterFile`` of the same ``config`` by ``Card``.

    Parameters: ``config`` (``CardConfig``: modes and dtypes with engines, compress/decompress,
    ``buffer_kib``, the frame buffer every compress job's ``frame_bound`` must fit), ``max_groups``
    (scale records a job may carry), ``max_blocks`` (a decompressed frame's blocks).

    A job runs through phases, one sub-component each, which the core hands ``h2c`` and
    ``c2h`` in turn: ``DescriptorReader``, then ``CompressJob`` or ``DecompressJob`` (reset
    between jobs), then the rest of the packet dropped (DRAIN) and the ``StatusWriter``'s record,
    where the job has one. The core keeps the job's first fault, the byte counts, the counters
    and STATUS. Latency: a job's first beat is taken the cycle after it is offered (with
    CONTROL.RUN 1); STATUS.BUSY drops 2 cycles after a frame's last C2H beat, 3 after a status
    record's.

    Throughput: one beat a cycle on ``h2c`` while the engines keep up (compress: one row a cycle,
    a float32 row being two beats); ``c2h`` one beat a cycle (frames: the builder's 8 bytes a
    cycle). Backpressure: ``c2h`` stalls hold the engines, which stall ``h2c``; with CONTROL.RUN 0
    no job starts (``h2c`` stalls at a descriptor). Configurations with compress but not
    decompress (or the reverse) answer the missing op with ``UNSUPPORTED``.
    """

    def __init__(self, *, config=None, max_groups: int = 256,
                 max_blocks: int = 4096):
        self.config = config if config is not None else CardConfig()
        if not isinstance(self.config, CardConfig):
            raise TypeError(f"config: expected a CardConfig, got {type(config).__name__}")
        for name, value in (("max_groups", max_groups), ("max_blocks", max_blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        caps = self.config.caps
        if caps.lanes != 1:
            raise ValueError(f"config: caps.lanes {caps.lanes}: the card top has one lane")
        if not caps.modes or not caps.dtypes:
            raise ValueError("config: caps needs at least one mode and one dtype")
        self.max_groups, self.max_blocks = max_groups, max_blocks
        ports = {
            "h2c": In(stream.Signature(CodeBeat)),
            "c2h": Out(stream.Signature(CodeBeat)),
            "control": In(field_layout(REGS.CONTROL)),
            "table": In(data.ArrayLayout(8, 4 * REGS.TABLE.count)),
            "status": Out(field_layout(REGS.STATUS)),
            "last_tag": Out(32),
            "irq_set": Out(field_layout(REGS.IRQ_STATUS)),
        }
        ports.update({f"{r.name.lower()}_inc": Out(16) for r in _COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        caps = self.config.caps
        pairs = _engines(self.config)
        job_reset = Signal()  # the jobs' engines, builder and parser start every job clean
        m.submodules.reader = reader = DescriptorReader(
            engines=pairs if caps.compress else [], decompress=caps.decompress)
        jobs = {}  # core state -> the job phase run in it
        if caps.compress:
            jobs["COMPRESS"] = CompressJob(engines=pairs, buffer=self.config.buffer_kib * 1024,
                                           max_groups=self.max_groups)
        if caps.decompress:
            jobs["DECOMPRESS"] = DecompressJob(engines=pairs, max_blocks=self.max_blocks,
                                               max_groups=self.max_groups)
        for state, job in jobs.items():
            m.submodules[state.lower()] = ResetInserter(job_reset)(job)
        m.submodules.status_writer = sw = StatusWriter()
        phases = {"DESC": reader, **jobs}

        # ------------------------------------------------------------ the job's registers
        desc = reader.desc
        bytes_in = Signal(64)  # this job's H2C bytes, descriptor included
        bytes_out = Signal(64)  # this job's C2H bytes
        code = Signal(8)  # the job's first fault (ErrorCode)
        desc_fault = Signal()  # the descriptor itself failed: LENGTH does not outrank it
        detail = Signal(32)
        seen_last = Signal()  # the packet's tlast is in
        jobs_done = Signal(16)
        last_tag = Signal(32)
        status_r = Signal(field_layout(REGS.STATUS))
        for phase in phases.values():
            with m.If(phase.fault.valid & (code == ErrorCode.OK)):
                f = phase.fault.payload
                m.d.sync += [code.eq(f.code), detail.eq(f.detail), desc_fault.eq(f.descriptor)]
        record_code = Signal(8)  # what the status record says: LENGTH outranks later faults
        record_detail = Signal(32)
        length_fault = seen_last & ~desc_fault & (bytes_in != desc.in_bytes + DESCRIPTOR.size)
        m.d.comb += [record_code.eq(Mux(length_fault, ErrorCode.LENGTH, code)),
                     record_detail.eq(Mux(length_fault | (code == ErrorCode.LENGTH),
                                          bytes_in - DESCRIPTOR.size, detail)),
                     reader.control_op.eq(self.control.op)]
        if "COMPRESS" in jobs:
            comp = jobs["COMPRESS"]
            m.d.comb += [comp.desc.eq(desc), comp.engine.eq(reader.engine),
                         comp.table.eq(self.table)]
        for job in jobs.values():
            m.d.comb += job.seen_last.eq(seen_last)

        # ------------------------------------------------------------ byte accounting
        h2c_take = self.h2c.valid & self.h2c.ready
        m.d.comb += self.bytes_in_inc.eq(Mux(h2c_take, self.h2c.payload.count, 0))
        with m.If(h2c_take):
            m.d.sync += bytes_in.eq(bytes_in + self.h2c.payload.count)
            with m.If(self.h2c.payload.last):
                m.d.sync += seen_last.eq(1)
        c2h_take = self.c2h.valid & self.c2h.ready
        m.d.comb += self.bytes_out_inc.eq(Mux(c2h_take, self.c2h.payload.count, 0))
        with m.If(c2h_take):
            m.d.sync += bytes_out.eq(bytes_out + self.c2h.payload.count)

        # ------------------------------------------------------------ register-side outputs
        m.d.comb += [self.status.eq(status_r), self.last_tag.eq(last_tag),
                     sw.code.eq(record_code), sw.tag.eq(desc.tag), sw.op.eq(desc.op),
                     sw.bytes_in.eq(bytes_in), sw.bytes_out.eq(bytes_out),
                     sw.detail.eq(record_detail)]

        def end_job():
            """Counters, STATUS, LAST_TAG and IRQ causes of a job that ends with
            ``record_code``."""
            crc_fault = Cat(*[record_code == c for c in ErrorCode if c.is_crc]).any() \
                | ((record_code == ErrorCode.BAD_DESCRIPTOR) & desc_fault & (detail == 1))
            ok = record_code == ErrorCode.OK
            m.d.comb += [self.frames_inc.eq(ok & (desc.op != Op.NONE)),
                         self.crc_errors_inc.eq(~ok & crc_fault),
                         self.protocol_errors_inc.eq(~ok & ~crc_fault),
                         self.irq_set.job_done.eq(1), self.irq_set.job_error.eq(~ok),
                         self.irq_set.crc_error.eq(~ok & crc_fault),
                         self.irq_set.protocol_error.eq(~ok & ~crc_fault)]
            m.d.sync += [jobs_done.eq(jobs_done + 1), last_tag.eq(desc.tag),
                         status_r.error.eq(~ok), status_r.last_code.eq(record_code),
                         status_r.jobs_done.eq(jobs_done + 1)]

        def after(phase):
            """Leave ``phase`` for what its ``done`` names, on the same clock edge."""
            with m.If(phase.done.valid), m.Switch(phase.done.payload):
                for nxt in (Next.DRAIN, Next.STATUS, Next.DONE):
                    with m.Case(nxt):
                        m.next = nxt.name
                for state, job in jobs.items():
                    with m.Case(Next[state]):
                        m.d.comb += job.start.eq(1)
                        m.next = state

        # ------------------------------------------------------------ the job machine
        with m.FSM(init="IDLE") as fsm:
            m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))
            with m.State("IDLE"):
                m.d.comb += job_reset.eq(1)
                m.d.sync += [bytes_in.eq(0), bytes_out.eq(0), code.eq(0), desc_fault.eq(0),
                             detail.eq(0), seen_last.eq(0)]
                with m.If(self.control.run & self.h2c.valid):
                    m.d.comb += reader.start.eq(1)
                    m.next = "DESC"
            for state, phase in phases.items():
                with m.State(state):
                    wiring.connect(m, wiring.flipped(self.h2c), phase.i)
                    if phase is not reader:
                        wiring.connect(m, phase.o, wiring.flipped(self.c2h))
                    after(phase)
            with m.State("DRAIN"):
                m.d.comb += self.h2c.ready.eq(~seen_last)
                with m.If(seen_last | (h2c_take & self.h2c.payload.last)):
                    m.next = "STATUS"
            with m.State("STATUS"):
                m.d.comb += sw.start.eq(1)
                m.next = "STATUS_OUT"
            with m.State("STATUS_OUT"):
                wiring.connect(m, sw.o, wiring.flipped(self.c2h))
                with m.If(~sw.busy):
                    m.next = "DONE"
            with m.State("DONE"):
                end_job()
                m.next = "IDLE"
        return m


def card_ports(stream_bytes: int) -> dict:
    """The card top's ports, what a PCIe DMA core gives user logic: ``bus`` (AXI4-Lite slave),
    ``h2c`` / ``c2h`` (AXI4-Stream of ``stream_bytes`` bytes, ``hw.axis``), ``irq``."""
    layout = axis_layout(stream_bytes)  # validates stream_bytes
    return {"bus": In(AXI4Lite()), "h2c": In(stream.Signature(layout)),
            "c2h": Out(stream.Signature(layout)), "irq": Out(1)}


class Card(wiring.Component):
    """The card as a PCIe DMA core's user logic: ``bus`` (AXI4-Lite slave, the XDMA core's
    ``M_AXI_LITE``: ``hw.regfile.RegisterFile``), ``h2c`` / ``c2h`` (AXI4-Stream of
    ``config.caps.stream_bytes`` bytes, ``hw.axis``), ``irq`` (IRQ_STATUS & IRQ_ENABLE).

    ``AxisToBeats`` -> ``CardCore`` -> ``BeatsToAxis``, the register file between the host and the
    core's card-side ports. CONTROL.SOFT_RESET resets the core and both adapters (the job in
    flight and whatever it had not sent are gone) and, if an H2C packet is open, drops its bytes
    up to ``tlast`` with STATUS.RESETTING high; counters and the TABLE window stay. Parameters
    as ``CardCore``.
    """

    def __init__(self, *, config=None, max_groups: int = 256, max_blocks: int = 4096):
        self.config = config if config is not None else CardConfig()
        self.max_groups, self.max_blocks = max_groups, max_blocks
        super().__init__(card_ports(self.config.caps.stream_bytes))

    def elaborate(self, platform):
        m = Module()
        n = self.config.caps.stream_bytes
        m.submodules.regs = regs = RegisterFile(config=self.config)
        soft_reset = regs.control.soft_reset
        core = CardCore(config=self.config, max_groups=self.max_groups,
                        max_blocks=self.max_blocks)
        to_beats, to_axis = AxisToBeats(stream_bytes=n), BeatsToAxis(stream_bytes=n)
        m.submodules.core = ResetInserter(soft_reset)(core)
        m.submodules.to_beats = ResetInserter(soft_reset)(to_beats)
        m.submodules.to_axis = ResetInserter(soft_reset)(to_axis)
        wiring.connect(m, wiring.flipped(self.bus), regs.bus)
        wiring.connect(m, to_beats.o, core.h2c)
        wiring.connect(m, core.c2h, to_axis.i)
        wiring.connect(m, to_axis.o, wiring.flipped(self.c2h))

        # an H2C packet is open from its first beat to its tlast, across a soft reset
        in_packet, draining = Signal(), Signal()
        h2c_take = self.h2c.valid & self.h2c.ready
        with m.If(h2c_take):
            m.d.sync += in_packet.eq(~self.h2c.payload.last)
        with m.If(soft_reset):
            m.d.sync += draining.eq(in_packet & ~(h2c_take & self.h2c.payload.last))
        with m.Elif(draining & h2c_take & self.h2c.payload.last):
            m.d.sync += draining.eq(0)
        with m.If(draining | soft_reset):
            m.d.comb += self.h2c.ready.eq(1)  # dropped
        with m.Else():
            m.d.comb += [to_beats.i.valid.eq(self.h2c.valid),
                         to_beats.i.payload.eq(self.h2c.payload),
                         self.h2c.ready.eq(to_beats.i.ready)]

        m.d.comb += [core.control.eq(regs.control), core.table.eq(regs.table),
                     regs.status.eq(core.status), regs.status.resetting.eq(draining),
                     regs.last_tag.eq(core.last_tag), regs.irq_set.eq(core.irq_set),
                     self.irq.eq(regs.irq)]
        for r in _COUNTERS:
            name = f"{r.name.lower()}_inc"
            m.d.comb += getattr(regs, name).eq(getattr(core, name))
        return m
