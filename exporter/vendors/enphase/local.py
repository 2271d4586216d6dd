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

`/info` and the primary endpoints (`timetable.PRIMARY_GROUPS`: the CT readings on a gateway
with a CT in use, else the production family) are read first, and a poll fails when they do.
Any other endpoint (the CT list included) that fails (an HTTP error, no answer within its share
of the poll's timeout, an answer that does not parse) leaves its figures out until it answers
again: the poll goes on, `energy_meter_exporter_endpoint_up{endpoint}` says 0, the status page
lists it, one log line says so (and one when it answers again), its cached figures pass for the
present only as long as any endpoint's do, and it is asked again at its own cadence.

An endpoint that answers 404 (or an HTML page where JSON belongs) is switched off for an hour.
A 401 is checked against `/auth/check_jwt`: if the gateway accepts the token there, the endpoint
only refuses this account (some are for installers) and is switched off for an hour too;
otherwise the token is renewed once, and if that does not help the poll fails and the exporter
does not ask Enlighten again for a while (15 minutes). Digest firmware has no such check, and
some (D3.18) refuses an endpoint (the CT list) whatever the credentials: a 401 there is judged
by the primary endpoints. While they answer, the refusing endpoint is switched off for an hour
like a 404; only a refusal of the primary endpoints fails the poll as `unauthorized`. The CT
list, read before them, waits for that judgement.

The gateway is unresponsive for a while around 23:00 local time every night. Failures inside
`nightly_window` are expected: logged at info level once, retried with the usual backoff, and
the poll gives the device's identity but no measurements, so the target stays up and shows a
gap rather than an error (or a frozen value).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Awaitable, Callable, Mapping
from zoneinfo import ZoneInfo

from ...config.loader import TargetConfig
from ...model.catalogue import TOKEN_EXPIRY
from ...model.errors import PollError
from ...model.samples import ParseError, Reading
from ...runtime.backoff import Backoff, Deadline
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
CT_LIST = "ct_list"  # the CT list's name in endpoint_up and on the status page
# A CT list that failed is asked again after this long, not at its hourly refresh: without it
# the CTs' readings are off.
CT_LIST_RETRY = 60.0
# One endpoint other than the primary ones gets at most this share of the poll's timeout, so a
# slow one cannot eat the time of the others...
ENDPOINT_SHARE = 0.25
# ... and none is asked once this share has passed (they wait for the next poll), so the poll
# ends within its timeout with what it read.
READS_END_SHARE = 0.9
MIN_SHARE = 0.05  # a read with less time left than this share of the timeout waits for the next poll



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
    if token and not token.placeholder:
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


def _problem(failure: PollError) -> str:
    """What went wrong, short, for endpoint_up's status page line: "HTTP 500", "timeout"."""
    status = re.search(r"HTTP (\d{3})\b", failure.message)
    if status and failure.reason in ("http_error", "unauthorized"):
        return f"HTTP {status.group(1)}"
    return failure.reason


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
        self.derived_steps = derived.new_steps(ctx.state)
        self.info: parse.GatewayInfo | None = None
        self.info_read_at = 0.0
        self.meters: dict[int, parse.MeterConfig] = {}
        self.ct_list = EndpointState()
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
            return await self._poll(now, self.target.timeout)
        # The gateway's nightly unresponsive period: failures are expected, not errors.
        night = self.night or Night()
        if now < night.retry_at:
            return self._identity()
        try:
            async with asyncio.timeout(self.target.timeout * NIGHT_SHARE_OF_TIMEOUT):
                reading = await self._poll(now, self.target.timeout * NIGHT_SHARE_OF_TIMEOUT)
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

    async def _poll(self, now: float, timeout: float) -> Reading:
        deadline = Deadline.from_now(timeout)
        if self.tokens.problem is not None:
            raise PollError("config", self.tokens.problem)
        self.tokens.start_poll()
        self.gateway.start_poll()
        if self.info is None or now - self.info_read_at >= INFO_REFRESH:
            await self._read_info(now)
        assert self.info is not None
        if self.info.needs_token:
            await self.tokens.ensure(now, self.info.firmware)
        self.timetable.start_poll(now, self.target.interval)
        ct_refusal = None
        if now >= self.ct_list.next_due and now >= self.ct_list.off_until:
            ct_refusal = await self._read_ct_list(now, deadline)
        failures = []
        for endpoint, state in self.timetable.due(now, self.meters, primary=True):
            failure = await self._read(endpoint, state, now, None, primary=True)
            if failure is not None:
                failures.append(failure)
        primary = self.timetable.primary(now, self.meters)
        if failures and not any(self.timetable.states[e.name].up for e in primary):
            raise failures[0]
        if ct_refusal is not None:
            if not primary:
                raise ct_refusal  # nothing else to judge the refusal by: the credentials
            # The CTs known so far (none on a first poll) stay: the refusal says nothing about them.
            self._switch_off(CT_LIST_PATH, self.ct_list, now, self._refused_line(CT_LIST_PATH), ct_refusal)
        for endpoint, state in self.timetable.due(now, self.meters, primary=False):
            budget = self._budget(deadline)
            if budget is None:
                break  # the rest wait for the next poll
            failure = await self._read(endpoint, state, now, budget, primary=False)
            if failure is not None:
                if not primary:
                    raise failure  # no primary endpoint: every one counts
                if failure.reason == "unauthorized":
                    # Digest refusal while the primary endpoints answer (see the module's description).
                    self._switch_off(endpoint.path, state, now, self._refused_line(endpoint.path), failure)
                else:
                    self._failed(endpoint.path, state, failure, now)
        latest = self.timetable.latest(now, self.target.interval, self.meters)
        reading = derived.finish(Timetable.merge(self._identity(), latest), latest, self.derived_steps)
        self._report_endpoints(reading, now)
        return reading

    def _budget(self, deadline: Deadline) -> float | None:
        """The time one secondary read may take; None when too little is left for one."""
        budget = min(deadline.seconds * ENDPOINT_SHARE, deadline.left(READS_END_SHARE))
        return budget if budget >= deadline.seconds * MIN_SHARE else None

    def _report_endpoints(self, reading: Reading, now: float) -> None:
        """endpoint_up for every endpoint in use that has been read, the CT list first."""
        if self.ct_list.up is not None and now >= self.ct_list.off_until:
            reading.report_endpoint(CT_LIST, None if self.ct_list.up else self.ct_list.problem)
        for endpoint in self.timetable.endpoints:
            state = self.timetable.states[endpoint.name]
            if state.up is not None and self.timetable.active(endpoint, now, self.meters):
                reading.report_endpoint(endpoint.name, None if state.up else state.problem)

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

    async def _read_ct_list(self, now: float, deadline: Deadline) -> PollError | None:
        """Read the CT list. A Digest refusal is returned for the primary endpoints to judge;
        any other failure keeps the CTs known so far and asks again after CT_LIST_RETRY."""
        state = self.ct_list
        state.next_due = now + CT_LIST_REFRESH
        try:
            resp = await self._get(CT_LIST_PATH, self._budget(deadline) or deadline.seconds * MIN_SHARE)
            if await self._unavailable(CT_LIST_PATH, resp, state, now, html=False):
                self.meters = {}
                return None
            self._check_status(CT_LIST_PATH, resp, now)
            try:
                self.meters = read_ct_list(resp.json())
            except ParseError as exc:
                raise PollError("parse", f"{self.gateway.url(CT_LIST_PATH)}: {exc}") from None
        except PollError as exc:
            if exc.reason == "unauthorized":
                state.next_due = now  # again on the next poll, unless the judgement switches it off
                if self.info is not None and self.info.needs_token:
                    raise  # the gateway refused the token itself (/auth/check_jwt said so)
                return exc
            state.next_due = now + CT_LIST_RETRY
            self._failed(CT_LIST_PATH, state, exc, now)
            return None
        self._answered(CT_LIST_PATH, state, now)
        return None

    async def _read(self, endpoint: Endpoint, state: EndpointState, now: float, budget: float | None, *,
                    primary: bool) -> PollError | None:
        """Read one endpoint into its state: None when it answered or is not available (switched
        off), else the failure, for the caller to judge. A refused token raises."""
        # A failure must not make the next poll hammer the same endpoint.
        state.next_due = now + endpoint.cadence
        try:
            resp = await self._get(endpoint.path, budget)
            if await self._unavailable(endpoint.path, resp, state, now, html=endpoint.html):
                return None
            self._check_status(endpoint.path, resp, now)
            facts = Facts(meters=self.meters, now=now, tell_once=self._tell_once)
            try:
                reading = endpoint.read(resp.body if endpoint.html else resp.json(), facts)
            except ParseError as exc:
                raise PollError("parse", f"{self.gateway.url(endpoint.path)}: {exc}") from None
        except PollError as exc:
            if exc.reason == "unauthorized" and self.info is not None and self.info.needs_token:
                state.next_due = now  # refused credentials fail every poll until fixed (the scheduler backs off)
                raise
            if primary:
                # A primary endpoint: the poll fails unless another primary one answers; asked
                # again at the next poll (which the scheduler spaces out while polls fail).
                state.next_due = now
                state.up, state.problem = False, _problem(exc)
            return exc
        state.reading, state.read_at = reading, now
        self._answered(endpoint.path, state, now)
        return None

    async def _bounded(self, request: Awaitable[Response], path: str, budget: float | None) -> Response:
        """One request within `budget` seconds (None: the poll's own timeout bounds it)."""
        if budget is None:
            return await request
        try:
            async with asyncio.timeout(budget):
                return await request
        except TimeoutError:
            raise PollError("timeout", f"{self.gateway.url(path)}: no answer within {budget:.3g}s (the share "
                                       "of the poll's timeout one endpoint gets)") from None

    async def _unavailable(self, path: str, resp: Response, state: EndpointState, now: float, *, html: bool) -> bool:
        """Switch the endpoint off when the gateway does not have it or it is not for this
        account; True if so."""
        if resp.status == 404 or (resp.status == 200 and not html and looks_like_html(resp.body)):
            self._switch_off(path, state, now, "endpoint not available on this gateway; switched off for a while",
                             status=resp.status)
            return True
        if await self._refuses_account(resp):
            token = self.tokens.token
            self._switch_off(path, state, now, "the gateway accepts the token but refuses it for this endpoint (it "
                             "may be for installers only); switched off for a while", status=resp.status,
                             user_type=token.user_type if token else None)
            return True
        return False

    def _refused_line(self, path: str) -> str:
        user = self.gateway.digest.username if self.gateway.digest else self.settings.digest_user
        return (f"the gateway refuses Digest user {user!r} for this endpoint while its main endpoints answer; "
                "some firmware refuses it whatever the credentials (if it should answer, check digest_user / "
                "digest_password); switched off for a while")

    def _switch_off(self, path: str, state: EndpointState, now: float, message: str,
                    failure: PollError | None = None, **fields: Any) -> None:
        """Not available: no figures, no endpoint_up, asked again after OFF_FOR. Told at info
        level the first time, at debug level on the hourly checks after it."""
        state.off_until, state.reading, state.up, state.problem = now + OFF_FOR, None, None, ""
        if failure is not None:
            fields.update(status=_problem(failure), error=failure.message)
        key = f"off:{path}:{fields.get('status')}"
        # A refusal may be a wrong password as well as the firmware's way: a warning, once.
        first = self.log.warning if failure is not None and failure.reason == "unauthorized" else self.log.info
        log = self.log.debug if key in self._told else first
        self._told.add(key)
        log(message, endpoint=path, retry_in_s=OFF_FOR, **fields)

    def _failed(self, path: str, state: EndpointState, failure: PollError, now: float) -> None:
        """A secondary endpoint failed: told once, until it answers again."""
        if state.up is not False:
            self.log.warning("endpoint failed; its figures are left out until it answers again, the other "
                             "endpoints' are exported", endpoint=path, reason=failure.reason, error=failure.message,
                             retry_in_s=round(state.next_due - now, 1))
        state.up, state.problem = False, _problem(failure)

    def _answered(self, path: str, state: EndpointState, now: float) -> None:
        if state.up is False:
            self.log.info("endpoint answers again", endpoint=path)
        state.up, state.problem = True, ""

    def _tell_once(self, key: str, message: str, **fields: Any) -> None:
        if key not in self._told:
            self._told.add(key)
            self.log.info(message, **fields)

    def _check_status(self, path: str, resp: Response, now: float) -> None:
        if resp.status == 401 and self.info is not None and self.info.needs_token:
            self.tokens.refused(now)
        if self.info and self.info.needs_token:
            refused = f"the gateway refused the token (HTTP 401){self.tokens.refusal_hint()}"
        else:
            user = self.gateway.digest.username if self.gateway.digest else self.settings.digest_user
            refused = f"the gateway refused Digest user {user!r} (HTTP 401); check digest_user / digest_password"
        self.gateway.check_status(path, resp, refused)

    # --- auth ---------------------------------------------------------------------------------

    async def _get(self, path: str, budget: float | None = None) -> Response:
        """GET with the gateway's auth: bearer token (firmware 7+) or Digest (older). Each
        request to the endpoint within `budget` seconds; asking /auth/check_jwt and renewing the
        token are not: a renewal cut short would leave the token refused for a while."""
        assert self.info is not None
        if not self.info.needs_token:
            if self.gateway.digest is None:
                password = self.settings.digest_password
                secret = password.reveal() if password else (self.settings.serial or self.info.serial)[-6:]
                self.gateway.use_digest(self.settings.digest_user, secret)
            return await self._bounded(self.gateway.get_digest(path), path, budget)
        assert self.tokens.token is not None
        resp = await self._bounded(self.gateway.get_bearer(path, self.tokens.token.token), path, budget)
        # A 401 with a token the gateway accepts is about this endpoint, not the token.
        if (resp.status == 401 and not await self.gateway.token_accepted(self.tokens.token.token)
                and await self.tokens.recover(self.clock())):
            resp = await self._bounded(self.gateway.get_bearer(path, self.tokens.token.token), path, budget)
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

