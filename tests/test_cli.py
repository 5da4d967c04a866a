"""The ``actpack`` command line: ``demo`` and ``bench codec`` run in-process on tiny sizes."""

from __future__ import annotations

import json
import math
import runpy
import sys

import pytest
import torch

import actpack
from actpack.bench import update_results
from actpack.cli import main
from actpack.data import capture_activations, digits_batch, digits_cnn, layer_kinds, train_digits


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "bench" in out


def test_python_m_actpack(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["actpack", "bench", "codec", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("actpack", run_name="__main__")
    assert exc.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_bench_needs_a_benchmark(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench"])
    assert exc.value.code == 2


def test_update_results_keeps_other_sections(tmp_path):
    path = tmp_path / "docs" / "results.md"
    update_results(path, "rtl", "rtl figures")
    update_results(path, "codec", "first")
    update_results(path, "codec", "second")
    text = path.read_text()
    assert text.startswith("# actpack")
    assert "rtl figures" in text and "second" in text and "first" not in text
    assert text.count("<!-- bench codec: begin -->") == 1
    assert text.index("rtl figures") < text.index("second")
    path.write_text(text.replace("<!-- bench codec: end -->", ""))
    with pytest.raises(ValueError, match="unbalanced"):
        update_results(path, "codec", "third")


def test_digits_are_deterministic():
    a, b = digits_cnn(seed=3), digits_cnn(seed=3)
    ra, rb = train_digits(a, 3, seed=1), train_digits(b, 3, seed=1)
    assert ra.losses == rb.losses
    x = digits_batch(4).x
    acts_a, acts_b = capture_activations(a, x), capture_activations(b, x)
    assert list(acts_a) == ["conv1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2"]
    assert all(torch.equal(acts_a[k], acts_b[k]) for k in acts_a)
    assert acts_a["conv1"].shape == (4, 16, 32, 32)
    assert acts_a["relu2"].shape == (4, 32, 16, 16)
    assert layer_kinds(a)["relu1"] == "relu_conv" and layer_kinds(a)["relu3"] == "relu_linear"
    assert float(acts_a["relu1"].min()) >= 0


def test_bench_codec_quick(tmp_path, capsys):
    results = tmp_path / "results.md"
    results.write_text("# mine\n\nkept\n")
    out_json = tmp_path / "out" / "codec.json"
    assert main(["bench", "codec", "--quick", "--results", str(results),
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed or "FAIL" in printed

    text = results.read_text()
    assert text.startswith("# mine\n\nkept\n")
    assert "<!-- bench codec: begin -->" in text and "<!-- bench codec: end -->" in text
    assert "| dct/optH |" in text and "| SZ3/" in text

    data = json.loads(out_json.read_text())
    assert {"meta", "config", "data", "rows", "targets", "checks"} <= set(data)
    assert data["meta"]["nproc"] >= 1 and data["meta"]["torch"] == torch.__version__
    rows = {r["name"]: r for r in data["rows"]}
    expected = {"dct/optL", "dct/optH", "dct/optsL", "dct/optsH", "dct/jpeg50", "sfpr8", "mask",
                "zstd-3"} | {f"{m}/{eb:g}" for m in ("eb", "eb2")
                             for eb in data["data"]["error_bounds"]}
    assert expected <= set(rows)
    assert len(data["data"]["error_bounds"]) == 3
    for r in data["rows"]:
        assert r["ratio"] > 1, r["name"]
        assert math.isfinite(r["rel_rmse"]) and r["rel_rmse"] >= 0, r["name"]
        assert r["compress_mbps"] > 0 and r["decompress_mbps"] > 0, r["name"]
        if r["family"] == "actpack":
            assert r["numpy_identical"] is True, r["name"]
            assert r["numpy_compress_mbps"] > 0, r["name"]
    for eb in data["data"]["error_bounds"]:
        assert rows[f"eb/{eb:g}"]["max_abs_err"] <= eb
    assert rows["zstd-3"]["max_abs_err"] == 0
    assert rows["mask"]["layers"] == ["relu1", "relu2", "relu3"]
    assert rows["mask"]["max_abs_err"] == 0
    assert rows["dct/optH"]["by_kind"]["relu_conv"]["ratio"] > 1
    assert rows["dct/optH"]["rel_rmse"] < 0.5
    assert all(ch["pass"] for ch in data["checks"])
    names = [t["name"] for t in data["targets"]]
    assert any("ReLU'd conv" in n for n in names)
    assert sum("beats SZ3" in n for n in names) == 6
    # eb2 against SZ3 on both models: ratio per kind and bound, throughput per bound
    assert sum("x SZ3's" in n for n in names) == 2 * 3 * 2
    assert sum("MB/s >= SZ3's" in n for n in names) == 2 * 3 * 2
    second = data["second_model"]
    assert {la["kind"] for la in second["layers"]} == {"conv", "relu_conv"}
    rows2 = {r["name"]: r for r in second["rows"]}
    for eb in second["error_bounds"]:
        for m in ("eb", "eb2", "SZ3"):
            assert rows2[f"{m}/{eb:g}"]["max_abs_err"] <= eb
        assert rows2[f"eb2/{eb:g}"]["numpy_identical"] is True
    assert "Second model" in text


def test_demo_quick(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--quick", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "without actpack" in out and "with actpack" in out
    peak = float(out.split("peak of saved activations ")[1].split("x lower")[0])
    ratio = float(out.split("x lower (")[1].split("x fewer bytes saved")[0])
    assert ratio > 8  # the offload issue's goal for policy "auto" on this CNN
    # the peak falls less: the largest tensor (relu1's 4 MiB) is resident while it is stored
    assert 2 < peak < ratio
    assert "relu1" in out and " mask " in out and "lossless" in out  # the per-layer table
    assert "byte for byte" in out and "dct/optH" in out  # the codec section
    for path in (png, tmp_path / "demo-codec.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_device_that_is_not_there_says_so(capsys):
    assert main(["demo", "--quick", "--device", "nope", "--no-plot"]) == 2
    assert "unknown device 'nope'" in capsys.readouterr().out


class _Flaky:
    """A device whose frames decode to slightly different values from the second tensor on."""

    name = "flaky"

    def __init__(self):
        self.calls = 0

    def compress(self, tensor, codec):
        self.calls += 1
        return codec.compress(tensor * 1.01 if self.calls > 1 else tensor)

    def decompress(self, frame, *, device):
        return actpack.decompress(frame, device=device)


def test_check_device_agreement_and_disagreement(monkeypatch):
    from actpack.demo import check_device
    from actpack.host import device

    # registered for this test only
    monkeypatch.setitem(device._FACTORIES, "ref_copy", device.RefDevice)
    monkeypatch.setitem(device._FACTORIES, "flaky", _Flaky)
    assert check_device("ref_copy", seed=0, steps=1) == []
    problems = check_device("flaky", seed=0, steps=1)
    assert problems and any("gradient of" in p for p in problems)


def test_bench_offload_quick(tmp_path):
    results, out_json = tmp_path / "results.md", tmp_path / "offload.json"
    results.write_text("# mine\n")
    assert main(["bench", "offload", "--quick", "--results", str(results),
                 "--json", str(out_json)]) == 0
    text = results.read_text()
    assert text.startswith("# mine\n") and "<!-- bench offload: begin -->" in text
    assert "| digits CNN |" in text and "| ResNet-18 |" in text
    data = json.loads(out_json.read_text())
    rows = {r["model"]: r for r in data["models"]}
    assert rows["digits CNN"]["ratio"] > 8  # what "auto" stores: masks, dct, narrowed indices
    for r in rows.values():
        assert r["raw_bytes"] > r["stored_bytes"] > 0
        assert set(r["step_ms"]) == {"plain", "offload, 2 workers", "offload, inline",
                                     "card, host side"}
        assert all(ms > 0 for ms in r["step_ms"].values())
    assert "mask" in rows["ResNet-18"]["modes"] and "lossless" in rows["ResNet-18"]["modes"]
    assert 0 < data["accuracy"]["plain"] <= 1 and 0 < data["accuracy"]["offload"] <= 1
    grads = {g["model"]: g for g in data["gradients"]}
    assert set(grads) >= {"digits CNN", "ResNet-18", "bn_resnet", "mobile_net", "attention"}
    for g in grads.values():
        assert g["parameters"] > 0 and 0 <= g["rel_l2"] < 1 and -1 <= g["min_cosine"] <= 1
        assert g["peak_raw_bytes"] >= g["peak_resident_bytes"] >= g["peak_stored_bytes"] > 0
        assert min(g["process_peak_plain"], g["process_peak_offload"], g["process_peak_inline"]) > 0
    assert "| bn_resnet |" in text and "min gradient cosine" in text
    assert len(data["targets"]) == 7 + 2 * len(grads)
