"""IAMMETER meters: pure decoding of the local JSON API and of the Modbus/TCP registers.

The JSON of `GET /api/monitorjson` (and of the legacy `GET /monitorjson`, `GET /api/monitor`
and every push mode, which carry the same document) comes in these shapes:

- single phase (WEM3080): `"Data": [row]`;
- multi phase: `"Datas": [row, row, ...]`, one row per phase (WEM3080T/WEM3046T/WEM3050T/
  WEM3063T: 3, WEM2067: 2). With net metering (NEM) switched on, one more row follows the
  phases: the meter's net result (algebraic power sum, net import/export counters);
- legacy WEM3162: lower-case `"data": [row]` and `"status": "succeed"`, no SN or version.

A row is `[voltage V, current A, active power W (negative = export), import kWh, export kWh,
frequency Hz, power factor]`; old firmware sends the first five only. `method` is
`"<model code>-<upload counter>"` on current firmware (1 WEM3080, 2 WEM3080T, 3 WEM3046T,
4 WEM3050T, 5 WEM2067, 6 WEM3063T) and `"uploadsn"` on older firmware. `EA.Reactive` (reactive
measurement switched on) holds per phase `[reactive power, inductive kvarh, capacitive kvarh]`.

How rows become series:

- A single-phase meter's one row is the device itself: ACTIVE_POWER, ENERGY_IMPORTED/EXPORTED,
  POWER_FACTOR, FREQUENCY, and phase `l1` for voltage and current (the quantities that add up
  across phases are totals, the ones that do not are per phase).
- A multi-phase meter gives per-phase series (PHASE_*, with per-phase energy counters), and
  its device totals only where the meter computes them: the net row (net metering on). That row
  is the whole meter - the algebraic sum of the phase powers, and the import/export counters
  of that sum - the same quantities as the Modbus "total" registers 32..37, so both become
  ACTIVE_POWER and ENERGY_IMPORTED/EXPORTED, whatever the transport. Without the net row no
  total is made up by summing phases (a sum of per-phase counters is not what the meter's
  netting counts: one phase importing while another exports adds to both). The net row's power
  factor is the system power factor (POWER_FACTOR); its voltage (a reference phase) and
  current (always 0) repeat nothing useful and are dropped.
- FREQUENCY is exported once, from the first phase row that has it.
- Reactive power is taken to be in var, not kvar: the vendor's page says kvar, but its own
  example shows -119.0 next to phases drawing 1.4 A, which only var can be; the Modbus
  register of the same quantity is documented in var as well.

What is accepted and what is an error (ParseError, the whole payload is refused):

- Numbers may arrive as JSON numbers or as numeric strings (some firmware quotes them); any
  other string, a boolean, a list or an object where a number belongs is an error, as is a
  non-finite number. A negative energy counter is passed on: the store drops it (and counts it)
  as it does every vendor's, and the rest of the reading is kept.
- A row must have 5 or 7 elements. A `null` element means the meter did not measure that
  field: it gives no series. A row of nulls is a phase the meter has no values for (firmware
  sends such rows before its first measurement): that phase is skipped. If no row holds any
  value, or `Data`/`Datas` is `null` ("data not ready yet" after boot), there is no
  measurement and the payload is an error, so that a target never looks up while it has
  nothing to report.
- The number of rows must fit the model: the phases, or the phases plus one net row. When the
  model code is unknown (legacy `uploadsn`), the row count decides: 1 single phase, 2 two
  phases, 3 three phases, 4 three phases plus the net row.

The model label is taken from the `model` field (`/api/monitor`), else from the model code,
else guessed from the shape like IAMMETER's own Home Assistant integration does (`data`:
WEM3162, `Data`: WEM3080, `Datas` with 3 or 4 rows: WEM3080T, with 2 rows: WEM2067).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ...model.catalogue import (ACTIVE_POWER, CT_RATIO, DEVICE_UPTIME, ENERGY_EXPORTED, ENERGY_IMPORTED, FREQUENCY,
                                JOULES_PER_KWH, PHASE_ACTIVE_POWER, PHASE_CURRENT, PHASE_ENERGY_EXPORTED, PHASE_ENERGY_IMPORTED,
                                PHASE_POWER_FACTOR, PHASE_REACTIVE_ENERGY_CAPACITIVE, PHASE_REACTIVE_ENERGY_INDUCTIVE,
                                PHASE_REACTIVE_POWER, PHASE_VOLTAGE, POWER_FACTOR, REACTIVE_ENERGY_CAPACITIVE,
                                REACTIVE_ENERGY_INDUCTIVE, REACTIVE_POWER, UPLOAD_INTERVAL, UPLOAD_MODE, WIFI_RSSI,
                                WIFI_SIGNAL)
from ...model.jsontext import label_text
from ...model.samples import DeviceInfo, ParseError, Reading, kind_of, number_or_none
from . import registers as reg

MODEL_CODES: dict[int, str] = {
    1: "WEM3080",
    2: "WEM3080T",
    3: "WEM3046T",
    4: "WEM3050T",
    5: "WEM2067",
    6: "WEM3063T",
}
# Phases per model; any model not listed here is recognised by its row count.
PHASES_OF_MODEL: dict[str, int] = {
    "WEM3080": 1,
    "WEM3162": 1,
    "WEM3080T": 3,
    "WEM3046T": 3,
    "WEM3050T": 3,
    "WEM3063T": 3,
    "WEM2067": 2,
}
THREE_PHASE_MODELS = ("WEM3080T", "WEM3046T", "WEM3050T")  # those with the three-phase register map
PHASE_NAMES = ("l1", "l2", "l3")
ROW_LENGTHS = (5, 7)
_METHOD = re.compile(r"^\s*(\d{1,3})\s*-")
# 1 kvarh = 1000 var * 3600 s, the same factor as kWh to J.
VAR_SECONDS_PER_KVARH = JOULES_PER_KWH


@dataclass(frozen=True, slots=True)
class Row:
    """One measurement row; None where the meter sent null or (old firmware) nothing."""

    voltage: float | None
    current: float | None
    power: float | None
    imported_kwh: float | None
    exported_kwh: float | None
    frequency: float | None = None
    power_factor: float | None = None


@dataclass(frozen=True, slots=True)
class ReactiveRow:
    power_var: float | None
    inductive_kvarh: float | None
    capacitive_kvarh: float | None


# --- /api/monitorjson -------------------------------------------------------------------------


def parse_monitorjson(payload: Any) -> Reading:
    """A Reading from the JSON of `/api/monitorjson`, `/monitorjson` or a pushed message."""
    if not isinstance(payload, dict):
        raise ParseError(f"expected a JSON object, got {kind_of(payload)}")
    key = _measurement_key(payload)
    if key is None:
        raise ParseError("no measurement: the answer has none of Data, Datas, data")
    return _parse_measurement(payload, key)


def _measurement_key(payload: dict) -> str | None:
    present = [k for k in ("Datas", "Data", "data") if k in payload]
    if len(present) > 1:
        raise ParseError(f"ambiguous answer: both {present[0]} and {present[1]} present")
    return present[0] if present else None


def _parse_measurement(payload: dict, key: str) -> Reading:
    status = payload.get("status")
    if status is not None and status != "succeed":
        raise ParseError(f"the meter reports status {str(status)[:40]!r}")
    raw = payload[key]
    if raw is None:
        raise ParseError(f"no measurement yet: {key} is null (the meter has just started)")
    if not isinstance(raw, list):
        raise ParseError(f"{key}: expected a list, got {kind_of(raw)}")

    model = _model(payload, key, raw)
    if key == "Datas":
        raw_rows = raw
    elif raw and all(isinstance(item, list) for item in raw):
        raw_rows = raw  # `Data` as a list holding one row
    else:
        raw_rows = [raw]
    if not raw_rows:
        raise ParseError(f"{key}: empty")
    phases = _phase_count(model, key, len(raw_rows))
    rows = [_row(item, f"{key}[{i}]") for i, item in enumerate(raw_rows)]
    phase_rows, net_row = rows[:phases], (rows[phases] if len(rows) > phases else None)
    if all(r is None for r in rows):
        raise ParseError(f"no measurement yet: every row of {key} is null")

    reading = Reading()
    if phases == 1:
        _add_single(reading, phase_rows[0])
    else:
        _add_phases(reading, phase_rows)
    if net_row is not None:
        _add_net(reading, net_row)
    _add_reactive(reading, payload, phases)
    reading.devices.append(_device(payload, model))
    return reading


def _add_single(reading: Reading, row: Row | None) -> None:
    if row is None:
        return
    reading.add(ACTIVE_POWER, row.power)
    reading.add(ENERGY_IMPORTED, _joules(row.imported_kwh))
    reading.add(ENERGY_EXPORTED, _joules(row.exported_kwh))
    reading.add(PHASE_VOLTAGE, row.voltage, phase="l1")
    reading.add(PHASE_CURRENT, row.current, phase="l1")
    reading.add(FREQUENCY, row.frequency)
    reading.add(POWER_FACTOR, row.power_factor)


def _add_net(reading: Reading, row: Row) -> None:
    """The net row: the meter's own totals, named as every transport names them."""
    reading.add(ACTIVE_POWER, row.power)
    reading.add(ENERGY_IMPORTED, _joules(row.imported_kwh))
    reading.add(ENERGY_EXPORTED, _joules(row.exported_kwh))
    reading.add(POWER_FACTOR, row.power_factor)


def _add_phases(reading: Reading, rows: Sequence[Row | None]) -> None:
    frequency = next((r.frequency for r in rows if r is not None and r.frequency is not None), None)
    reading.add(FREQUENCY, frequency)
    for phase, row in zip(PHASE_NAMES, rows):
        if row is None:
            continue
        reading.add(PHASE_VOLTAGE, row.voltage, phase=phase)
        reading.add(PHASE_CURRENT, row.current, phase=phase)
        reading.add(PHASE_ACTIVE_POWER, row.power, phase=phase)
        reading.add(PHASE_ENERGY_IMPORTED, _joules(row.imported_kwh), phase=phase)
        reading.add(PHASE_ENERGY_EXPORTED, _joules(row.exported_kwh), phase=phase)
        reading.add(PHASE_POWER_FACTOR, row.power_factor, phase=phase)


def _add_reactive(reading: Reading, payload: dict, phases: int) -> None:
    ea = payload.get("EA")
    if ea is None:
        return
    if not isinstance(ea, dict):
        raise ParseError(f"EA: expected an object, got {kind_of(ea)}")
    raw = ea.get("Reactive")
    if raw is None:
        return
    if not isinstance(raw, list):
        raise ParseError(f"EA.Reactive: expected a list, got {kind_of(raw)}")
    if phases == 1 and raw and not isinstance(raw[0], list):
        raw = [raw]  # a single-phase meter may send the one triple unwrapped
    # One row per phase; one more (a net row, by analogy with Datas) is tolerated and ignored.
    if len(raw) not in (phases, phases + 1):
        raise ParseError(f"EA.Reactive: {len(raw)} rows for a meter with {phases} phase(s)")
    for index, item in enumerate(raw[:phases]):
        row = _reactive_row(item, f"EA.Reactive[{index}]")
        if row is None:
            continue
        if phases == 1:
            reading.add(REACTIVE_POWER, row.power_var)
            reading.add(REACTIVE_ENERGY_INDUCTIVE, _var_seconds(row.inductive_kvarh))
            reading.add(REACTIVE_ENERGY_CAPACITIVE, _var_seconds(row.capacitive_kvarh))
        else:
            phase = PHASE_NAMES[index]
            reading.add(PHASE_REACTIVE_POWER, row.power_var, phase=phase)
            reading.add(PHASE_REACTIVE_ENERGY_INDUCTIVE, _var_seconds(row.inductive_kvarh), phase=phase)
            reading.add(PHASE_REACTIVE_ENERGY_CAPACITIVE, _var_seconds(row.capacitive_kvarh), phase=phase)


def _row(item: Any, where: str) -> Row | None:
    """A Row, or None for a row of nulls."""
    if not isinstance(item, list):
        raise ParseError(f"{where}: expected a row (list), got {kind_of(item)}")
    if len(item) not in ROW_LENGTHS:
        raise ParseError(f"{where}: {len(item)} values, expected 5 or 7")
    values = [number_or_none(v, f"{where}[{i}]") for i, v in enumerate(item)]
    if all(v is None for v in values):
        return None
    return Row(*values)


def _reactive_row(item: Any, where: str) -> ReactiveRow | None:
    if not isinstance(item, list):
        raise ParseError(f"{where}: expected a row (list), got {kind_of(item)}")
    if len(item) != 3:
        raise ParseError(f"{where}: {len(item)} values, expected 3")
    values = [number_or_none(v, f"{where}[{i}]") for i, v in enumerate(item)]
    if all(v is None for v in values):
        return None
    return ReactiveRow(*values)




def _phase_count(model: str, key: str, rows: int) -> int:
    if key != "Datas":
        if rows != 1:
            raise ParseError(f"{key}: {rows} rows for a single-phase meter")
        return 1
    phases = PHASES_OF_MODEL.get(model)
    if phases is None:
        if rows > 4:
            raise ParseError(f"Datas: {rows} rows, at most 3 phases and a net row expected")
        return 3 if rows == 4 else rows
    if rows not in (phases, phases + 1) or (phases == 1 and rows != 1):
        raise ParseError(f"Datas: {rows} rows for a {model} ({phases} phase(s), plus a net row with NEM)")
    return phases


def _model(payload: dict, key: str, raw: list) -> str:
    named = _text(payload, "model")
    if named:
        return named
    method = _text(payload, "method")
    match = _METHOD.match(method)
    if match:
        return MODEL_CODES.get(int(match.group(1)), "")
    # Legacy "uploadsn" (or nothing): guess from the shape.
    if key == "data":
        return "WEM3162"
    if key == "Data":
        return "WEM3080"
    return {2: "WEM2067", 3: "WEM3080T", 4: "WEM3080T"}.get(len(raw), "")


def _device(payload: dict, model: str) -> DeviceInfo:
    return DeviceInfo(model=model, serial=_text(payload, "SN"), firmware=_text(payload, "version"))


def _text(payload: dict, key: str) -> str:
    """An identity field as text; numbers are accepted (an SN of digits), structures are not."""
    value = payload.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ParseError(f"{key}: expected text, got {kind_of(value)}")
    if isinstance(value, int) and not -10**64 < value < 10**64:
        raise ParseError(f"{key}: number out of range")
    return label_text(str(value).strip(), 64)  # a label value (model, serial, firmware)


def _joules(kwh: float | None) -> float | None:
    return None if kwh is None else kwh * JOULES_PER_KWH


def _var_seconds(kvarh: float | None) -> float | None:
    return None if kvarh is None else kvarh * VAR_SECONDS_PER_KVARH


# --- /api/monitor ---------------------------------------------------------------------------


def parse_monitor(payload: Any) -> Reading:
    """`GET /api/monitor`: the monitorjson document plus `ssid`, `sig` and `model`.

    Before its first measurement the meter answers `null` (or an object whose `Datas` is
    null): that is not an error here, the result simply holds what there is - nothing, or
    only the Wi-Fi signal and the device identity. `sig` is the signal in percent (0..100);
    a negative `sig` is taken as an RSSI in dBm.
    """
    if payload is None:
        return Reading()
    if not isinstance(payload, dict):
        raise ParseError(f"expected a JSON object or null, got {kind_of(payload)}")
    key = _measurement_key(payload)
    if key is not None and payload[key] is not None:
        reading = _parse_measurement(payload, key)
    else:
        reading = Reading()
        if payload.get("SN") is not None or payload.get("model") is not None:
            reading.devices.append(_device(payload, _text(payload, "model")))
    _add_signal(reading, payload)
    return reading


def _add_signal(reading: Reading, payload: dict) -> None:
    signal = number_or_none(payload.get("sig"), "sig")
    if signal is None:
        return
    if signal < 0:
        reading.add(WIFI_RSSI, signal)
    elif signal <= 100:
        reading.add(WIFI_SIGNAL, signal / 100)
    else:
        raise ParseError(f"sig: {signal:g} is neither a percentage nor an RSSI")


# --- /api/wifidata ----------------------------------------------------------------------------

RUN_MODES = {0: "cloud", 1: "tcp", 2: "http", 3: "mqtt", 4: "standalone"}


@dataclass(frozen=True, slots=True)
class WifiData:
    """What `GET /api/wifidata` tells about the meter (identity, network, upload settings)."""

    firmware: str = ""
    serial: str = ""
    mac: str = ""
    device_type: str = ""  # "PM" on meters
    ssid: str = ""
    ip: str = ""
    run_mode: str = ""  # cloud | tcp | http | mqtt | standalone (as the firmware spells it)
    upload_interval: float | None = None  # seconds
    net_metering: bool | None = None
    signal: Reading = field(default_factory=Reading)  # the Wi-Fi figure of `sig`, when sent

    @property
    def device(self) -> DeviceInfo:
        return DeviceInfo(model="", serial=self.serial, firmware=self.firmware)

    def reading(self) -> Reading:
        """The figures worth a series: upload mode and interval, the Wi-Fi signal (network
        settings such as ssid and ip are left out: they name the user's network, not the meter)."""
        reading = Reading(samples=list(self.signal.samples))
        if self.run_mode:
            # Every known mode gets a series, so that a change of mode is a change of value.
            for mode in dict.fromkeys((*RUN_MODES.values(), self.run_mode)):
                reading.add(UPLOAD_MODE, 1 if mode == self.run_mode else 0, mode=mode)
        if self.upload_interval is not None and self.upload_interval > 0:
            reading.add(UPLOAD_INTERVAL, self.upload_interval)
        return reading


def parse_wifidata(payload: Any) -> WifiData:
    """`GET /api/wifidata`. Every field is optional; the run mode may be a name or a number."""
    if not isinstance(payload, dict):
        raise ParseError(f"wifidata: expected a JSON object, got {kind_of(payload)}")
    run_mode: Any = payload.get("runMode")
    if isinstance(run_mode, (int, float)) and not isinstance(run_mode, bool):
        run_mode = RUN_MODES.get(int(run_mode), str(int(run_mode)))
    else:
        run_mode = _text(payload, "runMode")
        if run_mode.lower() in RUN_MODES.values():
            run_mode = run_mode.lower()
    interval = number_or_none(payload.get("uploadinterval", payload.get("uploadInterval")), "uploadinterval")
    netmeter = number_or_none(payload.get("netmeter"), "netmeter")
    signal = Reading()
    _add_signal(signal, payload)
    return WifiData(
        firmware=_text(payload, "version"),
        serial=_text(payload, "SN"),
        mac=_text(payload, "mac"),
        device_type=_text(payload, "type"),
        ssid=_text(payload, "ssid"),
        ip=_text(payload, "ip"),
        run_mode=run_mode,
        upload_interval=interval,
        net_metering=None if netmeter is None else netmeter != 0,
        signal=signal,
    )


# --- /api/ratio (WEM3046T) ------------------------------------------------------------------

_RATIO_KEYS = ("ctratio", "ratio", "ct_ratio", "x")


def parse_ratio(payload: Any) -> Reading:
    """`GET /api/ratio` on a WEM3046T: `{"CTratio": 400}`.

    Tolerant of the spelling of the key (CTratio, ctratio, ratio, x) and of a bare number; a
    setter-style refusal (`{"successful":0,"message":...}`) or anything without a positive
    ratio is an error.
    """
    if isinstance(payload, dict):
        lowered = {str(k).lower(): v for k, v in payload.items()}
        value = next((lowered[k] for k in _RATIO_KEYS if k in lowered), None)
        if value is None:
            message = payload.get("message")
            detail = f": {str(message)[:60]}" if isinstance(message, str) else ""
            raise ParseError(f"ratio: no CT ratio in the answer{detail}")
    else:
        value = payload
    ratio = number_or_none(value, "CTratio")
    if ratio is None or ratio <= 0:
        raise ParseError(f"CTratio: expected a positive number, got {value!r:.40}")
    reading = Reading()
    reading.add(CT_RATIO, ratio)
    return reading


# --- Modbus/TCP registers -------------------------------------------------------------------


def decode_three_phase(registers: Sequence[int], model: str = "") -> Reading:
    """Holding registers from address 0 of a WEM3080T/WEM3046T/WEM3050T.

    At least the 38 core registers (phases, frequency, the meter's totals); 56 or more add the
    reactive block, 66 the runtime. Series names match `parse_monitorjson`, so the same meter
    gives the same series over HTTP and Modbus (within the register resolution). The totals at
    32..37 (algebraic power sum, its import and export counters) are the quantities of the
    JSON's net row: ACTIVE_POWER and ENERGY_IMPORTED/EXPORTED, as there. The registers are
    always there, the net row only with net metering on.
    """
    words = _words(registers, reg.THREE_PHASE_CORE_COUNT)
    kwh = reg.THREE_PHASE_KWH_PER_COUNT
    reading = Reading()
    reading.add(FREQUENCY, words[reg.FREQUENCY] * 0.01)
    for phase, start in zip(PHASE_NAMES, reg.PHASE_BLOCK_STARTS):
        block = words[start:start + 10]
        reading.add(PHASE_VOLTAGE, block[reg.PHASE_VOLTAGE] * 0.01, phase=phase)
        reading.add(PHASE_CURRENT, block[reg.PHASE_CURRENT] * 0.01, phase=phase)
        reading.add(PHASE_ACTIVE_POWER, _s32(block, reg.PHASE_POWER), phase=phase)
        reading.add(PHASE_ENERGY_IMPORTED, _u32(block, reg.PHASE_IMPORT) * kwh * JOULES_PER_KWH, phase=phase)
        reading.add(PHASE_ENERGY_EXPORTED, _u32(block, reg.PHASE_EXPORT) * kwh * JOULES_PER_KWH, phase=phase)
        reading.add(PHASE_POWER_FACTOR, block[reg.PHASE_POWER_FACTOR] * 0.001, phase=phase)
    reading.add(ACTIVE_POWER, _s32(words, reg.TOTAL_POWER))
    reading.add(ENERGY_IMPORTED, _u32(words, reg.TOTAL_IMPORT) * kwh * JOULES_PER_KWH)
    reading.add(ENERGY_EXPORTED, _u32(words, reg.TOTAL_EXPORT) * kwh * JOULES_PER_KWH)
    if len(words) >= reg.THREE_PHASE_REACTIVE_END:
        kvarh = reg.REACTIVE_KVARH_PER_COUNT * VAR_SECONDS_PER_KVARH
        for phase, start in zip(PHASE_NAMES, reg.REACTIVE_BLOCK_STARTS):
            block = words[start:start + 6]
            reading.add(PHASE_REACTIVE_POWER, _s32(block, reg.REACTIVE_POWER), phase=phase)
            reading.add(PHASE_REACTIVE_ENERGY_INDUCTIVE, _u32(block, reg.REACTIVE_INDUCTIVE) * kvarh, phase=phase)
            reading.add(PHASE_REACTIVE_ENERGY_CAPACITIVE, _u32(block, reg.REACTIVE_CAPACITIVE) * kvarh, phase=phase)
    if len(words) >= reg.THREE_PHASE_FULL_COUNT:
        reading.add(DEVICE_UPTIME, _u32(words, reg.RUNTIME))
    if model:
        reading.devices.append(DeviceInfo(model=model))
    return reading


def decode_single_phase(registers: Sequence[int], model: str = "WEM3080") -> Reading:
    """Holding registers 0..7 of a WEM3080 (no frequency, no power factor; 1/3200 kWh)."""
    words = _words(registers, reg.SINGLE_PHASE_COUNT)
    kwh = reg.SINGLE_PHASE_KWH_PER_COUNT
    reading = Reading()
    reading.add(PHASE_VOLTAGE, words[reg.SINGLE_VOLTAGE] * 0.01, phase="l1")
    reading.add(PHASE_CURRENT, words[reg.SINGLE_CURRENT] * 0.01, phase="l1")
    reading.add(ACTIVE_POWER, _s32(words, reg.SINGLE_POWER))
    reading.add(ENERGY_IMPORTED, _u32(words, reg.SINGLE_IMPORT) * kwh * JOULES_PER_KWH)
    reading.add(ENERGY_EXPORTED, _u32(words, reg.SINGLE_EXPORT) * kwh * JOULES_PER_KWH)
    if model:
        reading.devices.append(DeviceInfo(model=model))
    return reading


def looks_single_phase(registers: Sequence[int]) -> bool:
    """Whether a 38-register read came from a single-phase meter that pads with zeros.

    A powered three-phase meter always measures a frequency (register 30) and, with it, the
    phase blocks B and C are not all zero; a WEM3080 that answers the long read at all can
    only fill registers 8..37 with zeros. Used by model detection only.
    """
    words = _words(registers, reg.THREE_PHASE_CORE_COUNT)
    return words[reg.FREQUENCY] == 0 and not any(words[reg.SINGLE_PHASE_COUNT:reg.THREE_PHASE_CORE_COUNT])


def _words(registers: Sequence[int], minimum: int) -> list[int]:
    if isinstance(registers, (str, bytes)) or not isinstance(registers, Sequence):
        raise ParseError(f"registers: expected a list of 16-bit words, got {kind_of(registers)}")
    words = list(registers)
    if len(words) < minimum:
        raise ParseError(f"short read: {len(words)} registers, {minimum} needed")
    for index, word in enumerate(words):
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ParseError(f"register {index}: {word!r:.20} is not a 16-bit word")
    return words


def _u32(words: Sequence[int], offset: int) -> int:
    return reg.u32(words[offset], words[offset + 1])


def _s32(words: Sequence[int], offset: int) -> int:
    return reg.s32(words[offset], words[offset + 1])
