"""IAMMETER JSON parsing: the captured bodies, every documented shape, and malformed input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import ParseError, Reading
from exporter.vendors.iammeter.parse import parse_monitor, parse_monitorjson, parse_ratio, parse_wifidata

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
KWH = 3.6e6


def corpus(name: str) -> dict:
    path = CONFORMANCE / "iammeter" / name
    if not path.is_file():
        pytest.skip(f"conformance corpus not found at {path}")
    return json.loads(path.read_bytes())


def names(reading: Reading) -> set[str]:
    return {s.metric.name for s in reading.samples}


def value(reading: Reading, metric: M.Metric, **labels: str) -> float | None:
    return reading.value_of(metric, **labels)


# Shapes from IAMMETER's documentation (monitorjson-api.md, the local integration guide).
SINGLE = {"method": "1-272", "mac": "B0F8932A295C", "version": "i.91.063T2", "server": "em",
          "SN": "DA2BED94", "Data": [226.85, 1.31, 152.0, 22920.38, 0.00, 49.97, 0.51]}
THREE = {"method": "2-9", "mac": "849DC2CEC3A6", "version": "i.91.063T2", "server": "em", "SN": "5DB50BF4",
         "Datas": [[226.2, 1.420, 197.0, 423.676, 0.000, 50.03, 0.61],
                   [226.6, 1.420, 197.0, 423.527, 0.000, 50.03, 0.61],
                   [226.1, 1.420, 199.0, 427.346, 0.000, 50.03, 0.62]]}
NEM = {**THREE, "Datas": [[225.8, 1.420, 198.0, 423.678, 0.000, 50.00, 0.61],
                          [226.2, 1.420, 197.0, 423.528, 0.000, 50.00, 0.61],
                          [225.8, 1.430, 199.0, 427.348, 0.000, 50.00, 0.62],
                          [226.0, 0.000, 594.0, 1275.075, 0.000, 50.00, 0.62]]}
REACTIVE = {"Reactive": [[-119.0, 0.000, 258.703], [-120.0, 0.000, 260.278], [-118.0, 0.007, 256.485]]}
TWO_PHASE_NEM = {"method": "5-3", "SN": "2C67A0B5", "version": "i.91.063T2",
                 "Datas": [[121.2, 12.4, 1450.0, 5321.5, 12.25, 60.0, 0.96],
                           [120.8, 8.1, -930.0, 4410.125, 850.0, 60.0, 0.95],
                           [121.2, 0.0, 520.0, 7785.3, 689.8, 60.0, 0.21]]}


# --- The captured bodies ------------------------------------------------------------------------


def test_wem3080t_current_firmware_body_gives_per_phase_series_in_base_units():
    reading = parse_monitorjson(corpus("wem3080t_i.75.97.9_monitorjson.json"))
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 220.0
    assert value(reading, M.PHASE_VOLTAGE, phase="l3") == 263.5
    assert value(reading, M.PHASE_CURRENT, phase="l2") == 9.99
    assert value(reading, M.PHASE_ACTIVE_POWER, phase="l1") == 2198
    assert value(reading, M.PHASE_ENERGY_IMPORTED, phase="l1") == pytest.approx(11.337 * KWH)
    assert value(reading, M.PHASE_ENERGY_EXPORTED, phase="l3") == pytest.approx(10.846 * KWH)
    assert value(reading, M.PHASE_POWER_FACTOR, phase="l2") == 0.5
    assert value(reading, M.FREQUENCY) == 49.99
    # One frequency series, not one per phase.
    assert sum(1 for s in reading.samples if s.metric is M.FREQUENCY) == 1
    # The JSON has no device total: none is invented from the phases.
    assert M.ACTIVE_POWER.name not in names(reading)
    assert M.ENERGY_IMPORTED.name not in names(reading)
    assert reading.devices[0].model == "WEM3080T"
    assert reading.devices[0].serial == "3E0BAF87"
    assert reading.devices[0].firmware == "i.75.97.9"


def test_phase_energy_counters_carry_their_obis_codes():
    reading = parse_monitorjson(corpus("wem3080t_i.75.97.9_monitorjson.json"))
    obis = {(s.metric.name, dict(s.labels)["phase"]): dict(s.labels).get("obis")
            for s in reading.samples if "phase" in dict(s.labels)}
    assert obis[(M.PHASE_ENERGY_IMPORTED.name, "l2")] == "1-0:41.8.0"
    assert obis[(M.PHASE_ENERGY_EXPORTED.name, "l3")] == "1-0:62.8.0"
    assert obis[(M.PHASE_VOLTAGE.name, "l1")] == "1-0:32.7.0"


def test_wem3080t_legacy_firmware_body_keeps_export_sign_and_large_counters():
    reading = parse_monitorjson(corpus("wem3080t_fw1.72.7_uploadsn.json"))
    assert value(reading, M.PHASE_ACTIVE_POWER, phase="l1") == -1044
    assert value(reading, M.PHASE_ACTIVE_POWER, phase="l3") == -1213
    assert value(reading, M.PHASE_ENERGY_EXPORTED, phase="l2") == pytest.approx(1789550.92 * KWH)
    assert value(reading, M.PHASE_ENERGY_IMPORTED, phase="l1") == pytest.approx(0.92 * KWH)
    assert reading.devices[0].serial == "E395281A"
    assert reading.devices[0].firmware == "1.72.7"


def test_wem3162_legacy_body_is_a_single_phase_device_total():
    reading = parse_monitorjson(corpus("wem3162_legacy_data.json"))
    assert value(reading, M.ACTIVE_POWER) == 189
    assert value(reading, M.ENERGY_IMPORTED) == pytest.approx(1265.17 * KWH)
    assert value(reading, M.ENERGY_EXPORTED) == 0.0
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 235.0
    assert value(reading, M.PHASE_CURRENT, phase="l1") == 1.214
    # Five-element rows: frequency and power factor were not sent, so they have no series.
    assert M.FREQUENCY.name not in names(reading)
    assert M.POWER_FACTOR.name not in names(reading)
    assert reading.devices[0].model == "WEM3162"
    assert reading.devices[0].serial == ""


def test_every_corpus_body_yields_samples(conformance):
    from tests import corpus_iammeter

    found = dict(corpus_iammeter.readings(conformance))
    assert len(found) == len(list((conformance / "iammeter").glob("*.json"))) >= 3
    for name, reading in found.items():
        assert name.startswith("iammeter/")
        assert reading.samples and reading.devices


# --- Documented shapes --------------------------------------------------------------------------


def test_single_phase_row_is_device_total_and_phase_l1():
    reading = parse_monitorjson(SINGLE)
    assert value(reading, M.ACTIVE_POWER) == 152.0
    assert value(reading, M.ENERGY_IMPORTED) == pytest.approx(22920.38 * KWH)
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 226.85
    assert value(reading, M.PHASE_CURRENT, phase="l1") == 1.31
    assert value(reading, M.POWER_FACTOR) == 0.51
    assert value(reading, M.FREQUENCY) == 49.97
    assert M.PHASE_ACTIVE_POWER.name not in names(reading)
    assert reading.devices[0].model == "WEM3080"


def test_net_metering_row_is_the_meter_total_not_a_sum_of_phases():
    reading = parse_monitorjson(NEM)
    assert value(reading, M.ACTIVE_POWER) == 594.0
    assert value(reading, M.ENERGY_IMPORTED) == pytest.approx(1275.075 * KWH)
    assert value(reading, M.ENERGY_EXPORTED) == 0.0
    assert value(reading, M.POWER_FACTOR) == 0.62  # the system power factor of the net row
    # The meter's netted counter, not the sum of its phase counters.
    phase_sum = sum(value(reading, M.PHASE_ENERGY_IMPORTED, phase=p) for p in ("l1", "l2", "l3"))
    assert phase_sum != pytest.approx(value(reading, M.ENERGY_IMPORTED))
    # Only three phases: the net row never becomes a phase.
    assert {dict(s.labels).get("phase") for s in reading.samples} == {None, "l1", "l2", "l3"}
    assert sum(1 for s in reading.samples if s.metric is M.PHASE_VOLTAGE) == 3
    assert sum(1 for s in reading.samples if s.metric is M.ACTIVE_POWER) == 1


def test_two_phase_wem2067_third_row_is_the_net_row():
    reading = parse_monitorjson(TWO_PHASE_NEM)
    assert reading.devices[0].model == "WEM2067"
    assert value(reading, M.PHASE_ACTIVE_POWER, phase="l2") == -930.0
    assert value(reading, M.PHASE_VOLTAGE, phase="l3") is None
    assert value(reading, M.ACTIVE_POWER) == 520.0
    assert value(reading, M.ENERGY_EXPORTED) == pytest.approx(689.8 * KWH)


def test_two_phase_wem2067_without_nem_has_two_phases_only():
    payload = {**TWO_PHASE_NEM, "Datas": TWO_PHASE_NEM["Datas"][:2]}
    reading = parse_monitorjson(payload)
    assert {dict(s.labels).get("phase") for s in reading.samples} == {None, "l1", "l2"}
    assert M.ACTIVE_POWER.name not in names(reading)


def test_old_firmware_five_element_rows_have_no_frequency_nor_power_factor():
    payload = {"method": "uploadsn", "SN": "X", "Datas": [row[:5] for row in THREE["Datas"]]}
    reading = parse_monitorjson(payload)
    assert value(reading, M.PHASE_VOLTAGE, phase="l2") == 226.6
    assert value(reading, M.PHASE_ENERGY_IMPORTED, phase="l3") == pytest.approx(427.346 * KWH)
    assert M.FREQUENCY.name not in names(reading)
    assert M.PHASE_POWER_FACTOR.name not in names(reading)


def test_legacy_lower_case_data_needs_status_succeed():
    assert value(parse_monitorjson({"status": "succeed", "data": [230, 1, 100, 5, 0]}), M.ACTIVE_POWER) == 100
    with pytest.raises(ParseError, match="status"):
        parse_monitorjson({"status": "failed", "data": [230, 1, 100, 5, 0]})


@pytest.mark.parametrize("method, model", [
    ("1-272", "WEM3080"), ("2-9", "WEM3080T"), ("3-1", "WEM3046T"), ("4-77", "WEM3050T"),
    ("6-2", "WEM3063T"), ("uploadsn", "WEM3080T"), ("9-1", ""),
])
def test_model_comes_from_the_method_code(method, model):
    payload = copy.deepcopy(SINGLE if model == "WEM3080" else THREE)
    payload["method"] = method
    reading = parse_monitorjson(payload)
    assert reading.devices[0].model == model
    assert value(reading, M.FREQUENCY) is not None


def test_model_field_of_api_monitor_wins_over_the_code():
    reading = parse_monitorjson({**THREE, "method": "uploadsn", "model": "WEM3050T"})
    assert reading.devices[0].model == "WEM3050T"


def test_unknown_model_with_four_rows_is_three_phases_and_net():
    reading = parse_monitorjson({**NEM, "method": "8-1"})
    assert value(reading, M.ACTIVE_POWER) == 594.0
    assert value(reading, M.PHASE_ACTIVE_POWER, phase="l3") == 199.0


def test_reactive_block_gives_per_phase_reactive_series():
    reading = parse_monitorjson({**THREE, "EA": REACTIVE})
    assert value(reading, M.PHASE_REACTIVE_POWER, phase="l1") == -119.0
    assert value(reading, M.PHASE_REACTIVE_ENERGY_INDUCTIVE, phase="l3") == pytest.approx(0.007 * KWH)
    assert value(reading, M.PHASE_REACTIVE_ENERGY_CAPACITIVE, phase="l2") == pytest.approx(260.278 * KWH)
    assert M.REACTIVE_POWER.name not in names(reading)


def test_reactive_block_of_a_single_phase_meter_is_the_device_total():
    reading = parse_monitorjson({**SINGLE, "EA": {"Reactive": [12.5, 1.5, 0.25]}})
    assert value(reading, M.REACTIVE_POWER) == 12.5
    assert value(reading, M.REACTIVE_ENERGY_INDUCTIVE) == pytest.approx(1.5 * KWH)
    assert value(reading, M.REACTIVE_ENERGY_CAPACITIVE) == pytest.approx(0.25 * KWH)


def test_numeric_strings_from_firmware_are_numbers():
    reading = parse_monitorjson({"SN": "X", "Data": ["230.5", "1.2", "-250", "10.5", "2", "50.0", "0.9"]})
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 230.5
    assert value(reading, M.ACTIVE_POWER) == -250.0


def test_a_null_field_gives_no_series_and_a_null_row_skips_its_phase():
    payload = copy.deepcopy(THREE)
    payload["Datas"][0][6] = None
    payload["Datas"][1] = [None] * 7
    reading = parse_monitorjson(payload)
    assert value(reading, M.PHASE_POWER_FACTOR, phase="l1") is None
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 226.2
    assert not [s for s in reading.samples if dict(s.labels).get("phase") == "l2"]
    assert value(reading, M.PHASE_VOLTAGE, phase="l3") == 226.1


@pytest.mark.parametrize("payload", [
    {**THREE, "Datas": [[None] * 7] * 3},
    {**THREE, "Datas": None},
    {**SINGLE, "Data": None},
])
def test_no_measurement_at_all_is_an_error(payload):
    with pytest.raises(ParseError, match="no measurement"):
        parse_monitorjson(payload)


# --- Malformed input ----------------------------------------------------------------------------

MALFORMED = {
    "not an object": [1, 2, 3],
    "string": "garbage",
    "null": None,
    "number": 5,
    "no data key": {"SN": "X", "method": "2-1"},
    "both keys": {**THREE, "Data": SINGLE["Data"]},
    "Datas not a list": {**THREE, "Datas": {"a": 1}},
    "empty Datas": {**THREE, "Datas": []},
    "row not a list": {**THREE, "Datas": [1, 2, 3]},
    "row of 4": {**THREE, "Datas": [[230, 1, 2, 3]] * 3},
    "row of 6": {**THREE, "Datas": [[230, 1, 2, 3, 4, 50]] * 3},
    "row of 8": {**THREE, "Datas": [[230, 1, 2, 3, 4, 50, 1, 9]] * 3},
    "text in row": {**SINGLE, "Data": [226.85, "abc", 152.0, 22920.38, 0.0, 49.97, 0.51]},
    "boolean in row": {**SINGLE, "Data": [226.85, True, 152.0, 22920.38, 0.0, 49.97, 0.51]},
    "list in row": {**SINGLE, "Data": [226.85, [1], 152.0, 22920.38, 0.0, 49.97, 0.51]},
    "object in row": {**SINGLE, "Data": [{"v": 1}, 1.3, 152.0, 22920.38, 0.0, 49.97, 0.51]},
    "infinite": {**SINGLE, "Data": [226.85, 1.3, math.inf, 22920.38, 0.0, 49.97, 0.51]},
    "integer too large for a float": json.loads('{"Data":[230,1,' + "9" * 400 + ',1,0,50,1]}'),
    "five rows": {**THREE, "method": "uploadsn", "Datas": THREE["Datas"] + NEM["Datas"][:2]},
    "two rows for a WEM3080T": {**THREE, "Datas": THREE["Datas"][:2]},
    "net row on single phase": {**SINGLE, "Data": [SINGLE["Data"], SINGLE["Data"]]},
    "two rows for WEM3080 code": {**THREE, "method": "1-1", "Datas": THREE["Datas"][:2]},
    "EA not an object": {**THREE, "EA": [1, 2]},
    "Reactive not a list": {**THREE, "EA": {"Reactive": 5}},
    "Reactive row of 2": {**THREE, "EA": {"Reactive": [[1, 2]] * 3}},
    "Reactive one row for three phases": {**THREE, "EA": {"Reactive": [[1, 2, 3]]}},
    "Reactive text": {**THREE, "EA": {"Reactive": [["x", 2, 3]] * 3}},
    "SN is a list": {**THREE, "SN": ["a"]},
    "method is an object": {**THREE, "method": {"a": 1}},
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payloads_raise_parse_error(payload):
    with pytest.raises(ParseError):
        parse_monitorjson(payload)


def test_a_negative_counter_is_left_to_the_store_which_drops_it_and_keeps_the_rest():
    """Like every vendor's, a negative running total is not exported (and is counted); it does
    not cost the rest of the reading."""
    from exporter.store import SnapshotStore

    reading = parse_monitorjson({**SINGLE, "Data": [226.85, 1.3, 152.0, -5.0, 0.0, 49.97, 0.51]})
    store = SnapshotStore()
    store.add_target("m", "iammeter", 60.0)
    store.record_success("m", reading)
    text = b"".join(store.cache.chunks(False)).decode()
    assert "energy_meter_active_power_watts{" in text
    assert "energy_meter_energy_imported_joules_total{" not in text
    assert "energy_meter_energy_exported_joules_total{" in text
    assert 'reason="negative"' in text and 'energy_meter_exporter_samples_dropped_total{' in text


def test_parse_error_names_the_offending_field():
    with pytest.raises(ParseError, match=r"Datas\[1\]\[2\]"):
        parse_monitorjson({**THREE, "Datas": [THREE["Datas"][0], [230, 1, "x", 1, 1, 50, 1], THREE["Datas"][2]]})
    with pytest.raises(ParseError, match="6 values"):
        parse_monitorjson({**THREE, "Datas": [[230, 1, 2, 3, 4, 50]] * 3})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.just(10**400),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=40,
)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
           | st.sampled_from([10**400, -(10**400), "1e999", "NaN", " 12 "]))
rows = st.lists(scalars, min_size=0, max_size=9)
shaped = st.fixed_dictionaries(
    {"method": st.sampled_from(["1-1", "2-5", "5-2", "uploadsn", "x"]) | scalars},
    optional={
        "Datas": st.lists(rows | scalars, max_size=6) | scalars,
        "Data": rows | st.lists(rows, max_size=2) | scalars,
        "data": rows,
        "status": st.sampled_from(["succeed", "fail"]),
        "EA": st.fixed_dictionaries({}, optional={"Reactive": st.lists(rows, max_size=4) | rows | scalars}) | scalars,
        "SN": scalars,
        "model": scalars,
        "sig": scalars,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, shaped))
def test_any_json_gives_a_reading_or_a_parse_error(payload):
    for parse in (parse_monitorjson, parse_monitor, parse_ratio):
        try:
            result = parse(payload)
        except ParseError:
            continue
        assert isinstance(result, Reading)
        assert all(math.isfinite(s.value) for s in result.samples)
    try:
        parse_wifidata(payload)
    except ParseError:
        pass


# --- /api/monitor, /api/wifidata, /api/ratio ----------------------------------------------------


def test_monitor_adds_the_wifi_signal_as_a_ratio():
    reading = parse_monitor({"ssid": "wifi", "sig": 80, "model": "WEM3080T", "SN": "5DB50BF4", **THREE})
    assert value(reading, M.WIFI_SIGNAL) == 0.8
    assert value(reading, M.PHASE_VOLTAGE, phase="l1") == 226.2
    assert reading.devices[0].model == "WEM3080T"


def test_monitor_null_before_the_first_measurement_is_an_empty_reading():
    reading = parse_monitor(None)
    assert reading.samples == [] and reading.devices == []


def test_monitor_without_data_yet_keeps_signal_and_identity():
    reading = parse_monitor({"ssid": "wifi", "sig": 55, "SN": "ABC", "model": "WEM3080", "Data": None})
    assert names(reading) == {M.WIFI_SIGNAL.name}
    assert reading.devices[0].serial == "ABC"


def test_monitor_negative_signal_is_an_rssi_and_nonsense_is_an_error():
    assert value(parse_monitor({"sig": -67}), M.WIFI_RSSI) == -67
    with pytest.raises(ParseError):
        parse_monitor({"sig": 250})
    with pytest.raises(ParseError):
        parse_monitor([1])


def test_wifidata_gives_identity_and_settings():
    info = parse_wifidata({"version": "i.75.97.9", "SN": "3E0BAF87", "mac": "B0F8933C4F94", "type": "PM",
                           "ssid": "CMCC-laohe", "ip": "192.168.11.62", "dhcp": 1, "runMode": "tcp",
                           "uploadinterval": 60})
    assert info.device.serial == "3E0BAF87" and info.device.firmware == "i.75.97.9"
    assert info.mac == "B0F8933C4F94" and info.run_mode == "tcp" and info.upload_interval == 60
    assert info.net_metering is None


# The seed's `GET /api/wifidata` example (local integration guide, 5.3).
SEED_WIFIDATA = {"version": "i.75.97.9", "SN": "3E0BAF87", "mac": "B0F8933C4F94", "type": "PM",
                 "ssid": "CMCC-laohe", "ip": "192.168.11.62", "netmask": "255.255.255.0", "gw": "192.168.11.253",
                 "dns": "114.114.114.114", "dhcp": 1, "runMode": "tcp", "uploadinterval": 60}


def test_wifidata_series_are_the_upload_mode_and_interval_not_the_network_settings():
    reading = parse_wifidata(SEED_WIFIDATA).reading()
    modes = {dict(s.labels)["mode"]: s.value for s in reading.samples if s.metric is M.UPLOAD_MODE}
    assert modes == {"cloud": 0, "tcp": 1, "http": 0, "mqtt": 0, "standalone": 0}
    assert reading.value_of(M.UPLOAD_INTERVAL) == 60
    assert {s.metric for s in reading.samples} == {M.UPLOAD_MODE, M.UPLOAD_INTERVAL}
    labels = {v for s in reading.samples for _, v in s.labels}
    assert not labels & {"CMCC-laohe", "192.168.11.62"}


def test_wifidata_keeps_a_mode_it_does_not_know_and_its_signal():
    reading = parse_wifidata({"runMode": "Modbus", "sig": 55}).reading()
    assert reading.value_of(M.UPLOAD_MODE, mode="Modbus") == 1
    assert reading.value_of(M.UPLOAD_MODE, mode="tcp") == 0
    assert reading.value_of(M.WIFI_SIGNAL) == 0.55
    assert parse_wifidata({"runMode": "MQTT"}).run_mode == "mqtt"
    assert parse_wifidata({}).reading().samples == []
    with pytest.raises(ParseError):
        parse_wifidata({"sig": 300})


def test_wifidata_tolerates_numeric_run_mode_and_quoted_interval():
    info = parse_wifidata({"runMode": 4, "uploadInterval": "30", "netmeter": 1})
    assert info.run_mode == "standalone" and info.upload_interval == 30 and info.net_metering is True
    with pytest.raises(ParseError):
        parse_wifidata("nope")
    with pytest.raises(ParseError):
        parse_wifidata({"uploadinterval": "soon"})


@pytest.mark.parametrize("payload, ratio", [
    ({"CTratio": 400}, 400), ({"ctratio": "200"}, 200), ({"ratio": 1}, 1), (150, 150),
])
def test_ratio_is_a_ct_ratio_gauge(payload, ratio):
    assert value(parse_ratio(payload), M.CT_RATIO) == ratio


@pytest.mark.parametrize("payload", [
    {"successful": 0, "message": "invalid parameter"}, {"CTratio": 0}, {"CTratio": "x"}, [400], None,
])
def test_ratio_refusals_are_parse_errors(payload):
    with pytest.raises(ParseError):
        parse_ratio(payload)
