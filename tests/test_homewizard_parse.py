"""HomeWizard payloads -> normalized samples, over the whole conformance corpus."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import ParseError, Reading
from exporter.vendors.homewizard import parse

from .corpus_homewizard import readings

UTC = timezone.utc


def load(conformance: Path, rel: str):
    return json.loads((conformance / "homewizard" / rel).read_text())


def test_every_corpus_file_parses(conformance):
    names = [name for name, _ in readings(conformance)]
    # every measurement body of the corpus, exceptions/ included
    assert len(names) >= 25
    assert any(name.startswith("v1/exceptions/") for name in names)


def test_p1_v1_totals_tariffs_phases_and_quality(conformance):
    r = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data.json"), UTC)
    assert r.value_of(M.ENERGY_IMPORTED) == pytest.approx(13779.338 * 3.6e6)
    assert r.value_of(M.TARIFF_ENERGY_IMPORTED, tariff="1") == pytest.approx(10830.511 * 3.6e6)
    assert r.value_of(M.TARIFF_ENERGY_IMPORTED, tariff="2", obis="1-0:1.8.2") == pytest.approx(2948.827 * 3.6e6)
    assert r.value_of(M.TARIFF_ENERGY_EXPORTED, tariff="1", obis="1-0:2.8.1") == 0
    assert r.value_of(M.ACTIVE_POWER, obis="1-0:16.7.0") == -543
    assert r.value_of(M.PHASE_ACTIVE_POWER, phase="l1", obis="1-0:36.7.0") == -676
    assert r.value_of(M.PHASE_CURRENT, phase="l2") == 2
    assert r.value_of(M.FREQUENCY) == 50
    assert r.value_of(M.PHASE_VOLTAGE_SAGS, phase="l1", obis="1-0:32.32.0") == 1
    assert r.value_of(M.PHASE_VOLTAGE_SWELLS, phase="l3") == 0
    assert r.value_of(M.POWER_FAILURES, obis="0-0:96.7.21") == 4
    assert r.value_of(M.LONG_POWER_FAILURES) == 5
    assert r.value_of(M.AVERAGE_DEMAND) == 123
    assert r.value_of(M.MONTHLY_PEAK_DEMAND) == 1111
    assert r.value_of(M.MONTHLY_PEAK_DEMAND_TIME) == datetime(2023, 1, 1, 8, 0, 10, tzinfo=UTC).timestamp()
    assert r.value_of(M.ACTIVE_TARIFF) == 2
    assert r.value_of(M.WIFI_SIGNAL) == 1.0


def test_p1_v1_external_meters_with_their_unique_ids(conformance):
    r = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data.json"), UTC)
    # the external list wins over the legacy flat gas fields for the same meter
    assert r.value_of(M.GAS, meter="4E474C5944") == pytest.approx(111.111)
    assert len([s for s in r.samples if s.metric is M.GAS]) == 1
    assert r.value_of(M.WATER, meter="4E475347") == pytest.approx(444.444)
    assert r.value_of(M.WARM_WATER, meter="4E474D5943") == pytest.approx(333.333)
    # a heat meter in m3 is not an energy: exported as a raw reading with its unit, not as joules
    assert r.value_of(M.EXTERNAL_READING, meter="4E475241414459", type="heat_meter", unit="m3") == pytest.approx(222.222)
    assert r.value_of(M.HEAT) is None
    assert r.value_of(M.EXTERNAL_MEASUREMENT_TIME, meter="4E474C5944") == datetime(2021, 6, 6, 14, 0, 10, tzinfo=UTC).timestamp()


def test_legacy_flat_gas_fields_when_no_external_list(conformance):
    r = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data_minimal.json"), UTC)
    assert r.value_of(M.GAS, meter="") == pytest.approx(2569.646)
    no_gas = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data_no_gas.json"), UTC)
    assert no_gas.value_of(M.GAS) is None  # null: no series, never 0


def test_single_phase_nulls_give_no_phantom_phases(conformance):
    r = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data_single_phase.json"), UTC)
    phases = {dict(s.labels)["phase"] for s in r.samples if s.metric is M.PHASE_ACTIVE_POWER}
    assert phases == {"l1"}


def test_v2_p1_matches_v1_names_and_heat_in_gj_becomes_joules(conformance):
    r = parse.parse_v2_measurement(load(conformance, "v2/HWE-P1/measurement_3_phase_with_gas_with_watermeter.json"), UTC)
    assert r.value_of(M.ENERGY_IMPORTED) == pytest.approx(13779.338 * 3.6e6)
    assert r.value_of(M.CURRENT) == 6
    assert r.value_of(M.GAS, meter="4E6576657220676F6E6E612072756E2061726F756E64") == pytest.approx(2569.646)
    assert r.value_of(M.WATER, meter="616E642064657365727420796F75") == pytest.approx(123.456)
    assert r.value_of(M.MEASUREMENT_TIME) == datetime(2024, 6, 28, 14, 12, 34, tzinfo=UTC).timestamp()
    assert r.value_of(M.MONTHLY_PEAK_DEMAND_TIME) == datetime(2024, 6, 4, 10, 11, 22, tzinfo=UTC).timestamp()
    heat = parse.parse_v2_measurement({"external": [{"unique_id": "AB", "type": "heat_meter", "timestamp": "2024-01-01T00:00:00", "value": 1.5, "unit": "GJ"}]}, UTC)
    assert heat.value_of(M.HEAT, meter="AB", kind="heat") == pytest.approx(1.5e9)


def test_kwh_meters_apparent_reactive_power_factor(conformance):
    r = parse.parse_v1_data(load(conformance, "v1/SDM630-wifi/data.json"), UTC)
    assert r.value_of(M.PHASE_VOLTAGE, phase="l2", obis="1-0:52.7.0") == pytest.approx(228.391)
    assert r.value_of(M.PHASE_APPARENT_POWER, phase="l3") == pytest.approx(3563.414)
    assert r.value_of(M.PHASE_REACTIVE_POWER, phase="l2") == pytest.approx(-166.675)
    assert r.value_of(M.PHASE_POWER_FACTOR, phase="l2", obis="1-0:53.7.0") == pytest.approx(0.999)
    assert r.value_of(M.APPARENT_POWER) == pytest.approx(7112.293)
    one = parse.parse_v2_measurement(load(conformance, "v2/HWE-KWH1/measurement.json"), UTC)
    assert one.value_of(M.PHASE_VOLTAGE, phase="l1") == 230  # a single-phase meter's voltage is l1's
    assert one.value_of(M.POWER_FACTOR) == pytest.approx(0.95)
    assert one.value_of(M.REACTIVE_POWER) == 67


def test_water_meter_and_battery(conformance):
    water = parse.parse_v1_data(load(conformance, "v1/HWE-WTR/data.json"), UTC)
    assert water.value_of(M.WATER, meter="") == pytest.approx(8129.123)
    assert water.value_of(M.WATER_FLOW) == pytest.approx(13.12 / 1000 / 60)
    battery = parse.parse_v2_measurement(load(conformance, "v2/HWE-BAT/measurement.json"), UTC)
    assert battery.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx(0.50123)
    assert battery.value_of(M.BATTERY_CYCLES) == 123
    assert battery.value_of(M.ENERGY_EXPORTED) == pytest.approx(321.654 * 3.6e6)


def test_invalid_externals_are_dropped_and_duplicate_ids_do_not_duplicate_series(conformance):
    for rel in ("v2/HWE-P1/measurement_invalid_ean.json", "v1/exceptions/data_invalid_external_ean.json",
                "v1/exceptions/data_invalid_external_data.json", "v2/HWE-P1/measurement_invalid_external.json"):
        r = parse.parse_v2_measurement(load(conformance, rel), UTC) if "measurement" in rel else parse.parse_v1_data(load(conformance, rel), UTC)
        keys = [(s.metric.name, s.labels) for s in r.samples]
        assert len(keys) == len(set(keys)), rel
        assert all(dict(s.labels).get("unit") != "should_not_be_included_because_of_missing_id" for s in r.samples)


def test_device_and_api_version(conformance):
    v1 = load(conformance, "v1/HWE-P1/device.json")
    assert parse.api_version(v1) == 1
    assert parse.parse_device(v1).model == "HWE-P1"
    assert parse.api_version(load(conformance, "v2/HWE-KWH1/device.json")) == 2
    assert parse.parse_device(load(conformance, "v1/exceptions/device_extra_parameters.json")).serial == "3c39e7aabbcc"
    system = parse.parse_v2_system(load(conformance, "v2/HWE-P1/system.json"))
    assert system.value_of(M.WIFI_RSSI) == -77
    assert system.value_of(M.DEVICE_UPTIME) == 356


@pytest.mark.parametrize("payload", [
    {"active_power_w": "a lot"}, {"total_power_import_kwh": True}, {"active_power_w": [1]},
    {"external": "gas"}, [1, 2], "text", None, {"active_power_w": float("nan")},
])
def test_wrong_types_are_parse_errors_not_numbers(payload):
    with pytest.raises(ParseError):
        parse.parse_v1_data(payload)


def test_numeric_strings_are_accepted():
    assert parse.parse_v1_data({"active_power_w": "12.5"}).value_of(M.ACTIVE_POWER) == 12.5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
field_names = st.sampled_from([r[0] for r in parse._V1] + [r[0] for r in parse._V2] + ["external", "timestamp", "montly_power_peak_timestamp"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=8)))
def test_any_json_gives_a_reading_or_a_parse_error(payload):
    for fn in (parse.parse_v1_data, parse.parse_v2_measurement, parse.parse_v2_system):
        try:
            result = fn(payload)
        except ParseError:
            continue
        assert isinstance(result, Reading)
        assert all(s.value == s.value for s in result.samples)  # never NaN


# --- the smart meter behind a P1 meter, and the battery group (v2 /api/batteries) ------------------


def smart_meter(reading: Reading) -> list[dict[str, str]]:
    return [dict(s.labels) for s in reading.samples if s.metric is M.SMART_METER_INFO and s.value == 1]


def test_p1_tells_its_smart_meter_on_both_apis(conformance):
    v1 = parse.parse_v1_data(load(conformance, "v1/HWE-P1/data.json"), UTC)
    assert smart_meter(v1) == [{"model": "ISKRA  2M550T-101", "meter_id": "4E47475955", "protocol_version": "50"}]
    v2 = parse.parse_v2_measurement(load(conformance, "v2/HWE-P1/measurement_3_phase_with_gas_with_watermeter.json"), UTC)
    assert smart_meter(v2) == [{"model": "ISKRA  2M550T-101",
                                "meter_id": "4E6576657220476F6E6E61204C657420596F7520446F776E",
                                "protocol_version": "50"}]
    # an all-zero id is the placeholder of a meter that sends none
    zero = parse.parse_v2_measurement(load(conformance, "v2/HWE-P1/measurement_invalid_ean.json"), UTC)
    assert smart_meter(zero) == []
    placeholder = parse.parse_v2_measurement({"unique_id": "0000", "protocol_version": 50})
    assert smart_meter(placeholder) == [{"model": "", "meter_id": "", "protocol_version": "50"}]


def test_devices_without_a_smart_meter_give_no_smart_meter_series(conformance):
    for rel in ("v1/HWE-KWH3/data.json", "v1/HWE-SKT/data.json", "v1/HWE-WTR/data.json"):
        assert smart_meter(parse.parse_v1_data(load(conformance, rel), UTC)) == []
    assert smart_meter(parse.parse_v2_measurement(load(conformance, "v2/HWE-BAT/measurement.json"), UTC)) == []


def test_smart_meter_labels_are_bounded_and_odd_versions_tolerated():
    r = parse.parse_v2_measurement({"meter_model": "X\n\x00", "unique_id": "AB" * 200, "protocol_version": 5.5})
    (labels,) = smart_meter(r)
    assert len(labels["meter_id"]) == 128 and "\x00" not in labels["model"] and labels["protocol_version"] == "5.5"
    odd = parse.parse_v2_measurement({"meter_model": "M", "protocol_version": True})
    assert smart_meter(odd) == [{"model": "M", "meter_id": "", "protocol_version": ""}]


def test_battery_group_in_the_catalogue_sign(conformance):
    r = parse.parse_v2_batteries(load(conformance, "v2/HWE-P1/batteries.json"))
    # power_w -404 = the batteries deliver 404 W: positive when discharging
    assert r.value_of(M.BATTERY_POWER) == 404
    assert r.value_of(M.BATTERY_TARGET_POWER) == 400
    assert r.value_of(M.BATTERY_MAX_CHARGE_POWER) == 1600
    assert r.value_of(M.BATTERY_MAX_DISCHARGE_POWER) == 800
    assert r.value_of(M.BATTERY_COUNT) == 2
    assert r.value_of(M.BATTERY_CONTROL_MODE, mode="zero") == 1
    assert r.value_of(M.BATTERY_CONTROL_MODE, mode="to_full") == 0
    assert r.value_of(M.BATTERY_PERMISSION, permission="charge_allowed") == 1


def test_battery_group_across_api_versions(conformance):
    old = parse.parse_v2_batteries(load(conformance, "v2/HWE-P1/batteries_2_1_0.json"))
    assert old.value_of(M.BATTERY_COUNT) is None and old.value_of(M.BATTERY_POWER) == 404
    assert not [s for s in old.samples if s.metric is M.BATTERY_PERMISSION]  # 2.1.0 has no permissions
    new = parse.parse_v2_batteries(load(conformance, "v2/HWE-P1/batteries_2_3_0.json"))
    assert new.value_of(M.BATTERY_CONTROL_MODE, mode="predictive") == 1
    assert new.value_of(M.BATTERY_CONTROL_MODE, mode="zero") == 0
    novel = parse.parse_v2_batteries({"mode": "boost", "permissions": ["discharge_allowed"], "power_w": 0})
    assert novel.value_of(M.BATTERY_CONTROL_MODE, mode="boost") == 1
    assert novel.value_of(M.BATTERY_PERMISSION, permission="charge_allowed") == 0
    assert novel.value_of(M.BATTERY_POWER) == 0


def test_meter_without_batteries_gives_the_count_only():
    r = parse.parse_v2_batteries({"mode": "zero", "battery_count": 0, "power_w": 0, "target_power_w": 0,
                                  "max_consumption_w": 0, "max_production_w": 0})
    assert [(s.metric, s.value) for s in r.samples] == [(M.BATTERY_COUNT, 0)]


@pytest.mark.parametrize("payload", [[], {"mode": 3}, {"permissions": "charge_allowed"}, {"permissions": [1]},
                                     {"power_w": "much"}, {"battery_count": [2]}])
def test_malformed_battery_group_is_refused(payload):
    with pytest.raises(ParseError):
        parse.parse_v2_batteries(payload)
