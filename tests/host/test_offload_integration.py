"""actpack.offload with the rest of PyTorch: autocast, checkpoint, torch.compile, DDP."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from offload_testlib import batch, conv_relu_conv, conv_relu_pool, grads, modes, rel_err
from torch import nn
from torch.utils.checkpoint import checkpoint

import actpack
from actpack import Policy
from actpack.host.policy import SFPR8_FULL_RANGE

MASKS_ONLY = Policy.auto(conv="keep", spatial="keep", values="keep", min_bytes=0)
# The lossy setting these tests check gradients against: their inputs are random, and optH (the
# "auto" DCT table) is for real activations (see test_offload_training).
SFPR8 = f"sfpr8:{SFPR8_FULL_RANGE}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    model, x = conv_relu_conv(), batch()

    def step(session=None):
        model.zero_grad(set_to_none=True)
        ctx = session if session is not None else torch.autograd.graph.saved_tensors_hooks(
            lambda t: t, lambda t: t)
        with ctx, torch.autocast("cpu", dtype=dtype):
            (model(x).float() ** 2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = step()
    exact = actpack.offload(policy=MASKS_ONLY)
    got = step(exact)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    relu = next(t for t in exact.stats.tensors if t.layer == "relu1")
    assert relu.dtype == dtype and relu.mode == "keep"
    # autocast's low-precision copies of the weights are parameters: kept, not counted
    casts = [t for t in exact.stats.tensors if t.op == "parameter"]
    assert casts and all(t.mode == "keep" for t in casts)

    auto = actpack.offload(policy=Policy.auto(min_bytes=0, conv=SFPR8, spatial=SFPR8))
    got = step(auto)
    assert modes(auto)["relu1"] == "mask+sfpr8:3.96875"
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.03, n


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1))
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(8 * 32 * 32, 10)

    def forward(self, x):
        y = self.relu1(self.conv1(x))
        y = checkpoint(self.block, y, use_reentrant=self.reentrant)
        return self.head(self.relu2(y).flatten(1))


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_inside(reentrant):
    torch.manual_seed(0)
    model, x = Checkpointed(reentrant), batch()
    x.requires_grad_(reentrant)  # reentrant checkpoint needs an input that requires grad
    ref = grads(model, x)
    exact = actpack.offload(policy=MASKS_ONLY)
    got = grads(model, x, exact)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    auto = actpack.offload()
    got = grads(model, x, auto)
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.02, n
    st = auto.stats
    # The checkpointed block saves nothing through actpack in forward ...
    assert not any(t.layer.startswith("block.") and t.op != "parameter" for t in st.tensors)
    # ... its recomputation in backward is passed through (reentrant) or handled by
    # checkpoint's own hooks (non-reentrant).
    assert (st.passed > 0) == reentrant
    m = modes(auto)
    # The block's input is what the checkpoint recomputes from: kept exact (Policy.auto's
    # checkpoint_inputs), and then it serves relu1's backward too.
    assert m["relu1"] == "keep"
    relu1 = next(t for t in st.tensors if t.layer == "relu1")
    assert relu1.context == "checkpoint" and relu1.saved_by == ("relu1", "<Checkpointed>")
    # relu2's output reaches the head as a flattened view: a mask for relu2, values for head.
    assert m["relu2"] == "mask" and m["head"] == "sfpr8:3.96875"


def _compiled(model, how):
    if how == "torch.compile(model)":
        return torch.compile(model, backend="aot_eager")
    model.compile(backend="aot_eager")
    return model


@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()"])
def test_torch_compile_works_and_says_what_it_loses(how):
    torch._dynamo.reset()
    model, x = conv_relu_pool(), batch()
    ref = grads(model, x)
    compiled = _compiled(model, how)
    session = actpack.offload()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grads(compiled, x, session)
    for w in caught:  # anything else is torch's note about global module hooks
        assert w.category is actpack.CompileWarning or "global hooks" in str(w.message)
    for n, g in got.items():
        assert rel_err(g, ref[n.removeprefix("_orig_mod.")]) < 0.15, n
    st = session.stats
    assert st.ratio > 1.5
    warned = [str(w.message) for w in caught if w.category is actpack.CompileWarning]
    if how == "torch.compile(model)":
        # AOTAutograd's compiled function saves the tensors: actpack says what it cannot see.
        [message] = warned
        assert "torch.compile region" in message and "never stores a ReLU mask" in message
        assert {t.context for t in st.tensors if t.op != "parameter"} >= {"compiled"}
        assert not any("mask" in t.mode for t in st.tensors)
    else:
        # With saved-tensor hooks active, Dynamo runs module.compile()'s ops eagerly here
        # (torch 2.13): actpack sees every op (module names are lost, so the pool's save is
        # not known to read only the shape: values are stored too), nothing to warn about.
        assert warned == []
        assert "mask+dct:optL" in {t.mode for t in st.tensors}
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = conv_relu_pool(seed=0)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = batch(seed=rank, n=4)
        results = {}
        for name in ("plain", "offload"):
            ddp.zero_grad(set_to_none=True)
            session = actpack.offload() if name == "offload" else None
            if session is None:
                (ddp(x) ** 2).mean().backward()
            else:
                with session:
                    (ddp(x) ** 2).mean().backward()
            results[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
        results["layers"] = [t.layer for t in session.stats.activations]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_two_processes_gloo(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
             join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name in res[0]["plain"]:
        # DDP averaged the gradients: every rank holds the same ones ...
        assert torch.equal(res[0]["offload"][name], res[1]["offload"][name])
        # ... and they are close to the gradients without actpack.
        assert rel_err(res[0]["offload"][name], res[0]["plain"][name]) < 0.02, name
    # layer names are the model's own, without DDP's "module." prefix
    assert "relu1" in res[0]["layers"] and not any(n.startswith("module.")
                                                   for n in res[0]["layers"])


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_offloads_to_host_frames():
    model, x = conv_relu_pool().cuda(), batch().cuda()
    ref = grads(model, x)
    exact = actpack.offload(policy=MASKS_ONLY)
    got = grads(model, x, exact)
    for n in ref:
        assert torch.equal(got[n], ref[n]), n
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # a non-default stream: workers follow it
        auto = actpack.offload()
        got = grads(model, x, auto)
    torch.cuda.synchronize()
    for n in ref:
        assert rel_err(got[n], ref[n]) < 0.02, n
    assert modes(auto)["relu1"] == "mask+sfpr8:3.96875"
