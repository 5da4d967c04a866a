# amaranth: UnusedElaboratable=no
"""The register map, the job protocol's byte layouts and the register file (the half-built
RegisterFile of the bad-parameter check would warn when collected: the first line silences it)."""

import dataclasses
import struct

import pytest

from actpack.codec import frame
from actpack.codec.spec import DType, Mode
from actpack.hw import protocol, regs
from actpack.hw.protocol import Descriptor, ErrorCode, Op, ProtocolError, StatusRecord
from actpack.hw.regs import REGS, Access, Caps, CardConfig, Field, Register, RegisterMap


def test_map_is_aligned_without_overlaps():
    seen = {}
    for r in REGS:
        assert r.offset % 4 == 0 and r.offset % (r.width // 8) == 0, r.name
        assert r.offset + r.size <= regs.REG_SPACE
        for w in r.words:
            assert w not in seen, (r.name, seen.get(w))
            seen[w] = r.name
        mask = 0
        for f in r.fields:
            assert not mask & f.mask and f.lsb + f.width <= 32, (r.name, f.name)
            mask |= f.mask
        assert r.doc
    assert REGS.at(0x000) is REGS.MAGIC and REGS.at(0x104) is REGS.TABLE
    assert REGS.at(0x02C) is None


def test_counters_are_64_bit_lo_hi_pairs():
    counters = [r for r in REGS if r.width == 64]
    assert {r.name for r in counters} == {"FRAMES", "BYTES_IN", "BYTES_OUT", "CRC_ERRORS",
                                          "PROTOCOL_ERRORS"}
    for r in counters:
        assert r.access is Access.RO and r.words == (r.lo, r.hi) and r.hi == r.lo + 4
        assert r.offset % 8 == 0
    with pytest.raises(AttributeError):
        _ = REGS.SCRATCH.hi


def test_identity_registers():
    assert REGS.MAGIC.reset_value == regs.CARD_MAGIC
    assert struct.pack("<I", regs.CARD_MAGIC) == b"ACTC"
    v = REGS.VERSION.decode(regs.version_word())
    assert v == {"FORMAT": frame.VERSION, "REGMAP": regs.REGMAP_VERSION,
                 "PROTOCOL": protocol.PROTOCOL_VERSION}
    control = REGS.CONTROL
    assert control.pulse_mask == control.SOFT_RESET.mask | control.CLEAR_COUNTERS.mask
    assert REGS.IRQ_STATUS.access is Access.W1C
    assert [f.name for f in REGS.IRQ_STATUS.fields] == [f.name for f in REGS.IRQ_ENABLE.fields]
    assert REGS.TABLE.size == 64 and len(REGS.TABLE.words) == regs.TABLE_WORDS


@pytest.mark.parametrize("caps", [
    Caps(),
    Caps(modes=frozenset({Mode.DCT, Mode.MASK}), dtypes=frozenset({DType.BFLOAT16}),
         decompress=False, lanes=4, stream_bytes=32),
])
def test_caps_round_trip_and_config_hash(caps):
    assert Caps.from_word(caps.word()) == caps
    config = CardConfig(caps=caps)
    words = config.reset_words()
    assert words[REGS.CAPS.offset] == caps.word()
    assert words[REGS.CONFIG_HASH.offset] == config.config_hash()
    assert config.config_hash() != CardConfig(caps=caps, buffer_kib=1).config_hash()
    assert len(words) == sum(len(r.words) for r in REGS)


def test_bad_maps_are_rejected():
    def bad(*registers, match):
        with pytest.raises(ValueError, match=match):
            RegisterMap(registers)

    ok = Register("A", 0x0, Access.RW, "a")
    bad(ok, dataclasses.replace(ok, name="B"), match="overlaps A")
    bad(Register("C", 0x2, Access.RW, "c"), match="not aligned")
    bad(Register("D", 0x4, Access.RO, "d", width=64), match="not aligned")
    bad(Register("E", 0x0, Access.RW, "e", fields=(Field("X", 30, 4),)), match="outside")
    bad(Register("F", 0x0, Access.RW, "f", fields=(Field("X", 0, 4), Field("Y", 3))),
        match="overlaps another field")
    bad(Register("G", 0x0, Access.RO, "g", fields=(Field("X", 0, pulse=True),)), match="pulse")
    bad(Register("H", 0x0, Access.RW, ""), match="docstring")
    bad(Register("I", 0xFFC, Access.RO, "i", width=64), match="not aligned|beyond")
    bad(ok, ok, match="defined twice")
    with pytest.raises(ValueError, match="does not fit"):
        REGS.CONTROL.value(OP=4)


def test_read64_retries_a_carry():
    reg = REGS.FRAMES
    # The counter carries from 0xFFFFFFFF to 1 << 32 between the first HI and the LO read.
    script = [(reg.hi, 0), (reg.lo, 0), (reg.hi, 1), (reg.lo, 0), (reg.hi, 1)]

    def read32(offset):
        expected, value = script.pop(0)
        assert offset == expected
        return value

    assert regs.read64(read32, reg) == 1 << 32 and not script


def test_field_layout_matches_the_map():
    pytest.importorskip("amaranth")
    layout = regs.field_layout(REGS.CONTROL)
    assert layout.size == 32
    const = layout.const({"run": 1, "op": int(Op.DECOMPRESS)})
    assert const.as_value().value == REGS.CONTROL.value(RUN=1, OP=int(Op.DECOMPRESS))


def test_descriptor_round_trip_and_checks():
    d = Descriptor(Op.COMPRESS, in_bytes=4096, tag=7, mode=int(Mode.DCT), dtype=int(DType.FLOAT16),
                   ndim=4, table_id=2, ngroups=3, nblocks=12, param=4.5, table_crc=0xDEADBEEF)
    data = d.to_bytes()
    assert len(data) == protocol.DESCRIPTOR_BYTES and data[:4] == protocol.JOB_MAGIC
    assert Descriptor.from_bytes(data) == d
    for pos in (0, 5, 40, 50, 61):
        corrupted = bytearray(data)
        corrupted[pos] ^= 1
        with pytest.raises(ProtocolError):
            Descriptor.from_bytes(corrupted)


def test_status_record_round_trip():
    s = StatusRecord(ErrorCode.BODY_CRC, tag=3, op=Op.DECOMPRESS, bytes_in=640, bytes_out=256,
                     detail=9)
    data = s.to_bytes()
    assert StatusRecord.from_bytes(data) == s and StatusRecord.looks_like(data)
    assert not StatusRecord.looks_like(data[:-1] + bytes([data[-1] ^ 1]))
    assert not StatusRecord.looks_like(data + bytes(64))
    assert ErrorCode.BODY_CRC.is_crc and not ErrorCode.LENGTH.is_crc


def test_sections():
    assert protocol.unpack_shape(protocol.pack_shape((2, 3, 5)), 3) == (2, 3, 5)
    assert len(protocol.pack_shape(())) == protocol.SHAPE_BYTES == 64
    with pytest.raises(ProtocolError):
        protocol.unpack_shape(protocol.pack_shape((2, 3, 5)), 2)
    # shape + one padded scale section + 12 float16 blocks
    assert protocol.compress_in_bytes(DType.FLOAT16, 3, 12) == 64 + 64 + 12 * 128
    assert protocol.compress_in_bytes(DType.FLOAT32, 0, 0) == 64


def test_docs_table_lists_every_register():
    """docs/card.md's register table names each register at its offset, and nothing else."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "card.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `0x")]
    documented = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        documented[cells[1].strip("`")] = int(cells[0].split("`")[1], 16)
    assert documented == {r.name: r.offset for r in REGS}


def test_register_file_under_simulation():
    """hw.regfile.RegisterFile through its AXI4-Lite port (Amaranth's simulator): reset values
    of every word, RO writes ignored, byte strobes, pulses, W1C, IRQ, counters, table, holes."""
    pytest.importorskip("amaranth")
    from amaranth.sim import Simulator

    from actpack.hw.regfile import RegisterFile

    config = CardConfig(caps=Caps(lanes=2, stream_bytes=32), buffer_kib=1024)
    dut = RegisterFile(config=config)
    bus = dut.bus
    seen = {}

    async def write(ctx, addr, value, strb=0xF):
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.wdata, value)
        ctx.set(bus.wstrb, strb)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        while not (ctx.get(bus.awready) and ctx.get(bus.wready)):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        seen["pulse"] = ctx.get(dut.control.soft_reset)  # the cycle after the write
        while not ctx.get(bus.bvalid):
            await ctx.tick()
        assert ctx.get(bus.bresp) == 0
        await ctx.tick()
        ctx.set(bus.bready, 0)

    async def read(ctx, addr):
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        while not ctx.get(bus.arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.arvalid, 0)
        while not ctx.get(bus.rvalid):
            await ctx.tick()
        value = ctx.get(bus.rdata)
        await ctx.tick()
        ctx.set(bus.rready, 0)
        return value

    async def testbench(ctx):
        for offset, value in config.reset_words().items():
            assert await read(ctx, offset) == value, hex(offset)
        assert await read(ctx, 0x02C) == 0 and await read(ctx, 0xFFC) == 0  # holes
        await write(ctx, REGS.MAGIC.offset, 0)
        assert await read(ctx, REGS.MAGIC.offset) == regs.CARD_MAGIC
        await write(ctx, REGS.SCRATCH.offset, 0x11223344)
        await write(ctx, REGS.SCRATCH.offset, 0xAABBCCDD, strb=0b0101)
        assert await read(ctx, REGS.SCRATCH.offset) == 0x11BB33DD
        c = REGS.CONTROL
        await write(ctx, c.offset, c.value(RUN=1, OP=int(Op.DECOMPRESS)))
        assert ctx.get(dut.control.run) == 1 and ctx.get(dut.control.op) == int(Op.DECOMPRESS)
        assert not seen["pulse"]
        await write(ctx, c.offset, c.value(RUN=1, SOFT_RESET=1))
        assert seen["pulse"] and not ctx.get(dut.control.soft_reset)  # one cycle only
        assert await read(ctx, c.offset) == c.value(RUN=1)
        ctx.set(dut.status.busy, 1)
        ctx.set(dut.status.last_code, int(ErrorCode.LENGTH))
        ctx.set(dut.last_tag, 77)
        assert await read(ctx, REGS.STATUS.offset) == REGS.STATUS.value(
            BUSY=1, LAST_CODE=int(ErrorCode.LENGTH))
        assert await read(ctx, REGS.LAST_TAG.offset) == 77
        irq = REGS.IRQ_STATUS
        ctx.set(dut.irq_set.job_done, 1)
        ctx.set(dut.irq_set.crc_error, 1)
        await ctx.tick()
        ctx.set(dut.irq_set.job_done, 0)
        ctx.set(dut.irq_set.crc_error, 0)
        assert not ctx.get(dut.irq)
        await write(ctx, REGS.IRQ_ENABLE.offset, REGS.IRQ_ENABLE.value(CRC_ERROR=1))
        assert ctx.get(dut.irq)
        assert await read(ctx, irq.offset) == irq.value(JOB_DONE=1, CRC_ERROR=1)
        await write(ctx, irq.offset, irq.value(CRC_ERROR=1))  # W1C
        assert await read(ctx, irq.offset) == irq.value(JOB_DONE=1) and not ctx.get(dut.irq)
        ctx.set(dut.bytes_in_inc, 0xFFFF)
        ctx.set(dut.frames_inc, 1)
        await ctx.tick().repeat(3)
        ctx.set(dut.bytes_in_inc, 0)
        ctx.set(dut.frames_inc, 0)
        assert await read(ctx, REGS.BYTES_IN.lo) == 3 * 0xFFFF
        assert await read(ctx, REGS.FRAMES.lo) == 3 and await read(ctx, REGS.FRAMES.hi) == 0
        await write(ctx, c.offset, c.value(RUN=1, CLEAR_COUNTERS=1))
        assert await read(ctx, REGS.BYTES_IN.lo) == 0
        for k, word in enumerate(REGS.TABLE.words):
            await write(ctx, word, int.from_bytes(bytes([4 * k + j + 1 for j in range(4)]),
                                                  "little"))
        assert [ctx.get(dut.table[i]) for i in range(64)] == list(range(1, 65))
        assert await read(ctx, REGS.TABLE.words[3]) == int.from_bytes(bytes([13, 14, 15, 16]),
                                                                      "little")
        seen["done"] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert seen.get("done")
    with pytest.raises(ValueError, match="addr_width"):
        RegisterFile(addr_width=8)


def test_gateware_modes_are_the_caps_default_and_lack_eb2():
    """GATEWARE_MODES is the one declaration of what the engines implement: the default CAPS and
    the simulated card claim exactly it, and mode eb2 (format and software only) is not in it."""
    from actpack.hw.card import SIM_CARD
    from actpack.hw.regs import GATEWARE_MODES

    assert Caps().modes == GATEWARE_MODES == SIM_CARD.caps.modes
    assert set(Mode) - GATEWARE_MODES == {Mode.EB2}
    assert Caps.from_word(Caps().word()).modes == GATEWARE_MODES
