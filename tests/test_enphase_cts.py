"""Enphase CTs: which CTs count (disabled, absent, unknown), entries without a measurement type,
CT voltages of multi-phase CTs, CT apparent and reactive energy, and house consumption derived
where the gateway's total copies its net consumption. Bodies are the captures' (some with one
field changed, as a gateway in that state answers)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.config.loader import Secret, TargetConfig
from exporter.model import catalogue as M
from exporter.model.samples import Reading
from exporter.runtime.context import AdapterContext
from exporter.runtime.logs import get as get_log
from exporter.runtime.state import StateDirectory
from exporter.vendors.enphase import parse
from exporter.vendors.enphase.endpoints import Facts
from exporter.vendors.enphase.endpoints.meters import GRID_READING
from exporter.vendors.enphase.endpoints.production import PRODUCTION_JSON
from exporter.vendors.enphase.lifetimes import WRAP
from exporter.vendors.enphase.local import EnphaseLocal
from simulators.enphase import GatewaySimulator, TokenIssuer
from .test_enphase_parse import phases

ENPHASE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "enphase"
WH = 3600.0
PRODUCTION_CT, NET_CT = 704643328, 704643584
CONSUMPTION_NAMES = (M.CONSUMPTION_POWER, M.CONSUMPTION_ENERGY, M.ACTIVE_POWER, M.PHASE_CONSUMPTION_POWER,
                     M.PHASE_ACTIVE_POWER, M.PHASE_VOLTAGE, M.ENERGY_IMPORTED)


def load(name: str, file: str):
    path = ENPHASE / name / file
    if not path.is_file():
        pytest.skip(f"conformance corpus not found at {path}")
    return json.loads(path.read_bytes())


def ct_list(name: str, **states: str):
    """The folder's /ivp/meters with CTs set to a state ("disabled") or left out ("absent"),
    by eid given as `ct<eid>`."""
    rows = []
    for row in load(name, "ivp_meters"):
        state = states.get(f"ct{row['eid']}")
        if state == "absent":
            continue
        rows.append({**row, "state": state} if state else row)
    return parse.parse_meters(rows)


def names(reading: Reading) -> set[str]:
    return {s.metric.name for s in reading.samples}


def no_consumption(reading: Reading) -> bool:
    return not names(reading) & {m.name for m in CONSUMPTION_NAMES}


# --- 1. disabled and absent CTs -------------------------------------------------------------------


def test_both_cts_disabled_production_comes_from_the_inverters_and_nothing_of_the_cts():
    name = "7.3.466_metered_disabled_cts"
    cts = parse.parse_meters(load(name, "ivp_meters"))
    production = parse.parse_production_json(load(name, "production.json"), None, cts)
    assert production.value_of(M.PRODUCTION_POWER) == 751  # the CT entry says 488.154
    assert production.value_of(M.PRODUCTION_ENERGY) == 702919 * WH
    assert no_consumption(production)  # the entries say 476.686 W consumed, -11.468 W net
    assert parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts).samples == []
    # /api/v1/production says 689 W now and a lifetime of 0: the 0 is no lifetime.
    api = parse.parse_api_v1_production(load(name, "api_v1_production"))
    assert api.value_of(M.PRODUCTION_POWER) == 689
    assert api.value_of(M.PRODUCTION_ENERGY) is None


def test_production_ct_disabled_falls_back_to_the_inverters_and_keeps_consumption():
    name = "7.6.175_with_cts"
    cts = ct_list(name, **{f"ct{PRODUCTION_CT}": "disabled"})
    production = parse.parse_production_json(load(name, "production.json"), None, cts)
    assert production.value_of(M.PRODUCTION_POWER) == 751
    assert production.value_of(M.PRODUCTION_ENERGY) == 702919 * WH
    assert production.value_of(M.CONSUMPTION_POWER) == 476.686
    assert production.value_of(M.ACTIVE_POWER) == -11.468
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert {dict(s.labels).get("meter") for s in readings.samples} == {"net-consumption", None}


def test_only_the_net_consumption_ct_disabled_gives_no_consumption_or_grid_series():
    name = "7.6.175_with_cts"
    cts = ct_list(name, **{f"ct{NET_CT}": "disabled"})
    production = parse.parse_production_json(load(name, "production.json"), None, cts)
    assert production.value_of(M.PRODUCTION_POWER) == 488.154  # the production CT
    assert production.value_of(M.PRODUCTION_ENERGY) == pytest.approx(3183793.303 * WH)
    assert no_consumption(production)
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert no_consumption(readings)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="production") == 488.925


def test_consumption_ct_absent_from_the_list_gives_no_consumption():
    name = "7.6.175_with_cts"
    cts = ct_list(name, **{f"ct{NET_CT}": "absent"})
    production = parse.parse_production_json(load(name, "production.json"), None, cts)
    assert production.value_of(M.PRODUCTION_POWER) == 488.154
    assert no_consumption(production)


def test_a_total_consumption_ct_alone_makes_the_consumption_entries_valid():
    # 8.3.5433 lists a total-consumption CT and no net one: the gateway computes net from it.
    name = "8.3.5433_tot_is_net_cons"
    cts = parse.parse_meters(load(name, "ivp_meters"))
    production = parse.parse_production_json(load(name, "production.json_details_1"), None, cts)
    assert production.value_of(M.ACTIVE_POWER) == 428.414
    assert phases(production, M.PHASE_ACTIVE_POWER) == {"l1": 249.477, "l2": 178.936}


def test_an_empty_ct_list_is_no_cts_but_an_unknown_list_keeps_judging_the_entries():
    payload = load("7.6.175_with_cts", "production.json")
    # 5.0.62 answers /ivp/meters with []: no CTs, whatever the entries say.
    no_cts = parse.parse_production_json(payload, None, parse.parse_meters([]))
    assert no_cts.value_of(M.PRODUCTION_POWER) == 751
    assert no_consumption(no_cts)
    # No CT list at all (404 on older firmware): entries with a lifetime count.
    unknown = parse.parse_production_json(payload, None, None)
    assert unknown.value_of(M.PRODUCTION_POWER) == 488.154
    assert unknown.value_of(M.CONSUMPTION_POWER) == 476.686


def test_an_enabled_ct_counts_even_when_its_entry_says_active_count_0():
    payload = load("7.6.175_with_cts", "production.json")
    flaky = copy.deepcopy(payload)
    for entry in flaky["production"] + flaky["consumption"]:
        if entry["type"] == "eim":
            entry["activeCount"] = 0
    reading = parse.parse_production_json(flaky, None, parse.parse_meters(load("7.6.175_with_cts", "ivp_meters")))
    assert reading.value_of(M.PRODUCTION_POWER) == 488.154
    assert reading.value_of(M.CONSUMPTION_POWER) == 476.686


def test_reports_grid_reading_and_pdm_energy_of_disabled_cts_give_no_series():
    name = "8.3.5169_with_generator"
    enabled = parse.parse_meters(load(name, "ivp_meters"))
    net_off = ct_list(name, **{f"ct{NET_CT}": "disabled"})
    both_off = ct_list(name, **{f"ct{PRODUCTION_CT}": "disabled", f"ct{NET_CT}": "disabled"})
    reports = load(name, "ivp_meters_reports")
    assert parse.parse_meter_reports(reports, 2, enabled).value_of(M.CONSUMPTION_POWER) == 3069.39
    only_production = parse.parse_meter_reports(reports, 2, net_off)
    assert only_production.value_of(M.PRODUCTION_POWER) == 2895.974
    assert no_consumption(only_production)
    assert parse.parse_meter_reports(reports, 2, both_off).samples == []
    grid = load(name, "ivp_meters_gridReading")
    assert parse.parse_grid_reading(grid, 2, enabled).value_of(M.PHASE_ACTIVE_POWER, phase="l1") == -290.72
    assert parse.parse_grid_reading(grid, 2, net_off).samples == []
    pdm = load(name, "ivp_pdm_energy")
    assert parse.parse_pdm_energy(pdm, enabled).value_of(M.PRODUCTION_POWER) == 2653  # the CT
    off = parse.parse_pdm_energy(pdm, both_off)
    assert off.value_of(M.PRODUCTION_POWER) == off.value_of(M.MICROINVERTERS_POWER) == 2682  # the inverters
    assert off.value_of(M.CONSUMPTION_POWER) is None


def test_the_endpoints_hand_the_ct_list_to_the_parsers_and_an_unknown_list_is_not_an_empty_one():
    name = "7.6.175_with_cts"
    told: list[str] = []

    def facts(meters) -> Facts:
        return Facts(meters=meters, now=0.0, tell_once=lambda key, *_, **__: told.append(key))

    payload = load(name, "production.json")
    disabled = ct_list(name, **{f"ct{PRODUCTION_CT}": "disabled", f"ct{NET_CT}": "disabled"})
    assert PRODUCTION_JSON.read(payload, facts(disabled)).value_of(M.PRODUCTION_POWER) == 751
    assert PRODUCTION_JSON.read(payload, facts({})).value_of(M.PRODUCTION_POWER) == 488.154  # 404: unknown
    assert PRODUCTION_JSON.read(payload, facts(parse.parse_meters([]))).value_of(M.PRODUCTION_POWER) == 751
    grid = load("8.3.5169_with_generator", "ivp_meters_gridReading")
    assert GRID_READING.read(grid, facts(disabled)).samples == []


# --- 2. entries without measurementType ----------------------------------------------------------------


def without_measurement_type(payload):
    stripped = copy.deepcopy(payload)
    rows = stripped if isinstance(stripped, list) else stripped["production"] + stripped["consumption"]
    for row in rows:
        row.pop("measurementType", None)
    return stripped


def test_ct_entries_without_measurement_type_are_known_by_their_order():
    name = "7.6.175_with_cts"
    payload = without_measurement_type(load(name, "production.json"))
    for cts in (None, parse.parse_meters(load(name, "ivp_meters"))):
        reading = parse.parse_production_json(payload, None, cts)
        assert reading.value_of(M.PRODUCTION_POWER) == 488.154  # the production CT, not the inverters' 751
        assert reading.value_of(M.CONSUMPTION_POWER) == 476.686  # consumption[0]: total
        assert reading.value_of(M.ACTIVE_POWER) == -11.468  # consumption[1]: net
    # 4.2.27 without the key: the CTs there are not installed (activeCount 0, lifetime 0).
    old = parse.parse_production_json(without_measurement_type(load("4.2.27", "production.json")))
    assert old.value_of(M.PRODUCTION_POWER) == 5891
    assert no_consumption(old)


def test_a_ct_list_without_measurement_type_gives_roles_by_order():
    name = "7.6.175_with_cts"
    cts = parse.parse_meters(without_measurement_type(load(name, "ivp_meters")))
    assert [m.label for m in cts.values()] == ["production", "net-consumption"]
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), cts)
    assert readings.value_of(M.CT_ACTIVE_POWER, meter="production") == 488.925
    assert readings.value_of(M.ACTIVE_POWER) == -36.162


# --- 3. CT voltages ---------------------------------------------------------------------------------


def test_split_phase_ct_voltage_is_per_leg_never_the_sum():
    name = "8.2.4286_with_3cts_and_battery_split"
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), parse.parse_meters(load(name, "ivp_meters")))
    assert readings.value_of(M.CT_VOLTAGE, meter="production") is None  # 247.307 = 123.571 + 123.736
    assert phases(readings, M.CT_PHASE_VOLTAGE, meter="production") == {"l1": 123.571, "l2": 123.736}
    assert phases(readings, M.PHASE_VOLTAGE) == {"l1": 123.482, "l2": 123.69}
    assert all(s.value < 130 for s in readings.samples if "voltage" in s.metric.name)


def test_single_phase_ct_keeps_its_voltage():
    name = "7.6.175_with_cts"
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), parse.parse_meters(load(name, "ivp_meters")))
    assert readings.value_of(M.CT_VOLTAGE, meter="production") == 235.236


def test_three_phase_ct_without_phase_count_has_per_phase_voltages_only():
    cts = {7: parse.MeterConfig(7, "production", "production", True, None)}
    channel = {"activePower": 1000.0, "voltage": 231.5, "current": 4.3}
    row = {"eid": 7, "activePower": 3000.0, "voltage": 694.5, "channels": [channel, channel, channel]}
    reading = parse.parse_meter_readings([row], cts)
    assert reading.value_of(M.CT_VOLTAGE, meter="production") is None
    assert phases(reading, M.CT_PHASE_VOLTAGE, meter="production") == {"l1": 231.5, "l2": 231.5, "l3": 231.5}


# --- 9. CT apparent and reactive energy -----------------------------------------------------------------


def test_ct_apparent_and_reactive_energy_are_counters_in_base_units():
    name = "8.2.4286_with_3cts_and_battery_split"
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), parse.parse_meters(load(name, "ivp_meters")))
    assert readings.value_of(M.CT_APPARENT_ENERGY, meter="production") == pytest.approx(17695037.667 * WH)
    assert readings.value_of(M.CT_REACTIVE_ENERGY_INDUCTIVE, meter="production") == pytest.approx(2870787.07 * WH)
    assert readings.value_of(M.CT_REACTIVE_ENERGY_CAPACITIVE, meter="net-consumption") == pytest.approx(18899511.617 * WH)
    assert phases(readings, M.CT_PHASE_APPARENT_ENERGY, meter="production") == pytest.approx(
        {"l1": 8841528.936 * WH, "l2": 8853508.731 * WH})
    assert phases(readings, M.CT_PHASE_REACTIVE_ENERGY_INDUCTIVE, meter="storage") == pytest.approx(
        {"l1": 3072253.785 * WH, "l2": 3071742.732 * WH})
    assert M.CT_APPARENT_ENERGY.type == "counter" and M.CT_APPARENT_ENERGY.name.endswith("_total")


def test_apparent_energy_below_the_active_energy_is_dropped():
    # 8.3.5433: apparentEnergy 0.013 VAh against 14405465.57 Wh delivered: impossible.
    name = "8.3.5433_tot_is_net_cons"
    readings = parse.parse_meter_readings(load(name, "ivp_meters_readings"), parse.parse_meters(load(name, "ivp_meters")))
    assert readings.value_of(M.CT_APPARENT_ENERGY, meter="production") is None
    assert phases(readings, M.CT_PHASE_APPARENT_ENERGY, meter="production") == {}
    assert readings.value_of(M.CT_REACTIVE_ENERGY_INDUCTIVE, meter="production") == pytest.approx(2287907.21 * WH)


# --- 11. house consumption where the total copies net ---------------------------------------------------


def test_reports_derive_house_consumption_when_the_total_copies_net():
    name = "8.3.5169_with_generator"
    reports = load(name, "ivp_meters_reports")
    by_type = {r["reportType"]: r for r in reports}
    # What 8.3.5433 does: the total-consumption report repeats the net-consumption one.
    broken = [by_type["production"], by_type["net-consumption"],
              {**by_type["net-consumption"], "reportType": "total-consumption"}]
    reading = parse.parse_meter_reports(broken, 2, parse.parse_meters(load(name, "ivp_meters")))
    assert reading.value_of(M.CONSUMPTION_POWER) == pytest.approx(2895.974 + 173.416)
    assert reading.value_of(M.CONSUMPTION_ENERGY) == pytest.approx((11567984.789 + 15727232.785) * WH)
    # ... close to what the healthy report says (27293441.263 Wh): the derivation holds.
    assert reading.value_of(M.CONSUMPTION_ENERGY) == pytest.approx(27293441.263 * WH, rel=1e-3)


def test_no_consumption_is_derived_from_the_inverters():
    name = "8.3.5433_tot_is_net_cons"
    cts = ct_list(name, **{f"ct{PRODUCTION_CT}": "disabled"})
    reading = parse.parse_production_json(load(name, "production.json_details_1"), None, cts)
    assert reading.value_of(M.PRODUCTION_POWER) == 304  # the inverters
    assert reading.value_of(M.CONSUMPTION_POWER) is None
    assert reading.value_of(M.ACTIVE_POWER) == 428.414


# --- through the adapter, against the simulated gateway ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def polled(gateway: GatewaySimulator, state_dir: Path, polls: int = 7) -> Reading:
    """What the adapter exports once every endpoint has been read."""
    clock = Clock()
    gateway.issuer.clock = clock
    await gateway.start()
    try:
        options = {"host": gateway.host, "nightly_window": "off", "tls_verify": True}
        if gateway.tokens_required:
            options.update(token=Secret(gateway.mint_token()), tls_fingerprint=gateway.fingerprint)
        target = TargetConfig(name="roof", vendor="enphase", transport="local", interval=10, timeout=5.0,
                              max_backoff=60, stale_after=60, jitter=0, options=options)
        async with aiohttp.ClientSession() as session:
            ctx = AdapterContext(session=session, state=StateDirectory(state_dir), log=get_log(), clock=clock)
            adapter = EnphaseLocal(target, ctx)
            for _ in range(polls):
                reading = await adapter.poll()
                clock.now += 10
            await adapter.close()
        return reading
    finally:
        await gateway.stop()


def simulated(firmware: str) -> GatewaySimulator:
    if not (ENPHASE / firmware).is_dir():
        pytest.skip(f"conformance corpus not found at {ENPHASE / firmware}")
    return GatewaySimulator(firmware, issuer=TokenIssuer())


async def test_adapter_with_the_net_consumption_ct_disabled_exports_no_consumption_nor_grid(tmp_path):
    gateway = simulated("7.6.175_with_cts")
    gateway.disable_ct("net-consumption")
    reading = await polled(gateway, tmp_path)
    assert reading.value_of(M.PRODUCTION_POWER) == 488.154  # the production CT
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="production") == 488.925
    assert no_consumption(reading)
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="net-consumption") is None
    assert all(s.value != 37.5 for s in reading.samples)  # the clamp's noise is nowhere


async def test_adapter_with_the_production_ct_disabled_takes_production_from_the_inverters(tmp_path):
    gateway = simulated("7.6.175_with_cts")
    gateway.disable_ct("production")
    reading = await polled(gateway, tmp_path)
    assert reading.value_of(M.PRODUCTION_POWER) == 751
    assert reading.value_of(M.CONSUMPTION_POWER) == 476.686
    assert reading.value_of(M.ACTIVE_POWER) == -36.162  # the net CT's readings
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="production") is None
    # No production CT to tell the wraps behind the inverters' total: exported as read.
    assert reading.value_of(M.PRODUCTION_ENERGY) == pytest.approx(702919 * WH)


async def test_adapter_reads_ct_entries_without_measurement_type_by_their_order(tmp_path):
    gateway = simulated("7.6.175_with_cts")
    gateway.drop_measurement_type()
    reading = await polled(gateway, tmp_path)
    assert reading.value_of(M.PRODUCTION_POWER) == 488.154  # the CT entry was not skipped
    assert reading.value_of(M.PRODUCTION_ENERGY) == pytest.approx(3183793.303 * WH)
    assert reading.value_of(M.CONSUMPTION_POWER) == 476.686


async def test_adapter_adds_the_wraps_of_the_inverters_lifetime_and_never_a_sum_as_voltage(tmp_path):
    gateway = simulated("7.6.175_with_cts")
    reading = await polled(gateway, tmp_path)
    # 702919 Wh read; the production CT's 3183793.885 Wh says two wraps came before.
    assert reading.value_of(M.MICROINVERTERS_ENERGY) == pytest.approx(702919 * WH + 2 * WRAP)
    split = await polled(simulated("8.2.4286_with_3cts_and_battery_split"), tmp_path / "split")
    assert split.value_of(M.CT_VOLTAGE, meter="production") is None
    assert split.value_of(M.CT_PHASE_VOLTAGE, meter="production", phase="l2") == 123.736
