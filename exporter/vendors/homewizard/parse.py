"""Pure parsers for HomeWizard Energy payloads (API v1 `/api/v1/data`, API v2 `/api/measurement`,
`/api/system`, and `/api` of both).

v1 and v2 name the same quantities differently (`total_power_import_kwh` / `energy_import_kwh`);
one table maps both spellings to the catalogue, so a P1 meter gives the same series on either
API. Fields the device does not send (or sends as null) give no series. Values come out in base
units: kWh -> J, % -> ratio, L/min -> m3/s, GJ -> J.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any, Iterable

from ... import catalogue as M
from ...catalogue import JOULES_PER_GJ, JOULES_PER_KWH, Metric
from ...samples import DeviceInfo, ParseError, Reading, number_or_none

# (v1 field, v2 field, metric, labels, factor). A None field name: not sent by that API.
_Row = tuple[str | None, str | None, Metric, dict[str, str], float]


def _fields() -> list[_Row]:
    rows: list[_Row] = [
        ("total_power_import_kwh", "energy_import_kwh", M.ENERGY_IMPORTED, {}, JOULES_PER_KWH),
        ("total_power_export_kwh", "energy_export_kwh", M.ENERGY_EXPORTED, {}, JOULES_PER_KWH),
        ("active_power_w", "power_w", M.ACTIVE_POWER, {}, 1),
        ("active_current_a", "current_a", M.CURRENT, {}, 1),
        ("active_apparent_current_a", "apparent_current_a", M.APPARENT_CURRENT, {}, 1),
        ("active_reactive_current_a", "reactive_current_a", M.REACTIVE_CURRENT, {}, 1),
        ("active_apparent_power_va", "apparent_power_va", M.APPARENT_POWER, {}, 1),
        ("active_reactive_power_var", "reactive_power_var", M.REACTIVE_POWER, {}, 1),
        ("active_power_factor", "power_factor", M.POWER_FACTOR, {}, 1),
        ("active_frequency_hz", "frequency_hz", M.FREQUENCY, {}, 1),
        ("active_tariff", "tariff", M.ACTIVE_TARIFF, {}, 1),
        ("any_power_fail_count", "any_power_fail_count", M.POWER_FAILURES, {}, 1),
        ("long_power_fail_count", "long_power_fail_count", M.LONG_POWER_FAILURES, {}, 1),
        ("active_power_average_w", "average_power_15m_w", M.AVERAGE_DEMAND, {}, 1),
        ("montly_power_peak_w", "monthly_power_peak_w", M.MONTHLY_PEAK_DEMAND, {}, 1),
        # Some v1 firmware spells it right.
        ("monthly_power_peak_w", None, M.MONTHLY_PEAK_DEMAND, {}, 1),
        (None, "state_of_charge_pct", M.BATTERY_STATE_OF_CHARGE, {}, 0.01),
        (None, "cycles", M.BATTERY_CYCLES, {}, 1),
        ("wifi_strength", None, M.WIFI_SIGNAL, {}, 0.01),
        ("active_liter_lpm", None, M.WATER_FLOW, {}, 0.001 / 60),
        ("total_liter_m3", None, M.WATER, {"meter": ""}, 1),
    ]
    for t in "1234":
        rows.append((f"total_power_import_t{t}_kwh", f"energy_import_t{t}_kwh", M.TARIFF_ENERGY_IMPORTED, {"tariff": t}, JOULES_PER_KWH))
        rows.append((f"total_power_export_t{t}_kwh", f"energy_export_t{t}_kwh", M.TARIFF_ENERGY_EXPORTED, {"tariff": t}, JOULES_PER_KWH))
    for n in "123":
        p = {"phase": f"l{n}"}
        rows += [
            (f"active_power_l{n}_w", f"power_l{n}_w", M.PHASE_ACTIVE_POWER, p, 1),
            (f"active_voltage_l{n}_v", f"voltage_l{n}_v", M.PHASE_VOLTAGE, p, 1),
            (f"active_current_l{n}_a", f"current_l{n}_a", M.PHASE_CURRENT, p, 1),
            (f"active_apparent_current_l{n}_a", f"apparent_current_l{n}_a", M.PHASE_APPARENT_CURRENT, p, 1),
            (f"active_reactive_current_l{n}_a", f"reactive_current_l{n}_a", M.PHASE_REACTIVE_CURRENT, p, 1),
            (f"active_apparent_power_l{n}_va", f"apparent_power_l{n}_va", M.PHASE_APPARENT_POWER, p, 1),
            (f"active_reactive_power_l{n}_var", f"reactive_power_l{n}_var", M.PHASE_REACTIVE_POWER, p, 1),
            (f"active_power_factor_l{n}", f"power_factor_l{n}", M.PHASE_POWER_FACTOR, p, 1),
            (f"voltage_sag_l{n}_count", f"voltage_sag_l{n}_count", M.PHASE_VOLTAGE_SAGS, p, 1),
            (f"voltage_swell_l{n}_count", f"voltage_swell_l{n}_count", M.PHASE_VOLTAGE_SWELLS, p, 1),
        ]
    return rows


_V1 = [(v1, metric, labels, factor) for v1, _, metric, labels, factor in _fields() if v1]
_V2 = [(v2, metric, labels, factor) for _, v2, metric, labels, factor in _fields() if v2]

# Externally connected meters (M-Bus behind the smart meter), by (type, unit).
_EXTERNAL: dict[tuple[str, str], tuple[Metric, dict[str, str], float]] = {
    ("gas_meter", "m3"): (M.GAS, {}, 1),
    ("water_meter", "m3"): (M.WATER, {}, 1),
    ("warm_water_meter", "m3"): (M.WARM_WATER, {}, 1),
    ("heat_meter", "GJ"): (M.HEAT, {"kind": "heat"}, JOULES_PER_GJ),
    ("inlet_heat_meter", "GJ"): (M.HEAT, {"kind": "inlet_heat"}, JOULES_PER_GJ),
}

# The TLS name of a v2 device is appliance/<kind>/<serial>; product types map to kinds.
CERT_KINDS = {
    "HWE-P1": "p1dongle", "HWE-SKT": "energysocket", "HWE-WTR": "watermeter",
    "HWE-KWH1": "energymeter", "HWE-KWH3": "energymeter", "SDM230-wifi": "energymeter",
    "SDM630-wifi": "energymeter", "HWE-BAT": "battery", "HWE-DSP": "display",
}


def _require_object(payload: Any, what: str) -> dict:
    if not isinstance(payload, dict):
        raise ParseError(f"{what}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _add_table(reading: Reading, payload: dict, table: Iterable[tuple[str, Metric, dict, float]]) -> None:
    for key, metric, labels, factor in table:
        if key in payload:
            value = number_or_none(payload[key], key)
            if value is not None:
                reading.add(metric, value * factor, **labels)


def parse_device(payload: Any) -> DeviceInfo:
    """`GET /api`: product type, serial, firmware (and api_version, read by `api_version`)."""
    data = _require_object(payload, "/api")
    product = data.get("product_type")
    serial = data.get("serial")
    if not isinstance(product, str) or not isinstance(serial, str):
        raise ParseError("/api: product_type and serial must be strings")
    firmware = data.get("firmware_version")
    return DeviceInfo(model=product, serial=serial, firmware=str(firmware) if firmware is not None else "")


def api_version(payload: Any) -> int:
    """1 or 2 from `/api`'s `api_version` ("v1", "2.0.0", ...)."""
    version = _require_object(payload, "/api").get("api_version")
    if not isinstance(version, str):
        raise ParseError("/api: api_version missing")
    if version.lower().lstrip("v").startswith("1"):
        return 1
    if re.match(r"^v?2(\.|$)", version):
        return 2
    raise ParseError(f"/api: unknown api_version {version[:20]!r}")


def parse_v1_data(payload: Any, tz: tzinfo | None = None) -> Reading:
    """`GET /api/v1/data` of any product (P1, kWh meters, socket, water meter)."""
    data = _require_object(payload, "/api/v1/data")
    reading = Reading()
    _add_table(reading, data, _V1)
    _single_phase_voltage(reading, data, "active_voltage_v")
    peak_time = _dsmr_time(data.get("montly_power_peak_timestamp", data.get("monthly_power_peak_timestamp")), tz)
    reading.add(M.MONTHLY_PEAK_DEMAND_TIME, peak_time)
    externals = data.get("external")
    seen = _add_externals(reading, externals, tz, _dsmr_time)
    # Old firmware reports the gas meter only in these flat fields.
    gas_id = data.get("gas_unique_id")
    gas_id = gas_id if isinstance(gas_id, str) else ""
    if "total_gas_m3" in data and (M.GAS.name, "gas_meter", gas_id) not in seen:
        reading.add(M.GAS, number_or_none(data["total_gas_m3"], "total_gas_m3"), meter=gas_id)
        reading.add(M.EXTERNAL_MEASUREMENT_TIME, _dsmr_time(data.get("gas_timestamp"), tz), meter=gas_id)
    return reading


def parse_v2_measurement(payload: Any, tz: tzinfo | None = None) -> Reading:
    """`GET /api/measurement` (API v2) of any product."""
    data = _require_object(payload, "/api/measurement")
    reading = Reading()
    _add_table(reading, data, _V2)
    _single_phase_voltage(reading, data, "voltage_v")
    reading.add(M.MEASUREMENT_TIME, _iso_time(data.get("timestamp"), tz))
    reading.add(M.MONTHLY_PEAK_DEMAND_TIME, _iso_time(data.get("monthly_power_peak_timestamp"), tz))
    _add_externals(reading, data.get("external"), tz, _iso_time)
    return reading


def parse_v2_system(payload: Any) -> Reading:
    """`GET /api/system` (API v2): Wi-Fi signal and uptime."""
    data = _require_object(payload, "/api/system")
    reading = Reading()
    reading.add(M.WIFI_RSSI, number_or_none(data.get("wifi_rssi_db"), "wifi_rssi_db"))
    reading.add(M.DEVICE_UPTIME, number_or_none(data.get("uptime_s"), "uptime_s"))
    return reading


def api_error(payload: Any) -> str | None:
    """The error code of an error body: v1 `{"error":{"id":202,...}}` -> "202", v2 `{"error":"user:unauthorized"}`."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and "id" in error:
        return str(error["id"])
    return None


def _single_phase_voltage(reading: Reading, data: dict, key: str) -> None:
    # A single-phase device reports one voltage: it is phase l1's (the catalogue has no
    # phase-less voltage, so dashboards and alerts need one name only).
    if key in data and data.get(key.replace("_v", "_l1_v")) is None:
        reading.add(M.PHASE_VOLTAGE, number_or_none(data[key], key), phase="l1")


def _add_externals(reading: Reading, externals: Any, tz: tzinfo | None, to_time) -> set[tuple[str, str]]:
    """External meters. Entries without id, type or value are skipped (firmware sends such
    placeholders); several entries with one id (unset EANs are all zeros) keep the first."""
    seen: set[tuple[str, str]] = set()
    if externals is None:
        return seen
    if not isinstance(externals, list):
        raise ParseError("external: expected a list")
    for entry in externals:
        if not isinstance(entry, dict):
            continue
        uid, kind, unit = entry.get("unique_id"), entry.get("type"), entry.get("unit")
        if not isinstance(uid, str) or not isinstance(kind, str) or entry.get("value") is None:
            continue
        unit = unit if isinstance(unit, str) else ""
        try:
            value = number_or_none(entry["value"], "external value")
        except ParseError:
            continue
        metric, labels, factor = _EXTERNAL.get((kind, unit), (M.EXTERNAL_READING, {"type": kind, "unit": unit}, 1))
        key = (metric.name, kind, uid)
        if key in seen:
            continue
        seen.add(key)
        reading.add(metric, value * factor, meter=uid, **labels)
        if ("time", uid) not in seen:
            seen.add(("time", uid))
            reading.add(M.EXTERNAL_MEASUREMENT_TIME, to_time(entry.get("timestamp"), tz), meter=uid)
    return seen


def _dsmr_time(value: Any, tz: tzinfo | None) -> float | None:
    """v1 timestamps: YYMMDDhhmmss as a number, in the meter's local time."""
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not re.fullmatch(r"\d{12}", text):
        return None  # an odd timestamp loses its series, not the whole reading
    try:
        return datetime.strptime(text, "%y%m%d%H%M%S").replace(tzinfo=tz).timestamp()
    except ValueError:
        return None


def _iso_time(value: Any, tz: tzinfo | None) -> float | None:
    """v2 timestamps: ISO 8601 without zone, in the meter's local time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()
