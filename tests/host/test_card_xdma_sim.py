"""The XDMA transport against emulated device nodes served by the RTL card under Verilator.

``XdmaEmulator(card=SimTransport(Card, SIM_CARD...))``: the driver's real ``XdmaTransport`` (mmap'd
registers, page-aligned H2C writes from a writer thread, a posted C2H read) talks to
``hw.card.Card`` through the emulator, which mirrors the register file into the card's AXI4-Lite
bus and runs each job on its streams. Frames and tensors are compared byte for byte with the
software codec. One simulator for the module; skips honestly without the Verilator toolchain.
"""

from __future__ import annotations

import time

import pytest
import torch

import actpack
from actpack.host import CardFrameError, CardTimeoutError
from actpack.host.xdma import XdmaEmulator, XdmaTransport
from actpack.hw.protocol import Op
from actpack.hw.regs import REGS

CODECS = {
    "dct-optH": actpack.Codec(mode="dct", table="optH"),
    "eb": actpack.Codec(mode="eb", error_bound=1e-3),
    "sfpr8": actpack.Codec(mode="sfpr8", range_max=2.0),
    "mask": actpack.Codec(mode="mask"),
}
FAULT_TIMEOUT = 0.5  # seconds: the driver's timeout while a fault is injected


@pytest.fixture(scope="module")
def emulator(verilator, tmp_path_factory):
    from actpack.host.simcard import SimTransport
    from actpack.hw.card import SIM_CARD, SIM_PARAMS, Card

    # The emulator stops (its thread ends) before the transport closes.
    with (SimTransport(Card, {"config": SIM_CARD, **SIM_PARAMS}, name="card") as transport,
          XdmaEmulator(tmp_path_factory.mktemp("xdma"), card=transport) as emu):
        yield emu


@pytest.fixture(scope="module")
def card(emulator):
    device = actpack.open_device(f"xdma:{emulator.prefix}", timeout=120.0, reset_timeout=60.0)
    assert isinstance(device.transport, XdmaTransport) and emulator.model is None
    yield device
    device.close()


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    odd = torch.randn(2, 3, 13, 10, generator=g) * 3  # odd planes: padded blocks
    odd[0, 1, 2, 3], odd[1, 2, 0, 0] = float("nan"), float("-inf")
    return [odd, torch.relu(torch.randn(150, generator=g))]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN == NaN)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _until(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


@pytest.mark.parametrize("name", list(CODECS))
def test_frames_and_tensors_equal_the_software_codec(card, emulator, name):
    codec = CODECS[name]
    served = emulator.jobs_served
    for t in _tensors():
        frame = card.compress(t, codec)
        assert bytes(frame) == bytes(codec.compress(t)), (name, tuple(t.shape))
        assert _same_bits(card.decompress(frame), actpack.decompress(frame)), tuple(t.shape)
    assert emulator.jobs_served == served + 2 * len(_tensors())  # the RTL card made them
    assert emulator.error is None


def test_counters_through_the_mapped_registers(card):
    t = card.transport
    before = card.counters()
    x = torch.randn(2, 3, 9, 9)
    frame = card.compress(x, CODECS["sfpr8"])
    after = card.counters()  # read from the mmap'd file right after the answer came
    assert after["frames"] == before["frames"] + 1
    assert after["bytes_out"] - before["bytes_out"] == len(frame)
    assert after["bytes_in"] > before["bytes_in"] and after["crc_errors"] == before["crc_errors"]
    status = t.read(REGS.STATUS)
    assert not REGS.STATUS.BUSY.get(status) and REGS.STATUS.LAST_CODE.get(status) == 0
    assert t.read(REGS.LAST_TAG) == card._tag
    irq = REGS.IRQ_STATUS
    assert irq.JOB_DONE.get(t.read(irq))
    t.write(irq, irq.value(JOB_DONE=1, CRC_ERROR=1))  # W1C: mirrored to the card, read back
    _until(lambda: not irq.JOB_DONE.get(t.read(irq)), "IRQ_STATUS.JOB_DONE not cleared")
    t.write(REGS.MAGIC, 0)  # a stray store into an RO word: the card's value comes back
    _until(lambda: t.read(REGS.MAGIC) == REGS.MAGIC.reset_value, "MAGIC not restored")


def test_corrupted_frames(card, emulator):
    codec = CODECS["sfpr8"]
    x = torch.randn(2, 3, 12, 12)
    data = bytearray(bytes(codec.compress(x)))
    data[len(data) // 2] ^= 0x08  # to the card: it rejects it and counts a CRC error
    crc = card.counters()["crc_errors"]
    with pytest.raises(CardFrameError, match="BODY_CRC"):
        card.decompress(bytes(data))
    assert card.counters()["crc_errors"] == crc + 1
    emulator.corrupt_next = -65  # from the card: the last payload byte before the trailer
    with pytest.raises(CardFrameError, match="payload CRC mismatch"):
        card.compress(x, codec)
    assert bytes(card.compress(x, codec)) == bytes(codec.compress(x))  # after a reset


def test_soft_reset(card):
    t = card.transport
    resets = card.counters()["host_resets"]
    card.reset()
    status = t.read(REGS.STATUS)
    assert REGS.STATUS.JOBS_DONE.get(status) == 1  # the core was reset; then the fence ran
    assert not REGS.STATUS.RESETTING.get(status) and not REGS.CONTROL.SOFT_RESET.get(
        t.read(REGS.CONTROL))
    assert t.read(REGS.LAST_TAG) == card._tag and card.counters()["host_resets"] == resets + 1
    x = torch.randn(3, 70)
    assert bytes(card.compress(x, CODECS["eb"])) == bytes(CODECS["eb"].compress(x))


def test_stalled_job_recovers_after_soft_reset(card, emulator):
    codec = CODECS["mask"]
    x = torch.randn(2, 3, 16, 16)
    card.timeout, timeout = FAULT_TIMEOUT, card.timeout
    try:
        emulator.stall_next = True  # the emulator takes the job and never gives it to the card
        with pytest.raises(CardTimeoutError):
            card.compress(x, codec)
    finally:
        card.timeout = timeout
    resets = card.counters()["host_resets"]
    assert bytes(card.compress(x, codec)) == bytes(codec.compress(x))  # reset + fence + job
    assert card.counters()["host_resets"] == resets + 1


def test_dead_card_times_out_and_recovers(card, emulator):
    x = torch.randn(2, 5, 8)
    codec = CODECS["sfpr8"]
    frames = card.counters()["frames"]
    card.timeout, timeout = FAULT_TIMEOUT, card.timeout
    try:
        emulator.dead = True  # nothing answers, the registers freeze
        with pytest.raises(CardTimeoutError, match="no complete answer"):
            card.compress(x, codec)
    finally:
        card.timeout = timeout
        # Whether the revived emulator reads the job the dead card left in the H2C FIFO before
        # or after the driver's reset reaches CONTROL is a race; with OP NONE stored now (the
        # emulator mirrors host stores before it runs a job) the card refuses it either way.
        card.transport.write(REGS.CONTROL, REGS.CONTROL.value(RUN=1, OP=int(Op.NONE)))
        emulator.dead = False
    # The card answers the left-over job (BAD_OP) before the fence, and the driver's fence skips
    # that answer.
    assert bytes(card.compress(x, codec)) == bytes(codec.compress(x))
    assert card.counters()["frames"] == frames + 1 and emulator.error is None
