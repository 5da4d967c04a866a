"""The XDMA transport against emulated device nodes served by the card model.

The transport's real code runs: ``mmap`` of ``<prefix>_user``, ``os.write`` of page-aligned
buffers on ``<prefix>_h2c_0`` from a writer thread, a reader thread keeping a read posted on
``<prefix>_c2h_0``, timeouts. Only the card behind the nodes is a model (``host.xdma``).
"""

from __future__ import annotations

import logging
import time

import pytest
import torch
from offload_testlib import batch, conv_relu_pool, grads

import actpack
from actpack.host import (
    CardFrameError,
    CardMismatchError,
    CardTimeoutError,
    DeviceUnavailableError,
    FallbackDevice,
    RefDevice,
)
from actpack.host.card import CardDevice
from actpack.host.xdma import XdmaEmulator, XdmaTransport
from actpack.hw.regs import REGS

CODECS = {
    "dct": actpack.Codec(mode="dct", table="optH"),
    "dct-jpeg50": actpack.Codec(mode="dct", table="jpeg50"),
    "eb": actpack.Codec(mode="eb", error_bound=0.02),
    "sfpr8": actpack.Codec(mode="sfpr8", range_max=2.0),
    "mask": actpack.Codec(mode="mask"),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FAULT_TIMEOUT = 0.3  # seconds: the driver's timeout in the fault tests


@pytest.fixture
def emulator(tmp_path):
    with XdmaEmulator(tmp_path) as emu:
        yield emu


@pytest.fixture
def card(emulator):
    device = actpack.open_device(f"xdma:{emulator.prefix}", timeout=5.0)
    yield device
    device.close()


def tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 13, 10, generator=g) * 3
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("-inf")
    return [
        x.to(dtype),
        torch.relu(torch.randn(4, 21, generator=g)).to(dtype),  # linear layer, padded plane
        torch.randn(150, generator=g).to(dtype),  # flat, last block padded
        torch.tensor(1.5, dtype=dtype),  # a scalar
        torch.zeros(2, 3, 0, 5, dtype=dtype),  # groups but no blocks
        torch.randn(4, 6, 9, generator=g).to(dtype)[:, ::2],  # strided, rank 3
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("name", list(CODECS))
def test_frames_equal_the_reference(card, name, dtype):
    codec = CODECS[name]
    ref = RefDevice()
    for t in tensors(dtype):
        frame = card.compress(t, codec)
        expected = codec.compress(t)
        assert bytes(frame) == bytes(expected), (name, tuple(t.shape))
        out = card.decompress(frame)
        want = ref.decompress(expected, device=torch.device("cpu"))
        assert out.dtype == t.dtype and out.shape == t.shape
        assert out.reshape(-1).view(torch.uint8).tolist() == (  # bit for bit, NaN included
            want.reshape(-1).view(torch.uint8).tolist())
    c = card.counters()
    assert c["frames"] == 2 * len(tensors(dtype)) and c["crc_errors"] == 0
    assert c["protocol_errors"] == 0 and c["host_timeouts"] == 0


def test_registers_over_mmap(card, emulator):
    t = card.transport
    assert isinstance(t, XdmaTransport) and t.tlast_reads
    t.write(REGS.SCRATCH, 0xC0FFEE01)
    assert t.read(REGS.SCRATCH) == 0xC0FFEE01
    assert t.read(REGS.MAGIC) == REGS.MAGIC.reset_value
    t.write(REGS.MAGIC, 0)  # a stray write to an RO word: the card restores it
    deadline = time.monotonic() + 2
    while t.read(REGS.MAGIC) != REGS.MAGIC.reset_value:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    irq = REGS.IRQ_STATUS
    assert irq.JOB_DONE.get(t.read(irq))  # the fence job of the open
    t.write(irq, irq.value(JOB_DONE=1, CRC_ERROR=1))  # W1C, seen as a changed word
    deadline = time.monotonic() + 2
    while irq.JOB_DONE.get(t.read(irq)):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert card.info.caps == emulator.model.config.caps
    assert t.caps() == card.info.caps


def test_split_messages_are_reassembled(tmp_path):
    """A link that splits messages (here a one-page FIFO) still gives whole frames."""
    with XdmaEmulator(tmp_path, pipe_bytes=4096) as emu:
        transport = XdmaTransport(emu.prefix, tlast_reads=False, c2h_buffer=4096)
        with CardDevice(transport, timeout=5.0) as device:
            x = torch.randn(2, 4, 30, 30)
            codec = CODECS["sfpr8"]
            frame = device.compress(x, codec)
            assert len(frame) > 4096 and bytes(frame) == bytes(codec.compress(x))
            assert torch.equal(device.decompress(frame), codec.decompress(frame))  # 32 KiB


def test_dead_card_times_out_and_counters_stay_readable(card, emulator):
    card.timeout = card.reset_timeout = FAULT_TIMEOUT
    x = torch.randn(1, 2, 8, 8)
    card.compress(x, CODECS["dct"])
    emulator.dead = True
    start = time.monotonic()
    with pytest.raises(CardTimeoutError, match=r"no complete answer.*within 0\.3 s.*counters: "
                                               r"frames=1"):
        card.compress(x, CODECS["dct"])
    assert time.monotonic() - start < FAULT_TIMEOUT * 2 + 1
    with pytest.raises(CardTimeoutError, match="soft reset"):  # the next job resets first
        card.compress(x, CODECS["dct"])
    assert isinstance(CardTimeoutError("x"), TimeoutError)
    c = card.counters()
    assert c["frames"] == 1 and c["host_timeouts"] == 2


def test_stalled_job_recovers_after_soft_reset(card, emulator):
    card.timeout = FAULT_TIMEOUT
    x = torch.randn(2, 3, 16, 16)
    codec = CODECS["eb"]
    emulator.stall_next = True  # the card takes the job and never answers it
    with pytest.raises(CardTimeoutError):
        card.compress(x, codec)
    assert REGS.STATUS.BUSY.get(card.transport.read(REGS.STATUS))
    frame = card.compress(x, codec)  # soft reset + fence, then the job
    assert bytes(frame) == bytes(codec.compress(x))
    assert not REGS.STATUS.BUSY.get(card.transport.read(REGS.STATUS))
    assert card.counters()["host_resets"] == 2 and emulator.model.counters()["FRAMES"] == 1


def test_corrupted_frame_from_the_card(card, emulator):
    x = torch.randn(2, 3, 12, 12)
    codec = CODECS["dct"]
    emulator.corrupt_next = -65  # the last payload byte before the trailer
    with pytest.raises(CardFrameError, match="payload CRC mismatch") as info:
        card.compress(x, codec)
    assert isinstance(info.value, actpack.FrameError)
    assert card.counters()["host_crc_errors"] == 1
    assert bytes(card.compress(x, codec)) == bytes(codec.compress(x))


def test_corrupted_frame_to_the_card(card):
    x = torch.randn(2, 3, 12, 12)
    data = bytearray(bytes(CODECS["sfpr8"].compress(x)))
    data[len(data) // 2] ^= 0x08
    with pytest.raises(actpack.FrameError, match="BODY_CRC"):
        card.decompress(bytes(data))
    c = card.counters()
    assert c["crc_errors"] == 1 and c["host_crc_errors"] == 1 and c["frames"] == 0


def test_foreign_card_is_named(tmp_path):
    with (XdmaEmulator(tmp_path, magic=0xDEADBEEF) as emu,
          pytest.raises(CardMismatchError, match="MAGIC reads 0xdeadbeef")):
        actpack.open_device(f"xdma:{emu.prefix}")


def test_card_that_takes_no_data(tmp_path):
    """The H2C write blocks (a one-page FIFO nobody reads): the transfer times out."""
    with XdmaEmulator(tmp_path, pipe_bytes=4096) as emu:
        device = actpack.open_device(f"xdma:{emu.prefix}", timeout=FAULT_TIMEOUT,
                                     reset_timeout=FAULT_TIMEOUT)
        emu.dead = True
        start = time.monotonic()
        with pytest.raises(CardTimeoutError, match=r"did not take the job within 0\.3 s"):
            device.compress(torch.randn(64, 64), CODECS["sfpr8"])
        assert time.monotonic() - start < FAULT_TIMEOUT + 1
        with pytest.raises(CardTimeoutError, match="soft reset"):
            device.compress(torch.randn(64, 64), CODECS["sfpr8"])
        device.close()


def test_missing_card(tmp_path, caplog):
    with pytest.raises(DeviceUnavailableError, match="xdma0_user does not exist"):
        actpack.open_device(f"xdma:{tmp_path}/xdma0")
    with caplog.at_level(logging.WARNING, logger="actpack.host.card"):
        device = actpack.open_device(f"xdma:{tmp_path}/xdma0", fallback=True)
    assert isinstance(device, RefDevice) and "unavailable" in caplog.text


def test_dead_card_at_open_with_fallback(tmp_path, caplog):
    with XdmaEmulator(tmp_path) as emu:
        emu.dead = True
        with caplog.at_level(logging.WARNING, logger="actpack.host.card"):
            device = actpack.open_device(f"xdma:{emu.prefix}", fallback=True,
                                         timeout=FAULT_TIMEOUT, reset_timeout=FAULT_TIMEOUT)
        assert isinstance(device, RefDevice) and "soft reset" in caplog.text


def test_fallback_keeps_results_under_a_dead_card(card, emulator, caplog):
    card.timeout = card.reset_timeout = FAULT_TIMEOUT
    device = FallbackDevice(card)
    xs = [torch.randn(2, 3, 10, 10) for _ in range(3)]
    codec = CODECS["dct"]
    frames = [device.compress(xs[0], codec)]
    assert not device.using_fallback
    emulator.dead = True
    with caplog.at_level(logging.WARNING, logger="actpack.host.card"):
        frames += [device.compress(x, codec) for x in xs[1:]]
        outs = [device.decompress(f) for f in frames]
    assert [bytes(f) for f in frames] == [bytes(codec.compress(x)) for x in xs]
    assert all(torch.equal(o, codec.decompress(f)) for o, f in zip(outs, frames, strict=True))
    assert device.using_fallback and device.faults == 1
    assert isinstance(device.last_error, CardTimeoutError)
    assert caplog.text.count("failed") == 1  # one warning


def test_offload_through_the_card(card):
    """A training step with every saved tensor through the emulated card: gradients equal
    those with the reference device."""
    x = batch(n=4)
    model = conv_relu_pool()
    want = grads(model, x, actpack.offload(device="ref", workers=0))
    got = grads(model, x, actpack.offload(device=card, workers=0))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert card.counters()["frames"] > 0
