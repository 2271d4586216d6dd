"""IQ Gateway (Envoy) local API transport.

`/info` (no auth) tells the firmware: below 7 the gateway speaks plain HTTP and wants Digest
auth on some endpoints (user `envoy` with the last six digits of the serial, or `installer`);
from 7 on it speaks HTTPS with a self-signed certificate and wants a JWT as a bearer token
(`tokens.py`: where tokens come from and when they are renewed; `gateway.py`: the requests,
TLS pinning included).

Each endpoint has its own cadence (`endpoints/`: CT readings every poll, the microinverters
every five minutes, the rest every minute; `/info` and the CT list every hour). `poll()` reads
what is due, one request at a time, and merges the cached results of the rest into one Reading
(`timetable.py`), one source per metric in the order of `endpoints.ENDPOINTS`.

An endpoint that answers 404 (or an HTML page where JSON belongs) is switched off for an hour.
A 401 is checked against `/auth/check_jwt`: if the gateway accepts the token there, the endpoint
only refuses this account (some are for installers) and is switched off for an hour too;
otherwise the token is renewed once, and if that does not help the poll fails and the exporter
does not ask Enlighten again for a while (15 minutes).

The gateway is unresponsive for a while around 23:00 local time every night. Failures inside
`nightly_window` are expected: logged at info level once, retried with the usual backoff, and
the poll gives the device's identity but no measurements, so the target stays up and shows a
gap rather than an error (or a frozen value).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo

from ...config.loader import TargetConfig
from ...model.catalogue import TOKEN_EXPIRY
from ...model.errors import PollError
from ...model.samples import ParseError, Reading
from ...runtime.backoff import Backoff
from ...runtime.context import AdapterContext
from ...transport.http import Response
from ..registry import TransportSpec, register
from . import derived, parse
from .endpoints import ENDPOINT_NAMES, ENDPOINTS, Endpoint, Facts
from .endpoints.meters import CT_LIST_PATH, CT_LIST_REFRESH, read_ct_list
from .gateway import Gateway, looks_like_html, normalize_fingerprint
from .nightly import NIGHT_REASONS, NIGHT_SHARE_OF_TIMEOUT, Night, parse_window
from .timetable import EndpointState, Timetable
from .token import TokenError, token_info
from .settings import OPTIONS, EnphaseSettings
from .tokens import Tokens

INFO_REFRESH = 3600.0  # firmware upgrades switch the auth scheme
OFF_FOR = 3600.0  # an endpoint that answered 404 (or refused the account) is not asked again for this long



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


class EnphaseLocal:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        self.log = ctx.log
        self.clock: Callable[[], float] = ctx.clock or time.time
        self.settings = settings = EnphaseSettings.of(target)
        self.gateway = Gateway(ctx.session, settings.host, self.log,
                               tls_fingerprint=settings.tls_fingerprint, tls_verify=settings.tls_verify)
        self.tokens = Tokens(target, ctx.session, ctx.state, self.log, self._serial)
        self.timetable = Timetable(ENDPOINTS, settings.disable)
        self.derived_steps = derived.new_steps()
        self.info: parse.GatewayInfo | None = None
        self.info_read_at = 0.0
        self.meters: dict[int, parse.MeterConfig] = {}
        self.meters_due = 0.0
        self.meters_off_until = 0.0
        self._told: set[str] = set()
        self.window = parse_window(settings.nightly_window)
        zone = settings.timezone
        self.tz = ZoneInfo(zone) if zone else None
        self.night: Night | None = None
        # Retries in that period: the interval, doubling from the second failure on, up to
        # max_backoff. No jitter: the scheduler's poll times have theirs, and a retry_at that
        # moved past a poll would cost a whole interval.
        self.night_retry = Backoff(base=target.interval, ceiling=target.max_backoff)

    # --- the poll ----------------------------------------------------------------------------

    async def poll(self) -> Reading:
        now = self.clock()
        if self.window is None or not self.window.holds(now, self.tz):
            self.night = None
            return await self._poll(now)
        # The gateway's nightly unresponsive period: failures are expected, not errors.
        night = self.night or Night()
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

    def _identity(self) -> Reading:
        """What a poll gives while the gateway is not asked: who it is, no measurements."""
        reading = Reading()
        if self.info:
            reading.devices.extend(self.info.reading().devices)
        if self.info and self.info.needs_token and self.tokens.token:
            reading.add(TOKEN_EXPIRY, self.tokens.token.expires_at)
        return reading

    async def _poll(self, now: float) -> Reading:
        if self.tokens.problem is not None:
            raise PollError("config", self.tokens.problem)
        self.tokens.start_poll()
        self.gateway.start_poll()
        if self.info is None or now - self.info_read_at >= INFO_REFRESH:
            await self._read_info(now)
        assert self.info is not None
        if self.info.needs_token:
            await self.tokens.ensure(now, self.info.firmware)
        if now >= self.meters_due and now >= self.meters_off_until:
            await self._read_meters(now)
        for endpoint, state in self.timetable.due(now, self.target.interval, self.meters):
            await self._read(endpoint, state, now)
        latest = self.timetable.latest(now, self.target.interval, self.meters)
        return derived.finish(Timetable.merge(self._identity(), latest), latest, self.derived_steps)

    # --- reads ------------------------------------------------------------------------------

    async def _read_info(self, now: float) -> None:
        info = await self.gateway.read_info()
        old = self.info
        self.info, self.info_read_at = info, now
        if old is None or old.firmware != info.firmware:
            self.log.info("gateway identified", serial=info.serial, firmware=info.firmware,
                          auth="token" if info.needs_token else "digest")
        if old is not None and old.needs_token != info.needs_token:
            self.tokens.forget()
            self.gateway.digest = None
        configured = self.settings.serial
        if configured and configured != info.serial:
            self.log.warning("the gateway reports another serial than configured", configured=configured,
                             reported=info.serial)

    async def _read_meters(self, now: float) -> None:
        resp = await self._get(CT_LIST_PATH)
        self.meters_due = now + CT_LIST_REFRESH
        if (resp.status == 404 or (resp.status == 200 and looks_like_html(resp.body))
                or await self._refuses_account(resp)):
            self.meters, self.meters_off_until = {}, now + OFF_FOR
            return
        try:
            self._check_status(CT_LIST_PATH, resp, now)
        except PollError as exc:
            if exc.reason == "unauthorized":
                self.meters_due = now  # again on the next poll (the scheduler backs off)
            raise
        try:
            self.meters = read_ct_list(resp.json())
        except ParseError as exc:
            raise PollError("parse", f"{self.gateway.url(CT_LIST_PATH)}: {exc}") from None

    async def _read(self, endpoint: Endpoint, state: EndpointState, now: float) -> None:
        # A failure must not make the next poll hammer the same endpoint.
        state.next_due = now + endpoint.cadence
        resp = await self._get(endpoint.path)
        if resp.status == 404 or (resp.status == 200 and not endpoint.html and looks_like_html(resp.body)):
            self.log.info("endpoint not available on this gateway; switched off for a while",
                          endpoint=endpoint.path, status=resp.status, retry_in_s=OFF_FOR)
            state.off_until, state.reading = now + OFF_FOR, None
            return
        if await self._refuses_account(resp):
            token = self.tokens.token
            self.log.info("the gateway accepts the token but refuses it for this endpoint (it may be for "
                          "installers only); switched off for a while", endpoint=endpoint.path,
                          status=resp.status, user_type=token.user_type if token else None,
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
        facts = Facts(meters=self.meters, now=now, tell_once=self._tell_once)
        try:
            state.reading = endpoint.read(resp.body if endpoint.html else resp.json(), facts)
        except ParseError as exc:
            raise PollError("parse", f"{self.gateway.url(endpoint.path)}: {exc}") from None
        state.read_at = now

    def _tell_once(self, key: str, message: str, **fields: Any) -> None:
        if key not in self._told:
            self._told.add(key)
            self.log.info(message, **fields)

    def _check_status(self, path: str, resp: Response, now: float) -> None:
        if resp.status == 401:
            self.tokens.refused(now)
        if self.info and self.info.needs_token:
            refused = f"the gateway refused the token (HTTP 401){self.tokens.refusal_hint()}"
        else:
            user = self.gateway.digest.username if self.gateway.digest else self.settings.digest_user
            refused = f"the gateway refused Digest user {user!r} (HTTP 401); check digest_user / digest_password"
        self.gateway.check_status(path, resp, refused)

    # --- auth ---------------------------------------------------------------------------------

    async def _get(self, path: str) -> Response:
        """GET with the gateway's auth: bearer token (firmware 7+) or Digest (older)."""
        assert self.info is not None
        if not self.info.needs_token:
            if self.gateway.digest is None:
                password = self.settings.digest_password
                secret = password.reveal() if password else (self.settings.serial or self.info.serial)[-6:]
                self.gateway.use_digest(self.settings.digest_user, secret)
            return await self.gateway.get_digest(path)
        assert self.tokens.token is not None
        resp = await self.gateway.get_bearer(path, self.tokens.token.token)
        # A 401 with a token the gateway accepts is about this endpoint, not the token.
        if (resp.status == 401 and not await self.gateway.token_accepted(self.tokens.token.token)
                and await self.tokens.recover(self.clock())):
            resp = await self.gateway.get_bearer(path, self.tokens.token.token)
        return resp

    async def _refuses_account(self, resp: Response) -> bool:
        """A 401/403 from an endpoint while the gateway accepts the token: the endpoint is not
        for this account (installer-only, or not on this model), not an authentication failure."""
        token = self.tokens.token
        if resp.status not in (401, 403) or self.info is None or not self.info.needs_token or token is None:
            return False
        return await self.gateway.token_accepted(token.token)

    def _serial(self) -> str | None:
        return self.settings.serial or (self.info.serial if self.info else None)

    async def close(self) -> None:
        await self.tokens.close()


SPEC = register(TransportSpec(
    vendor="enphase",
    transport="local",
    options=OPTIONS,
    create=EnphaseLocal,
    delivery="poll",
    default_interval=10.0,
    min_interval=5.0,
    check_target=check_target,
    description="IQ Gateway (Envoy) local API: CT readings, production, consumption, microinverters, batteries",
))
