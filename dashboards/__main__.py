"""`python -m dashboards`: write grafana/dashboards/*.json from the code in this package
(`--output DIR` writes them elsewhere, e.g. to compare)."""

import argparse
from pathlib import Path

from . import DIRECTORY, write

parser = argparse.ArgumentParser(prog="python -m dashboards",
                                 description="Write the Grafana dashboards from dashboards/.")
parser.add_argument("--output", type=Path, default=DIRECTORY, help=f"directory to write to (default: {DIRECTORY})")
arguments = parser.parse_args()
arguments.output.mkdir(parents=True, exist_ok=True)
for path in write(arguments.output):
    print(path)
