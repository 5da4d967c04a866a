"""Synthesis: area and post-route Fmax of the engines on an ECP5 LFE5UM5G-85F, out of context.

Each design is elaborated, synthesized with Yosys (``synth_ecp5 -abc9``) and placed and routed
with nextpnr-ecp5 at a 150 MHz target (``actpack.hw.synth``; YoWASP tools, ``pip install -e
.[synth]``). Designs: ``compressor`` and ``decompressor`` (``hw/compressor.py``,
``hw/decompressor.py``; float32) for every ``--mode`` at ``--lanes``, and ``card`` (``hw/card.py``,
the whole card with its default configuration), which is skipped unless named with ``--design
card``: that configuration (every mode and dtype, 12 engine pairs, and a 64 MiB frame buffer,
4 Mi rows of 128 bits in ``FrameBuilder``) is far beyond the part; its elaboration alone ran
for more than 5 minutes and 4.6 GB before it was stopped. ``--xilinx`` adds Artix-7 area
(``synth_xilinx -family xc7``).

Figures per design: LUT4 (of 83,640), TRELLIS_FF, MULT18X18D (of 156), DP16KD (of 208),
LUT-RAM cells, post-route Fmax and the critical path's endpoints. A design that needs more
MULT18X18D/DP16KD than the part has is a ``no-fit`` row, a tool error ``failed``, a design past
``--timeout`` seconds ``timeout``: rows, not crashes. Results are stored under
``build/synth`` by a hash of the RTLIL and the tools and reused (``--force`` reruns; a timeout
is tried again under a longer ``--timeout``).

Target (issue #13): every engine at >= 150 MHz (``--strict``: exit 1 when one placed engine
misses it).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from actpack.bench import add_output_arguments, machine_info, publish, source_info

__all__ = ["CARD_SKIP", "DESIGNS", "add_arguments", "design_rows", "render_markdown",
           "result_row", "run"]

DESIGNS = ("compressor", "decompressor", "card")
_DEFAULT_DESIGNS = ("compressor", "decompressor")
CARD_SKIP = ("skipped: the default card (12 engine pairs, a 64 MiB frame buffer) is far beyond "
             "the part (elaboration alone > 5 min, 4.6 GB); run with --design card to try")
_ROW_KEYS = ("design", "mode", "lanes", "status", "luts", "ffs", "dsps", "brams", "lutram",
             "fmax_mhz", "critical_path", "seconds")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from actpack.codec.spec import Mode
    from actpack.hw.regs import GATEWARE_MODES

    add_output_arguments(p, "synth")
    modes = [m.label for m in Mode if m in GATEWARE_MODES]
    p.add_argument("--design", action="append", choices=DESIGNS, default=None,
                   help="design to synthesize (repeatable; default: compressor and decompressor; "
                        "card only when named)")
    p.add_argument("--mode", action="append", choices=modes, default=None,
                   help=f"engine mode (repeatable; default: all of {', '.join(modes)})")
    p.add_argument("--lanes", type=int, default=1, help="engine lanes (1, 2 or 4; default 1)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds per design before it is recorded as a timeout (default 3600)")
    p.add_argument("--xilinx", action="store_true", help="also Artix-7 area (synth_xilinx)")
    p.add_argument("--force", action="store_true", help="rerun designs with stored results")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a placed engine misses 150 MHz")


def _factory(design: str, mode, lanes: int):
    from actpack.codec.spec import DType

    if design == "compressor":
        from actpack.hw.compressor import Compressor

        return lambda: Compressor(mode=mode, dtype=DType.FLOAT32, lanes=lanes)
    if design == "decompressor":
        from actpack.hw.decompressor import Decompressor

        return lambda: Decompressor(mode=mode, dtype=DType.FLOAT32, lanes=lanes)
    from actpack.hw.card import Card

    return Card


def _jobs(designs, modes, lanes):
    """(design, mode label or None, lanes or None) in run order; the card has no mode."""
    for design in designs:
        if design == "card":
            yield design, None, None
        else:
            for mode in modes:
                yield design, mode, lanes


def design_rows(jobs, *, timeout: float, xilinx: bool, force: bool,
                skipped=()) -> list[dict]:
    """Synthesize each ``(design, mode, lanes)`` of ``jobs`` one at a time under a tqdm bar;
    one JSON row per job (``_ROW_KEYS`` and the rest of ``SynthResult``), then one row per
    ``skipped`` design with status ``skipped: <reason>``."""
    from actpack.codec.spec import Mode
    from actpack.hw.synth import synthesize

    jobs = list(jobs)
    rows = []
    bar = tqdm(jobs, desc="bench synth", unit="design", file=sys.stderr, dynamic_ncols=True)
    for design, mode, lanes in bar:
        name = design if mode is None else f"{design}_{mode}_float32_x{lanes}"
        bar.set_description(name)
        factory = _factory(design, Mode.parse(mode) if mode else None, lanes)
        r = synthesize(factory, name=name, timeout=timeout, xilinx=xilinx, force=force,
                       on_progress=lambda s, bar=bar: bar.set_postfix_str(s[:70], refresh=True))
        row = result_row(design, mode, lanes, r)
        rows.append(row)
        tqdm.write(f"{name}: {_summary(row)}", file=sys.stderr)
    bar.close()
    for design, reason in skipped:
        rows.append({"design": design, "mode": None, "lanes": None, "status": reason,
                     **{k: None for k in _ROW_KEYS[4:]}})
    return rows


def result_row(design: str, mode: str | None, lanes: int | None, result) -> dict:
    """The JSON row of one ``SynthResult``: ``design``, ``mode``, ``lanes`` and every field of
    the result (``status``, ``luts``, ``ffs``, ``dsps``, ``brams``, ``lutram``, ``fmax_mhz``,
    ``critical_path``, ``seconds``, ...)."""
    return {"design": design, "mode": mode, "lanes": lanes, **result.to_json()}


def _summary(r: dict) -> str:
    fmax = f"{r['fmax_mhz']:.1f} MHz" if r.get("fmax_mhz") else "no Fmax"
    cached = ", stored result" if r.get("cached") else ""
    extra = f" ({r['error']})" if r.get("error") else ""
    return (f"{r['status']}{extra}: {r.get('luts')} LUT4, {r.get('ffs')} FF, "
            f"{r.get('dsps')} MULT18X18D, {r.get('brams')} DP16KD, {fmax}, "
            f"{r.get('seconds')} s{cached}")


def _num(v, total=None) -> str:
    if v is None:
        return "–"
    return f"{v:,} ({100 * v / total:.0f} %)" if total else f"{v:,}"


def _path(cp: dict | None) -> str:
    if not cp:
        return "–"
    return (f"`{cp['from']}` → `{cp['to']}` ({cp['delay_ns']:.1f} ns, "
            f"{cp['logic_levels']} logic levels)")


def render_markdown(rows: list[dict], info: dict, *, xilinx: bool) -> str:
    """The ``bench synth`` section of docs/results.md for ``rows`` (``design_rows``)."""
    from actpack.hw.synth import ECP5_PART, FREQ_MHZ

    part = ECP5_PART
    tools = next((r["tools"] for r in rows if r.get("tools")), {})
    lines = [
        "## Synthesis: area and Fmax out of context (`actpack bench synth`)",
        "",
        f"{info['date']}, commit {info.get('commit', '?')}; {info['cpu']}, {info['nproc']} "
        f"cores (load {info['loadavg_1min']:.1f} at the end); "
        + ", ".join(f"{k} {v}" for k, v in tools.items()) + ". "
        f"Part {part['name']} (CABGA381, speed 8): {part['LUT4']:,} LUT4, "
        f"{part['MULT18X18D']} MULT18X18D, {part['DP16KD']} DP16KD. Out of context (ports "
        f"unplaced), `synth_ecp5 -abc9`, nextpnr at a {FREQ_MHZ} MHz target; float32 engines. "
        f"Target: every engine at ≥ {FREQ_MHZ} MHz.",
        "",
        ("| design | mode | lanes | status | LUT4 | FF | MULT18X18D | DP16KD | LUT-RAM | "
        "Fmax (MHz) | critical path | time (s) |"),
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        fmax = "–"
        if r.get("fmax_mhz"):
            fmax = f"{r['fmax_mhz']:.1f}" + ("" if r["fmax_mhz"] >= FREQ_MHZ else " (miss)")
        lines.append(
            f"| {r['design']} | {r['mode'] or '–'} | {r['lanes'] or '–'} | {status} | "
            f"{_num(r.get('luts'), part['LUT4'])} | {_num(r.get('ffs'))} | "
            f"{_num(r.get('dsps'))} | {_num(r.get('brams'))} | {_num(r.get('lutram'))} | "
            f"{fmax} | {_path(r.get('critical_path'))} | {_num(r.get('seconds'))} |")
    lines += ["", ("LUT4: nextpnr's total before packing (logic, carry and LUT-RAM LUTs; "
                   "rows nextpnr did not finish: Yosys' LUT4 cells plus two per CCU2C); "
                  "LUT-RAM: 16×4 TRELLIS_DPR16X4 cells; time: elaboration, Yosys and nextpnr "
                  "on the cores above (run one design at a time). Each design's logs, netlist "
                  "and nextpnr report are in `build/synth/<design>-<key>/`.")]
    if xilinx:
        lines += ["", "Artix-7 area (`synth_xilinx -family xc7 -flatten`, no place and route):",
                  "", ("| design | mode | lanes | LUT | FF | DSP48E1 | RAMB36E1 | RAMB18E1 | "
                      "LUT-RAM/SRL | CARRY4 |"),
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            x = r.get("xilinx")
            if not x:
                continue
            head = f"| {r['design']} | {r['mode'] or '–'} | {r['lanes'] or '–'} | "
            if x.get("status", "ok") != "ok":
                lines.append(head + f"{x['status']}: {x.get('error')} |" + " – |" * 6)
                continue
            lines.append(head + f"{x['luts']:,} | {x['ffs']:,} | {x['dsps']} | {x['ramb36']} | "
                                f"{x['ramb18']} | {x['lutram']} | {x['carry4']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from actpack.codec.spec import Mode
    from actpack.hw.compressor import LANES
    from actpack.hw.regs import GATEWARE_MODES
    from actpack.hw.synth import FREQ_MHZ, ToolchainMissing, toolchain

    if args.lanes not in LANES:
        raise SystemExit(f"--lanes: {args.lanes} is not one of {LANES}")
    try:
        toolchain()
    except ToolchainMissing as exc:
        raise SystemExit(f"bench synth: {exc}") from None
    designs = tuple(dict.fromkeys(args.design or _DEFAULT_DESIGNS))
    modes = tuple(dict.fromkeys(args.mode or [m.label for m in Mode if m in GATEWARE_MODES]))
    skipped = [] if "card" in designs else [("card", CARD_SKIP)]
    rows = design_rows(_jobs(designs, modes, args.lanes), timeout=args.timeout,
                       xilinx=args.xilinx, force=args.force, skipped=skipped)
    info = {**machine_info(), **source_info()}
    result = {"machine": info, "rows": rows}
    publish(args, "synth", render_markdown(rows, info, xilinx=args.xilinx), result)
    missed = [r for r in rows if r["status"] == "ok" and r["fmax_mhz"] is not None
              and r["fmax_mhz"] < FREQ_MHZ]
    return 1 if (args.strict and missed) else 0
