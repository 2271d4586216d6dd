"""requirements/*.lock: every dependency pyproject.toml names is pinned there to a version its
range allows, and this environment (made by `make venv` from the test lock) runs those versions."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
LOCKS = {"app.lock": (), "demo.lock": ("demo",), "test.lock": ("test", "demo")}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.M)


def pins(lock: str) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in _PIN.findall((ROOT / "requirements" / lock).read_text())}


def wanted(extras: tuple[str, ...]) -> list[Requirement]:
    out = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        out += [r for r in map(Requirement, PROJECT["optional-dependencies"][extra]) if canonicalize_name(r.name) != SELF]
    return out


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_pins_every_dependency_within_its_range(lock):
    pinned = pins(lock)
    assert pinned, f"{lock} pins nothing"
    for requirement in wanted(LOCKS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/{lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pinned[name]}, outside {requirement}: run `make lock`")
    assert SELF not in pinned  # the project itself is installed from the checkout, not pinned


def test_the_locks_agree_with_each_other():
    app, demo, test = pins("app.lock"), pins("demo.lock"), pins("test.lock")
    for smaller, larger in ((app, demo), (demo, test)):
        assert {n: v for n, v in smaller.items() if n in larger} == {n: larger[n] for n in smaller if n in larger}
        assert set(smaller) <= set(larger)


def test_this_environment_runs_the_locked_versions():
    """`make venv` installs requirements/test.lock: a dependency at another version here means the
    lock was not used (or the environment was changed by hand)."""
    differ = {}
    for name, version in pins("test.lock").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ[name] = (version, None)
            continue
        if Version(installed) != Version(version):
            differ[name] = (version, installed)
    assert not differ, f"locked vs installed: {differ} (run `make venv` after `make clean`)"
