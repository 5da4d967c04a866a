"""The behavioural card model: register semantics and the job protocol, in-process."""

from __future__ import annotations

import dataclasses
import struct

import pytest
import torch

import actpack
from actpack.codec.spec import DType, Mode, Scale
from actpack.errors import Check
from actpack.host import (
    CardCapabilityError,
    CardDevice,
    CardFrameError,
    CardMismatchError,
    CardProtocolError,
    DeviceUnavailableError,
    FallbackDevice,
    UnknownDeviceError,
)
from actpack.host.card import open_model
from actpack.host.cardmodel import CardModel, ModelTransport
from actpack.hw import protocol
from actpack.hw.protocol import Descriptor, ErrorCode, Op, StatusRecord, frame_error_code
from actpack.hw.regs import REGS, Caps, CardConfig


def test_registers_ro_rw_pulse_w1c_and_counters():
    m = CardModel()
    assert m.reg_read(REGS.MAGIC.offset) == REGS.MAGIC.reset_value
    m.reg_write(REGS.MAGIC.offset, 0)  # RO: ignored
    assert m.reg_read(REGS.MAGIC.offset) == REGS.MAGIC.reset_value
    m.reg_write(REGS.SCRATCH.offset, 0xA5A5_1234)
    assert m.reg_read(REGS.SCRATCH.offset) == 0xA5A5_1234
    c = REGS.CONTROL
    m.reg_write(c.offset, c.value(RUN=1, OP=int(Op.NONE)))
    # One fence job: FRAMES stays (no frame), the other counters and the IRQ cause move.
    fence = Descriptor(Op.NONE, 0, tag=9).to_bytes()
    out = m.run_job(fence)
    assert StatusRecord.from_bytes(out) == StatusRecord(ErrorCode.OK, 9, Op.NONE, 64, 0)
    assert m.reg_read(REGS.LAST_TAG.offset) == 9
    assert m.counters()["BYTES_IN"] == 64 and m.counters()["FRAMES"] == 0
    irq = REGS.IRQ_STATUS
    assert m.reg_read(irq.offset) == irq.value(JOB_DONE=1)
    m.reg_write(irq.offset, 0)  # writing 0 clears nothing
    assert m.reg_read(irq.offset) == irq.value(JOB_DONE=1)
    m.reg_write(irq.offset, irq.value(JOB_DONE=1))
    assert m.reg_read(irq.offset) == 0
    assert REGS.STATUS.JOBS_DONE.get(m.reg_read(REGS.STATUS.offset)) == 1
    # Pulses self-clear; CLEAR_COUNTERS zeroes both words of every counter.
    m.reg_write(c.offset, c.value(RUN=1, CLEAR_COUNTERS=1))
    assert m.reg_read(c.offset) == c.value(RUN=1)
    assert m.reg_read(REGS.BYTES_OUT.lo) == m.reg_read(REGS.BYTES_OUT.hi) == 0
    # A counter past 2**32 is split over LO/HI and read back whole through a transport.
    m._count(REGS.BYTES_IN, (5 << 32) + 7)
    assert (m.reg_read(REGS.BYTES_IN.lo), m.reg_read(REGS.BYTES_IN.hi)) == (7, 5)
    assert ModelTransport(m).read(REGS.BYTES_IN) == (5 << 32) + 7
    with pytest.raises(ValueError, match="aligned"):
        m.reg_read(0x2)


def _job(device: CardDevice, tensor, codec) -> tuple[Descriptor, bytes]:
    """The descriptor and body the driver would send (captured from a recording transport)."""
    sent = []
    t = device.transport
    submit = t.submit
    t.submit = lambda data: (sent.append(bytes(data)), submit(data))[1]
    try:
        device.compress(tensor, codec)
    finally:
        t.submit = submit
    data = sent[-1]
    return Descriptor.from_bytes(data), data[64:]


def _status(out: bytes) -> StatusRecord:
    return StatusRecord.from_bytes(out[-64:])


def test_rejected_jobs_name_their_code():
    device = open_model()
    m = device.transport.model
    codec = actpack.Codec(mode="dct", table="optL")
    x = torch.randn(1, 2, 5, 13)  # padded to 8 x 16: 2 blocks a plane
    desc, body = _job(device, x, codec)
    assert len(body) == desc.in_bytes == protocol.compress_in_bytes(DType.FLOAT32, 2, 4)

    def run(desc, body, op=Op.COMPRESS):
        m.reg_write(REGS.CONTROL.offset, REGS.CONTROL.value(RUN=1, OP=int(op)))
        return m.run_job(desc.to_bytes() + body)

    assert run(desc, body) == bytes(codec.compress(x))
    assert _status(run(desc, body, Op.DECOMPRESS)).code is ErrorCode.BAD_OP
    assert _status(run(desc, body[:-64])).code is ErrorCode.LENGTH
    short = dataclasses.replace(desc, in_bytes=desc.in_bytes - 64)
    assert _status(run(short, body[:-64])).code is ErrorCode.LENGTH
    assert _status(run(dataclasses.replace(desc, nblocks=3), body)).code is (
        ErrorCode.BAD_DESCRIPTOR)
    assert _status(run(dataclasses.replace(desc, table_crc=1), body)).code is (
        ErrorCode.TABLE_MISMATCH)
    assert _status(run(dataclasses.replace(desc, param=100.0), body)).code is (
        ErrorCode.BAD_DESCRIPTOR)
    # Tiles whose padding is not edge replication, or scales other than the reference's.
    tiles = bytearray(body)
    tiles[-1] ^= 1  # a padding value of the last block
    assert _status(run(desc, bytes(tiles))).code is ErrorCode.CONTRACT
    m_, e_, _ = struct.unpack_from("<Hhf", body, 64)
    other = Scale(m_ ^ 1, e_)  # a valid record, but not the reference's scale
    scales = body[:64] + struct.pack("<Hhf", other.mantissa, other.exponent, other.inverse)
    assert _status(run(desc, scales + body[72:])).code is ErrorCode.CONTRACT
    corrupted = bytearray(desc.to_bytes() + body)
    corrupted[20] ^= 1
    m.reg_write(REGS.CONTROL.offset, REGS.CONTROL.value(RUN=1, OP=int(Op.COMPRESS)))
    assert _status(m.run_job(bytes(corrupted))).code is ErrorCode.BAD_DESCRIPTOR
    c = m.counters()
    assert c["CRC_ERRORS"] == 1 and c["PROTOCOL_ERRORS"] == 8


def test_decompress_errors_early_and_late():
    device = open_model()
    m = device.transport.model
    x = torch.randn(3, 17)
    frame = bytearray(bytes(actpack.Codec(mode="sfpr8").compress(x)))
    m.reg_write(REGS.CONTROL.offset, REGS.CONTROL.value(RUN=1, OP=int(Op.DECOMPRESS)))

    def run(data):
        return m.run_job(Descriptor(Op.DECOMPRESS, len(data), tag=4).to_bytes() + bytes(data))

    good = run(frame)
    nvalues = protocol.values_bytes(DType.FLOAT32, 3)
    assert len(good) == nvalues + 64 and _status(good).code is ErrorCode.OK
    header = bytearray(frame)
    header[9] ^= 1  # table_arg, covered by the header CRC: rejected before any block
    out = run(header)
    assert len(out) == 64 and _status(out).code is ErrorCode.HEADER_CRC
    body = bytearray(frame)
    body[-65] ^= 1  # in the payload padding: found at the body CRC, after the blocks
    out = run(body)
    assert len(out) == nvalues + 64 and _status(out).code is ErrorCode.BODY_CRC
    assert _status(run(b"not a frame" + bytes(53))).code is ErrorCode.BAD_FRAME
    assert m.counters()["CRC_ERRORS"] == 2
    with pytest.raises(CardFrameError, match="BODY_CRC") as info:
        device.decompress(bytes(body))
    assert isinstance(info.value, actpack.FrameError) and info.value.check is Check.BODY_CRC
    with pytest.raises(actpack.FrameError, match="BAD_FRAME") as info:
        device.decompress(b"garbage" * 20)
    assert info.value.check is None  # BAD_FRAME names no check
    assert torch.equal(device.decompress(bytes(frame)), actpack.decompress(bytes(frame)))


@pytest.mark.parametrize("check", list(Check), ids=lambda c: f"{c.value}-{c.name}")
def test_every_frame_check_has_a_card_code(check):
    """The card model answers a frame failing ``check`` with ``frame_error_code(check)``; the
    driver turns that code into a ``CardFrameError`` (a FrameError) naming the check where the
    code can (the CRC checks), and counts the CRC ones."""
    code = frame_error_code(check)
    assert code in (ErrorCode.HEADER_CRC, ErrorCode.BODY_CRC, ErrorCode.BAD_FRAME)
    assert code.check in (check, None)
    assert (code.check is check) == code.is_crc
    device = open_model()
    exc = device._rejected(StatusRecord(code, tag=1, op=Op.DECOMPRESS), "decompress")
    assert isinstance(exc, CardFrameError) and isinstance(exc, actpack.FrameError)
    assert exc.check is code.check and code.name in str(exc)
    assert not device._needs_reset  # a corrupted frame is not the card's fault


def test_capabilities_and_identity():
    caps = Caps(modes=frozenset({Mode.MASK}), dtypes=frozenset({DType.FLOAT16}), lanes=2)
    device = open_model(config=CardConfig(caps=caps, buffer_kib=4))
    assert device.info.caps == caps and device.info.buffer_bytes == 4096
    assert device.info.config_hash == CardConfig(caps=caps, buffer_kib=4).config_hash()
    x = torch.randn(4, 4, dtype=torch.float16)
    with pytest.raises(CardCapabilityError, match="cannot compress mode 'dct'"):
        device.compress(x, actpack.Codec(mode="dct"))
    with pytest.raises(CardCapabilityError, match="cannot compress mode 'mask' float32"):
        device.compress(x.float(), actpack.Codec(mode="mask"))
    with pytest.raises(CardCapabilityError, match="card buffers 4096"):
        device.compress(torch.randn(64, 64, dtype=torch.float16), actpack.Codec(mode="mask"))
    frame = device.compress(x, actpack.Codec(mode="mask"))
    assert bytes(frame) == bytes(actpack.Codec(mode="mask").compress(x))
    with pytest.raises(CardMismatchError, match="MAGIC reads 0x12345678"):
        open_model(magic=0x12345678)
    with pytest.raises(CardMismatchError, match="all ones"):
        open_model(magic=0xFFFFFFFF)
    with pytest.raises(DeviceUnavailableError, match="speaks"):  # a mismatch is unavailable too
        open_model(version=REGS.VERSION.value(FORMAT=2, REGMAP=1, PROTOCOL=1))


def test_a_mode_the_gateware_lacks_is_refused_by_name():
    """A card built with the default CAPS (hw.regs.GATEWARE_MODES) does not claim mode eb2,
    so the driver refuses an eb2 job before it reaches the card, and names why."""
    device = open_model()
    assert Mode.EB2 not in device.info.caps.modes
    x = torch.randn(4, 8, 8)
    with pytest.raises(CardCapabilityError, match="cannot compress mode 'eb2' float32"):
        device.compress(x, actpack.Codec(mode="eb2", error_bound=0.01))
    frame = actpack.Codec(mode="eb2", error_bound=0.01).compress(x)
    with pytest.raises(CardCapabilityError, match="cannot decompress mode 'eb2'"):
        device.decompress(frame)


def test_stopped_card_and_bad_answers_are_named():
    device = open_model(timeout=0.1)
    t = device.transport
    t.write(REGS.CONTROL, 0)  # RUN = 0: the card takes nothing ...
    device._control = 0  # ... and the driver does not know it
    device._set_control = lambda op: None
    with pytest.raises(actpack.host.CardTimeoutError, match="not running"):
        device.compress(torch.ones(8), actpack.Codec(mode="sfpr8"))
    del device._set_control
    frame = device.compress(torch.ones(8), actpack.Codec(mode="sfpr8"))  # reset, then works
    assert device.counters()["host_timeouts"] == 1 and device.counters()["host_resets"] == 2
    # A card answering a decompress job with a wrong tag is out of step: a protocol error.
    t.model.run_job = lambda job: StatusRecord(ErrorCode.OK, 999, Op.DECOMPRESS).to_bytes()
    with pytest.raises(CardProtocolError, match="job 999"):
        device.decompress(frame)
    del t.model.run_job  # the class's method again
    assert torch.equal(device.decompress(frame), actpack.decompress(frame))


def test_open_device_names():
    assert isinstance(actpack.open_device(), actpack.host.RefDevice)
    with pytest.raises(UnknownDeviceError, match="'sim' takes no argument"):
        actpack.open_device("sim:x")
    with pytest.raises(UnknownDeviceError, match="'ref' takes no argument"):
        actpack.open_device("ref:x")
    with pytest.raises(TypeError, match="spec"):
        actpack.open_device(3)
    assert actpack.open_device("model").name == "model"
    assert actpack.offload(device="model").device.name == "model"


def test_fallback_is_not_triggered_by_the_data():
    """A job the card cannot run, or a frame that is itself corrupted, is not a card fault."""
    caps = Caps(modes=frozenset({Mode.SFPR8}))
    device = FallbackDevice(open_model(config=CardConfig(caps=caps)))
    x = torch.randn(3, 20)
    dct = actpack.Codec(mode="dct")
    assert bytes(device.compress(x, dct)) == bytes(dct.compress(x))  # on the fallback
    frame = device.compress(x, actpack.Codec(mode="sfpr8"))
    data = bytearray(bytes(frame))
    data[-70] ^= 1
    with pytest.raises(actpack.FrameError, match="payload CRC"):  # the fallback's own words
        device.decompress(bytes(data))
    assert device.unsupported == 1 and device.faults == 0 and not device.using_fallback
    assert device.primary.counters()["frames"] == 1


@pytest.mark.parametrize("spec", ["ref", "model"])
def test_decompress_defaults_to_the_frames_device(spec):
    """``device=`` is optional on every device (the ``Device`` contract): the frame's device,
    CPU for plain bytes."""
    frame = actpack.Codec(mode="sfpr8").compress(torch.linspace(-3, 3, 200).reshape(8, 25))
    device = actpack.open_device(spec)
    for given in (frame, bytes(frame)):
        out = device.decompress(given)
        assert out.device == torch.device("cpu")
        assert torch.equal(out, actpack.decompress(given))
