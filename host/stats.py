"""What an offload session stored: per tensor, per layer, in total, and over time.

All byte counts are of the saved tensors themselves: ``raw_bytes`` is what autograd would have
held without actpack (each distinct tensor once, however many ops saved it), ``stored_bytes``
what actpack held instead (frame bytes plus the tensors it kept as they are). Parameters (and
their views and autocast copies) are left out of both: autograd saves them by reference, so
they cost nothing extra; ``parameter_bytes`` counts them. Peaks come from
the timeline of the session: ``peak_raw_bytes`` and ``peak_stored_bytes`` count each tensor from
the moment it is saved to the moment autograd frees it (the stored figure as if compression were
instant); ``peak_resident_bytes`` counts a tensor at its raw size until its compression has
finished (a tensor compressed inside the op that saves it is stored when the op returns: its
raw form is the op's own, never held for backward). ``session.saved_memory`` measures the same
from the storages themselves (``host.peak.SavedMemory``), tensors decompressed ahead of
backward included.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LayerStats", "Stats", "TensorStats", "draw_timeline", "format_bytes",
           "plot_timeline"]


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _ratio(raw: int, stored: int) -> float:
    return raw / stored if stored else float("inf") if raw else 1.0


@dataclass(frozen=True)
class TensorStats:
    """One distinct saved tensor (``context`` as in ``SavedInfo``). Times are seconds since the
    session was created; ``stored_at`` is when its frame was ready (None while pending),
    ``freed_at`` when autograd released it (None while alive); ``grad_error`` what an
    ``AdaptivePolicy`` measured for it (its share of its worst parameter's gradient-error
    budget; None otherwise)."""

    layer: str
    module_type: str
    op: str
    context: str
    saved_by: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    mode: str
    raw_bytes: int
    stored_bytes: int
    packed_at: float
    stored_at: float | None
    freed_at: float | None
    grad_error: float | None = None

    @property
    def label(self) -> str:
        return self.layer or f"<{self.module_type or 'top level'}>"


@dataclass(frozen=True)
class LayerStats:
    """The tensors of one layer and op kind, summed over the steps of the session."""

    layer: str
    op: str
    saved_by: tuple[str, ...]
    mode: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    count: int
    raw_bytes: int
    stored_bytes: int
    grad_error: float | None = None  # the largest of its tensors' (see TensorStats)

    @property
    def ratio(self) -> float:
        return _ratio(self.raw_bytes, self.stored_bytes)


@dataclass(frozen=True)
class Stats:
    """A snapshot of a session (``session.stats``). ``saves`` counts pack calls, ``tensors`` the
    distinct tensors behind them (so ``saves - len(tensors) - passed`` were stored once for
    several savers); ``passed`` counts tensors saved during backward (recomputation, double
    backward) or of kinds actpack does not touch, which autograd keeps as usual."""

    saves: int
    passed: int
    tensors: tuple[TensorStats, ...]
    timeline: tuple[tuple[float, int, int, int], ...]

    @property
    def activations(self) -> tuple[TensorStats, ...]:
        """The saved tensors that are not parameters: what the byte figures count."""
        return tuple(t for t in self.tensors if t.op != "parameter")

    @property
    def raw_bytes(self) -> int:
        return sum(t.raw_bytes for t in self.activations)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.activations)

    @property
    def kept_bytes(self) -> int:
        """Of ``stored_bytes``, the tensors kept as they are."""
        return sum(t.stored_bytes for t in self.activations if t.mode == "keep")

    @property
    def parameter_bytes(self) -> int:
        """Parameters saved (by reference; not in ``raw_bytes``)."""
        return sum(t.raw_bytes for t in self.tensors if t.op == "parameter")

    @property
    def ratio(self) -> float:
        """``raw_bytes / stored_bytes``."""
        return _ratio(self.raw_bytes, self.stored_bytes)

    @property
    def deduplicated(self) -> int:
        """Saves served by a tensor stored for an earlier save."""
        return self.saves - self.passed - len(self.tensors)

    def _peak(self, column: int) -> int:
        return max((p[column] for p in self.timeline), default=0)

    @property
    def peak_raw_bytes(self) -> int:
        return self._peak(1)

    @property
    def peak_stored_bytes(self) -> int:
        return self._peak(2)

    @property
    def peak_resident_bytes(self) -> int:
        return self._peak(3)

    @property
    def layers(self) -> tuple[LayerStats, ...]:
        """Per layer and op kind, in the order first saved (parameters left out)."""
        groups: dict[tuple[str, str], list[TensorStats]] = {}
        for t in self.activations:
            groups.setdefault((t.label, t.op), []).append(t)
        out = []
        for (label, op), ts in groups.items():
            saved_by = tuple(dict.fromkeys(s for t in ts for s in t.saved_by))
            modes = tuple(dict.fromkeys(t.mode for t in ts))
            errors = [t.grad_error for t in ts if t.grad_error is not None]
            out.append(LayerStats(label, op, saved_by, "/".join(modes), ts[-1].shape,
                                  ts[-1].dtype, len(ts), sum(t.raw_bytes for t in ts),
                                  sum(t.stored_bytes for t in ts),
                                  max(errors) if errors else None))
        return tuple(out)

    def table(self) -> str:
        """The per-layer table ``session.report()`` prints."""
        head = ("layer", "op", "saved by", "shape", "dtype", "mode", "n", "raw", "stored",
                "ratio")
        layers = self.layers
        # an AdaptivePolicy's measurements: share of the gradient-error budget
        graded = any(ls.grad_error is not None for ls in layers)
        if graded:
            head += ("grad err",)
        rows = [head]
        for ls in layers:
            row = (ls.layer, ls.op, ",".join(ls.saved_by), "x".join(map(str, ls.shape)),
                   str(ls.dtype).removeprefix("torch."), ls.mode, str(ls.count),
                   format_bytes(ls.raw_bytes), format_bytes(ls.stored_bytes), f"{ls.ratio:.2f}x")
            if graded:
                row += ("-" if ls.grad_error is None else f"{ls.grad_error:.3f}",)
            rows.append(row)
        rows.append(("total", "", "", "", "", "", str(len(self.activations)),
                     format_bytes(self.raw_bytes), format_bytes(self.stored_bytes),
                     f"{self.ratio:.2f}x") + (("",) if graded else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        right = {6, 7, 8, 9, 10}
        out = io.StringIO()
        for k, r in enumerate(rows):
            if k in (1, len(rows) - 1):
                out.write("  ".join("-" * w for w in widths) + "\n")
            cells = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            out.write("  ".join(cells).rstrip() + "\n")
        out.write(f"saves: {self.saves} ({self.deduplicated} served by a tensor already stored, "
                  f"{self.passed} passed through); peak of saved tensors: "
                  f"{format_bytes(self.peak_raw_bytes)} without actpack, "
                  f"{format_bytes(self.peak_stored_bytes)} stored, "
                  f"{format_bytes(self.peak_resident_bytes)} resident with compression "
                  f"in flight; parameters saved by reference (not counted): "
                  f"{format_bytes(self.parameter_bytes)}\n")
        return out.getvalue()


def timeline_of(tensors: Sequence[TensorStats], now: float) -> tuple[tuple[float, int, int, int],
                                                                      ...]:
    """Live (raw, stored, resident) bytes after every event, as ``(time, raw, stored, resident)``
    points, starting from zero."""
    events: list[tuple[float, int, int, int]] = []
    for t in tensors:
        if t.op == "parameter":
            continue
        freed = now if t.freed_at is None else t.freed_at
        events.append((t.packed_at, t.raw_bytes, t.stored_bytes, t.raw_bytes))
        done = t.stored_at if t.stored_at is not None else freed
        if done < freed:
            events.append((done, 0, 0, t.stored_bytes - t.raw_bytes))
            if t.freed_at is not None:
                events.append((freed, -t.raw_bytes, -t.stored_bytes, -t.stored_bytes))
        elif t.freed_at is not None:
            events.append((freed, -t.raw_bytes, -t.stored_bytes, -t.raw_bytes))
    events.sort(key=lambda e: (e[0], e[1] > 0))  # frees before saves at equal times
    raw = stored = resident = 0
    points = [(0.0, 0, 0, 0)]
    for time, d_raw, d_stored, d_res in events:
        raw, stored, resident = raw + d_raw, stored + d_stored, resident + d_res
        points.append((time, raw, stored, resident))
    return tuple(points)


def draw_timeline(ax, stats: Stats, *, title: str | None = None) -> None:
    """Draw saved-tensor memory over the session on a matplotlib ``Axes``: without actpack (raw),
    with it (resident: raw until each frame is ready), and the frames alone."""
    pts = stats.timeline
    start = pts[1][0] if len(pts) > 1 else 0.0  # the first save, not the session's creation
    t = [max(p[0] - start, 0.0) * 1e3 for p in pts]
    mib = 1 / (1 << 20)
    ax.step(t, [p[1] * mib for p in pts], where="post", label="without actpack (raw)")
    ax.step(t, [p[3] * mib for p in pts], where="post", label="with actpack (resident)")
    ax.step(t, [p[2] * mib for p in pts], where="post", linestyle="--",
            label="with actpack (frames, compression instant)")
    ax.set_xlabel("time since the first save (ms)")
    ax.set_ylabel("saved tensors (MiB)")
    ax.set_title(title or f"saved activations: {format_bytes(stats.raw_bytes)} -> "
                          f"{format_bytes(stats.stored_bytes)} ({stats.ratio:.2f}x)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def plot_timeline(stats: Stats, path, *, title: str | None = None) -> None:
    """Saved-tensor memory over the session as a PNG/SVG/PDF (by ``path``'s suffix).

    Uses matplotlib's Agg canvas directly: no pyplot, no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    draw_timeline(fig.add_subplot(), stats, title=title)
    fig.savefig(path)
