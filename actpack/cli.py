"""The ``actpack`` command line (also ``python -m actpack``).

    actpack demo [--quick]              train the digits CNN, compress its activations, plot
    actpack bench codec [--json PATH]   ratio / error / throughput of every codec mode
    actpack boards [--json]             the boards the card builds for
    actpack build --board NAME [--modes M ...] [--dtypes D ...] [--lanes N] [--buffer-kib K]
                  [--out DIR] [--plan-only]
                                        a board's bitstream, or its vendor build plan

Subcommands are registered in ``build_parser``; benchmarks come from ``actpack.bench.BENCHMARKS``
(each a module with ``add_arguments(parser)`` and ``run(args) -> int``), so ``bench rtl`` and
others only need an entry there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

__all__ = ["build_parser", "main"]


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small CNN on digits and compress its activations",
                       description="Train a small CNN on scikit-learn's digits, compress its real "
                                   "activations with every codec mode and plot the result.")
    from actpack import demo

    demo.add_arguments(p)
    p.set_defaults(_run=demo.run)


def _add_bench(sub) -> None:
    from actpack.bench import BENCHMARKS

    p = sub.add_parser("bench", help="run a benchmark and record it in docs/results.md",
                       description="Benchmarks; each rewrites its section of docs/results.md.")
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()
        bp = bench_sub.add_parser(name, help=doc[0] if doc else None,
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(bp)
        bp.set_defaults(_run=module.run)


def _run_boards(args) -> int:
    from actpack.boards import boards

    rows = [b.describe() for b in boards()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    head = ("board", "part", "host link", "toolchain", "modes that fit")
    table = [head] + [(r["name"], r["part"], r["link"],
                       r["toolchain"] + ("" if r["builds_here"] else " [plan only here]"),
                       " ".join(r["modes"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _add_boards(sub) -> None:
    p = sub.add_parser("boards", help="list the boards the card builds for",
                       description="Boards: FPGA part, host link, toolchain, the modes whose "
                                   "engines fit. `actpack build --board NAME` builds one.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(_run=_run_boards)


def _split(values):
    """``--modes dct sfpr8`` and ``--modes dct,sfpr8`` alike; None when not given."""
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


def _run_build(args) -> int:
    from pathlib import Path

    from actpack.boards import BoardError, ToolchainMissing, get

    try:
        board = get(args.board)
        config = board.card_config(modes=_split(args.modes), dtypes=_split(args.dtypes),
                                   lanes=args.lanes, buffer_kib=args.buffer_kib)
        out = Path(args.out or Path("build") / "boards" / board.name)
        step = "plan" if args.plan_only else "build"

        def say(text):
            print(f"[{board.name}] {text}", file=sys.stderr, flush=True)

        plan = getattr(board, step)(out, config, progress=say)
    except (BoardError, ToolchainMissing) as exc:
        print(f"actpack build: error: {exc}", file=sys.stderr)
        return 2
    print(plan.report.summary(), end="")
    print(f"wrote {len(plan.files)} files to {plan.directory} (report.json, summary.txt)")
    return 0


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build a board's bitstream or write its build plan",
                       description="Build the card for a board (`actpack boards` lists them): "
                                   "a bitstream where the board's toolchain runs here, or with "
                                   "--plan-only the vendor project (sources, IP, constraints, "
                                   "build script). Writes DIR/report.json and DIR/summary.txt.")
    p.add_argument("--board", required=True, help="board name (see `actpack boards`)")
    p.add_argument("--modes", nargs="+", metavar="MODE",
                   help="codec modes to build engines for (default: every mode that fits)")
    p.add_argument("--dtypes", nargs="+", metavar="DTYPE",
                   help="input dtypes to build engines for (default: the board's, float32)")
    p.add_argument("--lanes", type=int, default=1, help="engine lanes (default 1)")
    p.add_argument("--buffer-kib", type=int, default=None,
                   help="frame buffer in KiB (default: the board's)")
    p.add_argument("--out", help="output folder (default build/boards/BOARD)")
    p.add_argument("--plan-only", action="store_true",
                   help="write the build's files without running the toolchain")
    p.set_defaults(_run=_run_build)


def build_parser() -> argparse.ArgumentParser:
    import actpack

    parser = argparse.ArgumentParser(
        prog="actpack",
        description="Train neural networks in less memory by compressing saved activations.")
    parser.add_argument("--version", action="version", version=f"actpack {actpack.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_bench(sub)
    _add_boards(sub)
    _add_build(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actpack`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
