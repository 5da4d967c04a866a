"""Where the project's own commands write what they measure and draw.

Used by the benchmarks (``actpack.bench``: docs/results.md) and the demo (docs/demo.png); here,
not in either, so that ``bench offload`` can run the demo's training while the demo imports
nothing of the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["docs_dir"]


def docs_dir() -> Path:
    """docs/ of the source checkout when actpack runs from one, else ./docs."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "actpack").is_dir():
        return root / "docs"
    return Path("docs")
