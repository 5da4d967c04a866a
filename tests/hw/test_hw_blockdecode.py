"""BlockDecoder / Unzigzag: interface facts, parameters, and Verilator runs of the testbench."""

import numpy as np
import pytest

from actpack.codec import reference, spec
from actpack.codec.frame import Kind, pack_index
from actpack.hw.beats import BEAT_BYTES, CodeBeat, IndexEntry
from actpack.hw.blockdecode import BUFFER_BEATS, BlockDecoder, BlockError, DecodedRow, Unzigzag
from actpack.hw.quant import LevelRow
from actpack.hw.regs import GATEWARE_MODES
from actpack.sim.build import build


def test_index_entry_is_the_frame_u16():
    rng = np.random.default_rng(0)
    kind = rng.integers(0, 4, 200)
    mb = np.where(kind == Kind.CODED, rng.integers(1, 9, 200), 1)
    length = rng.integers(0, 2048, 200)
    packed = pack_index(kind, mb, length)
    assert IndexEntry.size == 16
    for k, b, n, u16 in zip(kind, mb, length, packed, strict=True):
        value = IndexEntry.const({"kind": int(k), "mb_minus_1": int(b) - 1, "length": int(n)})
        assert value.as_bits() == int(u16)


def test_buffer_holds_the_longest_coded_block():
    widest = np.where(np.arange(64) % 2, -(1 << (spec.WIDTH_MAX - 1)), 1 << (spec.WIDTH_MAX - 1))
    _, chunk = reference.encode_block(widest)
    dense = reference.encode_dense(np.where(np.arange(64) % 2, -(1 << 14), (1 << 14) - 1))
    assert len(chunk) == 132 and len(dense) == 124
    assert BUFFER_BEATS * BEAT_BYTES >= len(chunk) > (BUFFER_BEATS - 1) * BEAT_BYTES
    assert CodeBeat.size == 8 * BEAT_BYTES + 5 + 1


def test_rows_carry_level_rows():
    assert DecodedRow["symbols"].shape == LevelRow and DecodedRow["symbols"].offset == 0
    assert DecodedRow["error"].shape.width == len(BlockError)


@pytest.mark.parametrize("mode", ["dcT", "raw", 1, None])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match="mode"):
        BlockDecoder(mode=mode)


def test_latency_constants():
    assert BlockDecoder.LATENCY == 16 and BlockDecoder.ZERO_LATENCY == 17
    # entry/beat register, parse steps, take, row steps, output FIFO (2)
    assert BlockDecoder.LATENCY == 1 + BlockDecoder.PARSE_STAGES + 1 + BlockDecoder.EMIT_STAGES + 2
    assert BlockDecoder.FULL_RATE_BEATS * BEAT_BYTES >= 100  # every dct block (format.md 8.1)
    assert Unzigzag.LATENCY == 9


def _verilog(mode: str) -> str:
    from amaranth.back import verilog

    return verilog.convert(BlockDecoder(mode=mode), name="blockdecode", emit_src=False)


def test_dct_and_eb_are_one_design():
    """The decoder treats dct and eb alike (only mask and sfpr8 differ): the eb testbench runs on
    the dct build, which saves a Verilator build."""
    assert _verilog("dct") == _verilog("eb")


# mode -> the configuration it runs on
_BUILDS = {"dct": "dct", "eb": "dct", "sfpr8": "sfpr8", "mask": "mask"}


def test_decoder_builds_cover_every_mode():
    assert set(_BUILDS) == {m.label for m in GATEWARE_MODES}


@pytest.mark.parametrize("mode", list(_BUILDS))
def test_verilator_decoder(verilator, seed, mode):
    """Bit-exact vs reference.decode_block / decode_dense on random, real (frames from
    reference.compress), edge and malformed blocks, inserters crossed (sim/test_blockdecode.py)."""
    built = _BUILDS[mode]
    sim = build(BlockDecoder, name=f"blockdecode_{built}", params={"mode": built})
    sim.run("actpack.sim.test_blockdecode", seed=seed,
            env={"ACTPACK_TB_UNIT": "decode", "ACTPACK_TB_MODE": mode,
                 "ACTPACK_TB_SEED": str(seed)})


def test_verilator_unzigzag(verilator, seed):
    sim = build(Unzigzag, name="unzigzag")
    sim.run("actpack.sim.test_blockdecode", seed=seed,
            env={"ACTPACK_TB_UNIT": "unzigzag", "ACTPACK_TB_SEED": str(seed)})
