"""cocotb testbench of ``FrameBuilder`` against ``actpack.codec.frame.build_frame``: frames of
real codec output (every mode, float32 and float16, NaN/Inf blocks, an empty tensor, one element,
a tensor of all-ZERO blocks) are cut into what the card has (header template, index entries,
coded blocks as beats), fed back to back through the builder, and every output byte is compared
with the reference frame.

Run through ``actpack.sim.build`` (tests/hw/test_hw_framebuild.py). Every job list runs with the
idle inserter on the three sources and the backpressure inserter on the output each on and off;
``ACTPACK_TB_SEED`` seeds the stimulus.
"""

import dataclasses
import os

import cocotb
import numpy as np
import torch

from actpack.codec import Codec
from actpack.codec.frame import header_length, parse_frame

from ..hw.beats import BEAT_BYTES, CodeBeat, IndexEntry
from ..hw.framebuild import FrameBeat
from .frames import code_beats
from .stream import StreamTB, random_pauses

SEED = int(os.environ.get("ACTPACK_TB_SEED", "1"))


def _tensors(rng: np.random.Generator) -> list[tuple[dict, torch.Tensor]]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    act = torch.relu(torch.randn(2, 3, 20, 21, generator=g))
    nan = act.clone()
    nan[0, 1, 3, 4], nan[1, 2, 17, 9] = float("nan"), float("inf")
    return [
        ({"mode": "dct", "table": "optH"}, act),
        ({"mode": "dct", "table": "jpeg50"}, nan),
        ({"mode": "sfpr8"}, act.to(torch.float16)),
        ({"mode": "eb", "error_bound": 1e-3}, torch.randn(3, 40, 7, generator=g)),
        ({"mode": "mask"}, act - 0.5),
        ({"mode": "sfpr8"}, torch.zeros(0, 5)),  # no blocks: empty index and payload
        ({"mode": "dct", "table": "optL"}, torch.tensor([0.25])),  # one element
        ({"mode": "sfpr8"}, torch.zeros(4, 16, 16)),  # every block ZERO: empty payload
        ({"mode": "sfpr8"}, nan.to(torch.bfloat16)),
    ]


def _job(kwargs: dict, t: torch.Tensor):
    """(frame, header template beats, index entries, payload beats) of one compression."""
    frame = bytes(Codec(backend="numpy", **kwargs).compress(t))
    header, index, payload = parse_frame(frame)
    hlen = header_length(header.mode, len(header.shape), len(header.scales))
    template = dataclasses.replace(header, payload_bytes=0).to_bytes()[:hlen]
    beats = code_beats(template)
    entries = [{"length": int(e) & 0x7FF, "mb_minus_1": int(e) >> 11 & 7, "kind": int(e) >> 14}
               for e in index]
    payload, code, pos = bytes(payload), [], 0
    for e in entries:
        if e["length"]:
            code += code_beats(payload[pos:pos + e["length"]])
        pos += e["length"]
    return frame, beats, entries, code


async def _run(dut, jobs, *, idle: bool, backpressure: bool):
    rng = np.random.default_rng(SEED)
    tb = StreamTB(dut)
    dut.status.value = 0
    pause = (lambda: random_pauses(rng, 0.3)) if idle else (lambda: None)
    header = tb.source("header", CodeBeat, idle=pause())
    index = tb.source("index", IndexEntry, idle=pause())
    payload = tb.source("payload", CodeBeat, idle=pause())
    out = tb.sink("o", FrameBeat,
                  backpressure=random_pauses(rng, 0.3) if backpressure else None)
    await tb.reset()
    for _, beats, entries, code in jobs:
        header.send(beats)
        index.send(entries)
        payload.send(code)
    budget = 200 + sum(4 * (len(f) // 8 + len(b) + len(e) + len(c)) for f, b, e, c in jobs)
    for n, (frame, *_) in enumerate(jobs):
        got = await out.recv(len(frame) // BEAT_BYTES, timeout_cycles=budget)
        blob = b"".join(g["data"].to_bytes(BEAT_BYTES, "little") for g in got)
        lasts = [g["last"] for g in got]
        assert lasts == [0] * (len(got) - 1) + [1], f"job {n}: tlast misplaced"
        if blob != frame:
            first = next(i for i in range(len(frame)) if blob[i] != frame[i])
            raise AssertionError(f"job {n}: frame differs from byte {first} on "
                                 f"(got {blob[first:first + 16].hex()}, want "
                                 f"{frame[first:first + 16].hex()})")
    assert int(dut.overflow.value) == 0
    await tb.finish(drain_cycles=20)


@cocotb.test()
async def frames_back_to_back(dut):
    jobs = [_job(kw, t) for kw, t in _tensors(np.random.default_rng(SEED))]
    for idle in (False, True):
        for backpressure in (False, True):
            await _run(dut, jobs, idle=idle, backpressure=backpressure)
