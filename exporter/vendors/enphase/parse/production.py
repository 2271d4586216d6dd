"""The system's production and consumption: `/production.json`, `/api/v1/production`, the
HTML page `/production` of the oldest firmware, and `/ivp/pdm/energy`."""

from __future__ import annotations

import re
from typing import Any, Mapping

from ....model import catalogue as M
from ....model.catalogue import JOULES_PER_WH
from ....model.jsontext import loads
from ....model.samples import ParseError, Reading, checked_object, kind_of, number_or_none
from .common import (
    add,
    int_or_none,
    lifetime_to_joules,
    nothing_produced,
    opt_list,
    opt_obj,
    opt_str,
    phase_rows,
    same_figures,
)
from .meters import MeterConfig, ct_roles, gateway_phase_count

# --- /api/v1/production ------------------------------------------------------------------------


def parse_api_v1_production(payload: Any) -> Reading:
    """`GET /api/v1/production`: system production now (W) and since installation (Wh)."""
    data = checked_object(payload, "/api/v1/production")
    reading = Reading()
    reading.add(M.PRODUCTION_POWER, number_or_none(data.get("wattsNow"), "wattsNow"))
    reading.add(M.PRODUCTION_ENERGY, lifetime_to_joules(data.get("wattHoursLifetime"), "wattHoursLifetime"))
    return reading

# --- /production.json, /production.json?details=1, /production ---------------------------------


def _in_use(entry: dict, what: str) -> bool:
    """Whether an entry of `/production.json` describes installed devices, judged from the entry
    alone (for CT entries: when the CT list is unknown).

    `activeCount` is 0 for CTs ("eim") that are not installed, whose entries then carry random
    power values and a lifetime of 0, and for systems without microinverters; some firmware
    also drops `activeCount` to 0 for a poll now and then on a working CT, whose lifetime then
    still counts, so the lifetime decides."""
    active = int_or_none(entry.get("activeCount"), f"{what}.activeCount")
    if active is None or active > 0:
        return True
    lifetime = number_or_none(entry.get("whLifetime"), f"{what}.whLifetime")
    return lifetime is not None and lifetime > 0


# CT entries in the order every firmware lists them; firmware 4.2.x may leave out
# `measurementType`, and then the position tells which is which.
_CT_ORDER = {"production": ("production",), "consumption": ("total-consumption", "net-consumption")}

Entry = tuple[dict, str]  # an entry and where it is, for error messages


def _ct_entries(entries: list[dict], section: str) -> dict[str, Entry]:
    """The CT ("eim") entries of a section by measurement type."""
    found: dict[str, Entry] = {}
    untyped = 0
    for index, entry in enumerate(entries):
        what = f"{section}[{index}]"
        if opt_str(entry, "type", what) != "eim":
            continue
        kind = opt_str(entry, "measurementType", what)
        if kind is None:
            order = _CT_ORDER[section]
            if untyped >= len(order):
                continue
            kind, untyped = order[untyped], untyped + 1
        found.setdefault(kind, (entry, what))
    return found


def parse_production_json(payload: Any, phase_count: int | None = None,
                          meters: Mapping[int, MeterConfig] | None = None) -> Reading:
    """`GET /production.json` and `/production.json?details=1` (the latter adds `lines`).

    `phase_count`: phases the CTs monitor (`phaseCount` in `/ivp/meters`), to leave out the
    per-phase lines of phases that do not exist; None when unknown (then taken from `meters`).

    `meters`: the CT list (`/ivp/meters`), None when the gateway has none (older firmware).
    It decides which CT entries count: the production entry needs the production CT enabled,
    the consumption entries need a consumption CT enabled (net or total: the gateway computes
    the other one from it). The entries of a disabled or absent CT carry noise and a lifetime
    that still counts, so they give no series, and production comes from the microinverters.
    Without a CT list the entries are judged by themselves (`_in_use`).

    Firmware 8.3.5433 reports a total-consumption entry that is a copy of the net-consumption
    entry. Then, with production from the production CT, house consumption is derived as
    production + net consumption (power, lifetime energy, and per phase); the net lifetime is
    import minus export, so the sum is the energy consumed. With production from the
    microinverters (whose lifetime can wrap) nothing is derived."""
    data = checked_object(payload, "/production.json")
    production = [checked_object(e, f"production[{i}]") for i, e in enumerate(opt_list(data, "production", "/production.json"))]
    consumption = [checked_object(e, f"consumption[{i}]") for i, e in enumerate(opt_list(data, "consumption", "/production.json"))]
    opt_list(data, "storage", "/production.json")  # shape check only: AC Battery data is not exported
    roles = ct_roles(meters)
    if phase_count is None and meters is not None:
        phase_count = gateway_phase_count(meters)

    def usable(entry: Entry | None, enabled: bool) -> Entry | None:
        if entry is None:
            return None
        if roles is None:
            return entry if _in_use(*entry) else None
        return entry if enabled else None

    def lines(entry: Entry) -> list[tuple[str, dict]]:
        return phase_rows(opt_list(entry[0], "lines", entry[1]), phase_count, f"{entry[1]}.lines")

    def now(entry: Entry) -> float | None:
        return number_or_none(entry[0].get("wNow"), f"{entry[1]}.wNow")

    def lifetime(entry: Entry) -> float | None:
        return number_or_none(entry[0].get("whLifetime"), f"{entry[1]}.whLifetime")

    reading = Reading()
    inverters = next(((e, f"production[{i}]") for i, e in enumerate(production)
                      if opt_str(e, "type", f"production[{i}]") == "inverters"), None)
    if inverters and not _in_use(*inverters):
        inverters = None
    if inverters:
        reading.add(M.MICROINVERTERS_POWER, now(inverters))
        reading.add(M.MICROINVERTERS_ENERGY, lifetime_to_joules(lifetime(inverters), f"{inverters[1]}.whLifetime"))
    cts = _ct_entries(production, "production")
    ct_production = usable(cts.get("production"), bool(roles and roles.production))
    source = ct_production or inverters
    if source:
        reading.add(M.PRODUCTION_POWER, now(source))
        reading.add(M.PRODUCTION_ENERGY, lifetime_to_joules(lifetime(source), f"{source[1]}.whLifetime"))
        if ct_production:
            for phase, line in lines(ct_production):
                reading.add(M.PHASE_PRODUCTION_POWER, number_or_none(line.get("wNow"), f"{source[1]}.lines.wNow"), phase=phase)

    cts = _ct_entries(consumption, "consumption")
    consumption_ct = bool(roles and roles.consumption)
    total = usable(cts.get("total-consumption"), consumption_ct)
    net = usable(cts.get("net-consumption"), consumption_ct)
    copied = False
    if total and net and same_figures(total[0], net[0], ("wNow", "whLifetime"), total[1]):
        if not nothing_produced(source, "production"):
            total, copied = None, True  # firmware 8.3.5433: the "total" is a copy of net consumption
    if total:
        entry, what = total
        reading.add(M.CONSUMPTION_POWER, now(total))
        reading.add(M.CONSUMPTION_ENERGY, lifetime_to_joules(lifetime(total), f"{what}.whLifetime"))
        for phase, line in lines(total):
            reading.add(M.PHASE_CONSUMPTION_POWER, number_or_none(line.get("wNow"), f"{what}.lines.wNow"), phase=phase)
    elif copied and ct_production and net:
        reading.add(M.CONSUMPTION_POWER, add(now(ct_production), now(net)))
        reading.add(M.CONSUMPTION_ENERGY, lifetime_to_joules(add(lifetime(ct_production), lifetime(net)),
                                                             f"{net[1]}.whLifetime"))
        net_lines = dict(lines(net))
        for phase, line in lines(ct_production):
            if phase in net_lines:
                figure = add(number_or_none(line.get("wNow"), f"{ct_production[1]}.lines.wNow"),
                             number_or_none(net_lines[phase].get("wNow"), f"{net[1]}.lines.wNow"))
                reading.add(M.PHASE_CONSUMPTION_POWER, figure, phase=phase)
    if net:
        # Net lifetime energy is import minus export, not a counter: not exported.
        entry, what = net
        reading.add(M.ACTIVE_POWER, now(net))
        for phase, line in lines(net):
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
    if lifetime is not None and lifetime[1] == "Wh" and lifetime[0] > 0:  # 0: not counting
        reading.add(M.PRODUCTION_ENERGY, lifetime[0] * JOULES_PER_WH)
    return reading


def parse_production_page(body: bytes | str, phase_count: int | None = None,
                          meters: Mapping[int, MeterConfig] | None = None) -> Reading:
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
    return parse_production_json(payload, phase_count, meters)


# --- /ivp/pdm/energy -------------------------------------------------------------------------------


def parse_pdm_energy(payload: Any, meters: Mapping[int, MeterConfig] | None = None) -> Reading:
    """`GET /ivp/pdm/energy`: production from the production CT ("eim") when it counts, else from
    the microinverters ("pcu"); "rgm" is unused. Consumption ("eim") is total consumption.
    The microinverters' own figures ("pcu") are also given as the microinverter totals. The
    today and seven-day figures are not exported: they reset at the gateway's midnight, late or
    to odd values on some firmware, and `increase()` over the lifetime counters gives them.
    `meters`, the CT list (None when unknown), decides whether the CTs are there, as for
    `/production.json`; without it, a CT group counts when its lifetime does."""
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

    roles = ct_roles(meters)
    reading = Reading()
    pcu = groups["pcu"]
    if counts(pcu, "production.pcu"):
        assert pcu is not None
        reading.add(M.MICROINVERTERS_POWER, number_or_none(pcu.get("wattsNow"), "production.pcu.wattsNow"))
        reading.add(M.MICROINVERTERS_ENERGY, lifetime_to_joules(pcu.get("wattHoursLifetime"), "production.pcu.wattHoursLifetime"))
    ct_production = counts(groups["eim"], "production.eim") if roles is None else roles.production
    chosen = "eim" if ct_production and groups["eim"] is not None else "pcu"
    group = groups[chosen]
    if group is not None:
        reading.add(M.PRODUCTION_POWER, number_or_none(group.get("wattsNow"), f"production.{chosen}.wattsNow"))
        reading.add(M.PRODUCTION_ENERGY, lifetime_to_joules(group.get("wattHoursLifetime"), f"production.{chosen}.wattHoursLifetime"))
    eim = opt_obj(consumption, "eim", "consumption")
    if eim is not None and (counts(eim, "consumption.eim") if roles is None else roles.consumption):
        reading.add(M.CONSUMPTION_POWER, number_or_none(eim.get("wattsNow"), "consumption.eim.wattsNow"))
        reading.add(M.CONSUMPTION_ENERGY, lifetime_to_joules(eim.get("wattHoursLifetime"), "consumption.eim.wattHoursLifetime"))
    return reading
