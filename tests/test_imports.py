"""Import hygiene: the torch-free parts import without torch, and actpack's modules form no cycle.

The card server (``actpack.sim.card_server``) starts in every simulator run and imports the
gateware (``actpack.hw``) and the codec's spec; importing torch and the host driver there cost
seconds per start. Cycles are found on the source (``ast``), imports inside functions included: a
deferred import that dodges a cycle at import time still ties the two modules together.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import actpack

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


_NEEDS_COCOTB = pytest.mark.skipif(importlib.util.find_spec("cocotb") is None,
                                   reason="needs cocotb (the sim extra)")


@pytest.mark.parametrize("module", [
    "actpack.hw.regs", "actpack.codec.spec", "actpack.codec.reference", "actpack.hw.protocol",
    "actpack.sim.cardwire", pytest.param("actpack.sim.card_server", marks=_NEEDS_COCOTB)])
def test_torch_free_modules_import_without_torch(module):
    out = _run(f"import sys, {module}\n"
               "print(sorted(m for m in ('torch', 'actpack.host') if m in sys.modules))")
    assert out.strip() == "[]"


def test_package_root_gives_the_public_api():
    out = _run("import sys, actpack\n"
               "assert 'actpack.host' not in sys.modules\n"
               "assert callable(actpack.offload) and callable(actpack.open_device)\n"
               "from actpack import *\n"
               "print(Codec.__name__, FrameError.__name__, actpack.host.__name__)")
    assert out.split() == ["Codec", "FrameError", "actpack.host"]
    assert set(actpack.__all__) <= set(dir(actpack))
    for name in actpack.__all__:
        assert getattr(actpack, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        actpack.nonesuch  # noqa: B018


def _modules() -> dict[str, Path]:
    """Every module of the installed packages (the package-dir mapping of pyproject.toml)."""
    modules = {}
    for package in ("actpack", "actpack.codec", "actpack.bench", "actpack.hw", "actpack.sim",
                    "actpack.host", "actpack.boards"):
        (folder,) = importlib.util.find_spec(package).submodule_search_locations
        for path in Path(folder).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path, modules) -> set[str]:
    """The actpack modules ``name`` imports, anywhere in its body (not under TYPE_CHECKING)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    graph["actpack"] |= set(actpack._LAZY.values())  # the root's imports on first use
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search (none: the graph is acyclic)."""
    state, path, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == "open":
                cycles.append([*path[path.index(succ):], succ])
            elif succ not in state:
                visit(succ)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])  # a subpackage, or a module of the root package


def test_no_import_cycles_between_subpackages():
    """codec <- hw <- sim <- host and so on: the layers depend one way. The testbenches
    (``sim/test_*.py``) are tests and may import any layer (the card-core testbench drives the
    host's driver)."""
    layers: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        if module.startswith("actpack.sim.test_"):
            continue
        layers.setdefault(_layer(module), set()).update(
            _layer(m) for m in imported if _layer(m) != _layer(module))
    cycles = _cycles(layers)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
