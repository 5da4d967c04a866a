"""The board registry and its errors (``actpack.boards``) and the ``boards`` / ``build`` commands'
argument handling; nothing here generates Verilog."""

from __future__ import annotations

import json

import pytest

from actpack.boards import (
    Board,
    BoardFitError,
    ToolchainMissing,
    UnknownBoardError,
    boards,
    get,
    register,
)
from actpack.boards.pcie import XdmaLink
from actpack.cli import main
from actpack.codec.spec import DType, Mode
from actpack.hw.regs import GATEWARE_MODES


class _Small(Board):
    """A board whose part holds sfpr8 and mask engines, at most two pairs."""

    name = "test-small"
    title = "a test board"
    part = "xc7a35t"
    link = "none"
    link_mb_s = 1.0
    toolchain = "none"
    modes = frozenset({Mode.SFPR8, Mode.MASK})
    dtypes = frozenset({DType.FLOAT32, DType.FLOAT16})
    max_engines = 2
    stream_bytes = 8
    buffer_kib = 16
    max_buffer_kib = 32

    def plan(self, out_dir, config, *, progress=None):
        raise AssertionError("not called")


def test_registry_lists_the_pcie_and_ecp5_boards():
    names = [b.name for b in boards()]
    assert names == sorted(names)
    assert {"nitefury", "kc705", "ecp5_5g_evn", "ulx3s"} <= set(names)
    assert get("nitefury").part == "xc7a200t-fbg484-2"
    assert get("kc705").part == "xc7k325t-ffg900-2"


def test_unknown_board_names_the_known_ones():
    with pytest.raises(UnknownBoardError) as exc:
        get("arty")
    assert "'arty'" in str(exc.value) and "nitefury" in str(exc.value)
    assert "actpack boards" in str(exc.value)
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, ValueError)


def test_register_refuses_a_second_board_of_a_name():
    with pytest.raises(ValueError, match="already registered"):
        register(type(get("nitefury"))())
    with pytest.raises(TypeError):
        register("nitefury")


def test_card_config_defaults_and_stream_width():
    board = get("nitefury")
    config = board.card_config()
    assert config.caps.modes == board.modes == GATEWARE_MODES
    assert config.caps.dtypes == frozenset({DType.FLOAT32})
    assert config.caps.stream_bytes == board.xdma.axi_bits // 8 == 16
    assert config.caps.lanes == 1 and config.buffer_kib == board.buffer_kib
    config = board.card_config(modes=["dct", Mode.EB], dtypes=["bfloat16"], buffer_kib=64)
    assert config.caps.modes == {Mode.DCT, Mode.EB}
    assert config.caps.dtypes == {DType.BFLOAT16} and config.buffer_kib == 64


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"modes": ["dct"]}, ["dct", "do not fit test-small", "sfpr8, mask"]),
    ({"modes": ["jpeg"]}, ["unknown mode 'jpeg'"]),
    ({"modes": []}, ["at least one"]),
    ({"dtypes": ["bfloat16"]}, ["bfloat16", "do not fit"]),
    ({"dtypes": ["int8"]}, ["unknown dtype 'int8'"]),
    ({"modes": ["sfpr8", "mask"], "dtypes": ["float32", "float16"]},
     ["4 (mode, dtype) engine pairs", "holds 2"]),
    ({"lanes": 2}, ["lanes 2", "--lanes 1"]),
    ({"lanes": 0}, ["lanes 0"]),
    ({"buffer_kib": 64}, ["buffer_kib 64", "1 to 32 KiB"]),
])
def test_card_config_names_what_does_not_fit(kwargs, words):
    with pytest.raises(BoardFitError) as exc:
        _Small().card_config(**kwargs)
    for w in words:
        assert w in str(exc.value)


def test_pcie_boards_hold_every_mode_on_one_dtype():
    for name, pairs in (("nitefury", 4), ("kc705", 6)):
        board = get(name)
        assert board.max_engines == pairs
        assert board.card_config(dtypes=["float32"]).caps.modes == GATEWARE_MODES
    with pytest.raises(BoardFitError, match="8 \\(mode, dtype\\) engine pairs do not fit "
                                            "nitefury"):
        get("nitefury").card_config(dtypes=["float32", "bfloat16"])


def test_build_without_vivado_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("VIVADO", raising=False)
    board = get("nitefury")
    assert "vivado not found" in board.toolchain_missing()
    with pytest.raises(ToolchainMissing) as exc:
        board.build(tmp_path / "out", board.card_config(modes=["mask"]))
    assert "--plan-only" in str(exc.value) and "settings64.sh" in str(exc.value)
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_xdma_link_must_carry_its_lanes():
    with pytest.raises(ValueError, match="less than Gen2 x8"):
        XdmaLink(gen=2, lanes=8, axi_bits=64, axi_mhz=125)
    with pytest.raises(ValueError, match="gen"):
        XdmaLink(gen=4, lanes=1, axi_bits=64, axi_mhz=250)
    link = XdmaLink(gen=3, lanes=8, axi_bits=256, axi_mhz=250)
    assert link.stream_bytes == 32 and link.mb_s == pytest.approx(7876.8)


def test_cli_boards_table_and_json(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for b in boards():
        line = next(ln for ln in out.splitlines() if ln.startswith(b.name + " "))
        modes = " ".join(m.label for m in sorted(b.modes))
        assert b.part in line and b.link in line and line.endswith(modes)
    assert main(["boards", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["nitefury"]["link_mb_s"] == 2000.0
    assert rows["kc705"]["modes"] == ["dct", "eb", "sfpr8", "mask"]
    assert rows["kc705"]["max_engines"] == 6


@pytest.mark.parametrize(("argv", "words"), [
    (["--board", "arty", "--plan-only"], ["unknown board 'arty'"]),
    (["--board", "nitefury", "--modes", "dct,jpeg", "--plan-only"], ["unknown mode 'jpeg'"]),
    (["--board", "nitefury", "--lanes", "4", "--plan-only"], ["lanes 4"]),
    (["--board", "kc705", "--buffer-kib", "999999", "--plan-only"], ["buffer_kib 999999"]),
])
def test_cli_build_bad_input_is_one_error(argv, words, capsys, tmp_path):
    assert main(["build", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actpack build: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err
    assert not (tmp_path / "o").exists()


def test_cli_build_without_vivado(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("VIVADO", raising=False)
    assert main(["build", "--board", "kc705", "--modes", "mask",
                 "--out", str(tmp_path / "o")]) == 2
    assert "vivado not found on PATH" in capsys.readouterr().err
