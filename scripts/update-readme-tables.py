"""Rewrite what is generated from the code: the tables of the documentation (the metric catalogue
in docs/metrics.md, every target's and section's keys in docs/configuration.md) and the
configuration's JSON Schema (config.schema.json)."""

import json
from pathlib import Path
from typing import Callable

from exporter.config.schema import json_schema
from exporter.model.catalogue import markdown_table
from exporter.vendors import registry
from exporter.vendors.registry import options_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMA = ROOT / "config.schema.json"
# Each table lives between `<!-- NAME:start -->` and `<!-- NAME:end -->` in its page.
TABLES: dict[str, tuple[Path, Callable[[], str]]] = {
    "metrics-table": (DOCS / "metrics.md", markdown_table),
    "target-keys": (DOCS / "configuration.md", options_markdown),
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def block(text: str, name: str) -> str:
    """What stands between the table's markers (ValueError when they are missing)."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise ValueError(f"the markers {start} and {end} are missing")
    return text.split(start, 1)[1].split(end, 1)[0].removeprefix("\n")


def replace(text: str, name: str, content: str) -> str:
    block(text, name)  # both markers are there
    start, end = markers(name)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}{end}{tail}"


def schema_text() -> str:
    return json.dumps(json_schema(registry), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for name, (page, render) in TABLES.items():
        page.write_text(replace(page.read_text(), name, render()))
    SCHEMA.write_text(schema_text())
