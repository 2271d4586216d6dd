"""OBIS codes as IOmeter sends them: normalization to one form, and the metric for each code.

Notations (all normalized to the decimal form `1-0:1.8.0`, the form of the `obis` label):
  - decimal, 5 groups `1-0:1.8.0`, or 6 groups `1-0:1.8.0*255` (the Partner API's formats);
  - hexadecimal, 6 groups `01-00:01.08.00*ff` (the local bridge; the Partner API on request);
  - short decimal `C.D.E` such as `1.8.0` (Partner API), medium 1 (electricity), channel 0,
    except the service entries C = 96, 97 (`96.14.0` = 0-0:96.14.0, the active tariff);
  - short hexadecimal `10.07.00` (= 16.7.0): a zero-padded group (`07`) or a hex letter marks
    the hexadecimal notation, since decimal never pads;
  - the logical-name form `1.0.1.8.0.255` of DLMS.
A sixth group F of 255 (`*ff`) means "current value" and is dropped; any other F (a billing
period) stays as `*F`, so that historical values never pass for current ones.

Mapping: the codes with a standard meaning (IEC 62056-6-1 / DSMR 5.0.2) go to the catalogue's
named metrics, in base units (Wh and kWh to J, kW to W, kvarh to var*s): energy import/export
total and per tariff (1.8.x, 2.8.x) and per phase (21/41/61.8.0, 22/42/62.8.0); the signed
power (16.7.0) and per phase (36/56/76.7.0); import and export power (1.7.0, 2.7.0) and per
phase (21/41/61.7.0, 22/42/62.7.0); reactive power and energy Q+ / Q- (3.7.0, 4.7.0, 3.8.0,
4.8.0); voltage, current and power factor per phase (32/52/72, 31/51/71, 33/53/73.7.0);
frequency (14.7.0); power factor (13.7.0); demand (1.4.0, 1.6.0); the active tariff
(0-0:96.14.0), power failures (0-0:96.7.21, 0-0:96.7.9), voltage sags and swells
(32/52/72.32.0, .36.0). Where another vendor reports the same quantity, its name is shared. A code without a named metric is not dropped:
it is exported as `energy_meter_obis_value{obis, unit}` (a gauge), converted to its base unit
where the unit is known. Only channel B = 0 and F = 255 map to named metrics: other channels and
billing periods are different quantities and stay in the generic family.

Power: `16.7.0` is the signed total. Some meters lack it and send the total under `36.7.0`
(hex `24.07.00`, nominally phase L1; the vendor's own client treats it as the total). When
`16.7.0` is absent and `36.7.0` comes without `56.7.0`/`76.7.0`, its value is exported as the
total (`obis` label `1-0:36.7.0`) and not as phase l1, since it is not known to be a phase value.

Labels, and why a cloud account has its own metric names. Every catalogue metric has one fixed
label set (the exposition writes a family's samples as one group, and `Reading.add` checks the
labels). The local bridge is one meter per target, so it uses the shared metrics (`ACTIVE_POWER`,
`ENERGY_IMPORTED`, ...) with `vendor` and `device` only, like every other vendor. A Partner API
target holds many installations and meters and needs `installation` and `meter` on every series.
Adding those two labels to the shared metrics would force every other producer (HomeWizard,
IAMMETER, ...) to fill them with nothing meaningful, so the Partner API uses its own variants,
`energy_meter_account_*` (same units and OBIS codes, two more labels). `sum()` stays safe: each
(installation, meter) pair is one distinct meter, totals and phases stay under different names,
and no series is the sum of its siblings. The reader/gateway health metrics carry
`installation` and `device_id`, which both APIs provide, so they are shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from math import copysign, isfinite
from typing import Any, Container, Iterable, Mapping, NamedTuple

from ...model import catalogue as M
from ...model.catalogue import Metric
from ...model.jsontext import label_text
from ...model.samples import ParseError, Reading, Sample, number_or_none

# --- Normalization ---------------------------------------------------------------------------

_GROUP = r"([0-9A-Za-z]{1,3})"
_FULL = re.compile(rf"^{_GROUP}-{_GROUP}:{_GROUP}\.{_GROUP}\.{_GROUP}(?:[*&]{_GROUP})?$")
_SHORT = re.compile(rf"^{_GROUP}\.{_GROUP}\.{_GROUP}(?:[*&]{_GROUP})?$")
_LOGICAL = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_HEX_LETTER = re.compile(r"[a-fA-F]")


@dataclass(frozen=True, slots=True)
class Obis:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int = 255
    # The decimal form, written once: a push account needs it for every register of every
    # reading (filters, keys of what it holds, the `obis` label).
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}"
        object.__setattr__(self, "text", text if self.f == 255 else f"{text}*{self.f}")

    def __str__(self) -> str:
        return self.text


# Codes already parsed, by the text as sent: a meter sends the same few dozen codes in every
# reading. Bounded (emptied when full), so a server sending ever new codes cannot grow it.
CACHE_SIZE = 4096
_PARSED: dict[str, Obis] = {}


def parse_obis(code: Any) -> Obis:
    """The OBIS code in any notation the IOmeter APIs use; ParseError if it is none of them."""
    if isinstance(code, str):
        cached = _PARSED.get(code)
        if cached is not None:
            return cached
        if len(_PARSED) >= CACHE_SIZE:
            _PARSED.clear()
        obis = _PARSED[code] = _parse_obis(code)
        return obis
    raise ParseError(f"OBIS code: expected a string, got {type(code).__name__}")


def _parse_obis(code: str) -> Obis:
    text = code.strip()
    match = _LOGICAL.match(text)
    if match:
        return _build([int(g) for g in match.groups()], code)
    match = _FULL.match(text)
    prefix: tuple[int, ...] = ()
    if not match:
        match = _SHORT.match(text)
        if not match:
            raise ParseError(f"not an OBIS code: {code[:40]!r}")
        prefix = (1, 0)  # short form: electricity, no channel
    *main, last = match.groups()
    hexadecimal = _is_hex(main)
    values = _numbers(main, code, hexadecimal)
    if prefix and values[0] in _ABSTRACT_C:
        prefix = (0, 0)  # short form of a service entry: `96.14.0` is DSMR's 0-0:96.14.0
    if last is not None:
        # F is read on its own terms: "1-0:32.7.0*ff" is decimal with a hex F, and a
        # three-digit F such as "*255" is decimal whatever the rest.
        f_hex = _is_hex([last]) or (hexadecimal and len(last) <= 2)
        values += _numbers([last], code, f_hex)
    return _build(values, code, prefix)


# C groups of the abstract service entries (tariff, failure counts, identifiers): a short code
# with one of them is medium 0, as DSMR and IEC 62056-21 displays write `96.14.0` for 0-0:96.14.0.
_ABSTRACT_C = frozenset({96, 97})


def normalize(code: Any) -> str:
    """`01-00:01.08.00*ff`, `1.8.0`, `1-0:1.8.0*255`, ... -> `1-0:1.8.0`."""
    return parse_obis(code).text


def _is_hex(groups: list[str]) -> bool:
    """Hex if a group holds a hex letter or is zero-padded (decimal never pads)."""
    return any(_HEX_LETTER.search(g) or (len(g) > 1 and g.startswith("0")) for g in groups)


def _numbers(groups: list[str], code: str, hexadecimal: bool) -> list[int]:
    try:
        return [int(g, 16 if hexadecimal else 10) for g in groups]
    except ValueError:
        raise ParseError(f"not an OBIS code: {code[:40]!r}") from None


def _build(values: list[int], code: str, prefix: tuple[int, ...] = ()) -> Obis:
    values = list(prefix) + values
    if any(v > 255 for v in values):
        raise ParseError(f"OBIS code {code[:40]!r}: a group is larger than 255")
    return Obis(*values)


# --- Units -----------------------------------------------------------------------------------

# unit as sent -> (factor to the base unit, dimension)
_UNITS: dict[str, tuple[float, str]] = {
    "Wh": (3.6e3, "energy"), "kWh": (3.6e6, "energy"), "MWh": (3.6e9, "energy"),
    "J": (1.0, "energy"), "kJ": (1e3, "energy"), "MJ": (1e6, "energy"),
    "W": (1.0, "power"), "kW": (1e3, "power"), "MW": (1e6, "power"),
    "V": (1.0, "voltage"), "kV": (1e3, "voltage"),
    "A": (1.0, "current"), "mA": (1e-3, "current"),
    "Hz": (1.0, "frequency"),
    "var": (1.0, "reactive"), "kvar": (1e3, "reactive"),
    "VA": (1.0, "apparent"), "kVA": (1e3, "apparent"),
    "varh": (3.6e3, "reactive_energy"), "kvarh": (3.6e6, "reactive_energy"),
    "VAh": (3.6e3, "apparent_energy"), "kVAh": (3.6e6, "apparent_energy"),
    "": (1.0, "ratio"), "%": (1e-2, "ratio"),
}
_BASE_UNIT = {
    "energy": "J", "power": "W", "voltage": "V", "current": "A", "frequency": "Hz",
    "reactive": "var", "apparent": "VA", "reactive_energy": "var*s", "apparent_energy": "VA*s",
    "ratio": "",
}
# Case-insensitive spellings, except where case is the meaning (mW is not MW).
_UNITS_FOLDED = {k.lower(): k for k in _UNITS if k.lower() not in ("mw", "mwh", "mj", "ma")}


def _unit_entry(unit: str) -> tuple[str, tuple[float, str]] | None:
    text = unit.strip()
    if text in _UNITS:
        return text, _UNITS[text]
    canonical = _UNITS_FOLDED.get(text.lower())
    return (canonical, _UNITS[canonical]) if canonical is not None else None


# --- Metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # two of them, each its own: identity is equality (and a cheap hash)
class MetricSet:
    """The metrics one kind of target writes: the local ones, or the cloud account variants."""

    energy_imported: Metric
    energy_exported: Metric
    tariff_imported: Metric
    tariff_exported: Metric
    active_power: Metric
    phase_active_power: Metric
    phase_voltage: Metric
    phase_current: Metric
    frequency: Metric
    power_factor: Metric
    phase_power_factor: Metric
    import_power: Metric
    export_power: Metric
    phase_import_power: Metric
    phase_export_power: Metric
    import_reactive_power: Metric
    export_reactive_power: Metric
    reactive_energy_imported: Metric
    reactive_energy_exported: Metric
    active_tariff: Metric
    power_failures: Metric
    long_power_failures: Metric
    average_demand: Metric
    monthly_peak_demand: Metric
    phase_voltage_sags: Metric
    phase_voltage_swells: Metric
    phase_energy_imported: Metric
    phase_energy_exported: Metric
    obis_value: Metric
    measurement_time: Metric


LOCAL = MetricSet(
    energy_imported=M.ENERGY_IMPORTED, energy_exported=M.ENERGY_EXPORTED,
    tariff_imported=M.TARIFF_ENERGY_IMPORTED, tariff_exported=M.TARIFF_ENERGY_EXPORTED,
    active_power=M.ACTIVE_POWER, phase_active_power=M.PHASE_ACTIVE_POWER, phase_voltage=M.PHASE_VOLTAGE,
    phase_current=M.PHASE_CURRENT, frequency=M.FREQUENCY, power_factor=M.POWER_FACTOR,
    phase_power_factor=M.PHASE_POWER_FACTOR, import_power=M.IMPORT_POWER, export_power=M.EXPORT_POWER,
    phase_import_power=M.PHASE_IMPORT_POWER, phase_export_power=M.PHASE_EXPORT_POWER,
    import_reactive_power=M.IMPORT_REACTIVE_POWER, export_reactive_power=M.EXPORT_REACTIVE_POWER,
    reactive_energy_imported=M.REACTIVE_ENERGY_IMPORTED, reactive_energy_exported=M.REACTIVE_ENERGY_EXPORTED,
    active_tariff=M.ACTIVE_TARIFF, power_failures=M.POWER_FAILURES, long_power_failures=M.LONG_POWER_FAILURES,
    average_demand=M.AVERAGE_DEMAND, monthly_peak_demand=M.MONTHLY_PEAK_DEMAND,
    phase_voltage_sags=M.PHASE_VOLTAGE_SAGS, phase_voltage_swells=M.PHASE_VOLTAGE_SWELLS,
    phase_energy_imported=M.PHASE_ENERGY_IMPORTED, phase_energy_exported=M.PHASE_ENERGY_EXPORTED,
    obis_value=M.OBIS_VALUE, measurement_time=M.MEASUREMENT_TIME,
)
# The same quantities of a Partner account's meters: each local metric's account twin.
ACCOUNT = MetricSet(**{f.name: M.account_twin(getattr(LOCAL, f.name)) for f in fields(MetricSet)})


@dataclass(frozen=True, slots=True)
class Quantity:
    field: str  # attribute of MetricSet
    dimension: str  # the unit dimension the value must have
    labels: tuple[tuple[str, str], ...] = ()


_PHASES = {1: "l1", 2: "l2", 3: "l3"}
# (C offset, D) -> quantity per phase: C = 20 * phase + offset for L1..L3 (IEC 62056-6-1).
_PHASE_QUANTITIES = {
    (16, 7): ("phase_active_power", "power"),  # 36, 56, 76
    (12, 7): ("phase_voltage", "voltage"),  # 32, 52, 72
    (11, 7): ("phase_current", "current"),  # 31, 51, 71
    (13, 7): ("phase_power_factor", "ratio"),  # 33, 53, 73
    (1, 7): ("phase_import_power", "power"),  # 21, 41, 61 (A+)
    (2, 7): ("phase_export_power", "power"),  # 22, 42, 62 (A-)
    (12, 32): ("phase_voltage_sags", "count"),  # 32.32.0, 52.32.0, 72.32.0
    (12, 36): ("phase_voltage_swells", "count"),  # 32.36.0, 52.36.0, 72.36.0
    (1, 8): ("phase_energy_imported", "energy"),  # 21.8.0, 41.8.0, 61.8.0
    (2, 8): ("phase_energy_exported", "energy"),  # 22.8.0, 42.8.0, 62.8.0
}
# (A, B, C, D, E) -> quantity of the whole meter (IEC 62056-6-1, DSMR 5.0.2).
_METER_QUANTITIES = {
    (1, 0, 16, 7, 0): Quantity("active_power", "power"),
    (1, 0, 14, 7, 0): Quantity("frequency", "frequency"),
    (1, 0, 13, 7, 0): Quantity("power_factor", "ratio"),
    (1, 0, 1, 7, 0): Quantity("import_power", "power"),
    (1, 0, 2, 7, 0): Quantity("export_power", "power"),
    (1, 0, 3, 7, 0): Quantity("import_reactive_power", "reactive"),
    (1, 0, 4, 7, 0): Quantity("export_reactive_power", "reactive"),
    (1, 0, 3, 8, 0): Quantity("reactive_energy_imported", "reactive_energy"),
    (1, 0, 4, 8, 0): Quantity("reactive_energy_exported", "reactive_energy"),
    (1, 0, 1, 4, 0): Quantity("average_demand", "power"),
    (1, 0, 1, 6, 0): Quantity("monthly_peak_demand", "power"),
    (0, 0, 96, 14, 0): Quantity("active_tariff", "count"),
    (0, 0, 96, 7, 21): Quantity("power_failures", "count"),
    (0, 0, 96, 7, 9): Quantity("long_power_failures", "count"),
}


def quantity_for(code: Obis) -> Quantity | None:
    """The named metric of a code, or None for the generic family."""
    if code.f != 255:
        return None
    named = _METER_QUANTITIES.get((code.a, code.b, code.c, code.d, code.e))
    if named is not None:
        return named
    if code.a != 1 or code.b != 0:
        return None
    c, d, e = code.c, code.d, code.e
    if d == 8 and c in (1, 2):
        if e == 0:
            return Quantity("energy_imported" if c == 1 else "energy_exported", "energy")
        field = "tariff_imported" if c == 1 else "tariff_exported"
        return Quantity(field, "energy", (("tariff", str(e)),))
    if e != 0 or c <= 20:
        return None
    phase, offset = divmod(c - 20, 20)
    quantity = _PHASE_QUANTITIES.get((offset, d)) if phase + 1 in _PHASES else None
    if quantity is None:
        return None
    field, dimension = quantity
    return Quantity(field, dimension, (("phase", _PHASES[phase + 1]),))


class Register(NamedTuple):
    """One register of a reading: its code, value and unit as the device sent them."""

    code: Obis
    value: float | None
    unit: str | None


_new_register = tuple.__new__  # what Register(...) calls, without its Python-level __new__


def register(obis: Any, value: Any, unit: Any) -> Register:
    """A register from raw JSON fields; ParseError for wrong types."""
    # The usual case (a known code, a finite float, a string unit) without a call or an error
    # text more than needed: a push account reads some 200,000 registers a second.
    code = _PARSED.get(obis) if obis.__class__ is str else None
    if code is None:
        code = parse_obis(obis)
    if value.__class__ is not float or not isfinite(value):
        value = number_or_none(value, f"register {code}")
    if unit is not None and not isinstance(unit, str):
        raise ParseError(f"register {code}: unit is not a string")
    return _new_register(Register, (code, value, unit))


# --- Plans: what a register of one code and unit becomes --------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """A sample of `metric` with the register's value times `factor` (to the base unit), the
    labels `labels` (tariff, phase or unit) besides the target's own, and the `obis` label."""

    metric: Metric
    factor: float
    labels: tuple[tuple[str, str], ...]
    obis: str

    def sample_labels(self, others: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """A sample's labels in the metric's order; `others` gives the rest (installation, meter)."""
        own = dict(self.labels)
        pairs = tuple((name, own[name] if name in own else str(others[name])) for name in self.metric.labels)
        return pairs + (("obis", self.obis),)


_MISSING = object()
# Plans by (code in decimal form, unit, metric set, 36.7.0 as the total): every register of every
# reading asks. Keyed by the text, whose hash Python keeps (an Obis's hash is a Python call).
_PLANS: dict[tuple[str, str | None, MetricSet, bool], Plan | None] = {}


def plan_for(code: Obis, unit: str | None, metrics: MetricSet, as_total: bool = False) -> Plan | None:
    """The plan of a register; None when it gives no series (a scaled quantity without a unit:
    Wh or kWh? no guess); ParseError when the unit does not fit the quantity. `as_total`: a
    36.7.0 that stands for the total (see the module's notes)."""
    key = (code.text, unit, metrics, as_total)
    plan = _PLANS.get(key, _MISSING)
    if plan is _MISSING:
        plan = _plan(code, unit, metrics, as_total)  # a refused unit raises and is not kept
        if len(_PLANS) >= CACHE_SIZE:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan  # type: ignore[return-value]


def _plan(code: Obis, unit: str | None, metrics: MetricSet, as_total: bool) -> Plan | None:
    quantity = Quantity("active_power", "power") if as_total else quantity_for(code)
    if quantity is None:  # the generic family: converted where the unit is known, else as sent
        entry = _unit_entry(unit) if unit else None
        if entry is None:  # the unit as sent becomes a label value: made fit for that
            return Plan(metrics.obis_value, 1.0, (("unit", label_text(unit or "", 32)),), code.text)
        factor, dimension = entry[1]
        return Plan(metrics.obis_value, factor, (("unit", _BASE_UNIT[dimension]),), code.text)
    if quantity.dimension == "count":  # a number as the meter counts it: no unit, no scale
        if unit not in (None, ""):
            raise ParseError(f"register {code}: unit {unit[:20]!r} does not fit a count")
        return Plan(getattr(metrics, quantity.field), 1.0, quantity.labels, code.text)
    if unit is None and quantity.dimension != "ratio":
        return None
    entry = _unit_entry(unit or "")
    if entry is None or entry[1][1] != quantity.dimension:
        raise ParseError(f"register {code}: unit {(unit or '')[:20]!r} does not fit the quantity")
    return Plan(getattr(metrics, quantity.field), entry[1][0], quantity.labels, code.text)


_POWER_TOTAL = "1-0:16.7.0"
_POWER_L1 = "1-0:36.7.0"
_POWER_L2_L3 = ("1-0:56.7.0", "1-0:76.7.0")


def power_total_from_l1(codes: Container[str]) -> bool:
    """36.7.0 stands for the total: it comes without 16.7.0, 56.7.0 and 76.7.0 (`codes`: the
    meter's codes in decimal form)."""
    return (
        _POWER_TOTAL not in codes
        and _POWER_L1 in codes
        and not any(code in codes for code in _POWER_L2_L3)
    )


def add_registers(
    reading: Reading, registers: list[Register], metrics: MetricSet, **labels: str
) -> None:
    """Add the samples of one meter's registers to `reading`, in base units.

    `labels` are the extra labels of the metric set (installation and meter for an account).
    A code that appears twice must carry the same value both times (one series per code).
    """
    by_code: dict[str, Register] = {}
    for reg in registers:
        held = by_code.get(reg.code.text)
        if held is not None and (held.value, held.unit) != (reg.value, reg.unit):
            raise ParseError(f"register {reg.code} appears twice with different values")
        by_code[reg.code.text] = reg
    total_from_l1 = power_total_from_l1(by_code)
    for text, reg in by_code.items():
        if reg.value is None:
            continue
        plan = plan_for(reg.code, reg.unit, metrics, total_from_l1 and text == _POWER_L1)
        if plan is None:
            continue
        reading.add(plan.metric, reg.value * plan.factor, obis=plan.obis, **labels, **dict(plan.labels))


# --- A push account's meters: registers checked as they come, samples built when asked -------

Held = dict[str, tuple[float | None, str | None]]  # code in decimal form -> (value, unit) as sent


def checked_registers(
    registers: Iterable[Register], metrics: MetricSet, wanted: Container[str] | None = None
) -> list[tuple[str, tuple[float | None, str | None]]]:
    """The registers to keep (those whose code is in `wanted`, when given), as items of a
    `Held`, each checked now for what would fail when its sample is built: a unit that does not
    fit (ParseError), a value beyond the float range once scaled."""
    kept = []
    plans = _PLANS
    for code, value, unit in registers:
        text = code.text
        if wanted is not None and text not in wanted:
            continue
        if value is not None:
            # 36.7.0 as the total has the same unit and factor as 36.7.0 as phase l1
            plan = plans.get((text, unit, metrics, False), _MISSING)
            if plan is _MISSING:
                plan = plan_for(code, unit, metrics)
            if plan is not None and not isfinite(value * plan.factor):  # type: ignore[union-attr]
                raise ParseError(f"{plan.metric.name}: not a finite number")  # type: ignore[union-attr]
        kept.append((text, (value, unit)))
    return kept


def register_samples(
    registers: Held, metrics: MetricSet, labels: Mapping[str, str], last: dict[str, tuple[Plan, Sample]]
) -> list[Sample]:
    """The samples `add_registers` gives for one meter's registers (each passed through
    `checked_registers`), built directly. `last` keeps each code's plan and sample for these
    `labels` from one call to the next: an unchanged value gives the same sample object again
    (nothing new for the garbage collector, and the store compares label tuples by identity
    first)."""
    as_total = power_total_from_l1(registers)
    plans = _PLANS
    samples = []
    for text, (value, unit) in registers.items():
        if value is None:
            continue
        total = as_total and text == _POWER_L1
        plan = plans.get((text, unit, metrics, total), _MISSING)
        if plan is _MISSING:
            plan = plan_for(parse_obis(text), unit, metrics, total)
        if plan is None:
            continue
        value *= plan.factor  # type: ignore[union-attr]
        held = last.get(text)
        if held is None or held[0] is not plan:
            sample = Sample(plan.metric, plan.sample_labels(labels), value)  # type: ignore[union-attr]
            last[text] = (plan, sample)  # type: ignore[assignment]
        else:
            sample = held[1]
            # the same value: the same sample (but 0.0 and -0.0 print differently)
            if sample.value != value or (not value and copysign(1.0, value) != copysign(1.0, sample.value)):
                sample = Sample(sample.metric, sample.labels, value)
                last[text] = (plan, sample)  # type: ignore[assignment]
        samples.append(sample)
    return samples
