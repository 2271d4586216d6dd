"""IAMMETER cloud API (`https://www.iammeter.com/api/v1/...`): pure parsers of every response.

Every answer is an envelope `{"data": ..., "successful": true|false, "message": text|null}`.
`unwrap` checks it and tells three outcomes apart, because they call for different actions:

- the data (`successful` true and `data` present);
- `ApiRefused`: `successful` false with a message (wrong password, unknown SN, token invalid:
  `token_invalid` says whether a new login may help);
- `NothingReturned`: the API "returns nothing" when a caller is over its hourly or daily quota
  (seed: "If the call counts exceeds the hourly or daily limitation, the API will return
  nothing"). Nothing is an empty body (with 200 or 204), a bare `null`, `{}`, or an envelope
  whose `data` is null without a refusal. It is never parsed as zeros.

Meter values reuse the local parser (`parse.parse_monitorjson`), because the cloud's rows are the
meter's own upload rows: `[voltage V, current A, active power W, import kWh, export kWh,
frequency Hz, power factor]`, 5 or 7 long, nulls where the meter measured nothing, one row per
phase and a 4th net-metering row. So the same validation applies (row lengths, number types,
phase counts) and a row means the same in both. The differences handled here:

- `metersdata` sends a single-phase meter's row unwrapped (a flat list), a multi-phase meter as
  a list of rows; `meterdata` always sends a list of rows.
- `meterdata2` and `meterdatalist2` (the "advanced" variants, with power factor) order a row as
  `[voltage, current, power, power factor, import kWh, export kWh]` (6 values); it is reordered.
- `meterdatalist` rows are flat: the values of every phase (5 each) then the UTC time and the
  local time.
- Times: `gmtTime` is UTC, written `2024/2/22 3:46:20`; local times are ignored.

One meter of an account becomes `energy_meter_account_*` series labelled `installation` and
`meter` (see `cloud.py` for why), in the same shape as the local series: a single-phase meter's
row gives the meter's totals plus phase l1 voltage and current; a multi-phase meter gives per
phase series, and its net row the meter's totals (`energy_meter_account_active_power_watts`,
`..._account_energy_imported/exported_joules_total`) and the system power factor, as locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Collection, Iterable, Mapping

from ...model.catalogue import (ACCOUNT_AVERAGE_POWER, ACCOUNT_DAYTIME_AVERAGE_POWER, ACCOUNT_MAXIMUM_POWER,
                                ACCOUNT_MEASUREMENT_TIME, ACCOUNT_MINIMUM_POWER, ACCOUNT_OFFLINE_ANALYSIS_PERIOD,
                                ACCOUNT_OFFLINE_GAPS, ACCOUNT_OFFLINE_TIME, ACTIVE_POWER, ENERGY_EXPORTED,
                                ENERGY_IMPORTED, FREQUENCY, JOULES_PER_KWH, PHASE_ACTIVE_POWER, PHASE_CURRENT,
                                PHASE_ENERGY_EXPORTED, PHASE_ENERGY_IMPORTED, PHASE_POWER_FACTOR, PHASE_VOLTAGE,
                                PLACE_DAILY_GRID_EXPORT, PLACE_DAILY_GRID_IMPORT, PLACE_DAILY_SELF_USE,
                                PLACE_DAILY_SPECIAL_LOAD, PLACE_DAILY_YIELD, POWER_FACTOR, Metric, account_twin)
from ...model.jsontext import header_problem, label_text, loads
from ...model.samples import DeviceInfo, ParseError, Reading, checked_object, kind_of, number_or_none
from .parse import parse_monitorjson

# The local parser's metric -> the account metric of the same quantity.
ACCOUNT_OF: dict[Metric, Metric] = {metric: account_twin(metric) for metric in (
    ACTIVE_POWER, ENERGY_IMPORTED, ENERGY_EXPORTED, FREQUENCY, POWER_FACTOR, PHASE_VOLTAGE, PHASE_CURRENT,
    PHASE_ACTIVE_POWER, PHASE_POWER_FACTOR, PHASE_ENERGY_IMPORTED, PHASE_ENERGY_EXPORTED)}
ADVANCED_ROW_LENGTH = 6  # meterdata2 / meterdatalist2: V, I, P, PF, import, export
PHASE_VALUES = 5  # values per phase in a flat meterdatalist row
MAX_PHASE_ROWS = 4  # three phases and the net row
_TOKEN_WORDS = re.compile(r"token|log\s*in|unauthori[sz]ed|not\s+authori|expired|sign\s*in", re.IGNORECASE)
_TIME = re.compile(r"^\s*(\d{4})[/-](\d{1,2})[/-](\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.\d+)?)?)?\s*(Z|[+-]00:?00)?\s*$")


class NothingReturned(Exception):
    """The API answered nothing: its way of saying a quota is used up."""


class ApiRefused(Exception):
    """`successful: false`. `token_invalid`: the message is about the token or the login."""

    def __init__(self, message: str, token_invalid: bool) -> None:
        super().__init__(message)
        self.message = message
        self.token_invalid = token_invalid


def is_nothing(body: bytes) -> bool:
    """Whether a body is the API's "nothing" (empty, whitespace, `null`, `""` or `{}`)."""
    return body.strip() in (b"", b"null", b'""', b"{}")


def unwrap(body: bytes, what: str = "answer") -> Any:
    """The `data` of an answer; NothingReturned, ApiRefused or ParseError otherwise."""
    if is_nothing(body):
        raise NothingReturned(what)
    payload = loads(body, what)  # JsonError is a ParseError
    if not isinstance(payload, dict):
        raise ParseError(f"{what}: expected a JSON object, got {kind_of(payload)}")
    successful = payload.get("successful")
    message = payload.get("message")
    text = label_text(message.strip(), 200) if isinstance(message, str) else ""  # shown in messages
    if successful is False or (type(successful) is int and successful == 0):
        return _refused(text)
    if successful not in (None, True, 1):
        raise ParseError(f"{what}: successful: expected true or false, got {kind_of(successful)}")
    if "data" not in payload:
        raise ParseError(f"{what}: no data in the answer")
    data = payload["data"]
    if data is None:
        if text:  # no data, but a reason: a refusal without `successful: false`
            return _refused(text)
        raise NothingReturned(what)
    return data


def _refused(message: str) -> Any:
    raise ApiRefused(message or "(no message)", bool(_TOKEN_WORDS.search(message)))


# --- login ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    token: str
    account_id: str = ""


def parse_login(data: Any) -> Login:
    """`POST /api/v1/user/login`: `{"id": 2025, "token": "...", "refreshToken": "..."}`."""
    obj = checked_object(data, "login")
    token = obj.get("token")
    if not isinstance(token, str) or not token.strip():
        raise ParseError("login: no token in the answer")
    if len(token) > 4096 or header_problem(token.strip()) is not None:
        raise ParseError("login: the token is not a plain string")
    account = obj.get("id")
    if isinstance(account, bool) or not isinstance(account, (str, int, type(None))):
        raise ParseError(f"login: id: expected a number or text, got {kind_of(account)}")
    if isinstance(account, int) and not -10**64 < account < 10**64:
        raise ParseError("login: id: number out of range")
    return Login(token.strip(), "" if account is None else label_text(str(account), 64))


# --- latest values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterLabels:
    """How one meter is labelled: `installation` (the target's) and `meter` (name or SN)."""

    installation: str
    meter: str


def meter_reading(rows: list[list[Any]], sn: str, labels: MeterLabels, measured_at: float | None,
                  where: str) -> Reading:
    """Series of one meter from its rows (local order, 5 or 7 values each)."""
    reading = Reading()
    reading.devices.append(DeviceInfo(serial=sn, meter=labels.meter))
    if not rows or all(v is None for row in rows for v in row):
        return reading  # a meter that has sent nothing yet: identity only, no series
    payload = {"Data": rows[0]} if len(rows) == 1 else {"Datas": rows}
    try:
        local = parse_monitorjson(payload)
    except ParseError as exc:
        message = str(exc).replace("Datas", "values").replace("Data", "values")
        raise ParseError(f"{where}: {message}") from None
    for sample in local.samples:
        extra = {k: v for k, v in sample.labels if k != "obis"}
        reading.add(ACCOUNT_OF[sample.metric], sample.value, installation=labels.installation,
                    meter=labels.meter, **extra)
    reading.add(ACCOUNT_MEASUREMENT_TIME, measured_at, installation=labels.installation, meter=labels.meter)
    return reading


def parse_meterdata(data: Any, sn: str, labels: MeterLabels) -> Reading:
    """`GET /site/meterdata/{sn}` (rows of 5) or `/site/meterdata2/{sn}` (rows of 6, with PF):
    `{"values": [[...], ...], "localTime": ..., "gmtTime": ...}`."""
    where = f"meterdata {sn}"
    obj = checked_object(data, where)
    raw = obj.get("values")
    if raw is None:
        raise ParseError(f"{where}: no values")
    rows = _rows(raw, f"{where}: values", flat_allowed=True)
    return meter_reading(rows, sn, labels, _optional_time(obj.get("gmtTime"), f"{where}: gmtTime"), where)


@dataclass(frozen=True, slots=True)
class AccountMeter:
    sn: str
    rows: list[list[Any]]
    measured_at: float | None


def parse_metersdata_list(data: Any) -> list[AccountMeter]:
    """`GET /site/metersdata`: one entry per meter of the account, `{"sn", "values", "gmtTime"}`;
    `values` is a flat row (single phase) or a list of rows. A meter listed twice is an error."""
    if not isinstance(data, list):
        raise ParseError(f"metersdata: expected a list, got {kind_of(data)}")
    out: list[AccountMeter] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        where = f"metersdata[{index}]"
        obj = checked_object(item, where)
        sn = _sn(obj.get("sn"), f"{where}.sn")
        if sn in seen:
            raise ParseError(f"{where}: meter {sn} listed twice")
        seen.add(sn)
        raw = obj.get("values")
        rows = [] if raw is None else _rows(raw, f"{where} ({sn}): values", flat_allowed=True)
        out.append(AccountMeter(sn, rows, _optional_time(obj.get("gmtTime"), f"{where}.gmtTime")))
    return out


def parse_metersdata(data: Any, label_of: Mapping[str, MeterLabels], installation: str = "",
                     only: Collection[str] | None = None) -> dict[str, Reading]:
    """Readings per SN of a `metersdata` answer; `only` keeps the listed SNs (None: all).
    `label_of[sn]` gives the labels of a meter; one not in it is labelled by its SN."""
    out: dict[str, Reading] = {}
    for index, meter in enumerate(parse_metersdata_list(data)):
        if only is not None and meter.sn not in only:
            continue
        labels = label_of.get(meter.sn) or MeterLabels(installation, meter.sn)
        out[meter.sn] = meter_reading(meter.rows, meter.sn, labels, meter.measured_at,
                                      f"metersdata[{index}] ({meter.sn})")
    return out


# --- history ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    time: float  # Unix time (from the UTC time of the point)
    rows: list[list[Any]]


def parse_meterdatalist(data: Any, sn: str = "") -> list[HistoryPoint]:
    """`GET /site/meterdatalist/{sn}` (flat rows: the phases' values, 5 each, then UTC time and
    local time) or `/site/meterdatalist2/{sn}` (objects with `gmtTime`, `rtcTime` and `values`,
    rows of 6). Points in time order; a time given twice keeps the last point."""
    where = f"meterdatalist {sn}".strip()
    if not isinstance(data, list):
        raise ParseError(f"{where}: expected a list, got {kind_of(data)}")
    points: dict[float, HistoryPoint] = {}
    for index, item in enumerate(data):
        at = f"{where}[{index}]"
        if isinstance(item, dict):
            moment = parse_time(item.get("gmtTime"), f"{at}.gmtTime")
            raw = item.get("values")
            if raw is None:
                raise ParseError(f"{at}: no values")
            rows = _rows(raw, f"{at}.values", flat_allowed=True)
        elif isinstance(item, list):
            if len(item) < PHASE_VALUES + 2:
                raise ParseError(f"{at}: {len(item)} elements, expected the values and two times")
            moment = parse_time(item[-2], f"{at}: UTC time")
            values = item[:-2]
            if len(values) % PHASE_VALUES or len(values) > PHASE_VALUES * MAX_PHASE_ROWS:
                raise ParseError(f"{at}: {len(values)} values, expected 5 per phase")
            rows = [values[i:i + PHASE_VALUES] for i in range(0, len(values), PHASE_VALUES)]
            for r, row in enumerate(rows):
                _check_values(row, f"{at} row {r}")
        else:
            raise ParseError(f"{at}: expected a row or an object, got {kind_of(item)}")
        points[moment] = HistoryPoint(moment, rows)
    return [points[t] for t in sorted(points)]


def history_reading(point: HistoryPoint, sn: str, labels: MeterLabels) -> Reading:
    """The series of one history point (same names as the live ones, no measurement time: the
    point's own time is its timestamp)."""
    return meter_reading(point.rows, sn, labels, None, f"meterdatalist {sn} at {point.time:.0f}")


# --- analysis --------------------------------------------------------------------------------


def parse_power_analysis(data: Any, labels: MeterLabels) -> Reading:
    """`GET /site/powerAnalysis`: average, daytime average (8:00-20:00), minimum, maximum (W)."""
    obj = checked_object(data, "powerAnalysis")
    reading = Reading()
    kw = {"installation": labels.installation, "meter": labels.meter}
    for key, metric in (("average", ACCOUNT_AVERAGE_POWER), ("averageDaytime", ACCOUNT_DAYTIME_AVERAGE_POWER),
                        ("minimum", ACCOUNT_MINIMUM_POWER), ("maximum", ACCOUNT_MAXIMUM_POWER)):
        reading.add(metric, number_or_none(obj.get(key), f"powerAnalysis.{key}"), **kw)
    low = reading.value_of(ACCOUNT_MINIMUM_POWER)
    high = reading.value_of(ACCOUNT_MAXIMUM_POWER)
    if low is not None and high is not None and low > high:
        raise ParseError(f"powerAnalysis: minimum {low:g} W above maximum {high:g} W")
    return reading


def parse_offline_analysis(data: Any, labels: MeterLabels) -> Reading:
    """`GET /site/offlineAnalysis`: `offlineCount` minutes offline out of `totalCount` (the
    minutes of the period analysed), and `list`, the gaps longer than the request's interval."""
    obj = checked_object(data, "offlineAnalysis")
    offline = number_or_none(obj.get("offlineCount"), "offlineAnalysis.offlineCount")
    total = number_or_none(obj.get("totalCount"), "offlineAnalysis.totalCount")
    if total is not None and total < 0:
        raise ParseError(f"offlineAnalysis: totalCount {total:g} is negative")
    if offline is not None and (offline < 0 or (total is not None and offline > total)):
        raise ParseError(f"offlineAnalysis: {offline:g} offline minutes out of {total if total is not None else '?'}")
    gaps = obj.get("list")
    if gaps is not None and not isinstance(gaps, list):
        raise ParseError(f"offlineAnalysis.list: expected a list, got {kind_of(gaps)}")
    reading = Reading()
    kw = {"installation": labels.installation, "meter": labels.meter}
    reading.add(ACCOUNT_OFFLINE_TIME, None if offline is None else offline * 60, **kw)
    reading.add(ACCOUNT_OFFLINE_ANALYSIS_PERIOD, None if total is None else total * 60, **kw)
    reading.add(ACCOUNT_OFFLINE_GAPS, None if gaps is None else len(gaps), **kw)
    return reading


_HISTORY_FIELDS = (("yield", PLACE_DAILY_YIELD), ("fromGrid", PLACE_DAILY_GRID_IMPORT),
                   ("toGrid", PLACE_DAILY_GRID_EXPORT), ("selfUse", PLACE_DAILY_SELF_USE),
                   ("specialLoad", PLACE_DAILY_SPECIAL_LOAD))


def parse_energy_history(data: Any, place: str, today: date) -> Reading:
    """`GET /site/energyhistory` grouped by day: kWh per day and flow. The rows of `today`
    (day="current") and of the day before (day="previous") are kept, other days ignored."""
    if not isinstance(data, list):
        raise ParseError(f"energyhistory {place}: expected a list, got {kind_of(data)}")
    days = {today: "current", today - timedelta(days=1): "previous"}
    seen: set[date] = set()
    reading = Reading()
    for index, item in enumerate(data):
        where = f"energyhistory {place}[{index}]"
        obj = checked_object(item, where)
        moment = _local_time(obj.get("time"), f"{where}.time")
        day = moment.date()
        if day in seen:
            raise ParseError(f"{where}: day {day} listed twice (expected a daily history)")
        seen.add(day)
        for key, metric in _HISTORY_FIELDS:
            kwh = number_or_none(obj.get(key), f"{where}.{key}")
            if kwh is not None and kwh < 0:
                raise ParseError(f"{where}.{key}: negative energy {kwh:g}")
            if day in days:
                reading.add(metric, None if kwh is None else kwh * JOULES_PER_KWH, place=place, day=days[day])
    return reading


# --- helpers ---------------------------------------------------------------------------------


def parse_time(value: Any, what: str) -> float:
    """Unix time of a UTC time written `2024/2/22 3:46:20` (or `2024-02-22T03:46:20Z`)."""
    return _local_time(value, what).replace(tzinfo=timezone.utc).timestamp()


def _local_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise ParseError(f"{what}: expected a time, got {kind_of(value)}")
    match = _TIME.match(value)
    if not match:
        raise ParseError(f"{what}: {value[:40]!r} is not a time")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in match.groups()[:6])
    try:
        return datetime(y, mo, d, h, mi, s)
    except ValueError:
        raise ParseError(f"{what}: {value[:40]!r} is not a valid time") from None


def _optional_time(value: Any, what: str) -> float | None:
    return None if value is None else parse_time(value, what)


def _rows(raw: Any, where: str, flat_allowed: bool) -> list[list[Any]]:
    """Rows in the local order from a list of rows or (flat_allowed) one unwrapped row."""
    if not isinstance(raw, list):
        raise ParseError(f"{where}: expected a list, got {kind_of(raw)}")
    if not raw:
        return []
    if all(isinstance(item, list) for item in raw):
        items = raw
    elif flat_allowed and not any(isinstance(item, (list, dict)) for item in raw):
        items = [raw]
    else:
        raise ParseError(f"{where}: mixes rows and single values")
    if len(items) > MAX_PHASE_ROWS:
        raise ParseError(f"{where}: {len(items)} rows, at most 3 phases and a net row expected")
    rows = []
    for index, row in enumerate(items):
        _check_values(row, f"{where}[{index}]")
        if len(row) == ADVANCED_ROW_LENGTH:
            voltage, current, power, factor, imported, exported = row
            row = [voltage, current, power, imported, exported, None, factor]
        rows.append(list(row))
    return rows


def _check_values(row: list[Any], where: str) -> None:
    for index, value in enumerate(row):
        if isinstance(value, (list, dict)):
            raise ParseError(f"{where}[{index}]: expected a number, got {kind_of(value)}")


def _sn(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParseError(f"{what}: expected a serial number, got {kind_of(value)}")
    text = str(value).strip()
    if not text or len(text) > 64 or not text.isprintable():
        raise ParseError(f"{what}: {text[:70]!r} is not a serial number")
    return text


def labels_from(names: Iterable[str], installation: str) -> dict[str, MeterLabels]:
    """`["SN=name", ...]` (the target's `names`) as labels per SN."""
    out: dict[str, MeterLabels] = {}
    for entry in names:
        sn, _, name = entry.partition("=")
        out[sn.strip()] = MeterLabels(installation, name.strip() or sn.strip())
    return out
