"""The driver on device "sim": the RTL card (``hw.card.Card``, ``SIM_CARD``) under Verilator
through AXI4-Lite and 512-bit AXI4-Stream, against the software codec, byte for byte.

One simulator for the module (the build is cached under build/sim/; the first run of the suite
builds it). Skips honestly without the simulation toolchain.
"""

import pytest
import torch

import actpack
from actpack.codec import Codec
from actpack.host.card import CardDevice
from actpack.host.cardmodel import CardModel, RecordingTransport
from actpack.host.errors import CardCapabilityError, CardFrameError
from actpack.hw.card import SIM_CARD
from actpack.hw.protocol import Op
from actpack.hw.regs import REGS


@pytest.fixture(scope="module")
def card(verilator):
    dev = actpack.open_device("sim")
    yield dev
    dev.close()


def _tensors():
    g = torch.Generator().manual_seed(5)
    act = torch.relu(torch.randn(2, 4, 13, 20, generator=g))
    nan = act.clone()
    nan[1, 2, 5, 7], nan[0, 0, 12, 19] = float("nan"), float("-inf")
    return [act, nan, torch.randn(3, 70, generator=g), torch.randn(150, generator=g),
            torch.zeros(0, 5), torch.tensor(0.5)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN == NaN)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("kwargs", [{"mode": "dct", "table": "optH"},
                                    {"mode": "dct", "table": "jpeg50"},
                                    {"mode": "eb", "error_bound": 1e-3},
                                    {"mode": "sfpr8", "range_max": 2.0},
                                    {"mode": "mask"}], ids=lambda k: "-".join(map(str, k.values())))
def test_frames_and_tensors_equal_the_software_codec(card, kwargs):
    codec = Codec(**kwargs)
    for t in _tensors():
        frame = card.compress(t, codec)
        assert bytes(frame) == bytes(codec.compress(t)), (kwargs, tuple(t.shape))
        assert _same_bits(card.decompress(frame), actpack.decompress(frame)), tuple(t.shape)
    counters = card.counters()
    assert counters["crc_errors"] == 0 and counters["host_rejected"] == 0


def test_jobs_with_the_streams_stalled_at_random(verilator):
    """The DMA engine pauses: H2C beats held back and C2H ready low, each 30 % of the cycles."""
    dev = actpack.open_device("sim", env={"ACTPACK_CARD_STALLS": "0.3", "ACTPACK_CARD_SEED": "7"})
    try:
        t = _tensors()[1]  # NaN and -inf: RAW blocks next to coded ones
        for kwargs in ({"mode": "dct"}, {"mode": "eb", "error_bound": 1e-2}, {"mode": "sfpr8"},
                       {"mode": "mask"}):
            codec = Codec(**kwargs)
            frame = dev.compress(t, codec)
            assert bytes(frame) == bytes(codec.compress(t)), kwargs
            assert _same_bits(dev.decompress(frame), actpack.decompress(frame)), kwargs
    finally:
        dev.close()


def test_corrupted_frames_are_named_and_counted(card):
    frame = bytes(Codec(mode="sfpr8").compress(torch.randn(2, 3, 16, 16)))
    before = card.counters()["crc_errors"]
    body = bytearray(frame)
    body[300] ^= 1  # inside the index or payload: the body CRC
    with pytest.raises(CardFrameError, match="BODY_CRC"):
        card.decompress(bytes(body))
    head = bytearray(frame)
    head[45] ^= 1  # a shape byte: the header CRC
    with pytest.raises(CardFrameError, match="HEADER_CRC"):
        card.decompress(bytes(head))
    assert card.counters()["crc_errors"] == before + 2
    t = torch.randn(5, 9)
    assert torch.equal(card.decompress(Codec(mode="sfpr8").compress(t)),
                       actpack.decompress(Codec(mode="sfpr8").compress(t)))


def test_what_the_card_cannot_do_goes_to_the_fallback(card):
    t = torch.randn(4, 8, 8).half()
    codec = Codec(mode="sfpr8")
    with pytest.raises(CardCapabilityError, match="float16"):
        card.compress(t, codec)
    safe = actpack.host.FallbackDevice(card)
    assert bytes(safe.compress(t, codec)) == bytes(codec.compress(t))
    assert safe.unsupported == 1 and not safe.using_fallback


def test_soft_reset_in_the_middle_of_a_job_recovers(card):
    # 147 KB of float32 values: ~20 000 cycles (seconds of simulation) to take in, so the reset
    # lands inside the job even when the host is slow to send it
    big = torch.randn(2, 8, 48, 48)
    codec = Codec(mode="sfpr8")
    tr = card.transport
    before = card.counters()
    tr.write(REGS.CONTROL, REGS.CONTROL.value(RUN=1, OP=int(Op.COMPRESS)))
    job = _compress_job(big, codec)
    tr.submit(job)
    card.reset()  # soft reset while the job streams: drain to tlast, fence
    after = card.counters()
    assert after["frames"] == before["frames"]  # the aborted job made no frame (a fence: none)
    assert REGS.STATUS.decode(tr.read(REGS.STATUS))["RESETTING"] == 0
    t = torch.randn(3, 20, 20)
    assert bytes(card.compress(t, codec)) == bytes(codec.compress(t))


def _compress_job(t, codec) -> bytes:
    """The H2C bytes the driver sends for ``compress(t, codec)`` (captured on the card model)."""
    rec = RecordingTransport(CardModel(config=SIM_CARD))
    CardDevice(rec).compress(t, codec)
    return rec.jobs[-1].data


def test_offload_on_the_card_matches_the_software_codec(card):
    """A training step of a small CNN with every saved tensor on the card: the same gradients,
    bit for bit, and the same stored bytes as with the software codec."""
    runs = []
    for device in (card, "ref"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(8 * 8 * 8, 10))
        x, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
        session = actpack.offload(device=device, policy=actpack.Policy.auto(min_bytes=0))
        with session:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        runs.append(([p.grad for p in model.parameters()],
                     [(t.label, t.mode, t.stored_bytes) for t in session.stats.tensors]))
    (g_card, s_card), (g_ref, s_ref) = runs
    assert all(torch.equal(a, b) for a, b in zip(g_card, g_ref, strict=True))
    assert s_card == s_ref
    assert {m.split(":")[0] for _, m, _ in s_card} >= {"dct", "mask", "sfpr8"}
