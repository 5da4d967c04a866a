"""cocotb testbench of ``CardCore``: the job protocol on 16-byte beats against the card model.

Jobs come from the real driver: ``CardDevice`` runs compress and decompress on real tensors over
a ``RecordingTransport`` that keeps every H2C job with the CONTROL word and TABLE window it ran
under (``record_jobs``); corrupted and crafted jobs are added to them (a bad descriptor CRC, a
short job, an unknown op, an op that differs from CONTROL.OP, one beat too many and too few,
modes and dtypes without an engine, a frame too large for the buffer, corrupted frames). Each job
goes through the core back to back with the others and its C2H message is compared with what
``CardModel.run_job`` answers under the same registers:

- a compress answer (a frame) byte for byte;
- a decompress answer's status record byte for byte, and its values where they are the tensor's
  (the values of padding positions are unspecified, docs/card.md 3.3);
- a rejection's status record: code, tag, op, bytes_in (bytes_out and detail where the card and
  the model see the same: the model sends no values for a frame it rejects late).

The counters' increments summed over the run equal the model's counters (BYTES_OUT: the bytes
that came out). The jobs run once unstalled and once with the idle inserter on ``h2c`` and the
backpressure inserter on ``c2h``.
"""

import dataclasses
import os
import struct

import cocotb
import numpy as np
import torch
from cocotb.triggers import ReadOnly, RisingEdge

from actpack.codec import Codec, reference
from actpack.codec.frame import FIXED_HEADER, SCALE_RECORD, header_length, parse_frame
from actpack.codec.spec import DType, Mode, geometry
from actpack.host.card import CardDevice
from actpack.host.cardmodel import BITS, CardModel, RecordedJob, RecordingTransport

from ..hw.beats import BEAT_BYTES, CodeBeat
from ..hw.protocol import STATUS_BYTES, Descriptor, ErrorCode, Op, ProtocolError, StatusRecord
from ..hw.regs import REGS, Caps, CardConfig
from .frames import code_beats
from .stream import StreamTB, random_pauses

SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
CONFIG = CardConfig(caps=Caps(modes=frozenset({Mode.SFPR8, Mode.MASK}),
                              dtypes=frozenset({DType.FLOAT32, DType.FLOAT16}), stream_bytes=16),
                    buffer_kib=32)
PARAMS = {"max_groups": 64, "max_blocks": 1024}


def _tensors(rng) -> list[tuple[str, dict, torch.Tensor]]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    act = torch.relu(torch.randn(2, 3, 20, 21, generator=g))
    nan = act.clone()
    nan[0, 1, 3, 4], nan[1, 2, 17, 9] = float("nan"), float("inf")
    return [
        ("sfpr8 f32", {"mode": "sfpr8"}, act),
        ("sfpr8 f16 nan", {"mode": "sfpr8"}, nan.to(torch.float16)),
        ("mask f32", {"mode": "mask"}, act - 0.5),
        ("mask f16 rank 1", {"mode": "mask"}, torch.randn(150, generator=g).half()),
        ("sfpr8 rank 5", {"mode": "sfpr8"}, torch.randn(2, 3, 4, 5, 9, generator=g)),
        ("sfpr8 empty", {"mode": "sfpr8"}, torch.zeros(0, 5)),
        ("sfpr8 zeros", {"mode": "sfpr8"}, torch.zeros(4, 16, 16)),
        ("sfpr8 rank 2", {"mode": "sfpr8"}, torch.randn(3, 50, generator=g)),
    ]


def record_jobs(rng) -> list[RecordedJob]:
    rec = RecordingTransport(CardModel(config=CONFIG))
    rec.what = "fence"
    dev = CardDevice(rec)
    frames = []
    for name, kwargs, t in _tensors(rng):
        codec = Codec(backend="numpy", **kwargs)
        rec.what = f"compress {name}"
        frame = dev.compress(t, codec)
        assert bytes(frame) == bytes(codec.compress(t)), name
        frames.append((name, bytes(frame)))
        rec.what = f"decompress {name}"
        dev.decompress(frame)
    jobs = list(rec.jobs)
    comp = next(j for j in jobs if j.what == "compress sfpr8 f32")
    dec = next(j for j in jobs if j.what == "decompress sfpr8 f32")
    fence = jobs[0]
    frame = dict(frames)["sfpr8 f32"]
    desc = Descriptor.from_bytes(comp.data)

    def crafted(what, data, like=comp):
        jobs.append(RecordedJob(data, like.control, like.table, what))

    def redesc(like, body=None, **changes):
        d = dataclasses.replace(Descriptor.from_bytes(like.data), **changes)
        return d.to_bytes() + (like.data[64:] if body is None else body)

    bad_crc = bytearray(comp.data)
    bad_crc[60] ^= 1
    crafted("descriptor CRC", bytes(bad_crc))
    crafted("short job", comp.data[:32])
    unknown = bytearray(comp.data[:60])
    unknown[4] = 3
    crafted("unknown op", bytes(unknown) + struct.pack("<I", _crc(unknown)) + comp.data[64:])
    crafted("op differs from CONTROL.OP", comp.data, like=dec)
    crafted("a beat too many", comp.data + bytes(16))
    crafted("a beat too few", comp.data[:-16])
    crafted("in_bytes says more", redesc(comp, in_bytes=desc.in_bytes + 64))
    crafted("dct has no engine", redesc(comp, mode=int(Mode.DCT)))
    crafted("bfloat16 has no engine", redesc(comp, dtype=int(DType.BFLOAT16)))
    crafted("nblocks differ", redesc(comp, nblocks=desc.nblocks + 1))
    crafted("range_max out of range", redesc(comp, param=100.0))
    big = (2, 8, 32, 32)  # 64 KiB of float32: frame_bound beyond the 32 KiB buffer
    geo = geometry(big)
    big_desc = dataclasses.replace(desc, ngroups=8, nblocks=geo.nblocks,
                                   in_bytes=64 + 64 + 256 * geo.nblocks)
    crafted("too large", big_desc.to_bytes() + struct.pack("<8Q", *big, 0, 0, 0, 0)
            + SCALE_RECORD.pack(mantissa=1 << 15, exponent=-15, inverse=1.0) * 8
            + bytes(256 * geo.nblocks))
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))  # the same frame every run
    eb = bytes(Codec(backend="numpy", mode="eb", error_bound=1e-2).compress(
        torch.randn(40, 9, generator=g)))
    crafted("eb frame has no engine", redesc(dec, body=eb, in_bytes=len(eb)), like=dec)
    h = _hlen(frame)
    for what, pos in (("header CRC", 41), ("body CRC", h + 300),
                      ("trailer length", len(frame) - 56)):
        bad = bytearray(frame)
        bad[pos] ^= 4
        crafted(f"decompress: {what}", redesc(dec, body=bytes(bad)), like=dec)
    crafted("decompress: truncated", redesc(dec, body=frame[:len(frame) // 2],
                                            in_bytes=len(frame) // 2), like=dec)
    crafted("decompress: trailing", redesc(dec, body=frame + bytes(64), in_bytes=len(frame) + 64),
            like=dec)
    crafted("decompress: nothing", redesc(dec, body=b"", in_bytes=0), like=dec)
    crafted("fence", fence.data, like=fence)
    return jobs


def _crc(data) -> int:
    from actpack.codec.frame import crc32c_of

    return crc32c_of(bytes(data))


def _hlen(frame: bytes) -> int:
    h = FIXED_HEADER.unpack_from(frame, 0)
    return header_length(h.mode, h.ndim, h.ngroups)


def model_answers(jobs: list[RecordedJob]) -> tuple[list[bytes], dict]:
    model = CardModel(config=CONFIG)
    out = []
    for job in jobs:
        model.reg_write(REGS.CONTROL.offset, job.control)
        for w, off in zip(struct.unpack("<16I", job.table), REGS.TABLE.words, strict=True):
            model.reg_write(off, w)
        out.append(model.run_job(job.data))
    return out, model.counters()


# ----------------------------------------------------------------------------- comparisons


def _compare(job: RecordedJob, got: bytes, want: bytes) -> None:
    ctx = f"job {job.what!r}"
    op = Descriptor.from_bytes(job.data).op if _parses(job.data) else None
    if op is Op.COMPRESS and not _is_status(want):
        assert got == want, f"{ctx}: frame differs ({len(got)} vs {len(want)} bytes)"
        return
    assert _is_status(got[-STATUS_BYTES:]), f"{ctx}: the answer does not end in a status record"
    g = StatusRecord.from_bytes(got[-STATUS_BYTES:])
    w = StatusRecord.from_bytes(want[-STATUS_BYTES:])
    assert g.bytes_out == len(got) - STATUS_BYTES, f"{ctx}: bytes_out {g.bytes_out}"
    if len(want) == STATUS_BYTES or w.code is ErrorCode.OK:
        # rejected before any value, or good: the same record (and, if good, the same values)
        assert g == w, f"{ctx}: status {g} != model {w}"
    else:
        # rejected after its values went out: the values are unspecified (the model sends
        # zeros, the card what it decoded, fewer of them for a frame cut short)
        assert (g.code, g.tag, g.op, g.bytes_in, g.detail) == (
            w.code, w.tag, w.op, w.bytes_in, w.detail), f"{ctx}: status {g} != model {w}"
        return
    if w.code is ErrorCode.OK and op is Op.DECOMPRESS:
        header = parse_frame(job.data[64:])[0]
        geo = header.geometry
        values = len(want) - STATUS_BYTES
        assert len(got) - STATUS_BYTES == values, f"{ctx}: {len(got)} bytes, model {len(want)}"
        if geo.nblocks:  # padding positions are unspecified
            untile = [reference.untile(np.frombuffer(x[:values], dtype=BITS[header.dtype])
                                       .reshape(-1, 8, 8), geo) for x in (got, want)]
            assert np.array_equal(*untile), f"{ctx}: decoded values differ"
    else:
        assert got == want, f"{ctx}: answer differs"


def _parses(data: bytes) -> bool:
    try:
        Descriptor.from_bytes(data)
    except ProtocolError:
        return False
    return True


def _is_status(data: bytes) -> bool:
    return len(data) == STATUS_BYTES and StatusRecord.looks_like(data)


# ----------------------------------------------------------------------------- the run


async def _counters(dut, sums: dict):
    ports = {r.name: getattr(dut, f"{r.name.lower()}_inc") for r in REGS if r.width == 64}
    edge, settled = RisingEdge(dut.clk), ReadOnly()
    while True:
        await edge
        await settled
        for name, port in ports.items():
            sums[name] += int(port.value)


async def _run(dut, jobs, answers, counts, *, idle: bool, backpressure: bool):
    rng = np.random.default_rng(SEED)
    tb = StreamTB(dut)
    src = tb.source("h2c", CodeBeat, idle=random_pauses(rng, 0.3) if idle else None)
    sink = tb.sink("c2h", CodeBeat,
                   backpressure=random_pauses(rng, 0.3) if backpressure else None)
    dut.control.value = 0
    dut.table.value = 0
    await tb.reset()
    sums = {r.name: 0 for r in REGS if r.width == 64}
    task = cocotb.start_soon(_counters(dut, sums))
    received = 0
    for n, (job, want) in enumerate(zip(jobs, answers, strict=True)):
        dut.control.value = job.control
        dut.table.value = int.from_bytes(job.table, "little")
        src.send(code_beats(job.data))
        budget = 3000 + 8 * len(job.data) // BEAT_BYTES + 8 * len(want) // BEAT_BYTES
        got = b""
        while True:
            beat, = await sink.recv(1, timeout_cycles=budget)
            got += beat["data"].to_bytes(BEAT_BYTES, "little")[:beat["count"]]
            if beat["last"]:
                break
        await src.wait_done(timeout_cycles=budget)
        received += len(got)
        try:
            _compare(job, got, want)
        except AssertionError as exc:
            raise AssertionError(f"job {n}: {exc}") from None
        for _ in range(8):  # the job ends a few cycles after its last beat
            status = REGS.STATUS.decode(int(dut.status.value))
            if not status["BUSY"]:
                break
            await tb.cycles(1)
        code = StatusRecord.from_bytes(want[-STATUS_BYTES:]).code if _is_status(
            want[-STATUS_BYTES:]) else ErrorCode.OK
        assert status["LAST_CODE"] == code and status["ERROR"] == (code != ErrorCode.OK), \
            f"job {n} ({job.what}): STATUS {status}"
    await tb.cycles(10)
    task.cancel()
    # BYTES_OUT: what came out (a frame cut short yields fewer values than the model's zeros)
    assert sums == {**counts, "BYTES_OUT": received}, \
        f"counter increments {sums} != model counters {counts} (received {received})"
    await tb.finish(drain_cycles=20)


@cocotb.test()
async def jobs_against_the_model(dut):
    jobs = record_jobs(np.random.default_rng(SEED))
    answers, counts = model_answers(jobs)
    for idle, backpressure in ((False, False), (True, True)):
        await _run(dut, jobs, answers, counts, idle=idle, backpressure=backpressure)
