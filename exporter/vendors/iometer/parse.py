"""Pure parsers for IOmeter: the local bridge API and the Partner GraphQL API.

Local bridge (`http://<bridge>/v1`): `GET /reading` (`iometer.reading.v1`: one meter, its time
and OBIS registers) and `GET /status` (`iometer.status.v1`: installation, meter number, bridge
and core state). Partner API (GraphQL, schema in the seed document): installations with their
meters and devices, `readings` query pages, and `meterReadings` / `liveReadings` subscription
payloads. (The newest reading of every meter of an account is kept by `account.AccountReadings`.)

Everything here is pure: decoded JSON in, `Reading` (or plain records) out, `ParseError` for
anything malformed, no series for what is merely absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Collection, NamedTuple

from ...model.catalogue import (GATEWAY_CONNECTED, READER_ATTACHED, READER_BATTERY, READER_CONNECTED,
                                READER_PIN_STATE, READER_POWER_SOURCE, READER_RSSI, WIFI_RSSI, Metric)
from ...model.jsontext import label_text
from ...model.samples import (DeviceInfo, ParseError, Reading, Sample, checked_list, checked_object,
                              number_or_none, optional_list, optional_object)
from .obis import LOCAL, Register, add_registers, register

BRIDGE_MODEL = "IOmeter bridge"
CORE_MODEL = "IOmeter core"
DEVICE_MODEL = "IOmeter"
METER_MODEL = "electricity meter"

# --- Small typed accessors -------------------------------------------------------------------


def _text(value: Any, what: str, required: bool = False) -> str | None:
    """A string field; GraphQL IDs may also arrive as whole numbers. Ids, numbers and versions
    become label values: made fit for that (no control characters, bounded length)."""
    if value is None:
        if required:
            raise ParseError(f"{what}: missing")
        return None
    if value.__class__ is str:
        return label_text(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParseError(f"{what}: expected a string, got {type(value).__name__}")
    if isinstance(value, int) and not -10**64 < value < 10**64:
        raise ParseError(f"{what}: number out of range")
    return label_text(str(value))


def _enum(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what}: expected a state name, got {type(value).__name__}")
    return label_text(value.strip().lower(), 40)  # an unknown state becomes a label value


_HOUR_24 = re.compile(r"^(\d{4}-\d{2}-\d{2})T24(:.*)$")


def parse_time(value: Any, what: str = "time") -> float | None:
    """Unix time from an RFC 3339 string; None for null.

    The Partner API's documented example writes hour 24 (`2024-12-31T24:30:15Z`); that is read
    as hour 0 of the next day rather than refused.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what}: expected a timestamp string, got {type(value).__name__}")
    known = _TIMES.get(value)
    if known is not None:
        return known
    if len(_TIMES) >= 256:
        _TIMES.clear()
    known = _TIMES[value] = _parse_time(value, what)
    return known


# Times already read: the readings of an account's meters arrive a second apart, many with the
# same time. Bounded (emptied when full).
_TIMES: dict[str, float] = {}


def _parse_time(value: str, what: str) -> float:
    text = value.strip()
    shift = 0.0
    match = _HOUR_24.match(text)
    if match:
        text, shift = f"{match.group(1)}T00{match.group(2)}", 86400.0
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)  # RFC 3339 says UTC; devices send Z
        return moment.timestamp() + shift
    except (ValueError, OverflowError):
        raise ParseError(f"{what}: not an RFC 3339 timestamp: {value[:40]!r}") from None


def format_time(timestamp: float) -> str:
    """The API's DateTime form (RFC 3339, UTC, whole seconds, rounded down)."""
    return datetime.fromtimestamp(int(timestamp // 1), tz=timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _check_typename(obj: dict[str, Any], prefix: str, what: str) -> None:
    typename = obj.get("__typename")
    if typename is None:
        return
    if not isinstance(typename, str) or not typename.startswith(prefix):
        raise ParseError(f"{what}: answer of type {str(typename)[:40]!r}, expected {prefix}*")


# --- Device state (local status and Partner API devices) -------------------------------------

_CONNECTION = {"connected": 1.0, "disconnected": 0.0}
_ATTACHMENT = {"attached": 1.0, "detached": 0.0}
POWER_SOURCES = ("battery", "wired")
PIN_STATES = ("missing", "pending", "entered")


def _flag(reading: Reading, metric: Metric, value: Any, meaning: dict[str, float], **labels: str) -> None:
    state = _enum(value, metric.name)
    if state is not None and state in meaning:
        reading.add(metric, meaning[state], **labels)
    # An unknown state (newer firmware) gives no series rather than a wrong 0 or 1.


def _state_set(
    reading: Reading, metric: Metric, label: str, value: Any, known: tuple[str, ...], **labels: str
) -> None:
    state = _enum(value, metric.name)
    if state is None:
        return
    for name in known if state in known else known + (state,):
        reading.add(metric, 1.0 if name == state else 0.0, **{label: name}, **labels)


def add_device_state(
    reading: Reading,
    installation: str,
    device_id: str,
    bridge: dict[str, Any] | None,
    core: dict[str, Any] | None,
) -> None:
    labels = {"installation": installation, "device_id": device_id}
    if bridge is not None:
        _flag(reading, GATEWAY_CONNECTED, bridge.get("connectionStatus"), _CONNECTION, **labels)
    if core is None:
        return
    _flag(reading, READER_CONNECTED, core.get("connectionStatus"), _CONNECTION, **labels)
    _flag(reading, READER_ATTACHED, core.get("attachmentStatus"), _ATTACHMENT, **labels)
    level = number_or_none(core.get("batteryLevel"), "core.batteryLevel")
    if level is not None and 0 <= level <= 100:  # outside: a placeholder, not a level
        reading.add(READER_BATTERY, level / 100, **labels)
    _state_set(reading, READER_POWER_SOURCE, "source", core.get("powerStatus"), POWER_SOURCES, **labels)
    _state_set(reading, READER_PIN_STATE, "state", core.get("pinStatus"), PIN_STATES, **labels)
    reading.add(READER_RSSI, core.get("rssi"), **labels)


# --- Local bridge ----------------------------------------------------------------------------


def parse_bridge_reading(payload: Any) -> Reading:
    """`GET /v1/reading`: registers in base units, the measurement time, the meter number."""
    obj = checked_object(payload, "reading")
    assert obj is not None
    _check_typename(obj, "iometer.reading.", "reading")
    reading = Reading()
    meter = optional_object(obj.get("meter"), "meter")
    if meter is None:
        return reading  # no meter seen yet: nothing to export
    number = _text(meter.get("number"), "meter.number")
    if number:
        reading.devices.append(DeviceInfo(model=METER_MODEL, serial=number))
    current = optional_object(meter.get("reading"), "meter.reading")
    if current is None:
        return reading
    time = parse_time(current.get("time"), "meter.reading.time")
    registers = [
        _bridge_register(item, i)
        for i, item in enumerate(optional_list(current.get("registers"), "meter.reading.registers"))
    ]
    add_registers(reading, registers, LOCAL)
    reading.add(LOCAL.measurement_time, time)
    return reading


def _bridge_register(item: Any, index: int) -> Register:
    obj = checked_object(item, f"registers[{index}]")
    assert obj is not None
    if obj.get("obis") is None:
        raise ParseError(f"registers[{index}]: no OBIS code")
    return register(obj.get("obis"), obj.get("value"), obj.get("unit"))


def parse_bridge_status(payload: Any) -> Reading:
    """`GET /v1/status`: reader and gateway state, signal strengths, firmware versions."""
    obj = checked_object(payload, "status")
    assert obj is not None
    _check_typename(obj, "iometer.status.", "status")
    reading = Reading()
    installation = _text(obj.get("installationId"), "installationId") or ""
    meter = optional_object(obj.get("meter"), "meter")
    number = _text(meter.get("number"), "meter.number") if meter else None
    if number:
        reading.devices.append(DeviceInfo(model=METER_MODEL, serial=number))
    device = optional_object(obj.get("device"), "device")
    if device is None:
        return reading
    device_id = _text(device.get("id"), "device.id") or ""
    bridge = optional_object(device.get("bridge"), "device.bridge")
    core = optional_object(device.get("core"), "device.core")
    if bridge is not None:
        reading.add(WIFI_RSSI, bridge.get("rssi"))
        version = _text(bridge.get("version"), "device.bridge.version")
        reading.devices.append(DeviceInfo(BRIDGE_MODEL, device_id, version or ""))
    if core is not None:
        version = _text(core.get("version"), "device.core.version")
        if version is not None:
            reading.devices.append(DeviceInfo(CORE_MODEL, device_id, version))
    add_device_state(reading, installation, device_id, bridge, core)
    if not installation:  # the bridge reports none: the state series carry no installation=""
        reading.samples[:] = [
            Sample(s.metric, tuple(pair for pair in s.labels if pair != ("installation", "")), s.value)
            for s in reading.samples
        ]
    return reading


def merge(*readings: Reading | None) -> Reading:
    """One Reading from several payloads of one target (reading + status); meter info once."""
    out = Reading()
    for part in readings:
        if part is None:
            continue
        out.samples.extend(part.samples)
        for info in part.devices:
            if info not in out.devices:
                out.devices.append(info)
    return out


# --- Partner API: envelopes ------------------------------------------------------------------


@dataclass(frozen=True)
class GraphQLResult:
    data: dict[str, Any] | None
    errors: tuple[dict[str, Any], ...]

    def error_text(self) -> str:
        messages = [label_text(_message(e), 120) for e in self.errors]
        return "; ".join(messages)[:300]

    def unauthorized(self) -> bool:
        for error in self.errors:
            extensions = error.get("extensions")
            code = extensions.get("code", "") if isinstance(extensions, dict) else ""
            text = f"{code if isinstance(code, str) else ''} {_message(error)}".lower()
            if any(w in text for w in ("unauthorized", "unauthenticated", "forbidden", "access denied")):
                return True
        return False


def _message(error: dict[str, Any]) -> str:
    message = error.get("message", "error")
    return message if isinstance(message, str) else type(message).__name__


def graphql_result(body: Any) -> GraphQLResult:
    """The `data` and `errors` of a GraphQL response body (HTTP or a subscription message)."""
    obj = checked_object(body, "GraphQL response")
    assert obj is not None
    if "data" not in obj and "errors" not in obj:
        raise ParseError("GraphQL response: neither data nor errors")
    data = optional_object(obj.get("data"), "data")
    errors = []
    for i, error in enumerate(optional_list(obj.get("errors"), "errors")):
        if isinstance(error, str):
            error = {"message": error}
        errors.append(checked_object(error, f"errors[{i}]"))
    return GraphQLResult(data, tuple(errors))  # type: ignore[arg-type]


# --- Partner API: installations, meters, devices ---------------------------------------------


@dataclass(frozen=True)
class MeterInfo:
    id: str
    number: str
    installation: str


@dataclass(frozen=True)
class InstallationInfo:
    id: str
    meters: tuple[MeterInfo, ...]
    devices: Reading  # the device-state samples of this installation, already labelled


def parse_installations(data: Any) -> list[InstallationInfo]:
    """One page of the `installations` query (the `data` object of the response)."""
    obj = checked_object(data, "data")
    assert obj is not None
    return [
        _installation(item, f"installations[{i}]")
        for i, item in enumerate(checked_list(obj.get("installations"), "installations"))
    ]


def _installation(item: Any, what: str) -> InstallationInfo:
    obj = checked_object(item, what)
    assert obj is not None
    installation = _text(obj.get("id"), f"{what}.id", required=True)
    assert installation is not None
    meters = []
    for i, raw in enumerate(optional_list(obj.get("meters"), f"{what}.meters")):
        meter = checked_object(raw, f"{what}.meters[{i}]")
        assert meter is not None
        meter_id = _text(meter.get("id"), f"{what}.meters[{i}].id", required=True)
        number = _text(meter.get("number"), f"{what}.meters[{i}].number") or ""
        meters.append(MeterInfo(meter_id or "", number, installation))
    devices = Reading()
    seen: set[str] = set()
    raw_devices = list(optional_list(obj.get("devices"), f"{what}.devices"))
    if obj.get("currentDevice") is not None:
        raw_devices.append(obj.get("currentDevice"))
    for i, raw in enumerate(raw_devices):
        device = checked_object(raw, f"{what}.devices[{i}]")
        assert device is not None
        device_id = _text(device.get("id"), f"{what}.devices[{i}].id", required=True) or ""
        if device_id in seen:
            continue
        seen.add(device_id)
        bridge = optional_object(device.get("bridge"), f"{what}.devices[{i}].bridge")
        core = optional_object(device.get("core"), f"{what}.devices[{i}].core")
        add_device_state(devices, installation, device_id, bridge, core)
        devices.devices.append(DeviceInfo(DEVICE_MODEL, device_id, ""))
    return InstallationInfo(installation, tuple(meters), devices)


# --- Partner API: readings -------------------------------------------------------------------


class MeterReading(NamedTuple):  # a tuple: one is made per message, and a dataclass costs several times more
    key: str  # the meter's id, else its number
    number: str
    installation: str | None
    time: float
    registers: tuple[Register, ...]


def parse_meter_reading(item: Any, what: str = "reading") -> MeterReading:
    obj = checked_object(item, what)
    assert obj is not None
    meter = checked_object(obj.get("meter"), f"{what}.meter")
    assert meter is not None
    meter_id = _text(meter.get("id"), f"{what}.meter.id")
    number = _text(meter.get("number"), f"{what}.meter.number")
    if not meter_id and not number:
        raise ParseError(f"{what}.meter: neither id nor number")
    installation = optional_object(meter.get("installation"), f"{what}.meter.installation")
    installation_id = _text(installation.get("id"), f"{what}.meter.installation.id") if installation else None
    time = parse_time(obj.get("time"), f"{what}.time")
    if time is None:
        raise ParseError(f"{what}.time: missing")
    registers = []
    for i, raw in enumerate(checked_list(obj.get("values"), f"{what}.values")):
        if not isinstance(raw, dict):  # the error text is built only for a bad one
            checked_object(raw, f"{what}.values[{i}]")
        code = raw.get("obisCode")
        if code is None:
            raise ParseError(f"{what}.values[{i}]: no OBIS code")
        registers.append(register(code, raw.get("value"), raw.get("unit")))
    return MeterReading(
        meter_id or number or "", number or "", installation_id, time, tuple(registers)
    )


def parse_readings_page(data: Any, path: tuple[str, ...] = ("readings",)) -> tuple[list[MeterReading], str | None]:
    """A `readings` query result: its readings and the cursor of the next page (None: done)."""
    obj = checked_object(data, "data")
    for key in path:
        obj = checked_object(obj.get(key) if obj else None, key)
    assert obj is not None
    readings = [
        parse_meter_reading(item, f"readings[{i}]")
        for i, item in enumerate(checked_list(obj.get("readings"), "readings.readings"))
    ]
    cursor = _text(obj.get("cursor"), "readings.cursor")
    return readings, cursor or None


def parse_subscription(data: Any, field_name: str) -> MeterReading:
    """One `meterReadings` / `liveReadings` message (its `data` object)."""
    obj = checked_object(data, "data")
    assert obj is not None
    return parse_meter_reading(obj.get(field_name), field_name)


# --- Partner API: the `meters` option ---------------------------------------------------------


def meter_names(entries: Collection[str]) -> dict[str, str]:
    """`number=name` entries (the `meters` option) as a mapping; ValueError on a bad entry."""
    names: dict[str, str] = {}
    for entry in entries:
        number, sep, name = str(entry).partition("=")
        if not sep or not number.strip() or not name.strip():
            raise ValueError(f"expected 'meter number=name', got {str(entry)[:60]!r}")
        names[number.strip()] = name.strip()
    return names
