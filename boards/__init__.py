"""The board registry: every board the card can be built for, behind one interface.

A board is a ``Board``: what it is (``name``, ``part``, ``link``, ``toolchain``, the ``modes``
and ``dtypes`` whose engines fit its part, ``max_lanes``), ``card_config(...)``, which turns a
request (modes, dtypes, lanes, frame buffer) into the ``hw.regs.CardConfig`` of a card that fits
the board or raises ``BoardFitError`` naming what does not fit, ``plan(out_dir, config)``, which
writes everything a build needs without running a vendor tool, and ``build(out_dir, config)``,
which also runs the toolchain (``ToolchainMissing`` naming the fix when it is not installed).
Both end with ``DIR/report.json`` and ``DIR/summary.txt`` (``BuildReport``).

Boards live one per module in this package and call ``register(board)`` at import;
``boards()`` imports every module here (not those starting with ``_``) and lists them, ``get``
finds one by name or raises ``UnknownBoardError`` listing the known ones. So a new board is a new
file, nothing else::

    from actpack.boards import get

    board = get("nitefury")
    config = board.card_config(modes=["sfpr8"], dtypes=["float32"])
    plan = board.plan("build/boards/nitefury", config)   # Vivado project, no Vivado needed
    print(plan.report.summary())

The command line is ``actpack boards`` and ``actpack build --board NAME`` (``actpack.cli``).
"""

from __future__ import annotations

import abc
import importlib
import json
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actpack.codec.spec import DType, Mode
from actpack.hw.regs import GATEWARE_MODES, Caps, CardConfig
from actpack.hw.synth import ToolchainMissing

__all__ = [
    "Board",
    "BoardError",
    "BoardFitError",
    "BuildReport",
    "Plan",
    "ToolchainMissing",
    "UnknownBoardError",
    "boards",
    "get",
    "register",
]


class BoardError(ValueError):
    """A board request that cannot be met; the message says what to change."""


class UnknownBoardError(BoardError, KeyError):
    """No board of that name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BoardFitError(BoardError):
    """Modes, dtypes, lanes or a frame buffer that the board's part cannot hold."""


@dataclass
class BuildReport:
    """What a plan or a build gives, written as ``report.json`` (every field) and
    ``summary.txt`` (``summary()``). Area and Fmax are None where no tool measured them (a
    plan); ``throughput_mb_s`` is the card's input rate at ``clock_mhz`` (the target clock of a
    plan, the measured Fmax of a build); ``link_mb_s`` what the host link carries a direction."""

    board: str
    part: str
    status: str  # "plan" (files only) or "built" (the toolchain ran)
    modes: list[str]
    dtypes: list[str]
    lanes: int
    link: str
    link_mb_s: float
    clock_mhz: float
    values_per_cycle: int
    throughput_mb_s: float
    luts: int | None = None
    ffs: int | None = None
    dsps: int | None = None
    brams: int | None = None
    fmax_mhz: float | None = None
    bitstream: str | None = None  # the file in the folder, after a build
    bitstream_bytes: int | None = None
    build_s: float | None = None  # the toolchain's seconds (of the run that built it)
    cached: bool = False  # the figures come from an earlier identical build
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few readable lines: board, configuration, area, clock, rates against the link."""
        def fig(v, unit=""):
            return "not measured" if v is None else f"{v:g}{unit}"

        lines = [
            f"{self.board} ({self.part}): {self.status}",
            (f"  modes {', '.join(self.modes)}; dtypes {', '.join(self.dtypes)}; "
             f"lanes {self.lanes}"),
            (f"  LUTs {fig(self.luts)}, FFs {fig(self.ffs)}, DSPs {fig(self.dsps)}, "
             f"BRAMs {fig(self.brams)}, Fmax {fig(self.fmax_mhz, ' MHz')}"),
            (f"  card {self.values_per_cycle} float32 values/cycle at {self.clock_mhz:g} MHz = "
             f"{self.throughput_mb_s:g} MB/s; link {self.link} {self.link_mb_s:g} MB/s"),
        ]
        if self.bitstream is not None:
            lines.append(f"  bitstream {self.bitstream}: {self.bitstream_bytes} bytes, toolchain "
                         f"{fig(self.build_s, ' s')}{' (cached)' if self.cached else ''}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        """``out_dir/report.json`` and ``out_dir/summary.txt``."""
        out_dir = Path(out_dir)
        (out_dir / "report.json").write_text(json.dumps(asdict(self), indent=1) + "\n")
        (out_dir / "summary.txt").write_text(self.summary())


@dataclass
class Plan:
    """A written plan or build: its folder, the files in it, its report."""

    directory: Path
    files: list[str]
    report: BuildReport


def parse_labels(kind, values, allowed, board: str, what: str):
    """``values`` (labels or members of the enum ``kind``) as a frozenset, checked against
    ``allowed``."""
    out = set()
    for v in values:
        try:
            out.add(_member(kind, v))
        except ValueError as exc:
            raise BoardFitError(str(exc)) from None
    missing = sorted(out - set(allowed))
    if missing:
        fits = ", ".join(m.label for m in sorted(allowed))
        raise BoardFitError(
            f"{what} {', '.join(m.label for m in missing)}: do not fit {board} "
            f"(its part holds the engines of {fits}); pick {what} from those")
    if not out:
        raise BoardFitError(f"{what}: at least one is needed")
    return frozenset(out)


def _member(kind, value):
    """The member of the enum ``kind`` (``Mode``, ``DType``) that ``value`` is or names by its
    ``label``; ``ValueError`` listing the labels otherwise."""
    if isinstance(value, kind):
        return value
    by_label = {m.label: m for m in kind}
    if value not in by_label:
        what = kind.__name__.lower()
        raise ValueError(f"{what}: unknown {what} {value!r}; expected one of "
                         f"{', '.join(map(repr, by_label))}")
    return by_label[value]


class Board(abc.ABC):
    """One board: a part, a host link and a toolchain.

    Subclasses set the class attributes and implement ``plan``; those whose toolchain can run
    here implement ``build`` too (the default runs ``plan`` and raises ``ToolchainMissing``
    unless ``toolchain_missing()`` says the tools are there).

    ``modes`` / ``dtypes``: the engines that fit the part (``card_config`` refuses others);
    ``max_engines``: how many (mode, dtype) engine pairs fit together (None: all of them);
    ``max_lanes``: the card's lanes; ``stream_bytes``: the card's AXI4-Stream width on this
    board's link; ``buffer_kib`` / ``max_buffer_kib``: the frame buffer's default and the most
    the part's block RAM holds.
    """

    name: str
    title: str
    part: str
    link: str
    link_mb_s: float
    toolchain: str
    modes: frozenset[Mode] = GATEWARE_MODES  # what the engines implement
    dtypes: frozenset[DType] = frozenset(DType)
    default_dtypes: frozenset[DType] = frozenset({DType.FLOAT32})
    max_engines: int | None = None
    max_lanes: int = 1
    stream_bytes: int = 16
    buffer_kib: int = 256
    max_buffer_kib: int = 1024

    def card_config(self, *, modes: Iterable | None = None, dtypes: Iterable | None = None,
                    lanes: int = 1, buffer_kib: int | None = None) -> CardConfig:
        """The ``CardConfig`` of a card with ``modes`` (default: every mode that fits) and
        ``dtypes`` (default: ``default_dtypes``), names or enum members, ``lanes`` and a
        ``buffer_kib`` frame buffer (default: the board's) on this board's stream width.
        Raises ``BoardFitError`` naming the value that does not fit and what would."""
        modes = parse_labels(Mode, self.modes if modes is None else modes, self.modes,
                        self.name, "modes")
        dtypes = parse_labels(DType, self.default_dtypes if dtypes is None else dtypes,
                         self.dtypes, self.name, "dtypes")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not \
                1 <= lanes <= self.max_lanes:
            raise BoardFitError(f"lanes {lanes!r}: {self.name} takes 1 to {self.max_lanes} "
                                f"lane(s); use --lanes {self.max_lanes}")
        pairs = len(modes) * len(dtypes)
        if self.max_engines is not None and pairs > self.max_engines:
            raise BoardFitError(
                f"{pairs} (mode, dtype) engine pairs do not fit {self.name} ({self.part} holds "
                f"{self.max_engines}); ask for fewer modes or dtypes")
        buffer_kib = self.buffer_kib if buffer_kib is None else buffer_kib
        if isinstance(buffer_kib, bool) or not isinstance(buffer_kib, int) or not \
                1 <= buffer_kib <= self.max_buffer_kib:
            raise BoardFitError(f"buffer_kib {buffer_kib!r}: {self.name} holds a frame buffer "
                                f"of 1 to {self.max_buffer_kib} KiB in block RAM")
        return CardConfig(caps=Caps(modes=modes, dtypes=dtypes, lanes=lanes,
                                    stream_bytes=self.stream_bytes), buffer_kib=buffer_kib)

    def toolchain_missing(self) -> str | None:
        """None when ``build`` can run here, else what to install (one sentence)."""
        return f"{self.toolchain} cannot run here; use --plan-only"

    @abc.abstractmethod
    def plan(self, out_dir, config: CardConfig, *,
             progress: Callable[[str], None] | None = None) -> Plan:
        """Write the build's files to ``out_dir`` (created) without running the toolchain, and
        ``report.json`` / ``summary.txt`` with ``status="plan"``."""

    def build(self, out_dir, config: CardConfig, *,
              progress: Callable[[str], None] | None = None) -> Plan:
        """Plan and run the toolchain: the bitstream and a report with measured figures.
        Raises ``ToolchainMissing`` (before writing anything) when the tools are not here."""
        missing = self.toolchain_missing()
        if missing:
            raise ToolchainMissing(missing)
        raise NotImplementedError(f"{self.name}: build is not implemented")  # pragma: no cover

    def describe(self) -> dict:
        """The board as ``actpack boards`` lists it."""
        return {"name": self.name, "title": self.title, "part": self.part, "link": self.link,
                "link_mb_s": self.link_mb_s, "toolchain": self.toolchain,
                "modes": [m.label for m in sorted(self.modes)],
                "dtypes": [d.label for d in sorted(self.dtypes)],
                "max_engines": self.max_engines, "max_lanes": self.max_lanes,
                "builds_here": self.toolchain_missing() is None}


_REGISTRY: dict[str, Board] = {}


def register(board: Board) -> Board:
    """Add ``board`` under ``board.name`` (a board module calls this at import); returns it.
    Raises ``ValueError`` when another board already has the name."""
    if not isinstance(board, Board):
        raise TypeError(f"register: expected a Board, got {type(board).__name__}")
    known = _REGISTRY.get(board.name)
    if known is not None and known is not board:
        raise ValueError(f"register: a board named {board.name!r} is already registered")
    _REGISTRY[board.name] = board
    return board


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def boards() -> list[Board]:
    """Every board, by name (imports the board modules of this package)."""
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get(name: str) -> Board:
    """The board called ``name``; ``UnknownBoardError`` lists the known names."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownBoardError(f"unknown board {name!r}; known boards: {known} "
                                "(`actpack boards` lists them)") from None
