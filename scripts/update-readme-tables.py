"""Rewrite the README's generated tables (metrics, target keys) from the code."""

from pathlib import Path

from exporter.model.catalogue import markdown_table
from exporter.vendors.registry import options_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = {"metrics-table": markdown_table, "target-keys": options_markdown}


def replace(text: str, marker: str, content: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}{end}{tail}"


if __name__ == "__main__":
    text = README.read_text()
    for marker, render in TABLES.items():
        text = replace(text, marker, render())
    README.write_text(text)
