"""The process-level peak of tensor memory (host.peak)."""

from __future__ import annotations

import pytest
import torch

import actpack
from actpack.host.peak import measure_peak, step_peak
from actpack.models import GRADIENT_MODELS

MIB = 1 << 20


def test_the_peak_follows_allocations_and_frees():
    def work():
        a = torch.empty(MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a
        c = torch.empty(MIB, dtype=torch.uint8)
        del b, c

    assert measure_peak(work) == 3 * MIB
    assert measure_peak(lambda: None) == 0


def test_offload_lowers_the_step_peak():
    # mobile_net holds 62 MiB of saved activations in a step; stored compressed (inline, so
    # the figure does not depend on how the worker threads are scheduled), the step's peak of
    # all tensor memory falls to under half.
    model, x = GRADIENT_MODELS["mobile_net"]()
    plain = step_peak(model, x)
    packed = step_peak(model, x, session=actpack.offload(workers=0))
    assert plain > 40 * MIB
    assert packed < 0.5 * plain


def test_a_device_that_is_neither_cpu_nor_cuda_is_named():
    with pytest.raises(ValueError, match="device"):
        measure_peak(lambda: None, device="meta")
