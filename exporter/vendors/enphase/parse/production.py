"""The system's production and consumption: `/production.json`, `/api/v1/production`, the
HTML page `/production` of the oldest firmware, and `/ivp/pdm/energy`."""

from __future__ import annotations

import re
from typing import Any

from ....model import catalogue as M
from ....model.catalogue import JOULES_PER_WH
from ....model.jsontext import loads
from ....model.samples import ParseError, Reading, checked_object, kind_of, number_or_none
from .common import int_or_none, nothing_produced, opt_list, opt_obj, opt_str, phase_rows, same_figures, wh_to_joules

# --- /api/v1/production ------------------------------------------------------------------------


def parse_api_v1_production(payload: Any) -> Reading:
    """`GET /api/v1/production`: system production now (W) and since installation (Wh)."""
    data = checked_object(payload, "/api/v1/production")
    reading = Reading()
    reading.add(M.PRODUCTION_POWER, number_or_none(data.get("wattsNow"), "wattsNow"))
    reading.add(M.PRODUCTION_ENERGY, wh_to_joules(data.get("wattHoursLifetime"), "wattHoursLifetime"))
    return reading

# --- /production.json, /production.json?details=1, /production ---------------------------------


def _in_use(entry: dict, what: str) -> bool:
    """Whether an entry of `/production.json` describes installed devices.

    `activeCount` is 0 for CTs ("eim") that are not installed, whose entries then carry random
    power values and a lifetime of 0, and for systems without microinverters; some firmware
    also drops `activeCount` to 0 for a poll now and then on a working CT, whose lifetime then
    still counts, so the lifetime decides."""
    active = int_or_none(entry.get("activeCount"), f"{what}.activeCount")
    if active is None or active > 0:
        return True
    lifetime = number_or_none(entry.get("whLifetime"), f"{what}.whLifetime")
    return lifetime is not None and lifetime > 0


def parse_production_json(payload: Any, phase_count: int | None = None) -> Reading:
    """`GET /production.json` and `/production.json?details=1` (the latter adds `lines`).

    `phase_count`: phases the CTs monitor (`phaseCount` in `/ivp/meters`), to leave out the
    per-phase lines of phases that do not exist; None when unknown."""
    data = checked_object(payload, "/production.json")
    production = [checked_object(e, f"production[{i}]") for i, e in enumerate(opt_list(data, "production", "/production.json"))]
    consumption = [checked_object(e, f"consumption[{i}]") for i, e in enumerate(opt_list(data, "consumption", "/production.json"))]
    opt_list(data, "storage", "/production.json")  # shape check only: AC Battery data is not exported

    def pick(entries: list[dict], section: str, kind: str, measurement: str | None) -> tuple[dict, str] | None:
        for index, entry in enumerate(entries):
            what = f"{section}[{index}]"
            if opt_str(entry, "type", what) != kind:
                continue
            if measurement is not None and opt_str(entry, "measurementType", what) != measurement:
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
        reading.add(M.MICROINVERTERS_ENERGY, wh_to_joules(entry.get("whLifetime"), f"{what}.whLifetime"))
    ct_production = pick(production, "production", "eim", "production")
    source = ct_production or inverters
    if source:
        entry, what = source
        reading.add(M.PRODUCTION_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        reading.add(M.PRODUCTION_ENERGY, wh_to_joules(entry.get("whLifetime"), f"{what}.whLifetime"))
        if ct_production:
            for phase, line in phase_rows(opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
                reading.add(M.PHASE_PRODUCTION_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)

    total = pick(consumption, "consumption", "eim", "total-consumption")
    net = pick(consumption, "consumption", "eim", "net-consumption")
    if total and net and same_figures(total[0], net[0], ("wNow", "whLifetime"), total[1]):
        if not nothing_produced(source, "production"):
            total = None  # firmware 8.3.5433: the "total" is a copy of net consumption
    if total:
        entry, what = total
        reading.add(M.CONSUMPTION_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        reading.add(M.CONSUMPTION_ENERGY, wh_to_joules(entry.get("whLifetime"), f"{what}.whLifetime"))
        for phase, line in phase_rows(opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
            reading.add(M.PHASE_CONSUMPTION_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)
    if net:
        # Net lifetime energy is import minus export, not a counter: not exported.
        entry, what = net
        reading.add(M.ACTIVE_POWER, number_or_none(entry.get("wNow"), f"{what}.wNow"))
        for phase, line in phase_rows(opt_list(entry, "lines", what), phase_count, f"{what}.lines"):
            reading.add(M.PHASE_ACTIVE_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)
    return reading


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
    production = opt_obj(data, "production", "/ivp/pdm/energy") or {}
    consumption = opt_obj(data, "consumption", "/ivp/pdm/energy") or {}
    groups = {
        name: opt_obj(production, name, "production")
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
        reading.add(M.MICROINVERTERS_ENERGY, wh_to_joules(pcu.get("wattHoursLifetime"), "production.pcu.wattHoursLifetime"))
    chosen = "eim" if counts(groups["eim"], "production.eim") else "pcu"
    group = groups[chosen]
    if group is not None:
        reading.add(M.PRODUCTION_POWER, number_or_none(group.get("wattsNow"), f"production.{chosen}.wattsNow"))
        reading.add(M.PRODUCTION_ENERGY, wh_to_joules(group.get("wattHoursLifetime"), f"production.{chosen}.wattHoursLifetime"))
    eim = opt_obj(consumption, "eim", "consumption")
    if counts(eim, "consumption.eim"):
        reading.add(M.CONSUMPTION_POWER, number_or_none(eim.get("wattsNow"), "consumption.eim.wattsNow"))
        reading.add(M.CONSUMPTION_ENERGY, wh_to_joules(eim.get("wattHoursLifetime"), "consumption.eim.wattHoursLifetime"))
    return reading
