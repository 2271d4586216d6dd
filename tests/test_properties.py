"""Property tests: every parser, fed anything, answers with its result type or ParseError.

Each parser gets arbitrary JSON values and arbitrary byte strings decoded the way its transport
decodes them (a body that is not JSON is the transport's own parse error and never reaches the
parser; bodies parsed as text or HTML go in raw). Anything else escaping (KeyError, TypeError,
ValueError...) would be a crash where a `parse` error belongs. And the store: counters never
step back across random sequences of readings, glitches, failures and exporter restarts.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.model.samples import ParseError, Reading
from exporter.store import SnapshotStore
from exporter.vendors.enphase import parse as enphase
from exporter.vendors.homewizard import parse as homewizard
from exporter.vendors.iammeter import cloud_parse
from exporter.vendors.iammeter import parse as iammeter
from exporter.vendors.iammeter import registers
from exporter.vendors.iometer import obis
from exporter.vendors.iometer import parse as iometer

from .conftest import exposition_text, sample_value

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=25,
)
# objects shaped a little like the real ones, so that parsers get past their first check
FIELD_NAMES = ["data", "Data", "Datas", "readings", "meter", "reading", "production", "consumption", "storage",
               "eim", "type", "activeCount", "wNow", "whLifetime", "channels", "active_power_w", "total_power_import_kwh",
               "SN", "sn", "power", "meters", "obis", "value", "unit", "time", "number", "errors", "node", "edges",
               "__typename", "status", "code", "message", "successful", "pageInfo", "installations", "id",
               "device", "registers", "phases", "voltage", "current", "frequency", "items", "serial_num"]
json_objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=8),
    max_leaves=30,
)
any_json = json_values | json_objects


def decoded(raw: bytes) -> Any:
    """What the transport hands the parser, or None when it stops with its own parse error."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


METER_CONFIG = enphase.parse_meters([{"eid": 704643328, "state": "enabled", "measurementType": "production",
                                      "phaseMode": "three", "phaseCount": 3}])
LABELS = cloud_parse.MeterLabels(installation="home", meter="SN1")

# (name, parser, accepted result types)
JSON_PARSERS: list[tuple[str, Callable[[Any], Any], tuple[type, ...]]] = [
    ("homewizard.parse_v1_data", homewizard.parse_v1_data, (Reading,)),
    ("homewizard.parse_v2_measurement", homewizard.parse_v2_measurement, (Reading,)),
    ("homewizard.parse_v2_system", homewizard.parse_v2_system, (Reading,)),
    ("homewizard.parse_device", homewizard.parse_device, (object,)),
    ("homewizard.api_version", homewizard.api_version, (int,)),
    ("iammeter.parse_monitorjson", iammeter.parse_monitorjson, (Reading,)),
    ("iammeter.parse_monitor", iammeter.parse_monitor, (Reading,)),
    ("iammeter.parse_wifidata", iammeter.parse_wifidata, (object,)),
    ("iammeter.parse_ratio", iammeter.parse_ratio, (Reading,)),
    ("iammeter.cloud.parse_login", cloud_parse.parse_login, (object,)),
    ("iammeter.cloud.parse_meterdata", lambda d: cloud_parse.parse_meterdata(d, "SN1", LABELS), (Reading,)),
    ("iammeter.cloud.parse_metersdata_list", cloud_parse.parse_metersdata_list, (list,)),
    ("iammeter.cloud.parse_metersdata", lambda d: cloud_parse.parse_metersdata(d, {"SN1": LABELS}), (object,)),
    ("iammeter.cloud.parse_meterdatalist", cloud_parse.parse_meterdatalist, (list,)),
    ("iammeter.cloud.parse_power_analysis", lambda d: cloud_parse.parse_power_analysis(d, LABELS), (Reading,)),
    ("iammeter.cloud.parse_offline_analysis", lambda d: cloud_parse.parse_offline_analysis(d, LABELS), (Reading,)),
    ("iammeter.cloud.parse_energy_history",
     lambda d: cloud_parse.parse_energy_history(d, "day", date(2025, 1, 15)), (Reading,)),
    ("enphase.parse_api_v1_production", enphase.parse_api_v1_production, (Reading,)),
    ("enphase.parse_inverters", enphase.parse_inverters, (Reading,)),
    ("enphase.parse_production_json", enphase.parse_production_json, (Reading,)),
    ("enphase.parse_pdm_energy", enphase.parse_pdm_energy, (Reading,)),
    ("enphase.parse_meters", enphase.parse_meters, (dict,)),
    ("enphase.parse_meter_readings", lambda d: enphase.parse_meter_readings(d, METER_CONFIG), (Reading,)),
    ("enphase.parse_meter_reports", enphase.parse_meter_reports, (Reading,)),
    ("enphase.parse_grid_reading", enphase.parse_grid_reading, (Reading,)),
    ("enphase.parse_livedata", lambda d: enphase.parse_livedata(d, now=1.7e9), (Reading,)),
    ("enphase.parse_ensemble_inventory", enphase.parse_ensemble_inventory, (Reading,)),
    ("enphase.parse_device_list", enphase.parse_device_list, (Reading,)),
    ("iometer.parse_bridge_reading", iometer.parse_bridge_reading, (Reading,)),
    ("iometer.parse_bridge_status", iometer.parse_bridge_status, (Reading,)),
    ("iometer.graphql_result", iometer.graphql_result, (object,)),
    ("iometer.parse_installations", iometer.parse_installations, (list,)),
    ("iometer.parse_meter_reading", iometer.parse_meter_reading, (object,)),
    ("iometer.parse_readings_page", iometer.parse_readings_page, (tuple,)),
    ("iometer.parse_subscription", lambda d: iometer.parse_subscription(d, "meterReadings"), (object,)),
    ("iometer.obis.parse_obis", obis.parse_obis, (object,)),
    ("iometer.obis.normalize", obis.normalize, (str,)),
    ("iometer.obis.register", lambda d: obis.register(*(d if isinstance(d, list) and len(d) == 3 else (d, 1, "kWh"))),
     (object,)),
]

# parsers of raw bodies (text, HTML, the cloud's envelope)
BYTES_PARSERS: list[tuple[str, Callable[[bytes], Any], tuple[type, ...]]] = [
    ("enphase.parse_info", enphase.parse_info, (object,)),
    ("enphase.parse_production_html", enphase.parse_production_html, (Reading,)),
    ("enphase.parse_production_page", enphase.parse_production_page, (Reading,)),
    ("iammeter.cloud.unwrap", cloud_parse.unwrap, (object,)),  # or its documented refusals, below
    ("iammeter.cloud.is_nothing", cloud_parse.is_nothing, (bool,)),
]


# documented outcomes besides ParseError: the cloud's "returns nothing" and its refusals
DOCUMENTED_ERRORS = (cloud_parse.NothingReturned, cloud_parse.ApiRefused)


def check(parser: Callable[[Any], Any], payload: Any, types: tuple[type, ...]) -> None:
    try:
        result = parser(payload)
    except DOCUMENTED_ERRORS:
        assert parser is cloud_parse.unwrap
        return
    except (ParseError, PollError) as exc:
        # the adapter's own parse error; a PollError must say `parse`
        assert not isinstance(exc, PollError) or exc.reason == "parse", exc
        return
    assert isinstance(result, types), (type(result), result)
    if isinstance(result, Reading):
        for sample in result.samples:
            assert isinstance(sample.value, (int, float)) and sample.value == sample.value, sample  # no NaN


@pytest.mark.parametrize("name,parser,types", JSON_PARSERS, ids=[p[0] for p in JSON_PARSERS])
@SETTINGS
@given(payload=any_json)
def test_json_parsers_take_any_json(name, parser, types, payload):
    check(parser, payload, types)


@pytest.mark.parametrize("name,parser,types", JSON_PARSERS, ids=[p[0] for p in JSON_PARSERS])
@SETTINGS
@given(raw=st.binary(max_size=200) | any_json.map(lambda v: json.dumps(v).encode()))
def test_json_parsers_take_any_bytes(name, parser, types, raw):
    payload = decoded(raw)
    if payload is not None:
        check(parser, payload, types)


@pytest.mark.parametrize("name,parser,types", BYTES_PARSERS, ids=[p[0] for p in BYTES_PARSERS])
@SETTINGS
@given(raw=st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | any_json.map(lambda v: json.dumps(v).encode()))
def test_body_parsers_take_any_bytes(name, parser, types, raw):
    check(parser, raw, types)


words = st.integers(0, 65535)


@SETTINGS
@given(regs=st.lists(words, max_size=60), model=st.sampled_from(["", "WEM3080T", "WEM3046T", "WEM3050T"]))
def test_register_decoders_take_any_register_list(regs, model):
    check(lambda r: iammeter.decode_three_phase(r, model), regs, (Reading,))
    check(lambda r: iammeter.decode_single_phase(r), regs, (Reading,))
    check(iammeter.looks_single_phase, regs, (bool,))


@SETTINGS
@given(payload=any_json)
def test_register_decoders_take_any_json(payload):
    """A register list from a broken client library: anything at all."""
    check(lambda r: iammeter.decode_three_phase(r), payload, (Reading,))
    check(lambda r: iammeter.decode_single_phase(r), payload, (Reading,))


@SETTINGS
@given(value=st.integers(0, 2**32 - 1), signed=st.integers(-2**31, 2**31 - 1))
def test_register_words_round_trip(value, signed):
    assert registers.u32(*registers.words_of_u32(value)) == value
    assert registers.s32(*registers.words_of_s32(signed)) == signed


# --- counters never step back --------------------------------------------------------------------

events = st.lists(
    st.one_of(
        st.tuples(st.just("rise"), st.floats(0, 5000)),
        st.tuples(st.just("glitch"), st.floats(1, 1e6)),
        st.tuples(st.just("fail"), st.just(0.0)),
        st.tuples(st.just("restart"), st.just(0.0)),
    ),
    min_size=1, max_size=40,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def energy(value: float) -> Reading:
    reading = Reading()
    reading.add(M.ENERGY_IMPORTED, value)
    reading.add(M.ACTIVE_POWER, 100.0)
    return reading


def new_store(clock: Clock) -> SnapshotStore:
    store = SnapshotStore(clock=clock)
    store.add_target("meter", "homewizard", stale_after=600)
    return store


@settings(max_examples=150, deadline=None)
@given(steps=events)
def test_counters_never_step_back(steps):
    clock = Clock()
    store = new_store(clock)
    true_value = 1e9  # the meter's own counter, which only rises
    exported_max = None  # within the current store's life
    held = None  # the highest value the current store was given
    glitches = 0
    for kind, amount in steps:
        clock.now += 10  # well inside COUNTER_RESET_GRACE: a lower value is a glitch, not a new meter
        if kind == "rise":
            true_value += amount
            store.record_success("meter", energy(true_value))
            held = true_value if held is None else max(held, true_value)
        elif kind == "glitch":
            low = max(0.0, true_value - amount)
            store.record_success("meter", energy(low))
            if held is not None and low < held:
                glitches += 1
            held = low if held is None else max(held, low)
        elif kind == "fail":
            store.record_failure("meter", "timeout", "no answer")
        else:  # the exporter restarts: a new store starts from what the meter says
            store = new_store(clock)
            exported_max, held, glitches = None, None, 0
            continue
        text = exposition_text(store)
        value = sample_value(text, M.ENERGY_IMPORTED.name, device="meter")
        if value is None:
            continue
        if exported_max is not None:
            assert value >= exported_max, f"the counter stepped back from {exported_max} to {value}"
        exported_max = value if exported_max is None else max(exported_max, value)
        counted = sample_value(text, "energy_meter_exporter_decreasing_readings_total", device="meter") or 0
        assert counted == glitches
