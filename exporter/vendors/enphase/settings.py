"""The options of an Enphase gateway target, each with its one default."""

from __future__ import annotations

from dataclasses import dataclass

from ...config.loader import Secret, Settings, setting
from .endpoints import ENDPOINT_NAMES
from .nightly import NIGHTLY_WINDOW
from .token import ENLIGHTEN_URL, TOKEN_URL, TOKEN_WEB_PAGE


@dataclass(frozen=True, kw_only=True, slots=True)
class EnphaseSettings(Settings):
    host: str = setting("str", required=True, help="address of the gateway (envoy.local or an IP), optionally host:port")
    token: Secret | None = setting("secret", help=f"access token (JWT) from {TOKEN_WEB_PAGE}; or token_file")
    username: str | None = setting("str", help="Enlighten account (e-mail), to fetch and renew tokens")
    password: Secret | None = setting("secret", help="Enlighten password (or password_file)")
    serial: str | None = setting("str", help="gateway serial number (default: the one /info reports)")
    tls_fingerprint: str | None = setting("str", help="SHA-256 fingerprint of the gateway's certificate (hex, colons allowed)")
    tls_verify: bool = setting("bool", default=True, help="false turns certificate checks off (logged); prefer tls_fingerprint")
    digest_user: str = setting("str", default="envoy", choices=("envoy", "installer"), help="firmware < 7: Digest user")
    digest_password: Secret | None = setting(
        "secret", help="firmware < 7: Digest password (envoy: default the last 6 digits of the serial)")
    enlighten_url: str = setting("str", default=ENLIGHTEN_URL, help="Enlighten login service (tests point it elsewhere)")
    token_url: str = setting("str", default=TOKEN_URL, help="Enphase token service (tests point it elsewhere)")
    renew_margin: float | None = setting(
        "duration", help="renew the token this long before it expires (default: 1/12 of its lifetime, at most 30 days)")
    disable: tuple[str, ...] = setting("list", help=f"endpoints never to read: {', '.join(ENDPOINT_NAMES)}")
    nightly_window: str = setting("str", default=NIGHTLY_WINDOW,
                                  help="local time span (HH:MM-HH:MM) in which the gateway's failures are expected "
                                       "(its nightly unresponsive period); 'off' treats them as errors")
    timezone: str | None = setting("timezone", help="the gateway's time zone for nightly_window (default: this host's)")


OPTIONS = EnphaseSettings.table()
