"""A simulated IAMMETER cloud API that enforces the seed's quotas and records every violation.

Endpoints (paths are matched without regard to case or a trailing slash, like the real server):
`POST /api/v1/user/login`, `GET /api/v1/site/metersdata`, `/site/meterdata/{sn}`,
`/site/meterdata2/{sn}`, `/site/meterdatalist/{sn}`, `/site/meterdatalist2/{sn}`,
`/site/powerAnalysis`, `/site/offlineAnalysis`, `/site/energyhistory[/{place}]`. Answers are the
seed's envelopes `{"data": ..., "successful": ..., "message": ...}` with its field names and row
shapes; at the reference time of each meter the values are exactly the seed's (`SEED_*` below,
which the tests and the catalogue check also use). There is no public capture of this API, so
everything comes from the seed document `iammeter-cloud-api.txt`.

Quotas (`CloudLimits`, defaults = the seed's), counted in rolling windows on the injectable
`clock`: login 5 per hour and 30 per day per source IP; meterdata (with meterdata2) 12 per hour
and 288 per day per SN; metersdata once per 5 minutes per account; powerAnalysis and
offlineAnalysis 5 per day per SN; meterdatalist at most 2000 points per call; energyhistory 90
days grouped by day, 7 days by hour. A call over a quota is recorded in `violations` and answered
with nothing (status 200, empty body: the seed's "the API will return nothing"); it still counts
against the window, as a server counting requests would. Every call is in `calls`.

`fault` makes every data call (`/api/v1/site/...`) misbehave until cleared with None:
"status:500", "status:503" (the error status with a plain-text body), "html" (a 200 with an
HTML page, as a maintenance page or a captive portal gives), "nothing" (the over-quota answer,
as `_limited` gives it), a poison of `hostile.BODY_POISONS` (the metersdata answer with one
spot poisoned: see `POISON_SPOTS`), "error_surrogate" (a refusal whose message holds a lone
surrogate). Logins are not affected: a token once issued stays valid.

The token goes in a `token` header or a `token` query parameter. An unknown token is answered
`{"data":null,"successful":false,"message":"Token is invalid or expired"}` (`token_error_status`
200 by default); `expire_tokens()` invalidates every token issued.

Meter values move with the clock: each row's power swings +-10 % around the seed's value over a
day and the energy counters integrate it, so history and latest values agree and counters only
grow. `CloudMeter.offline` lists periods without uploads (for offlineAnalysis and history gaps).

Demo: `python -m simulators.iammeter_cloud --port 8081` (user `test`, password `123456`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from aiohttp import web

from . import hostile

# --- The seed's example bodies ---------------------------------------------------------------

SEED_LOGIN = {"data": {"id": 2025, "token": "349dfxxxxxxac5169", "refreshToken": "8adf75e5da10424985f3b83855133982"},
              "successful": True, "message": None}
SEED_METERDATA_SINGLE = {"data": {"values": [[230.220, 1.300, 119.000, 1766.590, 0.000]],
                                  "localTime": "2020/8/28 15:27:33", "gmtTime": "2020/8/28 5:27:33"},
                         "successful": True, "message": None}
SEED_METERDATA2_SINGLE = {"data": {"values": [[233.41, 0.718, 111, 0.66, 5724.85, 0]],
                                   "localTime": "2023/11/21 14:30:22", "gmtTime": "2023/11/21 6:30:22"},
                          "successful": True, "message": None}
SEED_METERDATA_THREE = {"data": {"values": [[242.600, 1.000, 216.000, 32354.600, 0.000],
                                            [242.600, 1.000, 1986.000, 30536.410, 17704.720],
                                            [0.000, 0.000, 0.000, 0.000, 0.000]],
                                 "localTime": "2020/8/28 15:30:48", "gmtTime": "2020/8/28 5:30:48"},
                        "successful": True, "message": None}
SEED_METERDATA2_THREE = {"data": {"values": [[233.8, 0.03, 4, 0.57, 222.53, 0], [5, 0, 0, 0, 0, 0], [3.1, 0, 0, 0, 0, 0]],
                                  "localTime": "2023/11/21 14:39:36", "gmtTime": "2023/11/21 6:39:36"},
                         "successful": True, "message": None}
SEED_METERDATALIST_SINGLE = {"data": [[227.73, 1.45, 172, 13121.56, 0, "2023/9/12 0:00:34", "2023/9/11 14:00:34"],
                                      [229.43, 1.45, 172, 13121.56, 0, "2023/9/12 0:01:33", "2023/9/11 14:01:33"]],
                             "successful": True, "message": None}
SEED_METERDATALIST_THREE = {"data": [
    [230, 0, 0, 468.41, 0, 230, 0, 0, 236.58, 290.77, 230, 0, 0, 258.62, 0, "2023/9/12 0:00:15", "2023/9/11 16:00:15"],
    [230, 0, 0, 468.41, 0, 230, 0, 0, 236.58, 290.77, 230, 0, 0, 258.62, 0, "2023/9/12 0:02:08", "2023/9/11 16:02:08"],
], "successful": True, "message": None}
SEED_METERDATALIST2 = {"data": [
    {"rtcTime": "2023/9/1 0:00:22", "gmtTime": "2023/8/31 16:00:22",
     "values": [[235.2, 0.03, 4, 0.57, 210.21, 0], [5.5, 0, 0, 0, 0, 0], [3.3, 0, 0, 0, 0, 0]]},
    {"rtcTime": "2023/9/1 8:00:49", "gmtTime": "2023/9/1 0:00:49",
     "values": [[233.4, 0.03, 4, 0.57, 210.24, 0], [5.4, 0, 0, 0, 0, 0], [3.3, 0, 0, 0, 0, 0]]},
    {"rtcTime": "2023/9/1 16:00:24", "gmtTime": "2023/9/1 8:00:24",
     "values": [[235.6, 0.03, 4, 0.57, 210.27, 0], [5.5, 0, 0, 0, 0, 0], [3.4, 0, 0, 0, 0, 0]]},
], "successful": True, "message": None}
SEED_POWER_ANALYSIS = {"data": {"startTime": "2023-09-01", "endTime": "2023-09-07", "average": 862.6,
                                "averageDaytime": 836.9, "minimum": 259.0, "maximum": 3999.0},
                       "successful": True, "message": None}
SEED_OFFLINE_ANALYSIS = {"data": {"startTime": "2023-09-05", "endTime": "2023-09-11", "offlineCount": 906,
                                  "totalCount": 10080, "list": [{"startTime": "2023/9/5 0:00:00",
                                                                 "endTime": "2023/9/5 15:06:14", "duration": 906}]},
                         "successful": True, "message": None}
SEED_METERSDATA = {"data": [
    {"sn": "DA2BED94", "values": [223.71, 1.74, 225, 14761.03, 0], "gmtTime": "2024/2/22 3:46:20"},
    {"sn": "B384789C", "values": [[248.9, 13.9, 3356, 21228, 0, None, None],
                                  [248.9, 13.9, -2747, 8988.48, 18489.44, None, None],
                                  [None, None, None, None, None, None, None],
                                  [248.9, 13.9, -2747, 8988.48, 18489.44, None, None]],
     "gmtTime": "2024/2/22 3:45:15"},
    {"sn": "674B1E5D", "values": [[220.4, 1.86, 377, 5345.985, 20.565], [220.4, 1.86, 377, 5367.715, 0.033],
                                  [220.5, 1.86, 377, 5369.532, 0.033]], "gmtTime": "2024/2/22 3:45:50"},
    {"sn": "59C9AB8D", "values": [[245.3, 6.5, 1604, 46055.7, 0, None, None],
                                  [245.3, 6.5, -910, 15726.73, 8956.56, None, None],
                                  [None, None, None, None, None, None, None],
                                  [245.3, 6.5, -910, 15726.73, 8956.56, None, None]],
     "gmtTime": "2024/2/22 3:45:15"},
    {"sn": "3FE34ABE", "values": [[230, 15.9, 3650.1, 2704.35, 0, 49.99, 0.94],
                                  [230, -11.5, -2650.1, 1411.31, 1722.35, 49.99, 0.94],
                                  [230, 4.3, 1000, 1946.03, 0, 49.99, 0.94]], "gmtTime": "2024/2/22 3:46:01"},
], "successful": True, "message": None}


def _history_rows(rows: list[tuple[str, float, float, float]]) -> dict:
    return {"data": [{"time": t, "yield": y, "fromGrid": f, "toGrid": g, "specialLoad": 0, "selfUse": 0}
                     for t, y, f, g in rows], "successful": True, "message": None}


SEED_ENERGY_HISTORY = {  # groupby=day, 2024-05-05 .. 2024-05-07
    "1360": _history_rows([("2024/5/5 0:00:00", 0, 9.62, 0), ("2024/5/6 0:00:00", 0, 9.16, 0)]),
    "2393": _history_rows([("2024/5/5 0:00:00", 0, 0, 0), ("2024/5/6 0:00:00", 0.1, 0.22, 7.15)]),
}

INVALID_TOKEN = {"data": None, "successful": False, "message": "Token is invalid or expired"}
# Where a hostile mode poisons the metersdata answer of the seed's meters: the first meter's SN,
# its import counter (a single-phase row), the first phase's import of the third meter, the
# first meter's power.
POISON_SPOTS = hostile.Spots(("data", 0, "sn"), ("data", 0, "values", 3), ("data", 2, "values", 0, 3),
                             ("data", 0, "values", 2))
WRONG_PASSWORD = {"data": None, "successful": False, "message": "Incorrect user name or password"}
SWING = 0.1  # power varies +-10 % over a day
DAY = 86400.0


def parse_utc(text: str) -> float:
    return datetime.strptime(text, "%Y/%m/%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def fmt_time(moment: datetime) -> str:
    """The cloud's way of writing a time: `2024/2/22 3:46:20`."""
    return f"{moment.year}/{moment.month}/{moment.day} {moment.hour}:{moment.minute:02}:{moment.second:02}"


# --- Meters and places -----------------------------------------------------------------------


@dataclass
class CloudMeter:
    sn: str
    rows: list[list[float | None]]  # local order (V, I, P, import kWh, export kWh[, Hz, PF]) at `reference`
    reference: float
    flat: bool = False  # metersdata sends the one row unwrapped (single phase)
    upload_second: float = 20.0  # the meter uploads once a minute, this many seconds past it
    offline: list[tuple[float, float]] = field(default_factory=list)  # periods without uploads

    @property
    def phase_rows(self) -> int:
        return 3 if len(self.rows) == 4 else len(self.rows)  # a 4th row is the net row

    def rows_at(self, t: float) -> list[list[float | None]]:
        """The rows at time t: power swings around the seed's, counters integrate it."""
        dt = t - self.reference
        omega = 2 * math.pi / DAY
        out = []
        for row in self.rows:
            power0 = row[2]
            if power0 is None:
                out.append(list(row))
                continue
            power = power0 * (1 + SWING * math.sin(omega * dt))
            kwh = power0 * (dt + SWING * (1 - math.cos(omega * dt)) / omega) / 3.6e6
            new = list(row)
            new[2] = round(power, 1)
            if row[1] is not None and power0:
                new[1] = round(row[1] * power / power0, 3)
            if power0 >= 0 and row[3] is not None:
                new[3] = round(max(0.0, row[3] + kwh), 3)
            elif power0 < 0 and row[4] is not None:
                new[4] = round(max(0.0, row[4] - kwh), 3)
            out.append(new)
        return out

    def total_power_at(self, t: float) -> float:
        return sum(r[2] or 0.0 for r in self.rows_at(t)[: self.phase_rows])

    def is_online(self, t: float) -> bool:
        return not any(start <= t < end for start, end in self.offline)

    def last_upload(self, now: float) -> float | None:
        """When the meter last uploaded (None: never, or offline since before the reference)."""
        t = now - ((now - self.upload_second) % 60.0)
        for _ in range(10080):  # a week of minutes at most
            if self.is_online(t):
                return t
            t -= 60.0
        return None


def seed_meters() -> list[CloudMeter]:
    meters = []
    for item in SEED_METERSDATA["data"]:
        values = item["values"]
        flat = not isinstance(values[0], list)
        rows = [list(values)] if flat else [list(r) for r in values]
        reference = parse_utc(item["gmtTime"])
        meters.append(CloudMeter(item["sn"], rows, reference, flat=flat, upload_second=reference % 60))
    return meters


@dataclass
class Place:
    """One place (site) of the account: daily energy figures in kWh."""

    place_id: str
    solar_kwh: float = 12.0
    load_kwh: float = 9.0
    fixed: dict[date, dict[str, float]] = field(default_factory=dict)

    def day(self, day: date) -> dict[str, float]:
        if day in self.fixed:
            return self.fixed[day]
        wobble = ((day.toordinal() * 7) % 10) / 10  # deterministic day-to-day variation
        produced = round(self.solar_kwh * (0.6 + 0.4 * wobble), 2)
        to_grid = round(produced * 0.55, 2)
        return {"yield": produced, "fromGrid": round(self.load_kwh * (0.8 + 0.3 * wobble), 2), "toGrid": to_grid,
                "specialLoad": 0, "selfUse": round(produced - to_grid, 2)}


def seed_places() -> list[Place]:
    places = []
    for place_id, body in SEED_ENERGY_HISTORY.items():
        fixed = {}
        for row in body["data"]:
            day = datetime.strptime(row["time"], "%Y/%m/%d %H:%M:%S").date()
            fixed[day] = {k: v for k, v in row.items() if k != "time"}
        places.append(Place(place_id, fixed=fixed))
    return places


# --- Quotas ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudLimits:
    """The seed's limits; smaller ones only for demonstrations."""

    login_per_hour: int = 5
    login_per_day: int = 30
    meterdata_per_hour: int = 12
    meterdata_per_day: int = 288
    metersdata_every: float = 300.0
    analysis_per_day: int = 5
    max_points: int = 2000
    history_days_by_day: int = 90
    history_days_by_hour: int = 7

    def windows(self, api: str) -> list[tuple[int, float, str]]:
        return {
            "login": [(self.login_per_hour, 3600.0, "per hour"), (self.login_per_day, DAY, "per day")],
            "meterdata": [(self.meterdata_per_hour, 3600.0, "per hour"), (self.meterdata_per_day, DAY, "per day")],
            "metersdata": [(1, self.metersdata_every, f"per {self.metersdata_every:g}s")],
            "powerAnalysis": [(self.analysis_per_day, DAY, "per day")],
            "offlineAnalysis": [(self.analysis_per_day, DAY, "per day")],
        }.get(api, [])


@dataclass(frozen=True)
class Call:
    time: float
    api: str
    scope: str
    ip: str
    over_quota: bool = False


@dataclass(frozen=True)
class Violation:
    time: float
    api: str
    scope: str
    limit: str
    ip: str


# --- The server ------------------------------------------------------------------------------


class IammeterCloudSimulator:
    def __init__(self, *, clock: Callable[[], float] = time.time, username: str = "test", password: str = "123456",
                 meters: list[CloudMeter] | None = None, places: list[Place] | None = None,
                 limits: CloudLimits | None = None, utc_offset_hours: float = 8.0, account_id: int = 2025,
                 token_error_status: int = 200, nothing_status: int = 200) -> None:
        self.clock = clock
        self.username = username
        self.password = password
        self.meters = {m.sn.upper(): m for m in (seed_meters() if meters is None else meters)}
        self.places = {p.place_id: p for p in (seed_places() if places is None else places)}
        self.limits = limits or CloudLimits()
        self.zone = timezone(timedelta(hours=utc_offset_hours))
        self.account_id = account_id
        self.token_error_status = token_error_status
        self.nothing_status = nothing_status
        self.fault: str | None = None
        self.calls: list[Call] = []
        self.violations: list[Violation] = []
        self.tokens: set[str] = set()
        self._history: dict[tuple[str, str], list[float]] = {}  # call times per (api, scope), in order
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def calls_of(self, api: str) -> list[Call]:
        return [c for c in self.calls if c.api == api]

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- dispatch -------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        lowered = [p.lower() for p in parts]
        if lowered[:2] != ["api", "v1"] or len(parts) < 4:
            raise web.HTTPNotFound()
        group, name, rest = lowered[2], lowered[3], parts[4:]
        if (group, name) == ("user", "login"):
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            return await self._login(request)
        if group != "site" or request.method != "GET":
            raise web.HTTPNotFound()
        if self.fault is not None:
            return self._faulty(self.fault)
        token = request.headers.get("token") or next(
            (v for k, v in request.query.items() if k.lower() == "token"), "")
        if token not in self.tokens:
            return self._json(INVALID_TOKEN, status=self.token_error_status)
        query = {k.lower(): v for k, v in request.query.items()}
        ip = request.remote or ""
        if name == "metersdata" and not rest:
            return self._limited("metersdata", self.username, ip) or self._metersdata()
        if name in ("meterdata", "meterdata2") and len(rest) == 1:
            meter = self.meters.get(rest[0].upper())
            return self._limited("meterdata", rest[0].upper(), ip) or self._meterdata(meter, advanced=name == "meterdata2")
        if name in ("meterdatalist", "meterdatalist2") and len(rest) == 1:
            return self._meterdatalist(self.meters.get(rest[0].upper()), query, ip, advanced=name == "meterdatalist2")
        if name in ("poweranalysis", "offlineanalysis") and not rest:
            api = "powerAnalysis" if name == "poweranalysis" else "offlineAnalysis"
            sn = query.get("sn", "").upper()
            return self._limited(api, sn, ip) or self._analysis(api, self.meters.get(sn), query)
        if name == "energyhistory" and len(rest) <= 1:
            place = rest[0] if rest else query.get("place_id", "")
            return self._energy_history(place, query, ip)
        raise web.HTTPNotFound()

    def _limited(self, api: str, scope: str, ip: str) -> web.Response | None:
        """Count the call; the "nothing" answer when it is over a quota (and the violation noted)."""
        now = self.clock()
        over = []
        history = self._history.setdefault((api, scope), [])
        for calls, seconds, text in self.limits.windows(api):
            inside = sum(1 for t in reversed(history[-calls - 1:]) if now - t < seconds)
            if inside >= calls:
                over.append(f"{calls} {text}")
        history.append(now)
        self.calls.append(Call(now, api, scope, ip, bool(over)))
        if not over:
            return None
        self.violations.append(Violation(now, api, scope, ", ".join(over), ip))
        return web.Response(status=self.nothing_status, body=b"", content_type="application/json")

    def _faulty(self, fault: str) -> web.Response:
        if fault.startswith("status:"):
            return web.Response(status=int(fault[7:]), text="Service Unavailable" if fault == "status:503"
                                else "Internal Server Error")
        if fault == "html":
            return web.Response(text="<!DOCTYPE html><html><head><title>Maintenance</title></head><body>"
                                     "<h1>IAMMETER is being upgraded</h1></body></html>", content_type="text/html")
        if fault == "nothing":
            return web.Response(status=self.nothing_status, body=b"", content_type="application/json")
        if fault in hostile.BODY_POISONS:
            answer = json.loads(self._metersdata().body)  # type: ignore[arg-type]
            return web.Response(body=hostile.poisoned(answer, fault, POISON_SPOTS), content_type="application/json")
        if fault == "error_surrogate":
            refusal = {"data": None, "successful": False, "message": f"Meter offline{hostile.SURROGATE}"}
            return web.Response(body=hostile.dumps(refusal), content_type="application/json")
        raise ValueError(f"unknown fault {fault!r}")

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                            content_type="application/json", charset="utf-8")

    def _ok(self, data: Any) -> web.Response:
        return self._json({"data": data, "successful": True, "message": None})

    def _error(self, message: str) -> web.Response:
        return self._json({"data": None, "successful": False, "message": message})

    # --- endpoints ----------------------------------------------------------------------------
    async def _login(self, request: web.Request) -> web.Response:
        ip = request.remote or ""
        try:
            if request.content_type == "application/json":
                body = await request.json()
            else:
                body = dict(await request.post())
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        fields = {str(k).lower(): v for k, v in body.items()}
        refusal = self._limited("login", ip, ip)
        if refusal is not None:
            return refusal
        if fields.get("username") != self.username or fields.get("password") != self.password:
            return self._json(WRONG_PASSWORD)
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return self._ok({"id": self.account_id, "token": token, "refreshToken": secrets.token_hex(16)})

    def _local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.zone)

    def _metersdata(self) -> web.Response:
        now = self.clock()
        data = []
        for meter in self.meters.values():
            at = meter.last_upload(now)
            if at is None:
                continue
            rows = meter.rows_at(at)
            data.append({"sn": meter.sn, "values": rows[0] if meter.flat else rows,
                         "gmtTime": fmt_time(datetime.fromtimestamp(at, timezone.utc))})
        return self._ok(data)

    def _meterdata(self, meter: CloudMeter | None, advanced: bool) -> web.Response:
        if meter is None:
            return self._error("The meter does not exist or does not belong to this account")
        at = meter.last_upload(self.clock())
        if at is None:
            return self._ok(None)
        rows = [self._advanced_row(r) if advanced else r[:5] for r in meter.rows_at(at)]
        return self._ok({"values": rows, "localTime": fmt_time(self._local(at)),
                         "gmtTime": fmt_time(datetime.fromtimestamp(at, timezone.utc))})

    @staticmethod
    def _advanced_row(row: list[float | None]) -> list[float | None]:
        factor = row[6] if len(row) > 6 else None
        return [row[0], row[1], row[2], factor, row[3], row[4]]

    def _days(self, query: dict[str, str], default_days: int = 7) -> tuple[date, date] | None:
        try:
            start = date.fromisoformat(query["starttime"][:10]) if query.get("starttime") else None
            end = date.fromisoformat(query["endtime"][:10]) if query.get("endtime") else None
        except ValueError:
            return None
        today = self._local(self.clock()).date()
        end = end or (start if start else today)
        start = start or end - timedelta(days=default_days - 1)
        return (start, end) if start <= end else None

    def _midnight(self, day: date) -> float:
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()

    def _meterdatalist(self, meter: CloudMeter | None, query: dict[str, str], ip: str, advanced: bool) -> web.Response:
        if meter is None:
            return self._error("The meter does not exist or does not belong to this account")
        days = self._days(query, default_days=1)
        try:
            interval = int(query.get("interval", "300"))
        except ValueError:
            interval = 0
        if days is None or interval < 60:
            return self._error("Invalid parameters: startTime, endTime (yyyy-MM-dd) and interval (seconds, >= 60)")
        start, end = self._midnight(days[0]), self._midnight(days[1] + timedelta(days=1))  # end date included
        points = int((end - start) // interval)
        api = "meterdatalist2" if advanced else "meterdatalist"
        self.calls.append(Call(self.clock(), api, meter.sn, ip, points > self.limits.max_points))
        if points > self.limits.max_points:
            self.violations.append(Violation(self.clock(), api, meter.sn, f"{self.limits.max_points} points per call", ip))
            return self._error(f"Too many data points ({points}); at most {self.limits.max_points} per request")
        now = self.clock()
        data = []
        phases = meter.phase_rows
        for k in range(points):
            t = start + k * interval + meter.upload_second
            if t > now or not meter.is_online(t):
                continue
            rows = meter.rows_at(t)[:phases]
            utc, local = fmt_time(datetime.fromtimestamp(t, timezone.utc)), fmt_time(self._local(t))
            if advanced:
                data.append({"rtcTime": local, "gmtTime": utc, "values": [self._advanced_row(r) for r in rows]})
            else:
                data.append([v for r in rows for v in r[:5]] + [utc, local])
        return self._ok(data)

    def _analysis(self, api: str, meter: CloudMeter | None, query: dict[str, str]) -> web.Response:
        if meter is None:
            return self._error("The meter does not exist or does not belong to this account")
        days = self._days(query)
        if days is None:
            return self._error("Invalid parameters: startTime and endTime (yyyy-MM-dd)")
        start, end = self._midnight(days[0]), self._midnight(days[1] + timedelta(days=1))
        head = {"startTime": days[0].isoformat(), "endTime": days[1].isoformat()}
        if api == "powerAnalysis":
            samples = [(t, meter.total_power_at(t)) for t in _steps(start, end, 300.0)]
            daytime = [p for t, p in samples if 8 <= self._local(t).hour < 20]
            powers = [p for _, p in samples]
            return self._ok({**head, "average": round(sum(powers) / len(powers), 1),
                             "averageDaytime": round(sum(daytime) / len(daytime), 1) if daytime else 0.0,
                             "minimum": round(min(powers), 1), "maximum": round(max(powers), 1)})
        try:
            gap = float(query.get("interval", "5")) * 60
        except ValueError:
            gap = 300.0
        gaps = []
        offline = 0.0
        for a, b in meter.offline:
            a, b = max(a, start), min(b, end)
            if b <= a:
                continue
            offline += b - a
            if b - a > gap:
                gaps.append({"startTime": fmt_time(self._local(a)), "endTime": fmt_time(self._local(b)),
                             "duration": round((b - a) / 60)})
        return self._ok({**head, "offlineCount": round(offline / 60), "totalCount": round((end - start) / 60),
                         "list": gaps})

    def _energy_history(self, place_id: str, query: dict[str, str], ip: str) -> web.Response:
        self.calls.append(Call(self.clock(), "energyhistory", place_id, ip))
        place = self.places.get(place_id)
        if place is None:
            return self._error("The place does not exist or does not belong to this account")
        group = query.get("groupby", "day").lower() or "day"
        days = self._days(query)
        if days is None or group not in ("day", "hour"):
            return self._error("Invalid parameters: startTime, endTime (yyyy-MM-dd) and groupby (day/hour)")
        first, stop = days  # the end date is not included (the seed: 5-5 .. 5-7 gives 5-5 and 5-6)
        span = (stop - first).days
        most = self.limits.history_days_by_day if group == "day" else self.limits.history_days_by_hour
        if span > most:
            self.violations.append(Violation(self.clock(), "energyhistory", place_id, f"{most} days by {group}", ip))
            return self._error(f"The time range is too long: at most {most} days grouped by {group}")
        rows = []
        for n in range(span):
            day = first + timedelta(days=n)
            values = place.day(day)
            if group == "day":
                rows.append({"time": f"{day.year}/{day.month}/{day.day} 0:00:00", **values})
            else:
                for hour in range(24):
                    share = {k: round(v / 24, 3) for k, v in values.items()}
                    rows.append({"time": f"{day.year}/{day.month}/{day.day} {hour}:00:00", **share})
        return self._ok(rows)


def _steps(start: float, end: float, step: float):
    t = start
    while t < end:
        yield t
        t += step


async def _demo(port: int) -> None:
    sim = IammeterCloudSimulator()
    await sim.start(port)
    print(f"IAMMETER cloud on {sim.base_url}/api/v1 (user {sim.username}, password {sim.password}); "
          f"meters {', '.join(sim.meters)}; places {', '.join(sim.places)}")
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate the IAMMETER cloud API (with its quotas).")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_demo(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
