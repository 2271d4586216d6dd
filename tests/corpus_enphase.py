"""Every Enphase corpus file that holds measurements, parsed the way the adapter parses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from exporter.samples import Reading
from exporter.vendors.enphase import parse

# File name (the endpoint's path with '/' -> '_') -> parser taking (payload, meters).
_JSON_PARSERS: dict[str, Any] = {
    "api_v1_production": lambda p, m: parse.parse_api_v1_production(p),
    "api_v1_production_inverters": lambda p, m: parse.parse_inverters(p),
    "production.json": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m)),
    "production.json_details_1": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m)),
    "ivp_meters_readings": lambda p, m: parse.parse_meter_readings(p, m),
    "ivp_meters_reports": lambda p, m: parse.parse_meter_reports(p, parse.gateway_phase_count(m)),
    "ivp_meters_gridReading": lambda p, m: parse.parse_grid_reading(p, parse.gateway_phase_count(m)),
    "ivp_pdm_energy": lambda p, m: parse.parse_pdm_energy(p),
    "ivp_ensemble_inventory": lambda p, m: parse.parse_ensemble_inventory(p),
    "ivp_ensemble_device_list": lambda p, m: parse.parse_device_list(p),
    "ivp_livedata_status": lambda p, m: parse.parse_livedata(p),
}


def is_error_body(body: bytes) -> bool:
    """Bodies of error answers: 404 `{"error": "404 - Not Found"}` or the HTML 'Page Not Found'
    page (firmware 3.9 answers /production.json so), and 401 pages (5.0 wants Digest auth)."""
    text = body.decode("utf-8", "replace")
    return '"404 - Not Found"' in text or "Page Not Found" in text or "401 Unauthorized" in text


def folders(conformance_root: Path) -> list[Path]:
    base = conformance_root / "enphase"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def meters_of(folder: Path) -> dict:
    path = folder / "ivp_meters"
    if not path.is_file() or is_error_body(path.read_bytes()):
        return {}
    return parse.parse_meters(json.loads(path.read_bytes()))


def readings(conformance_root: Path) -> Iterator[tuple[str, Reading]]:
    for folder in folders(conformance_root):
        meters = meters_of(folder)
        for path in sorted(folder.iterdir()):
            body = path.read_bytes()
            name = f"enphase/{folder.name}/{path.name}"
            if is_error_body(body):
                continue
            if path.name == "info":
                yield name, parse.parse_info(body).reading()
            elif path.name == "production":
                yield name, parse.parse_production_page(body, parse.gateway_phase_count(meters))
            elif path.name in _JSON_PARSERS:
                yield name, _JSON_PARSERS[path.name](json.loads(body), meters)
