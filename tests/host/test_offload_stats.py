"""What a session stores and reports: dedup, kept tensors, byte figures, table, plot."""

from __future__ import annotations

import io

import pytest
import torch
from offload_testlib import batch, conv_relu_conv, conv_relu_pool, grads, modes

import actpack
from actpack import Policy, Rule
from actpack.host.policy import SavedInfo, op_kind
from actpack.models import GRADIENT_MODELS


def test_tensor_saved_twice_is_stored_once():
    x = torch.randn(64, 64, 32, requires_grad=True)
    with actpack.offload(policy=Policy.auto(min_bytes=0)) as session:
        y = x * 1.5
        (y.sin() + y.cos()).sum().backward()  # sin and cos both save y
    st = session.stats
    [t] = [t for t in st.activations if t.shape == (64, 64, 32)]
    assert t.saved_by == ("<top level>",) and t.mode == "sfpr8:3.96875"
    assert st.saves == 2 and st.deduplicated == 1 and len(st.tensors) == 1
    assert st.raw_bytes == y.numel() * 4  # counted once
    assert st.stored_bytes == t.stored_bytes < st.raw_bytes


def _attention_probabilities(policy):
    """Softmax probabilities (saved by softmax as 4-D, by the matmul as a 3-D reshape), one
    step under ``policy``: the session and the inputs' gradients."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 4, 64, 64, generator=g, requires_grad=True)
    values = torch.randn(32, 64, 16, generator=g, requires_grad=True)
    with actpack.offload(policy=policy, workers=0) as session:
        p = torch.softmax(scores, -1)
        torch.bmm(p.view(32, 64, 64), values).square().sum().backward()
    return session, scores.grad, values.grad


def test_a_reshape_saved_with_the_same_setting_shares_the_frame():
    session, gs, gv = _attention_probabilities(Policy([], default="eb:0.0001"))
    st = session.stats
    assert [t.shape for t in st.activations if t.raw_bytes == 8 * 4 * 64 * 64 * 4] == [
        (8, 4, 64, 64)]  # the (32, 64, 64) view is not stored again
    assert st.deduplicated == 1
    _, plain_s, plain_v = _attention_probabilities("keep")
    for got, plain in ((gs, plain_s), (gv, plain_v)):
        assert torch.nn.functional.cosine_similarity(got.flatten(), plain.flatten(), 0) > 0.999


def test_a_reshape_with_another_setting_gets_its_own_frame():
    policy = Policy([Rule("sfpr8", where=lambda info: len(info.shape) == 3)],
                    default="eb:0.0001")
    st = _attention_probabilities(policy)[0].stats
    modes = {t.shape: t.mode for t in st.activations if t.raw_bytes == 8 * 4 * 64 * 64 * 4}
    assert modes == {(8, 4, 64, 64): "eb:0.0001", (32, 64, 64): "sfpr8"}


def test_relu_and_next_layer_share_one_record():
    model, x = conv_relu_conv(), batch()
    session = actpack.offload(policy="auto")
    grads(model, x, session)
    st = session.stats
    relu = [t for t in st.tensors if t.layer == "relu1"]
    assert len(relu) == 1 and relu[0].saved_by == ("relu1", "conv2")
    assert st.deduplicated == 1


def test_stats_figures_and_modes_on_a_small_cnn():
    model, x = conv_relu_pool(), batch(n=16)
    session = actpack.offload()  # policy="auto"
    grads(model, x, session)
    st = session.stats
    m = modes(session)
    assert m["conv1"] == "sfpr8:3.96875"  # conv1's input: 16x3x32x32 float32 = 192 KiB
    assert m["relu1"] == "mask"  # read by ReLU (its sign) and the pool (its shape) only
    assert m["pool1"] == "lossless"  # int64 indices of a 2x2 pool: 2 bits each, exact
    by_label = {(t.label, t.op): t for t in st.tensors}
    indices = by_label["pool1", "input"]
    assert indices.dtype == torch.int64 and indices.stored_bytes == indices.raw_bytes // 32
    # fc saves the flattened pool output (64 KiB: compressed) and its weight (a parameter).
    assert by_label["fc", "pool"].mode.startswith("sfpr8")
    assert by_label["fc", "parameter"].mode == "keep"
    assert st.parameter_bytes == sum(p.numel() * 4 for n, p in model.named_parameters()
                                     if n.endswith("weight"))
    # Totals are over activations; each distinct tensor once.
    acts = st.activations
    assert st.raw_bytes == sum(t.raw_bytes for t in acts)
    assert st.stored_bytes == sum(t.stored_bytes for t in acts)
    assert st.kept_bytes == sum(t.raw_bytes for t in acts if t.mode == "keep")
    assert 8 < st.ratio < 30
    # The whole step is released by backward; peaks are what the step held at most.
    assert all(t.freed_at is not None for t in st.tensors)
    assert st.timeline[-1][1:] == (0, 0, 0)
    assert st.peak_raw_bytes == st.raw_bytes  # every tensor alive at the end of forward
    assert st.peak_stored_bytes == st.stored_bytes
    assert st.peak_stored_bytes <= st.peak_resident_bytes <= st.peak_raw_bytes
    layers = {(ls.layer, ls.op): ls for ls in st.layers}
    assert layers["relu1", "relu"].saved_by == ("relu1", "pool1")
    assert layers["relu1", "relu"].ratio > 24


def test_small_and_non_float_tensors_are_kept():
    x = torch.randn(4, 4, requires_grad=True)
    idx = torch.tensor([0, 2])
    big = torch.randn(128, 256, requires_grad=True)
    with actpack.offload() as session:  # default min_bytes 64 KiB
        ((x * 1).sin().sum() + big.index_select(0, idx).sum() + (big * 2).exp().sum()).backward()
    st = session.stats
    small = [t for t in st.activations if t.shape == (4, 4)]
    ints = [t for t in st.activations if t.dtype == torch.int64]
    large = [t for t in st.activations if t.shape == (128, 256)]
    assert small and all(t.mode == "keep" for t in small)
    assert ints and all(t.mode == "keep" for t in ints)
    # (big * 2).exp() saves its result (128 KiB)
    assert [t.mode for t in large if t.op != "parameter"] == ["sfpr8:3.96875"]


def test_float64_and_views_are_handled():
    x = torch.randn(64, 256, dtype=torch.float64, requires_grad=True)
    y = torch.randn(256, 128, requires_grad=True)
    with actpack.offload(policy=Policy(default="eb:0.001", min_bytes=0)) as session:
        (x * 2).sin().sum().backward()
        z = (y * 1).t()  # a transposed (dense, non-contiguous) view
        grad = torch.autograd.grad(z.sin().sum(), y)[0]
    assert [t.mode for t in session.stats.activations if t.dtype == torch.float64] == ["keep"]
    assert [t.mode for t in session.stats.activations if t.shape == (128, 256)] == ["eb:0.001"]
    assert torch.allclose(grad, y.detach().cos(), atol=2e-3)
    # an expanded tensor overlaps itself: kept
    w = torch.randn(64, 1, requires_grad=True)
    with actpack.offload(policy=Policy(min_bytes=0)) as session:
        (w * 1).expand(64, 512).sin().sum().backward()
    assert [t.mode for t in session.stats.activations] == ["keep"]


def test_report_table_and_plot(tmp_path):
    model, x = conv_relu_pool(), batch()
    session = actpack.offload()
    grads(model, x, session)
    out = io.StringIO()
    text = session.report(file=out)
    assert out.getvalue() == text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "op", "saved"]
    assert any(line.startswith("relu1 ") and " mask " in line for line in lines)
    assert any(line.startswith("total ") for line in lines)
    assert "peak of saved tensors" in lines[-1]
    path = tmp_path / "saved.png"
    session.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_prints_to_stdout(capsys):
    session = actpack.offload()
    grads(conv_relu_conv(), batch(), session)
    text = session.report()
    assert capsys.readouterr().out == text


def test_session_reentered_adds_up():
    model, x = conv_relu_conv(), batch()
    session = actpack.offload()
    grads(model, x, session)
    one = session.stats
    grads(model, x, session)
    two = session.stats
    assert two.raw_bytes == 2 * one.raw_bytes
    assert two.stored_bytes == 2 * one.stored_bytes  # deterministic codec
    assert two.peak_raw_bytes == one.peak_raw_bytes  # steps do not overlap
    assert [ls.count for ls in two.layers] == [2 * ls.count for ls in one.layers]


def test_max_pending_bytes_bounds_resident_memory():
    model, x = conv_relu_pool(), batch(n=32)
    free = actpack.offload(max_pending_bytes=None)
    grads(model, x, free)
    bounded = actpack.offload(max_pending_bytes=0)  # wait for each compression
    grads(model, x, bounded)
    a, b = free.stats, bounded.stats
    assert b.stored_bytes == a.stored_bytes
    biggest = max(t.raw_bytes for t in b.activations)
    assert b.peak_resident_bytes <= b.peak_stored_bytes + biggest


@pytest.mark.parametrize("name", ["bn_resnet", "attention"])
def test_the_default_session_keeps_the_resident_peak_near_the_stored_peak(name):
    # Workers lag behind forward; by default a save waits while the bytes pending compression
    # would pass half of what is stored, so the peak users feel follows the stored one.
    model, x = GRADIENT_MODELS[name]()
    unbounded = actpack.offload(max_pending_bytes=None)
    bounded = actpack.offload()
    for session in (unbounded, bounded):
        torch.manual_seed(0)  # the same dropout masks
        with session:
            (model(x) ** 2).mean().backward()
    a, b = unbounded.stats, bounded.stats
    assert b.stored_bytes == a.stored_bytes
    biggest = max(t.raw_bytes for t in b.activations)
    assert b.peak_resident_bytes <= 1.5 * b.peak_stored_bytes + biggest


def test_policy_rules_by_module_type_shape_and_function():
    model, x = conv_relu_pool(), batch()
    pol = Policy.auto(rules=[Rule("keep", module="conv*"),
                             Rule("eb:0.01", module_type="Linear", min_bytes=1)])
    session = actpack.offload(policy=pol)
    grads(model, x, session)
    m = modes(session)
    assert m["conv1"] == "keep" and m["fc"] == "eb:0.01"

    seen: list[SavedInfo] = []

    def choose(info: SavedInfo):
        seen.append(info)
        return "mask" if info.mask_only else "keep"

    session = actpack.offload(policy=choose)
    grads(conv_relu_conv(), x, session)
    assert modes(session)["relu1"] == "keep"  # conv2 needs values: asked again, "keep"
    relu_infos = [i for i in seen if i.layer == "relu1"]
    assert [i.mask_only for i in relu_infos] == [True, False]
    assert relu_infos[0].op == "relu" and relu_infos[0].grad_fn == "ReluBackward0"
    assert relu_infos[0].module_type == "ReLU"


def test_a_rule_gives_a_setting_per_tensor():
    model, x = conv_relu_pool(), batch()
    rule = Rule(lambda info: f"eb:{0.01 * info.shape[1]:g}", module=("conv1", "fc"))
    session = actpack.offload(policy=Policy.auto(rules=[rule], min_bytes=1))
    grads(model, x, session)
    ruled = [t for t in session.stats.tensors if t.layer in ("conv1", "fc") and t.mode != "keep"]
    assert {t.layer for t in ruled} == {"conv1", "fc"}
    assert all(t.mode == f"eb:{0.01 * t.shape[1]:g}" for t in ruled), ruled
    assert len({t.mode for t in ruled}) > 1


def test_policy_strings_and_errors():
    model, x = conv_relu_conv(), batch()
    for policy, mode in [("keep", "keep"), ("sfpr8", "sfpr8"), ("dct:optH", "dct:optH")]:
        session = actpack.offload(policy=Policy(default=policy, min_bytes=0)
                                  if policy != "keep" else policy)
        grads(model, x, session)
        assert modes(session)["relu1"] == mode
    with pytest.raises(ValueError, match="setting 'dct:nope'"):
        Policy(default="dct:nope")
    with pytest.raises(ValueError, match="only exact for ReLU"):
        Policy(default="mask")
    with pytest.raises(ValueError, match="unknown op kind"):
        Rule("keep", op="convolution")
    with pytest.raises(TypeError, match="policy"):
        actpack.offload(policy=3)
    with pytest.raises(ValueError, match="workers"):
        actpack.offload(workers=-1)
    with pytest.raises(ValueError, match="integers"):
        Policy(integers="narrow")

    def always_mask(info):
        return "mask"

    with pytest.raises(ValueError, match="'mask' would make its gradient wrong"):
        grads(model, x, actpack.offload(policy=always_mask))


def test_op_kinds():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3)
    assert op_kind(conv(x).grad_fn) == "conv"
    assert op_kind(conv(x).view(2, -1).grad_fn) == "conv"  # views looked through
    assert op_kind(torch.relu(x).grad_fn) == "relu"
    assert op_kind(torch.nn.functional.max_pool2d(x, 2).grad_fn) == "pool"
    assert op_kind(torch.nn.functional.batch_norm(x, None, None, training=True).grad_fn) == "norm"
    assert op_kind((x + x).grad_fn) == "sum"
    assert op_kind(conv.weight.t().grad_fn if conv.weight.dim() == 2 else
                   conv.weight.view(4, -1).grad_fn) == "parameter"
    assert op_kind(x.sin().grad_fn) == "other"
    assert op_kind(None) == "input"


@pytest.mark.parametrize("workers, prefetch", [(1, 0), (2, 1), (3, 8)])
def test_workers_and_prefetch_do_not_change_results(workers, prefetch):
    model, x = conv_relu_pool(), batch()
    ref_session = actpack.offload()
    ref = grads(model, x, ref_session)
    session = actpack.offload(workers=workers, prefetch=prefetch)
    for _ in range(3):
        got = grads(model, x, session)
        for n in ref:
            assert torch.equal(got[n], ref[n]), n  # the codec is deterministic
    assert session.stats.stored_bytes == 3 * ref_session.stats.stored_bytes
    # everything was released: nothing left alive, no frame held
    assert not session._live and not session._by_key
    assert all(s.frame is None and s.tensor is None
               for r in session._history for s in (r.mask, r.values) if s is not None)


def test_workers_auto_is_inline_for_cpu_tensors_on_ref_and_threads_for_a_card():
    # CPU training on the software codec: threads only compete with training for the cores
    # and keep more alive at once (docs/offload.md); a card's I/O overlaps with compute.
    model, x = conv_relu_pool(), batch()
    session = actpack.offload()
    grads(model, x, session)
    assert session._pool is None and not any(r.threaded for r in session._history)
    card = actpack.offload(device="model")
    grads(model, x, card)
    assert card._pool is not None and any(r.threaded for r in card._history)
    assert card.stats.stored_bytes == session.stats.stored_bytes  # the same bytes either way


def test_observers_see_every_save_read_and_release_of_a_record():
    class Log:
        def __init__(self):
            self.events = []

        def saved(self, rec, t, modules):
            self.events.append(("saved", rec.seq, tuple(t.shape), len(modules)))

        def read(self, rec):
            self.events.append(("read", rec.seq))

        def freed(self, rec):
            self.events.append(("freed", rec.seq))

    x = torch.randn(64, 64, 32, requires_grad=True)
    session, log = actpack.offload(policy="keep"), Log()
    session.observe(log)
    with session:
        y = x * 1.5
        z = y.sin() + y.cos()  # sin and cos both save y: one record, two saves
        [rec] = session.records()
        assert torch.equal(rec.tensor, y) and rec.alive
        z.sum().backward()
    assert session.records() == [] and session.records(live=False) == [rec]
    seq = rec.seq
    assert log.events.count(("saved", seq, (64, 64, 32), 0)) == 2
    assert log.events.count(("read", seq)) == 2
    assert log.events[-1] == ("freed", seq) and log.events.count(("freed", seq)) == 1
