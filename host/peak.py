"""The process-level peak of tensor memory while a function runs: what a training step really
holds at its worst (forward's live tensors, saved tensors, frames, gradients, the codec's
temporaries), not only the saved-tensor figures of ``session.stats``.

    peak = measure_peak(lambda: train_step(model, x, y))      # bytes above what was allocated

On CUDA, ``torch.cuda.max_memory_allocated`` after a reset (every stream of the device). On
the CPU, the allocator's events recorded by ``torch.profiler`` (``profile_memory=True``, every
thread), summed in time order. Both count tensor memory allocated inside the call, above what
was allocated before it; the CPU figure includes the allocations of actpack's worker threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch

__all__ = ["measure_peak", "step_peak", "warm_peak"]


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
    given; ``loss_fn(output)``, default ``gradcheck.mean_square_loss``)."""
    from .gradcheck import mean_square_loss

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
