"""Every HomeWizard corpus body that holds measurements, parsed (used by the catalogue test)."""

from __future__ import annotations

import json
from datetime import timezone
from pathlib import Path
from typing import Iterator

from exporter.model.samples import Reading
from exporter.vendors.homewizard import parse


def readings(conformance_root: Path) -> Iterator[tuple[str, Reading]]:
    root = conformance_root / "homewizard"
    for path in sorted(root.rglob("*.json")):
        rel = str(path.relative_to(root))
        payload = json.loads(path.read_text())
        if path.name.startswith("data"):
            yield rel, parse.parse_v1_data(payload, timezone.utc)
        elif path.name.startswith("measurement"):
            yield rel, parse.parse_v2_measurement(payload, timezone.utc)
        elif path.name == "system.json" and rel.startswith("v2/"):
            yield rel, parse.parse_v2_system(payload)
        elif path.name.startswith("batteries"):
            yield rel, parse.parse_v2_batteries(payload)
        elif path.name == "device.json":
            yield rel, Reading(devices=[parse.parse_device(payload)])


def documented() -> Iterator[tuple[str, Reading]]:
    """The seed documents heat meters in GJ; the corpus only has them in m3."""
    heat = {"external": [{"unique_id": "AB", "type": "heat_meter", "timestamp": "2024-06-28T14:00:00",
                          "value": 1.5, "unit": "GJ"}]}
    yield "seed: external heat meter in GJ", parse.parse_v2_measurement(heat, timezone.utc)
