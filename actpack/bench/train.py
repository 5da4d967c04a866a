"""Training against the alternatives: the same models, data and seeds trained plainly, with what
a user would otherwise pick to save activation memory, and with actpack.

Models (CPU, float32):

- ``digits CNN``: ``actpack.data.digits_cnn`` on scikit-learn's digits (batch 64); metric:
  test accuracy;
- ``digits ResNet``: ``actpack.models.digits_resnet`` (BatchNorm, residual blocks, max pooling,
  dropout) on the same digits; metric: test accuracy;
- ``char transformer``: ``actpack.models.AttentionEncoder(causal=True)`` (2 pre-norm blocks, 4
  heads, d 64, explicit attention maps) predicting the next byte of Python's own standard library
  source (``actpack.data.python_text``, 90/10 split; batch 32 x 64 tokens, Adam); metric:
  validation loss (nats per byte) on fixed validation windows.

Every model trains with Adam, its learning rate decaying to zero on a cosine over the run
(``schedule``), so the metric is read from a converged model: with a constant rate the
digits ResNet's test accuracy after 300 steps scattered by up to 5 points between rows that
store exactly the same values (baseline, save_on_cpu, checkpoint: one thread, 3 seeds; the
rows differ only in float rounding), far more than the 0.5-point goal. Decayed over 600
steps, the same three rows' medians are equal and each seed's accuracies within one test
image (0.28 points) of each other.

Rows (each trained from the same initial weights and batch order per seed):

- ``baseline``: plain autograd;
- ``checkpoint``: ``torch.utils.checkpoint`` (non-reentrant) around every residual or
  transformer block (the digits CNN: around each conv/ReLU/pool stage);
- ``save_on_cpu``: ``torch.autograd.graph.save_on_cpu`` (on a CPU it moves nothing: the row shows
  what it costs and that it saves nothing here);
- ``int8``: every float saved tensor of 64 KiB and more quantized to 8 bits per group of 256
  consecutive values (min and scale per group, round to nearest) through
  ``saved_tensors_hooks``: the simplest peer (ActNN's idea at 8 bits);
- ``auto``: ``actpack.offload(policy="auto")``;
- ``adaptive``: ``actpack.offload(policy=AdaptivePolicy)``, calibrated on the first step and
  every third of the run.

- ``plan``: ``actpack.offload(plan=actpack.plan(..., peak="saved"))``, planned on the first
  batch for a budget on the saved-activation peak of a tenth of a plain step's
  (``PLAN_FRACTION``: the figure the rows compare; a tenth of the step's whole tensor memory is
  out of reach of every row on these models, whose forward working set and gradients are
  most of it); where no plan reaches that (``BudgetError``), for the smallest budget the
  planner found feasible. The row records the budget asked (``plan_target_bytes``), the
  budget planned for (``budget_bytes``), the planner's predicted and measured peaks and the
  time planning took (``plan_s``, not in the step time). Goal: of the rows within the tenth,
  ``plan`` takes the least step time.

Figures per row, median over the seeds, both peaks measured on one step of the trained model:

- ``peak_activation_bytes``: the peak of saved-activation memory, the bytes held for backward
  at their maximum over the step, in whatever form the row holds them (raw tensors, tensors
  waiting for compression, frames, quantized codes, copies ``save_on_cpu`` made), counted from
  the storages at every change (``host.peak.SavedMemory``: ``session.saved_memory`` for the
  actpack rows, ``host.peak.tracked_hooks`` around the peers' hooks and plain autograd), each
  storage once; parameters left out (held by the model anyway). A tensor handed to backward is
  backward's working memory from then on (in the step peak). For ``checkpoint``: the inputs it
  recomputes from; the segment recomputed during backward is held by checkpoint itself, out of
  the hooks' sight, and shows only in the step peak;
- ``step_peak_bytes``: the peak of all tensor memory of the step's forward and backward in the
  process (``host.peak.warm_peak``: forward's working set, saved tensors, gradients, the codec's
  temporaries);
- ``saved_bytes``: what the row holds for backward at the end of forward (the same account);
- ``step_time_s``, the median training step; ``test_metric``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from actpack.bench import (
    add_output_arguments,
    machine_info,
    machine_line,
    mib,
    publish,
    source_info,
)
from actpack.paths import docs_dir

__all__ = ["PLAN_FRACTION", "ROWS", "TASKS", "add_arguments", "collect", "int8_hooks",
           "render_markdown", "run"]

ROWS = ("baseline", "checkpoint", "save_on_cpu", "int8", "auto", "adaptive", "plan")
# the plan row's budget: this fraction of a plain step's saved-activation peak (the 1/10)
PLAN_FRACTION = 0.1
# the goals: model -> (peak reduction, allowed metric change)
GOALS = {"digits CNN": (15.0, 0.005), "digits ResNet": (10.0, 0.005),
         "char transformer": (4.0, 0.01)}


@dataclass
class Task:
    """A model and its data: ``build(seed)`` a fresh model, ``batch(gen)`` a training batch,
    ``loss(out, y)``, ``evaluate(model)`` the metric (higher is better when ``higher``),
    ``blocks(model)`` the modules ``checkpoint`` wraps (None: the model is an ``nn.Sequential``
    run as 4 checkpointed segments, as ``torch.utils.checkpoint.checkpoint_sequential``)."""

    name: str
    build: Callable[[int], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    blocks: Callable[[nn.Module], list[nn.Module]] | None
    metric: str
    higher: bool
    steps: int
    lr: float


def _digits_tasks(quick: bool) -> list[Task]:
    from actpack.data import digits_cnn, evaluate, load_digits
    from actpack.models import digits_resnet

    train, test = load_digits()

    def batch(gen):
        idx = torch.randint(0, len(train), (64,), generator=gen)
        return train.x[idx], train.y[idx]

    return [
        Task("digits CNN", lambda seed: digits_cnn(seed=seed), batch, F.cross_entropy,
             lambda m: evaluate(m, test), None, "test accuracy", True,
             40 if quick else 300, 2e-3),
        Task("digits ResNet", lambda seed: digits_resnet(seed=seed), batch, F.cross_entropy,
             lambda m: evaluate(m, test), lambda m: [m[5], m[6]], "test accuracy", True,
             20 if quick else 600, 2e-3),
    ]


def _text_task(quick: bool) -> Task:
    from actpack.data import python_text
    from actpack.models import AttentionEncoder

    text, length = python_text(), 64
    val = [text.batch(32, length, torch.Generator().manual_seed(100 + i), split="val")
           for i in range(2 if quick else 8)]

    def loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(model):
        model.eval()
        value = statistics.fmean(float(loss(model(x), y)) for x, y in val)
        model.train()
        return value

    return Task("char transformer",
                lambda seed: AttentionEncoder(vocab=256, d=64, heads=4, layers=2, seed=seed,
                                              causal=True, length=length),
                lambda gen: text.batch(32, length, gen), loss, evaluate,
                lambda m: list(m.blocks), "validation loss", False, 20 if quick else 400, 3e-3)


def tasks(quick: bool) -> list[Task]:
    return [*_digits_tasks(quick), _text_task(quick)]


TASKS = ("digits CNN", "digits ResNet", "char transformer")


def schedule(opt: torch.optim.Optimizer, steps: int):
    """Every row's learning rate: ``task.lr`` decaying to zero on a cosine over ``steps``
    (the module docstring says why)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


# ----------------------------------------------------------------------------- the peers

def int8_hooks(*, min_bytes: int = 65536, group: int = 256):
    """``saved_tensors_hooks`` storing every float tensor of ``min_bytes`` and more as 8-bit
    codes per group of ``group`` consecutive values (min and scale in float32 per group, round
    to nearest). What it holds is measured around it (``host.peak.tracked_hooks``)."""

    class Hooks(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self):
            super().__init__(self.pack, self.unpack)

        def pack(self, t):
            if not t.is_floating_point() or t.numel() * t.element_size() < min_bytes:
                return t
            flat = t.detach().reshape(-1).float()
            pad = -len(flat) % group
            g = F.pad(flat, (0, pad)).view(-1, group)
            lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
            scale = ((hi - lo) / 255).clamp_min(torch.finfo(torch.float32).tiny)
            codes = ((g - lo) / scale).round().clamp(0, 255).to(torch.uint8)
            return codes, lo, scale, t.shape, t.dtype, len(flat)

        def unpack(self, packed):
            if isinstance(packed, torch.Tensor):
                return packed
            codes, lo, scale, shape, dtype, n = packed
            return (codes.float() * scale + lo).reshape(-1)[:n].reshape(shape).to(dtype)

    return Hooks


@contextlib.contextmanager
def _checkpointed(model: nn.Module, blocks: list[nn.Module] | None):
    """Every block's forward through ``torch.utils.checkpoint`` (non-reentrant) while inside,
    or, with ``blocks`` None, the ``nn.Sequential`` ``model`` as 4 segments of which all but
    the last are checkpointed. (The inputs it keeps for the recomputation go through the outer
    saved-tensor hooks, so a counter outside sees them.)"""
    from torch.utils.checkpoint import checkpoint

    if blocks is None:
        children = list(model.children())
        size = -(-len(children) // 4)
        segments = [nn.Sequential(*children[i:i + size]) for i in range(0, len(children), size)]

        def forward(x):
            for segment in segments[:-1]:
                x = checkpoint(segment, x, use_reentrant=False)
            return segments[-1](x)

        model.forward = forward
        try:
            yield
        finally:
            del model.forward
        return
    saved = []
    for block in blocks:
        forward = block.forward

        def wrapped(*args, _forward=forward):
            return checkpoint(_forward, *args, use_reentrant=False)

        saved.append((block, forward))
        block.forward = wrapped
    try:
        yield
    finally:
        for block, forward in saved:
            block.forward = forward


# ----------------------------------------------------------------------------- one run

def _context(row: str, model: nn.Module, task: Task, state: dict):
    """The context a step of ``row`` runs in, and the ``SavedMemory`` that accounts what it
    holds for backward."""
    import actpack
    from actpack.host.peak import tracked_hooks

    if row in ("baseline", "checkpoint"):
        hooks = tracked_hooks()
        if row == "baseline":
            return hooks, hooks.memory
        stack = contextlib.ExitStack()
        blocks = None if task.blocks is None else task.blocks(model)
        stack.enter_context(_checkpointed(model, blocks))
        stack.enter_context(hooks)
        return stack, hooks.memory
    if row in ("save_on_cpu", "int8"):
        inner = torch.autograd.graph.save_on_cpu() if row == "save_on_cpu" else int8_hooks()()
        hooks = tracked_hooks(inner.pack_hook, inner.unpack_hook)
        return hooks, hooks.memory
    if row == "plan":
        session = actpack.offload(plan=state["plan"])
    else:
        session = actpack.offload(policy=state.get("policy", row))
    return session, session.saved_memory


def _plan(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor) -> tuple[object, dict]:
    """The plan row's plan for ``PLAN_FRACTION`` of a plain step's saved-activation peak on
    ``(x, y)`` (or the smallest feasible budget, where that is below every plan), and its
    figures."""
    import actpack
    from actpack.host.plan import saved_peak

    def loss(out):
        return task.loss(out, y)

    t0 = time.perf_counter()
    target = int(PLAN_FRACTION * saved_peak(model, x, loss_fn=loss))
    try:
        plan = actpack.plan(model, x, budget_bytes=target, loss_fn=loss, peak="saved")
    except actpack.BudgetError as exc:
        plan = actpack.plan(model, x, budget_bytes=exc.smallest_feasible_bytes, loss_fn=loss,
                            peak="saved")
    return plan, {"plan_target_bytes": target, "budget_bytes": plan.budget_bytes,
                  "predicted_peak_bytes": plan.predicted_peak,
                  "planned_peak_bytes": plan.measured_peak,
                  "plan_s": time.perf_counter() - t0}


def train_row(task: Task, row: str, seed: int) -> dict:
    """Train ``task``'s model with ``row`` for ``task.steps`` steps from ``seed``'s weights and
    batch order; its figures (see the module docstring)."""
    from actpack.host.peak import warm_peak

    model = task.build(seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=task.lr)
    decay = schedule(opt, task.steps)
    gen = torch.Generator().manual_seed(seed)
    import actpack

    state: dict = {}
    planned: dict = {}
    if row == "adaptive":
        state["policy"] = actpack.AdaptivePolicy(every=max(1, task.steps // 3))
    if row == "plan":
        x, y = task.batch(torch.Generator().manual_seed(seed + 20_000))
        state["plan"], planned = _plan(model, task, x, y)
    times, saved = [], 0
    for _ in range(task.steps):
        x, y = task.batch(gen)
        if row == "adaptive":
            state["policy"].step(model, x, y, loss_fn=task.loss)
        ctx, memory = _context(row, model, task, state)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = task.loss(model(x), y)
            saved = memory.live
            loss.backward()
        opt.step()
        decay.step()
        times.append(time.perf_counter() - t0)
    metric = task.evaluate(model)
    x, y = task.batch(torch.Generator().manual_seed(seed + 10_000))

    saved_peaks = []

    def step_in():
        ctx, memory = _context(row, model, task, state)
        with ctx:
            task.loss(model(x), y).backward()
        saved_peaks.append(memory.peak)

    peak = warm_peak(step_in, model)
    return {"saved_bytes": saved, "step_time_s": statistics.median(times[len(times) // 5:]),
            "test_metric": metric, "peak_activation_bytes": saved_peaks[-1],
            "step_peak_bytes": peak, **planned}


def collect(*, quick: bool = False, seeds: int | None = None, models=None, rows=ROWS,
            threads: int = 2) -> dict:
    """Every row of every model (see the module docstring) as a JSON-able dict."""
    seeds = seeds or (1 if quick else 3)
    chosen = [t for t in tasks(quick) if models is None or t.name in models]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        with tqdm(total=len(chosen) * len(rows) * seeds, desc="bench train", unit="run",
                  leave=False, disable=None) as bar:
            for task in chosen:
                for row in rows:
                    runs = []
                    for seed in range(seeds):
                        bar.set_postfix_str(f"{task.name}: {row}, seed {seed}")
                        runs.append(train_row(task, row, seed))
                        bar.update()
                    out.append({"name": row, "model": task.name, "metric": task.metric,
                                "higher_is_better": task.higher, "seeds": seeds,
                                "steps": task.steps,
                                **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
                                "per_seed": runs})
    finally:
        torch.set_num_threads(old)
    return {"machine": machine_info(threads=threads), "source": source_info(), "quick": quick,
            "rows": out, "targets": _targets(out)}


def _targets(rows: list[dict]) -> list[dict]:
    targets = []
    for model, (factor, tolerance) in GOALS.items():
        base = next((r for r in rows if r["model"] == model and r["name"] == "baseline"), None)
        if base is None:
            continue
        for r in rows:
            if r["model"] == model and r["name"] == "plan":
                # of the rows within PLAN_FRACTION of the baseline's saved-activation peak,
                # plan takes the least step time
                fit = [q for q in rows if q["model"] == model and q["peak_activation_bytes"]
                       <= PLAN_FRACTION * base["peak_activation_bytes"]]
                fastest = min(fit, key=lambda q: q["step_time_s"], default=None)
                targets.append({"name": f"{model}, plan: least step time of the rows within "
                                        f"{PLAN_FRACTION:g} of the baseline's saved-activation "
                                        "peak", "value": 1e3 * r["step_time_s"], "unit": " ms",
                                "pass": fastest is r})
            if r["model"] != model or r["name"] not in ("auto", "adaptive"):
                continue
            gain = base["peak_activation_bytes"] / max(1, r["peak_activation_bytes"])
            if r["higher_is_better"]:
                ok_metric = r["test_metric"] >= base["test_metric"] - tolerance
            else:
                ok_metric = r["test_metric"] <= base["test_metric"] * (1 + tolerance)
            worse = (f"{100 * tolerance:g} points" if r["higher_is_better"]
                     else f"{100 * tolerance:g} %")
            targets.append({"name": f"{model}, {r['name']}: saved-activation peak >= "
                                    f"{factor:g}x lower at <= "
                                    f"{worse} worse {r['metric']}",
                            "value": gain, "pass": gain >= factor and ok_metric})
    return targets


def render_markdown(result: dict, plot: str | None = None) -> str:
    lines = [
        "## Training (`actpack bench train`)",
        "",
        machine_line(result),
        ("Same models, data, initial weights and batch order per seed; medians over the seeds. "
         "Saved-activation peak: the bytes held for backward at their maximum over one step, in "
         "whatever form the row holds them (raw, waiting for compression, frames, int8 codes, "
         "save_on_cpu's copies), counted from the storages themselves at every change, each "
         "storage once, parameters left out (host.peak.SavedMemory; for checkpoint the inputs "
         "it keeps, not the segment it recomputes during backward). Step peak: all tensor "
         "memory of the step in the process (torch.profiler's allocator events: forward's "
         "working set, gradients, decompressed tensors and the codec's temporaries "
         "included). Saved: what the row holds for backward at the end of forward. "
         f"`plan`: planned for {PLAN_FRACTION:g} of a plain step's saved-activation peak, or "
         "for the smallest budget any plan reaches where that is more (the plan lines "
         "below)."),
        "",
        ("| model | row | saved-activation peak | vs baseline | step peak | vs baseline | "
         "saved | step | metric | seeds |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["model"]: r for r in result["rows"] if r["name"] == "baseline"}

    def gain(b, r, key):
        return f"{b[key] / max(1, r[key]):.2f}x" if b else "-"

    for r in result["rows"]:
        b = base.get(r["model"])
        metric = (f"{r['test_metric']:.2%}" if r["higher_is_better"]
                  else f"{r['test_metric']:.4f}")
        lines.append(f"| {r['model']} | {r['name']} | {mib(r['peak_activation_bytes'])} | "
                     f"{gain(b, r, 'peak_activation_bytes')} | {mib(r['step_peak_bytes'])} | "
                     f"{gain(b, r, 'step_peak_bytes')} | {mib(r['saved_bytes'])} | "
                     f"{1e3 * r['step_time_s']:.1f} ms | {metric} ({r['metric']}) | "
                     f"{r['seeds']} |")
    plans = [r for r in result["rows"] if r["name"] == "plan" and "budget_bytes" in r]
    if plans:
        lines += ["", ("| model | plan: budget asked (saved-activation peak) | budget planned "
                       "for | predicted | measured (planning) | measured (trained) | "
                       "planning |"),
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {mib(r['plan_target_bytes'])} | {mib(r['budget_bytes'])} | "
                  f"{mib(r['predicted_peak_bytes'])} | {mib(r['planned_peak_bytes'] or 0)} | "
                  f"{mib(r['peak_activation_bytes'])} | {r['plan_s']:.1f} s |" for r in plans]
    if result["targets"]:
        lines += ["", "| goal | measured | |", "|---|---:|---|"]
        lines += [f"| {t['name']} | {t['value']:.2f}{t.get('unit', 'x')} | "
                  f"{'PASS' if t['pass'] else 'MISS'} |" for t in result["targets"]]
    if plot:
        lines += ["", f"![peak memory against the metric]({plot})"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """The saved-activation peak against the metric, one panel per model, one point per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig = Figure(figsize=(4.5 * len(models), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for r in (r for r in result["rows"] if r["model"] == model):
            ax.scatter(r["peak_activation_bytes"] / 2**20, r["test_metric"], s=30)
            ax.annotate(r["name"], (r["peak_activation_bytes"] / 2**20, r["test_metric"]),
                        fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("saved-activation peak of a step (MiB)")
        ax.set_ylabel(next(r["metric"] for r in result["rows"] if r["model"] == model))
        ax.set_title(model)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, "train")
    p.add_argument("--quick", action="store_true",
                   help="a few steps per model, one seed: minutes on 2 cores")
    p.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated subset of: {', '.join(TASKS)}")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--plot", default=None,
                   help="where the plot goes (default docs/train.png beside the results)")


def run(args: argparse.Namespace) -> int:
    models = None if args.models is None else [m.strip() for m in args.models.split(",")]
    rows = tuple(r.strip() for r in args.rows.split(","))
    unknown = [m for m in models or () if m not in TASKS] + [r for r in rows if r not in ROWS]
    if unknown:
        print(f"actpack bench train: unknown model or row {unknown}; models: {TASKS}, rows: "
              f"{ROWS}", file=sys.stderr)
        return 2
    result = collect(quick=args.quick, seeds=args.seeds, models=models, rows=rows,
                     threads=args.threads)
    path = args.plot or (None if args.no_results else str(docs_dir() / "train.png"))
    if path:
        plot(result, path)
    md = render_markdown(result, "train.png" if path and not args.plot else path)
    print(md)
    publish(args, "train", md, result)
    return 0
