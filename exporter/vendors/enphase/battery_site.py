"""The site's batteries over every kind of battery and every endpoint that reports them.

A site can have IQ Batteries (Encharge) and AC Batteries (ACB) together, and no endpoint gives
everything: `/ivp/ensemble/secctrl` has both kinds' aggregates, `/ivp/ensemble/power` each IQ
Battery's power, `/production.json` the AC Batteries' power, the inventory each unit. Each
parser reports what it has per kind (`energy_meter_battery_group_*{group}`); this step picks each
figure of each kind from the first endpoint of `SOURCES` that has it, fills in what follows from
the others (stored = state of charge x capacity, and so on), and gives the site's totals:

* state of charge = stored energy of every battery / capacity of every battery, i.e. the
  capacity-weighted mean over IQ and AC Batteries (on 8.2.4382: (3500 Wh x 54 % + 930 Wh) /
  7220 Wh = 39 %, the gateway's own `agg_soc`);
* stored energy and capacity: the sums;
* power, only where no storage CT and no live data give it: the sum over the kinds, and only
  when every kind has a power of now (an AC Battery entry gone stale gives none; a sum without
  it would pass for the site's power).

The live figures win: the gateway's own aggregates (live data while its stream is on, else
secctrl) and `/ivp/ensemble/power` come before the inventory, whose `percentFull` can lag by
hours (8.2.4382: inventory 10 % while ensemble/power, secctrl and the available energy say 54 %).

Unit series (`energy_meter_battery_unit_*{battery}`) come from several endpoints too (each IQ
Battery from ensemble/power, the AC Batteries from the inventory): each unit's series from the
first endpoint that has that unit, instead of the merge's one endpoint per metric.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ...model import catalogue as M
from ...model.catalogue import Metric
from ...model.samples import Reading, Sample

SOURCES = ("livedata", "ensemble_secctrl", "ensemble_power", "production_json", "inventory", "device_list")
FIELDS: dict[str, Metric] = {
    "soc": M.BATTERY_GROUP_STATE_OF_CHARGE,
    "stored": M.BATTERY_GROUP_STORED_ENERGY,  # J
    "capacity": M.BATTERY_GROUP_CAPACITY,  # J
    "power": M.BATTERY_GROUP_POWER,
}
UNIT_METRICS = (M.BATTERY_UNIT_STATE_OF_CHARGE, M.BATTERY_UNIT_CAPACITY, M.BATTERY_UNIT_TEMPERATURE,
                M.BATTERY_UNIT_POWER, M.BATTERY_UNIT_COMMUNICATING, M.BATTERY_UNIT_FAULT)
SITE_METRICS = (M.BATTERY_STATE_OF_CHARGE, M.BATTERY_STORED_ENERGY, M.BATTERY_CAPACITY)
# Where the site's battery power is measured, not summed: the storage CT, the live data.
MEASURED_POWER = ("meters_readings", "livedata")
# A capacity worked out as stored / state of charge needs a state of charge well above the
# rounding of the gateway's whole percents (at 20 % the error is at most 2.5 %).
MIN_SOC_FOR_CAPACITY = 0.2


def union_series(merged: Reading, latest: Mapping[str, Reading], metrics: Iterable[Metric],
                 sources: Iterable[str] | None = None) -> None:
    """Each series of `metrics` (by its labels) from the first of `sources` (default: every
    endpoint, in the table's order) that has it, in place of the merge's single source."""
    names = list(sources) if sources is not None else list(latest)
    for metric in metrics:
        chosen: dict[tuple, Sample] = {}
        for name in names:
            reading = latest.get(name)
            for sample in reading.samples if reading else ():
                if sample.metric is metric:
                    chosen.setdefault(sample.labels, sample)
        if chosen:
            replace(merged, metric, chosen.values())


def replace(merged: Reading, metric: Metric, samples: Iterable[Sample]) -> None:
    merged.samples[:] = [s for s in merged.samples if s.metric is not metric]
    merged.samples.extend(samples)


def _values(reading: Reading | None, metric: Metric, label: str) -> dict[str, float]:
    if reading is None:
        return {}
    return {dict(s.labels)[label]: s.value for s in reading.samples if s.metric is metric}


def _from_units(latest: Mapping[str, Reading]) -> dict[str, float]:
    """The IQ Batteries' figures from each unit's live state of charge (ensemble/power) and
    capacity (inventory or device list), when every unit has both."""
    socs = _values(latest.get("ensemble_power"), M.BATTERY_UNIT_STATE_OF_CHARGE, "battery")
    capacities: dict[str, float] = {}
    for name in ("inventory", "device_list"):
        for serial, value in _values(latest.get(name), M.BATTERY_UNIT_CAPACITY, "battery").items():
            capacities.setdefault(serial, value)
    if not socs or any(serial not in capacities for serial in socs):
        return {}
    capacity = sum(capacities[s] for s in socs)
    stored = sum(socs[s] * capacities[s] for s in socs)
    return {"soc": stored / capacity, "stored": stored, "capacity": capacity} if capacity else {}


def groups_of(latest: Mapping[str, Reading]) -> dict[str, dict[str, float]]:
    """Each kind's figures, each from the first source that has it, completed where they follow
    from each other."""
    groups: dict[str, dict[str, float]] = {}
    for name in SOURCES:
        for field, metric in FIELDS.items():
            for group, value in _values(latest.get(name), metric, "group").items():
                groups.setdefault(group, {}).setdefault(field, value)
        if name == "ensemble_power":
            units = _from_units(latest)
            if units:
                for field, value in units.items():
                    groups.setdefault("encharge", {}).setdefault(field, value)
    for figures in groups.values():
        soc, stored, capacity = figures.get("soc"), figures.get("stored"), figures.get("capacity")
        if stored is None and soc is not None and capacity is not None:
            figures["stored"] = soc * capacity
        elif capacity is None and stored is not None and soc is not None and soc >= MIN_SOC_FOR_CAPACITY:
            figures["capacity"] = stored / soc
        elif soc is None and stored is not None and capacity:
            figures["soc"] = min(1.0, stored / capacity)
    return groups


def _first_source(latest: Mapping[str, Reading], metric: Metric) -> str | None:
    for name, reading in latest.items():
        if any(s.metric is metric for s in reading.samples):
            return name
    return None


class BatterySite:
    """The derived step (see the module's docstring)."""

    def __call__(self, merged: Reading, latest: Mapping[str, Reading]) -> None:
        union_series(merged, latest, UNIT_METRICS)
        groups = groups_of(latest)
        if not groups:
            return
        for field, metric in FIELDS.items():
            group_reading = Reading()
            for group, figures in sorted(groups.items()):
                group_reading.add(metric, figures.get(field), group=group)
            replace(merged, metric, group_reading.samples)
        site = Reading()
        complete = all("stored" in g and g.get("capacity") for g in groups.values())
        if complete:
            stored = sum(g["stored"] for g in groups.values())
            capacity = sum(g["capacity"] for g in groups.values())
            site.add(M.BATTERY_STATE_OF_CHARGE, min(1.0, stored / capacity))
            site.add(M.BATTERY_STORED_ENERGY, stored)
            site.add(M.BATTERY_CAPACITY, capacity)
            for metric in SITE_METRICS:
                replace(merged, metric, [s for s in site.samples if s.metric is metric])
        elif len(groups) > 1 and _first_source(latest, M.BATTERY_STATE_OF_CHARGE) == "inventory":
            # The inventory's mean covers the IQ Batteries only: not the site's.
            replace(merged, M.BATTERY_STATE_OF_CHARGE, ())
        if not any(name in latest and any(s.metric is M.BATTERY_POWER for s in latest[name].samples)
                   for name in MEASURED_POWER):
            powers = [g.get("power") for g in groups.values()]
            total = Reading()
            if all(p is not None for p in powers):
                total.add(M.BATTERY_POWER, sum(powers))  # type: ignore[arg-type]
            replace(merged, M.BATTERY_POWER, total.samples)

