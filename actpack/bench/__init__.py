"""Benchmarks (``actpack bench <name>``) and what they share: timing, machine facts, and the
sections they keep up to date in docs/results.md.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> int``; ``actpack.cli``
registers it under ``BENCHMARKS``. A benchmark writes its markdown between the markers
``<!-- bench NAME: begin -->`` and ``<!-- bench NAME: end -->`` and leaves the rest of the file as
it is.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from actpack.paths import docs_dir

__all__ = [
    "BENCHMARKS",
    "add_output_arguments",
    "best_of",
    "default_results_path",
    "machine_info",
    "machine_line",
    "mib",
    "publish",
    "source_info",
    "update_results",
]

# name -> module (imported lazily by the CLI so `actpack --help` stays fast)
BENCHMARKS = {"codec": "actpack.bench.codec", "offload": "actpack.bench.offload",
              "rtl": "actpack.bench.rtl", "synth": "actpack.bench.synth",
              "train": "actpack.bench.train"}

_RESULTS_INTRO = """\
# actpack — measured results

Figures measured by the project's own commands; each section below is rewritten in place by
the command named in its heading (everything outside the `<!-- bench ...: begin/end -->` markers
is left alone). Reproduce with `make bench` or `.venv/bin/actpack bench <name>`.
"""


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Run ``fn`` ``repeats`` times; the shortest wall time (``time.perf_counter``) and the last
    result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(*, threads: int | None = None) -> dict:
    """Date, CPU, core count and package versions, for the record next to every figure."""
    import numpy
    import torch

    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 1
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": _cpu_model(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "actpack": _version("actpack"),
        # other work on the machine skews throughput figures: record how busy it was
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line(result: dict) -> str:
    """The sentence under a section's heading: when, on what, how busy, which commit, and
    whether it was a quick run (``result`` has ``machine``, ``source`` and ``quick``)."""
    m, src = result["machine"], result["source"]
    return (f"{m['date']}, {m['cpu']}, {m['nproc']} cores, torch {m['torch']} with "
            f"{m['torch_threads']} threads, load average {m['loadavg_1min']:.2f} at the end"
            + (f", commit {src['commit']}" if src.get("commit") else "")
            + (" (quick run: not the reference figures)" if result.get("quick") else "") + ".")


def mib(n: float) -> str:
    """``n`` bytes in MiB, two decimals."""
    return f"{n / 2**20:.2f} MiB"


def source_info() -> dict:
    """The git commit of the checkout and whether the codec has uncommitted changes (figures of a
    modified codec are not the commit's figures). Empty outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        return {"commit": git("rev-parse", "--short", "HEAD"),
                "codec_modified": bool(git("status", "--porcelain", "--", "actpack/codec"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def default_results_path() -> Path:
    """docs/results.md of the source checkout when actpack runs from one, else ./docs/results.md."""
    return docs_dir() / "results.md"


def update_results(path: str | os.PathLike, name: str, body: str) -> Path:
    """Replace the section of benchmark ``name`` in the markdown file ``path`` with ``body``
    (creating the file with a short intro, or appending the section, when missing)."""
    path = Path(path)
    begin, end = f"<!-- bench {name}: begin -->", f"<!-- bench {name}: end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _RESULTS_INTRO
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + section + text[j + len(end):]
    else:
        if i >= 0 or j >= 0:
            raise ValueError(f"{path}: unbalanced markers for section {name!r}; fix them by hand")
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_output_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The options every benchmark has for where its figures go (see ``publish``)."""
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--results", metavar="PATH", default=None,
                   help=f"markdown file whose 'bench {name}' section is rewritten "
                        "(default: docs/results.md of the checkout)")
    p.add_argument("--no-results", action="store_true", help="do not touch the markdown file")


def publish(args: argparse.Namespace, name: str, markdown: str, result: dict) -> None:
    """Rewrite benchmark ``name``'s section of the results file with ``markdown`` (unless
    ``--no-results``) and write ``result`` as JSON to ``--json`` when given."""
    if not args.no_results:
        path = update_results(args.results or default_results_path(), name, markdown)
        print(f"wrote section 'bench {name}' of {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
