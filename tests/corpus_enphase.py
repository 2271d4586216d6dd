"""Every Enphase corpus file that holds measurements, parsed the way the adapter parses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from exporter.model.samples import Reading
from exporter.vendors.enphase import parse

# File name (the endpoint's path with '/' -> '_') -> parser taking (payload, meters).
_JSON_PARSERS: dict[str, Any] = {
    "api_v1_production": lambda p, m: parse.parse_api_v1_production(p),
    "api_v1_production_inverters": lambda p, m: parse.parse_inverters(p),
    "production.json": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m)),
    "production.json_details_1": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m)),
    "ivp_meters_readings": lambda p, m: parse.parse_meter_readings(p, m),
    "ivp_meters_reports": lambda p, m: parse.parse_meter_reports(p, parse.gateway_phase_count(m)),
    "ivp_meters_reports_consumption": lambda p, m: parse.parse_meter_reports(p, parse.gateway_phase_count(m)),
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


# Shapes Enphase's technical brief TEB-00060 shows (seed document) that no capture holds.
SEED_LIVEDATA = {
    "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                   "sc_stream": "enabled", "sc_debug": "enabled"},
    "meters": {
        "last_update": 1654221647, "soc": 100, "main_relay_state": 0, "gen_relay_state": 5, "backup_bat_mode": 1,
        "backup_soc": 10, "is_split_phase": 1, "phase_count": 0, "enc_agg_soc": 100, "enc_agg_energy": 24800,
        "acb_agg_soc": 0, "acb_agg_energy": 0,
        "pv": {"agg_p_mw": 329549, "agg_s_mva": 329549, "agg_p_ph_a_mw": 329549, "agg_p_ph_b_mw": 0,
               "agg_p_ph_c_mw": 0, "agg_s_ph_a_mva": 329549, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0},
        "storage": {"agg_p_mw": -220800, "agg_s_mva": -559446, "agg_p_ph_a_mw": -220800, "agg_p_ph_b_mw": 0,
                    "agg_p_ph_c_mw": 0, "agg_s_ph_a_mva": -559446, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0},
        "grid": {"agg_p_mw": 0, "agg_s_mva": 0, "agg_p_ph_a_mw": 0, "agg_p_ph_b_mw": 0, "agg_p_ph_c_mw": 0,
                 "agg_s_ph_a_mva": 0, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0},
        "load": {"agg_p_mw": 108749, "agg_s_mva": -229897, "agg_p_ph_a_mw": 108749, "agg_p_ph_b_mw": 0,
                 "agg_p_ph_c_mw": 0, "agg_s_ph_a_mva": -229897, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0},
        "generator": {"agg_p_mw": 0, "agg_s_mva": 0, "agg_p_ph_a_mw": 0, "agg_p_ph_b_mw": 0, "agg_p_ph_c_mw": 0,
                      "agg_s_ph_a_mva": 0, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0},
    },
    "tasks": {"task_id": 27672012, "timestamp": 1654219883},
    "counters": {"main_CfgLoad": 1, "rest_Status": 579},
}
SEED_DEVICE_LIST = {
    "usb": {"ck2_bridge": "connected", "auto_scan": "false"},
    "devices": [
        {"serial_number": "492203008650", "device_type": 13, "com_interface": 2, "com_interface_str": "CAN",
         "status": "Connected", "dev_info": {"capacity": 4960, "DER_Index": 1}},
        {"serial_number": "122132000709", "device_type": 0, "com_interface": 2, "status": "Unknown"},
    ],
}


def documented() -> Iterator[tuple[str, Reading]]:
    yield "seed: /ivp/livedata/status", parse.parse_livedata(SEED_LIVEDATA)
    yield "seed: /ivp/ensemble/device_list", parse.parse_device_list(SEED_DEVICE_LIST)
