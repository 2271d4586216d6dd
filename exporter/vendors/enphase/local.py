"""IQ Gateway (Envoy) local API transport.

`/info` (no auth) tells the firmware: below 7 the gateway speaks plain HTTP and wants Digest
auth on some endpoints (user `envoy` with the last six digits of the serial, or `installer`);
from 7 on it speaks HTTPS with a self-signed certificate and wants a JWT as a bearer token (see
`token.py` for where tokens come from and when they are renewed).

Each endpoint has its own cadence: CT readings every poll, the microinverters every five
minutes (they report no more often), `/info` and the CT list every hour, the rest every minute.
`poll()` reads what is due, one request at a time, and merges the cached results of the rest
into one Reading. Where several endpoints give the same quantity, the first endpoint of
`ENDPOINTS` that gives any series of a metric provides all of that metric's series, so one
name never mixes two sources (the README lists which endpoint wins for what).

An endpoint that answers 404 (or an HTML page where JSON belongs) is switched off for an hour.
A 401 is checked against `/auth/check_jwt`: if the gateway accepts the token there, the endpoint
only refuses this account (some are for installers) and is switched off for an hour too;
otherwise the token is renewed once, and if that does not help the poll fails and the exporter
does not ask Enlighten again for a while (15 minutes). An Enlighten that cannot be reached, or
that answers with an error, is asked again at the next poll instead: the target recovers at the
first poll after Enlighten is back.

The gateway is unresponsive for a while around 23:00 local time every night. Failures inside
`nightly_window` are expected: logged at info level once, retried with the usual backoff, and
the poll gives the device's identity but no measurements, so the target stays up and shows a
gap rather than an error (or a frozen value).

TLS: the gateway's certificate is self-signed, so no CA can vouch for it. Pin it with
`tls_fingerprint` (SHA-256 of the certificate; the error message of a failed handshake shows
the one the gateway presents), or turn checks off with `tls_verify: false`, which is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp

from ...config.loader import Option, TargetConfig
from ...model.catalogue import TOKEN_EXPIRY
from ...model.errors import PollError
from ...model.samples import ParseError, Reading
from ...runtime.backoff import Backoff
from ...runtime.context import AdapterContext
from ...transport.http import Response, request, status_error
from ...transport.peercert import colon_hex, peer_fingerprint
from ..registry import TransportSpec, register
from . import parse
from .digest import DigestAuth
from .token import ENLIGHTEN_URL, TOKEN_URL, TOKEN_WEB_PAGE, TokenError, TokenInfo, TokenStore, fetch_token, token_info

INFO_REFRESH = 3600.0  # firmware upgrades switch the auth scheme
METERS_REFRESH = 3600.0  # the CT configuration rarely changes
OFF_FOR = 3600.0  # an endpoint that answered 404 (or refused the account) is not asked again for this long
AUTH_BACKOFF = 900.0  # after a refused token or Digest login, wait this long before trying again
RENEW_RETRY = 3600.0  # a renewal ahead of expiry that failed is retried after at most this long
NIGHTLY_WINDOW = "22:45-23:30"  # around the gateway's nightly unresponsive period (local time)
NIGHT_REASONS = frozenset({"timeout", "connection", "http_error"})  # how that period shows
# In that period a poll gives up at this share of its timeout, before the scheduler would count
# a failure.
NIGHT_SHARE_OF_TIMEOUT = 0.8


@dataclass(frozen=True)
class Endpoint:
    name: str  # also what `disable` takes
    path: str
    cadence: float  # seconds between reads; 0 = every poll
    stagger: int = 0  # first read this many polls after the first, to keep the first poll short
    fallback_of: tuple[str, ...] = ()  # read only while all of these are unavailable
    needs_cts: bool = False


# Order = precedence: the first endpoint that gives any series of a metric gives all of them.
# CT readings (every poll) beat the minute-by-minute system figures; the gateway's own battery
# figures (live data) beat the ones computed from the units (inventory). The staggers spread
# the first reads over the first polls, so no poll reads everything at once.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("meters_readings", "/ivp/meters/readings", 0, needs_cts=True),
    Endpoint("production_json", "/production.json?details=1", 60),
    Endpoint("api_v1_production", "/api/v1/production", 60, fallback_of=("production_json",)),
    Endpoint("production_page", "/production", 60, fallback_of=("production_json", "api_v1_production")),
    Endpoint("livedata", "/ivp/livedata/status", 60, stagger=3),
    Endpoint("pdm_energy", "/ivp/pdm/energy", 60, stagger=4),
    Endpoint("consumption_report", "/ivp/meters/reports/consumption", 60, stagger=5, needs_cts=True),
    Endpoint("grid_reading", "/ivp/meters/gridReading", 60, stagger=1, needs_cts=True),
    Endpoint("inverters", "/api/v1/production/inverters", 300, stagger=1),
    Endpoint("inventory", "/ivp/ensemble/inventory", 60, stagger=2),
    Endpoint("device_list", "/ivp/ensemble/device_list", 60, stagger=6),
)
ENDPOINT_NAMES = tuple(e.name for e in ENDPOINTS)

OPTIONS = {
    "host": Option("str", required=True, help="address of the gateway (envoy.local or an IP), optionally host:port"),
    "token": Option("secret", help=f"access token (JWT) from {TOKEN_WEB_PAGE}; or token_file"),
    "username": Option("str", help="Enlighten account (e-mail), to fetch and renew tokens"),
    "password": Option("secret", help="Enlighten password (or password_file)"),
    "serial": Option("str", help="gateway serial number (default: the one /info reports)"),
    "tls_fingerprint": Option("str", help="SHA-256 fingerprint of the gateway's certificate (hex, colons allowed)"),
    "tls_verify": Option("bool", default=True, help="false turns certificate checks off (logged); prefer tls_fingerprint"),
    "digest_user": Option("str", default="envoy", choices=("envoy", "installer"), help="firmware < 7: Digest user"),
    "digest_password": Option("secret", help="firmware < 7: Digest password (envoy: default the last 6 digits of the serial)"),
    "enlighten_url": Option("str", default=ENLIGHTEN_URL, help="Enlighten login service (tests point it elsewhere)"),
    "token_url": Option("str", default=TOKEN_URL, help="Enphase token service (tests point it elsewhere)"),
    "renew_margin": Option("duration", help="renew the token this long before it expires (default: 1/12 of its lifetime, at most 30 days)"),
    "disable": Option("list", help=f"endpoints never to read: {', '.join(ENDPOINT_NAMES)}"),
    "nightly_window": Option("str", default=NIGHTLY_WINDOW,
                             help="local time span (HH:MM-HH:MM) in which the gateway's failures are expected "
                                  "(its nightly unresponsive period); 'off' treats them as errors"),
    "timezone": Option("str", help="the gateway's time zone for nightly_window (default: this host's)"),
}


@dataclass(frozen=True)
class Window:
    """A daily span of local time, in minutes after midnight; may wrap past midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_window(text: str | None) -> Window | None:
    """`HH:MM-HH:MM` -> Window; None for `off` or empty; ValueError when malformed."""
    if text is None or text.strip().lower() in ("", "off", "none", "false"):
        return None
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not match:
        raise ValueError("expected HH:MM-HH:MM (local time), or off")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError("hours 0-23, minutes 0-59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError("the window is empty")
    return Window(start, end)


def normalize_fingerprint(text: str) -> str | None:
    """64 lower-case hex digits from `AB:CD:...`, `abcd...` or `AB CD ...`; None if malformed."""
    digits = re.sub(r"[\s:]", "", text).lower()
    return digits if re.fullmatch(r"[0-9a-f]{64}", digits) else None


def check_target(options: Mapping[str, Any]):
    host = options.get("host") or ""
    if "://" in host or "/" in host:
        yield "host", "give the gateway's name or address only (the exporter picks http or https from its firmware)"
    fingerprint = options.get("tls_fingerprint")
    if fingerprint is not None and normalize_fingerprint(fingerprint) is None:
        yield "tls_fingerprint", "expected a SHA-256 fingerprint: 64 hex digits, colons allowed"
    if fingerprint and options.get("tls_verify") is False:
        yield "tls_verify", "give tls_fingerprint (pinning) or tls_verify: false, not both"
    if bool(options.get("username")) != bool(options.get("password")):
        yield "password" if options.get("username") else "username", "username and password go together (Enlighten login)"
    token = options.get("token")
    if token:
        try:
            token_info(token.reveal())
        except TokenError as exc:
            yield "token", f"not a usable gateway token: {exc}"
    if options.get("digest_user") == "installer" and not options.get("digest_password"):
        yield "digest_password", "the installer user needs its password (digest_password)"
    for key in ("enlighten_url", "token_url"):
        value = options.get(key)
        if value and not re.match(r"^https?://[^/\s]+", value):
            yield key, "expected an http(s):// URL"
    for name in options.get("disable") or ():
        if name not in ENDPOINT_NAMES:
            yield "disable", f"unknown endpoint {name!r} (one of: {', '.join(ENDPOINT_NAMES)})"
    try:
        parse_window(options.get("nightly_window"))
    except ValueError as exc:
        yield "nightly_window", str(exc)
    zone = options.get("timezone")
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            yield "timezone", f"unknown time zone {zone!r} (use a name such as America/Los_Angeles)"


@dataclass
class _State:
    next_due: float = 0.0
    off_until: float = 0.0
    reading: Reading | None = None
    read_at: float = 0.0


@dataclass
class _Night:
    """Failures inside the nightly window, for the backoff."""

    failures: int = 0
    retry_at: float = 0.0


class EnphaseLocal:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        self.log = ctx.log
        self.host: str = target.option("host")
        self.clock: Callable[[], float] = ctx.clock or time.time
        self.disabled = set(target.option("disable", ()) or ())
        self.store = TokenStore(ctx.state, target.name)
        self.renew_margin: float | None = target.option("renew_margin")
        self.enlighten_url: str = target.option("enlighten_url", ENLIGHTEN_URL)
        self.token_url: str = target.option("token_url", TOKEN_URL)
        self.username: str | None = target.option("username")
        self._password = target.option("password")
        configured = target.option("token")
        # A token the loader let through but that cannot be used (a token_file rewritten with a
        # line break in it) fails each poll with reason `config`; the message never quotes it.
        self._token_problem: str | None = None
        try:
            self.configured_token: TokenInfo | None = token_info(configured.reveal()) if configured else None
        except TokenError as exc:
            self.configured_token = None
            self._token_problem = f"the configured token is not usable: {exc}"
        fingerprint = target.option("tls_fingerprint")
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.tls_verify: bool = target.option("tls_verify", True)
        if self.fingerprint:
            self._ssl: Any = aiohttp.Fingerprint(bytes.fromhex(self.fingerprint))
        elif not self.tls_verify:
            self._ssl = False
            self.log.warning("TLS certificate checks of the gateway are off (tls_verify: false), by configuration; "
                             "pin the certificate with tls_fingerprint instead")
        else:
            self._ssl = None

        self.info: parse.GatewayInfo | None = None
        self.info_read_at = 0.0
        self.scheme = "https"
        self.meters: dict[int, parse.MeterConfig] = {}
        self.meters_due = 0.0
        self.meters_off_until = 0.0
        self.states = {e.name: _State() for e in ENDPOINTS}
        self.polls = 0
        self.token: TokenInfo | None = None
        self.no_renew_before = 0.0
        self.next_renew_try = 0.0
        self.renewals = 0
        self._renewal: asyncio.Future | None = None
        self._renewed_this_poll = False
        self._digest: DigestAuth | None = None
        self._warned_expiry = False
        self._accepted_this_poll = False  # a request with the current token got a 200 this poll
        self._jwt_check: tuple[str, bool] | None = None  # /auth/check_jwt's verdict this poll
        self._told_livedata_stale = False
        self.window = parse_window(target.option("nightly_window", NIGHTLY_WINDOW))
        zone = target.option("timezone")
        self.tz = ZoneInfo(zone) if zone else None
        self.night: _Night | None = None
        # Retries in that period: the interval, doubling from the second failure on, up to
        # max_backoff. No jitter: the scheduler's poll times have theirs, and a retry_at that
        # moved past a poll would cost a whole interval.
        self.night_retry = Backoff(base=target.interval, ceiling=target.max_backoff)

    # --- the poll ----------------------------------------------------------------------------

    async def poll(self) -> Reading:
        now = self.clock()
        if not self._in_window(now):
            self.night = None
            return await self._poll(now)
        # The gateway's nightly unresponsive period: failures are expected, not errors.
        night = self.night or _Night()
        if now < night.retry_at:
            return self._identity()
        try:
            async with asyncio.timeout(self.target.timeout * NIGHT_SHARE_OF_TIMEOUT):
                reading = await self._poll(now)
        except TimeoutError:
            failure = f"no answer within {self.target.timeout * NIGHT_SHARE_OF_TIMEOUT:g}s"
        except PollError as exc:
            if exc.reason not in NIGHT_REASONS:
                raise
            failure = exc.message
        else:
            if night.failures:
                self.log.info("the gateway answers again after its nightly unresponsive period",
                              failed_polls=night.failures)
            self.night = None
            return reading
        night.failures += 1
        night.retry_at = now + self.night_retry.delay(night.failures)
        self.night = night
        log = self.log.info if night.failures == 1 else self.log.debug
        log("the gateway does not answer in its nightly unresponsive period (expected); no measurements "
            "until it does", window=str(self.window), error=failure, retry_in_s=round(night.retry_at - now, 1))
        return self._identity()

    def _in_window(self, now: float) -> bool:
        if self.window is None:
            return False
        local = dt.datetime.fromtimestamp(now, self.tz) if self.tz else dt.datetime.fromtimestamp(now)
        return self.window.contains(local.hour * 60 + local.minute)

    def _identity(self) -> Reading:
        """What a poll gives while the gateway is not asked: who it is, no measurements."""
        reading = Reading()
        if self.info:
            reading.devices.extend(self.info.reading().devices)
        if self.info and self.info.needs_token and self.token:
            reading.add(TOKEN_EXPIRY, self.token.expires_at)
        return reading

    async def _poll(self, now: float) -> Reading:
        if self._token_problem is not None:
            raise PollError("config", self._token_problem)
        self._renewed_this_poll = False
        self._accepted_this_poll = False
        self._jwt_check = None
        if self.info is None or now - self.info_read_at >= INFO_REFRESH:
            await self._read_info(now)
        assert self.info is not None
        if self.info.needs_token:
            await self._ensure_token(now)
        if now >= self.meters_due and now >= self.meters_off_until:
            await self._read_meters(now)
        first = self.polls == 0
        for endpoint in ENDPOINTS:
            state = self.states[endpoint.name]
            if first and endpoint.stagger:
                state.next_due = now + endpoint.stagger * self.target.interval
            if self._active(endpoint, now) and now >= state.next_due:
                await self._read(endpoint, state, now)
        self.polls += 1
        return self._merge(now)

    def _active(self, endpoint: Endpoint, now: float) -> bool:
        if endpoint.name in self.disabled or self.states[endpoint.name].off_until > now:
            return False
        if endpoint.needs_cts and not any(m.enabled and m.label for m in self.meters.values()):
            return False
        if endpoint.fallback_of:
            others = [e for e in ENDPOINTS if e.name in endpoint.fallback_of]
            return not any(self._active(e, now) for e in others)
        return True

    def _merge(self, now: float) -> Reading:
        merged = self._identity()
        claimed: set[str] = set()
        for endpoint in ENDPOINTS:
            state = self.states[endpoint.name]
            if state.reading is None or not self._active(endpoint, now):
                continue
            if now - state.read_at > 3 * max(endpoint.cadence, self.target.interval):
                continue  # too old to pass for the present
            # One source per metric: the first endpoint that has it gives all its series.
            merged.samples.extend(s for s in state.reading.samples if s.metric.name not in claimed)
            claimed.update(s.metric.name for s in state.reading.samples)
        return merged

    # --- endpoints --------------------------------------------------------------------------

    async def _read_info(self, now: float) -> None:
        errors: list[PollError] = []
        # Firmware 7+ answers on HTTPS (its plain HTTP only redirects); older firmware on HTTP.
        # The scheme that worked last time goes first.
        for scheme in (self.scheme, "http" if self.scheme == "https" else "https"):
            try:
                resp = await self._send(scheme, "/info", {})
            except PollError as exc:
                errors.append(exc)
                continue
            if resp.status == 200:
                try:
                    info = parse.parse_info(resp.body)
                except ParseError as exc:
                    raise PollError("parse", f"{self._url(scheme, '/info')}: {exc}") from None
                break
            if resp.status not in (301, 302, 303, 307, 308):
                errors.append(status_error(self._url(scheme, "/info"), resp))
        else:
            # HTTPS failures explain more than the plain-HTTP redirect or refusal after them.
            errors.sort(key=lambda e: e.reason != "tls")
            raise errors[0] if errors else PollError("http_error", f"{self._url('http', '/info')}: only redirects")
        old = self.info
        self.info, self.info_read_at = info, now
        self.scheme = "https" if info.needs_token else "http"
        if old is None or old.firmware != info.firmware:
            self.log.info("gateway identified", serial=info.serial, firmware=info.firmware,
                          auth="token" if info.needs_token else "digest")
        if old is not None and old.needs_token != info.needs_token:
            self.token, self._digest = None, None
        configured = self.target.option("serial")
        if configured and configured != info.serial:
            self.log.warning("the gateway reports another serial than configured", configured=configured,
                             reported=info.serial)

    async def _read_meters(self, now: float) -> None:
        path = "/ivp/meters"
        resp = await self._get(path)
        self.meters_due = now + METERS_REFRESH
        if (resp.status == 404 or (resp.status == 200 and _looks_like_html(resp.body))
                or await self._refuses_account(resp)):
            self.meters, self.meters_off_until = {}, now + OFF_FOR
            return
        try:
            self._check_status(path, resp, now)
        except PollError as exc:
            if exc.reason == "unauthorized":
                self.meters_due = now  # again on the next poll (the scheduler backs off)
            raise
        try:
            self.meters = parse.parse_meters(resp.json())
        except ParseError as exc:
            raise PollError("parse", f"{self._url(self.scheme, path)}: {exc}") from None

    async def _read(self, endpoint: Endpoint, state: _State, now: float) -> None:
        # A failure must not make the next poll hammer the same endpoint.
        state.next_due = now + endpoint.cadence
        resp = await self._get(endpoint.path)
        if resp.status == 404 or (resp.status == 200 and endpoint.path != "/production" and _looks_like_html(resp.body)):
            self.log.info("endpoint not available on this gateway; switched off for a while",
                          endpoint=endpoint.path, status=resp.status, retry_in_s=OFF_FOR)
            state.off_until, state.reading = now + OFF_FOR, None
            return
        if await self._refuses_account(resp):
            self.log.info("the gateway accepts the token but refuses it for this endpoint (it may be for "
                          "installers only); switched off for a while", endpoint=endpoint.path,
                          status=resp.status, user_type=self.token.user_type if self.token else None,
                          retry_in_s=OFF_FOR)
            state.off_until, state.reading = now + OFF_FOR, None
            return
        try:
            self._check_status(endpoint.path, resp, now)
        except PollError as exc:
            if exc.reason == "unauthorized":
                # Refused credentials fail every poll until fixed (the scheduler backs off);
                # other errors wait for the endpoint's next turn.
                state.next_due = now
            raise
        url = self._url(self.scheme, endpoint.path)
        try:
            state.reading = self._parse(endpoint, resp, now)
        except ParseError as exc:
            raise PollError("parse", f"{url}: {exc}") from None
        state.read_at = now

    def _parse(self, endpoint: Endpoint, resp: Response, now: float) -> Reading:
        phases = parse.gateway_phase_count(self.meters)
        name = endpoint.name
        if name == "production_page":
            return parse.parse_production_page(resp.body, phases)
        payload = resp.json()
        if name == "meters_readings":
            return parse.parse_meter_readings(payload, self.meters)
        if name == "production_json":
            return parse.parse_production_json(payload, phases)
        if name == "api_v1_production":
            return parse.parse_api_v1_production(payload)
        if name == "inverters":
            return parse.parse_inverters(payload)
        if name == "inventory":
            return parse.parse_ensemble_inventory(payload)
        if name == "livedata":
            reading = parse.parse_livedata(payload, now)
            updated = parse.livedata_updated_at(payload)
            if not reading.samples and updated and not self._told_livedata_stale:
                self._told_livedata_stale = True
                self.log.info("the gateway's live data stream is off, so /ivp/livedata/status holds old figures; "
                              "they are not exported (the Enphase app turns the stream on while its live view "
                              "is open)", updated=_iso(updated))
            return reading
        if name == "pdm_energy":
            return parse.parse_pdm_energy(payload)
        if name == "consumption_report":
            return parse.parse_meter_reports(payload, phases)
        if name == "grid_reading":
            return parse.parse_grid_reading(payload, phases)
        if name == "device_list":
            return parse.parse_device_list(payload)
        raise AssertionError(name)  # pragma: no cover

    def _check_status(self, path: str, resp: Response, now: float) -> None:
        if resp.status == 200:
            return
        url = self._url(self.scheme, path)
        if resp.status == 401:
            self.no_renew_before = max(self.no_renew_before, now + AUTH_BACKOFF)
            if self.info and self.info.needs_token:
                hint = (" even after fetching a new token" if self._renewed_this_poll else
                        "; set username and password so the exporter can fetch a new one, or paste a new token"
                        if not self._credentials else "")
                raise PollError("unauthorized", f"{url}: the gateway refused the token (HTTP 401){hint}")
            user = self._digest.username if self._digest else self.target.option("digest_user", "envoy")
            raise PollError("unauthorized", f"{url}: the gateway refused Digest user {user!r} (HTTP 401); "
                                            "check digest_user / digest_password")
        raise status_error(url, resp)

    # --- requests -----------------------------------------------------------------------------

    def _url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.host}{path}"

    async def _send(self, scheme: str, path: str, headers: Mapping[str, str]) -> Response:
        url = self._url(scheme, path)
        try:
            return await request(self.ctx.session, "GET", url, headers=headers,
                                 ssl_context=self._ssl if scheme == "https" else None)
        except PollError as exc:
            if scheme == "https" and (exc.reason == "tls" or "FingerprintMismatch" in exc.message):
                raise await self._tls_error(url, exc) from None
            raise

    async def _get(self, path: str) -> Response:
        """GET with the gateway's auth: bearer token (firmware 7+) or Digest (older)."""
        assert self.info is not None
        headers = {"Accept": "application/json"}
        if self.info.needs_token:
            resp = await self._bearer_get(path, headers)
            # A 401 with a token the gateway accepts is about this endpoint, not the token.
            if resp.status == 401 and not await self._token_accepted() and await self._recover_token():
                resp = await self._bearer_get(path, headers)
            return resp
        digest = self._digest_auth()
        header = digest.authorization("GET", path)
        resp = await self._send(self.scheme, path, {**headers, **({"Authorization": header} if header else {})})
        if resp.status == 401 and digest.accept(_header(resp.headers, "WWW-Authenticate")):
            # First challenge, or a stale nonce: answer it once.
            resp = await self._send(self.scheme, path, {**headers, "Authorization": digest.authorization("GET", path) or ""})
        return resp

    async def _bearer_get(self, path: str, headers: Mapping[str, str]) -> Response:
        assert self.token is not None
        resp = await self._send(self.scheme, path, {**headers, "Authorization": f"Bearer {self.token.token}"})
        if resp.status == 200:
            self._accepted_this_poll = True
        return resp

    async def _token_accepted(self) -> bool:
        """Whether the gateway takes the current token: some request with it got a 200 this poll,
        or `/auth/check_jwt` (which answers 200 for a valid token) says so. Asked once a poll."""
        if self._accepted_this_poll:
            return True
        assert self.token is not None
        if self._jwt_check is not None and self._jwt_check[0] == self.token.token:
            return self._jwt_check[1]
        resp = await self._send(self.scheme, "/auth/check_jwt", {"Authorization": f"Bearer {self.token.token}"})
        self._jwt_check = (self.token.token, resp.status == 200)
        return self._jwt_check[1]

    async def _refuses_account(self, resp: Response) -> bool:
        """A 401/403 from an endpoint while the gateway accepts the token: the endpoint is not
        for this account (installer-only, or not on this model), not an authentication failure."""
        if resp.status not in (401, 403) or self.info is None or not self.info.needs_token or self.token is None:
            return False
        return await self._token_accepted()

    def _digest_auth(self) -> DigestAuth:
        if self._digest is None:
            assert self.info is not None
            user = self.target.option("digest_user", "envoy")
            password = self.target.option("digest_password")
            secret = password.reveal() if password else (self.target.option("serial") or self.info.serial)[-6:]
            self._digest = DigestAuth(user, secret)
        return self._digest

    async def _tls_error(self, url: str, exc: PollError) -> PollError:
        """A TLS failure, with the fingerprint the gateway presents so the user can pin it."""
        seen = await self._peer_fingerprint()
        shown = colon_hex(seen) if seen else None
        if self.fingerprint:
            detail = (f"the gateway's certificate ({shown}) does not match tls_fingerprint" if shown else
                      "the certificate could not be checked against tls_fingerprint")
            return PollError("tls", f"{url}: {detail}")
        hint = (f"; the gateway's certificate is self-signed: if {shown} is its fingerprint (compare with "
                "the gateway's certificate in a browser), set tls_fingerprint to it") if shown else ""
        return PollError("tls", f"{exc.message}{hint}")

    async def _peer_fingerprint(self) -> str | None:
        return await peer_fingerprint(*_split_host(self.host, 443), timeout=3)

    # --- tokens ---------------------------------------------------------------------------------

    @property
    def _credentials(self) -> bool:
        return bool(self.username and self._password)

    def _serial(self) -> str | None:
        return self.target.option("serial") or (self.info.serial if self.info else None)

    def _initial_token(self, now: float) -> TokenInfo | None:
        stored = self.store.load(self._serial())
        candidates = [t for t in (self.configured_token, stored) if t is not None]
        valid = [t for t in candidates if t.expires_at > now]
        if valid:
            return max(valid, key=lambda t: t.expires_at)
        return candidates[0] if candidates else None

    async def _ensure_token(self, now: float) -> None:
        if self.token is None:
            self.token = self._initial_token(now)
        token = self.token
        if token is None:
            if not self._credentials:
                raise PollError("config", f"firmware {self.info.firmware if self.info else '7+'} needs a token: set token "
                                          f"(or token_file) from {TOKEN_WEB_PAGE}, or username and password")
            await self._renew(now, "no token yet")
        elif token.expires_at <= now:
            if not self._credentials:
                raise PollError("unauthorized", f"the token expired at {_iso(token.expires_at)}; create a new one at "
                                                f"{TOKEN_WEB_PAGE} and update token (or token_file)")
            if now < self.no_renew_before:
                raise PollError("unauthorized", f"the token expired at {_iso(token.expires_at)} and fetching a new "
                                                "one failed recently; trying again later")
            await self._renew(now, "expired")
        elif token.remaining(now) < token.renew_margin(self.renew_margin):
            if self._credentials and now >= self.next_renew_try and now >= self.no_renew_before:
                try:
                    await self._renew(now, "expires soon")
                except PollError as exc:
                    # The old token still works: keep it, retry later.
                    self.next_renew_try = now + min(RENEW_RETRY, token.remaining(now) / 4)
                    self.log.warning("renewing the token failed; the current one stays in use",
                                     expires=_iso(token.expires_at), reason=exc.reason, error=exc.message)
            elif not self._credentials and not self._warned_expiry:
                self._warned_expiry = True
                self.log.warning("the token expires soon; paste a new one (or set username and password)",
                                 expires=_iso(token.expires_at))

    async def _recover_token(self) -> bool:
        """After a 401: switch to a fresh configured token, or renew once. True to retry."""
        now = self.clock()
        configured = self.configured_token
        if configured and self.token is not configured and configured.expires_at > now:
            self.token = configured
            self.store.clear()
            return True
        if not self._credentials or self._renewed_this_poll or now < self.no_renew_before:
            return False
        await self._renew(now, "the gateway refused the token")
        return True

    async def _renew(self, now: float, why: str) -> None:
        self._renewed_this_poll = True
        if self._renewal is None or self._renewal.done():
            # The fetch outlives a poll that times out, so a slow Enlighten still gets done.
            self._renewal = asyncio.ensure_future(self._fetch(why))
            self._renewal.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            self.token = await asyncio.shield(self._renewal)
        except PollError as exc:
            # Refused credentials wait (tries could lock the account); an Enlighten that is
            # unreachable or failing is tried again at the next poll, which the scheduler
            # spaces out while failures go on, so the target recovers as soon as it answers.
            if exc.reason in ("unauthorized", "config"):
                self.no_renew_before = now + AUTH_BACKOFF
            raise

    async def _fetch(self, why: str) -> TokenInfo:
        serial = self._serial()
        self.log.info("fetching a gateway token from Enlighten", why=why, serial=serial)
        info = await fetch_token(self.ctx.session, self.username or "", self._password.reveal() if self._password else "",
                                 serial or "", enlighten_url=self.enlighten_url, token_url=self.token_url)
        self.store.save(info, serial)
        self.renewals += 1
        self._warned_expiry = False
        self.log.info("gateway token obtained", expires=_iso(info.expires_at), user_type=info.user_type)
        return info

    async def close(self) -> None:
        if self._renewal is not None and not self._renewal.done():
            self._renewal.cancel()
            try:
                await self._renewal
            except (asyncio.CancelledError, Exception):
                pass


def _looks_like_html(body: bytes) -> bool:
    return body.lstrip()[:1] == b"<"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _split_host(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, int(port) if port.isdigit() else default_port
    return host, default_port


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


SPEC = register(TransportSpec(
    vendor="enphase",
    transport="local",
    options=OPTIONS,
    create=EnphaseLocal,
    kind="poll",
    default_interval=10.0,
    min_interval=5.0,
    check_target=check_target,
    description="IQ Gateway (Envoy) local API: CT readings, production, consumption, microinverters, batteries",
))
