"""The token lifecycle of one target (firmware 7 and later): which token to start with, renewal
ahead of expiry, renewal after the gateway refused one, and the token file that lets a restart
go on without logging in to Enlighten again.

The first token is the newer of the configured one and the one in the token file. A token that
expires soon is renewed (see `token.TokenInfo.renew_margin`); when that fails, the old one stays
in use and renewal is tried again later. A refused token is replaced by a fresh configured one,
or renewed once; if that does not help, Enlighten is not asked again for a while (15 minutes).
An Enlighten that cannot be reached, or that answers with an error, is asked again at the next
poll instead: the target recovers at the first poll after Enlighten is back.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiohttp

from ...config.loader import TargetConfig
from ...model.errors import PollError
from ...runtime.state import StateDirectory
from ...runtime.tasks import cancel_and_wait
from .token import TOKEN_WEB_PAGE, TokenError, TokenFile, TokenInfo, fetch_token, token_info
from .settings import EnphaseSettings
from .utc import iso

AUTH_BACKOFF = 900.0  # after a refused token or Digest login, wait this long before trying again
RENEW_RETRY = 3600.0  # a renewal ahead of expiry that failed is retried after at most this long


class Tokens:
    def __init__(self, target: TargetConfig, session: aiohttp.ClientSession, state: StateDirectory, log: Any,
                 serial: Callable[[], str | None]) -> None:
        self.session = session
        self.log = log
        self.serial = serial  # the gateway's serial, as far as known
        self.file = TokenFile(state, target.name)
        settings = EnphaseSettings.of(target)
        self.renew_margin = settings.renew_margin
        self.enlighten_url = settings.enlighten_url
        self.token_url = settings.token_url
        self.username = settings.username
        self._password = settings.password
        configured = settings.token
        # A token the loader let through but that cannot be used (a token_file rewritten with a
        # line break in it) fails each poll with reason `config`; the message never quotes it.
        self.problem: str | None = None
        try:
            self.configured: TokenInfo | None = token_info(configured.reveal()) if configured else None
        except TokenError as exc:
            self.configured = None
            self.problem = f"the configured token is not usable: {exc}"
        self.token: TokenInfo | None = None
        self.no_renew_before = 0.0
        self.next_renew_try = 0.0
        self.renewals = 0
        self._renewal: asyncio.Future | None = None
        self.renewed_this_poll = False
        self._warned_expiry = False

    @property
    def credentials(self) -> bool:
        return bool(self.username and self._password)

    def start_poll(self) -> None:
        self.renewed_this_poll = False

    def forget(self) -> None:
        """The gateway changed its auth scheme: start over at the next poll."""
        self.token = None

    def refused(self, now: float) -> None:
        """The gateway answered 401: no login to Enlighten for a while."""
        self.no_renew_before = max(self.no_renew_before, now + AUTH_BACKOFF)

    def refusal_hint(self) -> str:
        """What the message of a refused token adds."""
        if self.renewed_this_poll:
            return " even after fetching a new token"
        if not self.credentials:
            return "; set username and password so the exporter can fetch a new one, or paste a new token"
        return ""

    def _initial(self, now: float) -> TokenInfo | None:
        stored = self.file.load(self.serial())
        candidates = [t for t in (self.configured, stored) if t is not None]
        valid = [t for t in candidates if t.expires_at > now]
        if valid:
            return max(valid, key=lambda t: t.expires_at)
        return candidates[0] if candidates else None

    async def ensure(self, now: float, firmware: str | None) -> None:
        """A token for this poll: the one held, a first one, or a renewed one."""
        if self.token is None:
            self.token = self._initial(now)
        token = self.token
        if token is None:
            if not self.credentials:
                raise PollError("config", f"firmware {firmware or '7+'} needs a token: set token "
                                          f"(or token_file) from {TOKEN_WEB_PAGE}, or username and password")
            await self._renew(now, "no token yet")
        elif token.expires_at <= now:
            if not self.credentials:
                raise PollError("unauthorized", f"the token expired at {iso(token.expires_at)}; create a new one at "
                                                f"{TOKEN_WEB_PAGE} and update token (or token_file)")
            if now < self.no_renew_before:
                raise PollError("unauthorized", f"the token expired at {iso(token.expires_at)} and fetching a new "
                                                "one failed recently; trying again later")
            await self._renew(now, "expired")
        elif token.remaining(now) < token.renew_margin(self.renew_margin):
            if self.credentials and now >= self.next_renew_try and now >= self.no_renew_before:
                try:
                    await self._renew(now, "expires soon")
                except PollError as exc:
                    # The old token still works: keep it, retry later.
                    self.next_renew_try = now + min(RENEW_RETRY, token.remaining(now) / 4)
                    self.log.warning("renewing the token failed; the current one stays in use",
                                     expires=iso(token.expires_at), reason=exc.reason, error=exc.message)
            elif not self.credentials and not self._warned_expiry:
                self._warned_expiry = True
                self.log.warning("the token expires soon; paste a new one (or set username and password)",
                                 expires=iso(token.expires_at))

    async def recover(self, now: float) -> bool:
        """After a 401: switch to a fresh configured token, or renew once. True to retry."""
        configured = self.configured
        if configured and self.token is not configured and configured.expires_at > now:
            self.token = configured
            self.file.clear()
            return True
        if not self.credentials or self.renewed_this_poll or now < self.no_renew_before:
            return False
        await self._renew(now, "the gateway refused the token")
        return True

    async def _renew(self, now: float, why: str) -> None:
        self.renewed_this_poll = True
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
        serial = self.serial()
        self.log.info("fetching a gateway token from Enlighten", why=why, serial=serial)
        info = await fetch_token(self.session, self.username or "", self._password.reveal() if self._password else "",
                                 serial or "", enlighten_url=self.enlighten_url, token_url=self.token_url)
        self.file.save(info, serial)
        self.renewals += 1
        self._warned_expiry = False
        self.log.info("gateway token obtained", expires=iso(info.expires_at), user_type=info.user_type)
        return info

    async def close(self) -> None:
        await cancel_and_wait(self._renewal)
