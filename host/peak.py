"""The process-level peak of tensor memory while a function runs: what a training step really
holds at its worst (forward's live tensors, saved tensors, frames, gradients, the codec's
temporaries), not only the saved-tensor figures of ``session.stats``.

    peak = measure_peak(lambda: train_step(model, x, y))      # bytes above what was allocated

On CUDA, ``torch.cuda.max_memory_allocated`` after a reset (every stream of the device). On
the CPU, the allocator's events recorded by ``torch.profiler`` (``profile_memory=True``, every
thread), summed in time order. Both count tensor memory allocated inside the call, above what
was allocated before it; the CPU figure includes the allocations of actpack's worker threads.

The peak of *saved-activation* memory is a different figure: the bytes held for backward, in
whatever form (a raw tensor kept or still waiting for compression, a frame, a lossless pack, a
tensor decompressed ahead of backward), counted from the storages themselves (each storage
once, however many saves or views share it; a frame by the bytes it holds) at every change,
and its maximum over the step. ``SavedMemory`` keeps that account; ``OffloadSession`` keeps one
(``session.saved_memory``), and ``tracked_hooks`` keeps one for any other saved-tensor hooks
(plain autograd, ``save_on_cpu``, a quantizer) so every row is measured the same way.
Parameters (and their views) are left out: autograd saves them by reference, they are held
anyway. A tensor handed to backward (unpacked) is backward's working memory from then on, as
the gradients are: it is in the step's peak (``measure_peak``), not in this one; what a save
held is counted until autograd releases it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable

import torch
from torch.utils._pytree import tree_leaves

from .losses import mean_square_loss

__all__ = ["SavedMemory", "is_parameter", "measure_peak", "step_peak", "storages_of",
           "tracked_hooks", "warm_peak"]


def measure_peak(fn: Callable[[], object], *, device: torch.device | str = "cpu") -> int:
    """Run ``fn()`` and return the peak of tensor bytes allocated on ``device`` during it, above
    what was allocated when it started (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"device: expected a CPU or CUDA device, got {device}")
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():  # Kineto logs its start and stop on the C++ side's stderr
        prof.__enter__()
    try:
        fn()
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == _CPU),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def step_peak(model: torch.nn.Module, inputs, *, session=None,
              loss_fn: Callable | None = None) -> int:
    """``warm_peak`` of one forward and backward of ``model(inputs)`` (inside ``session`` when
    given; ``loss_fn(output)``, default ``losses.mean_square_loss``)."""
    loss_fn = loss_fn or mean_square_loss

    def step():
        with session if session is not None else contextlib.nullcontext():
            loss_fn(model(inputs)).backward()

    return warm_peak(step, model)


def warm_peak(step: Callable[[], object], model: torch.nn.Module) -> int:
    """``measure_peak`` of ``step()`` (a training step of ``model``) after one unmeasured
    warm-up call (one-time allocations are not a step's), on the model's device. The model's
    gradients are set to None before each call, as ``zero_grad`` does, and after."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    step()
    model.zero_grad(set_to_none=True)
    try:
        return measure_peak(step, device=device)
    finally:
        model.zero_grad(set_to_none=True)


_CPU = torch._C._autograd.DeviceType.CPU


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null while inside (C++ logging bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ------------------------------------------------------------------------ saved-activation memory

def is_parameter(t: torch.Tensor) -> bool:
    """Whether autograd saves ``t`` by reference to a parameter (a leaf that requires grad, or
    a view of one): held by the model anyway, not activation memory."""
    return (isinstance(t, torch.nn.Parameter) or (t.is_leaf and t.requires_grad)
            or isinstance(t._base, torch.nn.Parameter))


def storages_of(obj) -> list[tuple[tuple, int]]:
    """The memory ``obj`` holds as ``(key, nbytes)`` pairs, one per storage: a tensor's whole
    untyped storage (a view holds all of it), an object with a ``data`` tensor (a lossless
    pack), bytes (a frame's ``bytes(frame)``), or a container of these."""
    out = []
    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            if leaf.layout != torch.strided or leaf.device.type == "meta":
                continue
            st = leaf.untyped_storage()
            out.append((("storage", leaf.device, st.data_ptr()), st.nbytes()))
        elif isinstance(leaf, (bytes, bytearray)):
            out.append((("bytes", id(leaf)), len(leaf)))
        elif isinstance(getattr(leaf, "data", None), torch.Tensor):
            out += storages_of(leaf.data)
        elif hasattr(leaf, "__bytes__"):  # a codec Frame: its bytes object, not a copy
            data = bytes(leaf)
            out.append((("bytes", id(data)), len(data)))
    return out


class SavedMemory:
    """The live bytes held for backward and their peak, from storages (see the module
    docstring). An owner (any hashable: a store, a saved-tensor handle) ``hold``s objects and
    later holds others or ``drop``s them; a storage held by several owners counts once.
    Thread-safe (worker threads finish compressions)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owners: dict[object, list[tuple[tuple, int]]] = {}
        self._refs: dict[tuple, list[int]] = {}  # storage key -> [owners holding it, nbytes]
        self.live = 0
        self.peak = 0

    def hold(self, owner, obj) -> None:
        """``owner`` holds what ``obj`` holds from now on (instead of what it held before)."""
        new = storages_of(obj) if obj is not None else []
        with self._lock:
            old = self._owners.pop(owner, [])
            for key, nbytes in new:
                ref = self._refs.get(key)
                if ref is None:
                    self._refs[key] = [1, nbytes]
                    self.live += nbytes
                else:
                    ref[0] += 1
            if new:
                self._owners[owner] = new
            self.peak = max(self.peak, self.live)
            for key, _ in old:
                ref = self._refs[key]
                ref[0] -= 1
                if ref[0] == 0:
                    del self._refs[key]
                    self.live -= ref[1]

    def drop(self, owner) -> None:
        """``owner`` holds nothing any more."""
        self.hold(owner, None)

    def hold_while(self, keeper, obj) -> None:
        """``obj`` is held until ``keeper`` (an object autograd keeps for a save, weakly
        referenceable) is released."""
        self.hold(id(keeper), obj)
        weakref.finalize(keeper, self.drop, id(keeper))

    def reset_peak(self) -> None:
        """Start a new peak from what is live now (at the start of a step)."""
        with self._lock:
            self.peak = self.live


class _Held:
    """What a tracked pack hook hands autograd: the inner hook's result, accounted for until
    autograd releases it."""

    __slots__ = ("__weakref__", "packed")

    def __init__(self, packed):
        self.packed = packed


def tracked_hooks(pack=None, unpack=None, *, memory: SavedMemory | None = None):
    """``saved_tensors_hooks`` around ``pack``/``unpack`` (default: keep the tensor as it is,
    plain autograd's storage) that account what each save holds in ``memory`` (a new
    ``SavedMemory`` by default; the context manager's ``.memory``) until autograd releases it.
    Parameters are passed through uncounted."""
    memory = memory if memory is not None else SavedMemory()

    def packed(t):
        inner = pack(t) if pack is not None else t
        if is_parameter(t) and inner is t:
            return _Held(inner)
        held = _Held(inner)
        memory.hold_while(held, inner)
        return held

    def unpacked(held):
        return unpack(held.packed) if unpack is not None else held.packed

    hooks = torch.autograd.graph.saved_tensors_hooks(packed, unpacked)
    hooks.memory = memory
    return hooks
