"""Rewrite the README's metric table from exporter/catalogue.py."""

from pathlib import Path

from exporter.catalogue import markdown_table

START, END = "<!-- metrics-table:start -->", "<!-- metrics-table:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(f"{head}{START}\n{markdown_table()}{END}{tail}")
