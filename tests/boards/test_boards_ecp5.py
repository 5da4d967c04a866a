"""ECP5 boards: the named errors before any work, each board's build plan (pins, clock, part,
toolchain script), and one real bitstream of a small configuration through YoWASP yosys,
nextpnr-ecp5 and ecppack, cached by a hash of the design (built once; later runs read its
report)."""

import os
import sys

import pytest

from actpack.boards.ecp5 import (
    BoardFitError,
    SerialBoardTop,
    UnknownBoardError,
    board_config,
    build_board,
    check_fit,
    ecp5_boards,
    get_board,
)
from actpack.codec.spec import Mode
from actpack.hw.synth import ToolchainMissing

# The configuration CI builds: the smallest card (one mode), the link at the board's rate.
SMALL = {"modes": ("mask",), "buffer_kib": 2, "max_groups": 8, "max_blocks": 16,
         "max_payload": 64}


def test_boards_and_their_parts():
    boards = ecp5_boards()
    assert set(boards) >= {"ecp5_5g_evn", "ulx3s"}
    assert boards["ecp5_5g_evn"].part == "LFE5UM5G-85F"
    assert boards["ulx3s"].part == "LFE5U-85F"
    for b in boards.values():
        check_fit(b, b.modes)  # the default build fits


def test_bad_input_names_the_fix(monkeypatch):
    with pytest.raises(UnknownBoardError, match="known: ecp5_5g_evn, ulx3s"):
        get_board("versa")
    evn = get_board("ecp5_5g_evn")
    with pytest.raises(BoardFitError, match=r"dct needs 168 MULT18X18D.*has 156; drop dct"):
        check_fit(evn, ["dct"])
    with pytest.raises(BoardFitError, match=r"LUT4.*build fewer modes"):
        check_fit(evn, ["eb", "sfpr8", "mask"])
    with pytest.raises(BoardFitError, match="lanes 2"):
        check_fit(evn, ["mask"], lanes=2)
    with pytest.raises(ValueError, match="unknown mode 'jpeg'"):
        check_fit(evn, ["jpeg"])
    with pytest.raises(BoardFitError):  # before the toolchain is looked for
        build_board("ecp5_5g_evn", modes=["dct"])
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainMissing, match=r"pip install -e '\.\[synth\]'"):
        build_board("ecp5_5g_evn", modes=["mask"])


@pytest.mark.parametrize("name,pins,clock,device", [
    ("ecp5_5g_evn", ('"uart_0__rx__io" SITE "P2"', '"uart_0__tx__io" SITE "P3"'),
     '"clk12_0__io" 12000000.0 HZ', "--um5g-85k --package CABGA381 --speed 8"),
    ("ulx3s", ('"uart_0__rx__io" SITE "M1"', '"uart_0__tx__io" SITE "L4"'),
     '"clk25_0__io" 25000000.0 HZ', "--85k --package CABGA381 --speed 6"),
])
def test_build_plan(name, pins, clock, device):
    board = get_board(name)
    top = SerialBoardTop(config=board_config([Mode.MASK], buffer_kib=2), baud=board.baud,
                         max_groups=8, max_blocks=16, max_payload=64)
    plan = board.platform().prepare(top, name="top", script_after_read="proc\nsplitnets")
    lpf = plan.files["top.lpf"]
    for pin in (*pins, clock):
        assert pin in lpf
    script = plan.files["build_top.sh"]
    assert device in script and '"$ECPPACK"' in script
    assert "proc\nsplitnets" in plan.files["top.ys"]


def _report(r):
    print(f"\n{r.board} {r.modes or 'loopback'}: {r.luts} LUT4, {r.ffs} FF, {r.dp16kd} DP16KD, "
          f"{r.mult18} MULT18X18D, Fmax {r.fmax_mhz} MHz (clock {r.clock_mhz}), "
          f"{r.bitstream_bytes} bytes, built in {r.seconds} s{' (cached)' if r.cached else ''}")


def _check_bitstream(r):
    # ecppack --compress: the bitstream's size follows the design (the uncompressed image of
    # an 85k part is ~ 2.4 MB)
    assert 20_000 < r.bitstream_bytes < 2_500_000
    with open(r.bitstream, "rb") as f:
        assert f.read(2) == b"\xff\x00"  # ecppack's comment block opens every bitstream
    assert r.timing_met and r.fmax_mhz >= r.clock_mhz == 12.0
    assert 0 < r.luts < 83_640 and 0 < r.ffs < 83_640
    assert r.dp16kd is not None and r.mult18 is not None
    _report(r)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACTPACK_BOARD_BIT"),
                    reason="builds a bitstream with YoWASP (not yet timed on these machines); "
                           "set ACTPACK_BOARD_BIT=1 to build it")
def test_link_bitstream_on_a_loopback_card():
    """The link alone (its register file and an echo behind it): minutes, not tens of them."""
    try:
        r = build_board("ecp5_5g_evn", **SMALL, loopback=True, timeout=1200)
    except ToolchainMissing as exc:
        pytest.skip(str(exc))
    assert r.part == "LFE5UM5G-85F" and r.modes == []
    _check_bitstream(r)
    assert r.luts < 5_000


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACTPACK_BOARD_CARD_BIT"),
                    reason="the card's bitstream (the mask engines behind the link) is not timed "
                           "on these machines yet; set ACTPACK_BOARD_CARD_BIT=1 to build it")
def test_small_bitstream_is_built_and_meets_timing():
    try:
        r = build_board("ecp5_5g_evn", **SMALL, timeout=1800)
    except ToolchainMissing as exc:
        pytest.skip(str(exc))
    assert r.part == "LFE5UM5G-85F" and r.modes == ["mask"]
    _check_bitstream(r)
