"""First module of every simulator process the harness starts (see ``actpack.sim.build``).

Testbenches need ``actpack.hw`` (layouts, latencies) and ``actpack.codec.reference`` (the numpy
model), but importing any ``actpack.*`` module runs ``actpack/__init__.py`` and
``actpack/codec/__init__.py``, which import torch and numba: ~20 s per simulator process, for
nothing a testbench uses. This module registers those two packages without running their
``__init__`` (their submodules import normally), so ``import actpack.codec.reference`` costs what
numpy costs. It lives outside the ``actpack`` package because it must run before it. Set
``ACTPACK_SIM_FULL_IMPORT=1`` to import the packages normally.
"""

import importlib.util
import os
import sys


def _register_without_init(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return  # not a package here: leave it to the normal import
    module = importlib.util.module_from_spec(spec)  # sets __path__; does not execute __init__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


if os.environ.get("ACTPACK_SIM_FULL_IMPORT", "") not in ("1", "true", "yes"):
    _register_without_init("actpack")
    _register_without_init("actpack.codec")
