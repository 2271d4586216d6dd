"""Gateway access tokens (firmware 7 and later): decoding, fetching from Enlighten, persisting.

A token is a JWT that Enphase's token service ("Entrez") signs for one gateway serial. The
exporter never verifies the signature (the gateway does); it only reads the payload for the
expiry (`exp`), issue time (`iat`) and account type (`enphaseUser`: owner or installer).

Fetching follows the flow of Enphase's technical brief TEB-00060: log in to Enlighten
(`POST /login/login.json` with `user[email]`, `user[password]`) for a `session_id`, then ask the
token service (`POST /tokens` with `session_id`, `serial_num`, `username`), which answers the raw
token. An account with multi-factor authentication gets no `session_id`: the user must then
create a token on https://entrez.enphaseenergy.com and configure it.

Renewal: owner tokens live a year, installer tokens 12 hours. By default a token is renewed when
less than a twelfth of its lifetime is left, at most 30 days: 30 days for owner tokens, 1 hour
for installer tokens. A configured margin is capped at half the lifetime, so that a margin
longer than a token's life cannot make the exporter log in on every poll.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ...model.errors import PollError
from ...model.jsontext import label_text, loads
from ...runtime.state import StateDirectory
from ...transport.http import request

ENLIGHTEN_URL = "https://enlighten.enphaseenergy.com"
TOKEN_URL = "https://entrez.enphaseenergy.com"
TOKEN_WEB_PAGE = "https://entrez.enphaseenergy.com"
MAX_MARGIN = 30 * 86400.0
OWNER_MARGIN = 30 * 86400.0
INSTALLER_MARGIN = 3600.0


class TokenError(ValueError):
    """A string that is not a usable gateway token."""


@dataclass(frozen=True)
class TokenInfo:
    """A token and what its payload says. The token itself never appears in a repr."""

    token: str = field(repr=False)
    expires_at: float
    issued_at: float | None = None
    user_type: str | None = None  # "owner" | "installer"
    serial: str | None = None  # `aud` when the service set it to the gateway serial

    @property
    def lifetime(self) -> float | None:
        return None if self.issued_at is None else self.expires_at - self.issued_at

    def renew_margin(self, configured: float | None = None) -> float:
        """How long before expiry to renew (see the module docstring)."""
        lifetime = self.lifetime
        if configured is not None:
            return min(configured, lifetime / 2) if lifetime and lifetime > 0 else configured
        if lifetime and lifetime > 0:
            return min(MAX_MARGIN, lifetime / 12)
        return INSTALLER_MARGIN if self.user_type == "installer" else OWNER_MARGIN

    def remaining(self, now: float) -> float:
        return self.expires_at - now


_B64URL = re.compile(r"[A-Za-z0-9_\-]*")


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, not verified. TokenError if it is not a JWT."""
    if not isinstance(token, str):
        raise TokenError("a token must be text")
    parts = token.strip().split(".")
    # All three parts, the signature too: the token travels in a header, where a line break or
    # any other character outside base64url has no place.
    if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
        raise TokenError("not a JWT (expected three base64url parts separated by dots)")
    try:
        claims = loads(_b64url(parts[1]), "the token's payload")
    except (ValueError, binascii.Error):  # JsonError is a ValueError
        raise TokenError("not a JWT (its payload is not base64url-encoded JSON)") from None
    if not isinstance(claims, dict):
        raise TokenError("not a JWT (its payload is not a JSON object)")
    return claims


def token_info(token: str) -> TokenInfo:
    """Decode a gateway token; TokenError when it has no usable expiry."""
    token = token.strip()
    claims = decode_claims(token)
    expires = _time(claims.get("exp"))
    if expires is None:
        raise TokenError("the token has no expiry (`exp`)")
    issued = _time(claims.get("iat"))
    user = claims.get("enphaseUser")
    aud = claims.get("aud")
    return TokenInfo(
        token=token,
        expires_at=expires,
        issued_at=issued,
        user_type=label_text(user, 32) if isinstance(user, str) else None,
        serial=str(aud) if isinstance(aud, (str, int)) and not isinstance(aud, bool) and str(aud).isascii() and str(aud).isdigit() else None,
    )


def _time(value: Any) -> float | None:
    """A claim that is a moment (Unix time), or None when it is absent or not a usable number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        moment = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return moment if math.isfinite(moment) else None


# --- Enlighten -------------------------------------------------------------------------------------


async def fetch_token(
    session: aiohttp.ClientSession,
    username: str,
    password: str,
    serial: str,
    *,
    enlighten_url: str = ENLIGHTEN_URL,
    token_url: str = TOKEN_URL,
) -> TokenInfo:
    """Log in to Enlighten and ask the token service for a token for gateway `serial`.

    Raises PollError: `unauthorized` (login refused), `config` (multi-factor authentication on
    the account, or no serial), and the transport reasons of `exporter.transport.http.request`. Messages
    carry neither the password, the session id nor the token."""
    if not serial:
        raise PollError("config", "the gateway serial is unknown; set `serial` to fetch a token")
    login = f"{enlighten_url.rstrip('/')}/login/login.json"
    resp = await request(session, "POST", login, data={"user[email]": username, "user[password]": password},
                         headers={"Accept": "application/json"})
    if resp.status in (401, 403):
        raise PollError("unauthorized", f"{login}: Enlighten refused the login (HTTP {resp.status}): check username and password")
    if resp.status != 200:
        raise PollError("http_error", f"{login}: Enlighten login answered HTTP {resp.status}")
    answer = resp.json()
    session_id = answer.get("session_id") if isinstance(answer, dict) else None
    if not session_id or not isinstance(session_id, str):
        # An accepted login without a session: the account wants a second factor.
        raise PollError(
            "config",
            "the Enlighten login gave no session id: the account uses multi-factor authentication, "
            f"so the exporter cannot fetch tokens itself; create a token at {TOKEN_WEB_PAGE} and "
            "set `token` (or `token_file`) for this target",
        )
    tokens = f"{token_url.rstrip('/')}/tokens"
    resp = await request(session, "POST", tokens, json_body={"session_id": session_id, "serial_num": serial,
                                                              "username": username})
    if resp.status in (401, 403):
        raise PollError("unauthorized", f"{tokens}: the token service refused (HTTP {resp.status}); "
                                        f"is gateway {serial} registered to this account?")
    if resp.status != 200:
        raise PollError("http_error", f"{tokens}: the token service answered HTTP {resp.status}")
    try:
        return token_info(resp.body.decode("utf-8", "replace"))
    except TokenError as exc:
        raise PollError("parse", f"{tokens}: the answer is not a token ({exc})") from None


# --- Persistence --------------------------------------------------------------------------------------


class TokenFile:
    """The last token of one target in the state directory (0600), so that a restart does not
    log in to Enlighten again."""

    def __init__(self, state: StateDirectory, target: str) -> None:
        self.state = state
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
        self.name = f"enphase-{safe}.token.json"

    def load(self, serial: str | None = None) -> TokenInfo | None:
        """The stored token, unless absent, unreadable, or for another gateway."""
        data = self.state.read_json(self.name)
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            return None
        if serial and data.get("serial") and data.get("serial") != serial:
            return None
        try:
            return token_info(data["token"])
        except TokenError:
            return None

    def save(self, info: TokenInfo, serial: str | None) -> None:
        self.state.write_json(self.name, {"token": info.token, "serial": serial, "expires_at": info.expires_at})

    def clear(self) -> None:
        try:
            self.state.file(self.name).unlink()
        except OSError:
            pass
