"""The same cocotb testbenches under Icarus Verilog (where ``iverilog`` is installed): the
generated Verilog is plain Verilog-2005 that a second simulator reads the same way. A sample that
covers memories, the CRC and stream handshakes under stalls; the full regression runs on
Verilator. Any testbench runs under Icarus with ``ACTPACK_SIM=icarus`` (``actpack.sim.build``);
the frame parser's takes about 4 minutes there (Icarus 11), so it is not part of this sample."""

import shutil

import pytest

from actpack.hw.framebuild import FrameBuilder
from actpack.hw.quant import Quantizer
from actpack.sim.build import build

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed")


@pytest.fixture(scope="module")
def cocotb_runner():
    pytest.importorskip("cocotb_tools.runner")


def test_quantizer(cocotb_runner, seed):
    sim = build(Quantizer, name="quant", params={"table": "optH"}, simulator="icarus")
    sim.run("actpack.sim.test_quant", seed=seed,
            env={"ACTPACK_TB_UNIT": "quant", "ACTPACK_TB_TABLE": "optH",
                 "ACTPACK_TB_SEED": str(seed)})


def test_frame_builder(cocotb_runner, seed):
    sim = build(FrameBuilder, name="framebuild", simulator="icarus",
                params={"max_header": 1024, "max_blocks": 1024, "max_payload": 16384})
    sim.run("actpack.sim.test_framebuild", env={"ACTPACK_TB_SEED": str(seed)})
