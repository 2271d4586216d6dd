"""Pure parsers for HomeWizard Energy payloads (API v1 `/api/v1/data`, API v2 `/api/measurement`,
`/api/system`, and `/api` of both).

v1 and v2 name the same quantities differently (`total_power_import_kwh` / `energy_import_kwh`);
one table maps both spellings to the catalogue, so a P1 meter gives the same series on either
API. Fields the device does not send (or sends as null) give no series. Values come out in base
units: kWh -> J, % -> ratio, L/min -> m3/s, GJ -> J.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any

from ...model import catalogue as M
from ...model.catalogue import JOULES_PER_GJ, JOULES_PER_KWH, Metric
from ...model.jsontext import label_text
from ...model.samples import DeviceInfo, ParseError, Reading, Sample, checked_object, number_or_none

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


def _pairs(metric: Metric, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A sample's label pairs exactly as `Reading.add` builds them (checked once, here)."""
    probe = Reading()
    probe.add(metric, 0.0, **labels)
    return probe.samples[0].labels


# (field, metric, label pairs, factor): the pairs are built once, not on every poll (a fleet
# exporter parses thousands of these bodies a second).
_V1 = [(v1, metric, _pairs(metric, labels), factor) for v1, _, metric, labels, factor in _fields() if v1]
_V2 = [(v2, metric, _pairs(metric, labels), factor) for _, v2, metric, labels, factor in _fields() if v2]
_BIG = 1e300  # integers beyond this go the slow way (float() may overflow)

# Samples are built through their slots: a frozen dataclass's __init__ sets each field through
# object.__setattr__, twice the cost, and a P1 meter's reading has forty of them.
_new = object.__new__
_set_metric, _set_labels, _set_value = Sample.metric.__set__, Sample.labels.__set__, Sample.value.__set__


def _sample(metric: Metric, pairs: tuple, value: float) -> Sample:
    sample = _new(Sample)
    _set_metric(sample, metric)
    _set_labels(sample, pairs)
    _set_value(sample, value)
    return sample

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


# The rows of a table whose fields a body holds, by the body's keys: a device sends the same
# keys poll after poll (and a fleet's devices mostly the same), so most rows it never sends are
# not looked at. The rows keep the table's order.
_PRESENT: dict[tuple[int, tuple], list] = {}


def _present(payload: dict, table: list) -> list:
    keys = tuple(payload)
    rows = _PRESENT.get((id(table), keys))
    if rows is None:
        if len(_PRESENT) > 512:
            _PRESENT.clear()
        held = set(keys)
        rows = _PRESENT[(id(table), keys)] = [row for row in table if row[0] in held]
    return rows


def _add_table(reading: Reading, payload: dict, table: list[tuple[str, Metric, tuple, float]]) -> None:
    """`reading.add(metric, number_or_none(payload[key], key) * factor, **labels)` for every
    field present, with the common cases (a finite float, a moderate int) taken directly."""
    samples = reading.samples
    for key, metric, pairs, factor in _present(payload, table):
        value = payload[key]
        if value is None:
            continue
        kind = value.__class__
        if kind is float:
            number = value
        elif kind is int and -_BIG < value < _BIG:
            number = float(value)
        else:
            number = number_or_none(value, key)  # strings, booleans, huge ints: its rules
            if number is None:
                continue
        scaled = number * factor if factor != 1 else number
        if not math.isfinite(scaled):
            number_or_none(number, key)  # raises if the field itself is not finite
            raise ParseError(f"{metric.name}: not a finite number")
        sample = _new(Sample)
        _set_metric(sample, metric)
        _set_labels(sample, pairs)
        _set_value(sample, scaled)
        samples.append(sample)


def parse_device(payload: Any) -> DeviceInfo:
    """`GET /api`: product type, serial, firmware (and api_version, read by `api_version`)."""
    data = checked_object(payload, "/api")
    product = data.get("product_type")
    serial = data.get("serial")
    if not isinstance(product, str) or not isinstance(serial, str):
        raise ParseError("/api: product_type and serial must be strings")
    firmware = data.get("firmware_version")
    firmware = str(firmware) if isinstance(firmware, (str, int, float)) and not isinstance(firmware, bool) else ""
    # These become label values of the info metric: no control characters, bounded length.
    return DeviceInfo(model=label_text(product), serial=label_text(serial), firmware=label_text(firmware))


def api_version(payload: Any) -> int:
    """1 or 2 from `/api`'s `api_version` ("v1", "2.0.0", ...)."""
    version = checked_object(payload, "/api").get("api_version")
    if not isinstance(version, str):
        raise ParseError("/api: api_version missing")
    if version.lower().lstrip("v").startswith("1"):
        return 1
    if re.match(r"^v?2(\.|$)", version):
        return 2
    raise ParseError(f"/api: unknown api_version {version[:20]!r}")


def parse_v1_data(payload: Any, tz: tzinfo | None = None) -> Reading:
    """`GET /api/v1/data` of any product (P1, kWh meters, socket, water meter)."""
    data = checked_object(payload, "/api/v1/data")
    reading = Reading()
    _add_table(reading, data, _V1)
    _single_phase_voltage(reading, data, "active_voltage_v")
    peak_time = _dsmr_time(data.get("montly_power_peak_timestamp", data.get("monthly_power_peak_timestamp")), tz)
    reading.add(M.MONTHLY_PEAK_DEMAND_TIME, peak_time)
    _add_smart_meter(reading, data, "smr_version")
    externals = data.get("external")
    seen = _add_externals(reading, externals, tz, _dsmr_time)
    # Old firmware reports the gas meter only in these flat fields.
    gas_id = data.get("gas_unique_id")
    gas_id = label_text(gas_id) if isinstance(gas_id, str) else ""
    if "total_gas_m3" in data and (M.GAS.name, "gas_meter", gas_id) not in seen:
        reading.add(M.GAS, number_or_none(data["total_gas_m3"], "total_gas_m3"), meter=gas_id)
        reading.add(M.EXTERNAL_MEASUREMENT_TIME, _dsmr_time(data.get("gas_timestamp"), tz), meter=gas_id)
    return reading


def parse_v2_measurement(payload: Any, tz: tzinfo | None = None) -> Reading:
    """`GET /api/measurement` (API v2) of any product."""
    data = checked_object(payload, "/api/measurement")
    reading = Reading()
    _add_table(reading, data, _V2)
    _single_phase_voltage(reading, data, "voltage_v")
    reading.add(M.MEASUREMENT_TIME, _iso_time(data.get("timestamp"), tz))
    reading.add(M.MONTHLY_PEAK_DEMAND_TIME, _iso_time(data.get("monthly_power_peak_timestamp"), tz))
    _add_smart_meter(reading, data, "protocol_version")
    _add_externals(reading, data.get("external"), tz, _iso_time)
    return reading


def _add_smart_meter(reading: Reading, data: dict, version_key: str) -> None:
    """The smart meter behind a P1 reader: its model, equipment identifier and DSMR version, as
    one info series. The identifier is the meter's equipment identifier (DSMR 0-0:96.1.1, its
    serial number) in hex, as HomeWizard documents it: no secret and no key to anything, and the
    gas meter's id of the same kind is a label already (`meter`); all zeros
    is the placeholder of meters that send none, so it gives an empty label (and nothing at all
    when the meter tells nothing else either)."""
    model, meter_id, version = data.get("meter_model"), data.get("unique_id"), data.get(version_key)
    if model is None and meter_id is None and version is None:
        return  # not a P1 meter (kWh meters, socket, battery send none of these)
    model = label_text(model) if isinstance(model, str) else ""
    meter_id = label_text(meter_id, 128) if isinstance(meter_id, str) and meter_id.strip("0") else ""
    if isinstance(version, bool) or not isinstance(version, (int, float, str)):
        version = ""
    elif isinstance(version, float) and version.is_integer():
        version = str(int(version))
    else:
        version = label_text(str(version), 16)
    if model or meter_id or version:
        reading.add(M.SMART_METER_INFO, 1, model=model, meter_id=meter_id, protocol_version=version)


# Control modes of a battery group (v2 /api/batteries); a mode not listed is exported as sent.
BATTERY_MODES = ("zero", "to_full", "standby", "predictive")
BATTERY_PERMISSIONS = ("charge_allowed", "discharge_allowed")


def parse_v2_batteries(payload: Any) -> Reading:
    """`GET /api/batteries` (API v2, P1 and kWh meters): the plug-in batteries the meter controls,
    as one group. Power figures come consumption-signed (positive = charging, as a meter counts
    them); they are turned to the catalogue's battery sign, positive when discharging. A meter
    that controls no battery (battery_count 0) gives the count only: its zeros mean nothing."""
    data = checked_object(payload, "/api/batteries")
    reading = Reading()
    count = number_or_none(data.get("battery_count"), "battery_count")
    reading.add(M.BATTERY_COUNT, count)
    if count == 0:
        return reading
    power = number_or_none(data.get("power_w"), "power_w")
    target = number_or_none(data.get("target_power_w"), "target_power_w")
    reading.add(M.BATTERY_POWER, None if power is None else -power)
    reading.add(M.BATTERY_TARGET_POWER, None if target is None else -target)
    reading.add(M.BATTERY_MAX_CHARGE_POWER, number_or_none(data.get("max_consumption_w"), "max_consumption_w"))
    reading.add(M.BATTERY_MAX_DISCHARGE_POWER, number_or_none(data.get("max_production_w"), "max_production_w"))
    mode = data.get("mode")
    if mode is not None:
        if not isinstance(mode, str):
            raise ParseError("/api/batteries: mode must be a string")
        mode = label_text(mode, 32)
        for known in dict.fromkeys((*BATTERY_MODES, mode)):
            reading.add(M.BATTERY_CONTROL_MODE, 1 if known == mode else 0, mode=known)
    permissions = data.get("permissions")
    if permissions is not None:  # API 2.2.0 and later
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise ParseError("/api/batteries: permissions must be a list of strings")
        for permission in dict.fromkeys((*BATTERY_PERMISSIONS, *(label_text(p, 32) for p in permissions))):
            reading.add(M.BATTERY_PERMISSION, 1 if permission in permissions else 0, permission=permission)
    return reading


def parse_v2_system(payload: Any) -> Reading:
    """`GET /api/system` (API v2): Wi-Fi signal and uptime."""
    data = checked_object(payload, "/api/system")
    reading = Reading()
    reading.add(M.WIFI_RSSI, number_or_none(data.get("wifi_rssi_db"), "wifi_rssi_db"))
    reading.add(M.DEVICE_UPTIME, number_or_none(data.get("uptime_s"), "uptime_s"))
    return reading


def api_error(payload: Any) -> str | None:
    """The error code of an error body: v1 `{"error":{"id":202,...}}` -> "202", v2 `{"error":"user:unauthorized"}`."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("id")
        if isinstance(error, int) and not isinstance(error, bool) and abs(error) < 10**18:
            error = str(error)
    # The code goes into messages shown on the status page and in logs.
    return label_text(error, 64) if isinstance(error, str) else None


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
        # Label values: a device must not be able to write a label that breaks the exposition.
        uid, kind = label_text(uid), label_text(kind)
        unit = label_text(unit) if isinstance(unit, str) else ""
        value = entry["value"]
        if value.__class__ is not float or not math.isfinite(value):
            try:
                value = number_or_none(value, "external value")
            except ParseError:
                continue
        metric, labels, factor = _EXTERNAL.get((kind, unit), (M.EXTERNAL_READING, {"type": kind, "unit": unit}, 1))
        key = (metric.name, kind, uid)
        if key in seen:
            continue
        seen.add(key)
        scaled = value * factor
        if not math.isfinite(scaled):
            raise ParseError(f"{metric.name}: not a finite number")
        reading.samples.append(_sample(metric, _labels_of(metric, uid, labels), scaled))
        if ("time", uid) not in seen:
            seen.add(("time", uid))
            moment = to_time(entry.get("timestamp"), tz)
            if moment is not None:
                reading.samples.append(_sample(M.EXTERNAL_MEASUREMENT_TIME, ((("meter", uid),)), moment))
    return seen


def _labels_of(metric: Metric, meter: str, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The pairs `Reading.add(metric, v, meter=meter, **labels)` builds: `meter` first, the
    others in the metric's order, then its OBIS code (all checked at import, `_CHECKED`)."""
    pairs = (("meter", meter),)
    if labels:
        pairs += tuple((name, str(labels[name])) for name in metric.labels[1:])
    return pairs + _OBIS[metric] if metric in _OBIS else _labels_slow(metric, meter, labels)


def _labels_slow(metric: Metric, meter: str, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    given = {"meter": meter, **labels}
    pairs = tuple((name, str(given[name])) for name in metric.labels)
    obis = metric.obis_for(given)
    return pairs + (("obis", obis),) if obis else pairs


# The OBIS pair of each external metric whose code does not depend on its labels.
_OBIS = {
    metric: (() if metric.obis is None else (("obis", metric.obis),))
    for metric in [m for m, _, _ in _EXTERNAL.values()] + [M.EXTERNAL_READING, M.EXTERNAL_MEASUREMENT_TIME]
    if metric.obis is None or isinstance(metric.obis, str)
}
# `_labels_of` gives exactly what `Reading.add` would: checked here, once.
for _metric, _labels in [(m, labels) for m, labels, _ in _EXTERNAL.values()] + [
        (M.EXTERNAL_READING, {"type": "t", "unit": "u"}), (M.EXTERNAL_MEASUREMENT_TIME, {})]:
    assert _metric.labels[0] == "meter" and _labels_of(_metric, "m", _labels) == _pairs(_metric, {"meter": "m", **_labels})


def _dsmr_time(value: Any, tz: tzinfo | None) -> float | None:
    """v1 timestamps: YYMMDDhhmmss as a number, in the meter's local time."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    return _dsmr_text_time(str(value), tz)


@lru_cache(maxsize=4096)  # a fleet's meters share their timestamps (the gas meter's 5-minute marks)
def _dsmr_text_time(text: str, tz: tzinfo | None) -> float | None:
    if len(text) != 12 or not re.fullmatch(r"\d{12}", text):
        return None  # an odd timestamp loses its series, not the whole reading
    if text.isascii():
        yy = int(text[0:2])
        try:  # what strptime's %y%m%d%H%M%S gives for twelve digits, without its regex
            moment = datetime(1900 + yy if yy >= 69 else 2000 + yy, int(text[2:4]), int(text[4:6]),
                              int(text[6:8]), int(text[8:10]), int(text[10:12]), tzinfo=tz)
            return moment.timestamp()
        except ValueError:
            pass
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
