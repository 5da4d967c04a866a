"""cocotb testbench of ``Decompressor`` against the reference decoder, and
``measure_decompressor`` (values per cycle and latency of a build on a tensor's frame).

Run through ``actpack.sim.build`` (see tests/hw/test_hw_decompressor.py). Environment:
``ACTPACK_TB_MODE``, ``ACTPACK_TB_DTYPE``, ``ACTPACK_TB_LANES`` (the build's parameters),
``ACTPACK_TB_STIM``: a folder of ``<case>.npz`` files written by ``write_case`` (per block the
index entry, ``r`` and payload bytes, and what the reference makes of the block: its 64 bit
patterns before untiling, or malformed); ``ACTPACK_TB_SEED``; ``ACTPACK_TB_RESULT``: where
the ``measure`` test writes its JSON.

``decompressor`` runs every case with the idle inserter (both sources) and the backpressure
inserter each on and off and compares every output bit: each block's 8 rows, ``last`` on row
7, ``error`` 0 on every row of a well-formed block and nonzero on row 7 of a malformed one.
``reset_mid_block`` resets the engine with a block half delivered and then checks a whole case.
"""

import json
import os
import tempfile
from pathlib import Path

import cocotb
import numpy as np
from amaranth.lib import data

from actpack.codec import reference, spec
from actpack.codec.frame import DENSE_HEADER, Kind, unpack_index
from actpack.codec.spec import DType, Mode
from actpack.codec.tables import ZIGZAG

from ..hw.blockcode import BEAT_BYTES, CodeBeat
from ..hw.decompressor import block_layout, out_row
from . import rows
from .stream import StreamTB
from .test_compressor import CASES, DTYPE, LANES, MODE, STIM, CompressorTB, _pauses, _rng

__all__ = ["block_model", "measure_decompressor", "write_case"]

# the environment of the build (MODE, DTYPE, LANES), SEED, STIM and its CASES: as the
# compressor's bench reads them
_INVERSE_ZIGZAG = np.argsort(ZIGZAG)


# ----------------------------------------------------------------------------- the model


def block_model(kind: int, mb: int, chunk: bytes, r_bits: int, *, mode, dtype, table=None):
    """What ``reference.decompress`` makes of one block before untiling: its 64 bit patterns
    (raster order), or None where it raises ``FrameError`` (format 8.2, 10 #21 for one entry,
    #27 sfpr8 range)."""
    mode, dtype = Mode.parse(mode), DType(dtype) if not isinstance(dtype, DType) else dtype
    bits_t = rows.BITS_DTYPE[dtype]
    length = len(chunk)
    try:
        if kind == Kind.ZERO:
            if length or mb != 1:
                return None
            symbols = np.zeros(64, dtype=np.int64)
        elif kind == Kind.RAW:
            if length != 64 * dtype.itemsize or mb != 1 or mode is Mode.MASK:
                return None
            return np.frombuffer(chunk, dtype=np.dtype(bits_t).newbyteorder("<")).astype(bits_t)
        elif kind == Kind.DENSE:
            if mb != 1 or mode is Mode.MASK or length < DENSE_HEADER:
                return None
            symbols = reference.decode_dense(chunk)
        else:
            if length < mb:
                return None
            symbols = reference.decode_block(chunk, mb, with_values=mode is not Mode.MASK)
    except reference.FrameError:
        return None
    if mode is Mode.MASK:
        values = symbols.reshape(1, 8, 8).astype(np.float32)
    else:
        if mode is Mode.SFPR8:
            if np.abs(symbols).max() > spec.SFPR_MAX:
                return None
            p = symbols.reshape(1, 8, 8)
        elif mode is Mode.DCT:
            p = reference.idct2(reference.dequantize(
                symbols[_INVERSE_ZIGZAG].reshape(1, 8, 8), np.asarray(table)))
        else:
            p = reference.unlorenzo(symbols.reshape(1, 8, 8))
        inverse = np.array([r_bits], dtype=np.uint32).view(np.float32)
        values = reference.dequantize_values(p, inverse[:, None, None])
    return reference.from_float32(values, dtype).reshape(64).astype(bits_t)


def write_case(path, frame_case: dict, *, mode, dtype, corrupt=()) -> Path:
    """Save the stimulus and expectation of one frame (``sim.frames.frame_case``) to ``path``.
    ``corrupt``: (block, entry, chunk) triples replacing a block's index entry and payload
    bytes (the model then says whether it is malformed)."""
    index = np.asarray(frame_case["index"], dtype=np.uint16).copy()
    kinds, mbs, lengths = unpack_index(index)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    payload = bytes(frame_case["payload"])
    chunks = [payload[offsets[b]:offsets[b + 1]] for b in range(len(index))]
    for b, entry, chunk in corrupt:
        index[b] = entry
        chunks[b] = bytes(chunk)
    kinds, mbs, _ = unpack_index(index)
    table = frame_case.get("table")
    r = np.asarray(frame_case["r"], dtype=np.int64)
    expected, bad = [], []
    for b in range(len(index)):
        out = block_model(int(kinds[b]), int(mbs[b]), chunks[b], int(r[b]), mode=mode,
                          dtype=dtype, table=table)
        bad.append(out is None)
        expected.append(np.zeros(64, np.int64) if out is None else out.astype(np.int64))
    path = Path(path)
    np.savez(path, index=index, r=r, table=table if table is not None else np.zeros(0),
             payload=np.frombuffer(b"".join(chunks), dtype=np.uint8),
             lengths=np.array([len(c) for c in chunks], dtype=np.int64),
             expected=np.array(expected, dtype=np.int64).reshape(-1, 64),
             bad=np.array(bad, dtype=bool))
    return path


# ----------------------------------------------------------------------------- the bench


def _case_items(case):
    """(blocks transfers, data beats) of a case."""
    blocks, beats, pos = [], [], 0
    for b, (entry, n) in enumerate(zip(case["index"].tolist(), case["lengths"].tolist(),
                                       strict=True)):
        item = {"entry": {"length": entry & 0x7FF, "mb_minus_1": (entry >> 11) & 7,
                          "kind": entry >> 14}}
        if MODE is not Mode.MASK:
            item["r"] = int(case["r"][b])
        blocks.append(item)
        chunk = bytes(case["payload"][pos:pos + n])
        pos += n
        for k in range(0, n, BEAT_BYTES):
            part = chunk[k:k + BEAT_BYTES]
            beats.append({"data": int.from_bytes(part, "little"), "count": len(part),
                          "last": int(k + BEAT_BYTES >= n)})
    return blocks, beats


class DecompressorTB(StreamTB):
    def __init__(self, dut, *, idle=None, idle_beats=None, backpressure=None):
        super().__init__(dut)
        self.blocks = rows.source(self, "blocks", block_layout(MODE), idle=idle)
        self.beats = self.source("data", CodeBeat, idle=idle_beats)
        self.out = rows.sink(self, "o", data.ArrayLayout(out_row(DTYPE), LANES),
                             backpressure=backpressure)

    load_table = CompressorTB.load_table  # the same table_wr port

    def send(self, case):
        blocks, beats = _case_items(case)
        self.blocks.send(blocks)
        self.beats.send(beats)

    async def check(self, name, case):
        n = len(case["index"])
        words = await self.out.recv(8 * n // LANES, timeout_cycles=80 * n + 400)
        got = [row for word in words for row in word]
        expected, bad = case["expected"], case["bad"]
        for b in range(n):
            block = got[8 * b: 8 * b + 8]
            ctx = f"{name} block {b} (entry {int(case['index'][b]):#06x})"
            assert [r["last"] for r in block] == [0] * 7 + [1], f"{ctx}: last flags"
            if bad[b]:
                assert block[7]["error"], f"{ctx}: malformed block not flagged"
                continue
            errors = [r["error"] for r in block]
            assert not any(errors), f"{ctx}: flagged {errors} but well-formed"
            vals = [v for r in block for v in r["x"]]
            exp = expected[b].tolist()
            assert vals == exp, f"{ctx}: got {list(map(hex, vals))}, expected {list(map(hex, exp))}"
        return got


def _load(stim):
    with np.load(STIM / f"{stim}.npz") as f:
        return {k: f[k] for k in f.files}


async def _start(tb, case):
    await tb.reset()
    if MODE is Mode.DCT:
        await tb.load_table(case["table"])


@cocotb.test()
@cocotb.parametrize(stim=CASES, idle=[False, True], backpressure=[False, True])
async def decompressor(dut, stim, idle, backpressure):
    case = _load(stim)
    rng = _rng(stim, idle, backpressure)
    tb = DecompressorTB(dut, idle=_pauses(rng, idle), idle_beats=_pauses(rng, idle),
                        backpressure=_pauses(rng, backpressure))
    await _start(tb, case)
    tb.send(case)
    await tb.check(stim, case)
    if stim.startswith("full_rate") and not idle and not backpressure:
        out = np.array(tb.out.transfers)
        gaps = np.flatnonzero(np.diff(out) > 1)
        assert not gaps.size, f"{stim}: output bubbles after rows {gaps.tolist()}"
    await tb.finish(drain_cycles=64)


@cocotb.test()
async def reset_mid_block(dut):
    """Deliver part of a case, reset with a block half in (and rows in flight), then the
    whole case must decode exactly."""
    case = _load(CASES[0])
    tb = DecompressorTB(dut)
    await _start(tb, case)
    blocks, beats = _case_items(case)
    cut = max(1, len(beats) // 2 + 1)  # mid-block in any case with multi-beat blocks
    tb.blocks.send(blocks)
    tb.beats.send(beats[:cut])
    await tb.cycles(cut + 6)
    for port in (*tb.sources, *tb.sinks):
        port.stop()
        port.queue.clear()
    tb.blocks._busy = tb.beats._busy = False
    tb.blocks.valid.value = tb.beats.valid.value = 0
    await _start(tb, case)  # reset (ports restart) and, for dct, the table again
    tb.send(case)
    await tb.check("after reset", case)
    await tb.finish(drain_cycles=64)


@cocotb.test()
async def measure(dut):
    """No inserters: cycles from the first input transfer to the first output row (latency),
    and values per cycle over the whole output (first to last row)."""
    result = os.environ.get("ACTPACK_TB_RESULT")
    if not result:
        return
    case = _load(CASES[0])
    tb = DecompressorTB(dut)
    await _start(tb, case)
    tb.send(case)
    await tb.check("measure", case)
    first_in = min(t[0] for t in (tb.blocks.transfers, tb.beats.transfers) if t)
    out = tb.out.transfers
    n = len(case["index"])
    Path(result).write_text(json.dumps({
        "latency": out[0] - first_in,
        "values_per_cycle": 64 * n / (out[-1] - out[0] + 1),
        "cycles": out[-1] - first_in + 1,
        "blocks": n,
    }))
    await tb.finish(drain_cycles=16)


# ----------------------------------------------------------------------------- measurement


def measure_decompressor(*, mode, lanes, data, dtype="float32", codec=None) -> dict:
    """Run ``Decompressor(mode=mode, dtype=dtype, lanes=lanes)`` (built once, cached by
    ``actpack.sim.build``) under Verilator on the frame of tensor ``data`` (a torch tensor, or
    numpy array, converted to ``dtype``; coded by ``codec``, default ``Codec(mode=mode,
    backend="numpy")``), input always valid and output always ready, every output bit checked.

    Returns ``{"values_per_cycle": 64 * nblocks / output cycles (first row to last row),
    "latency": cycles from the first input transfer (entry or beat) to the first output row,
    "cycles": first input to last output, "blocks": nblocks}``. Needs the Verilator toolchain
    (``tests/hw/conftest.py``)."""
    import torch

    from actpack.codec import Codec

    from ..hw.decompressor import Decompressor
    from .build import build
    from .frames import frame_case

    t = torch.as_tensor(data).to(getattr(torch, dtype))
    codec = codec or Codec(mode=mode, backend="numpy")
    sim = build(Decompressor, name=f"decompressor_{mode}_{dtype}_{lanes}",
                params={"mode": mode, "dtype": dtype, "lanes": lanes})
    with tempfile.TemporaryDirectory() as tmp:
        stim = Path(tmp) / "stim"
        stim.mkdir()
        write_case(stim / "measure.npz", frame_case(t, codec), mode=mode,
                   dtype=DType[dtype.upper()])
        result = Path(tmp) / "result.json"
        sim.run("actpack.sim.test_decompressor", testcase="measure", tag="measure",
                env={"ACTPACK_TB_MODE": mode, "ACTPACK_TB_DTYPE": dtype,
                     "ACTPACK_TB_LANES": str(lanes), "ACTPACK_TB_STIM": str(stim),
                     "ACTPACK_TB_RESULT": str(result)})
        return json.loads(result.read_text())
