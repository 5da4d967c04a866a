"""hw.descriptor.DescriptorReader under Amaranth's simulator: every way a descriptor can fail
(built with hw.protocol's DESCRIPTOR table, CRCs re-sealed where only a field is wrong), the jobs
it starts, and its latency (4 beats, then the verdict in the next cycle); the codes of the
faults the card model decides from the descriptor alone are the model's."""

import dataclasses
import struct

import pytest

pytest.importorskip("amaranth")

from amaranth.sim import Simulator

from actpack.codec.spec import DType, Mode
from actpack.host.cardmodel import CardModel
from actpack.hw.beats import BEAT_BYTES
from actpack.hw.descriptor import DescriptorReader
from actpack.hw.job import Next
from actpack.hw.protocol import (
    DESCRIPTOR,
    JOB_MAGIC,
    Descriptor,
    ErrorCode,
    Op,
    StatusRecord,
    seal,
)
from actpack.hw.regs import REGS, CardConfig

ENGINES = [(Mode.SFPR8, DType.FLOAT32), (Mode.SFPR8, DType.FLOAT16), (Mode.MASK, DType.FLOAT32)]
GOOD = Descriptor(Op.COMPRESS, in_bytes=4096, tag=0x1234, mode=int(Mode.SFPR8),
                  dtype=int(DType.FLOAT16), ndim=2, ngroups=1, nblocks=3, param=4.5)
DEC = Descriptor(Op.DECOMPRESS, in_bytes=256, tag=77)
FENCE = Descriptor(Op.NONE, in_bytes=0, tag=5)


@dataclasses.dataclass
class Case:
    name: str
    packet: bytes
    control_op: Op
    next: Next
    code: ErrorCode | None = None  # None: no fault
    detail: int = 0
    descriptor: bool = False  # Fault.descriptor
    parsed: bool = True  # desc holds the descriptor (else it reads 0)
    engine: int | None = None


def _fields(d: Descriptor, **changes) -> dict:
    f = {name: getattr(d, name) for name in ("mode", "dtype", "ndim", "table_id", "table_arg",
                                              "ngroups", "nblocks", "param", "table_crc", "tag",
                                              "in_bytes")}
    return {"magic": JOB_MAGIC, "op": int(d.op), **f, **changes}


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1
    return bytes(b)


def cases(*, decompress: bool) -> list[Case]:
    comp, dec, fence = GOOD.to_bytes(), DEC.to_bytes(), FENCE.to_bytes()
    bad_desc = {"code": ErrorCode.BAD_DESCRIPTOR, "descriptor": True, "parsed": False}
    out = [
        Case("fence", fence, Op.NONE, Next.DRAIN),
        Case("compress", comp, Op.COMPRESS, Next.COMPRESS, engine=1),
        Case("compress mask", seal(DESCRIPTOR, **_fields(GOOD, mode=int(Mode.MASK),
                                                         dtype=int(DType.FLOAT32))),
             Op.COMPRESS, Next.COMPRESS, engine=2),
        Case("short: 1 beat", comp[:BEAT_BYTES], Op.COMPRESS, Next.STATUS, **bad_desc),
        Case("short: 3 beats", comp[:3 * BEAT_BYTES], Op.COMPRESS, Next.STATUS, **bad_desc),
        Case("magic", _flip(comp, 0), Op.COMPRESS, Next.DRAIN, detail=0, **bad_desc),
        Case("magic, CRC re-sealed", seal(DESCRIPTOR, **_fields(GOOD, magic=b"AJOX")),
             Op.COMPRESS, Next.DRAIN, detail=0, **bad_desc),
        Case("CRC", _flip(comp, DESCRIPTOR.offset("crc")), Op.COMPRESS, Next.DRAIN, detail=1,
             **bad_desc),
        Case("CRC over a field", _flip(comp, DESCRIPTOR.offset("tag")), Op.COMPRESS,
             Next.DRAIN, detail=1, **bad_desc),
        Case("flags", seal(DESCRIPTOR, **_fields(GOOD), flags=1), Op.COMPRESS, Next.DRAIN,
             **bad_desc),
        Case("reserved", seal(DESCRIPTOR, **_fields(GOOD), reserved=bytes(11) + b"\x80"),
             Op.COMPRESS, Next.DRAIN, **bad_desc),
        Case("unknown op", seal(DESCRIPTOR, **_fields(GOOD, op=3)), Op.COMPRESS, Next.DRAIN,
             **bad_desc),
        Case("op differs from CONTROL.OP", comp, Op.DECOMPRESS, Next.DRAIN,
             code=ErrorCode.BAD_OP, detail=int(Op.COMPRESS), descriptor=True),
        Case("fence under CONTROL.OP compress", fence, Op.COMPRESS, Next.DRAIN,
             code=ErrorCode.BAD_OP, detail=int(Op.NONE), descriptor=True),
        Case("mode out of range", seal(DESCRIPTOR, **_fields(GOOD, mode=max(Mode) + 1)),
             Op.COMPRESS, Next.DRAIN, code=ErrorCode.BAD_DESCRIPTOR),
        Case("mode 0", seal(DESCRIPTOR, **_fields(GOOD, mode=0)), Op.COMPRESS, Next.DRAIN,
             code=ErrorCode.BAD_DESCRIPTOR),
        Case("dtype out of range", seal(DESCRIPTOR, **_fields(GOOD, dtype=max(DType) + 1)),
             Op.COMPRESS, Next.DRAIN, code=ErrorCode.BAD_DESCRIPTOR),
        Case("ndim 9", seal(DESCRIPTOR, **_fields(GOOD, ndim=9)), Op.COMPRESS, Next.DRAIN,
             code=ErrorCode.BAD_DESCRIPTOR),
        Case("no engine", seal(DESCRIPTOR, **_fields(GOOD, mode=int(Mode.DCT))), Op.COMPRESS,
             Next.DRAIN, code=ErrorCode.UNSUPPORTED,
             detail=int(Mode.DCT) | int(DType.FLOAT16) << 8),
    ]
    if decompress:
        out += [Case("decompress", dec + bytes(BEAT_BYTES), Op.DECOMPRESS, Next.DECOMPRESS),
                Case("decompress, no frame", dec, Op.DECOMPRESS, Next.STATUS,
                     code=ErrorCode.BAD_FRAME)]
    else:
        out += [Case("decompress unsupported", dec + bytes(BEAT_BYTES), Op.DECOMPRESS,
                     Next.DRAIN, code=ErrorCode.UNSUPPORTED)]
    return out


def run(dut: DescriptorReader, todo: list[Case]) -> list[tuple]:
    """Each case's packet (up to the descriptor's 4 beats, tlast on the packet's last beat),
    back to back; per case: the cycle of the verdict (0 = the first beat's), ``done``,
    ``fault`` and, the cycle after, ``desc.tag`` and ``engine``."""
    got = []

    async def testbench(ctx):
        for case in todo:
            beats = [case.packet[i:i + BEAT_BYTES]
                     for i in range(0, len(case.packet), BEAT_BYTES)]
            ctx.set(dut.control_op, case.control_op)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            k = 0
            for cycle in range(16):
                offered = k < min(len(beats), 4)
                ctx.set(dut.i.valid, offered)
                if offered:
                    ctx.set(dut.i.payload.data, int.from_bytes(beats[k], "little"))
                    ctx.set(dut.i.payload.count, len(beats[k]))
                    ctx.set(dut.i.payload.last, k == len(beats) - 1)
                taken = offered and ctx.get(dut.i.ready)
                if ctx.get(dut.done.valid):
                    f = dut.fault.payload
                    fault = (ErrorCode(ctx.get(f.code)), ctx.get(f.detail),
                             bool(ctx.get(f.descriptor))) if ctx.get(dut.fault.valid) else None
                    done = (cycle, ctx.get(dut.done.payload), fault)
                    await ctx.tick()  # the beat with the verdict is taken on this edge
                    ctx.set(dut.i.valid, 0)
                    got.append((*done, ctx.get(dut.desc.tag), ctx.get(dut.engine)))
                    break
                assert not ctx.get(dut.fault.valid), f"{case.name}: a fault without done"
                await ctx.tick()
                k += taken
            else:
                raise AssertionError(f"{case.name}: no verdict in 16 cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return got


@pytest.mark.parametrize("decompress", [True, False])
def test_every_descriptor_case(decompress):
    todo = cases(decompress=decompress)
    got = run(DescriptorReader(engines=ENGINES, decompress=decompress), todo)
    for case, (cycle, done, fault, tag, engine) in zip(todo, got, strict=True):
        beats = min(-(-len(case.packet) // BEAT_BYTES), 4)
        # a short packet ends at its last beat; a full descriptor is judged a cycle later
        assert cycle == (beats - 1 if beats < 4 else 4), (case.name, cycle)
        assert done == case.next, (case.name, done)
        want = None if case.code is None else (case.code, case.detail, case.descriptor)
        assert fault == want, (case.name, fault)
        want_tag = struct.unpack_from("<I", case.packet, DESCRIPTOR.offset("tag"))[0] \
            if case.parsed else 0
        assert tag == want_tag, (case.name, tag)
        if case.engine is not None:
            assert engine == case.engine, (case.name, engine)


@pytest.mark.parametrize("case", [c for c in cases(decompress=True)
                                  if c.descriptor or c.name == "fence"], ids=lambda c: c.name)
def test_descriptor_faults_are_the_card_models(case):
    """The model answers these from the descriptor alone, whatever the rest of the packet (the
    others it ranks below LENGTH, which the core decides, not the reader)."""
    model = CardModel(config=CardConfig())
    model.reg_write(REGS.CONTROL.offset, REGS.CONTROL.value(RUN=1, OP=int(case.control_op)))
    record = StatusRecord.from_bytes(model.run_job(case.packet)[-64:])
    assert (record.code, record.detail) == (case.code or ErrorCode.OK, case.detail)
