"""Gateware tests (the ``verilator`` fixture that skips without the toolchain is the suite's,
in tests/conftest.py)."""

import os

import pytest


@pytest.fixture(scope="session")
def seed() -> int:
    """Testbench seed: fixed for reproducible runs; ACTPACK_HW_SEED=<n> explores others."""
    return int(os.environ.get("ACTPACK_HW_SEED", "1"))
