"""The Grafana dashboards under grafana/dashboards/, as code: one module per board, built with
Grafana's own typed builders (grafana-foundation-sdk). `python -m dashboards` writes the JSON
files that Grafana provisions; tests/test_dashboards_code.py keeps them equal to this code.

Not part of the installed exporter: it runs from a source checkout, beside `simulators/`.
"""

from __future__ import annotations

from pathlib import Path

from . import device, exporter, overview, solar
from .common import Board

DIRECTORY = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"
MODULES = (overview, device, solar, exporter)


def boards() -> list[Board]:
    return [module.build() for module in MODULES]


def rendered() -> dict[str, str]:
    """File name under grafana/dashboards/ -> the JSON text it should hold."""
    return {board.ref.file: board.json() for board in boards()}


def write(directory: Path = DIRECTORY) -> list[Path]:
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


__all__ = ["DIRECTORY", "boards", "rendered", "write"]
