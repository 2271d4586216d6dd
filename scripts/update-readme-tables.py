"""Rewrite what is generated from the code: the README's tables (metrics, target keys) and the
configuration's JSON Schema (config.schema.json)."""

import json
from pathlib import Path

from exporter.config.schema import json_schema
from exporter.model.catalogue import markdown_table
from exporter.vendors import registry
from exporter.vendors.registry import options_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCHEMA = ROOT / "config.schema.json"
TABLES = {"metrics-table": markdown_table, "target-keys": options_markdown}


def replace(text: str, marker: str, content: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}{end}{tail}"


def schema_text() -> str:
    return json.dumps(json_schema(registry), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    text = README.read_text()
    for marker, render in TABLES.items():
        text = replace(text, marker, render())
    README.write_text(text)
    SCHEMA.write_text(schema_text())
