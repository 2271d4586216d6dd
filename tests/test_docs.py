"""The documentation: the site under docs/ builds in strict mode (no broken link, anchor or nav
entry), every page is in the navigation, every anchor link of the built site leads to its
heading, the tables generated from the code are current, and README.md stays a short landing
page whose links all lead somewhere."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from .conftest import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_LINES = 200


def generator():
    spec = importlib.util.spec_from_file_location("update_tables", ROOT / "scripts" / "update-readme-tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # NO_MKDOCS_2_WARNING: the Material theme's banner about its future, not about these pages.
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def nav_pages(nav: list) -> list[str]:
    """The page paths of an mkdocs `nav:` (entries are `Title: page`, bare pages or sections)."""
    out: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            out += nav_pages(value) if isinstance(value, list) else [value]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = build(MKDOCS_YML, site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return site


def test_the_site_builds_in_strict_mode(site):
    assert (site / "index.html").is_file()
    assert (site / "vendors" / "enphase" / "index.html").is_file()


def test_every_page_is_in_the_navigation_and_every_entry_has_its_page():
    listed = nav_pages(yaml.safe_load(MKDOCS_YML.read_text())["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    assert sorted(set(pages) - set(listed)) == [], "pages under docs/ missing from mkdocs.yml's nav"
    assert sorted(set(listed) - set(pages)) == [], "nav entries of mkdocs.yml without their page under docs/"


class _Anchors(HTMLParser):
    """The ids of a page and the targets of its links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"])
        if tag == "a" and found.get("href"):
            self.links.append(found["href"])


def test_every_anchor_link_of_the_site_leads_to_its_heading(site):
    pages = {}
    for path in site.rglob("*.html"):
        parser = _Anchors()
        parser.feed(path.read_text(encoding="utf-8"))
        pages[path] = parser
    broken, checked = [], 0
    for path, page in pages.items():
        for href in page.links:
            link = urlsplit(href)
            if link.scheme or link.netloc or not link.fragment or href.startswith("/"):
                continue
            target = (path.parent / unquote(link.path)).resolve() if link.path else path
            if target.is_dir() or not target.suffix:
                target = target / "index.html"
            checked += 1
            if target not in pages or unquote(link.fragment) not in pages[target].ids:
                broken.append(f"{path.relative_to(site)}: {href}")
    assert checked > 100, "the built pages hold hardly any anchor links: is the site complete?"
    assert broken == [], "anchor links without their target:\n" + "\n".join(sorted(broken))


@pytest.mark.parametrize("breakage", ["link to a missing page", "link to a missing heading", "nav entry without a page"])
def test_the_strict_build_fails_on_what_would_be_broken_on_the_site(tmp_path, breakage):
    shutil.copytree(DOCS, tmp_path / "docs")
    config = yaml.safe_load(MKDOCS_YML.read_text())
    page = tmp_path / "docs" / "getting-started.md"
    if breakage == "link to a missing page":
        page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    elif breakage == "link to a missing heading":
        page.write_text(page.read_text() + "\nSee [nothing](configuration.md#no-such-heading).\n")
    else:
        config["nav"].append({"Missing": "missing.md"})
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, f"the strict build accepted a {breakage}:\n{result.stdout}{result.stderr}"
    assert re.search(r"missing\.md|no-such-heading", result.stdout + result.stderr)


@pytest.mark.parametrize("name", sorted(generator().TABLES))
def test_the_generated_tables_in_the_docs_are_what_the_code_generates(name):
    update = generator()
    page, render = update.TABLES[name]
    assert update.block(page.read_text(), name) == render(), (
        f"the table {name} in {page.relative_to(ROOT)} is out of date: run `make readme-tables`")


def test_the_readme_is_a_short_landing_page():
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines: move the details into docs/"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (README links are read on GitHub)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def readme_links() -> list[str]:
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)  # code is not a link
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def test_every_relative_link_of_the_readme_resolves():
    relative = [link for link in readme_links() if not urlsplit(link).scheme]
    assert relative, "README.md links to no page of the documentation"
    broken = []
    for link in relative:
        parts = urlsplit(link)
        target = (ROOT / unquote(parts.path)).resolve() if parts.path else README
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif parts.fragment:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            if parts.fragment not in {github_slug(h) for h in headings}:
                broken.append(f"{link}: no such heading")
    assert broken == [], "README.md links that lead nowhere:\n" + "\n".join(broken)


def test_the_readme_leads_to_every_page_of_the_manual():
    linked = {str(PurePosixPath(urlsplit(link).path)) for link in readme_links() if not urlsplit(link).scheme}
    pages = {f"docs/{page}" for page in nav_pages(yaml.safe_load(MKDOCS_YML.read_text())["nav"])}
    assert sorted(pages - linked - {"docs/index.md"}) == [], "pages of the manual README.md does not link to"
