"""IAMMETER cloud API: transport `cloud`, one target per account, always within the cloud's quotas.

What is called (paths under `base_url`, default `https://www.iammeter.com`):

- `POST /api/v1/user/login` (`userName`, `password`) once; the token is kept in the state
  directory (0600) and reused across restarts. A new login happens only when the API says the
  token is invalid (HTTP 401/403, or `successful: false` with a message about the token).
- mode `account` (default): `GET /api/v1/site/metersdata` (every meter of the account; `sns`
  keeps some of them). Mode `meter`: `GET /api/v1/site/meterdata2/{sn}` per configured SN
  (`advanced: false`: `meterdata/{sn}`, without power factor).
- `analysis: true` (default) adds, each within its own quota: `powerAnalysis` and
  `offlineAnalysis` of every meter for the previous day (once a day per meter, 30 minutes after
  midnight in `timezone`), and `energyhistory` of every configured place, grouped by day (at
  most once an hour per place). At most two of these calls per poll, and only while the poll
  has time left; what does not fit comes with a later poll. Their failures are logged and
  retried an hour later; they never fail the poll.

The token travels in the `token` header (the seed also shows `?token=` in URLs; a header keeps
it out of URLs, which end up in error messages and logs).

Quotas (the seed's; windows are rolling, which is at least as strict as clock hours or days):
login 5 per hour and 30 per day per IP; `meterdata` 12 per hour (288 per day) per SN, counted
together with `meterdata2`; `metersdata` 1 per 5 minutes per account; `powerAnalysis` and
`offlineAnalysis` 5 per day per SN each; `energyhistory` (no published quota) at most once an
hour per place. Every call, logins included, is first recorded in the persisted quota ledger
(`exporter.runtime.quota`), so a restart or a crash loop cannot spend a quota twice: a daemon restarted
20 times in an hour reuses its stored token, and even without it makes at most 5 logins.
A call that does not fit yet is not made: when the wait is short (the poll came a moment early)
the poll waits for it; otherwise the poll returns the meters' last values if they are younger
than two intervals, else it fails with reason `quota` saying when the call fits. An interval
that would break a quota is refused when the configuration is loaded (`check_config`).

"Returns nothing" (the API's answer to a caller over quota: empty body, `null`, or no data) is
recognised, logged, and fails the poll with reason `quota`; the same call is then held back for
the window of its quota (hour, day, 5 minutes), doubling while the cloud keeps answering nothing
(at most a day). Hold-offs are kept with the token, so they survive restarts too.

Labels. One target is one account with many meters, and the catalogue's meter metrics have fixed
label sets, so the account's meters use the `energy_meter_account_*` metrics (the same ones as
the IOmeter Partner API, same units and OBIS codes) with the labels `installation` and `meter`:
`meter` is the SN, or the name given in `names` ("SN=name"); `installation` is the target's
`installation` option (empty by default: IAMMETER's meter APIs do not say which place a meter
belongs to). Adding `meter` to the shared metrics instead would force every other producer to
fill it. `sum()` stays safe: each meter is one series per name, and a meter's totals (its one row, or
a multi-phase meter's net-metering row) and its per-phase series have different names, as
locally (net energy is not the sum of the phase counters, so neither is made from the other). Place
figures (`energyhistory`) carry `place` (the place id, or its name from `places: ["ID=name"]`)
and `day` (current, previous).

The parts: `cloud_settings` (the options and their checks), `cloud_quota` (the seed's limits,
the interval check), `cloud_client` (token, ledger, hold-offs), `cloud_parse` (the answers, pure);
this module is the adapter that decides what to call when.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import quote
from zoneinfo import ZoneInfo

from ...config.loader import TargetConfig
from ...model.errors import PollError
from ...model.samples import ParseError, Reading
from ...runtime.backoff import Deadline
from ...runtime.context import AdapterContext
from ..registry import TransportSpec, register
from . import cloud_parse as cp
from .cloud_client import make_client
from .cloud_quota import (ANALYSIS_LIMITS, ENERGY_HISTORY, ENERGY_HISTORY_LIMITS, METERDATA, METERDATA_LIMITS,
                          METERSDATA, METERSDATA_LIMITS, OFFLINE_ANALYSIS, POWER_ANALYSIS, Quota, QuotaDeferred,
                          check_config)
from .cloud_settings import OPTIONS, IammeterCloudSettings, check_target

SHORT_WAIT = 3.0  # seconds a poll may wait for a call that fits a moment later
SHORT_WAIT_SHARE = 0.3  # ... and at most this share of the poll's timeout
ANALYSIS_SHARE = 0.7  # analysis calls start only before this share of the timeout has passed
MAX_ANALYSIS_CALLS = 2  # per poll
ANALYSIS_RETRY = 3600.0  # after a failed analysis call
ANALYSIS_SETTLE = timedelta(minutes=30)  # the previous day is analysed this long after midnight
HISTORY_REFRESH = 3600.0




@dataclass
class _Analysis:
    day: date  # the day analysed (power/offline) or "today" at fetch time (history)
    fetched_at: float
    reading: Reading


class IammeterCloudAdapter:
    def __init__(self, target: TargetConfig, context: AdapterContext) -> None:
        self._context = context
        self._log = context.log
        self._clock = context.clock
        self._timeout = float(target.timeout)
        self._interval = float(target.interval)
        settings = IammeterCloudSettings.of(target)
        self._mode = settings.mode
        self._sns = tuple(settings.sns)
        self._advanced = settings.advanced
        self._analysis_on = settings.analysis
        self._installation = settings.installation
        self._labels = cp.labels_from(settings.names, self._installation)
        self._places = _places(settings.places)
        self._tz = _zone(settings.timezone)
        self.client = make_client(target, context)
        self._account_scope = self.client.username
        self._cache: dict[str, tuple[float, Any]] = {}
        self._analysis: dict[tuple[str, str], _Analysis] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # tests with a fake clock replace it
        ledger = self.client.ledger
        if self._mode == "account":
            ledger.register(METERSDATA, self._account_scope, METERSDATA_LIMITS)
        else:
            for sn in self._sns:
                ledger.register(METERDATA, sn, METERDATA_LIMITS)
        if self._analysis_on:
            for sn in self._sns:
                ledger.register(POWER_ANALYSIS, sn, ANALYSIS_LIMITS)
                ledger.register(OFFLINE_ANALYSIS, sn, ANALYSIS_LIMITS)
            for place in self._places:
                ledger.register(ENERGY_HISTORY, place, ENERGY_HISTORY_LIMITS)

    def labels(self, sn: str) -> cp.MeterLabels:
        return self._labels.get(sn) or cp.MeterLabels(self._installation, sn)

    async def poll(self) -> Reading:
        async with self._lock:
            deadline = Deadline.from_now(self._timeout)
            if self._mode == "account":
                meters = await self._account_meters(deadline)
            else:
                meters = await self._meter_readings(deadline)
            if self._analysis_on:
                await self._refresh_analysis(list(self._sns or meters), deadline)
            return self._assemble(meters)

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the daemon; the token stays stored."""

    # latest values -------------------------------------------------------------------------
    async def _account_meters(self, deadline: Deadline) -> dict[str, Reading]:
        quota = Quota(METERSDATA, self._account_scope, METERSDATA_LIMITS)

        async def fetch() -> dict[str, Reading]:
            data = await self.client.get("/site/metersdata", None, quota, "metersdata")
            return _parsed(lambda: cp.parse_metersdata(data, self._labels, self._installation,
                                                       set(self._sns) or None), "metersdata")

        meters = await self._fresh("account", quota, deadline, fetch)
        missing = [sn for sn in self._sns if sn not in meters]
        if missing:
            self._log.info("iammeter_cloud_meters_missing", sns=missing)
        return meters

    async def _meter_readings(self, deadline: Deadline) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        deferred: QuotaDeferred | None = None
        endpoint = "meterdata2" if self._advanced else "meterdata"
        for sn in self._sns:
            quota = Quota(METERDATA, sn, METERDATA_LIMITS)

            async def fetch(sn: str = sn, quota: Quota = quota) -> Reading:
                data = await self.client.get(f"/site/{endpoint}/{quote(sn, safe='')}", None, quota, f"{endpoint} {sn}")
                return _parsed(lambda: cp.parse_meterdata(data, sn, self.labels(sn)), f"{endpoint} {sn}")

            try:
                out[sn] = await self._fresh(sn, quota, deadline, fetch)
            except QuotaDeferred as exc:
                self._log.info("iammeter_cloud_meter_deferred", sn=sn, error=exc.message)
                deferred = exc
        if not out and deferred is not None:
            raise deferred
        return out

    async def _fresh(self, key: str, quota: Quota, deadline: Deadline, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """A new answer if its quota allows (waiting a moment if that is all it takes), else the
        last one while it is younger than two intervals."""
        wait = self.client.wait_time(quota)
        if 0 < wait <= min(SHORT_WAIT, deadline.left(SHORT_WAIT_SHARE)):
            await self.sleep(wait)
        try:
            value = await fetch()
        except QuotaDeferred as exc:
            cached = self._cache.get(key)
            if cached is not None and self._clock() - cached[0] <= 2 * self._interval:
                self._log.debug("iammeter_cloud_reusing_last_answer", key=key, reason=exc.message)
                return cached[1]
            raise
        self._cache[key] = (self._clock(), value)
        return value

    # analysis ------------------------------------------------------------------------------
    def _days(self) -> tuple[date, date]:
        """(today, the day to analyse) in the account's time zone."""
        local = datetime.fromtimestamp(self._clock(), self._tz)
        return local.date(), (local - ANALYSIS_SETTLE).date() - timedelta(days=1)

    def _jobs(self, sns: list[str]) -> list[tuple[tuple[str, str], Quota, str, dict, Callable[[Any], Reading], date]]:
        today, day = self._days()
        now = self._clock()
        jobs = []
        # Places first: their figures of the current day change through the day.
        for place, name in self._places.items():
            key = ("history", place)
            have = self._analysis.get(key)
            due = have is None or have.day != today or now - have.fetched_at >= HISTORY_REFRESH
            if due and now >= self._retry_at.get(key, 0.0):
                params = {"place_id": place, "startTime": (today - timedelta(days=1)).isoformat(),
                          "endTime": (today + timedelta(days=1)).isoformat(), "groupby": "day"}
                jobs.append((key, Quota(ENERGY_HISTORY, place, ENERGY_HISTORY_LIMITS),
                             f"/site/energyhistory/{quote(place, safe='')}", params,
                             lambda data, name=name, today=today: cp.parse_energy_history(data, name, today), today))
        for sn in sns:
            labels = self.labels(sn)
            for kind, api, path, parse, extra in (
                ("power", POWER_ANALYSIS, "/site/powerAnalysis", cp.parse_power_analysis, {}),
                ("offline", OFFLINE_ANALYSIS, "/site/offlineAnalysis", cp.parse_offline_analysis, {"interval": 5}),
            ):
                key = (kind, sn)
                have = self._analysis.get(key)
                if (have is None or have.day != day) and now >= self._retry_at.get(key, 0.0):
                    params = {"sn": sn, "startTime": day.isoformat(), "endTime": day.isoformat(), **extra}
                    jobs.append((key, Quota(api, sn, ANALYSIS_LIMITS), path, params,
                                 lambda data, parse=parse, labels=labels: parse(data, labels), day))
        return jobs

    async def _refresh_analysis(self, sns: list[str], deadline: Deadline) -> None:
        calls = 0
        for key, quota, path, params, parse, day in self._jobs(sns):
            budget = deadline.left(ANALYSIS_SHARE)
            if calls >= MAX_ANALYSIS_CALLS or budget <= 0:
                break
            if self.client.wait_time(quota) > 0:
                continue  # its quota is used up for now: a later poll
            calls += 1
            what = f"{quota.api.removeprefix('iammeter_')} {key[1]}"
            try:
                data = await asyncio.wait_for(self.client.get(path, params, quota, what), budget)
                reading = parse(data)
            except (PollError, ParseError, asyncio.TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, PollError) else ("parse" if isinstance(exc, ParseError) else "timeout")
                self._log.info("iammeter_cloud_analysis_failed", call=what, reason=reason, error=str(exc))
                self._retry_at[key] = self._clock() + ANALYSIS_RETRY
                continue
            self._analysis[key] = _Analysis(day, self._clock(), reading)

    def _assemble(self, meters: Mapping[str, Reading]) -> Reading:
        reading = Reading()
        for part in meters.values():
            reading.samples.extend(part.samples)
            reading.devices.extend(part.devices)
        if self._analysis_on:
            today, day = self._days()
            wanted = set(self._sns or meters)
            for (kind, key), analysis in self._analysis.items():
                # Figures of another day than the one they are labelled for are left out.
                current = analysis.day == (today if kind == "history" else day)
                if current and (kind == "history" or key in wanted):
                    reading.samples.extend(analysis.reading.samples)
        return reading


def _parsed(parse: Callable[[], Any], what: str) -> Any:
    try:
        return parse()
    except ParseError as exc:
        raise PollError("parse", f"{what}: {exc}") from None


def _places(entries: Iterable[str]) -> dict[str, str]:
    out = {}
    for entry in entries:
        place, _, name = entry.partition("=")
        out[place.strip()] = name.strip() or place.strip()
    return out


def _zone(name: str) -> tzinfo | None:
    """The account's zone; None = the system's local time (with its daylight saving rules)."""
    return ZoneInfo(name) if name else None


# --- Configuration checks --------------------------------------------------------------------



def create(target: TargetConfig, context: AdapterContext) -> IammeterCloudAdapter:
    return IammeterCloudAdapter(target, context)


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="cloud",
    options=OPTIONS,
    create=create,
    default_interval=300.0,
    min_interval=1.0,  # the quota check gives the reason (check_config)
    # A cloud call takes longer than a LAN read; no jitter, so polls keep the quota's spacing.
    default_overrides={"timeout": 20.0, "jitter": 0.0},
    check_target=check_target,
    check_config=check_config,
    description="IAMMETER cloud API (one account: metersdata or meterdata per SN, analysis, energy history)",
))
