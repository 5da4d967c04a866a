"""The ``actpack`` command line (also ``python -m actpack``).

    actpack demo [--quick]              train the digits CNN, compress its activations, plot
    actpack bench codec [--json PATH]   ratio / error / throughput of every codec mode

Subcommands are registered in ``build_parser``; benchmarks come from ``actpack.bench.BENCHMARKS``
(each a module with ``add_arguments(parser)`` and ``run(args) -> int``), so ``bench rtl`` and
others only need an entry there.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser() -> argparse.ArgumentParser:
    import actpack

    parser = argparse.ArgumentParser(
        prog="actpack",
        description="Train neural networks in less memory by compressing saved activations.")
    parser.add_argument("--version", action="version", version=f"actpack {actpack.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_bench(sub)
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
