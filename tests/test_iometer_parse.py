"""IOmeter parsers: the bridge's bodies, the Partner API's GraphQL results."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import DeviceInfo, ParseError, Reading
from exporter.vendors.iometer import parse
from simulators.iometer import EMBEDDED_READING, EMBEDDED_STATUS, THREE_PHASE_READING

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
INSTALLATION = "658c2b34-2017-45f2-a12b-731235f8bb97"


def corpus(name: str) -> object:
    path = CONFORMANCE / "iometer-local" / name
    if not path.is_file():
        pytest.skip(f"conformance corpus not found at {path}")
    return json.loads(path.read_bytes())


def labels(installation: str = INSTALLATION, device_id: str = INSTALLATION, **extra: str) -> dict[str, str]:
    return {"installation": installation, "device_id": device_id, **extra}


# --- the local bridge ------------------------------------------------------------------------


def test_corpus_reading_in_base_units() -> None:
    reading = parse.parse_bridge_reading(corpus("reading.json"))
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(1234.5 * 3600)
    assert reading.value_of(M.ENERGY_EXPORTED) == pytest.approx(5432.1 * 3600)
    assert reading.value_of(M.ACTIVE_POWER) == 100
    assert reading.value_of(M.MEASUREMENT_TIME) == 1731323471  # 2024-11-11T11:11:11Z
    obis = {dict(s.labels).get("obis") for s in reading.samples}
    assert {"1-0:1.8.0", "1-0:2.8.0", "1-0:16.7.0"} <= obis
    assert reading.devices == [DeviceInfo(model="electricity meter", serial="1ISK0000000000")]


def test_corpus_status() -> None:
    reading = parse.parse_bridge_status(corpus("status.json"))
    assert reading.value_of(M.WIFI_RSSI) == -30
    assert reading.value_of(M.READER_RSSI, **labels()) == -30
    assert reading.value_of(M.READER_CONNECTED, **labels()) == 1
    assert reading.value_of(M.READER_ATTACHED, **labels()) == 1
    assert reading.value_of(M.READER_BATTERY, **labels()) == 1.0
    assert reading.value_of(M.READER_POWER_SOURCE, **labels(source="battery")) == 1
    assert reading.value_of(M.READER_POWER_SOURCE, **labels(source="wired")) == 0
    assert reading.value_of(M.READER_PIN_STATE, **labels(state="entered")) == 1
    assert reading.value_of(M.READER_PIN_STATE, **labels(state="missing")) == 0
    # The local API says nothing about the gateway's cloud connection: no series, not a guess.
    assert reading.value_of(M.GATEWAY_CONNECTED) is None
    assert DeviceInfo("IOmeter bridge", INSTALLATION, "build-65") in reading.devices
    assert DeviceInfo("IOmeter core", INSTALLATION, "build-58") in reading.devices


def test_embedded_copies_match_the_corpus() -> None:
    assert corpus("reading.json") == EMBEDDED_READING
    assert corpus("status.json") == EMBEDDED_STATUS


def test_three_phase_reading() -> None:
    reading = parse.parse_bridge_reading(THREE_PHASE_READING)
    assert reading.value_of(M.ACTIVE_POWER) == -1250
    assert reading.value_of(M.PHASE_ACTIVE_POWER, phase="l1") == -1500
    assert reading.value_of(M.PHASE_ACTIVE_POWER, phase="l3") == 100
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l2") == pytest.approx(231.9)
    assert reading.value_of(M.PHASE_CURRENT, phase="l1") == pytest.approx(6.52)
    assert reading.value_of(M.FREQUENCY) == pytest.approx(49.98)
    assert reading.value_of(M.TARIFF_ENERGY_IMPORTED, tariff="2") == pytest.approx(8000000.0 * 3600)
    assert reading.value_of(M.POWER_FACTOR) == pytest.approx(0.92)
    assert reading.value_of(M.EXPORT_POWER) == 1250
    assert reading.value_of(M.PHASE_EXPORT_POWER, phase="l1") == 1500
    assert reading.value_of(M.ACTIVE_TARIFF) == 1
    assert reading.value_of(M.PHASE_VOLTAGE_SWELLS, phase="l3") == 1
    assert reading.value_of(M.OBIS_VALUE, obis="1-0:15.7.0", unit="W") == 1250  # no standard meaning
    assert {dict(s.labels)["obis"] for s in reading.samples if s.metric is M.OBIS_VALUE} == {"1-0:15.7.0"}


# The vendor's documented variants (iometer-gmbh/iometer.py docs/api.md): wired power, and a
# disconnected core that reports nothing else. Both lack installationId.
WIRED = {
    "__typename": "iometer.status.v1",
    "meter": {"number": "1ISK0000000000"},
    "device": {
        "bridge": {"rssi": -15, "version": "build-60"},
        "id": "eaf4f756-1d8b-41fa-9d4f-06eff5b33dea",
        "core": {"connectionStatus": "connected", "rssi": -30, "version": "build-58",
                 "powerStatus": "wired", "attachmentStatus": "attached", "pinStatus": "entered"},
    },
}


def test_status_wired_without_battery_level() -> None:
    reading = parse.parse_bridge_status(WIRED)
    device = {"device_id": "eaf4f756-1d8b-41fa-9d4f-06eff5b33dea"}  # no installation="" label
    assert reading.value_of(M.READER_POWER_SOURCE, **device, source="wired") == 1
    assert all("installation" not in dict(s.labels) for s in reading.samples)
    assert reading.value_of(M.READER_BATTERY) is None
    assert reading.value_of(M.WIFI_RSSI) == -15


def test_status_core_disconnected() -> None:
    status = copy.deepcopy(WIRED)
    status["device"]["core"] = {"connectionStatus": "disconnected"}
    reading = parse.parse_bridge_status(status)
    assert reading.value_of(M.READER_CONNECTED) == 0
    assert reading.value_of(M.READER_ATTACHED) is None
    assert reading.value_of(M.READER_PIN_STATE) is None


def test_unknown_states_do_not_guess() -> None:
    status = copy.deepcopy(WIRED)
    status["device"]["core"].update(connectionStatus="sleeping", pinStatus="locked", batteryLevel=255)
    reading = parse.parse_bridge_status(status)
    assert reading.value_of(M.READER_CONNECTED) is None
    assert reading.value_of(M.READER_BATTERY) is None  # 255: a placeholder, not 255 %
    pins = {dict(s.labels)["state"]: s.value for s in reading.samples if s.metric is M.READER_PIN_STATE}
    assert pins == {"missing": 0, "pending": 0, "entered": 0, "locked": 1}


def test_reading_without_meter_or_registers_is_empty_not_zero() -> None:
    assert parse.parse_bridge_reading({"__typename": "iometer.reading.v1"}).samples == []
    empty = parse.parse_bridge_reading({"meter": {"number": "X", "reading": {"time": None, "registers": []}}})
    assert empty.samples == []


@pytest.mark.parametrize(
    "payload",
    [
        None, [], "text", 5,
        {"__typename": "iometer.status.v1"},  # the other endpoint's body
        {"meter": []},
        {"meter": {"number": "X", "reading": {"registers": {}}}},
        {"meter": {"number": "X", "reading": {"registers": [None]}}},
        {"meter": {"number": "X", "reading": {"registers": [{"value": 1, "unit": "Wh"}]}}},
        {"meter": {"number": "X", "reading": {"registers": [{"obis": "01-00:01.08.00*ff", "value": "lots", "unit": "Wh"}]}}},
        {"meter": {"number": "X", "reading": {"registers": [{"obis": "01-00:01.08.00*ff", "value": 1, "unit": "W"}]}}},
        {"meter": {"number": "X", "reading": {"time": "yesterday", "registers": []}}},
        {"meter": {"number": {"a": 1}}},
    ],
)
def test_malformed_readings_are_parse_errors(payload: object) -> None:
    with pytest.raises(ParseError):
        parse.parse_bridge_reading(payload)


@pytest.mark.parametrize(
    "payload",
    [
        None, [1], {"__typename": "iometer.reading.v1"}, {"device": "x"},
        {"device": {"id": "d", "core": {"batteryLevel": "full"}}},
        {"device": {"id": "d", "core": {"connectionStatus": 1}}},
        {"device": {"id": "d", "bridge": {"rssi": [1]}}},
    ],
)
def test_malformed_status_is_parse_error(payload: object) -> None:
    with pytest.raises(ParseError):
        parse.parse_bridge_status(payload)


def test_parse_time() -> None:
    assert parse.parse_time("2024-11-11T11:11:11Z") == 1731323471
    assert parse.parse_time("2024-11-11T12:11:11+01:00") == 1731323471
    assert parse.parse_time("2024-11-11T11:11:11.5Z") == 1731323471.5
    # The seed's example hour 24 is the next day's hour 0.
    assert parse.parse_time("2024-12-31T24:30:15Z") == parse.parse_time("2025-01-01T00:30:15Z")
    assert parse.format_time(1731323471.9) == "2024-11-11T11:11:11Z"
    for bad in ("11:11", "2024-13-01T00:00:00Z", 1731323471, True):
        with pytest.raises(ParseError):
            parse.parse_time(bad)


# --- the Partner API ---------------------------------------------------------------------------

DEVICE = {"id": "dev-1", "bridge": {"connectionStatus": "disconnected"},
          "core": {"connectionStatus": "connected", "attachmentStatus": "detached", "batteryLevel": 40,
                   "powerStatus": "battery", "pinStatus": "missing"}}


def installation(inst_id: str, *meters: tuple[str, str], current: dict | None = None) -> dict:
    return {"id": inst_id, "meters": [{"id": i, "number": n} for i, n in meters],
            "devices": [DEVICE], "currentDevice": current}


def meter_reading(meter_id: str, number: str, inst: str | None, time: str, *values: tuple) -> dict:
    meter: dict = {"id": meter_id, "number": number}
    if inst is not None:
        meter["installation"] = {"id": inst}
    return {"meter": meter, "time": time,
            "values": [{"obisCode": code, "value": value, "unit": unit} for code, value, unit in values]}


def test_installations_page_with_device_state() -> None:
    page = parse.parse_installations({"installations": [
        installation("i1", ("m1", "1EMH1"), current=DEVICE), installation("i2")]})
    assert [i.id for i in page] == ["i1", "i2"]
    assert page[0].meters == (parse.MeterInfo("m1", "1EMH1", "i1"),)
    devices = page[0].devices
    dev = {"installation": "i1", "device_id": "dev-1"}
    assert devices.value_of(M.GATEWAY_CONNECTED, **dev) == 0
    assert devices.value_of(M.READER_CONNECTED, **dev) == 1
    assert devices.value_of(M.READER_ATTACHED, **dev) == 0
    assert devices.value_of(M.READER_BATTERY, **dev) == 0.4
    assert devices.value_of(M.READER_PIN_STATE, **dev, state="missing") == 1
    # currentDevice repeats a listed device: its series appear once.
    assert sum(1 for s in devices.samples if s.metric is M.READER_CONNECTED) == 1


@pytest.mark.parametrize(
    "data",
    [None, {}, {"installations": None}, {"installations": {}}, {"installations": [{"meters": []}]},
     {"installations": [{"id": "i", "meters": [{"number": "n"}]}]},
     {"installations": [{"id": "i", "devices": [{"id": "d", "core": {"batteryLevel": "x"}}]}]}],
)
def test_malformed_installations(data: object) -> None:
    with pytest.raises(ParseError):
        parse.parse_installations(data)


def test_readings_page_and_subscription_message() -> None:
    items, cursor = parse.parse_readings_page({"readings": {"readings": [
        meter_reading("m1", "1EMH1", "i1", "2025-01-01T00:00:00Z", ("01-00:01.08.00*ff", 10, "Wh")),
    ], "cursor": "abc"}})
    assert cursor == "abc" and len(items) == 1
    assert items[0].key == "m1" and items[0].installation == "i1" and items[0].time == 1735689600
    last, none = parse.parse_readings_page({"readings": {"readings": [], "cursor": None}})
    assert last == [] and none is None
    message = parse.parse_subscription({"meterReadings": meter_reading("m1", "1EMH1", None, "2025-01-01T00:00:01Z")}, "meterReadings")
    assert message.installation is None and message.registers == ()


@pytest.mark.parametrize(
    "item",
    [None, {"time": "2025-01-01T00:00:00Z", "values": []},
     {"meter": {}, "time": "2025-01-01T00:00:00Z", "values": []},
     {"meter": {"id": "m"}, "values": []},
     {"meter": {"id": "m"}, "time": "2025-01-01T00:00:00Z"},
     {"meter": {"id": "m"}, "time": "2025-01-01T00:00:00Z", "values": [{"value": 1, "unit": "Wh"}]},
     {"meter": {"id": "m"}, "time": "2025-01-01T00:00:00Z", "values": [{"obisCode": "1.8.0", "value": "x", "unit": "Wh"}]}],
)
def test_malformed_meter_readings(item: object) -> None:
    with pytest.raises(ParseError):
        parse.parse_meter_reading(item)


def test_graphql_envelope() -> None:
    ok = parse.graphql_result({"data": {"x": 1}})
    assert ok.data == {"x": 1} and ok.errors == ()
    denied = parse.graphql_result({"data": None, "errors": [{"message": "nope", "extensions": {"code": "UNAUTHENTICATED"}}]})
    assert denied.unauthorized()
    other = parse.graphql_result({"errors": ["boom"]})
    assert not other.unauthorized() and other.error_text() == "boom"
    for bad in ({}, [], {"data": 5}, {"errors": {}}):
        with pytest.raises(ParseError):
            parse.graphql_result(bad)


def test_meter_names_option() -> None:
    assert parse.meter_names(["1EMH1=house", " 1EMH2 = garage "]) == {"1EMH1": "house", "1EMH2": "garage"}
    for bad in (["1EMH1"], ["=x"], ["1EMH1="]):
        with pytest.raises(ValueError):
            parse.meter_names(bad)


# --- property tests: any JSON gives a Reading or a ParseError, nothing else -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
registers = st.lists(st.fixed_dictionaries({}, optional={
    "obis": st.sampled_from(["01-00:01.08.00*ff", "1-0:16.7.0", "24.07.00", "1.8.1", "x", ""]) | json_values,
    "value": st.floats(allow_nan=True) | st.integers() | json_values,
    "unit": st.sampled_from(["Wh", "kWh", "W", "V", "A", "Hz", "", "%"]) | json_values,
}), max_size=5)
bridge_readings = st.fixed_dictionaries({}, optional={
    "__typename": st.sampled_from(["iometer.reading.v1", "iometer.reading.v2"]) | json_values,
    "meter": st.fixed_dictionaries({}, optional={
        "number": st.text(max_size=10) | json_values,
        "reading": st.fixed_dictionaries({}, optional={
            "time": st.sampled_from(["2024-11-11T11:11:11Z", "2024-12-31T24:30:15Z"]) | json_values,
            "registers": registers | json_values,
        }) | json_values,
    }) | json_values,
}) | json_values


def _reading_or_parse_error(fn, payload) -> None:
    try:
        result = fn(payload)
    except ParseError:
        return
    assert isinstance(result, Reading)
    for sample in result.samples:
        assert sample.value == sample.value  # never NaN


@settings(max_examples=300)
@given(bridge_readings)
def test_bridge_reading_any_json(payload: object) -> None:
    _reading_or_parse_error(parse.parse_bridge_reading, payload)


@settings(max_examples=300)
@given(json_values | st.fixed_dictionaries({}, optional={
    "installationId": json_values, "meter": json_values,
    "device": st.fixed_dictionaries({}, optional={
        "id": json_values, "bridge": json_values,
        "core": st.fixed_dictionaries({}, optional={
            k: json_values | st.sampled_from(["connected", "battery", "entered", "attached"]) | st.integers(-5, 300)
            for k in ("connectionStatus", "attachmentStatus", "batteryLevel", "powerStatus", "pinStatus", "rssi")
        }) | json_values,
    }) | json_values,
}))
def test_bridge_status_any_json(payload: object) -> None:
    _reading_or_parse_error(parse.parse_bridge_status, payload)


@settings(max_examples=300)
@given(json_values | st.fixed_dictionaries({"installations": st.lists(
    st.fixed_dictionaries({}, optional={"id": json_values | st.text(max_size=5), "meters": json_values,
                                        "devices": st.lists(json_values, max_size=3), "currentDevice": json_values}),
    max_size=3) | json_values}))
def test_installations_any_json(data: object) -> None:
    try:
        page = parse.parse_installations(data)
    except ParseError:
        return
    assert all(isinstance(i, parse.InstallationInfo) for i in page)


meter_reading_payloads = st.fixed_dictionaries({}, optional={
    "meter": st.fixed_dictionaries({}, optional={"id": json_values | st.text(max_size=5),
                                                "number": json_values, "installation": json_values}) | json_values,
    "time": st.sampled_from(["2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z"]) | json_values,
    "values": st.lists(st.fixed_dictionaries({}, optional={
        "obisCode": st.sampled_from(["1-0:1.8.0", "01-00:10.07.00*ff", "1.8.2", "bad"]) | json_values,
        "value": st.floats(allow_nan=True) | json_values,
        "unit": st.sampled_from(["Wh", "kWh", "W"]) | json_values,
    }), max_size=4) | json_values,
}) | json_values


@settings(max_examples=300)
@given(st.lists(meter_reading_payloads, max_size=4))
def test_readings_pages_any_json(items: list) -> None:
    for data in ({"readings": {"readings": items, "cursor": None}}, {"meterReadings": items[0] if items else None}):
        try:
            parse.parse_readings_page(data) if "readings" in data else parse.parse_subscription(data, "meterReadings")
        except ParseError:
            pass
