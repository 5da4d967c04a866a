"""PCIe build plans (``actpack.boards.pcie``): the files ``actpack build --board NAME
--plan-only`` writes, read back: the XDMA IP's settings, the top's connections against the card's
ports, the pins against the board's platform, the Vivado flow. Vivado itself is not here."""

from __future__ import annotations

import json
import re

import pytest

from actpack.boards import get
from actpack.boards.pcie import (
    XDMA_MODULE,
    XdmaTop,
    vivado_figures,
    xdma_ports,
    xdma_settings,
)
from actpack.cli import main
from actpack.hw.card import card_ports

pytestmark = pytest.mark.slow  # each plan converts a card to Verilog (~20 s of CPU)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """One plan per board: the NiteFury's through the command line, the KC705's through the
    API; mask engines only (the smallest card)."""
    out = {}
    d = tmp_path_factory.mktemp("nitefury")
    assert main(["build", "--board", "nitefury", "--modes", "mask", "--plan-only",
                 "--out", str(d)]) == 0
    out["nitefury"] = d
    board = get("kc705")
    out["kc705"] = board.plan(tmp_path_factory.mktemp("kc705"),
                              board.card_config(modes=["mask"])).directory
    return out


BOARDS = ["nitefury", "kc705"]


def _read(plans, name, file):
    return (plans[name] / file.format(top=f"actpack_{name}")).read_text()


@pytest.mark.parametrize("name", BOARDS)
def test_plan_files(plans, name):
    top = f"actpack_{name}"
    files = {p.name for p in plans[name].iterdir()}
    assert {f"{top}.v", f"{top}.tcl", f"{top}.xdc", f"build_{top}.sh", "board.xdc",
            "xdma_ip.tcl", "README.md", "report.json", "summary.txt"} <= files
    report = json.loads(_read(plans, name, "report.json"))
    assert sorted(report["files"]) == sorted(files)
    assert report["status"] == "plan" and report["modes"] == ["mask"]
    assert report["luts"] is None and report["fmax_mhz"] is None  # nothing measured a plan


def _ip_settings(tcl: str) -> dict[str, str]:
    return dict(re.findall(r"CONFIG\.(\w+) \{([^}]*)\}", tcl))


@pytest.mark.parametrize(("name", "width", "speed", "bits", "mhz", "device"), [
    ("nitefury", "X4", "5.0_GT/s", "128_bit", "125", "7024"),
    ("kc705", "X8", "5.0_GT/s", "128_bit", "250", "7028"),
])
def test_xdma_ip_settings(plans, name, width, speed, bits, mhz, device):
    tcl = _read(plans, name, "xdma_ip.tcl")
    assert f"create_ip -name xdma -vendor xilinx.com -library ip -module_name {XDMA_MODULE}" \
        in tcl
    got = _ip_settings(tcl)
    assert got == xdma_settings(get(name).xdma)
    assert got["pl_link_cap_max_link_width"] == width
    assert got["pl_link_cap_max_link_speed"] == speed
    assert got["axi_data_width"] == bits and got["axisten_freq"] == mhz
    assert got["pf0_device_id"] == device and got["ref_clk_freq"] == "100_MHz"
    assert got["xdma_axi_intf_mm"] == "AXI_Stream"
    assert got["xdma_rnum_chnl"] == got["xdma_wnum_chnl"] == "1"
    assert got["axilite_master_en"] == "true"
    assert tcl.index("set_property") < tcl.index("generate_target all") < tcl.index("synth_ip")


@pytest.mark.parametrize("name", BOARDS)
def test_vivado_flow(plans, name):
    top = f"actpack_{name}"
    tcl = _read(plans, name, "{top}.tcl")
    part = get(name).part.replace("-", "", 1)  # xc7a200t-fbg484-2 -> xc7a200tfbg484-2
    assert f"create_project -force -name {top} -part {part}" in tcl
    steps = ["add_files {top}.v", "read_xdc {top}.xdc", 'read_xdc "board.xdc"',
             "source xdma_ip.tcl", "synth_design -top {top}", "opt_design", "place_design",
             "report_utilization -file {top}_utilization_place.rpt", "route_design",
             "report_timing_summary -datasheet -max_paths 10 -file {top}_timing.rpt",
             "write_bitstream -force -bin_file {top}.bit"]
    where = [tcl.index(s.format(top=top)) for s in steps]
    assert where == sorted(where)
    sh = _read(plans, name, "build_{top}.sh")
    assert re.search(r"\bvivado\b.*-mode batch", sh.replace("\n", " "))
    assert f"-source {top}.tcl" in sh


def _instance(verilog: str, module: str) -> dict[str, str]:
    """Port -> connected expression of the (one) instance of ``module`` in ``verilog``."""
    m = re.search(rf"^\s*{module} \S+ \((.*?)\n\s*\);", verilog, re.M | re.S)
    assert m, f"no instance of {module}"
    return dict(re.findall(r"\.(\w+)\(([^)]*)\)", m.group(1)))


@pytest.mark.parametrize("name", BOARDS)
def test_top_connects_the_card_to_the_core(plans, name):
    verilog = _read(plans, name, "{top}.v")
    xdma = _instance(verilog, XDMA_MODULE)
    stream_bytes = get(name).stream_bytes
    mapping = xdma_ports(stream_bytes)
    # every signal of the card's ports (payloads by field) has exactly one XDMA port
    expected = set()
    for path, _ in card_ports(stream_bytes)["bus"].signature.members.flatten():
        expected.add("bus." + ".".join(path))
    for port in ("h2c", "c2h"):
        expected |= {f"{port}.valid", f"{port}.ready",
                     *(f"{port}.payload.{f}" for f in ("data", "keep", "last"))}
    assert set(mapping) == expected | {"irq"}
    assert len({p for p, _ in mapping.values()}) == len(mapping)
    for xdma_port, _ in mapping.values():
        assert xdma_port in xdma, f"{xdma_port} not connected"
    assert mapping["h2c.payload.data"] == ("m_axis_h2c_tdata_0", "o")
    assert mapping["h2c.ready"] == ("m_axis_h2c_tready_0", "i")
    assert mapping["c2h.valid"] == ("s_axis_c2h_tvalid_0", "i")
    assert mapping["bus.awaddr"] == ("m_axil_awaddr", "o")
    assert mapping["bus.rdata"] == ("m_axil_rdata", "i")
    assert mapping["irq"] == ("usr_irq_req", "i")
    # the C2H data is the card's full-width payload, the card's stream width the core's
    assert re.fullmatch(rf"c2h__payload\[{8 * stream_bytes - 1}:0\]",
                        xdma["s_axis_c2h_tdata_0"])
    for port in ("sys_clk", "sys_rst_n", "pci_exp_txp", "pci_exp_txn", "pci_exp_rxp",
                 "pci_exp_rxn", "axi_aclk", "axi_aresetn", "user_lnk_up"):
        assert port in xdma
    assert xdma["pci_exp_rxp"] == "pcie_0__rx__p" and xdma["pci_exp_txn"] == "pcie_0__tx__n"
    refbuf = _instance(verilog, "IBUFDS_GTE2")
    assert (refbuf["I"], refbuf["IB"]) == ("pcie_0__clk__p", "pcie_0__clk__n")
    assert refbuf["O"] == xdma["sys_clk"]
    assert re.search(rf"^\s*\\actpack_{name}\.card\s+card \(", verilog, re.M)


def test_top_refuses_a_card_of_another_width():
    board = get("nitefury")
    config = get("kc705").card_config(modes=["mask"])
    wide = type(config)(caps=type(config.caps)(stream_bytes=64), buffer_kib=64)
    with pytest.raises(ValueError, match="128-bit"):
        XdmaTop(config=wide, link=board.xdma)


@pytest.mark.parametrize("name", BOARDS)
def test_constraints_pin_the_link(plans, name):
    xdc = _read(plans, name, "{top}.xdc")
    locs = dict((port.replace("\\", ""), pin) for pin, port in
                re.findall(r'set_property LOC (\w+) \[get_ports "([^"]+)"\]', xdc))
    board = get(name)
    pcie = board.platform().lookup("pcie", 0)
    subs = {s.name: s for s in pcie.ios}
    for sub in ("rx", "tx"):
        pairs = subs[sub].ios[0]
        assert len(pairs.p.names) == board.xdma.lanes
        for i, (p, n) in enumerate(zip(pairs.p.names, pairs.n.names, strict=True)):
            assert locs[f"pcie_0__{sub}__p[{i}]"] == p
            assert locs[f"pcie_0__{sub}__n[{i}]"] == n
    clk = subs["clk"].ios[0]
    assert locs["pcie_0__clk__p"] == clk.p.names[0]
    assert locs["pcie_0__perst__io"] == subs["perst"].ios[0].names[0]
    assert re.search(r"create_clock -name pcie_0__clk__p -period 10\.0 ", xdc)
    assert 'set_property IOSTANDARD' not in "\n".join(
        ln for ln in xdc.splitlines() if "__rx__" in ln or "__tx__" in ln or "__clk__" in ln)
    board_xdc = _read(plans, name, "board.xdc")
    assert "set_false_path -from [get_ports pcie_0__perst__io]" in board_xdc


def test_board_pins_from_public_documentation(plans):
    """The pins themselves, as amaranth-boards / litex-boards (NiteFury) and UG810 (KC705)
    give them: a regression check on the resources this package adds."""
    nite = _read(plans, "nitefury", "{top}.xdc")
    for pin, port in [("F6", "clk__p"), ("E6", "clk__n"), ("J1", "perst__io"),
                      ("G1", "clkreq__io"), ("B10", r"rx__p\[0]"), ("D7", r"tx__p\[3]")]:
        assert f'set_property LOC {pin} [get_ports "pcie_0__{port}"]' in nite
    assert "CONFIG_VOLTAGE 3.3" in nite  # from amaranth-boards' platform
    kc = _read(plans, "kc705", "{top}.xdc")
    for pin, port in [("U8", "clk__p"), ("U7", "clk__n"), ("G25", "perst__io"),
                      ("M6", r"rx__p\[0]"), ("AA4", r"rx__p\[7]"), ("Y1", r"tx__n\[7]")]:
        assert f'set_property LOC {pin} [get_ports "pcie_0__{port}"]' in kc
    assert "CONFIG_VOLTAGE 2.5" in _read(plans, "kc705", "board.xdc")


@pytest.mark.parametrize(("name", "mb_s"), [("nitefury", 2000.0), ("kc705", 4000.0)])
def test_report_and_readme(plans, name, mb_s):
    report = json.loads(_read(plans, name, "report.json"))
    board = get(name)
    assert report["link_mb_s"] == mb_s and report["part"] == board.part
    assert report["clock_mhz"] == board.xdma.axi_mhz
    assert report["values_per_cycle"] == 4  # one 16-byte beat a cycle: 4 float32 values
    assert report["throughput_mb_s"] == 16 * board.xdma.axi_mhz
    readme = _read(plans, name, "README.md")
    assert f"sh build_actpack_{name}.sh" in readme
    assert "`CONFIG.pl_link_cap_max_link_width` | `X" in readme
    assert _read(plans, name, "summary.txt").startswith(f"{name} ({board.part}): plan")


_UTILIZATION = """\
1. Slice Logic
--------------

+----------------------------+-------+-------+-----------+-------+
|          Site Type         |  Used | Fixed | Available | Util% |
+----------------------------+-------+-------+-----------+-------+
| Slice LUTs                 | 21034 |     0 |    133800 | 15.72 |
|   LUT as Logic             | 20110 |     0 |    133800 | 15.03 |
| Slice Registers            | 15021 |     0 |    267600 |  5.61 |
3. Memory
| Block RAM Tile |  12.5 |     0 |       365 |  3.42 |
|   RAMB36/FIFO* |    12 |     0 |       365 |  3.29 |
4. DSP
| DSPs           |    16 |     0 |       740 |  2.16 |
"""
_TIMING = """\
| Design Timing Summary
| ---------------------
------------------------------------------------------------------------------------------------

    WNS(ns)      TNS(ns)  TNS Failing Endpoints  TNS Total Endpoints      WHS(ns)
    -------      -------  ---------------------  -------------------      -------
     -2.000     -512.000                    100                20000        0.045
"""


def test_vivado_figures():
    got = vivado_figures(_UTILIZATION, _TIMING, 125)
    assert got == {"luts": 21034, "ffs": 15021, "dsps": 16, "brams": 12.5,
                   "fmax_mhz": 100.0}  # 8 ns period + 2 ns of negative slack
    assert vivado_figures(_UTILIZATION, _TIMING.replace("-2.000", "1.000"), 100)[
        "fmax_mhz"] == pytest.approx(111.1)
    assert vivado_figures("", "", 125) == dict.fromkeys(
        ("luts", "ffs", "dsps", "brams", "fmax_mhz"))


def test_build_with_a_stand_in_vivado(tmp_path, monkeypatch):
    """``build`` runs the plan's script and reads Vivado's reports back: a stand-in ``vivado``
    on PATH checks its arguments and writes the two reports."""
    top = "actpack_nitefury"
    fake = tmp_path / "bin" / "vivado"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
[ "$*" = "-mode batch -log {top}.log -source {top}.tcl" ] || exit 3
[ -f xdma_ip.tcl ] && [ -f {top}.v ] || exit 4
cat > {top}_utilization_place.rpt <<'X'
{_UTILIZATION}X
cat > {top}_timing.rpt <<'X'
{_TIMING}X
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.delenv("VIVADO", raising=False)
    board = get("nitefury")
    plan = board.build(tmp_path / "out", board.card_config(modes=["mask"]))
    report = json.loads((plan.directory / "report.json").read_text())
    assert report["status"] == "built"
    assert (report["luts"], report["ffs"], report["dsps"], report["fmax_mhz"]) == \
        (21034, 15021, 16, 100.0)
    assert report["clock_mhz"] == 100.0 and report["throughput_mb_s"] == 1600.0
    fake.write_text("#!/bin/sh\nexit 1\n")
    monkeypatch.setattr(type(board), "plan", lambda *a, **k: plan)  # the same files again
    with pytest.raises(RuntimeError, match="Vivado failed"):
        board.build(tmp_path / "out", board.card_config(modes=["mask"]))
