"""Enphase parsers: every firmware folder of the corpus, known firmware faults, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import ParseError, Reading
from exporter.vendors.enphase import parse

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
ENPHASE = CONFORMANCE / "enphase"
WH = 3600.0


def folder(name: str) -> Path:
    path = ENPHASE / name
    if not path.is_dir():
        pytest.skip(f"conformance corpus not found at {path}")
    return path


def load(name: str, file: str):
    return json.loads((folder(name) / file).read_bytes())


def meters(name: str) -> dict:
    return parse.parse_meters(load(name, "ivp_meters"))


def series(reading: Reading, metric: M.Metric) -> dict[tuple, float]:
    return {s.labels: s.value for s in reading.samples if s.metric is metric}


def phases(reading: Reading, metric: M.Metric, **labels: str) -> dict[str, float]:
    out = {}
    for s in reading.samples:
        d = dict(s.labels)
        if s.metric is metric and all(d.get(k) == v for k, v in labels.items()):
            out[d["phase"]] = s.value
    return out


# --- one test per firmware folder -----------------------------------------------------------------


def test_3_9_36_legacy_without_cts():
    name = "3.9.36"
    info = parse.parse_info((folder(name) / "info").read_bytes())
    assert (info.serial, info.part_number, info.firmware, info.needs_token) == ("121426016034", "800-00069-r05", "R3.9.36", False)
    api = parse.parse_api_v1_production(load(name, "api_v1_production"))
    assert api.value_of(M.PRODUCTION_POWER) == 1271
    assert api.value_of(M.PRODUCTION_ENERGY) == 6012540 * WH
    inverters = parse.parse_inverters(load(name, "api_v1_production_inverters"))
    assert len(series(inverters, M.INVERTER_POWER)) == 12
    assert inverters.value_of(M.INVERTER_POWER, inverter="121547058993") == 138
    assert inverters.value_of(M.INVERTER_MAX_POWER, inverter="121547058993") == 231
    assert inverters.value_of(M.INVERTER_LAST_REPORT, inverter="121547058993") == 1618083961
    # The HTML page of old firmware: "Currently 0 W", "Since Installation 14.6 MWh".
    page = parse.parse_production_page((folder(name) / "production").read_bytes())
    assert page.value_of(M.PRODUCTION_POWER) == 0
    assert page.value_of(M.PRODUCTION_ENERGY) == pytest.approx(14.6e6 * WH)


def test_4_2_27_cts_not_installed_give_no_consumption():
    name = "4.2.27"
    reading = parse.parse_production_json(load(name, "production.json"))
    # The eim entries have activeCount 0 and lifetime 0: production comes from the inverters.
    assert reading.value_of(M.PRODUCTION_POWER) == 5891
    assert reading.value_of(M.PRODUCTION_ENERGY) == 10279087 * WH
    # ... and the random 5811 W of the unconnected consumption CT is not a reading.
    assert reading.value_of(M.CONSUMPTION_POWER) is None
    assert reading.value_of(M.ACTIVE_POWER) is None
    assert parse.parse_info((folder(name) / "info").read_bytes()).version == (4, 2, 27)


def test_5_0_62_inverters_only():
    name = "5.0.62"
    assert meters(name) == {}
    assert parse.parse_meter_readings(load(name, "ivp_meters_readings"), {}).samples == []
    reading = parse.parse_production_json(load(name, "production.json"))
    assert reading.value_of(M.PRODUCTION_POWER) == 7904
    assert reading.value_of(M.PRODUCTION_ENERGY) == 133798554 * WH
    inverters = parse.parse_inverters(load(name, "api_v1_production_inverters"))
    assert len(series(inverters, M.INVERTER_POWER)) == 40
    assert parse.parse_api_v1_production(load(name, "api_v1_production")).value_of(M.PRODUCTION_POWER) == 7907


def test_7_3_466_three_phase_cts():
    name = "7.3.466_with_cts_3phase"
    cts = meters(name)
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="production") == 488.925
    assert readings.value_of(M.CT_ENERGY_DELIVERED, meter="production") == pytest.approx(3183793.885 * WH)
    assert readings.value_of(M.CT_ENERGY_RECEIVED, meter="production") == pytest.approx(8851.704 * WH)
    # phaseCount 3: all three channels are phases of this meter.
    assert phases(readings, M.CT_PHASE_VOLTAGE, meter="production") == {"l1": 235.236, "l2": 6.124, "l3": 11.469}
    # The net-consumption CT is the grid connection: the standard names.
    assert readings.value_of(M.ACTIVE_POWER) == -36.162
    assert readings.value_of(M.ENERGY_IMPORTED) == pytest.approx(3738205.282 * WH)
    assert readings.value_of(M.ENERGY_EXPORTED) == pytest.approx(1776768.769 * WH)
    assert readings.value_of(M.POWER_FACTOR) == -0.06
    production = parse.parse_production_json(load(name, "production.json"), parse.gateway_phase_count(cts))
    assert production.value_of(M.PRODUCTION_POWER) == -6.481  # at night the CT sees the inverters' standby draw
    assert production.value_of(M.PRODUCTION_ENERGY) == pytest.approx(4351113.2 * WH)
    assert production.value_of(M.CONSUMPTION_POWER) == 209.084
    assert production.value_of(M.ACTIVE_POWER) == 215.565
    assert phases(production, M.PHASE_CONSUMPTION_POWER) == {"l1": 88.573, "l2": 123.364, "l3": -2.853}


def test_7_6_175_single_phase_drops_the_noise_of_missing_phases():
    name = "7.6.175_with_cts"
    cts = meters(name)
    assert {m.phase_count for m in cts.values()} == {1}
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    # Channels 2 and 3 carry noise (6.1 V, 0.227 A) on a meter that monitors one phase.
    assert phases(readings, M.CT_PHASE_VOLTAGE, meter="production") == {"l1": 235.236}
    assert phases(readings, M.PHASE_ACTIVE_POWER) == {"l1": -36.162}
    production = parse.parse_production_json(load(name, "production.json"), 1)
    assert production.value_of(M.PRODUCTION_POWER) == 488.154
    assert production.value_of(M.CONSUMPTION_POWER) == 476.686
    assert production.value_of(M.CONSUMPTION_ENERGY) == pytest.approx(5145153.621 * WH)
    assert production.value_of(M.ACTIVE_POWER) == -11.468


def test_8_2_4286_split_phase_with_storage_ct_and_batteries():
    name = "8.2.4286_with_3cts_and_battery_split"
    cts = meters(name)
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="production") == 7131.017
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="storage") == -7083.656
    assert readings.value_of(M.ACTIVE_POWER) == 1749.504
    # The net CT's third channel is a copy of the storage CT's second phase: not a phase here.
    assert phases(readings, M.PHASE_ACTIVE_POWER) == {"l1": 809.907, "l2": 939.597}
    assert phases(readings, M.CT_PHASE_CURRENT, meter="storage") == {"l1": 28.813, "l2": 28.813}
    inventory = parse.parse_ensemble_inventory(load(name, "ivp_ensemble_inventory"))
    assert len(series(inventory, M.BATTERY_UNIT_STATE_OF_CHARGE)) == 5
    assert inventory.value_of(M.BATTERY_UNIT_STATE_OF_CHARGE, battery="492320000140") == 0.39
    assert inventory.value_of(M.BATTERY_UNIT_TEMPERATURE, battery="492335008361") == 23
    assert inventory.value_of(M.BATTERY_UNIT_CAPACITY, battery="492320000140") == 5000 * WH
    assert inventory.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx((39 + 48 + 48 + 49 + 48) / 500)
    production = parse.parse_production_json(load(name, "production.json"), 2)
    assert production.value_of(M.PRODUCTION_POWER) == 7123.097
    assert production.value_of(M.CONSUMPTION_POWER) == 8884.72
    assert production.value_of(M.ACTIVE_POWER) == 1761.624


def test_8_3_5169_every_endpoint():
    name = "8.3.5169_with_generator"
    cts = meters(name)
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="production") == 2891.863
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="net-consumption") == 160.49
    assert readings.value_of(M.ACTIVE_POWER) == 160.49
    assert readings.value_of(M.MEASUREMENT_TIME) == 1785593341
    # eid 1023410688 is not in /ivp/meters: no role, no series.
    assert {dict(s.labels).get("meter") for s in readings.samples} == {"production", "net-consumption", None}
    details = parse.parse_production_json(load(name, "production.json_details_1"), 2)
    assert details.value_of(M.PRODUCTION_POWER) == 2885.154
    assert details.value_of(M.PRODUCTION_ENERGY) == pytest.approx(11567953.818 * WH)
    assert phases(details, M.PHASE_PRODUCTION_POWER) == {"l1": 1438.279, "l2": 1446.875}
    assert details.value_of(M.CONSUMPTION_POWER) == 3050.455
    assert details.value_of(M.ACTIVE_POWER) == 165.301
    assert phases(details, M.PHASE_ACTIVE_POWER) == {"l1": -295.092, "l2": 460.393}
    grid = parse.parse_grid_reading(load(name, "ivp_meters_gridReading"))
    assert phases(grid, M.PHASE_ACTIVE_POWER) == {"l1": -290.72, "l2": 462.042}  # L3: all zeros, not a phase
    assert grid.value_of(M.PHASE_VOLTAGE, phase="l2") == 124.61
    assert grid.value_of(M.FREQUENCY) == 60.0
    reports = parse.parse_meter_reports(load(name, "ivp_meters_reports"), 2)
    assert reports.value_of(M.PRODUCTION_POWER) == 2895.974
    assert reports.value_of(M.CONSUMPTION_POWER) == 3069.39
    assert reports.value_of(M.CONSUMPTION_ENERGY) == pytest.approx(27293441.263 * WH)
    assert reports.value_of(M.ACTIVE_POWER) == 173.416
    pdm = parse.parse_pdm_energy(load(name, "ivp_pdm_energy"))
    assert pdm.value_of(M.PRODUCTION_POWER) == 2653  # the CT ("eim"), not the inverters' 2682
    assert pdm.value_of(M.PRODUCTION_ENERGY) == 11567547 * WH
    assert pdm.value_of(M.CONSUMPTION_POWER) == 3188
    assert parse.parse_inverters(load(name, "api_v1_production_inverters")).value_of(
        M.INVERTER_POWER, inverter="482208990017") == 142
    assert parse.parse_ensemble_inventory(load(name, "ivp_ensemble_inventory")).samples == []  # Enpower only


def test_8_3_5433_house_consumption_is_production_plus_net_when_total_copies_net():
    name = "8.3.5433_tot_is_net_cons"
    production = parse.parse_production_json(load(name, "production.json_details_1"), 2, meters(name))
    assert production.value_of(M.PRODUCTION_POWER) == 357.492
    # total-consumption == net-consumption (428.414 W, 5649402.426 Wh): the total is the fault;
    # the house takes production + net import (the total CT itself reads 786.513 W).
    assert production.value_of(M.CONSUMPTION_POWER) == pytest.approx(357.492 + 428.414)
    assert production.value_of(M.CONSUMPTION_ENERGY) == pytest.approx((14405465.109 + 5649402.426) * WH)
    assert phases(production, M.PHASE_CONSUMPTION_POWER) == pytest.approx({"l1": 174.574 + 249.477,
                                                                         "l2": 182.918 + 178.936})
    assert production.value_of(M.ACTIVE_POWER) == 428.414
    assert phases(production, M.PHASE_ACTIVE_POWER) == {"l1": 249.477, "l2": 178.936}
    # The physical CT is configured as total-consumption and reads the real house load.
    cts = meters(name)
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="total-consumption") == 786.513
    assert readings.value_of(M.ACTIVE_POWER) is None  # no net-consumption CT
    # Disabled CTs (storage, backfeed, load, evse, pv3p) give no series.
    assert {dict(s.labels)["meter"] for s in readings.samples} == {"production", "total-consumption"}
    # Power factor 1.553 is impossible (a firmware fault) and is dropped; per phase 0.75 stays.
    assert readings.value_of(M.CT_POWER_FACTOR, meter="production") is None
    assert readings.value_of(M.CT_PHASE_POWER_FACTOR, meter="production", phase="l1") is not None


def test_equal_total_and_net_before_any_production_are_real():
    entry = {"type": "eim", "activeCount": 1, "wNow": 300.0, "whLifetime": 1000.0}
    payload = {"production": [{"type": "eim", "activeCount": 1, "measurementType": "production", "wNow": 0, "whLifetime": 0}],
               "consumption": [{**entry, "measurementType": "total-consumption"},
                               {**entry, "measurementType": "net-consumption"}]}
    reading = parse.parse_production_json(payload)
    assert reading.value_of(M.CONSUMPTION_POWER) == 300.0


def test_intermittent_active_count_zero_keeps_the_ct_source():
    payload = {"production": [{"type": "inverters", "activeCount": 10, "wNow": 900, "whLifetime": 5000},
                              {"type": "eim", "activeCount": 0, "measurementType": "production", "wNow": 950.5,
                               "whLifetime": 4900.0}]}
    assert parse.parse_production_json(payload).value_of(M.PRODUCTION_ENERGY) == 4900.0 * WH


def test_phantom_phase_without_phase_count_is_dropped_only_when_all_zero():
    channel = {"eid": 1, "activePower": 0.0, "voltage": 0.0, "current": 0.0, "freq": 60.0}
    real = {"eid": 2, "activePower": 0.0, "voltage": 230.1, "current": 0.0, "freq": 60.0}
    cts = {7: parse.MeterConfig(7, "production", "production", True, None)}
    reading = parse.parse_meter_readings([{"eid": 7, "activePower": 0, "channels": [real, channel, channel]}], cts)
    assert phases(reading, M.CT_PHASE_VOLTAGE, meter="production") == {"l1": 230.1}


def test_absent_fields_give_no_series_and_nulls_are_not_zero():
    assert parse.parse_api_v1_production({}).samples == []
    assert parse.parse_api_v1_production({"wattsNow": None, "wattHoursLifetime": None}).samples == []
    reading = parse.parse_inverters([{"serialNumber": "1", "lastReportWatts": None, "lastReportDate": 0}])
    assert reading.samples == []


def test_negative_lifetime_counter_is_dropped():
    assert parse.parse_api_v1_production({"wattsNow": 5, "wattHoursLifetime": -3}).value_of(M.PRODUCTION_ENERGY) is None


def test_two_cts_with_one_role_get_distinct_labels():
    cts = parse.parse_meters([{"eid": 1, "state": "enabled", "measurementType": "production", "phaseCount": 1},
                              {"eid": 2, "state": "enabled", "measurementType": "production", "phaseCount": 1}])
    assert [m.label for m in cts.values()] == ["production", "production-2"]


def test_livedata_milliwatts_and_battery():
    payload = {"meters": {"last_update": 1654221647, "soc": 87, "enc_agg_soc": 87, "enc_agg_energy": 8700,
                          "acb_agg_soc": 0, "acb_agg_energy": 0,
                          "pv": {"agg_p_mw": 329549}, "grid": {"agg_p_mw": -120000}, "load": {"agg_p_mw": 209549},
                          "storage": {"agg_p_mw": -220800}, "generator": {"agg_p_mw": 0}}}
    reading = parse.parse_livedata(payload, now=1654221650)
    assert reading.value_of(M.BATTERY_POWER) == pytest.approx(-220.8)  # milliwatts; negative: charging
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == 0.87
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == 8700 * WH
    # pv, load and grid repeat the CTs (zeros without CTs), the generator is zeros without one.
    assert {s.metric for s in reading.samples} == {M.BATTERY_POWER, M.BATTERY_STATE_OF_CHARGE,
                                                    M.BATTERY_STORED_ENERGY}
    # Without batteries the gateway sends zeros: they are not a battery.
    no_battery = {"meters": {"soc": 0, "enc_agg_soc": 0, "enc_agg_energy": 0, "acb_agg_soc": 0, "acb_agg_energy": 0,
                             "storage": {"agg_p_mw": 0}, "pv": {"agg_p_mw": 1000}}}
    assert parse.parse_livedata(no_battery).samples == []


def test_livedata_frozen_while_the_stream_is_off_gives_no_series():
    payload = {"connection": {"sc_stream": "disabled"},
               "meters": {"last_update": 1690722598, "soc": 100, "enc_agg_energy": 3500, "storage": {"agg_p_mw": 0}}}
    assert parse.livedata_updated_at(payload) == 1690722598
    assert parse.parse_livedata(payload, now=1690722598 + 3600).samples == []
    assert parse.parse_livedata(payload, now=1690722598 + 30).value_of(M.BATTERY_STATE_OF_CHARGE) == 1.0


def test_microinverter_totals_next_to_the_production_ct():
    name = "8.3.5169_with_generator"
    details = parse.parse_production_json(load(name, "production.json_details_1"), 2)
    assert details.value_of(M.PRODUCTION_POWER) == 2885.154  # the CT
    assert details.value_of(M.MICROINVERTERS_POWER) == 2680  # the inverters' reports
    assert details.value_of(M.MICROINVERTERS_ENERGY) == 11764258 * WH
    pdm = parse.parse_pdm_energy(load(name, "ivp_pdm_energy"))
    assert pdm.value_of(M.MICROINVERTERS_POWER) == 2682 and pdm.value_of(M.MICROINVERTERS_ENERGY) == 11764258 * WH
    # A gateway without microinverters: inverters entry with no active devices and no lifetime.
    none = {"production": [{"type": "inverters", "activeCount": 0, "wNow": 0, "whLifetime": 0}]}
    assert parse.parse_production_json(none).value_of(M.MICROINVERTERS_POWER) is None


def test_storage_ct_is_the_battery_power_and_only_one_ct_feeds_the_grid_names():
    cts = parse.parse_meters([{"eid": 1, "state": "enabled", "measurementType": "net-consumption", "phaseCount": 1},
                              {"eid": 2, "state": "enabled", "measurementType": "net-consumption", "phaseCount": 1},
                              {"eid": 3, "state": "enabled", "measurementType": "storage", "phaseCount": 1}])
    reading = parse.parse_meter_readings([{"eid": 1, "activePower": 100.0}, {"eid": 2, "activePower": 50.0},
                                          {"eid": 3, "activePower": 1500.0}], cts)
    assert series(reading, M.ACTIVE_POWER) == {(("obis", "1-0:16.7.0"),): 100.0}
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="net-consumption-2") == 50.0
    assert reading.value_of(M.BATTERY_POWER) == 1500.0  # discharging


def test_device_list_battery_capacity():
    payload = {"devices": [{"serial_number": "492203008650", "device_type": 13, "status": "Connected",
                            "dev_info": {"capacity": 4960, "DER_Index": 1}},
                           {"serial_number": "122132000709", "device_type": 0, "status": "Unknown"}]}
    reading = parse.parse_device_list(payload)
    assert series(reading, M.BATTERY_UNIT_CAPACITY) == {(("battery", "492203008650"),): 4960 * WH}


def test_single_consumption_report_object():
    report = {"createdAt": 1654625079, "reportType": "net-consumption",
              "cumulative": {"currW": 119.423, "actPower": 119.423, "whDlvdCum": 43110.122},
              "lines": [{"currW": 56.672, "actPower": 56.672}, {"currW": 62.751, "actPower": 62.751}]}
    reading = parse.parse_meter_reports(report)
    assert reading.value_of(M.ACTIVE_POWER) == 119.423
    assert phases(reading, M.PHASE_ACTIVE_POWER) == {"l1": 56.672, "l2": 62.751}


# --- malformed payloads ---------------------------------------------------------------------------

MALFORMED = [
    (parse.parse_api_v1_production, [1, 2]),
    (parse.parse_api_v1_production, {"wattsNow": "lots"}),
    (parse.parse_api_v1_production, {"wattsNow": True}),
    (parse.parse_api_v1_production, {"wattsNow": 10 ** 400}),
    (parse.parse_inverters, {"serialNumber": "1"}),
    (parse.parse_inverters, [{"lastReportWatts": 5}]),
    (parse.parse_inverters, [{"serialNumber": "1"}, {"serialNumber": "1"}]),
    (parse.parse_inverters, [{"serialNumber": {"x": 1}}]),
    (parse.parse_production_json, {"production": {"type": "inverters"}}),
    (parse.parse_production_json, {"production": [{"type": "eim", "measurementType": "production", "lines": [{}, {}, {}, {}]}]}),
    (parse.parse_production_json, {"production": [{"type": "inverters", "wNow": [1]}]}),
    (parse.parse_meters, [{"measurementType": "production"}]),
    (parse.parse_meters, [{"eid": 1}, {"eid": 1}]),
    (parse.parse_meters, [{"eid": "x1"}]),
    (parse.parse_meters, [{"eid": 1, "phaseCount": 9}]),
    (lambda p: parse.parse_meter_readings(p, {}), [{"eid": 1, "channels": "none"}]),
    (lambda p: parse.parse_meter_readings(p, {}), [{"activePower": 1}]),
    (lambda p: parse.parse_meter_readings(p, {}), {"eid": 1}),
    (parse.parse_grid_reading, [{"channels": [{"phase": "L4", "activePower": 1}]}]),
    (parse.parse_grid_reading, [{"channels": [{"phase": "L1"}, {"phase": "L1"}]}]),
    (parse.parse_meter_reports, [{"reportType": "production"}]),
    (parse.parse_ensemble_inventory, {"type": "ENCHARGE"}),
    (parse.parse_ensemble_inventory, [{"type": "ENCHARGE", "devices": [{"serial_num": "1", "percentFull": 250}]}]),
    (parse.parse_livedata, {"meters": {"pv": {"agg_p_mw": "x"}}}),
    (parse.parse_livedata, {"meters": {"soc": 120}}),
    (parse.parse_livedata, {"meters": {"enc_agg_energy": -5}}),
    (parse.parse_livedata, {"meters": {"generator": [1]}}),
    (parse.parse_livedata, {"meters": []}),
    (parse.parse_device_list, {"devices": [{"device_type": 13}]}),
    (parse.parse_pdm_energy, {"production": []}),
    (parse.parse_info, "not xml at all"),
    (parse.parse_info, "<envoy_info><device><sn>1</sn></device></envoy_info>"),
    (parse.parse_info, "<other/>"),
    (parse.parse_production_page, "<html>no figures</html>"),
    (parse.parse_production_page, "garbage"),
]


@pytest.mark.parametrize(("parser", "payload"), MALFORMED)
def test_malformed_payload_is_a_parse_error(parser, payload):
    with pytest.raises(ParseError):
        parser(payload)


# --- arbitrary input: a Reading or a ParseError, nothing else --------------------------------------

KEYS = ["wNow", "whLifetime", "activeCount", "type", "measurementType", "lines", "production", "consumption",
        "storage", "eid", "channels", "activePower", "voltage", "current", "pwrFactor", "freq", "actEnergyDlvd",
        "actEnergyRcvd", "timestamp", "state", "phaseCount", "serialNumber", "lastReportWatts", "lastReportDate",
        "maxReportWatts", "wattsNow", "wattHoursLifetime", "reportType", "cumulative", "actPower", "whDlvdCum",
        "phase", "devices", "serial_num", "percentFull", "encharge_capacity", "temperature", "meters", "pv", "grid",
        "agg_p_mw", "soc", "eim", "pcu", "device_type", "serial_number", "dev_info", "capacity", "last_update",
        "enc_agg_energy", "acb_agg_soc", "generator", "load"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=8) | st.sampled_from(["eim", "inverters", "production", "net-consumption",
                                                   "total-consumption", "enabled", "L1", "L2", "ENCHARGE", "1e999"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=6), max_leaves=30)
METERS = {704643328: parse.MeterConfig(704643328, "production", "production", True, 2),
          1: parse.MeterConfig(1, "net-consumption", "net-consumption", True, None)}
PARSERS = [
    parse.parse_api_v1_production, parse.parse_inverters, parse.parse_production_json, parse.parse_pdm_energy,
    parse.parse_meters, lambda p: parse.parse_meter_readings(p, METERS), parse.parse_meter_reports,
    parse.parse_grid_reading, parse.parse_livedata, parse.parse_ensemble_inventory, parse.parse_device_list,
    lambda p: parse.parse_production_json(p, 2), lambda p: parse.parse_grid_reading(p, 1),
    lambda p: parse.parse_livedata(p, 1.7e9), parse.livedata_updated_at,
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=JSON, which=st.integers(min_value=0, max_value=len(PARSERS) - 1))
def test_arbitrary_json_gives_a_reading_or_parse_error(payload, which):
    try:
        result = PARSERS[which](payload)
    except ParseError:
        return
    assert result is None or isinstance(result, (Reading, dict, float))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.sampled_from([
    "<envoy_info><device><sn>1</sn><software>D</software></device></envoy_info>",
    "<envoy_info><device><sn>1</sn><software>D7.0.1</software></device><web-tokens>yes</web-tokens></envoy_info>",
    "<td>Currently</td><td>1.5 kW</td>", "<!DOCTYPE x [<!ENTITY a 'b'>]><envoy_info>&a;</envoy_info>"]))
def test_arbitrary_text_into_the_xml_and_html_parsers(text):
    for parser in (parse.parse_info, parse.parse_production_page):
        try:
            parser(text)
        except ParseError:
            pass


def test_every_corpus_file_with_measurements_parses():
    from .corpus_enphase import readings

    folder("8.3.5169_with_generator")
    from .corpus_enphase import meters_of

    parsed = dict(readings(CONFORMANCE))
    assert len(parsed) >= 50

    def no_enabled_ct(name: str) -> bool:
        """A gateway whose /ivp/meters lists every CT as disabled: its readings give no series."""
        meters = meters_of(CONFORMANCE / Path(name).parent)
        return bool(meters) and not any(m.enabled for m in meters.values())

    assert all(r.samples or r.devices or "inventory" in n or n.endswith("5.0.62/ivp_meters_readings")
               or (n.endswith("ivp_meters_readings") and no_enabled_ct(n))
               for n, r in parsed.items())
