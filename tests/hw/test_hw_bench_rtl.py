"""``actpack bench rtl --quick``: a tiny run of the engine benchmark (mask mode, lanes 1 and 2,
compressor and decompressor) writes its markdown section and JSON with plausible cycle figures."""

import json

from actpack.cli import main


def test_bench_rtl_quick(verilator, tmp_path):
    results, out = tmp_path / "results.md", tmp_path / "rtl.json"
    assert main(["bench", "rtl", "--quick", "--results", str(results), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["engine"], r["mode"], r["lanes"]) for r in rows} == {
        (e, "mask", n) for e in ("compressor", "decompressor") for n in (1, 2)}
    for r in rows:
        # a lane moves at most one row (8 values) a cycle; the compressor's first output needs
        # a whole block in, the decompressor's first row a decoded block
        assert 0 < r["values_per_cycle"] <= 8 * r["lanes"], r
        assert (8 if r["engine"] == "compressor" else 2) <= r["latency"] < r["cycles"], r
    text = results.read_text()
    assert "<!-- bench rtl: begin -->" in text and "| compressor | mask | 2 |" in text
    assert "| decompressor | mask | 2 |" in text
