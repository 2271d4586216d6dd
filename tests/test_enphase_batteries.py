"""Enphase batteries (IQ Batteries and AC Batteries), the site's health (grid relay, CT status,
battery faults, the gateway's links) and the microinverters of /ivp/pdm/device_data: the parsers
on the captures' and the documents' shapes, the derived site figures, and the real adapter
against the gateway simulator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config.loader import Secret
from exporter.model import catalogue as M
from exporter.model.samples import ParseError, Reading
from exporter.vendors.enphase import parse
from exporter.vendors.enphase.battery_site import BatterySite
from exporter.vendors.enphase.endpoints.inverters import InvertersFromEveryList
from exporter.vendors.enphase.parse import batteries, ct_health, inverters
from simulators.enphase import GatewaySimulator, TokenIssuer

from .corpus_enphase import PYENPHASE_ACB_INVENTORY, PYENPHASE_PDM_DEVICE_DATA, SEED_DEVICE_LIST, SEED_LIVEDATA
from .test_enphase_local import Clock, make, needs

ENPHASE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "enphase"
ACB = "8.2.4382_ACB"
WH = 3600.0
ENCHARGE_SERIAL = "122311091641"
ACB_SERIALS = ("122122013879", "122122013808", "122122014120")


def load(firmware: str, name: str):
    path = ENPHASE / firmware / name
    if not path.is_file():
        pytest.skip(f"conformance corpus not found at {path}")
    return json.loads(path.read_bytes())


def series(reading: Reading, metric: M.Metric) -> dict[tuple, float]:
    return {s.labels: s.value for s in reading.samples if s.metric is metric}


def by(reading: Reading, metric: M.Metric, label: str) -> dict[str, float]:
    return {dict(s.labels)[label]: s.value for s in reading.samples if s.metric is metric}


def site(latest: dict[str, Reading]) -> Reading:
    """The merge (first endpoint per metric) and the battery step, as the adapter does them."""
    merged = Reading()
    claimed: set[str] = set()
    for reading in latest.values():
        merged.samples.extend(s for s in reading.samples if s.metric.name not in claimed)
        claimed.update(s.metric.name for s in reading.samples)
    BatterySite()(merged, latest)
    return merged


# --- AC Batteries in /production.json ------------------------------------------------------------


def test_a_stale_acb_entry_keeps_its_charge_but_gives_no_power():
    production = load(ACB, "production.json")  # storage readingTime 41 hours before the rest
    reading = batteries.parse_acb_storage(production)
    assert by(reading, M.BATTERY_GROUP_STATE_OF_CHARGE, "group") == {"acb": 0.25}
    assert by(reading, M.BATTERY_GROUP_STORED_ENERGY, "group") == {"acb": 930 * WH}
    assert by(reading, M.BATTERY_GROUP_POWER, "group") == {}


def test_a_fresh_acb_entry_gives_its_power():
    production = load(ACB, "production.json")
    production["storage"][0]["readingTime"] = production["consumption"][0]["readingTime"] - 120
    reading = batteries.parse_acb_storage(production)
    assert by(reading, M.BATTERY_GROUP_POWER, "group") == {"acb": 260}  # "discharging": positive


def test_gateways_without_acbs_send_an_idle_entry_that_is_no_battery():
    assert batteries.parse_acb_storage(load("8.2.4286_with_3cts_and_battery_split", "production.json")).samples == []


def test_acb_units_are_not_microinverters():
    reading = parse.parse_inverters(load(ACB, "api_v1_production_inverters"))
    serials = set(by(reading, M.INVERTER_POWER, "inverter"))
    assert len(serials) == 17 and not serials & set(ACB_SERIALS)


def test_inventory_acb_group_gives_units_and_their_health():
    reading = parse.parse_ensemble_inventory(PYENPHASE_ACB_INVENTORY)
    assert by(reading, M.BATTERY_UNIT_STATE_OF_CHARGE, "battery") == {"121943013795": 0.25}
    assert by(reading, M.BATTERY_UNIT_COMMUNICATING, "battery") == {"121943013795": 1}
    assert by(reading, M.BATTERY_UNIT_FAULT, "battery") == {"121943013795": 0}
    assert by(reading, M.BATTERY_UNIT_CAPACITY, "battery") == {}  # ACB entries have no capacity
    assert by(reading, M.BATTERY_GROUP_STATE_OF_CHARGE, "group") == {"acb": 0.25}
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) is None  # no capacity to weigh with


def test_a_battery_with_a_condition_or_silent_is_reported():
    inventory = load(ACB, "ivp_ensemble_inventory")
    device = inventory[0]["devices"][0]
    device["communicating"] = False
    device["device_status"] = ["envoy.cond_flags.obs_errs.error"]
    reading = parse.parse_ensemble_inventory(inventory)
    assert by(reading, M.BATTERY_UNIT_COMMUNICATING, "battery") == {ENCHARGE_SERIAL: 0}
    assert by(reading, M.BATTERY_UNIT_FAULT, "battery") == {ENCHARGE_SERIAL: 1}


# --- /ivp/ensemble/power, /ivp/ensemble/secctrl, /ivp/ensemble/status ----------------------------


def test_ensemble_power_reads_the_key_with_the_colon_and_without():
    captured = load(ACB, "ivp_ensemble_power")
    assert "devices:" in captured
    for payload in (captured, {"devices": captured["devices:"]}):
        reading = batteries.parse_ensemble_power(payload)
        assert by(reading, M.BATTERY_UNIT_POWER, "battery") == {ENCHARGE_SERIAL: 105.0}  # milliwatts -> W
        assert by(reading, M.BATTERY_UNIT_STATE_OF_CHARGE, "battery") == {ENCHARGE_SERIAL: 0.54}
        assert by(reading, M.BATTERY_GROUP_POWER, "group") == {"encharge": 105.0}
    assert batteries.parse_ensemble_power(load("7.3.466_metered_disabled_cts", "ivp_ensemble_power")).samples == []


def test_secctrl_gives_both_kinds_and_the_acb_capacity_is_the_rest():
    reading = batteries.parse_ensemble_secctrl(load(ACB, "ivp_ensemble_secctrl"))
    assert by(reading, M.BATTERY_GROUP_STATE_OF_CHARGE, "group") == {"encharge": 0.54, "acb": 0.25}
    assert by(reading, M.BATTERY_GROUP_STORED_ENERGY, "group") == {"encharge": 1890 * WH, "acb": 930 * WH}
    assert by(reading, M.BATTERY_GROUP_CAPACITY, "group") == {"encharge": 3500 * WH, "acb": 3720 * WH}
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == 0.39
    assert reading.value_of(M.BATTERY_CAPACITY) == 7220 * WH


def test_secctrl_of_a_site_without_batteries_gives_nothing():
    assert batteries.parse_ensemble_secctrl(load("7.3.466_metered_disabled_cts", "ivp_ensemble_secctrl")).samples == []


def test_grid_relay_from_ensemble_status_and_the_system_controller():
    status = load(ACB, "ivp_ensemble_status")
    assert by(batteries.parse_ensemble_status(status), M.GRID_RELAY_STATE, "state") == {"closed": 1, "open": 0}
    status["relay"]["mains_oper_state"] = "open"
    assert by(batteries.parse_ensemble_status(status), M.GRID_RELAY_STATE, "state") == {"closed": 0, "open": 1}
    inventory = load("8.2.4286_with_3cts_and_battery_split", "ivp_ensemble_inventory")
    assert by(batteries.parse_enpower_relay(inventory), M.GRID_RELAY_STATE, "state") == {"closed": 1, "open": 0}
    assert batteries.parse_enpower_relay(load(ACB, "ivp_ensemble_inventory")).samples == []  # no Enpower


# --- the site's figures --------------------------------------------------------------------------


def acb_site_latest() -> dict[str, Reading]:
    """What the adapter holds for the 8.2.4382 gateway, in the endpoint table's order."""
    production = load(ACB, "production.json")
    return {
        "production_json": batteries.parse_acb_storage(production),
        "ensemble_secctrl": batteries.parse_ensemble_secctrl(load(ACB, "ivp_ensemble_secctrl")),
        "ensemble_power": batteries.parse_ensemble_power(load(ACB, "ivp_ensemble_power")),
        "inventory": parse.parse_ensemble_inventory(load(ACB, "ivp_ensemble_inventory")),
    }


def test_site_state_of_charge_weighs_every_battery_and_prefers_the_live_figures():
    reading = site(acb_site_latest())
    # (3500 Wh x 54 % + 930 Wh) / 7220 Wh; the inventory's 10 % is hours old.
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx((3500 * 0.54 + 930) / 7220)
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx(0.39, abs=0.005)  # agg_soc 39
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == pytest.approx(2820 * WH)
    assert reading.value_of(M.BATTERY_CAPACITY) == pytest.approx(7220 * WH)
    assert by(reading, M.BATTERY_UNIT_STATE_OF_CHARGE, "battery") == {ENCHARGE_SERIAL: 0.54}
    # The IQ Battery's 105 W is known, the AC Batteries' is not (stale): no site power.
    assert by(reading, M.BATTERY_GROUP_POWER, "group") == {"encharge": 105.0}
    assert reading.value_of(M.BATTERY_POWER) is None
    names = [(s.metric.name, s.labels) for s in reading.samples]
    assert len(names) == len(set(names))


def test_without_secctrl_the_units_live_charge_and_inventory_capacity_decide():
    latest = acb_site_latest()
    del latest["ensemble_secctrl"], latest["production_json"]
    reading = site(latest)
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == 0.54  # ensemble/power, not the inventory's 0.10
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == pytest.approx(3500 * 0.54 * WH)
    assert reading.value_of(M.BATTERY_POWER) == 105.0  # every kind has a power: their sum


def test_acbs_without_a_capacity_leave_the_site_figure_out_rather_than_count_half_the_batteries():
    latest = {"inventory": parse.parse_ensemble_inventory(
        load(ACB, "ivp_ensemble_inventory") + PYENPHASE_ACB_INVENTORY)}
    reading = site(latest)
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) is None
    assert by(reading, M.BATTERY_GROUP_STATE_OF_CHARGE, "group") == {"encharge": 0.10, "acb": 0.25}


def test_a_storage_ct_keeps_its_measured_power():
    latest = acb_site_latest()
    ct = Reading()
    ct.add(M.BATTERY_POWER, -700.0)
    reading = site({"meters_readings": ct, **latest})
    assert reading.value_of(M.BATTERY_POWER) == -700.0


def test_fresh_live_data_give_both_kinds():
    payload = copy.deepcopy(SEED_LIVEDATA)
    payload["meters"].update(enc_agg_soc=54, enc_agg_energy=1890, acb_agg_soc=25, acb_agg_energy=930)
    now = payload["meters"]["last_update"] + 10
    live = batteries.parse_livedata_groups(payload, now)
    assert by(live, M.BATTERY_GROUP_STORED_ENERGY, "group") == {"encharge": 1890 * WH, "acb": 930 * WH}
    assert batteries.parse_livedata_groups(payload, now + 3600).samples == []  # the stream is off
    latest = acb_site_latest()
    reading = site({"livedata": live, **latest})
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == pytest.approx(2820 * WH)


def test_8_2_4286_inventory_only_keeps_its_weighted_mean():
    inventory = parse.parse_ensemble_inventory(load("8.2.4286_with_3cts_and_battery_split", "ivp_ensemble_inventory"))
    reading = site({"inventory": inventory})
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx((39 + 48 + 48 + 49 + 48) / 500)
    assert reading.value_of(M.BATTERY_CAPACITY) == 5 * 5000 * WH


# --- live data status, device list, CT health ------------------------------------------------------


def test_live_data_status_links_raw_relay_codes_and_reserve():
    now = SEED_LIVEDATA["meters"]["last_update"] + 5
    reading = batteries.parse_livedata_status(SEED_LIVEDATA, now)
    links = {dict(s.labels)["link"]: dict(s.labels)["state"] for s in reading.samples if s.metric is M.GATEWAY_LINK_STATE}
    assert links == {"mqtt": "connected", "provisioning": "configured", "auth": "ok", "live_stream": "enabled",
                     "debug_stream": "enabled"}
    assert by(reading, M.RELAY_STATE_CODE, "relay") == {"main": 0, "generator": 5}  # as sent, undocumented
    assert reading.value_of(M.BATTERY_BACKUP_MODE_CODE) == 1
    assert reading.value_of(M.BATTERY_BACKUP_RESERVE) == 0.10
    stale = batteries.parse_livedata_status(SEED_LIVEDATA, now + 3600)
    assert {s.metric for s in stale.samples} == {M.GATEWAY_LINK_STATE}  # links are current, relays are not


def test_device_list_connected_by_device():
    reading = parse.parse_device_list(SEED_DEVICE_LIST)
    assert series(reading, M.ENSEMBLE_DEVICE_CONNECTED) == {
        (("device_id", "492203008650"), ("device_type", "storage")): 1,
        (("device_id", "122132000709"), ("device_type", "unknown")): 0,
    }


def test_ct_health_of_enabled_cts_only():
    assert ct_health.parse_ct_health(load("7.3.466_metered_disabled_cts", "ivp_meters")).samples == []
    meters = load(ACB, "ivp_meters")
    meters[0]["meteringStatus"] = "not-metering"
    meters[1]["statusFlags"] = ["negative-total-consumption"]
    reading = ct_health.parse_ct_health(meters)
    assert series(reading, M.CT_METERING_STATUS)[(("meter", "production"), ("status", "not-metering"))] == 1
    assert series(reading, M.CT_METERING_STATUS)[(("meter", "production"), ("status", "normal"))] == 0
    flags = {dict(s.labels)["flag"] for s in reading.samples if s.metric is M.CT_STATUS_FLAG and s.value == 1}
    assert flags == {"negative-total-consumption"}
    assert len(by(reading, M.CT_STATUS_FLAG, "flag")) == 4  # the known flags, raised or not


# --- /ivp/pdm/device_data ------------------------------------------------------------------------


def test_pdm_device_data_gives_microinverters():
    reading = inverters.parse_pdm_device_data(PYENPHASE_PDM_DEVICE_DATA)
    assert by(reading, M.INVERTER_POWER, "inverter") == {"202020202020": 255}
    assert by(reading, M.INVERTER_MAX_POWER, "inverter") == {"202020202020": 371}
    assert by(reading, M.INVERTER_LAST_REPORT, "inverter") == {"202020202020": 1748576887}
    other = {**PYENPHASE_PDM_DEVICE_DATA, "1": {**PYENPHASE_PDM_DEVICE_DATA["553648384"], "devName": "acb", "sn": "9"}}
    assert set(by(inverters.parse_pdm_device_data(other), M.INVERTER_POWER, "inverter")) == {"202020202020"}


def test_inverters_missing_from_the_api_list_come_from_device_data():
    api = Reading()
    api.add(M.INVERTER_POWER, 100, inverter="111")
    data = inverters.parse_pdm_device_data(PYENPHASE_PDM_DEVICE_DATA)
    merged = Reading(samples=list(api.samples))
    InvertersFromEveryList()(merged, {"inverters": api, "pdm_device_data": data})
    assert by(merged, M.INVERTER_POWER, "inverter") == {"111": 100, "202020202020": 255}


@pytest.mark.parametrize("parser, payload", [
    (batteries.parse_ensemble_power, {"devices:": [{"serial_num": "1", "soc": 140}]}),
    (batteries.parse_ensemble_power, {"devices:": [{"real_power_mw": 5}]}),
    (batteries.parse_ensemble_secctrl, {"Max_energy": -1}),
    (batteries.parse_ensemble_secctrl, {"Max_energy": 7220, "ENC_agg_soc": "full"}),
    (batteries.parse_ensemble_status, {"relay": "closed"}),
    (batteries.parse_acb_storage, {"storage": [{"type": "acb", "activeCount": 3, "whNow": -5}]}),
    (ct_health.parse_ct_health, {"meteringStatus": "normal"}),
    (inverters.parse_pdm_device_data, {"1": {"devName": "pcu"}}),
    (inverters.parse_pdm_device_data, []),
])
def test_malformed_answers_are_parse_errors(parser, payload):
    with pytest.raises(ParseError):
        parser(payload)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
                    max_leaves=20)
PARSERS = [batteries.parse_ensemble_power, batteries.parse_ensemble_secctrl, batteries.parse_ensemble_status,
           batteries.parse_acb_storage, batteries.parse_enpower_relay, batteries.parse_livedata_groups,
           batteries.parse_livedata_status, ct_health.parse_ct_health, inverters.parse_pdm_device_data]


@settings(max_examples=150, deadline=None)
@given(payload=JSON, index=st.integers(0, len(PARSERS) - 1))
def test_any_json_is_a_reading_or_a_parse_error(payload, index):
    try:
        assert isinstance(PARSERS[index](payload), Reading)
    except ParseError:
        pass


# --- the adapter against the simulator ---------------------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


async def started(firmware: str, clock) -> GatewaySimulator:
    needs(firmware)
    return await GatewaySimulator(firmware, issuer=TokenIssuer(clock=clock)).start()


async def poll(session, tmp_path, clock, gateway: GatewaySimulator, polls: int = 11) -> Reading:
    adapter = make(session, tmp_path, clock, host=gateway.host, token=Secret(gateway.mint_token()),
                   tls_fingerprint=gateway.fingerprint)
    try:
        for _ in range(polls):  # every endpoint read once, the CT health included
            reading = await adapter.poll()
            clock.advance(10)
        return reading
    finally:
        await adapter.close()


async def test_acb_gateway_through_the_adapter(session, tmp_path, clock):
    gateway = await started(ACB, clock)
    try:
        gateway.add_acb_inventory()
        reading = await poll(session, tmp_path, clock, gateway)
    finally:
        await gateway.stop()
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx((3500 * 0.54 + 930) / 7220)
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == pytest.approx(2820 * WH)
    units = by(reading, M.BATTERY_UNIT_STATE_OF_CHARGE, "battery")
    assert units == {ENCHARGE_SERIAL: 0.54, **{s: 0.25 for s in ACB_SERIALS}}
    assert by(reading, M.BATTERY_UNIT_POWER, "battery") == {ENCHARGE_SERIAL: 105.0}
    assert reading.value_of(M.BATTERY_POWER) is None  # the AC Batteries' power is 41 hours old
    inverter_serials = set(by(reading, M.INVERTER_POWER, "inverter"))
    assert len(inverter_serials) == 17 and not inverter_serials & set(ACB_SERIALS)
    assert by(reading, M.GRID_RELAY_STATE, "state") == {"closed": 1, "open": 0}
    assert series(reading, M.CT_METERING_STATUS)[(("meter", "production"), ("status", "normal"))] == 1
    names = [(s.metric.name, s.labels) for s in reading.samples]
    assert len(names) == len(set(names))


async def test_islanded_site_faulted_battery_and_ct_through_the_adapter(session, tmp_path, clock):
    gateway = await started(ACB, clock)
    try:
        gateway.set_grid_relay("open")
        gateway.set_battery_status(ENCHARGE_SERIAL, communicating=False)
        gateway.set_ct_status("net-consumption", "check-wiring", ["negative-total-consumption"])
        gateway.serve_livedata(clock.now + 30, main_relay_state=2)
        reading = await poll(session, tmp_path, clock, gateway)
    finally:
        await gateway.stop()
    assert by(reading, M.GRID_RELAY_STATE, "state") == {"closed": 0, "open": 1}
    assert by(reading, M.BATTERY_UNIT_COMMUNICATING, "battery") == {ENCHARGE_SERIAL: 0}
    status = series(reading, M.CT_METERING_STATUS)
    assert status[(("meter", "net-consumption"), ("status", "check-wiring"))] == 1
    assert series(reading, M.CT_STATUS_FLAG)[(("meter", "net-consumption"), ("flag", "negative-total-consumption"))] == 1
    assert by(reading, M.RELAY_STATE_CODE, "relay") == {"main": 2, "generator": 5}
    links = {dict(s.labels)["link"]: dict(s.labels)["state"] for s in reading.samples if s.metric is M.GATEWAY_LINK_STATE}
    assert links["mqtt"] == "connected"
    # The live data (gateway aggregates, fresh) agree with secctrl: the same site figure.
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx((3500 * 0.54 + 930) / 7220)


async def test_device_data_replaces_a_missing_inverter_list(session, tmp_path, clock):
    gateway = await started("8.3.5169_with_generator", clock)
    try:
        listed = json.loads(gateway.bodies["api_v1_production_inverters"])
        gateway.serve_device_data()
        gateway.force("/api/v1/production/inverters", 404)
        reading = await poll(session, tmp_path, clock, gateway, polls=4)
    finally:
        await gateway.stop()
    power = by(reading, M.INVERTER_POWER, "inverter")
    assert power == {r["serialNumber"]: r["lastReportWatts"] for r in listed}


async def test_device_data_fills_in_inverters_the_api_list_lacks(session, tmp_path, clock):
    gateway = await started("8.3.5169_with_generator", clock)
    try:
        listed = json.loads(gateway.bodies["api_v1_production_inverters"])
        gateway.serve_device_data()
        gateway.bodies["api_v1_production_inverters"] = json.dumps(listed[1:]).encode()
        reading = await poll(session, tmp_path, clock, gateway, polls=4)
    finally:
        await gateway.stop()
    power = by(reading, M.INVERTER_POWER, "inverter")
    assert power == {r["serialNumber"]: r["lastReportWatts"] for r in listed}
