"""policy="adaptive": settings chosen from measured gradient error against the gradient noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import actpack
from actpack.host.adaptive import AdaptivePolicy
from actpack.host.gradcheck import gradient_check
from actpack.models import GRADIENT_MODELS


def bn_resnet():
    model, x = GRADIENT_MODELS["bn_resnet"]()
    return model, x, torch.arange(len(x)) % 10


def test_a_tiny_budget_keeps_every_lossy_tensor_and_gradients_are_exact():
    model, x, y = bn_resnet()
    policy = AdaptivePolicy(noise_fraction=1e-30)
    cal = policy.calibrate(model, x, y, loss_fn=F.cross_entropy)
    assert cal.tensors >= 5 and {c[2] for c in cal.choices} == {"keep"}
    check = gradient_check(model, x, policy=policy, loss_fn=lambda o: F.cross_entropy(o, y))
    assert check.rel_l2 == 0.0  # masks and lossless integers are exact, the rest kept


def test_a_huge_budget_takes_the_cheapest_setting():
    model, x, y = bn_resnet()
    policy = AdaptivePolicy(noise_fraction=1e30)
    cal = policy.calibrate(model, x, y, loss_fn=F.cross_entropy)
    assert {c[2] for c in cal.choices} == {"dct:optH"}


def _noise(model, x, y):
    """Per-parameter variance of the batch gradient, from its two halves (as calibration)."""
    n = len(x) // 2
    halves = []
    for xs, ys in ((x[:n], y[:n]), (x[n:], y[n:])):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        F.cross_entropy(model(xs), ys).backward()
        halves.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return [(a - b).double().square().sum() / 4 for a, b in zip(*halves, strict=True)]


def test_the_chosen_settings_keep_each_parameters_error_within_its_budget():
    # The whole step with every chosen setting at once (not one tensor at a time, as
    # calibration measures): each parameter's squared gradient error stays within the budget,
    # give or take the additivity calibration assumes.
    model, x, y = bn_resnet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sigma2 = _noise(model, x, y)
    model.load_state_dict(state)
    policy = AdaptivePolicy(noise_fraction=0.1)
    cal = policy.calibrate(model, x, y, loss_fn=F.cross_entropy, seed=0)
    assert all(share <= 1.0 for *_, share in cal.choices)
    assert len({c[2] for c in cal.choices}) >= 2  # it does choose, tensor by tensor

    def step(session):
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if session is None:
                F.cross_entropy(model(x), y).backward()
            else:
                with session:
                    F.cross_entropy(model(x), y).backward()
        model.load_state_dict(state)
        return [p.grad.clone() for p in model.parameters()]

    ref, session = step(None), actpack.offload(policy=policy, workers=0)
    got = step(session)
    for r, g, s2 in zip(ref, got, sigma2, strict=True):
        assert float((g - r).double().square().sum()) <= 2 * 0.1 * float(s2) + 1e-20
    text = session.stats.table()
    assert "grad err" in text.splitlines()[0]
    measured = [t for t in session.stats.activations if t.grad_error is not None]
    assert len(measured) >= cal.tensors
    assert ({t.mode.removeprefix("mask+") for t in measured}
            <= {"dct:optH", "dct:optL", "sfpr8:3.96875", "keep"})


def test_step_calibrates_on_the_first_call_and_every_nth():
    model, x, y = bn_resnet()
    policy = actpack.offload(policy="adaptive").policy
    assert isinstance(policy, AdaptivePolicy) and policy.last is None
    policy.every = 2
    calls = [policy.step(model, x, y, loss_fn=F.cross_entropy) for _ in range(3)]
    assert calls[0] is not None and calls[1] is None and calls[2] is not None
    # before calibration, and for tensors it never saw, it stores what "auto" stores
    fresh = AdaptivePolicy()
    ra = gradient_check(model, x, policy=fresh, loss_fn=lambda o: F.cross_entropy(o, y))
    rb = gradient_check(model, x, policy="auto", loss_fn=lambda o: F.cross_entropy(o, y))
    assert ra.stored_bytes == rb.stored_bytes and ra.rel_l2 == rb.rel_l2


@pytest.mark.parametrize("kwargs, match", [
    ({"ladder": ["keep"]}, "ladder"), ({"ladder": ["mask"]}, "ladder"), ({"ladder": []}, "ladder"),
    ({"noise_fraction": 0}, "noise_fraction"), ({"every": 0}, "every"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptivePolicy(**kwargs)


def test_a_batch_of_one_cannot_be_calibrated():
    model, x, y = bn_resnet()
    with pytest.raises(ValueError, match="at least 2"):
        AdaptivePolicy().calibrate(model, x[:1], y[:1], loss_fn=F.cross_entropy)
