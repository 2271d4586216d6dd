"""Every Enphase corpus file that holds measurements, parsed the way the adapter parses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from exporter.model.samples import Reading
from exporter.vendors.enphase import parse
from exporter.vendors.enphase.parse import batteries, ct_health, inverters

# File name (the endpoint's path with '/' -> '_') -> parser taking (payload, meters).
_JSON_PARSERS: dict[str, Any] = {
    "api_v1_production": lambda p, m: parse.parse_api_v1_production(p),
    "api_v1_production_inverters": lambda p, m: parse.parse_inverters(p),
    "production.json": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m), ct_list(m)),
    "production.json_details_1": lambda p, m: parse.parse_production_json(p, parse.gateway_phase_count(m), ct_list(m)),
    "ivp_meters_readings": lambda p, m: parse.parse_meter_readings(p, m),
    "ivp_meters_reports": lambda p, m: parse.parse_meter_reports(p, parse.gateway_phase_count(m), ct_list(m)),
    "ivp_meters_reports_consumption": lambda p, m: parse.parse_meter_reports(p, parse.gateway_phase_count(m),
                                                                             ct_list(m)),
    "ivp_meters_gridReading": lambda p, m: parse.parse_grid_reading(p, parse.gateway_phase_count(m), ct_list(m)),
    "ivp_pdm_energy": lambda p, m: parse.parse_pdm_energy(p, ct_list(m)),
    "ivp_ensemble_inventory": lambda p, m: parse.parse_ensemble_inventory(p),
    "ivp_ensemble_device_list": lambda p, m: parse.parse_device_list(p),
    "ivp_livedata_status": lambda p, m: parse.parse_livedata(p),
}


def ct_list(meters: dict) -> dict | None:
    """The CT list as the adapter hands it to the parsers: None when the gateway has none."""
    return meters if isinstance(meters, parse.CtList) else None


# The site's batteries and health, from files that other parsers read as well or that hold
# nothing on sites without batteries.
_SITE_PARSERS: dict[str, Any] = {
    "production.json": batteries.parse_acb_storage,
    "production.json_details_1": batteries.parse_acb_storage,
    "ivp_ensemble_power": batteries.parse_ensemble_power,
    "ivp_ensemble_secctrl": batteries.parse_ensemble_secctrl,
    "ivp_ensemble_status": batteries.parse_ensemble_status,
    "ivp_ensemble_inventory": batteries.parse_enpower_relay,
    "ivp_meters": ct_health.parse_ct_health,
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
                yield name, parse.parse_production_page(body, parse.gateway_phase_count(meters), ct_list(meters))
            elif path.name in _JSON_PARSERS:
                yield name, _JSON_PARSERS[path.name](json.loads(body), meters)
            if path.name in _SITE_PARSERS:
                # A site without batteries (or without CTs) answers these with empty lists or
                # zeros: parsed all the same, listed only when they hold something.
                reading = _SITE_PARSERS[path.name](json.loads(body))
                if reading.samples:
                    yield f"{name} (site)", reading


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


# Shapes no capture and no Enphase document holds, as the open-source pyenphase client documents
# them (docs/json_data/ivp_pdm_device_data.json; models/acb.py for the inventory's ACB group).
PYENPHASE_PDM_DEVICE_DATA = {
    "553648384": {
        "devName": "pcu", "sn": "202020202020", "active": True, "modGone": False,
        "channels": [{
            "chanEid": 1627390225, "created": 1748576887,
            "wattHours": {"today": 1239, "yesterday": 455, "week": 7466},
            "watts": {"now": 255, "nowUsed": 0, "max": 371},
            "lastReading": {"eid": 1627390225, "endDate": 1748576887, "duration": 903, "joulesProduced": 230400,
                            "acVoltageINmV": 248156, "acFrequencyINmHz": 50013, "dcVoltageINmV": 32363,
                            "dcCurrentINmA": 8078, "channelTemp": 38, "acCurrentInmA": 1049, "leadingVArs": 0,
                            "laggingVArs": 38, "rssi": 110, "issi": 68},
            "lifetime": {"createdTime": 1744834453, "duration": 6124463, "joulesProduced": 354281850},
        }],
    },
    "deviceCount": 1,
    "deviceDataLimit": 50,
}
PYENPHASE_ACB_INVENTORY = [{"type": "ACB", "devices": [{
    "part_num": "800-00930-r03", "serial_num": "121943013795", "installed": 1592855024,
    "device_status": ["envoy.global.ok"], "last_rpt_date": 1732092000, "admin_state": 1,
    "admin_state_str": "ACB_STATE_READY", "created_date": 1592855024, "img_load_date": 1592855024,
    "img_pnum_running": "2.10.9_rel/22.11", "communicating": True, "sleep_enabled": False, "percentFull": 25,
    "maxCellTemp": 18, "producing": True, "operating": True, "sleep_min_soc": 25, "sleep_max_soc": 30,
    "charge_status": "discharging",
}]}]


def documented() -> Iterator[tuple[str, Reading]]:
    yield "seed: /ivp/livedata/status", parse.parse_livedata(SEED_LIVEDATA)
    yield "seed: /ivp/livedata/status (batteries by kind)", batteries.parse_livedata_groups(SEED_LIVEDATA)
    yield "seed: /ivp/livedata/status (links, relays)", batteries.parse_livedata_status(SEED_LIVEDATA)
    yield "seed: /ivp/ensemble/device_list", parse.parse_device_list(SEED_DEVICE_LIST)
    yield "pyenphase: /ivp/pdm/device_data", inverters.parse_pdm_device_data(PYENPHASE_PDM_DEVICE_DATA)
    yield "pyenphase: /ivp/ensemble/inventory (ACB)", parse.parse_ensemble_inventory(PYENPHASE_ACB_INVENTORY)
