"""PCIe boards with the Xilinx XDMA core: Vivado build plans of the card.

``PcieBoard.plan(out_dir, config)`` writes a complete non-project Vivado build through Amaranth's
``XilinxPlatform`` (``platform.build(..., do_build=False)``):

- ``<top>.v``: the top (``XdmaTop``) and the card (``hw.card.Card`` of ``config``) as Verilog;
- ``xdma_ip.tcl``: ``create_ip -name xdma`` with ``xdma_settings(link)``: AXI-Stream mode, one
  H2C and one C2H channel, the AXI-Lite master (``M_AXI_LITE``, the BAR the driver maps as
  ``/dev/xdma0_user``), the board's lanes, generation, reference clock and AXI width;
  ``<top>.tcl`` sources it after reading the sources and synthesizes the IP;
- ``<top>.xdc``: the PCIe reference clock, PERST#, CLKREQ# and lane pins from the board's
  platform (and its clock constraint), ``board.xdc``: the board's configuration settings and a
  false path from the asynchronous PERST#;
- ``<top>.tcl`` and ``build_<top>.sh`` (``vivado -mode batch``): synthesis, placement, routing,
  timing and utilisation reports (``<top>_timing.rpt``, ``<top>_utilization_place.rpt``) and the
  bitstream (``<top>.bit``, plus what the board adds, e.g. a flash image);
- ``README.md`` (how to build and load it), ``report.json`` and ``summary.txt``.

The top: ``IBUFDS_GTE2`` on the reference clock into the XDMA core's ``sys_clk``, PERST# into
``sys_rst_n``; the card runs in the core's ``axi_aclk`` domain, held in reset by
``~axi_aresetn``. The card's ports (``hw.card.card_ports``) are wired to the core by name: its
``bus`` (AXI4-Lite) to ``m_axil_<signal>``, ``h2c`` to ``m_axis_h2c_t<field>_0`` / ``_tvalid_0``
/ ``_tready_0``, ``c2h`` to ``s_axis_c2h_..._0``, ``irq`` to ``usr_irq_req``; ``user_lnk_up``
lights the first LED. The card's stream width is the core's (``link.axi_bits``), so no width
converter sits between them: the card's own ``AxisToBeats`` / ``BeatsToAxis`` take any width of
8 to 64 bytes to its 16-byte beats.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring

from actpack.hw.axis import axis_layout
from actpack.hw.beats import BEAT_BYTES
from actpack.hw.card import Card, card_ports
from actpack.hw.regs import CardConfig

from . import Board, BuildReport, Plan, ToolchainMissing

__all__ = ["XDMA_MODULE", "PcieBoard", "XdmaLink", "XdmaTop", "vivado_figures", "xdma_ports",
           "xdma_settings"]

XDMA_MODULE = "xdma_0"  # the IP's module name in xdma_ip.tcl and the top's instance
_GEN_RATE = {1: "2.5_GT/s", 2: "5.0_GT/s", 3: "8.0_GT/s"}
# MB/s a lane carries a direction after 8b/10b (Gen1/2) or 128b/130b (Gen3) coding, before
# packet overheads (design.md's link table: practical XDMA rates are ~80 % of these).
_LANE_MB_S = {1: 250.0, 2: 500.0, 3: 984.6}


@dataclass(frozen=True)
class XdmaLink:
    """One board's PCIe link as the XDMA core is set up for it: ``gen`` (1..3), ``lanes``,
    the user-side AXI width ``axi_bits`` at ``axi_mhz`` (the card's clock), the reference clock,
    the PCIe block's site and the device ID the ``xdma`` driver matches (PG195: 0x70<gen><lanes>
    by default, e.g. 7024 for Gen2 x4)."""

    gen: int
    lanes: int
    axi_bits: int
    axi_mhz: int
    refclk_mhz: int = 100
    pcie_blk_locn: str = "X0Y0"
    device_id: str | None = None

    def __post_init__(self):
        if self.gen not in _GEN_RATE:
            raise ValueError(f"gen: 1, 2 or 3, got {self.gen!r}")
        if self.lanes not in (1, 2, 4, 8, 16):
            raise ValueError(f"lanes: 1, 2, 4, 8 or 16, got {self.lanes!r}")
        if self.device_id is None and self.lanes > 8:
            raise ValueError("device_id: give one for x16 (0x70<gen><lanes> has no digit for 16)")
        if self.axi_bits not in (64, 128, 256, 512):
            raise ValueError(f"axi_bits: 64, 128, 256 or 512, got {self.axi_bits!r}")
        # the core's AXI side must carry the link: bits a cycle x clock >= lanes x lane rate
        need = self.lanes * _LANE_MB_S[self.gen]
        have = self.axi_bits // 8 * self.axi_mhz
        if have < need:
            raise ValueError(f"axi_bits {self.axi_bits} at {self.axi_mhz} MHz carries {have} "
                             f"MB/s, less than Gen{self.gen} x{self.lanes} ({need:g} MB/s)")

    @property
    def stream_bytes(self) -> int:
        return self.axi_bits // 8

    @property
    def mb_s(self) -> float:
        """MB/s a direction after line coding (before packet overheads)."""
        return self.lanes * _LANE_MB_S[self.gen]

    def describe(self) -> str:
        return f"PCIe Gen{self.gen} x{self.lanes} (XDMA, {self.axi_bits}-bit AXI-Stream)"


def xdma_settings(link: XdmaLink) -> dict[str, str]:
    """The XDMA IP's ``CONFIG.*`` values (names as in ``xilinx.com:ip:xdma``) for ``link``:
    endpoint in AXI-Stream mode with one H2C and one C2H channel, the AXI-Lite master on a
    1 MiB BAR at AXI address 0 (the register file answers its first 4 KiB), one user
    interrupt, no configuration-management port."""
    return {
        "mode_selection": "Advanced",
        "pcie_blk_locn": link.pcie_blk_locn,
        "pl_link_cap_max_link_width": f"X{link.lanes}",
        "pl_link_cap_max_link_speed": _GEN_RATE[link.gen],
        "ref_clk_freq": f"{link.refclk_mhz}_MHz",
        "axi_data_width": f"{link.axi_bits}_bit",
        "axisten_freq": str(link.axi_mhz),
        "pf0_device_id": link.device_id or f"70{link.gen}{link.lanes:X}",
        "xdma_axi_intf_mm": "AXI_Stream",
        "xdma_rnum_chnl": "1",
        "xdma_wnum_chnl": "1",
        "axilite_master_en": "true",
        "axilite_master_size": "1",
        "axilite_master_scale": "Megabytes",
        "axil_master_64bit_en": "false",
        "pciebar2axibar_axil_master": "0x00000000",
        "xdma_num_usr_irq": "1",
        "cfg_mgmt_if": "false",
    }


def xdma_ip_tcl(link: XdmaLink) -> str:
    """The Tcl that creates, generates and synthesizes the XDMA core (``XDMA_MODULE``)."""
    lines = [f"# XDMA core for {link.describe()}; names as in xilinx.com:ip:xdma (PG195)",
             f"create_ip -name xdma -vendor xilinx.com -library ip -module_name {XDMA_MODULE}",
             "set_property -dict [list \\"]
    lines += [f"    CONFIG.{k} {{{v}}} \\" for k, v in xdma_settings(link).items()]
    lines += [f"] [get_ips {XDMA_MODULE}]",
              f"generate_target all [get_ips {XDMA_MODULE}]",
              f"synth_ip [get_ips {XDMA_MODULE}]", ""]
    return "\n".join(lines)


def xdma_ports(stream_bytes: int) -> dict[str, tuple[str, str]]:
    """How each signal of the card's ports (``hw.card.card_ports(stream_bytes)``) meets the
    XDMA core: card signal path (``bus.awaddr``, ``h2c.payload.data``, ``h2c.valid``, ``irq``)
    -> (XDMA port name, its direction seen from the core: ``"o"`` drives the card, ``"i"`` is
    driven by it). Derived from the card's signature and ``hw.axis.axis_layout`` (payload
    field ``data`` -> ``tdata``), so a port the card gains shows up here, and one without an
    XDMA counterpart raises ``KeyError``."""
    sig = wiring.Signature(card_ports(stream_bytes))
    out = {}
    for path, member in sig.members.flatten():
        if not member.is_port:
            continue
        port = path[0]
        core_dir = "o" if member.flow == wiring.In else "i"
        if port == "bus":
            out[".".join(path)] = (f"m_axil_{path[-1]}", core_dir)
        elif port in ("h2c", "c2h"):
            prefix = "m_axis_h2c" if port == "h2c" else "s_axis_c2h"
            if path[1] == "payload":
                for f, _ in axis_layout(stream_bytes):
                    out[f"{port}.payload.{f}"] = (f"{prefix}_t{f}_0", core_dir)
            else:
                out[".".join(path)] = (f"{prefix}_t{path[1]}_0", core_dir)
        elif port == "irq":
            out[port] = ("usr_irq_req", core_dir)
        else:
            raise KeyError(f"card port {'.'.join(path)} has no XDMA counterpart")
    return out


_UTIL_ROW = r"^\|\s*{}\s*\|\s*([0-9.]+)\s*\|"
_UTIL = {"luts": "Slice LUTs", "ffs": "Slice Registers", "dsps": "DSPs",
         "brams": "Block RAM Tile"}


def vivado_figures(utilization: str, timing: str, clock_mhz: float) -> dict:
    """``luts``, ``ffs``, ``dsps``, ``brams`` (RAMB36 tiles, a RAMB18 counting half) from
    Vivado's ``report_utilization`` text and ``fmax_mhz`` from ``report_timing_summary``'s
    design WNS (worst negative slack) on a clock of ``clock_mhz``: ``1000 / (period - WNS)``.
    A figure the reports do not have is None."""
    out: dict = {}
    for key, row in _UTIL.items():
        m = re.search(_UTIL_ROW.format(re.escape(row)), utilization, re.M)
        value = float(m.group(1)) if m else None
        out[key] = value if value is None or key == "brams" else int(value)
    m = re.search(r"^\s*WNS\(ns\)\s+TNS\(ns\).*\n\s*-[- ]+\n\s*(-?[0-9.]+)", timing, re.M)
    out["fmax_mhz"] = (round(1000.0 / (1000.0 / clock_mhz - float(m.group(1))), 1)
                       if m else None)
    return out


class XdmaTop(Elaboratable):
    """The board top: the XDMA core (an ``Instance`` of ``XDMA_MODULE``), its reference clock
    buffer, and the card, wired as the module docstring says. Needs a platform with a ``pcie``
    resource (``clk``, ``perst``, ``rx``, ``tx``; optionally ``clkreq``) and optionally
    ``led``."""

    def __init__(self, *, config: CardConfig, link: XdmaLink, card_params: dict | None = None):
        if config.caps.stream_bytes != link.stream_bytes:
            raise ValueError(f"config: stream_bytes {config.caps.stream_bytes} differs from "
                             f"the XDMA core's {link.axi_bits}-bit AXI-Stream")
        self.config, self.link, self.card_params = config, link, dict(card_params or {})

    def elaborate(self, platform):
        m = Module()
        pcie = platform.request("pcie", 0, dir="-")
        m.submodules.perst = perst = io.Buffer("i", pcie.perst)  # PERST# (active low)
        refclk, aresetn, link_up = Signal(), Signal(), Signal()
        m.submodules.refclk_buf = Instance("IBUFDS_GTE2", i_I=pcie.clk.p, i_IB=pcie.clk.n,
                                           i_CEB=0, o_O=refclk)
        m.domains.sync = sync = ClockDomain("sync")
        m.d.comb += sync.rst.eq(~aresetn)
        m.submodules.card = card = Card(config=self.config, **self.card_params)

        ports = {"i_sys_clk": refclk, "i_sys_rst_n": ~perst.i,
                 "o_pci_exp_txp": pcie.tx.p, "o_pci_exp_txn": pcie.tx.n,
                 "i_pci_exp_rxp": pcie.rx.p, "i_pci_exp_rxn": pcie.rx.n,
                 "o_axi_aclk": sync.clk, "o_axi_aresetn": aresetn, "o_user_lnk_up": link_up}
        for path, (name, core_dir) in xdma_ports(self.config.caps.stream_bytes).items():
            value = card
            for part in path.split("."):
                value = getattr(value, part)
            if name in ("m_axil_awaddr", "m_axil_araddr"):
                wide = Signal(32, name=name)  # the core's 32-bit address; the card decodes
                m.d.comb += value.eq(wide)    # its low bits (REG_SPACE)
                value = wide
            ports[f"{core_dir}_{name}"] = value
        m.submodules.xdma = Instance(XDMA_MODULE, **ports)

        if hasattr(pcie, "clkreq"):
            m.submodules.clkreq = clkreq = io.Buffer("o", pcie.clkreq)
            m.d.comb += clkreq.o.eq(1)  # CLKREQ# low: the host keeps the refclk running
        try:
            led = platform.request("led", 0, dir="-")
        except ResourceError:  # a board without LEDs
            led = None
        if led is not None:
            m.submodules.led = led_buf = io.Buffer("o", led)
            m.d.comb += led_buf.o.eq(link_up)
        return m


class PcieBoard(Board):
    """A PCIe board built by Vivado around the XDMA core. Subclasses set ``platform`` (an
    amaranth-boards platform class with a ``pcie`` resource), ``xdma`` (``XdmaLink``),
    ``board_constraints`` (XDC lines) and the ``Board`` attributes."""

    toolchain = "Vivado"
    platform: type
    xdma: XdmaLink
    board_constraints: tuple[str, ...] = ()
    card_params: dict = {}  # noqa: RUF012 (read-only; Card's max_groups / max_blocks)

    @property
    def top_name(self) -> str:
        return f"actpack_{self.name}"

    @property
    def part(self) -> str:
        """From the platform: ``device-package-speed``."""
        p = self.platform
        return f"{p.device}-{p.package}-{p.speed}"

    @property
    def link(self) -> str:
        return self.xdma.describe()

    @property
    def link_mb_s(self) -> float:
        return self.xdma.mb_s

    @property
    def stream_bytes(self) -> int:
        return self.xdma.stream_bytes

    def toolchain_missing(self) -> str | None:
        if shutil.which(os.environ.get("VIVADO", "vivado")):
            return None
        return ("vivado not found on PATH: install Vivado (2020.2 or later, with the "
                f"{self.part} device) and source its settings64.sh, or pass --plan-only")

    def _platform(self):
        platform = self.platform()
        # no <top>.debug.v: a second Verilog conversion of the whole card that Vivado never reads
        platform._vivado_file_templates = {
            k: v for k, v in platform._vivado_file_templates.items() if ".debug.v" not in k}
        platform.add_file("xdma_ip.tcl", xdma_ip_tcl(self.xdma))
        perst = "pcie_0__perst__io"
        platform.add_file("board.xdc", "\n".join([
            f"# {self.title}: configuration and PCIe reset",
            *self.board_constraints,
            "# PERST# is asynchronous to every clock",
            f"set_false_path -from [get_ports {perst}]", ""]))
        return platform

    def plan(self, out_dir, config: CardConfig, *,
             progress: Callable[[str], None] | None = None) -> Plan:
        say = progress or (lambda s: None)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
        say("elaborating the card and generating Verilog")
        top = XdmaTop(config=config, link=self.xdma, card_params=self.card_params)
        build = self._platform().build(top, name=self.top_name, do_build=False,
                                       script_after_read="source xdma_ip.tcl")
        say("writing the Vivado project")
        build.extract(str(out))
        report = self._report(config, "plan")
        (out / "README.md").write_text(self._readme(config))
        files = sorted([*build.files, "README.md", "report.json", "summary.txt"])
        report.files = files
        report.write(out)
        return Plan(directory=out, files=files, report=report)

    def build(self, out_dir, config: CardConfig, *,
              progress: Callable[[str], None] | None = None) -> Plan:
        missing = self.toolchain_missing()
        if missing:
            raise ToolchainMissing(missing)
        say = progress or (lambda s: None)
        plan = self.plan(out_dir, config, progress=progress)
        say("running Vivado (synthesis, implementation, bitstream: tens of minutes)")
        t0 = time.monotonic()
        with open(plan.directory / "vivado.out", "w") as log:
            done = subprocess.run(["sh", f"build_{self.top_name}.sh"], cwd=plan.directory,
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"Vivado failed (exit status {done.returncode}): see "
                               f"{plan.directory / 'vivado.out'} and {self.top_name}.log there")
        report = plan.report
        report.status = "built"
        util = plan.directory / f"{self.top_name}_utilization_place.rpt"
        timing = plan.directory / f"{self.top_name}_timing.rpt"
        figures = vivado_figures(util.read_text(), timing.read_text(), self.xdma.axi_mhz)
        report.__dict__.update(figures)
        if figures["fmax_mhz"]:
            report.clock_mhz = min(float(self.xdma.axi_mhz), figures["fmax_mhz"])
            report.throughput_mb_s = float(BEAT_BYTES * config.caps.lanes * report.clock_mhz)
        report.notes.append(f"Vivado ran {time.monotonic() - t0:.0f} s; figures from "
                            f"{util.name} and {timing.name}")
        report.write(plan.directory)
        return plan

    def _report(self, config: CardConfig, status: str) -> BuildReport:
        caps = config.caps
        values = BEAT_BYTES // 4  # float32 values the core takes a cycle (docs/card.md 7)
        return BuildReport(
            board=self.name, part=self.part, status=status,
            modes=[m.label for m in sorted(caps.modes)],
            dtypes=[d.label for d in sorted(caps.dtypes)], lanes=caps.lanes,
            link=self.xdma.describe(), link_mb_s=self.xdma.mb_s, clock_mhz=self.xdma.axi_mhz,
            values_per_cycle=values * caps.lanes,
            throughput_mb_s=float(BEAT_BYTES * caps.lanes * self.xdma.axi_mhz),
            notes=[(f"card clock = the XDMA core's axi_aclk ({self.xdma.axi_mhz} MHz); "
                    "timing is met only if Vivado's report says so")])

    def _readme(self, config: CardConfig) -> str:
        caps, name = config.caps, self.top_name
        settings = "\n".join(f"| `CONFIG.{k}` | `{v}` |" for k, v in
                             xdma_settings(self.xdma).items())
        return f"""# {self.title}: actpack card build plan

Part `{self.part}`, {self.xdma.describe()}, card clock {self.xdma.axi_mhz} MHz (the XDMA core's
`axi_aclk`). Card: modes {", ".join(m.label for m in sorted(caps.modes))}, dtypes
{", ".join(d.label for d in sorted(caps.dtypes))}, lanes {caps.lanes}, {caps.stream_bytes}-byte
streams, {config.buffer_kib} KiB frame buffer, CONFIG_HASH `0x{config.config_hash():08x}`.

Build (Vivado 2020.2 or later on PATH, or `VIVADO=/path/to/vivado`):

```sh
sh build_{name}.sh        # vivado -mode batch -source {name}.tcl
```

It creates the XDMA core (`xdma_ip.tcl`), synthesizes `{name}.v`, places and routes, writes
`{name}_timing.rpt`, `{name}_utilization_place.rpt` and `{name}.bit`. Then load the Xilinx
`xdma` driver (dma_ip_drivers) and use the card as `actpack.open_device("xdma:/dev/xdma0")`.

| file | what |
|---|---|
| `{name}.v` | the top (XDMA instance, refclk buffer, reset) and the card, generated by Amaranth |
| `xdma_ip.tcl` | the XDMA core |
| `{name}.xdc`, `board.xdc` | pins (refclk, PERST#, lanes), clocks, board settings |
| `{name}.tcl`, `build_{name}.sh` | the Vivado batch flow |
| `report.json`, `summary.txt` | the plan's figures (area and Fmax: after a build) |

XDMA settings:

| setting | value |
|---|---|
{settings}

Generated by `actpack build --board {self.name} --plan-only`; see docs/boards.md.
"""
