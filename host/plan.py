"""A memory planner (SuperNeurons' liveness and cost-aware recomputation, COMET's batch size):
per saved tensor keep / compress / recompute, chosen to fit a budget on a step's peak at the
least added time.

    plan = actpack.plan(model, x, budget_bytes=8 << 20, loss_fn=lambda out: F.cross_entropy(out, y))
    print(plan)                                  # per tensor and region: choice, bytes, time
    with actpack.offload(plan=plan):             # runs it
        F.cross_entropy(model(x), y).backward()

**Profile** (two steps, every saved tensor kept, no worker threads). The first: for every
distinct saved tensor its ``SavedInfo`` and the setting ``plan``'s ``policy`` gives it
(default ``Policy.auto()``, the gradient-aware setting: masks for ReLU and max pooling,
``sfpr8:3.96875`` for conv and norm outputs, ``dct:optL`` for other 4-D activations, lossless
integers), made and read back on
the session's own path from the tensor itself: its time, its frame's bytes, and the tensor
memory compressing and decompressing it allocate (``host.peak.measure_peak``); the forward
time of every *region*: a maximal run of cheap children of an ``nn.Sequential``
(``RECOMPUTABLE``: ReLU-type and other activations, BatchNorm, pooling, Flatten, Identity), or
a *block*, a composite child of an ``nn.Sequential`` or ``nn.ModuleList`` (a residual block, a
transformer layer: ``_blocks``), recomputed whole as ``torch.utils.checkpoint`` per block does.
The second, under torch.profiler's allocator events with a marker at every save, first read
by backward and release: the step's tensor memory between each two markers (its peak there),
and per saved tensor its liveness, i.e. when it was saved, when nothing but autograd held it
any more (a weak reference to it died), when backward first read it and when it was released;
which regions' modules saved it; which memory it views.

**Model of the peak** (what ``host.peak`` measures: the tensor memory of the step's device):
the profiled memory of each segment between markers, less, per tensor the plan compresses,
its bytes from when only autograd holds it to when backward reads it, plus its codec's
temporaries at its save and its read, plus its frame where that is a tensor on the device
(lossless integers; a codec frame is host memory, numpy buffers, outside the device's
allocator even on the CPU: its bytes are in the table, not in the peak); per recomputed
region, its tensors' bytes from when only autograd holds them to when backward recomputes
them, plus its start tensor where no op saved it. Saved tensors that view one memory at the
same time (q, k and v of one projection) free it only when all of them are stored otherwise;
they are compressed together. Measured against the model on the digits CNN, the BatchNorm
residual CNN, ``mobile_net`` and a character transformer: within 0.1 MiB. ``verify=True``
(the default) measures the chosen plan's peak anyway and, if it is over the budget, plans
again for a budget lowered by the excess (``tries`` plans at most).

**Choice**: from "keep everything", greedily the change (compress one tensor, or recompute one
region) that lowers the predicted peak most per second it adds, until the prediction fits; then
every change whose undoing still fits is undone (the latest first). The same with compression
alone and with recomputation alone; the fitting choice that adds the least time wins (a
recomputed region holds its start tensor whole, which can strand the mixed greedy above a
budget compression alone reaches). A codec's time is its faster of two runs (the first may
compile a kernel). A region is recomputed by
``torch.utils.checkpoint`` (non-reentrant, the random state preserved: a block's dropout draws
the same masks again): its start tensor (a block's first argument) is kept exactly (a lossy
seed would make every recomputed tensor lossy), what it saves inside is made again in backward
from the same values by the same kernels, so its gradients equal plain autograd's. A tensor
counts as a region's when every op that saved it ran inside the region (regions may nest: a
run of cheap layers inside a block). BatchNorm in training
mode updates its running statistics in forward; the recomputation runs the same ops and then
puts the statistics back as they were before it (running mean, variance and
``num_batches_tracked``), so they equal plain autograd's after the step.

Tensors are matched between the profile and later steps by (layer, module type, op, producer
node, shape without the batch dimension, dtype); tensors with the same key get "keep" if any of
them was planned "keep".
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import OffloadError
from .losses import mean_square_loss
from .offload import OffloadSession, codec_label, is_dense
from .peak import measure_peak, tracked_hooks, warm_peak
from .policy import Policy, SavedInfo
from .stats import format_bytes

__all__ = ["RECOMPUTABLE", "BudgetError", "Plan", "PlanEntry", "plan", "saved_peak"]

# Module types a region is made of: cheap to run again, deterministic, no state but BatchNorm's
# running statistics (handled). Dropout is left out (recomputing it needs the RNG state saved
# and restored: torch.utils.checkpoint does that, but it is no cheap layer's business).
RECOMPUTABLE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Identity,
)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Tensors under this size are one line of the table (``Policy.auto`` keeps them as they are).
SMALL = 65536


class BudgetError(OffloadError, ValueError):
    """No plan fits ``budget_bytes``: even with every tensor at its smallest setting and every
    region that helps recomputed, the step's peak is higher. ``smallest_feasible_bytes`` is
    that smallest peak (measured where the planner measured it); pass at least that, or a
    smaller batch."""

    def __init__(self, message: str, *, smallest_feasible_bytes: int):
        super().__init__(message)
        self.smallest_feasible_bytes = smallest_feasible_bytes


@dataclass(frozen=True)
class PlanEntry:
    """One line of a plan: a saved tensor (``kind`` "tensor") or a region (``kind``
    "region"). ``choice``: for a tensor "keep", its codec setting, "recompute" (made again in
    backward by its region) or "exact" (a recomputed region starts from it); for a region
    "recompute" or "no". ``before``/``after``: bytes held without and with the plan;
    ``added_s``: the time the choice adds to a step (measured codec or forward time)."""

    kind: str
    name: str
    op: str
    shape: tuple[int, ...]
    choice: str
    before: int
    after: int
    added_s: float


class Plan:
    """What ``plan`` chose; ``actpack.offload(plan=plan)`` runs it. ``entries`` per tensor and
    region; ``peak``, the figure the budget bounds ("step" or "saved", see ``plan``), and that
    figure: ``predicted_peak`` (the model of the module docstring), ``measured_peak`` (the
    chosen plan's step, None without ``verify``), ``baseline_peak`` (the step without
    actpack); ``budget_bytes``, ``batch_size``, ``added_s`` (the predicted time it adds to a
    step), ``regions`` (the recomputed runs: parent ``nn.Sequential``'s path, first and
    past-the-last child index; a recomputed block: its path, None, None) and, with
    ``batch_sizes``, ``batch_search``: per batch size (size, smallest peak a plan reaches,
    fits): predicted where it fits, measured where it does not, None where it was not tried (a
    smaller batch already did not fit)."""

    def __init__(self, *, model, entries, regions, choices, budget_bytes, peak,
                 predicted_peak, baseline_peak, batch_size, added_s, policy):
        self._model = weakref.ref(model)
        self.entries: tuple[PlanEntry, ...] = tuple(entries)
        self.regions: tuple[tuple[str, int | None, int | None], ...] = tuple(regions)
        self._choices = dict(choices)
        self.budget_bytes = budget_bytes
        self.peak = peak
        self.predicted_peak = predicted_peak
        self.baseline_peak = baseline_peak
        self.measured_peak: int | None = None
        self.batch_size = batch_size
        self.added_s = added_s
        self.batch_search: tuple[tuple[int, int | None, bool], ...] = ()
        self.policy = _PlanPolicy(self._choices, policy)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise OffloadError("plan: the model it was made for no longer exists")
        return model

    def table(self) -> str:
        shown = [e for e in self.entries if e.kind == "region" or e.before >= SMALL]
        small = [e for e in self.entries if e.kind == "tensor" and e.before < SMALL]
        rows = [(e.kind, e.name, e.op, "x".join(map(str, e.shape)), e.choice,
                 format_bytes(e.before), format_bytes(e.after), f"{1e3 * e.added_s:.2f}")
                for e in shown]
        if small:
            rows.append(("tensor", f"({len(small)} under {format_bytes(SMALL)})", "", "",
                         "keep", format_bytes(sum(e.before for e in small)),
                         format_bytes(sum(e.after for e in small)), "0.00"))
        head = ("kind", "name", "op", "shape", "choice", "before", "after", "added ms")
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 5 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
        measured = ("not measured" if self.measured_peak is None
                    else format_bytes(self.measured_peak))
        what = "" if self.peak == "step" else " on the saved-activation peak"
        out.append(f"budget {format_bytes(self.budget_bytes)}{what}; peak predicted "
                   f"{format_bytes(self.predicted_peak)}, measured {measured}, without actpack "
                   f"{format_bytes(self.baseline_peak)}; batch {self.batch_size}; added "
                   f"{1e3 * self.added_s:.1f} ms per step")
        for batch, peak, fits in self.batch_search:
            smallest = "-" if peak is None else format_bytes(peak)
            out.append(f"batch {batch}: smallest predicted peak {smallest}, "
                       f"{'fits' if fits else 'does not fit'}")
        return "\n".join(out) + "\n"

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (f"<Plan budget={self.budget_bytes} peak={self.peak!r} "
                f"predicted_peak={self.predicted_peak} "
                f"measured_peak={self.measured_peak} batch_size={self.batch_size}>")

    @contextlib.contextmanager
    def _installed(self):
        """The plan's regions run through ``torch.utils.checkpoint`` while inside."""
        model = self.model
        parents: dict[str, list[tuple[int, int]]] = {}
        blocks = []
        for parent, start, stop in self.regions:
            if start is None:
                blocks.append(parent)
            else:
                parents.setdefault(parent, []).append((start, stop))
        undo = []
        try:
            for path, runs in parents.items():
                parent = _replaceable(model, path)
                children = list(parent.children())
                _refuse_hooks(path, [m for start, stop in runs for m in children[start:stop]])
                parent.forward = _segmented(list(parent.children()), runs)
                undo.append(parent)
            for path in blocks:
                block = _replaceable(model, path)
                _refuse_hooks(path, list(block.modules()))
                block.forward = _checkpointed_block(block)
                undo.append(block)
            yield
        finally:
            for parent in undo:
                del parent.forward


def _replaceable(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``, whose forward a plan replaces while it runs."""
    module = model.get_submodule(path)
    if "forward" in vars(module):
        raise OffloadError(f"plan: module {path!r} has its forward replaced already (another "
                           "plan's session entered?); run the plan on the model as it was "
                           "planned")
    return module


def _refuse_hooks(path: str, modules: list[nn.Module]) -> None:
    """Recomputation would call hooks a second time in backward (plain autograd calls them
    once): a plan whose recomputed modules have hooks now is refused."""
    hooked = [m for m in modules if _hooked(m)]
    if hooked:
        raise OffloadError(
            f"plan: module {path!r} has modules the plan recomputes that have hooks now "
            f"({', '.join(type(m).__name__ for m in hooked)}); recomputation would call them "
            "again in backward: plan again")


def _checkpointed_block(block: nn.Module):
    """``block``'s forward through ``torch.utils.checkpoint`` (non-reentrant; the random state
    preserved, BatchNorm statistics as after the first forward)."""
    from torch.utils.checkpoint import checkpoint

    inner = type(block).forward
    modules = list(block.modules())

    def forward(*args, **kwargs):
        return checkpoint(inner, block, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(),
                                              _no_stat_update(modules)), **kwargs)

    return forward


def _segmented(children: list[nn.Module], runs: list[tuple[int, int]]):
    """An ``nn.Sequential`` forward over ``children`` with each run [start, stop) checkpointed."""
    from torch.utils.checkpoint import checkpoint

    starts = dict(runs)

    def forward(x):
        i = 0
        while i < len(children):
            stop = starts.get(i)
            if stop is None:
                x = children[i](x)
                i += 1
                continue
            run = children[i:stop]
            x = checkpoint(_run, run, x, use_reentrant=False,
                           context_fn=lambda run=run: (contextlib.nullcontext(),
                                                       _no_stat_update(run)))
            i = stop
        return x

    return forward


def _run(modules, x):
    for m in modules:
        x = m(x)
    return x


@contextlib.contextmanager
def _no_stat_update(modules):
    """BatchNorm's running statistics as they are on entry, again on exit: the recomputation
    of a forward that already updated them runs the same ops (the same tensors saved, as
    ``torch.utils.checkpoint`` checks) and leaves no second update."""
    buffers = [(b, b.clone()) for m in modules if isinstance(m, _BATCH_NORMS)
               for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)


def _key(info: SavedInfo) -> tuple:
    return (info.layer, info.module_type, info.op, info.grad_fn, tuple(info.shape[1:]),
            info.dtype)


class _PlanPolicy(Policy):
    """``policy``'s setting (``plan``'s, default ``Policy.auto()``) for the tensors the plan
    compresses, "keep" for the rest (and for what ``torch.utils.checkpoint`` recomputes from)."""

    def __init__(self, choices: dict[tuple, bool], policy: Policy):
        self._base = policy
        super().__init__(policy.rules, default=policy.default or "keep",
                         min_bytes=policy.min_bytes)
        self.choices = choices

    def __call__(self, info: SavedInfo):
        if info.context == "checkpoint" or not self.choices.get(_key(info), False):
            return None
        return self._base(info)

    def __repr__(self) -> str:
        return f"<plan policy: {sum(self.choices.values())} of {len(self.choices)} compressed>"


# ------------------------------------------------------------------------------ profile

@dataclass
class _Tensor:
    seq: int
    info: SavedInfo
    raw: int
    setting: str          # what auto stores it as ("keep": nothing smaller)
    stored: int           # its frame bytes under that setting
    resident: int         # of those, what the step's device allocator holds (a frame: none)
    extra: tuple[int, int]  # tensor bytes compressing and decompressing it allocate beyond
                            # the frame and the restored tensor (copies of strided tensors)
    codec_s: float        # compress + decompress time
    regions: frozenset    # regions whose recomputation removes it (all its savers inside)
    data_ptr: int
    storage: tuple[int, int]  # (address, bytes) of the memory it views
    # markers (indices into the profiled step's marker list): saved, no longer referenced by
    # anything but autograd, first read by backward, released
    packed: int = 0
    dormant: int | None = None
    unpacked: int | None = None
    freed: int | None = None


@dataclass
class _Region:
    index: int
    parent: str  # the nn.Sequential's path (a block: the block's own)
    start: int | None  # the run's first and past-the-last child (a block: None, None)
    stop: int | None
    names: tuple[str, ...]
    forward_s: float = 0.0
    start_ptr: int = -1
    start_bytes: int = 0
    # set by _Model: the markers of its first save, first read and last release, and the
    # saved tensor it starts from (None: no op saved it)
    first: int = 0
    read: int = 0
    last: int = 0
    start_tensor: _Tensor | None = None


class _Profiler:
    """Observes a "keep" session (``OffloadSession.observe``) and notes, at every save, read
    and release (a marker in the profiler's timeline): which regions' modules were saving,
    which saved tensors nothing but autograd references any more (their liveness), and when
    backward first reads each."""

    def __init__(self, region_of: dict[int, int]):
        self.session = OffloadSession(policy="keep", workers=0)
        self.session.observe(self)
        self.region_of = region_of
        self.savers: dict[int, list[frozenset]] = {}
        self.markers = 0
        self.packed: dict[int, int] = {}
        self.dormant: dict[int, int] = {}
        self.unpacked: dict[int, int] = {}
        self.released: dict[int, int] = {}
        self.storage: dict[int, tuple[int, int]] = {}

    def _mark(self) -> int:
        with torch.profiler.record_function(f"actpack.plan.{self.markers}"):
            pass
        self.markers += 1
        for rec in self.session.records():
            if rec.seq not in self.dormant and not rec.alive:
                self.dormant[rec.seq] = self.markers - 1
        return self.markers - 1

    def saved(self, rec, t, modules) -> None:
        # every region the saving op runs in (a run inside a block: both)
        regions = frozenset(self.region_of[id(m)] for m in modules if id(m) in self.region_of)
        self.savers.setdefault(rec.seq, []).append(regions)
        if rec.seq not in self.packed:
            storage = t.untyped_storage()
            self.storage[rec.seq] = (storage.data_ptr(), storage.nbytes())
            self.packed[rec.seq] = self._mark()

    def read(self, rec) -> None:
        if rec.seq not in self.unpacked:
            self.unpacked[rec.seq] = self._mark()

    def freed(self, rec) -> None:
        if rec.seq not in self.released:
            self.released[rec.seq] = self._mark()


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has hooks of its own (recomputing it would call them again)."""
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _recomputable(module: nn.Module) -> bool:
    return (isinstance(module, RECOMPUTABLE) and not _hooked(module)
            and not isinstance(module, nn.Sequential))


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks a plan may recompute whole: composite children (modules of modules, not
    containers, not ``RECOMPUTABLE``) of every ``nn.Sequential`` and ``nn.ModuleList`` in
    ``model`` (residual blocks, transformer layers), with no hooks on any of their modules."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        for name, child in module.named_children():
            if (isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict, *RECOMPUTABLE))
                    or next(child.children(), None) is None
                    or any(_hooked(m) for m in child.modules())):
                continue
            found.append((f"{path}.{name}" if path else name, child))
    return found


def _regions(model: nn.Module) -> list[_Region]:
    """The maximal runs of ``RECOMPUTABLE`` children of every ``nn.Sequential`` in ``model``:
    none with hooks of its own (recomputation would call them a second time, plain autograd
    calls them once), none starting with an in-place module (it would change the tensor the
    region is recomputed from, which autograd would then refuse); then the ``_blocks``."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or _hooked(module):
            continue
        children = list(module.named_children())
        i = 0
        while i < len(children):
            if not _recomputable(children[i][1]) or getattr(children[i][1], "inplace", False):
                i += 1
                continue
            j = i
            while j < len(children) and _recomputable(children[j][1]):
                j += 1
            names = tuple(f"{path}.{n}" if path else n for n, _ in children[i:j])
            found.append(_Region(len(found), path, i, j, names))
            i = j
    found += [_Region(len(found) + k, path, None, None, (path,))
              for k, (path, _) in enumerate(_blocks(model))]
    return found


def _call(model, inputs):
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _session_step(model, inputs, loss_fn, regions, device, *, between=None):
    """One step in a ``_Profiler``'s session (``between(session)`` after forward); the
    profiler."""
    from .device import resolve_device

    region_of = {id(model.get_submodule(n)): r.index for r in regions for n in r.names}
    profiler = _Profiler(region_of)
    session = profiler.session
    session.device = resolve_device(device)
    hooks = []
    for r in regions:
        started: list[float] = []

        def pre(_m, args, r=r, started=started):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                r.start_ptr, r.start_bytes = x.data_ptr(), x.numel() * x.element_size()
            started.append(time.perf_counter())

        def post(_m, _args, _out, r=r, started=started):
            if started:  # the fastest of the profiled steps (the profiler slows one)
                seconds = time.perf_counter() - started.pop()
                r.forward_s = min(r.forward_s, seconds) if r.forward_s else seconds

        hooks += [model.get_submodule(r.names[0]).register_forward_pre_hook(pre),
                  model.get_submodule(r.names[-1]).register_forward_hook(post)]
    try:
        with session:
            loss = loss_fn(_call(model, inputs))
        if between is not None:
            between(session)
        with session:
            loss.backward()
    finally:
        for h in hooks:
            h.remove()
    del loss
    model.zero_grad(set_to_none=True)
    return profiler


def _profile(model, inputs, loss_fn, device, policy: Policy):
    """The saved tensors, the regions and the profiled step's memory per marker segment (see
    the module docstring)."""
    regions = _regions(model)
    measured: dict[int, tuple] = {}

    def codecs(session):
        for rec in session.records():
            setting, stored, resident, seconds = "keep", rec.raw_bytes, rec.raw_bytes, 0.0
            t = rec.tensor
            codec = (policy(rec.info) if t is not None and is_dense(t)
                     and rec.info.op != "parameter" else None)
            extra = (0, 0)
            if codec is not None:
                t0 = time.perf_counter()
                try:
                    frame, nbytes = session.trial(rec, codec)
                except OffloadError:
                    frame = None
                if frame is not None:
                    session.restore(rec, frame)
                    setting, stored = codec_label(codec), nbytes
                    seconds = time.perf_counter() - t0
                    # the first call may pay one-time costs (a kernel's compilation: seconds
                    # on the CPU), which would rank the choices by them: time a second one
                    t0 = time.perf_counter()
                    session.restore(rec, session.trial(rec, codec)[0])
                    seconds = min(seconds, time.perf_counter() - t0)
                    # frames are host memory; lossless integers stay tensors on the device
                    data = getattr(frame, "data", None)
                    resident = (stored if isinstance(data, torch.Tensor)
                                and data.device == t.device else 0)
                    made = measure_peak(lambda rec=rec, codec=codec:
                                        session.trial(rec, codec), device=t.device)
                    read = measure_peak(lambda rec=rec, frame=frame:
                                        session.restore(rec, frame), device=t.device)
                    extra = (max(0, made - resident), max(0, read - rec.raw_bytes))
            measured[rec.seq] = (setting, min(stored, rec.raw_bytes),
                                 min(resident, rec.raw_bytes), extra, seconds)

    first = _session_step(model, inputs, loss_fn, regions, device, between=codecs)
    on = next((q.device for q in model.parameters()), torch.device("cpu"))
    profiler, segments = _profiled(lambda: _session_step(model, inputs, loss_fn, regions,
                                                         device), on)
    history, first_history = (p.session.records(live=False) for p in (profiler, first))
    if len(history) != len(first_history):
        raise OffloadError("plan: two steps of the model saved different tensors; the planner "
                           "needs a step that saves the same tensors each time")
    tensors = []
    for rec, rec1 in zip(history, first_history, strict=True):
        if rec.info.op == "parameter" or rec1.seq not in measured:
            continue
        setting, stored, resident, extra, seconds = measured[rec1.seq]
        # the regions every op that saved it ran in
        inside = frozenset.intersection(*profiler.savers.get(rec.seq, [frozenset()]))
        tensors.append(_Tensor(rec.seq, rec.info, rec.raw_bytes, setting, stored, resident,
                               extra, seconds,
                               inside, rec.data_ptr,
                               profiler.storage.get(rec.seq, (rec.data_ptr, rec.raw_bytes)),
                               profiler.packed.get(rec.seq, 0),
                               profiler.dormant.get(rec.seq), profiler.unpacked.get(rec.seq),
                               profiler.released.get(rec.seq)))
    return tensors, regions, segments


def _profiled(step, device: torch.device) -> tuple[_Profiler, np.ndarray]:
    """Run ``step()`` (returning a ``_Profiler``) under torch.profiler's memory events; the
    profiler and the peak of tensor memory on ``device`` in each segment between its markers."""
    from torch.profiler import ProfilerActivity, profile

    from .peak import quiet_stderr

    cuda = device.type == "cuda"
    kind = torch._C._autograd.DeviceType.CUDA if cuda else torch._C._autograd.DeviceType.CPU
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    prof = profile(activities=activities, profile_memory=True)
    with quiet_stderr():
        prof.__enter__()
    try:
        profiler = step()
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if (e.name() == "[memory]" and e.device_type() == kind)
                     or e.name().startswith("actpack.plan.")), key=lambda e: e.start_ns())
    segments = np.zeros(profiler.markers + 1, dtype=np.int64)
    live = segment = 0
    for e in events:
        if e.name() == "[memory]":
            live += e.nbytes()
            segments[segment] = max(segments[segment], live)
        else:
            segment = int(e.name().rpartition(".")[2]) + 1
            segments[segment] = max(segments[segment], live)
    return profiler, segments


# ------------------------------------------------------------------------------ the model

def _end(t: _Tensor, n: int) -> int:
    return n if t.freed is None else t.freed


class _Model:
    """The predicted peak of a choice (compressed tensor seqs, recomputed regions): the
    profiled step's memory per segment, less what each choice frees where it frees it."""

    def __init__(self, tensors: list[_Tensor], regions: list[_Region], segments: np.ndarray):
        self.tensors, self.regions, self.segments = tensors, regions, segments
        self.n = len(segments)
        self.by_ptr: dict[int, list[_Tensor]] = {}
        for t in tensors:
            self.by_ptr.setdefault(t.data_ptr, []).append(t)
        for r in regions:
            inside = [t for t in tensors if r.index in t.regions]
            r.first = min((t.packed for t in inside), default=0)
            r.read = min((t.unpacked for t in inside if t.unpacked is not None),
                         default=self.n - 1)
            r.last = max((t.freed for t in inside if t.freed is not None), default=self.n - 1)
            r.start_tensor = next((t for t in self.by_ptr.get(r.start_ptr, ())
                                   if t.packed <= r.first and t.raw == r.start_bytes), None)
        # saved tensors that view the same memory at the same time (q, k and v of one
        # projection): it is freed only when every one of them is stored otherwise
        self.groups: list[list[_Tensor]] = []
        open_: dict[int, list[_Tensor]] = {}
        for t in sorted(tensors, key=lambda t: t.packed):
            group = open_.get(t.storage[0])
            if group is not None and max(_end(u, self.n) for u in group) > t.packed:
                group.append(t)
            else:
                open_[t.storage[0]] = [t]
                self.groups.append(open_[t.storage[0]])
        self._shared = {t.seq for g in self.groups if len(g) > 1 for t in g}

    def after(self, compressed: set[int], recomputed: set[int], *,
              resident: bool = False) -> tuple[dict, set]:
        """Per tensor the bytes it holds under the choice (``resident``: on the device's
        allocator only, as the step's peak counts them), and the exactly kept start tensors."""
        exact = {self.regions[i].start_tensor.seq for i in recomputed
                 if self.regions[i].start_tensor is not None}
        after = {}
        for t in self.tensors:
            if t.seq in exact:  # what a recomputed region starts from: kept as it is
                after[t.seq] = t.raw
            elif t.regions & recomputed:
                after[t.seq] = 0
            elif t.seq in compressed:
                after[t.seq] = t.resident if resident else t.stored
            else:
                after[t.seq] = t.raw
        return after, exact

    def peak(self, compressed: set[int], recomputed: set[int]) -> int:
        after, exact = self.after(compressed, recomputed, resident=True)
        delta = np.zeros(self.n + 1, dtype=np.int64)  # freed bytes, as differences

        def free(nbytes, lo, hi):  # segments lo..hi-1
            if nbytes and lo < hi:
                delta[lo] += nbytes
                delta[hi] -= nbytes

        end = self.n
        for group in self.groups:
            if not self.shared(group[0]):
                continue
            for t in group:  # frames and codec temporaries; the memory only as a whole
                if t.seq in compressed and t.seq not in exact and not t.regions & recomputed:
                    read = end if t.unpacked is None else t.unpacked + 1
                    free(-t.extra[0], t.packed, t.packed + 1)
                    free(-t.extra[1], read, read + 1)
                    free(-after[t.seq], t.packed + 1, _end(t, end) + 1)
            # (views that do not cover the memory together may leave the rest of it held by
            # something else: nothing counted as freed then)
            if sum(t.raw for t in group) >= group[0].storage[1] and all(
                    t.seq not in exact and (t.seq in compressed or t.regions & recomputed)
                    for t in group):
                free(group[0].storage[1],
                     max(end if t.dormant is None else t.dormant + 1 for t in group),
                     min(end if t.unpacked is None else t.unpacked + 1 for t in group))
        for t in self.tensors:
            if t.seq in exact or (t.raw == after[t.seq] and not t.regions & recomputed):
                continue
            if self.shared(t):
                continue
            saved = t.packed + 1
            dormant = end if t.dormant is None else t.dormant + 1
            read = end if t.unpacked is None else t.unpacked + 1
            freed = end if t.freed is None else t.freed + 1
            if t.regions & recomputed:
                r = self.regions[min(t.regions & recomputed)]
                free(t.raw, dormant, min(read, r.read + 1))
                continue
            # the frame beside the tensor while forward still holds it and after backward
            # decoded it; the frame instead of the tensor in between
            if t.seq in compressed:  # the codec's own temporaries, at the save and the read
                free(-t.extra[0], t.packed, t.packed + 1)
                free(-t.extra[1], read, read + 1)
            free(-after[t.seq], saved, max(saved, min(dormant, read)))
            free(t.raw - after[t.seq], dormant, read)
            free(-after[t.seq], max(read, saved), freed)
        for i in recomputed:
            r = self.regions[i]
            if r.start_tensor is None:
                free(-r.start_bytes, r.first + 1, r.last + 1)
        return int((self.segments - np.cumsum(delta)[:self.n]).max())

    def saved_peak(self, compressed: set[int], recomputed: set[int]) -> int:
        """The predicted peak of saved-activation memory (``host.peak.SavedMemory``'s
        account): per segment, what is held for backward from a tensor's save until backward
        first reads it (from then on it is backward's working memory) or autograd releases
        it: a kept tensor's memory once however many saves view it, a compressed tensor's
        frame, nothing for a tensor its recomputed region makes again, and the start tensor of
        a recomputed region no op saved (``torch.utils.checkpoint`` keeps it) until backward
        recomputes the region."""
        after, _ = self.after(compressed, recomputed)
        held = np.zeros(self.n + 1, dtype=np.int64)  # as differences

        def hold(nbytes, lo, hi):  # segments lo..hi-1
            if nbytes and lo < hi:
                held[lo] += nbytes
                held[hi] -= nbytes

        kept: dict[int, list[int]] = {}  # memory address -> [bytes, first, past-the-last]
        for t in self.tensors:
            lo = t.packed + 1
            hi = max(lo, (t.unpacked if t.unpacked is not None else _end(t, self.n - 1)) + 1)
            if after[t.seq] == t.raw and t.seq not in compressed:
                span = kept.setdefault(t.storage[0], [t.storage[1], lo, hi])
                span[1], span[2] = min(span[1], lo), max(span[2], hi)
            else:
                hold(after[t.seq], lo, hi)
        for nbytes, lo, hi in kept.values():
            hold(nbytes, lo, hi)
        for i in recomputed:
            r = self.regions[i]
            if r.start_tensor is None:
                hold(r.start_bytes, r.first + 1, r.read + 1)
        return int(np.cumsum(held)[:self.n].max(initial=0))

    def cost(self, peak: str):
        """The predicted peak ``plan``'s ``peak`` names, as a function of a choice."""
        return self.peak if peak == "step" else self.saved_peak

    def shared(self, t: _Tensor) -> bool:
        return t.raw < t.storage[1] or t.seq in self._shared

    def seconds(self, compressed: set[int], recomputed: set[int]) -> float:
        after, exact = self.after(compressed, recomputed)
        total = sum(self.regions[i].forward_s for i in recomputed)
        return total + sum(t.codec_s for t in self.tensors
                           if t.seq in compressed and after[t.seq] and t.seq not in exact)


def _choose(model: _Model, target: int, allow, peak_of) -> tuple[set, set] | None:
    """The choice of the module docstring on ``peak_of(compressed, recomputed)`` (a
    ``_Model.cost``): the one adding the least time of the greedy choices with every kind of
    change ``allow`` gives and with each kind alone (a region recomputed keeps its start tensor
    whole, which can leave the greedy above a target that compressing alone reaches); None
    when none fits ``target``."""
    kinds = [tuple(allow)] + ([(k,) for k in allow] if len(allow) > 1 else [])
    found = [c for k in kinds if (c := _greedy(model, target, k, peak_of)) is not None]
    return min(found, key=lambda c: model.seconds(*c), default=None)


def _greedy(model: _Model, target: int, allow, peak_of) -> tuple[set, set] | None:
    """From "keep everything", the change lowering ``peak_of`` most per second it adds, until
    it fits ``target``; then every change whose undoing still fits undone, the latest first.
    None when it gets stuck above ``target``."""
    compressed: set[int] = set()
    recomputed: set[int] = set()
    options = []
    if "compress" in allow:  # a group of views of one memory at once
        options += [("c", frozenset(t.seq for t in g if t.stored < t.raw))
                    for g in model.groups if any(t.stored < t.raw for t in g)]
    if "recompute" in allow:
        options += [("r", r.index) for r in model.regions]
    order = []

    def with_(opt, c, r):
        kind, i = opt
        return (c | i, r) if kind == "c" else (c, r | {i})

    peak = peak_of(compressed, recomputed)
    while peak > target:
        base_s = model.seconds(compressed, recomputed)
        best, best_score = None, 0.0
        for opt in options:
            if opt in order:
                continue
            c, r = with_(opt, compressed, recomputed)
            gain = peak - peak_of(c, r)
            if gain <= 0:
                continue
            score = gain / max(model.seconds(c, r) - base_s, 1e-6)
            if score > best_score:
                best, best_score = opt, score
        if best is None:
            return None
        order.append(best)
        compressed, recomputed = with_(best, compressed, recomputed)
        peak = peak_of(compressed, recomputed)
    for opt in reversed(order):  # undo what is not needed
        kind, i = opt
        c = compressed - i if kind == "c" else compressed
        r = recomputed - {i} if kind == "r" else recomputed
        if peak_of(c, r) <= target:
            compressed, recomputed = c, r
    return compressed, recomputed


def _smallest(model: _Model, allow, peak_of) -> tuple[set, set]:
    """Every tensor compressed that is smaller so, then each region that lowers the peak."""
    compressed = ({t.seq for t in model.tensors if t.stored < t.raw}
                  if "compress" in allow else set())
    recomputed: set[int] = set()
    if "recompute" in allow:
        for r in model.regions:
            if peak_of(compressed, recomputed | {r.index}) < peak_of(compressed, recomputed):
                recomputed.add(r.index)
    return compressed, recomputed


# ------------------------------------------------------------------------------ plan

def _resize(inputs, batch: int):
    """``inputs`` with ``batch`` rows along dimension 0 (repeated or cut)."""
    if isinstance(inputs, torch.Tensor):
        n = inputs.shape[0]
        return inputs.repeat(-(-batch // n), *([1] * (inputs.dim() - 1)))[:batch]
    if isinstance(inputs, tuple):
        return tuple(_resize(x, batch) for x in inputs)
    raise TypeError(f"example_inputs: expected a tensor or a tuple of tensors, got "
                    f"{type(inputs).__name__}")


def _batch_of(inputs) -> int:
    first = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
    return int(first.shape[0])


@contextlib.contextmanager
def _restored(model: nn.Module):
    """The model's parameters, buffers (BatchNorm statistics) and gradients as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        model.load_state_dict(state)
        for n, p in model.named_parameters():
            p.grad = grads[n]


def _plan_one(model, inputs, budget, loss_fn, device, allow, verify, tries, peak, policy):
    """The plan for one batch size, and the smallest predicted peak of any plan."""
    tensors, regions, segments = _profile(model, inputs, loss_fn, device, policy)
    baseline = _step_peak(model, inputs, loss_fn, peak)
    pm = _Model(tensors, regions, segments)
    peak_of = pm.cost(peak)
    smallest = _smallest(pm, allow, peak_of)
    smallest_peak = peak_of(*smallest)
    target = budget
    what = "step" if peak == "step" else "saved-activation peak of a step"
    for attempt in range(tries):
        chosen = _choose(pm, target, allow, peak_of)
        if chosen is None:
            smallest_bytes = smallest_peak
            if verify:  # the prediction may be off: what the smallest plan really peaks at
                p = _build(model, pm, smallest, budget, baseline, inputs, peak, policy)
                p.measured_peak = smallest_bytes = _measure(p, model, inputs, loss_fn, device)
                if smallest_bytes <= budget:
                    return p, smallest_peak
            raise BudgetError(
                f"budget_bytes={budget} ({format_bytes(budget)}) is below what any plan "
                f"reaches: the smallest {what} at batch {_batch_of(inputs)} is "
                f"{smallest_bytes} bytes ({format_bytes(smallest_bytes)}, "
                f"{'measured' if verify else 'predicted'}) with every tensor at its smallest "
                f"setting; pass budget_bytes >= {smallest_bytes} or a smaller batch",
                smallest_feasible_bytes=smallest_bytes)
        p = _build(model, pm, chosen, budget, baseline, inputs, peak, policy)
        if not verify:
            return p, smallest_peak
        p.measured_peak = _measure(p, model, inputs, loss_fn, device)
        if p.measured_peak <= budget:
            return p, smallest_peak
        if attempt == tries - 1:
            raise BudgetError(
                f"budget_bytes={budget} ({format_bytes(budget)}): the best plan found "
                f"measured {p.measured_peak} bytes ({format_bytes(p.measured_peak)}, "
                f"predicted {format_bytes(p.predicted_peak)}) after {tries} tries; pass "
                f"budget_bytes >= {p.measured_peak} or a smaller batch",
                smallest_feasible_bytes=p.measured_peak)
        target -= p.measured_peak - budget
    raise AssertionError("unreachable")  # pragma: no cover


def _step_peak(model, inputs, loss_fn, peak: str, context=None) -> int:
    """The ``peak`` (see ``plan``) of one step of ``model(inputs)`` inside ``context()`` (a
    new context manager each call, e.g. an offload session; default plain autograd), after one
    unmeasured warm-up step as ``warm_peak`` measures: "step", the step's tensor memory;
    "saved", its saved-activation memory (``host.peak.SavedMemory``: the session's
    ``saved_memory``, or ``tracked_hooks``' account of plain autograd)."""
    context = context or (tracked_hooks if peak == "saved" else contextlib.nullcontext)
    if peak == "step":
        def step():
            with context():
                loss_fn(_call(model, inputs)).backward()

        return warm_peak(step, model)
    peaks = []
    for _ in range(2):  # the first warms up
        model.zero_grad(set_to_none=True)
        ctx = context()
        memory = ctx.saved_memory if hasattr(ctx, "saved_memory") else ctx.memory
        with ctx:
            loss_fn(_call(model, inputs)).backward()
        peaks.append(memory.peak)
    model.zero_grad(set_to_none=True)
    return peaks[-1]


def saved_peak(model: nn.Module, inputs, *, loss_fn: Callable | None = None) -> int:
    """The saved-activation peak of a plain training step of ``model(inputs)`` (after a
    warm-up step; ``loss_fn(output)``, default the mean square): the baseline of
    ``plan(..., peak="saved")``."""
    return _step_peak(model, inputs, loss_fn or mean_square_loss, "saved")


def _measure(p: Plan, model, inputs, loss_fn, device) -> int:
    from .offload import offload

    return _step_peak(model, inputs, loss_fn, p.peak,
                      lambda: offload(plan=p, device=device, workers=0))


def _build(model, pm: _Model, chosen, budget, baseline, inputs, peak: str,
           policy: Policy) -> Plan:
    compressed, recomputed = chosen
    after, exact = pm.after(compressed, recomputed)
    entries, choices = [], {}
    for t in pm.tensors:
        gone = bool(t.regions & recomputed) and t.seq not in exact
        comp = t.seq in compressed and not gone and t.seq not in exact
        choice = ("recompute" if gone else "exact" if t.seq in exact
                  else t.setting if comp else "keep")
        key = _key(t.info)
        if not gone:
            choices[key] = choices.get(key, True) and comp
        entries.append(PlanEntry("tensor", t.info.layer or f"<{t.info.module_type}>",
                                 t.info.op, tuple(t.info.shape), choice, t.raw, after[t.seq],
                                 t.codec_s if comp else 0.0))
    for r in pm.regions:
        inside = [t for t in pm.tensors if r.index in t.regions]
        on = r.index in recomputed
        entries.append(PlanEntry("region", ",".join(r.names), "recompute", (),
                                 "recompute" if on else "no", sum(t.raw for t in inside),
                                 sum(after[t.seq] for t in inside),
                                 r.forward_s if on else 0.0))
    return Plan(model=model, entries=entries,
                regions=[(r.parent, r.start, r.stop) for r in pm.regions
                         if r.index in recomputed],
                choices=choices, budget_bytes=budget, peak=peak,
                predicted_peak=pm.cost(peak)(compressed, recomputed),
                baseline_peak=baseline, batch_size=_batch_of(inputs),
                added_s=pm.seconds(compressed, recomputed), policy=policy)


def plan(model: nn.Module, example_inputs, *, budget_bytes: int,
         batch_sizes: Sequence[int] | None = None,
         loss_fn: Callable[[object], torch.Tensor] | None = None, device="ref",
         allow: Sequence[str] = ("compress", "recompute"), verify: bool = True,
         tries: int = 3, peak: str = "step", policy: Policy | None = None) -> Plan:
    """Choose per saved tensor keep / compress / recompute so that a training step of
    ``model(example_inputs)`` peaks at no more than ``budget_bytes`` at the least added time
    (module docstring).

    ``peak``: what the budget bounds. "step" (default): the step's tensor memory, the
    process-level peak of ``host.peak.measure_peak`` (forward's working set, gradients and
    the codec's temporaries included: what decides whether a step fits a device). "saved": the
    saved-activation peak (``host.peak.SavedMemory``: what is held for backward, the figure
    activation compression works on and ``bench train`` compares), predicted by
    ``_Model.saved_peak``.

    ``loss_fn(output)``: the step's loss (default: the mean square of the output).
    ``policy``: the setting a compressed tensor gets (default ``Policy.auto()``; e.g. an
    ``AdaptivePolicy`` after ``calibrate``, whose measured settings compress further where
    the gradients allow). The plan keeps using it: its later calibrations change what the
    plan's compressed tensors get, not what the plan compresses.
    ``allow``: which changes the planner may make ("compress", "recompute"). ``verify``:
    measure the chosen plan's peak (``Plan.measured_peak``) and plan again if it is over the
    budget (``tries`` plans at most). ``batch_sizes``: plan for each batch size (the inputs
    repeated or cut along dimension 0; ``loss_fn`` must take any batch) and return the plan of
    the largest that fits (COMET's idea: spend what is freed on a larger batch);
    ``Plan.batch_search`` lists each size's smallest predicted peak.

    The model is left as it was (parameters, buffers, gradients, random state). Raises
    ``BudgetError`` (with ``smallest_feasible_bytes``) when no plan fits.
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes: expected an integer > 0, got {budget_bytes!r}")
    bad = set(allow) - {"compress", "recompute"}
    if bad or not allow:
        raise ValueError(f"allow: expected some of 'compress', 'recompute', got {list(allow)!r}")
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"tries: expected an integer >= 1, got {tries!r}")
    if peak not in ("step", "saved"):
        raise ValueError(f"peak: expected 'step' or 'saved', got {peak!r}")
    loss_fn = loss_fn or mean_square_loss
    policy = policy if policy is not None else Policy.auto()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy: expected an actpack.Policy, got {type(policy).__name__}")
    with _restored(model):
        if not batch_sizes:
            p, _ = _plan_one(model, example_inputs, budget_bytes, loss_fn, device, allow,
                             verify, tries, peak, policy)
            return p
        sizes = sorted(set(batch_sizes))
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes: expected integers >= 1, got {list(batch_sizes)!r}")
        search, best, error = [], None, None
        for b in sizes:
            try:
                p, smallest = _plan_one(model, _resize(example_inputs, b), budget_bytes,
                                        loss_fn, device, allow, verify, tries, peak, policy)
            except BudgetError as exc:
                search.append((b, exc.smallest_feasible_bytes, False))
                error = error or exc
                break  # a larger batch peaks higher still
            search.append((b, smallest, True))
            best = p
        search += [(b, None, False) for b in sizes[len(search):]]
        if best is None:
            raise BudgetError(f"no batch size of {sizes} fits budget_bytes={budget_bytes}: "
                              f"{error}", smallest_feasible_bytes=error.smallest_feasible_bytes)
        best.batch_search = tuple(search)
        return best

