"""Cycle-accurate throughput and latency of the compress engine (``actpack.hw.compressor``) in
Verilator simulation: values per cycle and cycles to the first output, per mode and lane count,
on typical activations and on worst-case data.

For each mode at lanes 1, 2, 4 the Compressor (float32) compresses tiled tensors with input
always valid and outputs always ready; every output byte is checked against the reference frame
(sim/test_compressor.py in measure mode). Figures:

- values/cycle: padded input values / cycles from the first input transfer to the last output
  transfer (one lane's ceiling is 8);
- latency: cycles from the first input transfer to the first output transfer (an index entry).

Data: ``relu1`` and ``conv1``, activations of the digits CNN (``actpack.data``) on one test
image; ``dense``, uniform noise in [-1, 1] (no zeros; eb at error bound 1e-4, so wide codes and
long blocks); ``raw``, the same noise with a NaN in every block (every block stored RAW, the most
payload bytes; mask mode has no RAW blocks and codes them like ``dense``).

Decompressor rows: ``measure_decompressor`` (sim/test_decompressor.py, ``measure``) on the frame
of the same data and codec: values/cycle over its output (first row to last row), latency from the
first input (index entry or beat) to the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from actpack.bench import add_output_arguments, machine_info, publish, source_info
from actpack.codec.spec import Mode
from actpack.hw.regs import GATEWARE_MODES

__all__ = ["LANES", "MODES", "add_arguments", "measure_compressor", "measure_compressor_cases",
           "measure_decompressor", "run", "workloads"]

MODES = tuple(m.label for m in Mode if m in GATEWARE_MODES)
LANES = (1, 2, 4)
_EB_TYPICAL, _EB_DENSE = 1e-2, 1e-4


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, "rtl")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: mask mode at lanes 1 and 2, a few blocks")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    p.add_argument("--lanes", default=",".join(map(str, LANES)), help="comma-separated lanes")


def _codec(mode: str, error_bound: float = _EB_TYPICAL):
    from actpack.codec import Codec

    if mode == "eb":
        return Codec(mode="eb", error_bound=error_bound, backend="numpy")
    return Codec(mode=mode, backend="numpy")


def workloads(*, quick: bool = False) -> dict[str, torch.Tensor]:
    """The benchmark's tensors (float32): digits-CNN ``relu1`` and ``conv1`` of one image, and
    ``dense`` / ``raw`` noise (see the module docstring); ``quick`` crops them to a few blocks."""
    from actpack.data import capture_activations, digits_batch, digits_cnn

    acts = capture_activations(digits_cnn(seed=0), digits_batch(1).x)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand((1, 8, 32, 32), generator=gen) * 2 - 1
    noise[noise == 0] = 0.5
    raw = noise.clone()
    raw[..., ::8, ::8] = float("nan")
    out = {"relu1": acts["relu1"], "conv1": acts["conv1"], "dense": noise, "raw": raw}
    if quick:
        out = {k: v[:, :1, :16, :16].contiguous() for k, v in out.items()}
    return out


def measure_compressor_cases(mode: str, lanes: int, cases: dict, *, dtype: str = "float32",
                             shared: bool = False):
    """Run the Compressor (one Verilator build per configuration, shared with the tests) on
    ``cases`` (name -> (tensor, codec)) without stalls; per case a dict: ``blocks``, ``values``,
    ``beats``, ``values_per_cycle`` and ``latency`` (cycles, first input to first output),
    ``cycles`` (first input to last output, inclusive). Every output byte is checked.
    ``shared``: run inside the tests' bundled build (``frames.BUNDLE``) when it holds the
    configuration (the other engines there idle; timing is the same, simulation slower)."""
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from actpack.hw.compressor import Compressor
    from actpack.sim.build import build, verilator_bin
    from actpack.sim.frames import BUNDLE, bundle_prefix, compressor_bundle, write_case

    verilator_bin()
    env = {}
    if shared and (mode, dtype, lanes) in BUNDLE:
        sim = build(compressor_bundle, name="compressor_bundle", params={"configs": BUNDLE})
        env["ACTPACK_TB_PREFIX"] = bundle_prefix(mode, dtype, lanes)
    else:
        sim = build(Compressor, name=f"compressor_{mode}_{dtype}_{lanes}",
                    params={"mode": mode, "dtype": dtype, "lanes": lanes})
    with tempfile.TemporaryDirectory() as tmp:
        stim, out = Path(tmp) / "stim", Path(tmp) / "out"
        stim.mkdir()
        out.mkdir()
        for name, (t, codec) in cases.items():
            write_case(stim / f"{name}.npz", t, codec)
        sim.run("actpack.sim.test_compressor", tag=f"bench-{mode}-{lanes}",
                env={**env, "ACTPACK_TB_MODE": mode, "ACTPACK_TB_DTYPE": dtype,
                     "ACTPACK_TB_LANES": str(lanes), "ACTPACK_TB_STIM": str(stim),
                     "ACTPACK_TB_MEASURE": str(out)})
        results = {name: json.loads((out / f"{name}.json").read_text()) for name in cases}
    for r in results.values():
        r["cycles"] = r["last_out"] + 1
        r["values_per_cycle"] = r["values"] / r["cycles"]
        r["latency"] = r["first_out"]
    return results


def measure_compressor(mode: str, lanes: int, data: torch.Tensor, *, codec=None) -> dict:
    """``measure_compressor_cases`` for one tensor (the codec's defaults for ``mode`` unless
    ``codec`` is given): the shape of result ``measure_decompressor`` returns too."""
    cases = {"data": (data, codec if codec is not None else _codec(mode))}
    return measure_compressor_cases(mode, lanes, cases)["data"]


def measure_decompressor(*, mode, lanes, data, dtype="float32", codec=None) -> dict:
    """Run ``Decompressor(mode=mode, dtype=dtype, lanes=lanes)`` (built once, cached by
    ``actpack.sim.build``) under Verilator on the frame of tensor ``data`` (a torch tensor, or
    numpy array, converted to ``dtype``; coded by ``codec``, default ``Codec(mode=mode,
    backend="numpy")``), input always valid and output always ready, every output bit checked.

    Returns ``{"values_per_cycle": 64 * nblocks / output cycles (first row to last row),
    "latency": cycles from the first input transfer (entry or beat) to the first output row,
    "cycles": first input to last output, "blocks": nblocks}``. Needs the Verilator toolchain
    (``tests/hw/conftest.py``)."""
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from actpack.codec import Codec
    from actpack.codec.spec import DType
    from actpack.hw.decompressor import Decompressor
    from actpack.sim.build import build
    from actpack.sim.decompcases import write_case
    from actpack.sim.frames import frame_case

    t = torch.as_tensor(data).to(getattr(torch, dtype))
    codec = codec or Codec(mode=mode, backend="numpy")
    sim = build(Decompressor, name=f"decompressor_{mode}_{dtype}_{lanes}",
                params={"mode": mode, "dtype": dtype, "lanes": lanes})
    with tempfile.TemporaryDirectory() as tmp:
        stim = Path(tmp) / "stim"
        stim.mkdir()
        write_case(stim / "measure.npz", frame_case(t, codec), mode=mode,
                   dtype=DType[dtype.upper()])
        result = Path(tmp) / "result.json"
        sim.run("actpack.sim.test_decompressor", testcase="measure", tag="measure",
                env={"ACTPACK_TB_MODE": mode, "ACTPACK_TB_DTYPE": dtype,
                     "ACTPACK_TB_LANES": str(lanes), "ACTPACK_TB_STIM": str(stim),
                     "ACTPACK_TB_RESULT": str(result)})
        return json.loads(result.read_text())


def _cases(mode: str, tensors: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        if name == "raw" and mode == "mask":
            continue  # mask blocks are never RAW
        eb = _EB_DENSE if name in ("dense", "raw") else _EB_TYPICAL
        out[name] = (t, _codec(mode, eb))
    return out


def _markdown(rows: list[dict], info: dict, quick: bool) -> str:
    lines = [
        "## RTL engines: cycles in simulation (`actpack bench rtl`)",
        "",
        f"{info['date']}, commit {info.get('commit', '?')}; Verilator, float32 inputs, input "
        "always valid and outputs always ready; every output byte checked against the "
        "reference frame. values/cycle = padded input values / cycles from the first input "
        "to the last output; latency = cycles from the first input to the first output."
        + (" **Quick run (--quick): a few blocks; figures are not representative.**"
           if quick else ""),
        "",
        ("| engine | mode | lanes | data | blocks | payload beats | cycles | values/cycle | "
         "latency |"),
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['mode']} | {r['lanes']} | {r['data']} | "
                     f"{r['blocks']} | {r['beats']} | {r['cycles']} | "
                     f"{r['values_per_cycle']:.2f} | {r['latency']} |")
    lines += ["", ("Compressor: values are its input; decompressor: its output (rows of 8 "
                   "values, from the first row out to the last); payload beats are the "
                   "compressor's output.")]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    quick = args.quick
    modes = ("mask",) if quick else tuple(m for m in args.modes.split(",") if m)
    lanes_list = (1, 2) if quick else tuple(int(x) for x in args.lanes.split(",") if x)
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown mode {mode!r}; expected some of {MODES}")
    for lanes in lanes_list:
        if lanes not in LANES:
            raise SystemExit(f"--lanes: {lanes} is not one of {LANES}")
    tensors = workloads(quick=quick)
    rows = []
    for mode in modes:
        for lanes in lanes_list:
            res = measure_compressor_cases(mode, lanes, _cases(mode, tensors), shared=quick)
            for name, r in res.items():
                rows.append({"engine": "compressor", "mode": mode, "lanes": lanes,
                             "data": name, **r})
                print(f"compressor {mode:5s} lanes {lanes} {name:6s}: "
                      f"{r['values_per_cycle']:.2f} values/cycle, latency {r['latency']}")
    for mode in modes:
        for lanes in lanes_list:
            for name, (t, codec) in _cases(mode, tensors).items():
                r = measure_decompressor(mode=mode, lanes=lanes, data=t, codec=codec)
                rows.append({"engine": "decompressor", "mode": mode, "lanes": lanes,
                             "data": name, "beats": "", **r})
                print(f"decompressor {mode:5s} lanes {lanes} {name:6s}: "
                      f"{r['values_per_cycle']:.2f} values/cycle, latency {r['latency']}")
    info = {**machine_info(), **source_info()}
    md = _markdown(rows, info, quick)
    result = {"quick": quick, "machine": info, "rows": rows}
    publish(args, "rtl", md, result)
    return 0
