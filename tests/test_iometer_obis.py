"""OBIS codes: every notation IOmeter uses, to the decimal form; codes to metrics and units."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import ParseError, Reading
from exporter.vendors.iometer.obis import ACCOUNT, LOCAL, Obis, add_registers, normalize, register


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("1-0:1.8.0", "1-0:1.8.0"),  # decimal, 5 groups
        ("1-0:1.8.0*255", "1-0:1.8.0"),  # decimal, 6 groups
        ("01-00:01.08.00*ff", "1-0:1.8.0"),  # hex, 6 groups (the bridge)
        ("01-00:01.08.00*FF", "1-0:1.8.0"),
        ("01-00:02.08.00*ff", "1-0:2.8.0"),
        ("01-00:10.07.00*ff", "1-0:16.7.0"),  # signed total power
        ("01-00:24.07.00*ff", "1-0:36.7.0"),  # the power fallback some meters send
        ("01-00:38.07.00*ff", "1-0:56.7.0"),
        ("01-00:4c.07.00*ff", "1-0:76.7.0"),  # a hex letter
        ("01-00:20.07.00", "1-0:32.7.0"),  # hex without F
        ("1.8.0", "1-0:1.8.0"),  # short decimal
        ("16.7.0", "1-0:16.7.0"),
        ("1.8.2", "1-0:1.8.2"),
        ("10.07.00", "1-0:16.7.0"),  # short hex
        ("24.07.00", "1-0:36.7.0"),
        ("0e.07.00", "1-0:14.7.0"),
        ("1.0.1.8.0.255", "1-0:1.8.0"),  # DLMS logical name
        ("0-0:96.14.0", "0-0:96.14.0"),
        ("0-1:24.2.1", "0-1:24.2.1"),
        ("1-0:32.32.0", "1-0:32.32.0"),
        ("  1-0:1.8.0 ", "1-0:1.8.0"),
        ("1-0:1.8.0*1", "1-0:1.8.0*1"),  # a billing period is another quantity: F stays
        ("01-00:01.08.00*01", "1-0:1.8.0*1"),
        ("1-0:32.7.0*ff", "1-0:32.7.0"),  # decimal groups, hex F
        ("1-0:32.7.0*FF", "1-0:32.7.0"),
        ("01-00:20.07.00*255", "1-0:32.7.0"),  # hex groups, decimal F
    ],
)
def test_normalize(code: str, expected: str) -> None:
    assert normalize(code) == expected


@pytest.mark.parametrize(
    "code", ["", "1-0", "1-0:1.8", "abc", "1-0:1.8.0.0", "1-0:256.8.0", "1-0:1.8.x", "zz.07.00", "1-0:1.8.0*", None, 18, ["1.8.0"]]
)
def test_not_an_obis_code(code: object) -> None:
    with pytest.raises(ParseError):
        normalize(code)


@given(st.text(max_size=30))
def test_normalize_returns_decimal_form_or_parse_error(text: str) -> None:
    try:
        out = normalize(text)
    except ParseError:
        return
    assert normalize(out) == out  # the decimal form is a fixed point


@given(st.integers(0, 15), st.tuples(*[st.integers(0, 255)] * 4))
def test_hex_and_decimal_forms_agree(a: int, groups: tuple[int, ...]) -> None:
    # The medium A is 0..15, so the hex form always starts zero-padded (`01-`): that is what
    # tells it from decimal when no group holds a letter.
    b, cc, d, e = groups
    hex_form = f"{a:02x}-{b:02x}:{cc:02x}.{d:02x}.{e:02x}*ff"
    assert normalize(hex_form) == normalize(f"{a}-{b}:{cc}.{d}.{e}*255") == f"{a}-{b}:{cc}.{d}.{e}"


def _local(*registers: tuple[str, object, object]) -> Reading:
    reading = Reading()
    add_registers(reading, [register(*r) for r in registers], LOCAL)
    return reading


@pytest.mark.parametrize(
    ("code", "value", "unit", "metric", "labels", "expected"),
    [
        ("1-0:1.8.0", 1.5, "kWh", M.ENERGY_IMPORTED, {}, 5.4e6),
        ("1-0:1.8.0", 1500, "Wh", M.ENERGY_IMPORTED, {}, 5.4e6),
        ("1-0:2.8.0", 2, "Wh", M.ENERGY_EXPORTED, {}, 7200),
        ("1-0:1.8.1", 1, "kWh", M.TARIFF_ENERGY_IMPORTED, {"tariff": "1"}, 3.6e6),
        ("1-0:2.8.2", 1, "kWh", M.TARIFF_ENERGY_EXPORTED, {"tariff": "2"}, 3.6e6),
        ("1-0:16.7.0", -1.2, "kW", M.ACTIVE_POWER, {}, -1200),
        ("1-0:56.7.0", 300, "W", M.PHASE_ACTIVE_POWER, {"phase": "l2"}, 300),
        ("1-0:72.7.0", 231, "V", M.PHASE_VOLTAGE, {"phase": "l3"}, 231),
        ("1-0:31.7.0", 1500, "mA", M.PHASE_CURRENT, {"phase": "l1"}, 1.5),
        ("1-0:14.7.0", 50, "Hz", M.FREQUENCY, {}, 50),
        ("1-0:13.7.0", 97, "%", M.POWER_FACTOR, {}, 0.97),
        ("1-0:53.7.0", 0.9, None, M.PHASE_POWER_FACTOR, {"phase": "l2"}, 0.9),
        ("1-0:1.8.0", 1, "KWH", M.ENERGY_IMPORTED, {}, 3.6e6),  # case of unambiguous units
    ],
)
def test_codes_map_to_metrics_in_base_units(code, value, unit, metric, labels, expected) -> None:
    reading = _local((code, value, unit))
    assert reading.value_of(metric, **labels) == pytest.approx(expected)
    assert dict(reading.samples[0].labels)["obis"] == normalize(code)


def test_unknown_codes_go_to_the_generic_family_in_base_units() -> None:
    reading = _local(("1-0:15.7.0", 1.5, "kW"), ("1-0:5.8.0", 2, "kvarh"), ("1-0:81.7.4", 120, "°"),
                     ("1-0:1.8.0*3", 1, "kWh"), ("1-1:1.8.0", 1, "kWh"), ("0-1:24.2.1", 12.5, "m3"))
    assert reading.value_of(M.OBIS_VALUE, obis="1-0:15.7.0", unit="W") == 1500
    assert reading.value_of(M.OBIS_VALUE, obis="1-0:5.8.0", unit="var*s") == 7.2e6
    assert reading.value_of(M.OBIS_VALUE, obis="1-0:81.7.4", unit="°") == 120
    assert reading.value_of(M.OBIS_VALUE, obis="0-1:24.2.1", unit="m3") == 12.5
    # Other billing periods and channels are not the current total: generic, never ENERGY_IMPORTED.
    assert reading.value_of(M.OBIS_VALUE, obis="1-0:1.8.0*3", unit="J") == 3.6e6
    assert reading.value_of(M.OBIS_VALUE, obis="1-1:1.8.0", unit="J") == 3.6e6
    assert reading.value_of(M.ENERGY_IMPORTED) is None


# Every code of a standard meaning (IEC 62056-6-1, DSMR 5.0.2) and the seed's list: a named
# family in base units, the `obis` label in decimal form; the same quantity as another vendor's
# keeps that vendor's name.
STANDARD_CODES = [
    ("1-0:1.8.0", 2, "kWh", M.ENERGY_IMPORTED, {}, 7.2e6),
    ("1-0:1.8.1", 2, "kWh", M.TARIFF_ENERGY_IMPORTED, {"tariff": "1"}, 7.2e6),
    ("1-0:1.8.2", 2, "kWh", M.TARIFF_ENERGY_IMPORTED, {"tariff": "2"}, 7.2e6),
    ("1-0:2.8.0", 2, "kWh", M.ENERGY_EXPORTED, {}, 7.2e6),
    ("1-0:16.7.0", -1.5, "kW", M.ACTIVE_POWER, {}, -1500),
    ("1-0:1.7.0", 1.5, "kW", M.IMPORT_POWER, {}, 1500),
    ("1-0:2.7.0", 0.25, "kW", M.EXPORT_POWER, {}, 250),
    ("1-0:21.7.0", 100, "W", M.PHASE_IMPORT_POWER, {"phase": "l1"}, 100),
    ("1-0:41.7.0", 0.2, "kW", M.PHASE_IMPORT_POWER, {"phase": "l2"}, 200),
    ("1-0:61.7.0", 300, "W", M.PHASE_IMPORT_POWER, {"phase": "l3"}, 300),
    ("1-0:22.7.0", 10, "W", M.PHASE_EXPORT_POWER, {"phase": "l1"}, 10),
    ("1-0:42.7.0", 20, "W", M.PHASE_EXPORT_POWER, {"phase": "l2"}, 20),
    ("1-0:62.7.0", 30, "W", M.PHASE_EXPORT_POWER, {"phase": "l3"}, 30),
    ("1-0:56.7.0", 1, "W", M.PHASE_ACTIVE_POWER, {"phase": "l2"}, 1),  # (36.7.0 alone: see below)
    ("1-0:32.7.0", 231, "V", M.PHASE_VOLTAGE, {"phase": "l1"}, 231),
    ("1-0:52.7.0", 232, "V", M.PHASE_VOLTAGE, {"phase": "l2"}, 232),
    ("1-0:72.7.0", 233, "V", M.PHASE_VOLTAGE, {"phase": "l3"}, 233),
    ("1-0:31.7.0", 1.5, "A", M.PHASE_CURRENT, {"phase": "l1"}, 1.5),
    ("1-0:51.7.0", 2.5, "A", M.PHASE_CURRENT, {"phase": "l2"}, 2.5),
    ("1-0:71.7.0", 3.5, "A", M.PHASE_CURRENT, {"phase": "l3"}, 3.5),
    ("1-0:14.7.0", 50, "Hz", M.FREQUENCY, {}, 50),
    ("1-0:13.7.0", 0.9, "", M.POWER_FACTOR, {}, 0.9),
    ("1-0:73.7.0", 0.8, "", M.PHASE_POWER_FACTOR, {"phase": "l3"}, 0.8),
    ("1-0:3.7.0", 0.5, "kvar", M.IMPORT_REACTIVE_POWER, {}, 500),
    ("1-0:4.7.0", 5, "var", M.EXPORT_REACTIVE_POWER, {}, 5),
    ("1-0:3.8.0", 1, "kvarh", M.REACTIVE_ENERGY_IMPORTED, {}, 3.6e6),
    ("1-0:4.8.0", 1, "varh", M.REACTIVE_ENERGY_EXPORTED, {}, 3.6e3),
    ("1-0:21.8.0", 1, "kWh", M.PHASE_ENERGY_IMPORTED, {"phase": "l1"}, 3.6e6),
    ("1-0:62.8.0", 1, "Wh", M.PHASE_ENERGY_EXPORTED, {"phase": "l3"}, 3.6e3),
    ("1-0:1.4.0", 0.35, "kW", M.AVERAGE_DEMAND, {}, 350),
    ("1-0:1.6.0", 4.2, "kW", M.MONTHLY_PEAK_DEMAND, {}, 4200),
    ("0-0:96.14.0", 2, "", M.ACTIVE_TARIFF, {}, 2),
    ("0-0:96.7.21", 4, None, M.POWER_FAILURES, {}, 4),
    ("0-0:96.7.9", 1, "", M.LONG_POWER_FAILURES, {}, 1),
    ("1-0:32.32.0", 3, "", M.PHASE_VOLTAGE_SAGS, {"phase": "l1"}, 3),
    ("1-0:52.32.0", 2, "", M.PHASE_VOLTAGE_SAGS, {"phase": "l2"}, 2),
    ("1-0:72.36.0", 1, "", M.PHASE_VOLTAGE_SWELLS, {"phase": "l3"}, 1),
]


@pytest.mark.parametrize(("code", "value", "unit", "metric", "labels", "expected"), STANDARD_CODES)
def test_every_standard_code_has_a_named_family(code, value, unit, metric, labels, expected) -> None:
    reading = _local((code, value, unit))
    assert reading.value_of(metric, **labels) == pytest.approx(expected)
    assert reading.value_of(M.OBIS_VALUE) is None
    assert dict(reading.samples[0].labels)["obis"] == code
    assert metric.obis_for(labels) == code  # the catalogue says the same code


@pytest.mark.parametrize(("code", "value", "unit", "metric", "labels", "expected"), STANDARD_CODES)
def test_every_standard_code_has_a_named_account_family(code, value, unit, metric, labels, expected) -> None:
    reading = Reading()
    add_registers(reading, [register(code, value, unit)], ACCOUNT, installation="i", meter="m")
    [sample] = reading.samples
    assert sample.metric is not M.ACCOUNT_OBIS_VALUE and sample.metric.name.startswith("energy_meter_account_")
    assert sample.metric.name == metric.name.replace("energy_meter_", "energy_meter_account_", 1)
    assert sample.value == pytest.approx(expected)
    assert dict(sample.labels) == {"installation": "i", "meter": "m", **labels, "obis": code}


def test_service_entries_in_short_and_hex_notation() -> None:
    assert normalize("96.14.0") == normalize("00-00:60.0e.00*ff") == "0-0:96.14.0"
    assert normalize("96.7.21") == "0-0:96.7.21"


def test_counts_take_no_unit() -> None:
    with pytest.raises(ParseError):
        _local(("0-0:96.7.21", 4, "W"))


def test_power_falls_back_to_36_7_0_only_when_it_comes_alone() -> None:
    alone = _local(("01-00:24.07.00*ff", 420, "W"))
    assert alone.value_of(M.ACTIVE_POWER) == 420
    assert dict(alone.samples[0].labels)["obis"] == "1-0:36.7.0"
    assert alone.value_of(M.PHASE_ACTIVE_POWER) is None  # not known to be a phase value

    phases = _local(("1-0:36.7.0", 100, "W"), ("1-0:56.7.0", 50, "W"))
    assert phases.value_of(M.ACTIVE_POWER) is None
    assert phases.value_of(M.PHASE_ACTIVE_POWER, phase="l1") == 100

    both = _local(("1-0:16.7.0", 180, "W"), ("1-0:36.7.0", 100, "W"))
    assert both.value_of(M.ACTIVE_POWER) == 180
    assert both.value_of(M.PHASE_ACTIVE_POWER, phase="l1") == 100


def test_a_unit_that_does_not_fit_is_an_error_and_a_missing_one_gives_no_series() -> None:
    with pytest.raises(ParseError):
        _local(("1-0:1.8.0", 1, "W"))
    with pytest.raises(ParseError):
        _local(("1-0:16.7.0", 1, "furlongs"))
    assert _local(("1-0:1.8.0", 1, None)).samples == []  # Wh or kWh? no guess


def test_a_code_twice_must_agree() -> None:
    same = _local(("01-00:01.08.00*ff", 5, "Wh"), ("1-0:1.8.0", 5, "Wh"))
    assert [s.value for s in same.samples] == [18000]
    with pytest.raises(ParseError):
        _local(("01-00:01.08.00*ff", 5, "Wh"), ("1-0:1.8.0", 6, "Wh"))


def test_null_values_give_no_series_and_wrong_types_are_errors() -> None:
    assert _local(("1-0:1.8.0", None, "Wh")).samples == []
    for bad in ("many", True, [], {}):
        with pytest.raises(ParseError):
            _local(("1-0:1.8.0", bad, "Wh"))
    with pytest.raises(ParseError):
        _local(("1-0:1.8.0", 1, 5))


def test_account_variants_carry_installation_and_meter() -> None:
    reading = Reading()
    add_registers(reading, [register("1.8.0", 2, "kWh"), register("32.7.0", 230, "V")], ACCOUNT,
                  installation="inst-1", meter="garage")
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="inst-1", meter="garage") == 7.2e6
    sample = next(s for s in reading.samples if s.metric is M.ACCOUNT_PHASE_VOLTAGE)
    assert sample.labels == (("installation", "inst-1"), ("meter", "garage"), ("phase", "l1"), ("obis", "1-0:32.7.0"))


def test_obis_dataclass_prints_decimal_form() -> None:
    assert str(Obis(1, 0, 1, 8, 0)) == "1-0:1.8.0"
    assert str(Obis(1, 0, 1, 8, 0, 2)) == "1-0:1.8.0*2"
