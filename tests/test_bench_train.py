"""actpack bench train: rows, figures and the peers it compares against."""

from __future__ import annotations

import json

import torch

from actpack.bench.train import int8_hooks
from actpack.cli import main
from actpack.host.peak import tracked_hooks


def test_int8_peer_stores_a_quarter_and_rounds_to_nearest():
    x = torch.randn(64, 1024, requires_grad=True)
    inner = int8_hooks()()
    hooks = tracked_hooks(inner.pack_hook, inner.unpack_hook)
    with hooks:
        y = torch.sigmoid(x)  # saves its 256 KiB output
    assert 0 < hooks.memory.live < 0.3 * y.numel() * 4
    w = torch.randn_like(y)
    (y * w).sum().backward()  # multiplication by w saves y too: exact there
    ref = torch.sigmoid(x.detach())
    exact = w * ref * (1 - ref)
    assert 0 < float((x.grad - exact).abs().max()) < 0.01


def test_bench_train_quick(tmp_path):
    results, out = tmp_path / "results.md", tmp_path / "train.json"
    assert main(["bench", "train", "--quick", "--models", "digits CNN", "--rows",
                 "baseline,checkpoint,int8,auto", "--results", str(results), "--json",
                 str(out), "--plot", str(tmp_path / "train.png")]) == 0
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"baseline", "checkpoint", "int8", "auto"}
    for r in rows.values():
        assert r["model"] == "digits CNN" and r["seeds"] == 1
        assert r["peak_activation_bytes"] > 0 and r["step_time_s"] > 0
        assert r["step_peak_bytes"] > 0
        assert 0 < r["test_metric"] <= 1
    base = rows["baseline"]
    assert rows["auto"]["saved_bytes"] < base["saved_bytes"] / 4
    # pool indices stay int64, and a tensor two ops save (ReLU and max pooling) is quantized
    # twice: the peer holds about two thirds
    assert rows["int8"]["saved_bytes"] < 0.7 * base["saved_bytes"]
    assert rows["checkpoint"]["saved_bytes"] < 0.6 * base["saved_bytes"]  # segment inputs
    # the saved-activation peak, measured from the storages, not the step's total
    assert rows["auto"]["peak_activation_bytes"] < base["peak_activation_bytes"] / 10
    assert base["peak_activation_bytes"] < base["step_peak_bytes"]
    assert rows["auto"]["step_peak_bytes"] < base["step_peak_bytes"]
    assert base["saved_bytes"] <= base["peak_activation_bytes"]
    assert "| digits CNN | auto |" in results.read_text()
    assert (tmp_path / "train.png").read_bytes()[:4] == b"\x89PNG"
    assert any("digits CNN, auto" in t["name"] for t in data["targets"])


def test_the_plan_row_plans_for_a_tenth_of_the_baselines_saved_activation_peak():
    from dataclasses import replace

    from actpack.bench.train import tasks, train_row

    task = replace(tasks(quick=True)[0], steps=2)
    row = train_row(task, "plan", 0)
    # on the digits CNN a tenth is within reach (masks, lossless pool indices, codecs)
    assert 0 < row["plan_target_bytes"] == row["budget_bytes"]
    assert row["planned_peak_bytes"] <= row["budget_bytes"]
    # the plan made on the first weights still holds after training on them
    assert row["peak_activation_bytes"] <= 1.05 * row["budget_bytes"]
