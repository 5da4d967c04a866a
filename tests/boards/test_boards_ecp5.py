"""ECP5 boards in the registry: the named errors before any work, each board's build plan (pins,
clock, part, toolchain script, report), and one real bitstream of a small configuration through
YoWASP yosys, nextpnr-ecp5 and ecppack, cached by a hash of the design (built once; later runs
read its figures)."""

import json
import os
import sys

import pytest

from actpack.boards import Board, BoardFitError, ToolchainMissing, boards, get
from actpack.boards.ecp5 import ECP5Board
from actpack.cli import main
from actpack.codec.spec import Mode
from actpack.hw.regs import GATEWARE_MODES

# The configuration the bitstream tests build: the smallest card (one mode, 2 KiB buffer), the
# link at the board's rate, small link/card buffers.
SMALL = {"max_groups": 8, "max_blocks": 16, "max_payload": 64}


def test_ecp5_boards_are_registered_boards():
    ecp5 = {b.name: b for b in boards() if isinstance(b, ECP5Board)}
    assert set(ecp5) >= {"ecp5_5g_evn", "ulx3s"}
    assert get("ecp5_5g_evn").part == "LFE5UM5G-85F"
    assert get("ulx3s").part == "LFE5U-85F"
    for b in ecp5.values():
        assert isinstance(b, Board) and b.max_lanes == 1 and b.stream_bytes == 8
        # each engine fits alone since the DCT lost its multipliers (dct compressor: 24 MULT18X18D)
        assert b.modes == GATEWARE_MODES
        config = b.card_config()  # the default build fits
        assert config.caps.modes == set(b.default_modes) == {Mode.SFPR8, Mode.MASK}
        assert config.caps.stream_bytes == 8 and config.buffer_kib == b.buffer_kib
        assert b.describe()["toolchain"].startswith("YoWASP")
    assert get("ecp5_5g_evn").link_mb_s == pytest.approx(0.3)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"modes": ["dct", "eb"]}, ["modes dct, eb need about", "LUT4", "build fewer modes",
                                "modes that fit: dct, eb, sfpr8, mask"]),
    ({"modes": ["eb", "sfpr8", "mask"]}, ["LUT4", "build fewer modes"]),
    ({"modes": ["eb"], "dtypes": ["float32", "bfloat16"]}, ["LUT4", "or dtypes"]),
    ({"modes": ["mask"], "lanes": 2}, ["lanes 2", "--lanes 1"]),
    ({"modes": ["jpeg"]}, ["unknown mode 'jpeg'"]),
    ({"modes": ["mask"], "buffer_kib": 999}, ["buffer_kib 999"]),
])
def test_card_config_names_what_does_not_fit(kwargs, words):
    with pytest.raises(BoardFitError) as exc:
        get("ecp5_5g_evn").card_config(**kwargs)
    for w in words:
        assert w in str(exc.value)


def test_missing_toolchain_names_the_fix(monkeypatch, tmp_path):
    board = get("ecp5_5g_evn")
    config = board.card_config(modes=["mask"], buffer_kib=2)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "pip install -e '.[synth]'" in board.toolchain_missing()
    assert not board.describe()["builds_here"]
    with pytest.raises(ToolchainMissing, match=r"pip install -e '\.\[synth\]'"):
        board.build(tmp_path / "out", config)
    assert not (tmp_path / "out").exists()  # refused before writing anything
    assert main(["build", "--board", "ulx3s", "--modes", "mask",
                 "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("name,pins,clock,device", [
    ("ecp5_5g_evn", ('"uart_0__rx__io" SITE "P2"', '"uart_0__tx__io" SITE "P3"'),
     '"clk12_0__io" 12000000.0 HZ', "--um5g-85k --package CABGA381 --speed 8"),
    ("ulx3s", ('"uart_0__rx__io" SITE "M1"', '"uart_0__tx__io" SITE "L4"'),
     '"clk25_0__io" 25000000.0 HZ', "--85k --package CABGA381 --speed 6"),
])
def test_build_plan(name, pins, clock, device, tmp_path):
    board = get(name)
    plan = board.plan(tmp_path, board.card_config(modes=["mask"], buffer_kib=2), **SMALL)
    lpf = (tmp_path / "top.lpf").read_text()
    for pin in (*pins, clock):
        assert pin in lpf
    script = (tmp_path / "build_top.sh").read_text()
    assert device in script and '"$ECPPACK" --compress' in script
    assert "--timing-allow-fail" in script
    assert "proc\nsplitnets" in (tmp_path / "top.ys").read_text()
    assert {"top.il", "top.ys", "top.lpf", "build_top.sh", "report.json"} <= set(plan.files)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "plan" and report["modes"] == ["mask"]
    assert report["part"] == board.part and report["luts"] is None
    assert report["clock_mhz"] == board.clock_mhz and report["link_mb_s"] == board.link_mb_s
    assert not (tmp_path / f"{name}.bit").exists()


def _check_bitstream(plan, board):
    r = plan.report
    print(f"\n{r.board} {r.modes}: {r.luts} LUT4, {r.ffs} FF, {r.brams} DP16KD, {r.dsps} "
          f"MULT18X18D, Fmax {r.fmax_mhz} MHz (clock {r.clock_mhz}), {r.bitstream_bytes} bytes, "
          f"built in {r.build_s} s{' (cached)' if r.cached else ''}")
    bit = plan.directory / r.bitstream
    # ecppack --compress: the bitstream's size follows the design (the uncompressed image of
    # an 85k part is ~ 2.4 MB)
    assert bit.stat().st_size == r.bitstream_bytes and 20_000 < r.bitstream_bytes < 2_500_000
    assert bit.read_bytes()[:2] == b"\xff\x00"  # ecppack's comment block opens every bitstream
    assert r.status == "built" and r.fmax_mhz >= r.clock_mhz == board.clock_mhz
    assert 0 < r.luts < board.lut4 and 0 < r.ffs < board.lut4
    assert r.brams is not None and r.dsps is not None and r.build_s > 0
    assert json.loads((plan.directory / "report.json").read_text())["luts"] == r.luts


def _build(tmp_path, **top):
    board = get("ecp5_5g_evn")
    try:
        return board, board.build(tmp_path, board.card_config(modes=["mask"], buffer_kib=2),
                                  timeout=1800, **top)
    except ToolchainMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_link_bitstream_on_a_loopback_card(tmp_path):
    """The link alone (its register file and an echo behind it): a real .bit in every
    `make test` (about a minute with YoWASP; cached by the design's hash). The card behind the
    link takes about 14 minutes on 2 cores, so that one is opt-in below."""
    board, plan = _build(tmp_path, loopback=True, **SMALL)
    _check_bitstream(plan, board)
    assert plan.report.luts < 5_000


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACTPACK_BOARD_CARD_BIT"),
                    reason="builds the card's bitstream (mask engines behind the link) with "
                           "YoWASP; set ACTPACK_BOARD_CARD_BIT=1 to build it")
def test_small_bitstream_is_built_and_meets_timing(tmp_path):
    """What ``actpack build --board ecp5_5g_evn --modes mask --buffer-kib 2`` builds."""
    board, plan = _build(tmp_path)
    assert plan.report.modes == ["mask"]
    _check_bitstream(plan, board)
