"""The current transformers: `/ivp/meters` (which CT is where), `/ivp/meters/readings`,
`/ivp/meters/reports` and `/ivp/meters/gridReading`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ....model import catalogue as M
from ....model.jsontext import label_text
from ....model.samples import ParseError, Reading, checked_list, checked_object, number_or_none
from .common import (
    PHASES,
    ROW_META,
    all_zero,
    int_or_none,
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


def parse_meters(payload: Any) -> dict[int, MeterConfig]:
    """`GET /ivp/meters`: the CTs, keyed by `eid` (the key of `/ivp/meters/readings`)."""
    rows = checked_list(payload, "/ivp/meters")
    meters: dict[int, MeterConfig] = {}
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
    reading.add(M.CT_POWER_FACTOR, power_factor(values["pwrFactor"], f"{what}.pwrFactor"), meter=meter)
    reading.add(M.CT_FREQUENCY, values["freq"], meter=meter)
    reading.add(M.CT_ENERGY_DELIVERED, wh_to_joules(values["actEnergyDlvd"], f"{what}.actEnergyDlvd"), meter=meter)
    reading.add(M.CT_ENERGY_RECEIVED, wh_to_joules(values["actEnergyRcvd"], f"{what}.actEnergyRcvd"), meter=meter)
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


def parse_meter_reports(payload: Any, phase_count: int | None = None) -> Reading:
    """`GET /ivp/meters/reports` (a list of reports) or `/ivp/meters/reports/<type>` (one).

    Reports are per role, like `/production.json`: production, net-consumption and the derived
    total-consumption; they map to the same names (see the module docstring)."""
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
    if production:
        report, what = production
        cumulative = report["cumulative"]
        reading.add(M.PRODUCTION_POWER, power(cumulative, what))
        reading.add(M.PRODUCTION_ENERGY, wh_to_joules(cumulative.get("whDlvdCum"), f"{what}.whDlvdCum"))
        for phase, line in lines(report, what):
            reading.add(M.PHASE_PRODUCTION_POWER, power(line, f"{what}.lines"), phase=phase)
    if total and net and same_figures(total[0]["cumulative"], net[0]["cumulative"], ("actPower", "whDlvdCum"), total[1]):
        if not nothing_produced((production[0]["cumulative"], production[1]) if production else None, "report"):
            total = None  # firmware 8.3.5433: the "total" is a copy of net consumption
    if total:
        report, what = total
        cumulative = report["cumulative"]
        reading.add(M.CONSUMPTION_POWER, power(cumulative, what))
        reading.add(M.CONSUMPTION_ENERGY, wh_to_joules(cumulative.get("whDlvdCum"), f"{what}.whDlvdCum"))
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
