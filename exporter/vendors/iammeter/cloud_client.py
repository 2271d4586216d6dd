"""One IAMMETER cloud account's calls: the token (kept in the state directory and reused across
restarts), the quota ledger consulted before every call, and the hold-offs after the cloud
answered "nothing"."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

from ...config.loader import Secret, TargetConfig
from ...model.errors import PollError
from ...model.jsontext import header_problem
from ...model.samples import ParseError
from ...runtime.context import AdapterContext
from ...runtime.quota import QuotaLedger
from ...runtime.state import StateDirectory
from ...transport.http import request, status_error
from . import cloud_parse as cp
from .cloud_quota import LOGIN, LOGIN_LIMITS, MAX_HOLDOFF, Quota, QuotaDeferred
from .cloud_settings import IammeterCloudSettings

API = "/api/v1"
LOGIN_REFUSED_PAUSE = 3600.0  # refused credentials are not retried sooner (the quota is 5/hour)


class _TokenInvalid(Exception):
    pass


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
