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
fill it. `sum()` stays safe: each meter is one series per name, a single-phase meter gives totals
and a multi-phase meter per-phase series, never both for the same quantity, and a net-metering
row has its own `..._net_...` names (net energy is not the sum of the phase counters). Place
figures (`energyhistory`) carry `place` (the place id, or its name from `places: ["ID=name"]`)
and `day` (current, previous).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ...config.loader import Secret, Settings, TargetConfig, setting
from ...model.errors import PollError
from ...model.jsontext import header_problem
from ...model.samples import ParseError, Reading
from ...runtime.backoff import Backoff, Deadline
from ...runtime.context import AdapterContext
from ...runtime.quota import Limit, QuotaLedger
from ...runtime.state import StateDirectory
from ...transport.http import request, status_error
from ..registry import TransportSpec, register
from . import cloud_parse as cp

DEFAULT_BASE_URL = "https://www.iammeter.com"
API = "/api/v1"

# The seed's quotas, as the ledger counts them.
LOGIN_LIMITS = (Limit(5, 3600, "hour"), Limit(30, 86400, "day"))
METERDATA_LIMITS = (Limit(12, 3600, "hour"), Limit(288, 86400, "day"))
METERSDATA_LIMITS = (Limit(1, 300, "5m"),)
ANALYSIS_LIMITS = (Limit(5, 86400, "day"),)
ENERGY_HISTORY_LIMITS = (Limit(1, 3600, "hour"),)  # self-imposed: the seed names no quota

LOGIN = "iammeter_login"
METERDATA = "iammeter_meterdata"
METERSDATA = "iammeter_metersdata"
POWER_ANALYSIS = "iammeter_poweranalysis"
OFFLINE_ANALYSIS = "iammeter_offlineanalysis"
ENERGY_HISTORY = "iammeter_energyhistory"

SHORT_WAIT = 3.0  # seconds a poll may wait for a call that fits a moment later
SHORT_WAIT_SHARE = 0.3  # ... and at most this share of the poll's timeout
ANALYSIS_SHARE = 0.7  # analysis calls start only before this share of the timeout has passed
MAX_ANALYSIS_CALLS = 2  # per poll
ANALYSIS_RETRY = 3600.0  # after a failed analysis call
ANALYSIS_SETTLE = timedelta(minutes=30)  # the previous day is analysed this long after midnight
HISTORY_REFRESH = 3600.0
MAX_HOLDOFF = 86400.0
LOGIN_REFUSED_PAUSE = 3600.0  # refused credentials are not retried sooner (the quota is 5/hour)
ADVANCED_LIMIT_NOTE = "meterdata and meterdata2 count together"


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterCloudSettings(Settings):
    username: str = setting("str", required=True, help="IAMMETER account (user name)")
    password: Secret = setting("secret", required=True, help="password of the account")
    base_url: str = setting("str", default=DEFAULT_BASE_URL, help="the cloud's address")
    mode: str = setting("str", default="account", choices=("account", "meter"),
                        help="account: metersdata (all meters, 1 call per 5 min); meter: meterdata per SN "
                             "(12 calls per hour per SN)")
    sns: tuple[str, ...] = setting("list", default=(),
                                   help="SNs to export (mode meter: required; account: empty = all)")
    names: tuple[str, ...] = setting("list", default=(), help='meter label per SN, as "SN=name"')
    advanced: bool = setting("bool", default=True, help="mode meter: meterdata2 (with power factor)")
    analysis: bool = setting("bool", default=True,
                             help="also read powerAnalysis/offlineAnalysis (daily) and energyhistory (hourly)")
    places: tuple[str, ...] = setting("list", default=(), help='place ids for energyhistory, "ID" or "ID=name"')
    installation: str = setting("str", default="", help="value of the installation label of the meters")
    timezone: str = setting("str", default="", help="the account's time zone (IANA name; default: the system's)")


OPTIONS = IammeterCloudSettings.table()

_SN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PLACE = re.compile(r"^\d{1,18}$")


@dataclass(frozen=True)
class Quota:
    api: str
    scope: str
    limits: tuple[Limit, ...]

    @property
    def key(self) -> str:
        return f"{self.api}|{self.scope}"

    def describe(self) -> str:
        return ", ".join(limit.describe() for limit in self.limits)

    def holdoff(self) -> Backoff:
        """How long the call is held back after "nothing" answers: its shortest window first,
        doubling while the cloud keeps answering nothing, at most MAX_HOLDOFF. Exact, no jitter:
        the windows are the quota's own."""
        return Backoff(base=min(limit.seconds for limit in self.limits), ceiling=MAX_HOLDOFF)


class QuotaDeferred(PollError):
    """A call not made because it does not fit its quota yet (no request went out)."""

    def __init__(self, message: str) -> None:
        super().__init__("quota", message)


class _TokenInvalid(Exception):
    pass


# --- The client: token, ledger, hold-offs ----------------------------------------------------


class CloudClient:
    """Calls to one account's API. Every call is recorded in the ledger first; the token and
    the hold-offs after "nothing" answers live in the state directory."""

    def __init__(self, session: Any, state: StateDirectory, ledger: QuotaLedger, clock: Callable[[], float],
                 log: Any, base_url: str, username: str, password: Secret | str) -> None:
        self.session = session
        self.state = state
        self.ledger = ledger
        self.clock = clock
        self.log = log
        self.base = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.login_quota = Quota(LOGIN, urlsplit(self.base).netloc or self.base, LOGIN_LIMITS)
        digest = hashlib.sha256(f"{self.base}\n{username}".encode()).hexdigest()[:16]
        self.state_name = f"iammeter-cloud-{digest}.json"
        self.account_id = ""
        self.logins = 0  # made by this client (tests, logs)
        self._token: str | None = None
        self._holdoff: dict[str, list[float]] = {}  # quota key -> [until, seconds]
        self._login_refused_until = 0.0
        self._lock = asyncio.Lock()
        self._load()
        ledger.register(self.login_quota.api, self.login_quota.scope, LOGIN_LIMITS)

    # state ---------------------------------------------------------------------------------
    def _load(self) -> None:
        stored = self.state.read_json(self.state_name)
        if not isinstance(stored, dict):
            return
        token = stored.get("token")
        # A damaged state file must not put a line break into a header: log in again instead.
        if isinstance(token, str) and token and header_problem(token) is None:
            self._token = token
            self.account_id = str(stored.get("account_id") or "")
        holdoff = stored.get("holdoff")
        if isinstance(holdoff, dict):
            for key, value in holdoff.items():
                if (isinstance(value, list) and len(value) == 2
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                    self._holdoff[key] = [float(value[0]), float(value[1])]

    def _save(self) -> None:
        now = self.clock()
        self._holdoff = {k: v for k, v in self._holdoff.items() if v[0] > now - MAX_HOLDOFF}
        self.state.write_json(self.state_name, {
            "version": 1, "token": self._token, "account_id": self.account_id, "holdoff": self._holdoff,
        })

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    # quota -----------------------------------------------------------------------------------
    def held_back(self, quota: Quota) -> float:
        """Seconds this call is still held back after a "nothing" answer (0: not held)."""
        entry = self._holdoff.get(quota.key)
        return max(0.0, entry[0] - self.clock()) if entry else 0.0

    def wait_time(self, quota: Quota) -> float:
        return max(self.ledger.wait_time(quota.api, quota.scope, quota.limits), self.held_back(quota))

    def _acquire(self, quota: Quota | None, what: str) -> None:
        if quota is None:
            return
        held = self.held_back(quota)
        if held > 0:
            raise QuotaDeferred(f"{what}: held back for {held:.0f}s more, since the cloud returned nothing "
                                f"(its answer to a caller over quota: {quota.describe()})")
        try:
            self.ledger.acquire(quota.api, quota.scope, quota.limits)
        except PollError as exc:
            raise QuotaDeferred(f"{what}: {exc.message}") from None

    def _nothing(self, quota: Quota | None, what: str) -> PollError:
        """The cloud answered nothing: hold the call back, log, and the error to raise."""
        detail = ""
        if quota is not None:
            policy, previous = quota.holdoff(), self._holdoff.get(quota.key)
            # (the count of "nothing" answers is not stored, the last hold-off is)
            seconds = policy.after(previous[1]) if previous else policy.delay(1)
            self._holdoff[quota.key] = [self.clock() + seconds, seconds]
            self._save()
            detail = f"; not asking again for {seconds / 60:.0f} min (quota {quota.describe()})"
        self.log.warning("iammeter_cloud_returned_nothing", call=what,
                         api=quota.api if quota else None, scope=quota.scope if quota else None)
        return PollError("quota", f"{what}: the cloud returned nothing, its answer to a caller over quota{detail}")

    def _succeeded(self, quota: Quota | None) -> None:
        if quota is not None and self._holdoff.pop(quota.key, None) is not None:
            self._save()

    # calls -----------------------------------------------------------------------------------
    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return f"{self.base}{API}{path}" + (f"?{query}" if query else "")

    async def get(self, path: str, params: Mapping[str, Any] | None, quota: Quota | None, what: str) -> Any:
        """The `data` of one GET; PollError (reason quota, unauthorized, parse, ...) otherwise."""
        if quota is not None and self.held_back(quota) > 0:
            self._acquire(quota, what)  # raises: do not even log in for a call held back
        token = await self.token()
        self._acquire(quota, what)
        try:
            return await self._get(path, params, token, quota, what)
        except _TokenInvalid:
            self.log.info("iammeter_cloud_token_invalid", call=what)
            self.forget_token(token)
        token = await self.token()
        try:
            self._acquire(quota, what)
        except QuotaDeferred as exc:
            raise QuotaDeferred(f"new token obtained; {exc.message}") from None
        try:
            return await self._get(path, params, token, quota, what)
        except _TokenInvalid:
            self.forget_token(token)
            raise PollError("unauthorized", f"{what}: the cloud refused a token it has just issued") from None

    async def _get(self, path: str, params: Mapping[str, Any] | None, token: str, quota: Quota | None,
                   what: str) -> Any:
        url = self.url(path, params)
        resp = await request(self.session, "GET", url, headers={"token": token, "Accept": "application/json"})
        if resp.status in (401, 403):
            raise _TokenInvalid()
        if resp.status == 204:
            raise self._nothing(quota, what)
        if resp.status == 429:
            raise self._nothing(quota, what)
        if resp.status != 200:
            raise status_error(url, resp)
        try:
            data = cp.unwrap(resp.body, what)
        except cp.NothingReturned:
            raise self._nothing(quota, what) from None
        except cp.ApiRefused as exc:
            if exc.token_invalid:
                raise _TokenInvalid() from None
            raise PollError("http_error", f"{what}: the cloud refused: {exc.message}") from None
        except ParseError as exc:
            raise PollError("parse", f"{url}: {exc}") from None
        self._succeeded(quota)
        return data

    # token -----------------------------------------------------------------------------------
    async def token(self) -> str:
        if self._token:
            return self._token
        async with self._lock:
            if not self._token:
                self._load()  # another target of the same account may have logged in meanwhile
            if not self._token:
                await self._login()
        assert self._token
        return self._token

    def forget_token(self, token: str | None = None) -> None:
        """Drop the token the API called invalid: the next call logs in again, unless another
        target of the account has stored a newer one meanwhile."""
        failed = token or self._token
        self._token = None
        self._load()
        if self._token is None or self._token == failed:
            self._token = None
            self._save()

    async def _login(self) -> None:
        now = self.clock()
        if now < self._login_refused_until:
            raise PollError("unauthorized", f"login: the cloud refused these credentials; not trying again for "
                                            f"{self._login_refused_until - now:.0f}s (logins: {self.login_quota.describe()})")
        self._acquire(self.login_quota, "login")
        url = self.url("/user/login")
        password = self._password.reveal() if isinstance(self._password, Secret) else str(self._password)
        self.logins += 1
        resp = await request(self.session, "POST", url, json_body={"userName": self.username, "password": password},
                             headers={"Accept": "application/json"})
        if resp.status in (204, 429):
            raise self._nothing(self.login_quota, "login")
        if resp.status != 200:
            raise status_error(url, resp)
        try:
            login = cp.parse_login(cp.unwrap(resp.body, "login"))
        except cp.NothingReturned:
            raise self._nothing(self.login_quota, "login") from None
        except cp.ApiRefused as exc:
            self._login_refused_until = self.clock() + LOGIN_REFUSED_PAUSE
            raise PollError("unauthorized", f"login refused: {exc.message}") from None
        except ParseError as exc:
            raise PollError("parse", f"{url}: {exc}") from None
        self._token = login.token
        self.account_id = login.account_id
        self._holdoff.pop(self.login_quota.key, None)
        self._save()
        self.log.info("iammeter_cloud_login", account_id=login.account_id)


def make_client(target: TargetConfig, context: AdapterContext) -> CloudClient:
    ledger = context.ledger or QuotaLedger(context.state, context.clock)
    settings = IammeterCloudSettings.of(target)
    return CloudClient(context.session, context.state, ledger, context.clock, context.log,
                       settings.base_url, settings.username, settings.password)


# --- The adapter -----------------------------------------------------------------------------


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


def check_target(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    base = options.get("base_url")
    if isinstance(base, str):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            yield "base_url", f"{base!r} is not an http(s) address such as {DEFAULT_BASE_URL}"
    sns = tuple(options.get("sns") or ())
    for sn in sns:
        if not _SN.match(sn):
            yield "sns", f"{sn!r} is not a meter SN (letters and digits)"
    if len(set(sns)) != len(sns):
        yield "sns", "an SN is listed twice"
    if options.get("mode") == "meter" and not sns:
        yield "sns", "mode meter reads the meters listed in sns: list at least one (or use mode account)"
    seen = set()
    for entry in options.get("names") or ():
        sn, sep, name = entry.partition("=")
        if not sep or not sn.strip() or not name.strip():
            yield "names", f'{entry!r}: expected "SN=name"'
        elif sn.strip() in seen:
            yield "names", f"{sn.strip()} is named twice"
        seen.add(sn.strip())
    for entry in options.get("places") or ():
        place = entry.partition("=")[0].strip()
        if not _PLACE.match(place):
            yield "places", f'{entry!r}: expected a place id (digits), optionally "ID=name"'
    zone = options.get("timezone")
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            yield "timezone", f"{zone!r} is not a known time zone (e.g. Europe/Berlin, Asia/Shanghai)"


def _window_text(limit: Limit) -> str:
    return {3600: "hour", 86400: "day", 300: "5 minutes"}.get(int(limit.seconds), f"{limit.seconds:g}s")


def check_config(config: Any) -> Iterable[tuple[tuple, str]]:
    """Intervals against the quotas, per account (metersdata) and per SN (meterdata), summed
    over the targets that share one (check_config runs only on a valid configuration, so the
    targets' positions are those of the file)."""
    users: dict[tuple[str, str, str], list[tuple[int, TargetConfig]]] = {}
    for index, target in enumerate(config.targets):
        if (target.vendor, target.transport) != ("iammeter", "cloud"):
            continue
        settings = IammeterCloudSettings.of(target)
        base = settings.base_url.rstrip("/")
        if settings.mode == "account":
            users.setdefault(("metersdata", base, settings.username), []).append((index, target))
        else:
            for sn in settings.sns:
                users.setdefault(("meterdata", base, sn), []).append((index, target))
    for (api, _, scope), sharing in users.items():
        limits = METERSDATA_LIMITS if api == "metersdata" else METERDATA_LIMITS
        for limit in limits:
            calls = sum(limit.seconds / target.interval for _, target in sharing)
            if calls <= limit.calls + 1e-9:
                continue
            needed = limit.seconds / limit.calls
            quota = f"{limit.calls} call{'s' if limit.calls > 1 else ''} per {_window_text(limit)}"
            if api == "meterdata":
                quota += f" per meter ({ADVANCED_LIMIT_NOTE})"
            index, target = sharing[0]
            if len(sharing) == 1:
                message = (f"interval {target.interval:g}s would exceed {api}'s quota of {quota}; "
                           f"use an interval of {needed:g}s or more")
            else:
                names = ", ".join(t.name for _, t in sharing)
                what = f"account {scope}" if api == "metersdata" else f"meter {scope}"
                message = (f"targets {names} share {api}'s quota of {quota} for {what}: together they would "
                           f"call it {calls:.3g} times per {_window_text(limit)}")
            yield ("targets", index, "interval"), message
            break


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
