"""Compress what autograd saves for backward, from a training script, without model changes.

    import actpack

    with actpack.offload(device="ref", policy="auto") as session:
        loss = loss_fn(model(x), y)
        loss.backward()
    session.report()                 # per-layer table: raw vs stored bytes, modes, peak
    session.plot("saved.png")        # saved-tensor memory over the step

How it works (``torch.autograd.graph.saved_tensors_hooks``, as ``save_on_cpu`` does):

- **pack** (forward, every tensor an op saves): the tensor is described (``SavedInfo``: the module
  running, the op that produced it, shape, dtype), the policy picks a setting, and a worker
  thread compresses it on the device while the forward pass goes on. Pack returns a small handle;
  the tensor itself is released once its frame is ready.
- **dedup**: a tensor saved by several ops (a ReLU output that is also the next layer's input) is
  stored once; the key is (device, data pointer, dtype, shape, strides, version) and holds only
  while the first saved tensor object is alive, so a reused address never aliases. A contiguous
  reshape of a stored contiguous tensor (attention's probabilities, saved by softmax and, as
  (batch x heads, T, T), by the matmul with the values) shares its frame when the policy gives
  it the same setting: restored as that frame's tensor viewed in its own shape.
- **masks**: a ReLU output is stored as a 1-bit mask for ReLU's own backward, which reads only
  ``result > 0`` (exact for finite values). When another op saves the same tensor, that op needs
  its values, so they are stored too, with the setting the policy gives a non-mask tensor; the
  mask keeps serving ReLU, so its gradient stays exact whatever the value setting (one extra bit
  per value; if the values are kept as they are, the mask is dropped). A save counts as ReLU's
  own when the tensor's ``grad_fn`` is a ``ReluBackward0`` node created by the op saving right
  now (its sequence number is the last one autograd handed out). Max pooling's backward reads
  nothing of its input but the shape (it scatters the gradient through the saved indices), so
  its input is served by the mask too: a ReLU -> max-pool pair stores one bit per value. A float
  save while an ``nn.MaxPool*d`` or ``nn.AdaptiveMaxPool*d`` runs is a claim until the module
  returns: it counts as max pooling's only if the node that saved it (autograd's sequence
  number at the save) is a max-pool node the module's output leads to; a save by another op (a
  hook's ``x * gate``) gets its values stored and read instead. Nothing else is ever stored as a
  mask, and a mask never serves an op that reads values.
- **integers**: pool indices and dropout masks are stored exactly by ``host.lossless``
  (narrowed to the smallest integer type that holds them, bools packed 8 to a byte).
- **who saves**: the Python frames above the op tell ``torch.utils.checkpoint`` saving the input
  it recomputes from (``SavedInfo.context == "checkpoint"``: kept exact by "auto") and
  ``torch.compile`` regions ("compiled": no op or module information; ``CompileWarning``).
- **unpack** (backward): waits for the frame, decompresses it (or takes the prefetched tensor),
  checks shape, dtype and device against the handle and raises ``UnpackMismatchError`` if they
  differ, restores the original strides, then starts decompressing the next ``prefetch`` stored
  tensors in reverse save order, the order backward will want them.
- A corrupted frame raises ``actpack.FrameError`` naming the layer; a saved tensor modified in
  place (directly or through a view, before or after it was stored) raises
  ``SavedTensorModifiedError`` when backward reads it, as plain autograd raises: autograd's own
  check is off while hooks are active, so each record keeps a storage-less alias of the
  tensor's version counter, and tensors passed through untouched keep their version too.
- CUDA tensors are compressed and restored on the stream they were made on; frames live in
  host memory.
- Tensors saved during backward (``torch.utils.checkpoint`` recomputation, double backward) are
  passed through untouched; so are tensor subclasses and non-strided layouts.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import replace

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils._pytree import tree_leaves

from actpack.codec import Codec, Frame
from actpack.errors import FrameError

from .device import Device, RefDevice, resolve_device
from .errors import (
    CompileWarning,
    OffloadError,
    SavedTensorModifiedError,
    UnpackMismatchError,
)
from .lossless import LOSSLESS, Lossless, Packed, Window
from .peak import SavedMemory, is_parameter
from .policy import SavedInfo, producer, producer_kind, resolve_policy
from .stats import Stats, TensorStats, plot_timeline, timeline_of

__all__ = ["OffloadSession", "SavedRecord", "offload"]

_next_sequence_nr = torch._C._autograd._get_sequence_nr
_graph_task_id = torch._C._current_graph_task_id


def offload(*, device="ref", policy="auto", workers: int | str = "auto", prefetch: int = 2,
            max_pending_bytes: int | str | None = "auto", plan=None) -> OffloadSession:
    """A session that compresses the tensors autograd saves while it is entered.

    ``device``: "ref" (the software codec), a card ("xdma" or "xdma:<node prefix>", see
    docs/card.md; "model" is the card's behavioural model in-process), or a ``Device`` object
    (``actpack.open_device(spec, fallback=True)`` gives one that falls back to "ref" when the card
    fails, without losing a tensor). ``policy``: "auto" (JPEG-ACT's assignment, see
    ``actpack.host.policy``), "keep", a setting for every large float tensor ("sfpr8", "dct:optH",
    "eb:0.01"), a ``Policy`` or a function of ``SavedInfo``. ``workers``: compression threads; 0
    compresses in the saving op's thread and decompresses when backward asks (no overlap, no
    threads: where training already keeps every CPU core busy, threads only compete with it, and
    more is alive at once: see docs/offload.md and ``actpack bench offload`` for measured step
    times and peaks); "auto" (the default) is 0 for CPU tensors on the software codec (device
    "ref") and 2 threads for the rest (CUDA tensors, cards), started on first use.
    ``prefetch``: how many
    stored tensors backward decompresses ahead (with ``workers`` > 0). ``max_pending_bytes``
    bounds the raw bytes still waiting for compression (what ``stats.peak_resident_bytes``
    counts beyond the stored bytes), at the cost of forward waiting for the workers: "auto"
    (the default) hands a save to a worker only while the pending bytes with it stay within
    half of what the session holds stored; otherwise it waits for the workers to drain and, if
    it is still too large, compresses it in the saving thread (forward waits rather than memory
    grows), and backward decompresses ahead (``prefetch``) under the same bound, so what is
    held for backward (``session.saved_memory``, measured from the storages) stays within
    1.5x the stored peak; an integer waits while more raw bytes than it are pending; None
    never waits (the fastest forward, the highest peak).

    ``plan``: an ``actpack.plan`` result, which decides instead of ``policy`` (leave ``policy``
    at "auto"): the tensors it compresses get "auto"'s setting, the others are kept, and its
    regions are recomputed (``torch.utils.checkpoint``) while the session is entered.

    Enter it around forward and backward (``with offload() as session:``); it can be entered
    again for later steps, and its figures add up. Tensors saved inside it are restored by
    backward even if backward runs after the ``with`` block.
    """
    return OffloadSession(device=device, policy=policy, workers=workers, prefetch=prefetch,
                          max_pending_bytes=max_pending_bytes, plan=plan)


# ------------------------------------------------------------------------------ module context

def _unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside DDP, DataParallel and torch.compile wrappers."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # no compiled modules without it
    optimized = eval_frame.OptimizedModule if eval_frame is not None else ()
    for _ in range(8):
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(module, optimized):
            module = module._orig_mod
        else:
            break
    return module


class _ModuleTracker:
    """Which module's forward is running, per thread, through global forward hooks.

    Global hooks see every module without the model being passed in. Inside a torch.compile
    trace they do nothing (``is_compiling``), so they add no side effects to compiled graphs.
    """

    def __init__(self, on_return=None):
        self._local = threading.local()
        self._handles: list = []
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # on_return(claims, output): called with what ``claim`` registered during a module's
        # forward once it returns (output None when it raised)
        self._on_return = on_return

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def install(self) -> None:
        self._handles = [register_module_forward_pre_hook(self._pre),
                         register_module_forward_hook(self._post, always_call=True)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._local = threading.local()

    def _pre(self, module, args):
        if not torch.compiler.is_compiling():
            self._stack().append(module)

    def _post(self, module, args, output):
        if torch.compiler.is_compiling():
            return
        stack = self._stack()
        # A forward that raised skipped inner post hooks: unwind to this module.
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is module:
                unwound = stack[i:]
                del stack[i:]
                claims = getattr(self._local, "claims", None)
                if claims:
                    self._settle(claims, module, unwound, output)
                break

    def _settle(self, claims: list, module, unwound: list, output) -> None:
        """Hand the claims of the returned modules to ``on_return``: the module's own with its
        output, those of inner modules whose forward raised with None."""
        ended = [(m, c) for m, c in claims if any(m is u for u in unwound)]
        if not ended:
            return
        claims[:] = [(m, c) for m, c in claims if not any(m is u for u in unwound)]
        own = [c for m, c in ended if m is module]
        raised = [c for m, c in ended if m is not module]
        if own:
            self._on_return(own, output)
        if raised:
            self._on_return(raised, None)

    def claim(self, claim) -> None:
        """Hold ``claim`` until the innermost running module returns (see ``on_return``)."""
        claims = getattr(self._local, "claims", None)
        if claims is None:
            claims = self._local.claims = []
        claims.append((self._stack()[-1], claim))

    def running_window(self) -> Window | None:
        """The innermost running module's pooling geometry (``Window.of``)."""
        stack = self._stack()
        return Window.of(stack[-1]) if stack else None

    def current(self) -> tuple[str, str]:
        """(dotted path of the innermost running module, its class name); ("", "") outside."""
        stack = self._stack()
        if not stack:
            return "", ""
        root, inner = _unwrap(stack[0]), stack[-1]
        names = self._names.get(root)
        if names is None or id(inner) not in names:
            names = {}
            for name, mod in root.named_modules(remove_duplicate=False):
                names.setdefault(id(mod), name)
            for mod in stack[0:1]:  # wrappers of the root name as the root
                names.setdefault(id(mod), "")
            self._names[root] = names
        target = _unwrap(inner) if inner is stack[0] else inner
        return names.get(id(inner), ""), type(target).__name__


# ------------------------------------------------------------------------------ stored tensors

# Modules whose op saves its float input only for its shape: max_pool*d_with_indices and
# adaptive_max_pool*d scatter the gradient through the indices they also save (derivatives.yaml).
# A float save inside such a module is only a claim until the module returns: it holds if the
# node that saved it (by sequence number) is one of the pooling nodes below, not another op the
# module or a hook ran (a pre-hook's ``x * gate`` reads its values).
_SHAPE_ONLY_SAVERS = frozenset({"MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveMaxPool1d",
                                "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"})
_SHAPE_ONLY_NODES = ("MaxPool2DWithIndicesBackward", "MaxPool3DWithIndicesBackward",
                     "AdaptiveMaxPool2DBackward", "AdaptiveMaxPool3DBackward")


def _version_alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``t``'s version counter but none of its memory: what is saved can be
    released and an in-place change to it (or to any view of it) still seen, as plain autograd
    sees it (``Tensor.data =`` swaps the storage and keeps the counter)."""
    alias = t.detach()
    alias.data = torch.empty(0, dtype=t.dtype, device=t.device)
    return alias


def _check_version(label: str, alias: torch.Tensor, version: int) -> None:
    if alias._version != version:
        raise SavedTensorModifiedError(
            f"{label}: modified in place after it was saved for backward (version {version} -> "
            f"{alias._version}); plain autograd raises here too")


def _nodes_since(output, first_seq: int) -> dict[int, object]:
    """The autograd nodes made since sequence number ``first_seq`` (in this thread) that lead
    to ``output``, by sequence number: the ops a module ran, walked back from what it returned."""
    todo = [t.grad_fn for t in tree_leaves(output)
            if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    found: dict[int, object] = {}
    while todo and len(found) < 4096:
        node = todo.pop()
        seq = node._sequence_nr()
        if seq < first_seq or seq in found:
            continue
        found[seq] = node
        todo.extend(n for n, _ in node.next_functions if n is not None)
    return found


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its memory exactly once (any dim order): then a dense copy with the
    same strides restores it."""
    if t.is_contiguous():
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _channel_rows(shape) -> tuple[int, int, int] | None:
    """How a 4-D (N, C, H, W) tensor whose planes are smaller than one 8 x 8 block is stored:
    as (N, H * W, C), so the codec's planes are (position, channel) rows and not 8 x 8 blocks
    mostly made of padding (a 4 x 4 plane is a quarter of its block: ResNet-18's last stage at
    128 x 128 input). None for every other tensor, stored in its own shape."""
    if len(shape) == 4 and shape[2] * shape[3] < 64 and shape[1] >= 8:
        return shape[0], shape[2] * shape[3], shape[1]
    return None


def _same_setting(a, b) -> bool:
    """Whether codecs ``a`` and ``b`` write the same frames for the same tensor."""
    if a is b:
        return True
    if not (isinstance(a, Codec) and isinstance(b, Codec)) or repr(a) != repr(b):
        return False
    return a.table is None or bool((torch.as_tensor(a.table) == torch.as_tensor(b.table)).all())


def codec_label(codec: Codec | Lossless | None) -> str:
    if codec is None:
        return "keep"
    if isinstance(codec, Lossless):
        return "lossless"
    if codec.mode == "dct":
        return f"dct:{codec.table_name}"
    if codec.error_bound is not None:
        return f"{codec.mode}:{codec.error_bound:g}"
    if codec.mode == "sfpr8" and codec.range_max != 4.5:
        return f"sfpr8:{codec.range_max:g}"
    return codec.mode


class _Store:
    """One stored form of a saved tensor: the tensor kept as it is (``codec`` None), or a frame
    being made (``future``) or made (``frame``)."""

    __slots__ = ("codec", "decoded", "dropped", "error", "frame", "future", "nbytes", "stored_at",
                 "tensor", "unread")

    def __init__(self, codec: Codec | None, tensor: torch.Tensor):
        self.codec, self.tensor = codec, tensor
        self.frame: Frame | None = None
        self.future: Future | None = None
        self.decoded: Future | None = None  # prefetched decompression
        self.error: BaseException | None = None
        self.stored_at: float | None = None
        self.nbytes = 0  # bytes held once stored: the frame's, or the tensor's when kept
        self.unread = 0
        self.dropped = False


class SavedRecord:
    """One distinct saved tensor. ``mask`` is its 1-bit form for ReLU's own backward, ``values``
    the form every other saver reads; either may be None (a ReLU output no other op saved has
    no values; a tensor that is not a ReLU output has no mask).

    What an observer (``OffloadSession.observe``) may read: ``seq`` (its number in the
    session, in save order), ``info`` (``SavedInfo``), ``shape``, ``dtype``, ``raw_bytes``,
    ``data_ptr`` (where the saved tensor was), ``tensor`` (the tensor itself while the session
    keeps it as it is, else None), ``alive`` (whether anything besides autograd's saved state
    still references the saved tensor object), ``mode``, ``stored_bytes``; the rest is the
    session's."""

    __slots__ = ("alias", "device", "dtype", "freed_at", "info", "key", "mask", "packed_at",
                 "raw_bytes", "refs", "region", "saved_by", "seq", "shape", "stream", "stride",
                 "threaded", "values", "version", "weak", "window")

    def __init__(self, seq, key, info, t, packed_at, saver):
        self.seq, self.key, self.info = seq, key, info
        # Worker threads run on the stream the tensor was made on, not their default one.
        self.stream = torch.cuda.current_stream(t.device) if t.is_cuda else None
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device
        self.stride = t.stride() if not t.is_contiguous() else None
        self.raw_bytes = t.numel() * t.element_size()
        self.version = t._version
        self.alias = _version_alias(t)
        self.weak = weakref.ref(t)
        self.saved_by = [saver]
        self.packed_at = packed_at
        self.mask: _Store | None = None
        self.values: _Store | None = None
        self.refs = 0
        self.freed_at: float | None = None
        self.threaded = False  # compressed and prefetched by the worker threads
        self.window: Window | None = None  # max pooling's geometry, for its indices
        self.region: tuple | None = None  # its key in the session's ``_by_region``

    def stores(self) -> list[_Store]:
        return [s for s in (self.mask, self.values) if s is not None and not s.dropped]

    @property
    def data_ptr(self) -> int:
        return self.key[1]

    @property
    def tensor(self) -> torch.Tensor | None:
        values = self.values
        return values.tensor if values is not None and values.codec is None else None

    @property
    def alive(self) -> bool:
        return self.weak() is not None

    @property
    def label(self) -> str:
        layer = self.info.layer or f"<{self.info.module_type or 'top level'}>"
        return f"layer {layer!r} ({self.info.op} {tuple(self.shape)} {self.dtype})"

    @property
    def mode(self) -> str:
        return "+".join(codec_label(s.codec) for s in self.stores())

    @property
    def stored_bytes(self) -> int:
        return sum(s.nbytes for s in self.stores())

    @property
    def stored_at(self) -> float | None:
        times = [s.stored_at for s in self.stores()]
        return None if None in times else max(times, default=self.packed_at)


class _Passed:
    """A saved tensor passed through untouched, with the version check autograd skips while
    hooks are set."""

    __slots__ = ("__weakref__", "tensor", "version")

    def __init__(self, t: torch.Tensor):
        self.tensor, self.version = t.detach(), t._version

    def unpack(self) -> torch.Tensor:
        _check_version(f"a {tuple(self.tensor.shape)} {self.tensor.dtype} tensor saved outside "
                       "actpack's storage", self.tensor, self.version)
        return self.tensor


class _Handle:
    """What autograd holds for a saved tensor: its record and which stored form it reads."""

    __slots__ = ("__weakref__", "read", "record", "session", "shape", "store")

    def __init__(self, session, record, store, shape=None):
        self.session, self.record, self.store, self.read = session, record, store, False
        self.shape = shape  # a reshape of the record's tensor (shared frame), else None
        store.unread += 1
        record.refs += 1

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.session._release_fn(self)

    def __repr__(self) -> str:
        return f"<actpack saved tensor {self.record.label}, {self.record.mode}>"


# ------------------------------------------------------------------------------ the session

class OffloadSession:
    """Compresses saved tensors while entered; see ``offload``. ``stats``, ``report()`` and
    ``plot()`` describe what it stored."""

    def __init__(self, *, device="ref", policy="auto", workers: int | str = "auto",
                 prefetch: int = 2,
                 max_pending_bytes: int | str | None = "auto", plan=None):
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)
                                  or workers < 0):
            raise ValueError(f"workers: expected \"auto\" or an integer >= 0, got {workers!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch: expected an integer >= 0, got {prefetch!r}")
        if max_pending_bytes not in (None, "auto") and (
                isinstance(max_pending_bytes, bool) or not isinstance(max_pending_bytes, int)
                or max_pending_bytes < 0):
            raise ValueError(f"max_pending_bytes: expected \"auto\", an integer >= 0 or None, "
                             f"got {max_pending_bytes!r}")
        self.max_pending_bytes = max_pending_bytes
        self.device: Device = resolve_device(device)
        if plan is not None:
            if not (isinstance(policy, str) and policy == "auto"):
                raise ValueError("plan: a plan decides what each tensor gets; pass policy or "
                                 "plan, not both")
            policy = plan.policy
        self.plan = plan
        self._plan_stack = contextlib.ExitStack()
        self.policy = resolve_policy(policy)
        self.prefetch = prefetch
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None  # started by the first threaded save
        self._lock = threading.RLock()
        self._drained = threading.Condition(self._lock)
        self._pending_bytes = 0
        # what is held for backward, from the storages (``saved_memory.peak``: see host.peak)
        self.saved_memory = SavedMemory()
        self._t0 = time.perf_counter()
        self._seq = itertools.count()
        self._live: dict[int, SavedRecord] = {}
        self._live_seqs: list[int] = []
        self._by_key: dict[tuple, SavedRecord] = {}
        # contiguous stored tensors by (device, data pointer, dtype, numel, version): their
        # reshapes share the frame (see the module docstring)
        self._by_region: dict[tuple, SavedRecord] = {}
        self._history: list[SavedRecord] = []
        self._saves = self._passed = 0
        self._tracker = _ModuleTracker(on_return=self._shape_only_settled)
        self._hooks: list = []
        self._release_fn = self._release
        self._substitutes: dict[int, torch.Tensor] = {}  # record seq -> what unpack returns
        self._entered = 0
        self._warned_compile = False
        self._observers: list = []

    def __repr__(self) -> str:
        return f"OffloadSession(device={self.device.name!r}, policy={self.policy!r})"

    def __enter__(self) -> OffloadSession:
        if self._entered == 0:
            if self.plan is not None:
                self._plan_stack.enter_context(self.plan._installed())
            self._tracker.install()
            self._release_fn = _not_traced(self._release)
        self._entered += 1
        hooks = torch.autograd.graph.saved_tensors_hooks(_not_traced(self._pack),
                                                         _not_traced(self._unpack))
        hooks.__enter__()
        self._hooks.append(hooks)
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.pop().__exit__(*exc)
        self._entered -= 1
        if self._entered == 0:
            self._tracker.remove()
            self._plan_stack.close()

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    # ---------------------------------------------------------------- pack

    def _pack(self, t: torch.Tensor):
        handle = self._save(t)
        if self._observers and isinstance(handle, _Handle):
            modules = tuple(self._tracker._stack())
            for observer in self._observers:
                observer.saved(handle.record, t, modules)
        return handle

    def _save(self, t: torch.Tensor):
        with self._lock:
            self._saves += 1
        if (_graph_task_id() != -1 or type(t) not in (torch.Tensor, nn.Parameter)
                or t.layout != torch.strided or t.device.type == "meta"):
            with self._lock:
                self._passed += 1
            passed = _Passed(t)
            if not is_parameter(t):
                self.saved_memory.hold_while(passed, passed.tensor)
            return passed
        threaded = self._threaded(t)
        if self.max_pending_bytes is not None and threaded:
            nbytes = t.numel() * t.element_size()
            with self._lock:
                self._drained.wait_for(lambda: self._may_start(nbytes))
                # still too large to wait raw beside what is stored: compress it here
                threaded = self._may_pend(nbytes)
        context = _saver_context()
        if context == "compiled" and not self._warned_compile:
            self._warned_compile = True
            warnings.warn(
                "actpack.offload: saved tensors come from a torch.compile region; they are "
                "stored and restored correctly, but without op or module information, so the "
                "policy sees op 'input' and never stores a ReLU mask (see CompileWarning)",
                CompileWarning, stacklevel=2)
        layer, module_type = self._tracker.current()
        saver = layer or f"<{module_type or 'top level'}>"
        # Max pooling saving its input: only the shape is read back (see the module docstring);
        # a claim, checked against the op that saved it when the module returns.
        shape_only = module_type in _SHAPE_ONLY_SAVERS and t.is_floating_point()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t._version)
        with self._lock:
            rec = self._by_key.get(key)
            if rec is not None and rec.freed_at is None and rec.weak() is not None:
                if saver not in rec.saved_by:
                    rec.saved_by.append(saver)
                if not shape_only:
                    self._saved_again(rec, t, context)
                handle = _Handle(self, rec, rec.values if rec.values is not None else rec.mask)
                if shape_only:
                    self._claim_shape_only(handle, t)
                return handle
        gf = t.grad_fn
        gname = type(gf).__name__ if gf is not None else ""
        # ReLU saving its own output: its node is the one autograd created last.
        own_relu = gname == "ReluBackward0" and gf._sequence_nr() == _next_sequence_nr() - 1
        made_by = producer(gf)  # one walk through the views, for the kind and the name
        op = "parameter" if is_parameter(t) else producer_kind(made_by)
        info = SavedInfo(layer, module_type, op, gname, tuple(t.shape), t.dtype,
                         t.numel() * t.element_size(), mask_only=own_relu or shape_only,
                         context=context, producer=made_by)
        codec = self.policy(info) if is_dense(t) else None
        region = ((t.device, t.data_ptr(), t.dtype, t.numel(), t._version)
                  if t.is_contiguous() and codec is not None and not shape_only else None)
        with self._lock:
            shared = self._reshape_of(region, codec)
            if shared is not None:
                if saver not in shared.saved_by:
                    shared.saved_by.append(saver)
                return _Handle(self, shared, shared.values, shape=t.shape)
            rec = SavedRecord(next(self._seq), key, info, t, self._now(), saver)
            rec.threaded = threaded
            if t.dtype == torch.int64:  # max pooling's indices, if a MaxPool2d is running
                rec.window = self._tracker.running_window()
            self._by_key[key] = rec
            if region is not None and codec.mode != "mask":
                rec.region = region
                self._by_region[region] = rec
            self._live[rec.seq] = rec
            self._live_seqs.append(rec.seq)
            self._history.append(rec)
            store = self._new_store(rec, t, codec)
            if codec is not None and codec.mode == "mask":
                rec.mask = store
            else:
                rec.values = store
            self._account(rec, store)
            handle = _Handle(self, rec, store)
            if shape_only:
                self._claim_shape_only(handle, t)
            return handle

    def _reshape_of(self, region, codec) -> SavedRecord | None:
        """The live record whose values frame serves a contiguous reshape saved with ``codec``
        (lock held): the same elements (``region``), stored contiguous, with the same setting
        (the reshape gets that setting's error, from the frame of the record's shape); None if
        there is none."""
        rec = self._by_region.get(region) if region is not None else None
        if (rec is None or rec.freed_at is not None or rec.weak() is None or rec.stride is not None
                or rec.values is None or rec.values.dropped or rec.info.mask_only):
            return None
        return rec if _same_setting(rec.values.codec, codec) else None

    def _threaded(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is compressed by the worker threads (see ``workers``); starts them."""
        if self.workers == "auto":
            if t.device.type == "cpu" and isinstance(self.device, RefDevice):
                return False
            workers = 2
        elif self.workers == 0:
            return False
        else:
            workers = self.workers
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=workers,
                                                thread_name_prefix="actpack-offload")
                weakref.finalize(self, self._pool.shutdown, wait=False)
        return True

    def _may_start(self, nbytes: int) -> bool:
        """Whether a save of ``nbytes`` raw bytes stops waiting for the workers (lock held):
        nothing is pending, or it may wait raw (``_may_pend``); see ``max_pending_bytes``."""
        if self.max_pending_bytes != "auto":
            return self._pending_bytes <= self.max_pending_bytes
        return self._pending_bytes == 0 or self._may_pend(nbytes)

    def _may_pend(self, nbytes: int) -> bool:
        """Whether a save of ``nbytes`` raw bytes may wait for a worker (lock held). With
        "auto", only while the pending bytes with it stay within half of what is stored;
        otherwise the saving thread compresses it itself (the first, large tensors of a step,
        before much is stored), so the raw bytes held beyond the frames never exceed half of
        them."""
        if self.max_pending_bytes != "auto":
            return True
        return 2 * (self._pending_bytes + nbytes) <= self._stored_bytes()

    def _stored_bytes(self) -> int:
        """What the live records hold in stored form (lock held): the bound "auto" keeps the
        raw bytes pending or decompressed ahead within half of."""
        return sum(s.nbytes for r in self._live.values() for s in r.stores()
                   if s.stored_at is not None)

    def _claim_shape_only(self, handle: _Handle, t: torch.Tensor) -> None:
        """``handle`` reads only the shape if the op saving it now (the node autograd made
        last) turns out to be max pooling's; ``_shape_only_settled`` decides."""
        self._tracker.claim((handle, t.detach(), _next_sequence_nr() - 1))

    def _shape_only_settled(self, claims: list, output) -> None:
        """A max-pool module returned: each claim whose saving node is a pooling node stands;
        the others were saved by an op that reads values (a hook's or the module's own), so
        their values are stored and their handles read those."""
        nodes = _nodes_since(output, min(seq for _, _, seq in claims))
        for handle, t, seq in claims:
            node = nodes.get(seq)
            if node is not None and type(node).__name__.startswith(_SHAPE_ONLY_NODES):
                continue
            with self._lock:
                rec = handle.record
                if rec.freed_at is not None:
                    continue
                self._saved_again(rec, t, rec.info.context)
                old, new = handle.store, rec.values
                if old is new:
                    continue
                if not handle.read:
                    old.unread -= 1
                    new.unread += 1
                handle.store = new
                if old is rec.mask and old.unread == 0:
                    self._drop(old)

    def _saved_again(self, rec: SavedRecord, t: torch.Tensor, context: str) -> None:
        """Another op saves a stored tensor (lock held). It reads values: a ReLU output stored
        as a mask so far gets its values stored too (the mask still serves ReLU's own backward
        exactly). A checkpoint saving it as a recomputation input may ask for a stricter
        setting, which replaces the values stored so far."""
        stricter = context != "eager" and context != rec.info.context
        if rec.info.mask_only:  # read by an op that needs values now, whatever is stored
            rec.info = replace(rec.info, mask_only=False)
        if rec.values is not None and not stricter:
            return
        if stricter:
            rec.info = replace(rec.info, context=context)
        codec = self.policy(rec.info) if is_dense(t) else None
        if rec.values is not None:
            if codec is not None or rec.values.codec is None:
                return
            self._drop(rec.values)
        rec.values = self._new_store(rec, t, codec)
        self._account(rec, rec.values)
        if codec is None and rec.mask is not None:  # the kept tensor serves ReLU too
            self._drop(rec.mask)

    def _account(self, rec: SavedRecord, store: _Store) -> None:
        """``saved_memory`` follows what ``store`` holds now (lock held): the raw tensor (kept,
        or waiting for a worker), the frame, a tensor decompressed ahead of backward. Stores
        not (or no longer) the record's hold nothing for it; parameters are left out."""
        if rec.info.op == "parameter" or store.dropped or not (store is rec.values
                                                                 or store is rec.mask):
            self.saved_memory.drop(id(store))
            return
        ahead = store.decoded
        ahead = (ahead.result() if ahead is not None and ahead.done() and not ahead.cancelled()
                 and ahead.exception() is None else None)
        self.saved_memory.hold(id(store), [store.tensor, store.frame, ahead])

    def _drop(self, store: _Store) -> None:
        """A store superseded by the record's values (readers are redirected there); it holds
        nothing for backward any more (``saved_memory``)."""
        store.dropped = True
        self.saved_memory.drop(id(store))
        if store.future is not None:
            store.future.cancel()
        store.tensor = store.frame = store.future = store.decoded = None

    def _new_store(self, rec: SavedRecord, t: torch.Tensor, codec: Codec | None) -> _Store:
        store = _Store(codec, t.detach())
        if codec is None:
            store.stored_at, store.nbytes = self._now(), rec.raw_bytes
        else:
            if not rec.threaded:  # inline: stored before the op returns, never pending
                store.future = Future()
                self._compress(rec, store, store.tensor, codec)
                store.future.set_result(None)
                # the raw tensor is the op's own while it runs, never held for backward
                if store.error is None and store.stored_at is not None:
                    store.stored_at = rec.packed_at
            else:
                self._pending_bytes += rec.raw_bytes
                store.future = self._pool.submit(self._compress, rec, store, store.tensor,
                                                 codec)
                store.future.add_done_callback(lambda _: self._compressed(rec.raw_bytes))
        return store

    def _compressed(self, nbytes: int) -> None:
        with self._lock:
            self._pending_bytes -= nbytes
            self._drained.notify_all()

    def _compress(self, rec: SavedRecord, store: _Store, tensor: torch.Tensor,
                  codec: Codec) -> None:
        error = None
        try:
            with _on(rec.stream):
                if isinstance(codec, Lossless):  # exact host-side packing, no frame
                    frame = codec.compress(tensor, window=rec.window)
                else:
                    rows = _channel_rows(rec.shape)
                    if rows is not None:
                        tensor = tensor.permute(0, 2, 3, 1).reshape(rows)
                    frame = self.device.compress(tensor, codec)
                    if not isinstance(frame, Frame):
                        raise TypeError(f"device {self.device.name!r}: compress returned "
                                        f"{type(frame).__name__}, not a Frame")
        except Exception as exc:
            error = OffloadError(f"{rec.label}: storing it as {codec!r} failed: {exc}")
            error.__cause__ = exc
        # (a change in place while this ran is caught by the version check at unpack)
        with self._lock:
            if store.dropped or rec.freed_at is not None:
                return
            store.error = error
            if error is None:
                store.frame, store.tensor, store.nbytes = frame, None, frame.nbytes
            store.stored_at = self._now()
            self._account(rec, store)

    # ---------------------------------------------------------------- unpack

    def _unpack(self, packed):
        if isinstance(packed, _Passed):
            return packed.unpack()
        rec = packed.record
        for observer in self._observers:
            observer.read(rec)
        t = self._restore(rec, packed.store)
        if packed.shape is not None:
            t = t.view(packed.shape)
        with self._lock:
            if not packed.read:
                packed.read = True
                packed.store.unread -= 1
        if self.prefetch and rec.threaded:
            self._prefetch_before(rec.seq)
        return t

    def _restore(self, rec: SavedRecord, store: _Store) -> torch.Tensor:
        _check_version(rec.label, rec.alias, rec.version)
        substitute = self._substitutes.get(rec.seq)
        if substitute is not None:
            return substitute
        with self._lock:
            if store.dropped:
                store = rec.values
            if store.codec is None:
                return store.tensor
            future, decoded, store.decoded = store.future, store.decoded, None
            if decoded is not None:  # handed to backward: its working memory from now on
                self._account(rec, store)
        if future is not None:
            with contextlib.suppress(Exception):
                future.result()
        with self._lock:
            if store.error is not None:
                raise store.error
            frame = store.frame
        if decoded is not None:
            with contextlib.suppress(CancelledError):
                return decoded.result()
        return self._decode(rec, frame)

    def _decode(self, rec: SavedRecord, frame: Frame | Packed) -> torch.Tensor:
        try:
            with _on(rec.stream):
                if isinstance(frame, Packed):
                    t = LOSSLESS.decompress(frame, device=rec.device)
                else:
                    t = self.device.decompress(frame, device=rec.device)
                    rows = _channel_rows(rec.shape)
                    if rows is not None and isinstance(t, torch.Tensor) and t.shape == rows:
                        n, c, h, w = rec.shape
                        t = t.reshape(n, h, w, c).permute(0, 3, 1, 2)
                        if rec.stride is None:
                            t = t.contiguous()
        except FrameError as exc:
            raise FrameError(f"{rec.label}: its stored frame is corrupted ({exc})",
                             check=exc.check, block=exc.block) from exc
        if not isinstance(t, torch.Tensor):
            raise UnpackMismatchError(f"{rec.label}: device {self.device.name!r} returned "
                                      f"{type(t).__name__}, not a tensor")
        if t.shape != rec.shape or t.dtype != rec.dtype or t.device != rec.device:
            raise UnpackMismatchError(
                f"{rec.label}: restored as {tuple(t.shape)} {t.dtype} on {t.device}, but "
                f"{tuple(rec.shape)} {rec.dtype} on {rec.device} was saved; the device or "
                "the stored frame is faulty")
        if rec.stride is not None:
            with _on(rec.stream):
                out = torch.empty_strided(rec.shape, rec.stride, dtype=rec.dtype,
                                          device=rec.device)
                t = out.copy_(t)
        return t

    def _prefetch_before(self, seq: int) -> None:
        """Start decompressing the stored tensors backward will ask for next (reverse save
        order). Only frames that are ready: a decode never waits on a queued encode. At most
        ``prefetch`` are decompressed ahead at a time, and with ``max_pending_bytes`` "auto"
        only while their raw bytes stay within half of what is stored (as for pending saves:
        the resident bytes stay within 1.5x the stored ones)."""
        with self._lock:
            ahead = [r for r in self._live.values() for st in r.stores()
                     if st.decoded is not None]
            started = len(ahead)
            room = None
            if self.max_pending_bytes == "auto":
                room = self._stored_bytes() // 2 - sum(r.raw_bytes for r in ahead)
            i = bisect.bisect_left(self._live_seqs, seq)
            for s in reversed(self._live_seqs[max(0, i - 4 * self.prefetch):i]):
                rec = self._live[s]
                if not rec.threaded:
                    continue
                for store in rec.stores():
                    if (started < self.prefetch and store.frame is not None
                            and store.decoded is None and store.unread > 0):
                        if room is not None:
                            if rec.raw_bytes > room:
                                return  # in backward's order: the next one waits its turn
                            room -= rec.raw_bytes
                        store.decoded = self._pool.submit(self._decode, rec, store.frame)
                        store.decoded.add_done_callback(
                            lambda _, rec=rec, store=store: self._decoded(rec, store))
                        started += 1

    def _decoded(self, rec: SavedRecord, store: _Store) -> None:
        with self._lock:
            if store.decoded is not None and rec.freed_at is None:
                self._account(rec, store)

    # ---------------------------------------------------------------- release

    def _release(self, handle: _Handle) -> None:
        rec = handle.record
        with self._lock:
            if not handle.read:
                handle.store.unread -= 1
            rec.refs -= 1
            if rec.refs > 0:
                return
            rec.freed_at = self._now()
            for store in rec.stores():
                if store.stored_at is None:  # freed before its frame was ready: held raw
                    store.nbytes, store.stored_at = rec.raw_bytes, rec.freed_at
                if store.future is not None:
                    store.future.cancel()
                if store.decoded is not None:
                    store.decoded.cancel()
                store.tensor = store.frame = store.decoded = store.future = None
                self.saved_memory.drop(id(store))
            del self._live[rec.seq]
            del self._live_seqs[bisect.bisect_left(self._live_seqs, rec.seq)]
            if self._by_key.get(rec.key) is rec:
                del self._by_key[rec.key]
            if rec.region is not None and self._by_region.get(rec.region) is rec:
                del self._by_region[rec.region]
        for observer in self._observers:
            observer.freed(rec)

    # ---------------------------------------------------------------- calibration

    def _lossy_records(self, lossy) -> list[SavedRecord]:
        """The live records kept exactly whose info ``lossy`` says would be stored lossily (for
        ``AdaptivePolicy.calibrate``, on a session with policy "keep" and no workers)."""
        with self._lock:
            return [r for r in self._live.values()
                    if r.values is not None and r.values.codec is None
                    and r.values.tensor is not None and is_dense(r.values.tensor)
                    and lossy(r.info)]

    @contextlib.contextmanager
    def _substituted(self, rec: SavedRecord, codec: Codec):
        """Backward reads ``rec`` as stored by ``codec`` (made and decoded by this session's
        own path, as a real step would) while inside."""
        store = self._new_store(rec, rec.values.tensor, codec)
        if store.error is not None:
            raise store.error
        self._substitutes[rec.seq] = self._decode(rec, store.frame)
        try:
            yield
        finally:
            del self._substitutes[rec.seq]

    # ---------------------------------------------------------------- profiling

    def observe(self, observer) -> None:
        """A profiling hook: ``observer`` is told, in the thread where it happens and after the
        session has done its part, of every save the session stores
        (``observer.saved(record, tensor, modules)``: the ``SavedRecord`` (one per distinct
        tensor, so a tensor saved by several ops comes several times), the tensor the op saved,
        the running modules outermost first), every read by backward
        (``observer.read(record)``, before the session restores it) and every release
        (``observer.freed(record)``, when autograd drops its last reference). Observers must
        not change the records. ``actpack.plan`` profiles a step through it."""
        self._observers.append(observer)

    def records(self, *, live: bool = True) -> list[SavedRecord]:
        """The distinct saved tensors autograd still holds (``live``), or every one the session
        stored, in save order."""
        with self._lock:
            return [self._live[s] for s in self._live_seqs] if live else list(self._history)

    def trial(self, record: SavedRecord, codec: Codec | Lossless):
        """``record``'s kept tensor (``record.tensor``) stored as ``codec`` through the
        session's own path (the device, the channel-row layout), without keeping it: the stored
        form (a ``Frame`` or a lossless ``Packed``) and its bytes. Raises what storing it would
        (``OffloadError``)."""
        store = self._new_store(record, record.tensor, codec)
        if store.error is not None:
            raise store.error
        return store.frame, store.nbytes

    def restore(self, record: SavedRecord, stored) -> torch.Tensor:
        """What backward would read from ``stored`` (a ``trial`` result) for ``record``."""
        return self._decode(record, stored)

    # ---------------------------------------------------------------- figures

    def synchronize(self) -> None:
        """Wait until every tensor saved so far is stored."""
        while True:
            with self._lock:
                pending = [s.future for r in self._live.values() for s in r.stores()
                           if s.future is not None and s.stored_at is None]
            if not pending:
                return
            for f in pending:
                with contextlib.suppress(Exception):
                    f.result()

    @property
    def stats(self) -> Stats:
        """A snapshot of what the session stored (waits for compressions in flight)."""
        self.synchronize()
        with self._lock:
            now = self._now()
            measured = getattr(self.policy, "measured", None)
            tensors = tuple(
                TensorStats(r.info.layer, r.info.module_type, r.info.op, r.info.context,
                            tuple(r.saved_by),
                            tuple(r.shape), r.dtype, r.mode, r.raw_bytes, r.stored_bytes,
                            r.packed_at, r.stored_at, r.freed_at,
                            None if measured is None else measured(r.info))
                for r in self._history)
            saves, passed = self._saves, self._passed
        return Stats(saves, passed, tensors, timeline_of(tensors, now))

    def report(self, *, file=None) -> str:
        """Print the per-layer table (to ``file``, default stdout) and return it."""
        text = self.stats.table()
        print(text, end="", file=sys.stdout if file is None else file)
        return text

    def plot(self, path, *, title: str | None = None) -> None:
        """Write a plot of saved-tensor memory over the session to ``path`` (matplotlib, Agg)."""
        plot_timeline(self.stats, path, title=title)


def _on(stream):
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


def _not_traced(fn):
    """``fn`` hidden from TorchDynamo. An op that runs eagerly inside a compiled region (after a
    graph break) calls the hooks while Dynamo's frame callback is set, and Dynamo would try to
    compile them. Only done once torch._dynamo is imported: importing it costs a second, and
    nothing can be compiling before it is."""
    if "torch._dynamo" not in sys.modules:
        return fn
    return torch._dynamo.disable(fn, reason="actpack.offload's hooks run eagerly")


_CHECKPOINT_FILE = os.path.join("torch", "utils", "checkpoint.py")


def _saver_context() -> str:
    """Who is saving, from the Python frames above the op: "compiled" (an AOTAutograd runtime
    wrapper: a torch.compile region), "checkpoint" (torch.utils.checkpoint saving the inputs
    it recomputes from) or "eager"."""
    frame = sys._getframe(2)
    for _ in range(10):
        if frame is None:
            break
        name = frame.f_code.co_filename
        if "_aot_autograd" in name:
            return "compiled"
        if name.endswith(_CHECKPOINT_FILE):
            return "checkpoint"
        frame = frame.f_back
    return "eager"
