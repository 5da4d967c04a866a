"""Gradients through ``actpack.offload``: exact where the stored form is exact (masks, kept
tensors), close where it is lossy; and "mask" never serves an op that reads values."""

from __future__ import annotations

import pytest
import torch
from offload_testlib import (
    batch,
    conv_relu_conv,
    conv_relu_pool,
    grads,
    modes,
    rel_err,
    relu_only_mask,
    seeded,
)
from torch import nn

import actpack
from actpack import Policy, Rule
from actpack.host.policy import SFPR8_FULL_RANGE

# Only masks are lossy-free-compressed; everything that carries values is kept.
MASKS_ONLY = Policy.auto(conv="keep", spatial="keep", values="keep", min_bytes=0)
# The lossy setting these tests check gradients against: their inputs are random, and optH (the
# "auto" DCT table) is for real activations (see test_offload_training).
SFPR8 = f"sfpr8:{SFPR8_FULL_RANGE}"

MODELS = {"conv_relu_conv": conv_relu_conv, "conv_relu_pool": conv_relu_pool,
          "relu_only_mask": relu_only_mask}


@pytest.mark.parametrize("name", MODELS)
def test_masks_and_kept_tensors_give_exact_gradients(name):
    model, x = MODELS[name](), batch()
    ref = grads(model, x)
    session = actpack.offload(policy=MASKS_ONLY)
    got = grads(model, x, session)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    m = modes(session)
    if name == "conv_relu_conv":
        # conv2 reads relu1's values: they are stored (kept here) and the mask dropped.
        assert m["relu1"] == "keep"
    else:
        # Only ReLU's backward (its sign) and max pooling's (its shape) read relu1's output: a
        # 1-bit mask serves both exactly.
        assert m["relu1"] == "mask"


def test_relu_output_read_by_another_op_stores_values_and_mask():
    model, x = conv_relu_conv(), batch()
    ref = grads(model, x)
    session = actpack.offload(policy=Policy.auto(min_bytes=0, conv=SFPR8, spatial=SFPR8))
    got = grads(model, x, session)
    m = modes(session)
    assert m["relu1"] == "mask+sfpr8:3.96875"
    relu = next(t for t in session.stats.tensors if t.layer == "relu1")
    assert relu.saved_by == ("relu1", "conv2")
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.02, n


def test_relu_then_max_pool_stores_only_the_mask():
    model, x = conv_relu_pool(), batch()
    ref = grads(model, x)
    session = actpack.offload(policy=Policy.auto(min_bytes=0, conv=SFPR8, spatial=SFPR8))
    got = grads(model, x, session)
    relu = next(t for t in session.stats.tensors if t.layer == "relu1")
    assert relu.saved_by == ("relu1", "pool1") and relu.mode == "mask"
    assert relu.stored_bytes < relu.raw_bytes / 24
    # Backward to conv1 reads the model output (for the loss), fc's weight, the pool's
    # indices, the ReLU mask (for ReLU and the pool) and conv1's input; with the output and the
    # input kept, conv1's gradient is exact although fc's input values are lossy.
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.02, n
    session = actpack.offload(policy=Policy.auto(
        min_bytes=0, conv=SFPR8, spatial=SFPR8, rules=[Rule("keep", op=("input", "linear"))]))
    got = grads(model, x, session)
    assert torch.equal(got["conv1.weight"], ref["conv1.weight"])
    assert torch.equal(got["conv1.bias"], ref["conv1.bias"])


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1),
                                  nn.AdaptiveMaxPool2d(5)])
@pytest.mark.parametrize("workers", [0, 2])
def test_max_pool_input_is_stored_as_a_mask_with_exact_gradients(pool, workers):
    # conv -> max pool, no ReLU: the pool's backward reads the saved indices and the input's
    # shape only, so a mask (which says nothing of the values) gives exact gradients.
    model = seeded(3, lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), pool,
                                            nn.Flatten(), nn.LazyLinear(4)))
    x = batch()
    model(x)  # materialize the lazy layer
    ref = grads(model, x)
    session = actpack.offload(policy=MASKS_ONLY, workers=workers)
    got = grads(model, x, session)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    conv_out = next(t for t in session.stats.tensors if t.layer == "1")
    assert conv_out.mode == "mask"


def test_relu_mask_alone_is_used_when_nothing_else_saves_it():
    model, x = relu_only_mask(), batch()
    ref = grads(model, x)
    session = actpack.offload(policy=Policy.auto(min_bytes=0, conv=SFPR8, spatial=SFPR8))
    got = grads(model, x, session)
    assert modes(session)["relu1"] == "mask"
    # conv1's gradient depends on its input (sfpr8) and the exact mask only.
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.02, n


def test_inplace_relu_after_conv():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(inplace=True),
                                torch.nn.Conv2d(8, 4, 3))
    x = batch()
    ref = grads(model, x)
    session = actpack.offload(policy=MASKS_ONLY)
    got = grads(model, x, session)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n


@pytest.mark.parametrize("setting, bound", [("sfpr8:3.96875", 0.02), ("dct:optL", 0.15),
                                            ("eb:0.001", 0.01)])
def test_lossy_settings_give_close_gradients(setting, bound):
    model, x = conv_relu_conv(), batch()
    ref = grads(model, x)
    session = actpack.offload(policy=Policy.auto(conv=setting, spatial=setting, values=setting,
                                                           min_bytes=0))
    got = grads(model, x, session)
    for n in ref:
        assert rel_err(got[n], ref[n]) < bound, (n, rel_err(got[n], ref[n]))


def test_functional_relu_outside_modules_is_masked():
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    x = batch()

    def f():
        y = torch.relu(torch.nn.functional.conv2d(x, w, padding=1))
        return (y * 3).sum()

    f().backward()
    ref, w.grad = w.grad.clone(), None
    with actpack.offload(policy=MASKS_ONLY) as session:
        f().backward()
    assert torch.equal(w.grad, ref)
    assert [t.mode for t in session.stats.activations if t.op == "relu"] == ["mask"]


def test_retain_graph_second_backward_reads_again():
    model, x = conv_relu_pool(), batch()
    with actpack.offload(policy=Policy.auto(min_bytes=0, conv=SFPR8, spatial=SFPR8)):
        loss = (model(x) ** 2).mean()
        g1 = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        g2 = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_backward_after_the_with_block():
    model, x = conv_relu_conv(), batch()
    ref = grads(model, x)
    model.zero_grad()
    with actpack.offload(policy=MASKS_ONLY):
        loss = (model(x) ** 2).mean()
    loss.backward()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, ref[n])


@pytest.mark.parametrize("workers", [0, 2])
def test_op_a_hook_runs_inside_a_max_pool_reads_values(workers):
    # A pre-hook's `x * gate` saves x while the MaxPool module runs; only the pool's own op
    # reads nothing but the shape, so x must come back with its values (it once came back as a
    # mask: gate's gradient became whole-number counts). The pool input stays a mask.
    torch.manual_seed(0)
    gate = torch.rand(1, 8, 1, 1, requires_grad=True)
    pool = nn.MaxPool2d(2)
    pool.register_forward_pre_hook(lambda m, args: (args[0] * gate,))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), pool, nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 4))
    x = batch()

    def step(session):
        gate.grad = None
        got = grads(model, x, session)
        return {**got, "gate": gate.grad.clone()}

    ref = step(None)
    session = actpack.offload(policy=MASKS_ONLY, workers=workers)
    got = step(session)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    saved = {(t.op, t.mode) for t in session.stats.tensors if t.layer == "1"}
    assert ("conv", "keep") in saved  # x, for the gate's product
    assert any(mode == "mask" for _, mode in saved)  # the product, for the pool


def test_a_max_pool_module_that_raises_keeps_its_saves_exact():
    # The claim of a pool whose forward raised is settled without its output: stored as values.
    class Failing(nn.MaxPool2d):
        def forward(self, x):
            super().forward(x * 1.5)
            raise RuntimeError("boom")

    pool = Failing(2)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with actpack.offload(policy=MASKS_ONLY) as session, pytest.raises(RuntimeError, match="boom"):
        pool(x)
    assert all(t.mode != "mask" for t in session.stats.tensors if t.op != "other")
