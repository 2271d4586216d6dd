"""The current transformers: `/ivp/meters` (which CT is where), `/ivp/meters/readings`,
`/ivp/meters/reports` and `/ivp/meters/gridReading`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ....model import catalogue as M
from ....model.catalogue import JOULES_PER_WH, Metric
from ....model.jsontext import label_text
from ....model.samples import ParseError, Reading, checked_list, checked_object, number_or_none
from .common import (
    PHASES,
    ROW_META,
    add,
    all_zero,
    int_or_none,
    lifetime_to_joules,
    nothing_produced,
    opt_list,
    opt_obj,
    opt_str,
    phase_rows,
    power_factor,
    same_figures,
    timestamp_of,
    wh_to_joules,
)

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


class CtList(dict):
    """`/ivp/meters` as the gateway answered it, `eid` -> MeterConfig; it may be empty (firmware
    5.0.62 answers `[]`: no CTs). A gateway without the endpoint (404 on older firmware) has no
    CtList, and then which CTs exist is unknown."""


@dataclass(frozen=True, slots=True)
class CtRoles:
    """Which CTs the CT list says are there and enabled, by role."""

    production: bool
    net: bool
    total: bool

    @property
    def consumption(self) -> bool:
        # With one consumption CT, net or total, the gateway computes the other figure from it.
        return self.net or self.total


def ct_roles(meters: Mapping[int, MeterConfig] | None) -> CtRoles | None:
    """The enabled CTs by role; None when the CT list is unknown (then the parsers judge the
    figures themselves, as on firmware without `/ivp/meters`)."""
    if meters is None:
        return None
    roles = {m.role for m in meters.values() if m.enabled}
    return CtRoles("production" in roles, "net-consumption" in roles, "total-consumption" in roles)


# The CTs in the order every firmware lists them (their eids count up the same way); older
# firmware may leave out `measurementType`, and then the position is what tells the role. The
# second is taken as the usual net-consumption ("load with solar") CT.
ROLES_BY_ORDER = ("production", "net-consumption", "storage")


def parse_meters(payload: Any) -> CtList:
    """`GET /ivp/meters`: the CTs, keyed by `eid` (the key of `/ivp/meters/readings`)."""
    rows = checked_list(payload, "/ivp/meters")
    meters = CtList()
    used: dict[str, int] = {}
    for index, row in enumerate(rows):
        what = f"meters[{index}]"
        row = checked_object(row, what)
        eid = int_or_none(row.get("eid"), f"{what}.eid")
        if eid is None:
            raise ParseError(f"{what}: no eid")
        if eid in meters:
            raise ParseError(f"{what}: eid {eid} listed twice")
        role = opt_str(row, "measurementType", what)
        if role is None and "measurementType" not in row and index < len(ROLES_BY_ORDER):
            role = ROLES_BY_ORDER[index]
        state = opt_str(row, "state", what)
        phase_count = int_or_none(row.get("phaseCount"), f"{what}.phaseCount")
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
            phase_count=phase_count or None, phase_mode=opt_str(row, "phaseMode", what),
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
        eid = int_or_none(row.get("eid"), f"{what}.eid")
        if eid is None:
            raise ParseError(f"{what}: no eid")
        config = meters.get(eid)
        raw_channels = opt_list(row, "channels", what)
        channels = phase_rows(raw_channels, config.phase_count if config else None, f"{what}.channels")
        values = {key: number_or_none(row.get(key), f"{what}.{key}") for key in _CT_FIELDS}
        if config is None or not config.enabled or not config.label:
            continue
        # One phase: `phaseCount` 1, or, without one, a single channel that carries anything.
        single_phase = config.phase_count == 1 if config.phase_count else len(channels) <= 1
        _add_ct(reading, config.label, row, values, channels, what, single_phase)
        if config.label == "net-consumption":
            _add_grid(reading, row, values, channels, what)
        elif config.label == "storage":
            # The storage CT sits between the batteries and the house: forward = discharging.
            reading.add(M.BATTERY_POWER, values["activePower"])
    return reading


_CT_FIELDS = ("activePower", "apparentPower", "reactivePower", "voltage", "current", "pwrFactor", "freq",
              "actEnergyDlvd", "actEnergyRcvd", "apparentEnergy", "reactEnergyLagg", "reactEnergyLead", "timestamp")


def _apparent_energy(row: dict, what: str) -> float | None:
    """Apparent energy (VAh -> VA*s). It cannot be less than the active energy through the CT in
    both directions (|S| >= |P| at every moment); firmware 8.3.5433 reports a few VAh against
    millions of Wh, and channels of phases that do not exist carry such values too: dropped."""
    apparent = number_or_none(row.get("apparentEnergy"), f"{what}.apparentEnergy")
    delivered = number_or_none(row.get("actEnergyDlvd"), f"{what}.actEnergyDlvd") or 0.0
    received = number_or_none(row.get("actEnergyRcvd"), f"{what}.actEnergyRcvd") or 0.0
    if apparent is None or apparent < 0 or apparent < max(delivered, 0.0) + max(received, 0.0):
        return None
    return apparent * JOULES_PER_WH


def _reactive_energy(row: dict, key: str, what: str) -> float | None:
    """Reactive energy (varh -> var*s), a counter: negative values are dropped."""
    return wh_to_joules(row.get(key), f"{what}.{key}")


def _add_ct(reading: Reading, meter: str, row: dict, values: dict, channels: list[tuple[str, dict]], what: str,
            single_phase: bool) -> None:
    reading.add(M.CT_ACTIVE_POWER, values["activePower"], meter=meter)
    reading.add(M.CT_APPARENT_POWER, values["apparentPower"], meter=meter)
    reading.add(M.CT_REACTIVE_POWER, values["reactivePower"], meter=meter)
    if single_phase:
        # On CTs of two or three phases the top-level voltage is the sum of the phases' (split
        # phase: ~247 V for two 123.5 V legs): no voltage. Those have per-phase voltages only.
        reading.add(M.CT_VOLTAGE, values["voltage"], meter=meter)
    reading.add(M.CT_CURRENT, values["current"], meter=meter)
    reading.add(M.CT_POWER_FACTOR, power_factor(values["pwrFactor"], f"{what}.pwrFactor"), meter=meter)
    reading.add(M.CT_FREQUENCY, values["freq"], meter=meter)
    reading.add(M.CT_ENERGY_DELIVERED, wh_to_joules(values["actEnergyDlvd"], f"{what}.actEnergyDlvd"), meter=meter)
    reading.add(M.CT_ENERGY_RECEIVED, wh_to_joules(values["actEnergyRcvd"], f"{what}.actEnergyRcvd"), meter=meter)
    reading.add(M.CT_APPARENT_ENERGY, _apparent_energy(row, what), meter=meter)
    reading.add(M.CT_REACTIVE_ENERGY_INDUCTIVE, _reactive_energy(row, "reactEnergyLagg", what), meter=meter)
    reading.add(M.CT_REACTIVE_ENERGY_CAPACITIVE, _reactive_energy(row, "reactEnergyLead", what), meter=meter)
    reading.add(M.CT_MEASUREMENT_TIME, timestamp_of(values["timestamp"], f"{what}.timestamp"), meter=meter)
    for phase, channel in channels:
        cw = f"{what}.channels.{phase}"
        reading.add(M.CT_PHASE_ACTIVE_POWER, number_or_none(channel.get("activePower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_APPARENT_POWER, number_or_none(channel.get("apparentPower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_REACTIVE_POWER, number_or_none(channel.get("reactivePower"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_VOLTAGE, number_or_none(channel.get("voltage"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_CURRENT, number_or_none(channel.get("current"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_POWER_FACTOR, power_factor(channel.get("pwrFactor"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_ENERGY_DELIVERED, wh_to_joules(channel.get("actEnergyDlvd"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_ENERGY_RECEIVED, wh_to_joules(channel.get("actEnergyRcvd"), cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_APPARENT_ENERGY, _apparent_energy(channel, cw), meter=meter, phase=phase)
        reading.add(M.CT_PHASE_REACTIVE_ENERGY_INDUCTIVE, _reactive_energy(channel, "reactEnergyLagg", cw),
                    meter=meter, phase=phase)
        reading.add(M.CT_PHASE_REACTIVE_ENERGY_CAPACITIVE, _reactive_energy(channel, "reactEnergyLead", cw),
                    meter=meter, phase=phase)


def _add_grid(reading: Reading, row: dict, values: dict, channels: list[tuple[str, dict]], what: str) -> None:
    """The net-consumption CT is the grid connection: the names every meter vendor shares.
    Delivered = imported from the grid, received = exported to it."""
    reading.add(M.ACTIVE_POWER, values["activePower"])
    reading.add(M.APPARENT_POWER, values["apparentPower"])
    reading.add(M.REACTIVE_POWER, values["reactivePower"])
    reading.add(M.CURRENT, values["current"])
    reading.add(M.POWER_FACTOR, power_factor(values["pwrFactor"], f"{what}.pwrFactor"))
    reading.add(M.FREQUENCY, values["freq"])
    reading.add(M.ENERGY_IMPORTED, wh_to_joules(values["actEnergyDlvd"], f"{what}.actEnergyDlvd"))
    reading.add(M.ENERGY_EXPORTED, wh_to_joules(values["actEnergyRcvd"], f"{what}.actEnergyRcvd"))
    reading.add(M.MEASUREMENT_TIME, timestamp_of(values["timestamp"], f"{what}.timestamp"))
    for phase, channel in channels:
        cw = f"{what}.channels.{phase}"
        reading.add(M.PHASE_ACTIVE_POWER, number_or_none(channel.get("activePower"), cw), phase=phase)
        reading.add(M.PHASE_APPARENT_POWER, number_or_none(channel.get("apparentPower"), cw), phase=phase)
        reading.add(M.PHASE_REACTIVE_POWER, number_or_none(channel.get("reactivePower"), cw), phase=phase)
        reading.add(M.PHASE_VOLTAGE, number_or_none(channel.get("voltage"), cw), phase=phase)
        reading.add(M.PHASE_CURRENT, number_or_none(channel.get("current"), cw), phase=phase)
        reading.add(M.PHASE_POWER_FACTOR, power_factor(channel.get("pwrFactor"), cw), phase=phase)


# --- /ivp/meters/reports, /ivp/meters/reports/consumption ------------------------------------------


def parse_meter_reports(payload: Any, phase_count: int | None = None,
                        meters: Mapping[int, MeterConfig] | None = None) -> Reading:
    """`GET /ivp/meters/reports` (a list of reports) or `/ivp/meters/reports/<type>` (one).

    Reports are per role, like `/production.json`: production, net-consumption and the derived
    total-consumption; they map to the same names (see the module docstring), and follow the
    same rules: `meters` (the CT list; None when unknown) decides which CTs are there, and a
    total that copies net consumption is replaced by production + net consumption."""
    reports = payload if isinstance(payload, list) else [checked_object(payload, "/ivp/meters/reports")]
    by_type: dict[str, tuple[dict, str]] = {}
    for index, report in enumerate(reports):
        what = f"reports[{index}]"
        report = checked_object(report, what)
        kind = opt_str(report, "reportType", what)
        cumulative = opt_obj(report, "cumulative", what)
        if kind is None or cumulative is None:
            raise ParseError(f"{what}: reportType or cumulative missing")
        if kind in by_type:
            raise ParseError(f"{what}: report {kind!r} listed twice")
        by_type[kind] = (report, what)

    def power(cumulative: dict, what: str) -> float | None:
        value = number_or_none(cumulative.get("actPower"), f"{what}.actPower")
        return value if value is not None else number_or_none(cumulative.get("currW"), f"{what}.currW")

    def lines(report: dict, what: str) -> list[tuple[str, dict]]:
        return phase_rows(opt_list(report, "lines", what), phase_count, f"{what}.lines")

    reading = Reading()
    production, total, net = (by_type.get(k) for k in ("production", "total-consumption", "net-consumption"))
    roles = ct_roles(meters)
    if roles is not None:
        # Reports of CTs the CT list does not have enabled are noise of an unconnected clamp.
        production = production if roles.production else None
        total, net = (total, net) if roles.consumption else (None, None)

    def system(source: tuple[dict, str], power_metric: Metric, energy: Metric, phase_power: Metric) -> None:
        report, what = source
        cumulative = report["cumulative"]
        reading.add(power_metric, power(cumulative, what))
        reading.add(energy, lifetime_to_joules(cumulative.get("whDlvdCum"), f"{what}.whDlvdCum"))
        for phase, line in lines(report, what):
            reading.add(phase_power, power(line, f"{what}.lines"), phase=phase)

    if production:
        system(production, M.PRODUCTION_POWER, M.PRODUCTION_ENERGY, M.PHASE_PRODUCTION_POWER)
    copied = False
    if total and net and same_figures(total[0]["cumulative"], net[0]["cumulative"], ("actPower", "whDlvdCum"), total[1]):
        if not nothing_produced((production[0]["cumulative"], production[1]) if production else None, "report"):
            total, copied = None, True  # firmware 8.3.5433: the "total" is a copy of net consumption
    if copied and production and net:
        # House consumption = production + net import, both from CTs.
        (prod_report, pw), (net_report, nw) = production, net
        pc, nc = prod_report["cumulative"], net_report["cumulative"]
        reading.add(M.CONSUMPTION_POWER, add(power(pc, pw), power(nc, nw)))
        reading.add(M.CONSUMPTION_ENERGY, lifetime_to_joules(
            add(number_or_none(pc.get("whDlvdCum"), f"{pw}.whDlvdCum"), number_or_none(nc.get("whDlvdCum"), f"{nw}.whDlvdCum")),
            f"{pw}.whDlvdCum"))
        net_lines = dict(lines(net_report, nw))
        for phase, line in lines(prod_report, pw):
            if phase in net_lines:
                reading.add(M.PHASE_CONSUMPTION_POWER, add(power(line, f"{pw}.lines"), power(net_lines[phase], f"{nw}.lines")),
                            phase=phase)
    if total:
        system(total, M.CONSUMPTION_POWER, M.CONSUMPTION_ENERGY, M.PHASE_CONSUMPTION_POWER)
    if net:
        report, what = net
        reading.add(M.ACTIVE_POWER, power(report["cumulative"], what))
        for phase, line in lines(report, what):
            reading.add(M.PHASE_ACTIVE_POWER, power(line, f"{what}.lines"), phase=phase)
    return reading


# --- /ivp/meters/gridReading -------------------------------------------------------------------------


def parse_grid_reading(payload: Any, phase_count: int | None = None,
                       meters: Mapping[int, MeterConfig] | None = None) -> Reading:
    """`GET /ivp/meters/gridReading`: per phase at the grid connection; negative = exporting.

    The gateway measures the grid connection with its consumption CT; when the CT list
    (`meters`; None when unknown) has none enabled, the figures are noise: no series."""
    rows = checked_list(payload, "/ivp/meters/gridReading")
    reading = Reading()
    roles = ct_roles(meters)
    if roles is not None and not roles.consumption:
        return reading
    seen: set[str] = set()
    frequency: float | None = None
    for index, row in enumerate(rows):
        what = f"gridReading[{index}]"
        row = checked_object(row, what)
        raw = opt_list(row, "channels", what)
        named: list[tuple[str, dict]] = []
        for ci, channel in enumerate(raw):
            cw = f"{what}.channels[{ci}]"
            channel = checked_object(channel, cw)
            name = opt_str(channel, "phase", cw)
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
            zero = all_zero(channel, ROW_META, cw)
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
