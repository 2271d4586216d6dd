"""The installed exporter is the exporter alone: the simulators and the demo stay in the checkout."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from simulators import enphase, iammeter, iometer, paths

from .conftest import CONFORMANCE, ROOT

OUTSIDE = ("simulators", "demo", "dashboards")


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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `python -m build --wheel` makes (offline: no build isolation), built from a copy
    of the checkout (the build leaves files behind) with the simulators and the demo beside the
    package, as in a checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("exporter",) + OUTSIDE:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                             str(work / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("*.whl")
    return built


def test_the_wheel_carries_the_exporter_and_its_files_only(wheel):
    """Look inside the wheel: the exporter with its page assets and HomeWizard's CA, no
    simulator, no demo."""
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in OUTSIDE + ("tests",)]
    assert not [n for n in names if n.startswith("exporter/") and n.split("/")[1] in OUTSIDE]
    page = [n for n in names if n.startswith("exporter/web/assets/")]
    assert {Path(n).name for n in page} >= {"status.html", "status.js"}
    assert any(n.startswith("exporter/vendors/homewizard/") and n.endswith(".pem") for n in names)
    assert "exporter/cli.py" in names and "exporter/vendors/enphase/parse/__init__.py" in names


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding the pinned dependencies (requirements/app.lock) and the
    wheel, installed from the machine's package index as a user would; its bin directory. No
    pip inside: this environment's pip installs into it (`pip --python`), which is quicker."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                             "--quiet", "-r", str(ROOT / "requirements" / "app.lock"), str(wheel)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return venv / "bin"


def _run_installed(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Outside the checkout and without PYTHONPATH: only the installed package can be imported.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "energy-meter-exporter"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_the_installed_wheel_runs_from_a_fresh_virtual_environment(fresh_venv, tmp_path):
    where = subprocess.run([str(fresh_venv / "python"), "-c", "import exporter; print(exporter.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv.parent), where.stdout + where.stderr
    version = _run_installed(fresh_venv, "--version", cwd=tmp_path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert version.returncode == 0 and version.stdout.strip() == f"energy-meter-exporter {project['version']}"


def test_the_installed_wheel_checks_the_example_configuration(fresh_venv, tmp_path):
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.example.yaml")
    result = _run_installed(fresh_venv, "check-config", "--no-secrets", "--config.file", "config.example.yaml",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config.example.yaml: valid")
