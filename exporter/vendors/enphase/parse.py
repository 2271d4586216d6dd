"""Pure parsers of the IQ Gateway (Envoy) local API: one function per endpoint.

Payload in (decoded JSON, or the raw text of the XML/HTML pages), `Reading` out; no I/O and no
clock. Malformed payloads raise `ParseError`; fields the gateway did not send give no series.

Which names carry what (the gateway measures several points, and some of its figures are sums
of others, so the names keep them apart):

* `energy_meter_production_*`: solar production of the whole system as the gateway reports it:
  the production CT ("eim") when one is installed, otherwise the microinverters' reports.
* `energy_meter_consumption_*`: house consumption ("total-consumption": grid import plus the
  solar energy used at home). It is production plus net consumption, hence its own name.
* The device-level names shared with the other vendors (`energy_meter_active_power_watts`,
  `..._energy_imported_joules_total`, `..._phase_voltage_volts`, ...) describe the grid
  connection point, i.e. the "net-consumption" CT: positive power = importing.
* `energy_meter_ct_*{meter="<role>"}`: the raw readings of each physical current transformer
  from `/ivp/meters/readings`, labelled by its role (`measurementType` in `/ivp/meters`:
  production, net-consumption, total-consumption, storage, ...). A gateway has one CT clamp per
  role and the roles are different measurement points, so no `meter` series is the sum of its
  siblings; still, adding series of different roles does not give anything meaningful (the
  README says so). The net-consumption CT appears both here and under the grid names above, so
  that dashboards written for other meters work unchanged.
* `energy_meter_inverter_*{inverter="<serial>"}`: each microinverter's last report;
  `energy_meter_microinverters_*`: all of them together as the gateway adds them up (on a
  system with a production CT this differs from the production figures, which are the CT's).
* `energy_meter_battery_unit_*{battery="<serial>"}`: each IQ Battery (Encharge);
  `energy_meter_battery_state_of_charge_ratio` is the state of all of them (the gateway's own
  figure from the live data, else the capacity-weighted mean of the units),
  `energy_meter_battery_power_watts` the power out of them (storage CT, or the live data;
  positive = discharging), `energy_meter_battery_stored_energy_joules` what they hold.

Known firmware faults, and what the parsers do about them:

* Phases that do not exist are reported as channels full of zeros (split-phase and single-phase
  meters still send three channels), and some firmware fills them with noise or with a copy of
  another CT's phase instead. With the meter's `phaseCount` from `/ivp/meters`, channels beyond
  it give no series; without it, a channel whose every value is 0 gives no series.
* Firmware 8.3.5433 reports, in `/production.json`, a total-consumption entry that is a copy of
  the net-consumption entry. Both cannot be true while anything was ever produced, so an entry
  pair that agrees in power and lifetime energy is taken as this fault and the total-consumption
  figures are not exported (the net ones are right; with a total-consumption CT installed the
  real house consumption is `energy_meter_ct_active_power_watts{meter="total-consumption"}`).
  The same check applies to `/ivp/meters/reports`.
* CT entries of a meter that is not installed (`activeCount` 0 and a lifetime of 0) carry
  random power values; they give no series.
* Power factors above 1 in magnitude (seen on 8.3.5433) are physically impossible: dropped.
* Lifetime counters have been seen to step down; the parsers report what the gateway says and
  the core daemon holds counters back. A negative counter value is dropped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ...model import catalogue as M
from ...model.catalogue import JOULES_PER_WH
from ...model.jsontext import label_text, loads
from ...model.samples import (DeviceInfo, ParseError, Reading, checked_list, checked_object, kind_of, number_or_none,
                              optional_list, optional_object)

PHASES = ("l1", "l2", "l3")
MW_TO_W = 1e-3

# --- Small checked accessors ------------------------------------------------------------------


def _opt_obj(parent: dict, key: str, what: str) -> dict | None:
    return optional_object(parent.get(key), f"{what}.{key}")


def _opt_list(parent: dict, key: str, what: str) -> list:
    return optional_list(parent.get(key), f"{what}.{key}")


def _opt_str(parent: dict, key: str, what: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what}.{key}: expected a string, got {kind_of(value)}")
    return value


def _int(value: Any, what: str) -> int | None:
    """An integer identifier or count (JSON integer, or a string of digits)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ParseError(f"{what}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    raise ParseError(f"{what}: expected an integer, got {kind_of(value)}")


_DIGITS = re.compile(r"[0-9]{1,30}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def _serial(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParseError(f"{what}: expected a serial number, got {kind_of(value)}")
    if isinstance(value, int) and not -10**64 < value < 10**64:
        raise ParseError(f"{what}: number out of range")
    text = str(value).strip()
    if not text:
        raise ParseError(f"{what}: empty serial number")
    return label_text(text)  # a label value (inverter, battery)


def _wh(value: Any, what: str) -> float | None:
    """Lifetime Wh -> J; None for absent or negative (a counter cannot be negative)."""
    number = number_or_none(value, what)
    if number is None or number < 0:
        return None
    return number * JOULES_PER_WH


def _pf(value: Any, what: str) -> float | None:
    number = number_or_none(value, what)
    if number is None or abs(number) > 1.0:
        return None  # impossible power factor: firmware fault, not a measurement
    return number


def _timestamp(value: Any, what: str) -> float | None:
    number = number_or_none(value, what)
    return number if number is not None and number > 0 else None


def _all_zero(row: dict, skip: Iterable[str], what: str) -> bool:
    """Every numeric value of a channel is 0 (ids, clocks and frequency do not count)."""
    skipped = set(skip)
    for key, value in row.items():
        if key in skipped or isinstance(value, (dict, list, str)) or value is None:
            continue
        if number_or_none(value, f"{what}.{key}") != 0:
            return False
    return True


_ROW_META = ("eid", "timestamp", "freq", "freqHz", "phase")


def _phase_rows(rows: list, phase_count: int | None, what: str) -> list[tuple[str, dict]]:
    """Per-phase rows (channels, lines) with the phases that do not exist left out."""
    if len(rows) > 3:
        raise ParseError(f"{what}: {len(rows)} phases; a meter has at most 3")
    checked = [checked_object(row, f"{what}[{i}]") for i, row in enumerate(rows)]
    out = []
    for index, row in enumerate(checked):
        if phase_count:
            if index >= phase_count:
                continue  # not monitored: zeros, noise, or a copy of another CT's phase
        elif _all_zero(row, _ROW_META, f"{what}[{index}]"):
            continue
        out.append((PHASES[index], row))
    return out


# --- /info -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    serial: str
    part_number: str
    firmware: str  # as the gateway writes it, e.g. "D8.3.5169"
    version: tuple[int, ...]  # (8, 3, 5169)
    web_tokens: bool | None = None
    imeter: bool | None = None

    @property
    def needs_token(self) -> bool:
        """Firmware 7 and later want a JWT over HTTPS; older firmware Digest over HTTP."""
        return self.version[0] >= 7 or bool(self.web_tokens)

    def reading(self) -> Reading:
        return Reading(devices=[DeviceInfo(model=self.part_number, serial=self.serial, firmware=self.firmware)])


_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})(?:\.([0-9]{1,9}))?")


def parse_info(body: bytes | str) -> GatewayInfo:
    """`GET /info` (XML, no auth): serial `<sn>`, part number `<pn>`, firmware `<software>`."""
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        raise ParseError(f"/info: expected XML text, got {kind_of(body)}")
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ParseError(f"/info: not XML ({exc})") from None
    if root.tag != "envoy_info":
        raise ParseError(f"/info: root element is <{root.tag[:40]}>, expected <envoy_info>")
    device = root.find("device")
    if device is None:
        raise ParseError("/info: no <device> element")

    def text_of(parent: ET.Element, tag: str) -> str | None:
        node = parent.find(tag)
        return node.text.strip() if node is not None and node.text and node.text.strip() else None

    serial = text_of(device, "sn")
    software = text_of(device, "software")
    if not serial or not software:
        raise ParseError("/info: <sn> or <software> missing")
    match = _VERSION.search(software)
    if not match:
        raise ParseError(f"/info: firmware {software[:40]!r} has no version number")
    version = tuple(int(part) for part in match.groups() if part is not None)

    def flag(value: str | None) -> bool | None:
        return None if value is None else value.lower() == "true"

    return GatewayInfo(  # label values of the info metric: made fit for that
        serial=label_text(serial),
        part_number=label_text(text_of(device, "pn") or ""),
        firmware=label_text(software),
        version=version,
        web_tokens=flag(text_of(root, "web-tokens")),
        imeter=flag(text_of(device, "imeter")),
    )


# --- /api/v1/production ------------------------------------------------------------------------


def parse_api_v1_production(payload: Any) -> Reading:
    """`GET /api/v1/production`: system production now (W) and since installation (Wh)."""
    data = checked_object(payload, "/api/v1/production")
    reading = Reading()
    reading.add(M.PRODUCTION_POWER, number_or_none(data.get("wattsNow"), "wattsNow"))
    reading.add(M.PRODUCTION_ENERGY, _wh(data.get("wattHoursLifetime"), "wattHoursLifetime"))
    return reading


# --- /api/v1/production/inverters ----------------------------------------------------------------


def parse_inverters(payload: Any) -> Reading:
    """`GET /api/v1/production/inverters`: each microinverter's last report (updated every 5 min)."""
    rows = checked_list(payload, "/api/v1/production/inverters")
    reading = Reading()
    seen: set[str] = set()
    for index, row in enumerate(rows):
        what = f"inverters[{index}]"
        row = checked_object(row, what)
        serial = _serial(row.get("serialNumber"), f"{what}.serialNumber")
        if serial is None:
            raise ParseError(f"{what}: no serialNumber")
        if serial in seen:
            raise ParseError(f"{what}: inverter {serial} listed twice")
        seen.add(serial)
        reading.add(M.INVERTER_POWER, number_or_none(row.get("lastReportWatts"), f"{what}.lastReportWatts"), inverter=serial)
        reading.add(M.INVERTER_MAX_POWER, number_or_none(row.get("maxReportWatts"), f"{what}.maxReportWatts"), inverter=serial)
        reading.add(M.INVERTER_LAST_REPORT, _timestamp(row.get("lastReportDate"), f"{what}.lastReportDate"),
                    inverter=serial)
    return reading


# --- /production.json, /production.json?details=1, /production ---------------------------------


def _in_use(entry: dict, what: str) -> bool:
    """Whether an entry of `/production.json` describes installed devices.

    `activeCount` is 0 for CTs ("eim") that are not installed, whose entries then carry random
    power values and a lifetime of 0, and for systems without microinverters; some firmware
    also drops `activeCount` to 0 for a poll now and then on a working CT, whose lifetime then
    still counts, so the lifetime decides."""
    active = _int(entry.get("activeCount"), f"{what}.activeCount")
    if active is None or active > 0:
        return True
    lifetime = number_or_none(entry.get("whLifetime"), f"{what}.whLifetime")
    return lifetime is not None and lifetime > 0


def _same_figures(a: Mapping, b: Mapping, keys: tuple[str, str], what: str) -> bool:
    values = [(number_or_none(a.get(k), f"{what}.{k}"), number_or_none(b.get(k), f"{what}.{k}")) for k in keys]
    return all(x is not None and x == y for x, y in values)


def parse_production_json(payload: Any, phase_count: int | None = None) -> Reading:
    """`GET /production.json` and `/production.json?details=1` (the latter adds `lines`).

    `phase_count`: phases the CTs monitor (`phaseCount` in `/ivp/meters`), to leave out the
    per-phase lines of phases that do not exist; None when unknown."""
    data = checked_object(payload, "/production.json")
    production = [checked_object(e, f"production[{i}]") for i, e in enumerate(_opt_list(data, "production", "/production.json"))]
    consumption = [checked_object(e, f"consumption[{i}]") for i, e in enumerate(_opt_list(data, "consumption", "/production.json"))]
    _opt_list(data, "storage", "/production.json")  # shape check only: AC Battery data is not exported

    def pick(entries: list[dict], section: str, kind: str, measurement: str | None) -> tuple[dict, str] | None:
        for index, entry in enumerate(entries):
            what = f"{section}[{index}]"
            if _opt_str(entry, "type", what) != kind:
                continue
            if measurement is not None and _opt_str(entry, "measurementType", what) != measurement:
                continue
            if kind == "eim" and not _in_use(entry, what):
                continue
            return entry, what
        return None

    reading = Reading()
    inverters = pick(production, "production", "inverters", None)
    if inverters and _in_use(*inverters):
        entry, what = inverters
        reading.add(M.MICROINVERTERS_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        reading.add(M.MICROINVERTERS_ENERGY, _wh(entry.get("whLifetime"), f"{what}.whLifetime"))
    ct_production = pick(production, "production", "eim", "production")
    source = ct_production or inverters
    if source:
        entry, what = source
        reading.add(M.PRODUCTION_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        reading.add(M.PRODUCTION_ENERGY, _wh(entry.get("whLifetime"), f"{what}.whLifetime"))
        if ct_production:
            for phase, line in _phase_rows(_opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
                reading.add(M.PHASE_PRODUCTION_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)

    total = pick(consumption, "consumption", "eim", "total-consumption")
    net = pick(consumption, "consumption", "eim", "net-consumption")
    if total and net and _same_figures(total[0], net[0], ("wNow", "whLifetime"), total[1]):
        if not _nothing_produced(source, "production"):
            total = None  # firmware 8.3.5433: the "total" is a copy of net consumption
    if total:
        entry, what = total
        reading.add(M.CONSUMPTION_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        reading.add(M.CONSUMPTION_ENERGY, _wh(entry.get("whLifetime"), f"{what}.whLifetime"))
        for phase, line in _phase_rows(_opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
            reading.add(M.PHASE_CONSUMPTION_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)
    if net:
        # Net lifetime energy is import minus export, not a counter: not exported.
        entry, what = net
        reading.add(M.ACTIVE_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        for phase, line in _phase_rows(_opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
            reading.add(M.PHASE_ACTIVE_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)
    return reading


def _nothing_produced(source: tuple[dict, str] | None, kind: str) -> bool:
    """True when the system has produced nothing yet (then total and net consumption are equal
    for real, and the 8.3.5433 check must not fire)."""
    if source is None:
        return True
    entry, what = source
    lifetime = number_or_none(entry.get("whLifetime") if kind == "production" else entry.get("whDlvdCum"), what)
    return not lifetime


_HTML_FIGURE = re.compile(
    r"<td>\s*(Currently|Since Installation)\s*</td>\s*<td>\s*([0-9]+(?:\.[0-9]+)?)\s*([kMG]?)(Wh|W)\s*</td>",
    re.IGNORECASE,
)
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_production_html(body: bytes | str) -> Reading:
    """`GET /production` on old firmware: an HTML page ("Currently 1.2 kW", "Since Installation
    14.6 MWh"). The lifetime is rounded to three digits, so it is only a last resort."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if not isinstance(text, str):
        raise ParseError(f"/production: expected HTML text, got {kind_of(body)}")
    figures = {m.group(1).lower(): (float(m.group(2)) * _PREFIX[m.group(3).lower()], m.group(4)) for m in _HTML_FIGURE.finditer(text)}
    now, lifetime = figures.get("currently"), figures.get("since installation")
    if now is None and lifetime is None:
        raise ParseError("/production: not a production page (no 'Currently' or 'Since Installation')")
    reading = Reading()
    if now is not None and now[1] == "W":
        reading.add(M.PRODUCTION_POWER, now[0])
    if lifetime is not None and lifetime[1] == "Wh":
        reading.add(M.PRODUCTION_ENERGY, lifetime[0] * JOULES_PER_WH)
    return reading


def parse_production_page(body: bytes | str, phase_count: int | None = None) -> Reading:
    """`GET /production`: HTML on old firmware, the same JSON as `/production.json` on new."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if isinstance(text, str) and text.lstrip().startswith("<"):
        return parse_production_html(text)
    if not isinstance(text, str):
        raise ParseError(f"/production: expected text, got {kind_of(body)}")
    try:
        payload = loads(text, "/production")
    except ParseError:
        raise ParseError("/production: neither HTML nor JSON") from None
    return parse_production_json(payload, phase_count)


# --- /ivp/pdm/energy -------------------------------------------------------------------------------


def parse_pdm_energy(payload: Any) -> Reading:
    """`GET /ivp/pdm/energy`: production from the production CT ("eim") when it counts, else from
    the microinverters ("pcu"); "rgm" is unused. Consumption ("eim") is total consumption.
    The microinverters' own figures ("pcu") are also given as the microinverter totals. The
    today and seven-day figures are not exported: they reset at the gateway's midnight, late or
    to odd values on some firmware, and `increase()` over the lifetime counters gives them."""
    data = checked_object(payload, "/ivp/pdm/energy")
    production = _opt_obj(data, "production", "/ivp/pdm/energy") or {}
    consumption = _opt_obj(data, "consumption", "/ivp/pdm/energy") or {}
    groups = {
        name: _opt_obj(production, name, "production")
        for name in ("eim", "pcu", "rgm")
    }

    def counts(group: dict | None, what: str) -> bool:
        if group is None:
            return False
        lifetime = number_or_none(group.get("wattHoursLifetime"), f"{what}.wattHoursLifetime")
        return lifetime is not None and lifetime > 0

    reading = Reading()
    pcu = groups["pcu"]
    if counts(pcu, "production.pcu"):
        assert pcu is not None
        reading.add(M.MICROINVERTERS_POWER, number_or_none(pcu.get("wattsNow"), "production.pcu.wattsNow"))
        reading.add(M.MICROINVERTERS_ENERGY, _wh(pcu.get("wattHoursLifetime"), "production.pcu.wattHoursLifetime"))
    chosen = "eim" if counts(groups["eim"], "production.eim") else "pcu"
    group = groups[chosen]
    if group is not None:
        reading.add(M.PRODUCTION_POWER, number_or_none(group.get("wattsNow"), f"production.{chosen}.wattsNow"))
        reading.add(M.PRODUCTION_ENERGY, _wh(group.get("wattHoursLifetime"), f"production.{chosen}.wattHoursLifetime"))
    eim = _opt_obj(consumption, "eim", "consumption")
    if counts(eim, "consumption.eim"):
        reading.add(M.CONSUMPTION_POWER, number_or_none(eim.get("wattsNow"), "consumption.eim.wattsNow"))
        reading.add(M.CONSUMPTION_ENERGY, _wh(eim.get("wattHoursLifetime"), "consumption.eim.wattHoursLifetime"))
    return reading


# --- /ivp/meters + /ivp/meters/readings --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One CT as `/ivp/meters` describes it."""

    eid: int
    role: str | None  # measurementType: production, net-consumption, total-consumption, storage, ...
    label: str | None  # the `meter` label: the role, made unique if two CTs share one
    enabled: bool
    phase_count: int | None
    phase_mode: str | None = None


def parse_meters(payload: Any) -> dict[int, MeterConfig]:
    """`GET /ivp/meters`: the CTs, keyed by `eid` (the key of `/ivp/meters/readings`)."""
    rows = checked_list(payload, "/ivp/meters")
    meters: dict[int, MeterConfig] = {}
    used: dict[str, int] = {}
    for index, row in enumerate(rows):
        what = f"meters[{index}]"
        row = checked_object(row, what)
        eid = _int(row.get("eid"), f"{what}.eid")
        if eid is None:
            raise ParseError(f"{what}: no eid")
        if eid in meters:
            raise ParseError(f"{what}: eid {eid} listed twice")
        role = _opt_str(row, "measurementType", what)
        state = _opt_str(row, "state", what)
        phase_count = _int(row.get("phaseCount"), f"{what}.phaseCount")
        if phase_count is not None and not 0 <= phase_count <= 3:
            raise ParseError(f"{what}.phaseCount: {phase_count} is not 0..3")
        enabled = state is None or state == "enabled"
        label = None
        if role and enabled:
            role = label_text(role.strip(), 64)  # the `meter` label
            count = used.get(role, 0)
            used[role] = count + 1
            label = role if count == 0 else f"{role}-{count + 1}"
        meters[eid] = MeterConfig(
            eid=eid, role=role or None, label=label, enabled=enabled,
            phase_count=phase_count or None, phase_mode=_opt_str(row, "phaseMode", what),
        )
    return meters


def gateway_phase_count(meters: Mapping[int, MeterConfig]) -> int | None:
    """The phases the gateway's CTs monitor (the largest `phaseCount` of the enabled CTs)."""
    counts = [m.phase_count for m in meters.values() if m.enabled and m.phase_count]
    return max(counts) if counts else None


def parse_meter_readings(payload: Any, meters: Mapping[int, MeterConfig]) -> Reading:
    """`GET /ivp/meters/readings`, joined with `/ivp/meters` on `eid`.

    Readings of CTs that `/ivp/meters` does not list, or lists as disabled, give no series: their
    role is unknown (firmware 8.3 lists an extra all-zero meter) or they are not installed."""
    rows = checked_list(payload, "/ivp/meters/readings")
    reading = Reading()
    for index, row in enumerate(rows):
        what = f"readings[{index}]"
        row = checked_object(row, what)
        eid = _int(row.get("eid"), f"{what}.eid")
        if eid is None:
            raise ParseError(f"{what}: no eid")
        config = meters.get(eid)
        raw_channels = _opt_list(row, "channels", what)
        channels = _phase_rows(raw_channels, config.phase_count if config else None, f"{what}.channels")
        values = {key: number_or_none(row.get(key), f"{what}.{key}") for key in _CT_FIELDS}
        if config is None or not config.enabled or not config.label:
            continue
        _add_ct(reading, config.label, row, values, channels, what)
        if config.label == "net-consumption":
            _add_grid(reading, row, values, channels, what)
        elif config.label == "storage":
            # The storage CT sits between the batteries and the house: forward = discharging.
            reading.add(M.BATTERY_POWER, values["activePower"])
    return reading


_CT_FIELDS = ("activePower", "apparentPower", "reactivePower", "voltage", "current", "pwrFactor", "freq",
              "actEnergyDlvd", "actEnergyRcvd", "timestamp")


def _add_ct(reading: Reading, meter: str, row: dict, values: dict, channels: list[tuple[str, dict]], what: str) -> None:
    reading.add(M.CT_ACTIVE_POWER, values["activePower"], meter=meter)
    reading.add(M.CT_APPARENT_POWER, values["apparentPower"], meter=meter)
    reading.add(M.CT_REACTIVE_POWER, values["reactivePower"], meter=meter)
    reading.add(M.CT_VOLTAGE, values["voltage"], meter=meter)
    reading.add(M.CT_CURRENT, values["current"], meter=meter)
    reading.add(M.CT_POWER_FACTOR, _pf(values["pwrFactor"], f"{what}.pwrFactor"), meter=meter)
    reading.add(M.CT_FREQUENCY, values["freq"], meter=meter)
    reading.add(M.CT_ENERGY_DELIVERED, _wh(values["actEnergyDlvd"], f"{what}.actEnergyDlvd"), meter=meter)
    reading.add(M.CT_ENERGY_RECEIVED, _wh(values["actEnergyRcvd"], f"{what}.actEnergyRcvd"), meter=meter)
    reading.add(M.CT_MEASUREMENT_TIME, _timestamp(values["timestamp"], f"{what}.timestamp"), meter=meter)
    for phase, channel in channels:
        cw = f"{what}.channels.{phase}"
        reading.add(M.CT_PHASE_ACTIVE_POWER, number_or_none(channel.get("activePower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_APPARENT_POWER, number_or_none(channel.get("apparentPower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_REACTIVE_POWER, number_or_none(channel.get("reactivePower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_VOLTAGE, number_or_none(channel.get("voltage"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_CURRENT, number_or_none(channel.get("current"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_POWER_FACTOR, _pf(channel.get("pwrFactor"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_ENERGY_DELIVERED, _wh(channel.get("actEnergyDlvd"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_ENERGY_RECEIVED, _wh(channel.get("actEnergyRcvd"), cw), meter=meter, phase=phase)


def _add_grid(reading: Reading, row: dict, values: dict, channels: list[tuple[str, dict]], what: str) -> None:
    """The net-consumption CT is the grid connection: the names every meter vendor shares.
    Delivered = imported from the grid, received = exported to it."""
    reading.add(M.ACTIVE_POWER, values["activePower"])
    reading.add(M.APPARENT_POWER, values["apparentPower"])
    reading.add(M.REACTIVE_POWER, values["reactivePower"])
    reading.add(M.CURRENT, values["current"])
    reading.add(M.POWER_FACTOR, _pf(values["pwrFactor"], f"{what}.pwrFactor"))
    reading.add(M.FREQUENCY, values["freq"])
    reading.add(M.ENERGY_IMPORTED, _wh(values["actEnergyDlvd"], f"{what}.actEnergyDlvd"))
    reading.add(M.ENERGY_EXPORTED, _wh(values["actEnergyRcvd"], f"{what}.actEnergyRcvd"))
    reading.add(M.MEASUREMENT_TIME, _timestamp(values["timestamp"], f"{what}.timestamp"))
    for phase, channel in channels:
        cw = f"{what}.channels.{phase}"
        reading.add(M.PHASE_ACTIVE_POWER, number_or_none(channel.get("activePower"), cw), phase=phase)
        reading.add(M.PHASE_APPARENT_POWER, number_or_none(channel.get("apparentPower"), cw), phase=phase)
        reading.add(M.PHASE_REACTIVE_POWER, number_or_none(channel.get("reactivePower"), cw), phase=phase)
        reading.add(M.PHASE_VOLTAGE, number_or_none(channel.get("voltage"), cw), phase=phase)
        reading.add(M.PHASE_CURRENT, number_or_none(channel.get("current"), cw), phase=phase)
        reading.add(M.PHASE_POWER_FACTOR, _pf(channel.get("pwrFactor"), cw), phase=phase)


# --- /ivp/meters/reports, /ivp/meters/reports/consumption ------------------------------------------


def parse_meter_reports(payload: Any, phase_count: int | None = None) -> Reading:
    """`GET /ivp/meters/reports` (a list of reports) or `/ivp/meters/reports/<type>` (one).

    Reports are per role, like `/production.json`: production, net-consumption and the derived
    total-consumption; they map to the same names (see the module docstring)."""
    reports = payload if isinstance(payload, list) else [checked_object(payload, "/ivp/meters/reports")]
    by_type: dict[str, tuple[dict, str]] = {}
    for index, report in enumerate(reports):
        what = f"reports[{index}]"
        report = checked_object(report, what)
        kind = _opt_str(report, "reportType", what)
        cumulative = _opt_obj(report, "cumulative", what)
        if kind is None or cumulative is None:
            raise ParseError(f"{what}: reportType or cumulative missing")
        if kind in by_type:
            raise ParseError(f"{what}: report {kind!r} listed twice")
        by_type[kind] = (report, what)

    def power(cumulative: dict, what: str) -> float | None:
        value = number_or_none(cumulative.get("actPower"), f"{what}.actPower")
        return value if value is not None else number_or_none(cumulative.get("currW"), f"{what}.currW")

    def lines(report: dict, what: str) -> list[tuple[str, dict]]:
        return _phase_rows(_opt_list(report, "lines", what), phase_count, f"{what}.lines")

    reading = Reading()
    production, total, net = (by_type.get(k) for k in ("production", "total-consumption", "net-consumption"))
    if production:
        report, what = production
        cumulative = report["cumulative"]
        reading.add(M.PRODUCTION_POWER, power(cumulative, what))
        reading.add(M.PRODUCTION_ENERGY, _wh(cumulative.get("whDlvdCum"), f"{what}.whDlvdCum"))
        for phase, line in lines(report, what):
            reading.add(M.PHASE_PRODUCTION_POWER, power(line, f"{what}.lines"), phase=phase)
    if total and net and _same_figures(total[0]["cumulative"], net[0]["cumulative"], ("actPower", "whDlvdCum"), total[1]):
        if not _nothing_produced((production[0]["cumulative"], production[1]) if production else None, "report"):
            total = None  # firmware 8.3.5433: the "total" is a copy of net consumption
    if total:
        report, what = total
        cumulative = report["cumulative"]
        reading.add(M.CONSUMPTION_POWER, power(cumulative, what))
        reading.add(M.CONSUMPTION_ENERGY, _wh(cumulative.get("whDlvdCum"), f"{what}.whDlvdCum"))
        for phase, line in lines(report, what):
            reading.add(M.PHASE_CONSUMPTION_POWER, power(line, f"{what}.lines"), phase=phase)
    if net:
        report, what = net
        reading.add(M.ACTIVE_POWER, power(report["cumulative"], what))
        for phase, line in lines(report, what):
            reading.add(M.PHASE_ACTIVE_POWER, power(line, f"{what}.lines"), phase=phase)
    return reading


# --- /ivp/meters/gridReading -------------------------------------------------------------------------


def parse_grid_reading(payload: Any, phase_count: int | None = None) -> Reading:
    """`GET /ivp/meters/gridReading`: per phase at the grid connection; negative = exporting."""
    rows = checked_list(payload, "/ivp/meters/gridReading")
    reading = Reading()
    seen: set[str] = set()
    frequency: float | None = None
    for index, row in enumerate(rows):
        what = f"gridReading[{index}]"
        row = checked_object(row, what)
        raw = _opt_list(row, "channels", what)
        named: list[tuple[str, dict]] = []
        for ci, channel in enumerate(raw):
            cw = f"{what}.channels[{ci}]"
            channel = checked_object(channel, cw)
            name = _opt_str(channel, "phase", cw)
            phase = name.strip().lower() if name else (PHASES[ci] if ci < 3 else None)
            if phase not in PHASES:
                raise ParseError(f"{cw}.phase: {str(name)[:20]!r} is not L1, L2 or L3")
            if phase in seen:
                raise ParseError(f"{cw}: phase {phase} listed twice")
            seen.add(phase)
            named.append((phase, channel))
        for phase, channel in named:
            cw = f"{what}.channels.{phase}"
            index_of = PHASES.index(phase)
            zero = _all_zero(channel, _ROW_META, cw)
            if (phase_count and index_of >= phase_count) or (not phase_count and zero):
                continue
            reading.add(M.PHASE_ACTIVE_POWER, number_or_none(channel.get("activePower"), cw), phase=phase)
            reading.add(M.PHASE_REACTIVE_POWER, number_or_none(channel.get("reactivePower"), cw), phase=phase)
            reading.add(M.PHASE_VOLTAGE, number_or_none(channel.get("voltage"), cw), phase=phase)
            reading.add(M.PHASE_CURRENT, number_or_none(channel.get("current"), cw), phase=phase)
            if frequency is None:
                frequency = number_or_none(channel.get("freq"), f"{cw}.freq")
    reading.add(M.FREQUENCY, frequency)
    return reading


# --- /ivp/livedata/status ------------------------------------------------------------------------------


LIVEDATA_MAX_AGE = 300.0  # older live figures are left over from when the stream was last on
_BATTERY_KEYS = ("soc", "enc_agg_soc", "acb_agg_soc", "enc_agg_energy", "acb_agg_energy")


def livedata_updated_at(payload: Any) -> float | None:
    """When the gateway last refreshed the figures of `/ivp/livedata/status` (Unix time)."""
    meters = _opt_obj(checked_object(payload, "/ivp/livedata/status"), "meters", "/ivp/livedata/status")
    if meters is None:
        return None
    value = meters.get("last_update", meters.get("timestamp"))
    return _timestamp(value, "meters.last_update")


def parse_livedata(payload: Any, now: float | None = None) -> Reading:
    """`GET /ivp/livedata/status`: the gateway's live view, powers in milliwatts.

    The gateway refreshes these figures only while its live stream is on (the Enphase app turns
    it on while its live view is open, for a few minutes); otherwise they are frozen at the
    time in `last_update`. With `now`, figures older than `LIVEDATA_MAX_AGE` give no series.

    Exported: storage -> battery power (positive = discharging), the batteries' state of charge
    and stored energy (Wh), only when the gateway reports any battery (a non-zero state of
    charge or stored energy): a system without batteries reports zeros there, which are not a
    battery. Not exported: pv, load and grid repeat what the CTs measure (read every poll from
    `/ivp/meters/readings`, and `/production.json`), and a gateway without CTs reports zeros
    there that are not measurements; the generator section likewise holds zeros on systems
    without a generator that cannot be told from an idle one."""
    data = checked_object(payload, "/ivp/livedata/status")
    meters = _opt_obj(data, "meters", "/ivp/livedata/status")
    reading = Reading()
    if meters is None:
        return reading
    updated = livedata_updated_at(data)
    if now is not None and updated is not None and now - updated > LIVEDATA_MAX_AGE:
        return reading

    def milliwatts(section: str) -> float | None:
        group = _opt_obj(meters, section, "meters")
        if group is None:
            return None
        value = number_or_none(group.get("agg_p_mw"), f"meters.{section}.agg_p_mw")
        return None if value is None else value * MW_TO_W

    for section in ("pv", "load", "grid", "generator"):
        milliwatts(section)  # shape check only (see above)
    battery = {k: number_or_none(meters.get(k), f"meters.{k}") for k in _BATTERY_KEYS}
    for key in ("soc", "enc_agg_soc", "acb_agg_soc"):
        value = battery[key]
        if value is not None and not 0 <= value <= 100:
            raise ParseError(f"meters.{key}: {value} is not a percentage")
    for key in ("enc_agg_energy", "acb_agg_energy"):
        value = battery[key]
        if value is not None and value < 0:
            raise ParseError(f"meters.{key}: stored energy {value} is negative")
    if any(battery.values()):
        soc = battery["soc"] if battery["soc"] is not None else battery["enc_agg_soc"]
        reading.add(M.BATTERY_STATE_OF_CHARGE, None if soc is None else soc / 100)
        stored = [v for v in (battery["enc_agg_energy"], battery["acb_agg_energy"]) if v is not None]
        reading.add(M.BATTERY_STORED_ENERGY, sum(stored) * JOULES_PER_WH if stored else None)
        reading.add(M.BATTERY_POWER, milliwatts("storage"))
    return reading


# --- /ivp/ensemble/inventory, /ivp/ensemble/device_list -------------------------------------------------

BATTERY_TYPES = ("ENCHARGE", "ACB")
DEVICE_TYPE_BATTERY = 13


def parse_ensemble_inventory(payload: Any) -> Reading:
    """`GET /ivp/ensemble/inventory`: IQ Batteries (Encharge) and AC Batteries, per serial.

    `temperature` is in degrees Celsius for batteries (the Enpower/System Controller reports
    Fahrenheit and is not exported). The aggregate state of charge is the capacity-weighted mean,
    given only when every battery reports both figures."""
    groups = checked_list(payload, "/ivp/ensemble/inventory")
    reading = Reading()
    seen: set[str] = set()
    weighted: list[tuple[float | None, float | None]] = []
    for gi, group in enumerate(groups):
        gw = f"inventory[{gi}]"
        group = checked_object(group, gw)
        kind = _opt_str(group, "type", gw)
        devices = _opt_list(group, "devices", gw)
        if kind not in BATTERY_TYPES:
            continue
        for di, device in enumerate(devices):
            what = f"{gw}.devices[{di}]"
            device = checked_object(device, what)
            serial = _serial(device.get("serial_num"), f"{what}.serial_num")
            if serial is None:
                raise ParseError(f"{what}: no serial_num")
            if serial in seen:
                raise ParseError(f"{what}: battery {serial} listed twice")
            seen.add(serial)
            percent = number_or_none(device.get("percentFull"), f"{what}.percentFull")
            if percent is not None and not 0 <= percent <= 100:
                raise ParseError(f"{what}.percentFull: {percent} is not a percentage")
            capacity = number_or_none(device.get("encharge_capacity"), f"{what}.encharge_capacity")
            if capacity is not None and capacity <= 0:
                capacity = None
            ratio = None if percent is None else percent / 100
            reading.add(M.BATTERY_UNIT_STATE_OF_CHARGE, ratio, battery=serial)
            reading.add(M.BATTERY_UNIT_TEMPERATURE, number_or_none(device.get("temperature"), f"{what}.temperature"), battery=serial)
            reading.add(M.BATTERY_UNIT_CAPACITY, None if capacity is None else capacity * JOULES_PER_WH, battery=serial)
            weighted.append((ratio, capacity))
    if weighted and all(r is not None and c is not None for r, c in weighted):
        total = sum(c for _, c in weighted)  # type: ignore[misc]
        reading.add(M.BATTERY_STATE_OF_CHARGE, sum(r * c for r, c in weighted) / total)  # type: ignore[operator]
    return reading


def parse_device_list(payload: Any) -> Reading:
    """`GET /ivp/ensemble/device_list`: provisioned devices; batteries (type 13) give their
    capacity (Wh)."""
    data = checked_object(payload, "/ivp/ensemble/device_list")
    reading = Reading()
    seen: set[str] = set()
    for index, device in enumerate(_opt_list(data, "devices", "/ivp/ensemble/device_list")):
        what = f"devices[{index}]"
        device = checked_object(device, what)
        if _int(device.get("device_type"), f"{what}.device_type") != DEVICE_TYPE_BATTERY:
            continue
        serial = _serial(device.get("serial_number"), f"{what}.serial_number")
        if serial is None:
            raise ParseError(f"{what}: no serial_number")
        if serial in seen:
            raise ParseError(f"{what}: battery {serial} listed twice")
        seen.add(serial)
        info = _opt_obj(device, "dev_info", what) or {}
        capacity = number_or_none(info.get("capacity"), f"{what}.dev_info.capacity")
        if capacity is not None and capacity > 0:
            reading.add(M.BATTERY_UNIT_CAPACITY, capacity * JOULES_PER_WH, battery=serial)
    return reading
