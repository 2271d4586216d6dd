"""The shape of the code: which package may import which, and no new import cycle.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked with `lint-imports`;
cycles are looked for here in grimp's import graph (the one import-linter reads), with the
imports under `if TYPE_CHECKING:` counted as well: a cycle of types is still a cycle to a reader.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]

# The only modules that load modules by name, which no import graph sees (the vendor
# catalogue's lazy loading, from the vendors towards the core).
IMPORTS_BY_NAME = {"exporter/vendors/__init__.py", "exporter/vendors/registry.py"}


def import_cycles(graph: grimp.ImportGraph) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(frozenset(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def exporter_graph() -> grimp.ImportGraph:
    return grimp.build_graph("exporter", cache_dir=None)  # no cache directory left in the checkout


def describe(cycle: frozenset[str], graph: grimp.ImportGraph) -> str:
    edges = sorted(f"{a} -> {b}" for a in cycle for b in graph.find_modules_directly_imported_by(a) if b in cycle)
    return "{" + ", ".join(sorted(cycle)) + "}: " + "; ".join(edges)


def test_no_import_cycle():
    graph = exporter_graph()
    cycles = import_cycles(graph)
    assert not cycles, (
        "An import cycle in exporter/ (imports under TYPE_CHECKING count): "
        + " | ".join(describe(c, graph) for c in cycles)
        + ". Break it: pass the dependency in, or move what both modules need into a lower module.")


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    command = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is missing: pip install -e '.[test]'"
    done = subprocess.run([command, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (
        "An import contract of pyproject.toml [tool.importlinter] is broken (the chain is shown below). "
        "Remove the import, or pass the dependency in from a higher module; change a contract only "
        "when the design changes.\n" + done.stdout + done.stderr)
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", done.stdout), done.stdout


def test_only_the_vendor_catalogue_imports_modules_by_name():
    # The contracts and the cycle count see `import` statements only.
    loading = {str(path.relative_to(ROOT)) for path in (ROOT / "exporter").rglob("*.py")
               if re.search(r"\bimport_module\b|__import__\(", path.read_text(encoding="utf-8"))}
    assert loading <= IMPORTS_BY_NAME, (
        f"{sorted(loading - IMPORTS_BY_NAME)} load modules by name, which the import contracts cannot "
        "see: import them with an import statement instead.")


# The composition root: the only modules outside exporter/vendors that may import a vendor (to
# hand the vendor catalogue to the rest).
COMPOSITION_ROOT = {"exporter.cli", "exporter.daemon", "exporter.probe", "exporter.__main__"}


def test_every_core_module_is_under_the_no_vendor_contract():
    # A new module must not escape the contract by not being listed in it.
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (core,) = [c for c in contracts if c["id"] == "core-without-vendors"]
    listed = set(core["source_modules"])
    # Top-level modules and packages of exporter/ (a package is listed, not its modules).
    modules = {"exporter." + path.relative_to(ROOT / "exporter").parts[0].removesuffix(".py")
               for path in (ROOT / "exporter").rglob("*.py")}
    modules -= {"exporter.__init__", "exporter.vendors"}
    unlisted = sorted(modules - listed - COMPOSITION_ROOT)
    assert not unlisted, (f"{unlisted} are in neither the core-without-vendors contract of pyproject.toml nor the "
                          "composition root: add them to the contract")
