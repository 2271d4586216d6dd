"""The installed exporter is the exporter alone: the simulators and the demo stay in the checkout."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path

from simulators import enphase, iammeter, iometer, paths

from .conftest import CONFORMANCE, ROOT

OUTSIDE = ("simulators", "demo")


def _imported(path: Path) -> set[str]:
    """Absolute names a file imports, relative imports resolved (`from .simulators import x` in
    `exporter/` is `exporter.simulators`), each `from m import n` also as `m.n`."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _reaches_outside(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in OUTSIDE or (parts[0] == "exporter" and len(parts) > 1 and parts[1] in OUTSIDE)


def test_exporter_imports_neither_simulators_nor_demo():
    offenders = []
    for path in sorted((ROOT / "exporter").rglob("*.py")):
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(_imported(path)) if _reaches_outside(name)]
    assert offenders == []


def test_simulators_and_demo_are_not_inside_the_package():
    assert not (ROOT / "exporter" / "simulators").exists()
    assert not (ROOT / "exporter" / "demo.py").exists()
    assert (ROOT / "simulators" / "__init__.py").is_file() and (ROOT / "demo" / "__main__.py").is_file()


def test_package_discovery_leaves_simulators_and_demo_out():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    assert include == ["exporter*"]
    # setuptools matches these patterns against dotted package names, case-sensitively.
    for name in ("simulators", "simulators.data", "demo"):
        assert not any(fnmatchcase(name, pattern) for pattern in include), name
    # No glob meant for the simulators' captured bodies ships with the exporter.
    globs = [g for patterns in setuptools.get("package-data", {}).values() for g in patterns]
    assert not [g for g in globs if "data/" in g]


def test_simulators_find_the_conformance_corpus_from_their_new_place():
    # A wrong path fails nothing by itself: the simulators fall back to their embedded bodies.
    assert paths.CONFORMANCE == CONFORMANCE and CONFORMANCE.is_dir()
    assert enphase.CORPUS == CONFORMANCE / "enphase" and enphase.CORPUS.is_dir()
    assert iammeter.DEFAULT_CONFORMANCE == CONFORMANCE and (CONFORMANCE / "iammeter").is_dir()
    assert iometer.CONFORMANCE == CONFORMANCE / "iometer-local" and iometer.CONFORMANCE.is_dir()
    assert (enphase.PACKAGED / enphase.DEFAULT_FIRMWARE).is_dir()


def test_the_wheel_carries_the_exporter_and_its_files_only(tmp_path):
    """Build the wheel as `pip install .` would (from a copy: the build leaves files behind) and
    look inside: the exporter with its page assets and HomeWizard's CA, no simulator, no demo."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "exporter", source / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    for name in OUTSIDE:  # present beside the package, as in a checkout
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in OUTSIDE + ("tests",)]
    assert not [n for n in names if n.startswith("exporter/") and n.split("/")[1] in OUTSIDE]
    page = [n for n in names if n.startswith("exporter/web/assets/")]
    assert {Path(n).name for n in page} >= {"status.html", "status.js"}
    assert any(n.startswith("exporter/vendors/homewizard/") and n.endswith(".pem") for n in names)
    assert "exporter/cli.py" in names and "exporter/vendors/enphase/parse/__init__.py" in names
