"""The simulation harness itself: build cache and lock, payload packing."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from actpack.hw.dct import CoefRow, PixelRow
from actpack.hw.quant import LevelRow
from actpack.sim import build as harness


class Passthrough(wiring.Component):
    """A registered stream pipe: the smallest component the harness can build."""

    def __init__(self, *, width: int):
        super().__init__({"i": In(stream.Signature(signed(width))),
                          "o": Out(stream.Signature(signed(width)))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


class FakeCompiler(list):
    """Stands in for Verilator: logs (folder, Verilog) and takes a while; can crash once."""

    crash_next = False

    def __call__(self, directory, verilog, toplevel, sources=()):
        if self.crash_next:
            self.crash_next = False
            (directory / "half-written.o").write_text("")
            raise RuntimeError("compiler crashed")
        self.append((directory.name, verilog.read_text(), [Path(p).name for p in sources]))
        time.sleep(0.3)  # long enough for a second caller to arrive and wait on the lock


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """Build into a temporary root with a FakeCompiler."""
    fake = FakeCompiler()
    monkeypatch.setattr(harness, "BUILD_ROOT", tmp_path)
    monkeypatch.setattr(harness, "_compile", fake)
    return fake


def test_build_once_under_concurrency(fake_compiler):
    results = []

    def worker():
        results.append(harness.build(Passthrough, name="pipe", params={"width": 8}))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_compiler) == 1, "the configuration was built more than once"
    assert sorted(r.built_now for r in results) == [False, False, True]
    assert len({r.directory for r in results}) == 1
    (only,) = {r.directory for r in results}
    assert (only / "BUILT.json").exists() and (only / "pipe.v").exists()
    assert "module pipe" in fake_compiler[0][1]
    # a later call finds it without compiling
    assert not harness.build(Passthrough, name="pipe", params={"width": 8}).built_now
    assert len(fake_compiler) == 1


def test_parameters_name_the_folder(fake_compiler):
    a = harness.build(Passthrough, name="pipe", params={"width": 8})
    b = harness.build(Passthrough, name="pipe", params={"width": 9})
    assert a.directory != b.directory
    assert a.directory.name.startswith("pipe-") and len(fake_compiler) == 2


def test_model_sources_are_compiled_and_keyed_by_content(fake_compiler, tmp_path):
    model = tmp_path / "model.v"
    model.write_text("module model; endmodule\n")
    a = harness.build(Passthrough, name="pipe", params={"width": 8}, sources=[model])
    assert fake_compiler[-1][2] == ["model.v"]
    model.write_text("module model; wire w; endmodule\n")
    b = harness.build(Passthrough, name="pipe", params={"width": 8}, sources=[model])
    assert a.directory != b.directory and len(fake_compiler) == 2


def test_failed_build_is_redone_from_scratch(fake_compiler):
    fake_compiler.crash_next = True
    with pytest.raises(RuntimeError, match="crashed"):
        harness.build(Passthrough, name="pipe", params={"width": 8})
    again = harness.build(Passthrough, name="pipe", params={"width": 8})
    assert again.built_now and len(fake_compiler) == 1
    assert not (again.directory / "half-written.o").exists()


@pytest.mark.parametrize("layout", [
    PixelRow, CoefRow, LevelRow,
    data.StructLayout({"a": 3, "b": signed(5), "c": 1}),
])
def test_layout_codec_matches_amaranth(layout):
    codec = harness_stream().LayoutCodec(layout)
    rng = np.random.default_rng(0)
    for _ in range(200):
        bits = int(rng.integers(0, 1 << min(layout.size, 62))) | (
            int(rng.integers(0, 2)) << (layout.size - 1))
        value = codec.unpack(bits)
        assert codec.pack(value) == bits == layout.const(value).as_bits()


def harness_stream():
    pytest.importorskip("cocotb")
    from actpack.sim import stream

    return stream
