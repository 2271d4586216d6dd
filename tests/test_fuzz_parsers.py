"""Byte-level fuzzing of every parser of bytes that come from a device or a cloud.

Inputs are JSON documents shaped like the vendors' (their field names, nested a little, strings
with control characters and lone-surrogate escapes, absurd numbers), then mutated byte by byte,
plus raw bytes. Each goes the way its transport takes it: through the one JSON decoder
(`exporter.model.jsontext.loads`), then into the vendor's parser. Property: a value or the module's own
error (ParseError, or a PollError), never another exception, never a hang; and whatever a
parser keeps as a label value or device identity is fit for the exposition (encodable as UTF-8,
no control characters, bounded length).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any, Callable

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model.errors import PollError
from exporter.model.jsontext import MAX_LABEL_CHARS, JsonError, loads
from exporter.model.samples import DeviceInfo, ParseError, Reading
from exporter.vendors.enphase import parse as enphase
from exporter.vendors.enphase import token as enphase_token
from exporter.vendors.homewizard import parse as homewizard
from exporter.vendors.iammeter import cloud_parse
from exporter.vendors.iammeter import parse as iammeter
from exporter.vendors.iammeter import registers
from exporter.vendors.iometer import obis
from exporter.vendors.iometer import parse as iometer
from exporter.vendors.iometer.account import AccountReadings
from exporter.transport.sse import SseDecoder, SseEvent
from simulators.iometer import EMBEDDED_READING, EMBEDDED_STATUS

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
# each of the many parsers gets fewer examples: they share the strategies (a deeper run:
# raise max_examples; a run of 1,500 each found nothing more)
FUZZ_EACH = settings(FUZZ, max_examples=50)

# --- inputs ------------------------------------------------------------------------------------

FIELDS = [
    # HomeWizard
    "total_power_import_kwh", "energy_import_kwh", "active_power_w", "power_w", "external", "unique_id",
    "type", "unit", "value", "timestamp", "product_type", "serial", "firmware_version", "api_version",
    "gas_unique_id", "total_gas_m3", "error", "id", "wifi_rssi_db", "uptime_s", "active_voltage_v",
    "montly_power_peak_timestamp",
    # IAMMETER
    "SN", "Data", "Datas", "data", "method", "EA", "Reactive", "model", "version", "sig", "status",
    "successful", "message", "token", "values", "gmtTime", "sn", "runMode", "uploadinterval", "CTratio",
    "average", "minimum", "maximum", "offlineCount", "totalCount", "time", "yield",
    # IOmeter
    "__typename", "meter", "number", "reading", "registers", "obis", "installationId", "device", "bridge",
    "core", "rssi", "connectionStatus", "attachmentStatus", "batteryLevel", "powerStatus", "pinStatus",
    "errors", "extensions", "code", "installations", "meters", "devices", "currentDevice", "readings",
    "cursor", "obisCode", "meterReadings", "installation",
    # Enphase
    "production", "consumption", "storage", "activeCount", "wNow", "whLifetime", "measurementType",
    "lines", "eid", "state", "phaseCount", "channels", "activePower", "actEnergyDlvd", "serialNumber",
    "lastReportWatts", "reportType", "cumulative", "whDlvdCum", "phase", "meters", "soc", "last_update",
    "serial_num", "percentFull", "encharge_capacity", "device_type", "serial_number", "dev_info",
    "wattHoursLifetime", "wattsNow", "pcu", "eim", "exp", "iat", "enphaseUser", "aud",
]
# Strings a hostile device sends: control characters, lone surrogates, huge, look-alike digits.
hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x9f) | st.sampled_from("\ud800\udfff\u2028\ufffe²٣"), max_size=8),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "line\nbreak", "\x1b[2J", "\u2028", "²", "٣", "1-0:1.8.0",
                     "01-00:01.08.00*ff", "gas_meter", "m3", "kWh", "W", "iometer.reading.v1",
                     "iometer.status.v1", "v1", "2.0.0", "HWE-P1", "production", "net-consumption",
                     "2024-11-11T11:11:11Z", "2024/2/22 3:46:20", "connected", "1-5", "succeed", "x" * 5000]),
)
numbers = st.one_of(
    st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 10**400, 65535, 65536, 2**32, -5.0]),
)
scalars = st.none() | st.booleans() | numbers | hostile_text
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6),
                                                                 inner, max_size=8),
    max_leaves=40,
)


def _dump(value: Any) -> bytes:
    # ensure_ascii writes a lone surrogate as a \ud800 escape, as a device's firmware would
    return json.dumps(value, ensure_ascii=True).encode()


@st.composite
def mutated(draw: Any, base: st.SearchStrategy = documents) -> bytes:
    """A document as bytes, then a few byte edits (insert, delete, replace)."""
    data = bytearray(_dump(draw(base)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        position = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from([b"[", b"{", b"]", b"}", b",", b":", b'"', b"\\", b"\\ud800", b"NaN",
                                      b"Infinity", b"-", b"1e999", b"\xff", b"\xed\xa0\x80", b"\x00"])
                     | st.binary(min_size=1, max_size=4))
        if action == "insert":
            data[position:position] = piece
        elif action == "delete":
            del data[position:position + len(piece)]
        else:
            data[position:position + len(piece)] = piece
    return bytes(data)


# --- real documents with a few parts replaced: parsers get past their first checks ----------------

# Embedded, so the fuzzing has real shapes without the corpus; the corpus adds every capture.
EMBEDDED: dict[str, list[Any]] = {
    "homewizard": [
        {"product_type": "HWE-P1", "serial": "5c2fafabcdef", "firmware_version": "4.19", "api_version": "v1"},
        {"wifi_strength": 80, "total_power_import_kwh": 1000.5, "total_power_import_t1_kwh": 500.25,
         "active_power_w": 321, "active_voltage_l1_v": 230.1, "montly_power_peak_timestamp": 230101080010,
         "external": [{"unique_id": "4730303339303031363532303530323136", "type": "gas_meter",
                       "timestamp": 230125220957, "value": 2569.646, "unit": "m3"},
                      {"unique_id": "abc", "type": "heat_meter", "timestamp": 230125220957, "value": 1.5, "unit": "GJ"}]},
        {"energy_import_kwh": 3.5, "power_w": -12.0, "timestamp": "2024-06-28T14:12:34",
         "external": [{"unique_id": "w1", "type": "water_meter", "value": 1.25, "unit": "m3",
                       "timestamp": "2024-06-28T14:00:00"}]},
        {"wifi_rssi_db": -77, "uptime_s": 356},
        {"error": {"id": 202, "description": "API not enabled"}},
    ],
    "iammeter": [
        {"method": "uploadsn", "mac": "B0F8932A50D6", "version": "i.75.97.9", "server": "em", "SN": "3E0BAF87",
         "Datas": [[236.4, 0.59, 40, 1213.96, 0.0, 50.01, 0.29], [236.8, 1.32, 236, 62.3, 0.0, 50.01, 0.76],
                   [235.9, 0.19, 0, 8.57, 0.0, 50.01, 0.0]], "EA": {"Reactive": [[1, 2, 3], [1, 2, 3], [1, 2, 3]]}},
        {"method": "1-5", "SN": "AB12", "Data": [230.0, 1.0, 230.0, 10.0, 0.5, 50.0, 1.0]},
        {"successful": True, "message": "ok", "data": {"token": "abc", "id": 7}},
        {"values": [[230, 1, 230, 0.9, 10, 1]], "gmtTime": "2024/2/22 3:46:20"},
        [{"sn": "SN1", "values": [230, 1, 230, 10, 1], "gmtTime": "2024/2/22 3:46:20"}],
    ],
    "iometer": [
        EMBEDDED_READING, EMBEDDED_STATUS,
        {"meterReadings": {"meter": {"id": "m1", "number": "1EBZ01", "installation": {"id": "i1"}},
                           "time": "2024-11-11T11:11:11Z",
                           "values": [{"obisCode": "1-0:1.8.0", "value": 1234.5, "unit": "kWh"},
                                      {"obisCode": "01-00:10.07.00*ff", "value": 100, "unit": "W"},
                                      {"obisCode": "1-0:96.1.0", "value": 3, "unit": "foo"}]}},
        {"readings": {"readings": [{"meter": {"id": "m1", "number": "1EBZ01"}, "time": "2024-11-11T11:11:11Z",
                                    "values": [{"obisCode": "1.8.0", "value": 1, "unit": "Wh"}]}], "cursor": "c"}},
        {"installations": [{"id": "i1", "meters": [{"id": "m1", "number": "n"}],
                            "devices": [{"id": "d1", "bridge": {"connectionStatus": "connected"},
                                         "core": {"connectionStatus": "connected", "batteryLevel": 80,
                                                  "powerStatus": "battery", "pinStatus": "entered"}}]}]},
        {"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}], "data": None},
    ],
    "enphase": [
        {"production": [{"type": "inverters", "activeCount": 10, "wNow": 100, "whLifetime": 1000},
                        {"type": "eim", "activeCount": 1, "measurementType": "production", "wNow": 90,
                         "whLifetime": 900, "lines": [{"wNow": 30}, {"wNow": 30}, {"wNow": 30}]}],
         "consumption": [{"type": "eim", "activeCount": 1, "measurementType": "total-consumption", "wNow": 5,
                          "whLifetime": 50}, {"type": "eim", "activeCount": 1, "measurementType": "net-consumption",
                                              "wNow": 4, "whLifetime": 40}]},
        [{"eid": 704643328, "state": "enabled", "measurementType": "production", "phaseCount": 3}],
        [{"eid": 704643328, "timestamp": 1693745133, "actEnergyDlvd": 1.5, "activePower": 10,
          "channels": [{"eid": 1, "activePower": 3}, {"eid": 2, "activePower": 3}]}],
        [{"serialNumber": "121", "lastReportDate": 1693745133, "lastReportWatts": 20, "maxReportWatts": 300}],
        [{"type": "ENCHARGE", "devices": [{"serial_num": "1", "percentFull": 50, "encharge_capacity": 3360,
                                            "temperature": 20}]}],
        {"meters": {"last_update": 1.7e9, "soc": 50, "enc_agg_soc": 50, "enc_agg_energy": 100,
                    "storage": {"agg_p_mw": 1000}, "pv": {"agg_p_mw": 2}}},
        {"exp": 1.8e9, "iat": 1.7e9, "enphaseUser": "owner", "aud": "122233"},
    ],
}


def _templates() -> dict[str, list[Any]]:
    found = {vendor: list(docs) for vendor, docs in EMBEDDED.items()}
    if CONFORMANCE.is_dir():
        for path in sorted(CONFORMANCE.rglob("*")):
            vendor = path.relative_to(CONFORMANCE).parts[0].split("-")[0]
            if vendor in found and path.is_file() and path.stat().st_size < 100_000:
                try:
                    found[vendor].append(json.loads(path.read_bytes()))
                except ValueError:
                    pass
    return found


TEMPLATES = _templates()


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _leaves(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:8]):
            out += _leaves(item, path + (index,))
    return out


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


@st.composite
def shaped(draw: Any, vendor: str) -> Any:
    """A real document of `vendor` with up to four parts replaced by hostile values."""
    document = draw(st.sampled_from(TEMPLATES[vendor]))
    paths = _leaves(document)
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from(paths))
        current = _at(document, path)
        if isinstance(current, str):
            new = draw(hostile_text)
        elif isinstance(current, (int, float)):
            new = draw(numbers | hostile_text)
        else:
            new = draw(scalars | documents)
        document = _replaced(document, path, new)
        paths = _leaves(document)
    return document


def _at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


deep = st.integers(1, 1200).map(lambda n: b"[" * n + b"]" * n) | st.integers(1, 3000).map(
    lambda n: b'{"a":' * n + b"1" + b"}" * n)
raw_bodies = st.one_of(mutated(), st.binary(max_size=300), deep)


# --- the properties ----------------------------------------------------------------------------


def fit_for_a_label(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(text) <= MAX_LABEL_CHARS and not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f for ch in text)


def check_result(result: Any) -> None:
    if isinstance(result, Reading):
        for sample in result.samples:
            assert isinstance(sample.value, float) and sample.value == sample.value, sample
            for name, value in sample.labels:
                assert isinstance(value, str) and fit_for_a_label(value), (name, value)
        for info in result.devices:
            check_result(info)
    elif isinstance(result, DeviceInfo):
        for value in (result.model, result.serial, result.firmware, result.meter or ""):
            assert fit_for_a_label(value), result
    elif isinstance(result, (list, tuple)):
        for item in result:
            check_result(item)
    elif isinstance(result, dict):
        for item in result.values():
            check_result(item)


def decode(raw: bytes) -> Any:
    """What the transport hands a parser; JsonError ends there (as reason `parse`)."""
    value = loads(raw)
    # nothing the decoder returns holds a lone surrogate
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def outcome(parser: Callable[[Any], Any], payload: Any) -> None:
    try:
        result = parser(payload)
    except (cloud_parse.NothingReturned, cloud_parse.ApiRefused):
        return
    except PollError as exc:
        assert exc.reason in ("parse", "too_large"), exc
        return
    except ParseError:
        return
    check_result(result)


METERS = enphase.parse_meters([{"eid": 704643328, "state": "enabled", "measurementType": "production",
                                "phaseCount": 3}, {"eid": 704643584, "measurementType": "net-consumption"}])
LABELS = cloud_parse.MeterLabels(installation="home", meter="SN1")


def _account_readings(data: Any) -> Reading:
    account = AccountReadings()
    readings, _ = iometer.parse_readings_page(data)
    for item in readings:
        account.offer(item)
    return account.snapshot()


JSON_PARSERS: list[tuple[str, Callable[[Any], Any]]] = [  # name: vendor.function
    ("homewizard.parse_v1_data", homewizard.parse_v1_data),
    ("homewizard.parse_v2_measurement", homewizard.parse_v2_measurement),
    ("homewizard.parse_v2_system", homewizard.parse_v2_system),
    ("homewizard.parse_device", homewizard.parse_device),
    ("homewizard.api_version", homewizard.api_version),
    ("homewizard.api_error", homewizard.api_error),
    ("iammeter.parse_monitorjson", iammeter.parse_monitorjson),
    ("iammeter.parse_monitor", iammeter.parse_monitor),
    ("iammeter.parse_wifidata", lambda d: iammeter.parse_wifidata(d).device),
    ("iammeter.parse_ratio", iammeter.parse_ratio),
    ("iammeter.cloud.parse_login", cloud_parse.parse_login),
    ("iammeter.cloud.parse_meterdata", lambda d: cloud_parse.parse_meterdata(d, "SN1", LABELS)),
    ("iammeter.cloud.parse_metersdata", lambda d: cloud_parse.parse_metersdata(d, {"SN1": LABELS})),
    ("iammeter.cloud.parse_meterdatalist",
     lambda d: [cloud_parse.history_reading(p, "SN1", LABELS) for p in cloud_parse.parse_meterdatalist(d)]),
    ("iammeter.cloud.parse_power_analysis", lambda d: cloud_parse.parse_power_analysis(d, LABELS)),
    ("iammeter.cloud.parse_offline_analysis", lambda d: cloud_parse.parse_offline_analysis(d, LABELS)),
    ("iammeter.cloud.parse_energy_history", lambda d: cloud_parse.parse_energy_history(d, "p", date(2025, 1, 15))),
    ("enphase.parse_api_v1_production", enphase.parse_api_v1_production),
    ("enphase.parse_inverters", enphase.parse_inverters),
    ("enphase.parse_production_json", enphase.parse_production_json),
    ("enphase.parse_pdm_energy", enphase.parse_pdm_energy),
    ("enphase.parse_meters", enphase.parse_meters),
    ("enphase.parse_meter_readings", lambda d: enphase.parse_meter_readings(d, METERS)),
    ("enphase.parse_meter_reports", enphase.parse_meter_reports),
    ("enphase.parse_grid_reading", enphase.parse_grid_reading),
    ("enphase.parse_livedata", lambda d: enphase.parse_livedata(d, now=1.7e9)),
    ("enphase.parse_ensemble_inventory", enphase.parse_ensemble_inventory),
    ("enphase.parse_device_list", enphase.parse_device_list),
    ("iometer.parse_bridge_reading", iometer.parse_bridge_reading),
    ("iometer.parse_bridge_status", iometer.parse_bridge_status),
    ("iometer.graphql_result", lambda d: iometer.graphql_result(d).error_text()),
    ("iometer.parse_installations", lambda d: [i.devices for i in iometer.parse_installations(d)]),
    ("iometer.parse_subscription", lambda d: iometer.parse_subscription(d, "meterReadings")),
    ("iometer.account_readings", _account_readings),
    ("iometer.obis.register", lambda d: obis.register(*d) if isinstance(d, list) and len(d) == 3 else None),
]


@pytest.mark.parametrize("name,parser", JSON_PARSERS, ids=[p[0] for p in JSON_PARSERS])
@FUZZ_EACH
@given(data=st.data())
def test_vendor_parsers_take_any_bytes(name, parser, data):
    """Real documents of the parser's vendor, hostile parts in them, then byte edits; raw bytes."""
    vendor = name.split(".")[0]
    raw = data.draw(st.one_of(mutated(shaped(vendor)), raw_bodies))
    try:
        payload = decode(raw)
    except JsonError:
        return
    outcome(parser, payload)


@pytest.mark.parametrize("name,parser", JSON_PARSERS, ids=[p[0] for p in JSON_PARSERS])
@FUZZ_EACH
@given(data=st.data())
def test_vendor_parsers_take_any_document(name, parser, data):
    vendor = name.split(".")[0]
    payload = data.draw(shaped(vendor) | documents)
    outcome(parser, decode(_dump(payload)))


# --- the decoder itself ------------------------------------------------------------------------


@FUZZ
@given(raw=raw_bodies | st.text(max_size=200).map(str.encode))
def test_the_decoder_returns_a_value_or_its_error(raw):
    try:
        value = loads(raw)
    except JsonError as exc:
        assert len(str(exc)) < 200
        return
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate left


@FUZZ
@given(value=documents)
def test_the_decoder_reads_what_json_writes(value):
    decoded = loads(_dump(value))
    assert json.dumps(decoded, ensure_ascii=False, sort_keys=True) == json.dumps(
        _without_surrogates(value), ensure_ascii=False, sort_keys=True)


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


# --- bodies parsed as text -----------------------------------------------------------------------

BODY_PARSERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("enphase.parse_info", lambda b: enphase.parse_info(b).reading()),
    ("enphase.parse_production_page", enphase.parse_production_page),
    ("enphase.parse_production_html", enphase.parse_production_html),
    ("iammeter.cloud.unwrap", cloud_parse.unwrap),
]
xml_bodies = st.builds(
    lambda sn, sw, extra: (f"<?xml version='1.0'?><envoy_info><device><sn>{sn}</sn><pn>{extra}</pn>"
                           f"<software>{sw}</software></device></envoy_info>").encode("utf-8", "surrogatepass"),
    hostile_text.filter(lambda t: "<" not in t and "&" not in t),
    st.sampled_from(["D8.3.5169", "R5.0.62", "D" + "9" * 5000 + ".1", "٣.٣", "x"]),
    st.text(max_size=10).filter(lambda t: "<" not in t and "&" not in t),
)


@pytest.mark.parametrize("name,parser", BODY_PARSERS, ids=[p[0] for p in BODY_PARSERS])
@FUZZ_EACH
@given(raw=raw_bodies | xml_bodies)
def test_text_body_parsers_take_any_bytes(name, parser, raw):
    outcome(parser, raw)


@pytest.mark.parametrize("name,parser", BODY_PARSERS, ids=[p[0] for p in BODY_PARSERS])
@FUZZ_EACH
@given(data=st.data())
def test_text_body_parsers_take_shaped_bytes(name, parser, data):
    vendor = "enphase" if name.startswith("enphase") else "iammeter"
    outcome(parser, data.draw(mutated(shaped(vendor)) | shaped(vendor).map(_dump)))


# --- tokens --------------------------------------------------------------------------------------


def _jwt(claims: bytes) -> str:
    import base64

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"{part(b'{}')}.{part(claims)}.c2ln"


@FUZZ
@given(token=st.one_of(mutated(shaped("enphase")).map(_jwt), st.text(max_size=80),
                       documents.map(lambda d: _jwt(_dump(d)))))
def test_enphase_token_claims_take_anything(token):
    try:
        info = enphase_token.token_info(token)
    except enphase_token.TokenError:
        return
    assert info.expires_at == info.expires_at and abs(info.expires_at) != float("inf")
    # a token that decodes can travel in a header
    from exporter.model.jsontext import header_problem

    assert header_problem(f"Bearer {info.token}") is None


# --- Modbus register blocks -----------------------------------------------------------------------

words = st.one_of(st.integers(0, 0xFFFF), st.integers(-2**40, 2**40), st.booleans(), st.none(),
                  st.floats(allow_nan=True), st.text(max_size=3))


@FUZZ
@given(block=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=80) | st.lists(words, max_size=80),
       model=st.sampled_from(["", "WEM3080T", "WEM3046T", "WEM3050T", "WEM3080", "\ud800\n"]))
def test_register_blocks_decode_or_refuse(block, model):
    for decoder in (lambda r: iammeter.decode_three_phase(r, model), lambda r: iammeter.decode_single_phase(r, model),
                    iammeter.looks_single_phase):
        try:
            result = decoder(block)
        except ParseError:
            continue
        if isinstance(result, Reading):
            assert all(s.value == s.value for s in result.samples)


@FUZZ
@given(high=st.integers(0, 0xFFFF), low=st.integers(0, 0xFFFF))
def test_register_pairs_are_in_range(high, low):
    assert 0 <= registers.u32(high, low) < 2**32
    assert -2**31 <= registers.s32(high, low) < 2**31


# --- Server-Sent Events --------------------------------------------------------------------------

sse_pieces = st.lists(
    st.sampled_from([b"data: ", b"data:", b"event: readingEvent", b"id: 7", b": comment", b"retry: 5",
                     b"\n", b"\r", b"\r\n", b"{}", b'{"__typename":"iometer.reading.v1"}', b"\xff", b"\x00"])
    | st.binary(max_size=20),
    max_size=40,
)


def _events(stream: bytes, cuts: list[int], max_bytes: int) -> list[SseEvent] | str:
    decoder = SseDecoder(max_bytes=max_bytes)
    events: list[SseEvent] = []
    start = 0
    try:
        for cut in sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]:
            events += decoder.feed(stream[start:cut])
            start = cut
    except ParseError:
        return "too large"
    return events


@FUZZ
@given(pieces=sse_pieces, cuts=st.lists(st.integers(0, 800), max_size=12), max_bytes=st.sampled_from([16, 64, 1 << 20]))
def test_sse_decoding_does_not_depend_on_where_the_stream_is_cut(pieces, cuts, max_bytes):
    stream = b"".join(pieces)
    whole = _events(stream, [], max_bytes)
    if whole == "too large":
        return  # how much was buffered when the limit tripped depends on the cuts
    cut = _events(stream, cuts, max_bytes)
    assert cut == whole or cut == "too large"
    bytewise = _events(stream, list(range(len(stream))), max_bytes)
    assert bytewise == whole or bytewise == "too large"
    if whole != "too large":
        for event in whole:
            assert isinstance(event.data, str) and len(event.data) <= max_bytes


@FUZZ
@given(pieces=sse_pieces)
def test_sse_event_data_decodes_or_is_a_parse_error(pieces):
    decoder = SseDecoder()
    for event in decoder.feed(b"".join(pieces) + b"\n\n"):
        try:
            outcome(iometer.parse_bridge_reading, loads(event.data))
        except JsonError:
            pass


# --- MQTT payloads and push bodies, through the router and the listener -----------------------------


class _Connection:
    """What the MQTT router needs of a broker connection."""

    def __init__(self) -> None:
        from exporter.transport.mqtt import BrokerSettings

        self.settings = BrokerSettings(name="b", host="127.0.0.1", port=1883)
        self.last_error = None
        self.rejected: dict[str, int] = {}
        import asyncio

        self.connected = asyncio.Event()

    def add_error_listener(self, listener) -> None:
        pass

    def subscribe(self, topic_filter, handler) -> None:
        pass

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@FUZZ
@given(payload=raw_bodies | mutated(shaped("iammeter")) | shaped("iammeter").map(_dump),
       topic=st.sampled_from(["device/3E0BAF87/realtime", "device/\ud800/realtime", "device/x\n/realtime", "a"]))
def test_mqtt_payloads_become_a_reading_or_a_counted_refusal(payload, topic):
    from exporter.vendors.iammeter.mqtt import IammeterMqttRouter

    router = IammeterMqttRouter(_Connection(), structlog.get_logger())
    got: list[Any] = []
    router.attach("3E0BAF87", got.append)
    router.on_message(topic, payload)
    for item in got:
        if isinstance(item, PollError):
            assert item.reason in ("parse", "too_large")
        else:
            check_result(item)
    assert got or router.connection.rejected


@FUZZ
@given(body=raw_bodies | mutated(shaped("iammeter")) | shaped("iammeter").map(_dump))
def test_push_bodies_are_answered_never_raised(body):
    from exporter.transport.http_push import PushListener, PushSettings, Sink
    from exporter.vendors.iammeter.push import FORMAT

    listener = PushListener(PushSettings(host="127.0.0.1", port=0), structlog.get_logger(), format=FORMAT)
    got: list[Any] = []
    listener.attach("3E0BAF87", Sink("meter", got.append, iammeter.parse_monitorjson))
    response = listener.receive(body)
    assert response.status in (200, 400, 403)
    for item in got:
        if isinstance(item, PollError):
            assert item.reason == "parse"
        else:
            check_result(item)
