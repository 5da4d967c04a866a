"""cocotb testbench of ``FrameParser`` against ``actpack.codec.frame.parse_frame``.

Frames of real codec output (every mode, the three dtypes, NaN/Inf blocks, ranks 1 to 5, an
empty tensor, one element, all-ZERO blocks) and corrupted copies of them (one per check of
docs/format.md section 10 the parser makes, header fields rewritten with a valid CRC so the
check behind the CRC is reached, body fields with a valid body CRC) go through the parser back
to back. Per frame the testbench checks, with equality:

- the verdict: no error bit for a frame ``parse_frame`` accepts; else the lowest error bit is
  the check ``parse_frame`` names (``CHECK_OF_MESSAGE``);
- ``info`` (mode, dtype, nblocks) iff the header and index passed and the frame has blocks;
- one ``blocks`` entry per block with the frame's index entry and its group's inverse scale
  (``reference.block_groups``), and each block's payload bytes cut into its own beats; for a
  frame cut short in its payload, the blocks that went out, their missing bytes zero;
- the table writes of a ``dct`` frame (the frame's table, entry by entry, never while
  ``table_free`` is low).

Frames are attributed to verdicts by cycle: the parser hands over a frame's verdict only after
its last block and beat. Every run crosses the idle inserter on ``i`` (and on ``table_free``)
with the backpressure inserter on the outputs; ``ACTPACK_TB_SEED`` seeds the stimulus.
"""

import dataclasses
import itertools
import os
import struct

import cocotb
import numpy as np
import torch
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

from actpack.codec import Codec, reference
from actpack.codec.frame import (
    FIXED_HEADER,
    SCALE_RECORD,
    TRAILER,
    FrameError,
    crc32c_of,
    header_length,
    parse_frame,
)
from actpack.codec.spec import MAX_NUMEL, SCALE_EXP_RANGE, Mode, Scale

from ..hw.beats import BEAT_BYTES, CodeBeat
from ..hw.framebuild import FrameBeat
from ..hw.frameparse import FrameCheck, FrameInfo, ParsedBlock, Verdict, frame_check
from . import rows
from .stream import StreamTB, random_pauses

SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))
MAX_BLOCKS = int(os.environ.get("ACTPACK_TB_MAX_BLOCKS", "1024"))

# ----------------------------------------------------------------------------- frames


def _compress(kwargs, t) -> bytes:
    return bytes(Codec(backend="numpy", **kwargs).compress(t))


def _base_frames(rng) -> list[bytes]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    act = torch.relu(torch.randn(2, 3, 20, 21, generator=g))
    nan = act.clone()
    nan[0, 1, 3, 4], nan[1, 2, 17, 9] = float("nan"), float("inf")
    return [
        _compress({"mode": "dct", "table": "optH"}, act),
        _compress({"mode": "dct", "table": "jpeg50"}, nan),
        _compress({"mode": "sfpr8"}, act.to(torch.float16)),
        _compress({"mode": "eb", "error_bound": 1e-3}, torch.randn(3, 40, 7, generator=g)),
        _compress({"mode": "mask"}, act - 0.5),
        _compress({"mode": "sfpr8"}, torch.zeros(0, 5)),
        _compress({"mode": "dct", "table": "optL"}, torch.tensor([0.25])),
        _compress({"mode": "sfpr8"}, torch.zeros(4, 16, 16)),
        _compress({"mode": "sfpr8"}, nan.to(torch.bfloat16)),
        _compress({"mode": "sfpr8"}, torch.randn(2, 3, 4, 5, 9, generator=g)),  # groups (p//4)%3
        _compress({"mode": "eb", "error_bound": 0.05}, torch.randn(150, generator=g)),
        _compress({"mode": "eb", "error_bound": 1e-4}, torch.randn(4, 9, 70, generator=g)),
    ]


def _hlen(frame: bytes) -> int:
    h = FIXED_HEADER.unpack_from(frame, 0)
    return header_length(h.mode, h.ndim, h.ngroups)


def _sections(frame: bytes) -> tuple[int, int, int]:
    """Offsets of the index, the payload and the trailer of a well-formed frame."""
    hlen = _hlen(frame)
    fixed = FIXED_HEADER.unpack_from(frame, 0)
    nblocks, payload_bytes = fixed.nblocks, fixed.payload_bytes
    h = -(-(hlen + 4) // 64) * 64
    p = h + -(-2 * nblocks // 64) * 64
    return h, p, p + -(-payload_bytes // 64) * 64


def _patch(frame: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(frame)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _rehead(frame: bytes, offset: int, fmt: str, *values) -> bytes:
    """Patch a header field and rewrite the header CRC (over the original header length)."""
    hlen = _hlen(frame)
    out = bytearray(_patch(frame, offset, fmt, *values))
    struct.pack_into("<I", out, hlen, crc32c_of(bytes(out[:hlen])))
    return bytes(out)


def _refield(frame: bytes, name: str, value) -> bytes:
    """Patch the fixed header's field ``name`` and rewrite the header CRC."""
    return _rehead(frame, FIXED_HEADER.offset(name), "<" + FIXED_HEADER.field(name).code, value)


def _rebody(frame: bytes, offset: int, fmt: str, *values) -> bytes:
    """Patch an index or payload field and rewrite the body CRC."""
    h, _, t = _sections(frame)
    out = bytearray(_patch(frame, offset, fmt, *values))
    struct.pack_into("<I", out, t, crc32c_of(bytes(out[h:t])))
    return bytes(out)


def _corrupted(base: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(corrupted frame, the good frame it was made from) pairs."""
    dct, sfpr, eb, mask = base[0], base[2], base[3], base[4]
    s_h, s_p, s_t = _sections(sfpr)
    header = parse_frame(sfpr)[0]
    index = np.frombuffer(sfpr[s_h:s_p], dtype="<u2")[:header.nblocks]
    coded = int(np.flatnonzero(index >> 14 == 1)[0])
    scales_at = _hlen(sfpr) - SCALE_RECORD.size * len(header.scales)
    scale0 = SCALE_RECORD.unpack_from(sfpr, scales_at)
    shape_at, table_at = FIXED_HEADER.size, FIXED_HEADER.size + 8 * 4  # dct: rank 4
    tr = TRAILER.offset
    # by base frame: sfpr8 float16 (2, 3, 20, 21) unless named
    out = [
        _patch(sfpr, 0, "<B", 0x42),  # magic
        sfpr[:32],  # inside the fixed part
        _refield(sfpr, "version", 2), _refield(sfpr, "version", 0),  # versions
        _refield(sfpr, "ndim", 9),
        _refield(sfpr, "ngroups", (1 << 24) + 1),  # groups beyond the format
        dct[:64],  # inside the header
        _patch(sfpr, shape_at, "<B", sfpr[shape_at] ^ 4),  # a shape bit: header CRC
        _patch(sfpr, _hlen(sfpr) + 4, "<B", 1),  # header padding
        _refield(sfpr, "mode", 7), _refield(sfpr, "dtype", 0),
        _rehead(dct, table_at + 5, "<B", 0),  # a table entry
        _rehead(sfpr, scales_at + SCALE_RECORD.offset("mantissa"), "<H", 0x7FFF),
        _rehead(sfpr, scales_at + SCALE_RECORD.offset("exponent"), "<h", 401),
        _refield(sfpr, "nblocks", header.nblocks + 1),  # nblocks vs shape
        _rehead(sfpr, shape_at + 8, "<Q", 4),  # shape[1] 3 -> 4: blocks
        _rehead(_patch(sfpr, shape_at, "<Q", 3), shape_at + 8, "<Q", 2),  # (3, 2): groups
        _refield(sfpr, "param", 100.0), _refield(eb, "param", 1e31),
        _refield(mask, "param", 1.0),  # params
        sfpr[:s_p + 64],  # inside the payload
        sfpr[:s_h + 16],  # inside the index
        sfpr + bytes(64),  # trailing
        _patch(sfpr, s_t + tr("reserved") + 4, "<B", 1),  # trailer reserved
        _patch(sfpr, s_p + 3, "<B", sfpr[s_p + 3] ^ 0x10),  # a payload bit: body CRC
        _patch(sfpr, s_t + tr("length"), "<Q", len(sfpr) + 64),  # frame length
        _patch(sfpr, s_t + tr("status"), "<I", 5),  # producer status
        _rebody(sfpr, s_h + 2 * coded, "<H", int(index[coded]) & 0x7FF),  # ZERO with a length
        _rebody(sfpr, s_h + 2 * coded, "<H", int(index[coded]) + 1),  # lengths vs payload_bytes
        # a scale inverse that does not match (check 12): the host's check, not the parser's
        _rehead(sfpr, scales_at + SCALE_RECORD.offset("inverse"), "<f", scale0.inverse * 2),
    ]
    pairs = [(f, sfpr) for f in out]
    for f, b in ((dct[:64], dct), (_rehead(dct, table_at + 5, "<B", 0), dct),
                 (_refield(eb, "param", 1e31), eb), (_refield(mask, "param", 1.0), mask)):
        pairs[out.index(f)] = (f, b)
    # issue #11: the ends of the scale exponents encoders write, and one beyond each (below,
    # the inverse is +inf), with the inverse that matches; the element count of a shape, zero
    # dims counted as 1: an empty (0, 5) tensor with a huge dim, and a nonempty one
    lo, hi = SCALE_EXP_RANGE
    with np.errstate(over="ignore"):
        records = [(1 << 15, e, float(Scale(1 << 15, e).inverse)) for e in (lo - 1, lo, hi, hi + 1)]
    pairs += [(_rehead(sfpr, scales_at, SCALE_RECORD.struct.format, *r), sfpr)
              for r in records]
    empty = base[5]
    pairs += [(_rehead(empty, shape_at + 8, "<Q", d), empty)
              for d in (1 << 63, MAX_NUMEL, MAX_NUMEL + 1)]
    pairs.append((_rehead(sfpr, shape_at, "<Q", 1 << 47), sfpr))  # 2**47 x 3 x 20 x 21
    big = _compress({"mode": "sfpr8"}, torch.ones(2, 4, 8 * 16, 8 * 16))  # 2048 blocks
    pairs.append((big, big))
    return pairs


# ----------------------------------------------------------------------------- expectations


@dataclasses.dataclass
class Expect:
    frame: bytes
    check: FrameCheck | None  # lowest error bit, None: no error
    info: dict | None = None
    blocks: list = dataclasses.field(default_factory=list)
    beats: list = dataclasses.field(default_factory=list)  # [(bytes of the block, ...)] per block
    table: list | None = None
    partial: bool = False  # cut short in its payload: a prefix of the blocks, zero-filled


def _expect(frame: bytes, base: bytes | None) -> Expect:
    """What the parser must do with ``frame``, a corrupted copy of the good frame ``base``
    (``None``: ``frame`` is itself good) that keeps ``base``'s header fields and layout."""
    try:
        parse_frame(frame)
        check = None
    except FrameError as e:
        check = frame_check(e.check)  # None: the host's check, not the parser's (12, 15a)
    header = parse_frame(base if base is not None else frame)[0]
    if header.nblocks > MAX_BLOCKS and check in (None, FrameCheck.NBLOCKS):
        check = FrameCheck.CAPACITY
    ex = Expect(frame, check)
    if check is not None and not FrameCheck.TRUNCATED <= check <= FrameCheck.STATUS:
        return ex  # header or index rejected: nothing goes out
    h, p, t = _sections(base if base is not None else frame)
    if len(frame) < p or header.nblocks == 0:
        return ex  # cut inside the index, or nothing to decode
    # what the parser reads: the frame's own index, scale records and payload bytes
    index = np.frombuffer(frame[h:p], dtype="<u2")[:header.nblocks].tolist()
    payload = frame[p:p + header.payload_bytes]
    ex.partial = len(frame) < t + 64 and len(payload) < header.payload_bytes
    payload += bytes(header.payload_bytes - len(payload))
    ex.info = {"mode": int(header.mode), "dtype": int(header.dtype), "nblocks": header.nblocks}
    scales_at = _hlen(frame) - SCALE_RECORD.size * len(header.scales)
    inv = [struct.unpack_from("<I", frame, scales_at + SCALE_RECORD.size * g
                              + SCALE_RECORD.offset("inverse"))[0]
           for g in range(len(header.scales))]
    groups = reference.block_groups(header.geometry)
    pos = 0
    for b, e in enumerate(index):
        r = 0 if header.mode is Mode.MASK else inv[0 if header.mode is Mode.EB else groups[b]]
        ex.blocks.append({"entry": {"length": e & 0x7FF, "mb_minus_1": e >> 11 & 7,
                                    "kind": e >> 14}, "r": r})
        ex.beats.append(payload[pos:pos + (e & 0x7FF)])
        pos += e & 0x7FF
    if header.mode is Mode.DCT:
        ex.table = np.asarray(header.table).tolist()
    return ex


# ----------------------------------------------------------------------------- the run


def _beats(frame: bytes) -> list[dict]:
    return [{"data": int.from_bytes(frame[i:i + BEAT_BYTES], "little"),
             "last": int(i + BEAT_BYTES >= len(frame))} for i in range(0, len(frame), BEAT_BYTES)]


async def _table_monitor(dut, writes: list, free_pauses):
    """Drive ``table_free`` (low where ``free_pauses`` says) and record the table writes."""
    edge, settled = RisingEdge(dut.clk), ReadOnly()
    while True:
        await edge
        dut.table_free.value = int(not next(free_pauses))
        await settled
        if int(dut.table_wr__en.value):
            assert int(dut.table_free.value), "table written while table_free is low"
            writes.append((round(get_sim_time("ns") / StreamTB.PERIOD_NS),
                           int(dut.table_wr__addr.value), int(dut.table_wr__data.value)))


async def _run(dut, expects: list[Expect], *, idle: bool, backpressure: bool):
    rng = np.random.default_rng(SEED)
    tb = StreamTB(dut)
    dut.table_free.value = 1
    pause = (lambda p: random_pauses(rng, p)) if idle else (lambda p: None)
    press = (lambda: random_pauses(rng, 0.3)) if backpressure else (lambda: None)
    src = tb.source("i", FrameBeat, idle=pause(0.3))
    info = tb.sink("info", FrameInfo, backpressure=press())
    blocks = rows.sink(tb, "blocks", ParsedBlock, backpressure=press())
    beats = tb.sink("beats", CodeBeat, backpressure=press())
    verdict = tb.sink("verdict", Verdict, backpressure=press())
    writes = []
    await tb.reset()
    monitor = cocotb.start_soon(_table_monitor(
        dut, writes, pause(0.2) if idle else iter(lambda: False, True)))
    for ex in expects:
        src.send(_beats(ex.frame))
    budget = 2000 + sum(8 * len(ex.frame) // BEAT_BYTES + 200 for ex in expects)
    got = await verdict.recv(len(expects), timeout_cycles=budget)
    await tb.cycles(4)
    monitor.cancel()
    ends = verdict.transfers[-len(expects):]
    lists = {name: (list(s.queue), s.transfers[-len(s.queue):] if s.queue else [])
             for name, s in (("info", info), ("blocks", blocks), ("beats", beats))}
    for s in (info, blocks, beats):
        s.queue.clear()
    start = -1
    for n, (ex, v, end) in enumerate(zip(expects, got, ends, strict=True)):
        want = ex.check.name if ex.check is not None else "no error"
        ctx = f"frame {n} ({len(ex.frame)} bytes, expected {want})"

        def mine(name, start=start, end=end):
            items, cycles = lists[name]
            return [item for item, c in zip(items, cycles, strict=True) if start < c < end]

        errors = v["errors"]
        lowest = FrameCheck((errors & -errors).bit_length() - 1) if errors else None
        name = lowest.name if lowest is not None else "good"
        assert lowest == ex.check, f"{ctx}: verdict {errors:#x} ({name})"
        f_info, f_blocks, f_beats = mine("info"), mine("blocks"), mine("beats")
        assert f_info == ([ex.info] if ex.info else []), f"{ctx}: info {f_info}"
        assert v["info"] == int(ex.info is not None), ctx
        if ex.partial:
            assert f_blocks == ex.blocks[:len(f_blocks)], f"{ctx}: blocks"
        else:
            assert f_blocks == ex.blocks, f"{ctx}: blocks differ"
        _compare_beats(ctx, f_beats, ex.beats[:len(f_blocks)])
        if ex.table is not None and ex.check is None:
            mine_w = [(a, d) for c, a, d in writes if start < c < end]
            assert mine_w == list(enumerate(ex.table)), f"{ctx}: table writes"
        start = end
    await tb.finish(drain_cycles=20)


def _compare_beats(ctx, beats, blocks):
    pos = 0
    for b, want in enumerate(blocks):
        n = -(-len(want) // BEAT_BYTES)
        mine = beats[pos:pos + n]
        pos += n
        assert len(mine) == n, f"{ctx}: block {b} has {len(mine)} beats, expected {n}"
        if not n:
            continue  # a ZERO block: no beats
        blob = b"".join(x["data"].to_bytes(BEAT_BYTES, "little")[:x["count"]] for x in mine)
        counts = [x["count"] for x in mine]
        assert counts == [BEAT_BYTES] * (n - 1) + [len(want) - BEAT_BYTES * (n - 1)], ctx
        assert [x["last"] for x in mine] == [0] * (n - 1) + [1], f"{ctx}: block {b} last"
        for x in mine:
            assert x["data"] >> (8 * x["count"]) == 0, f"{ctx}: block {b}: bytes past count"
        assert blob == want, f"{ctx}: block {b} bytes differ"  # missing bytes: zero in both
    assert pos == len(beats), f"{ctx}: {len(beats) - pos} beats beyond the blocks"


@cocotb.test()
async def frames_and_corruptions(dut):
    rng = np.random.default_rng(SEED)
    base = _base_frames(rng)
    cases = [(f, None) for f in base] + _corrupted(base)
    # each corruption between good frames: the parser must come back for the next frame
    goods = [(f, None) for f in itertools.islice(itertools.cycle(base), len(cases))]
    order = [c for pair in zip(cases, goods, strict=True) for c in pair]
    expects = [_expect(f, b) for f, b in order]
    missing = set(FrameCheck) - {ex.check for ex in expects}
    assert missing <= ({FrameCheck.CAPACITY} if MAX_BLOCKS >= 2048 else set()), \
        f"checks not covered: {missing}"
    for idle in (False, True):
        for backpressure in (False, True):
            await _run(dut, expects, idle=idle, backpressure=backpressure)
