"""The HTTP(S) client of one gateway: its URLs, the TLS pinning of its self-signed certificate,
the auth of each request (a bearer token from firmware 7 on, Digest below), status checks.

TLS: the gateway's certificate is self-signed, so no CA can vouch for it. Pin it with
`tls_fingerprint` (SHA-256 of the certificate; the error message of a failed handshake shows
the one the gateway presents), or turn checks off with `tls_verify: false`, which is logged.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import aiohttp

from ...model.errors import PollError
from ...model.samples import ParseError
from ...transport.http import Response, request, status_error
from ...transport.peercert import colon_hex, peer_fingerprint
from . import parse
from .digest import DigestAuth

ACCEPT_JSON = {"Accept": "application/json"}
REDIRECTS = (301, 302, 303, 307, 308)


def normalize_fingerprint(text: str) -> str | None:
    """64 lower-case hex digits from `AB:CD:...`, `abcd...` or `AB CD ...`; None if malformed."""
    digits = re.sub(r"[\s:]", "", text).lower()
    return digits if re.fullmatch(r"[0-9a-f]{64}", digits) else None


def split_host(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, int(port) if port.isdigit() else default_port
    return host, default_port


def looks_like_html(body: bytes) -> bool:
    return body.lstrip()[:1] == b"<"


class Gateway:
    def __init__(self, session: aiohttp.ClientSession, host: str, log: Any, *,
                 tls_fingerprint: str | None, tls_verify: bool) -> None:
        self.session = session
        self.host = host
        self.fingerprint = normalize_fingerprint(tls_fingerprint) if tls_fingerprint else None
        if self.fingerprint:
            self._ssl: Any = aiohttp.Fingerprint(bytes.fromhex(self.fingerprint))
        elif not tls_verify:
            self._ssl = False
            log.warning("TLS certificate checks of the gateway are off (tls_verify: false), by configuration; "
                        "pin the certificate with tls_fingerprint instead")
        else:
            self._ssl = None
        self.scheme = "https"  # firmware 7+; `read_info` finds out
        self.digest: DigestAuth | None = None  # firmware < 7, once the credentials are known
        self._accepted: str | None = None  # a token that got a 200 this poll
        self._jwt_check: tuple[str, bool] | None = None  # /auth/check_jwt's verdict this poll

    def start_poll(self) -> None:
        """Forget what this poll learnt about the token."""
        self._accepted, self._jwt_check = None, None

    def url(self, path: str, scheme: str | None = None) -> str:
        return f"{scheme or self.scheme}://{self.host}{path}"

    async def send(self, path: str, headers: Mapping[str, str], *, scheme: str | None = None,
                   middlewares: Sequence[aiohttp.ClientMiddlewareType] | None = None) -> Response:
        scheme = scheme or self.scheme
        url = self.url(path, scheme)
        try:
            return await request(self.session, "GET", url, headers=headers,
                                 ssl_context=self._ssl if scheme == "https" else None, middlewares=middlewares)
        except PollError as exc:
            if scheme == "https" and (exc.reason == "tls" or "FingerprintMismatch" in exc.message):
                raise await self._tls_error(url, exc) from None
            raise

    async def read_info(self) -> parse.GatewayInfo:
        """`/info` (no auth), which tells the firmware and so the scheme and the auth."""
        errors: list[PollError] = []
        # Firmware 7+ answers on HTTPS (its plain HTTP only redirects); older firmware on HTTP.
        # The scheme that worked last time goes first.
        for scheme in (self.scheme, "http" if self.scheme == "https" else "https"):
            try:
                resp = await self.send("/info", {}, scheme=scheme)
            except PollError as exc:
                errors.append(exc)
                continue
            if resp.status == 200:
                try:
                    info = parse.parse_info(resp.body)
                except ParseError as exc:
                    raise PollError("parse", f"{self.url('/info', scheme)}: {exc}") from None
                break
            if resp.status not in REDIRECTS:
                errors.append(status_error(self.url("/info", scheme), resp))
        else:
            # HTTPS failures explain more than the plain-HTTP redirect or refusal after them.
            errors.sort(key=lambda e: e.reason != "tls")
            raise errors[0] if errors else PollError("http_error", f"{self.url('/info', 'http')}: only redirects")
        self.scheme = "https" if info.needs_token else "http"
        return info

    # --- auth ---------------------------------------------------------------------------------

    def use_digest(self, user: str, password: str) -> None:
        if self.digest is None:
            self.digest = DigestAuth(user, password)

    async def get_digest(self, path: str) -> Response:
        """GET with Digest auth: the middleware answers the first challenge (or a stale nonce)
        once, and reuses the nonce on later requests."""
        assert self.digest is not None
        return await self.send(path, ACCEPT_JSON, middlewares=(self.digest,))

    async def get_bearer(self, path: str, token: str) -> Response:
        resp = await self.send(path, {**ACCEPT_JSON, "Authorization": f"Bearer {token}"})
        if resp.status == 200:
            self._accepted = token
        return resp

    async def token_accepted(self, token: str) -> bool:
        """Whether the gateway takes `token`: some request with it got a 200 this poll, or
        `/auth/check_jwt` (which answers 200 for a valid token) says so. Asked once a poll."""
        if self._accepted == token:
            return True
        if self._jwt_check is not None and self._jwt_check[0] == token:
            return self._jwt_check[1]
        resp = await self.send("/auth/check_jwt", {"Authorization": f"Bearer {token}"})
        self._jwt_check = (token, resp.status == 200)
        return self._jwt_check[1]

    def check_status(self, path: str, resp: Response, refused: str) -> None:
        """Nothing for a 200; else the PollError for the status, with `refused` saying which
        credentials a 401 refused."""
        if resp.status == 200:
            return
        url = self.url(path)
        if resp.status == 401:
            raise PollError("unauthorized", f"{url}: {refused}")
        raise status_error(url, resp)

    # --- TLS --------------------------------------------------------------------------------------

    async def _tls_error(self, url: str, exc: PollError) -> PollError:
        """A TLS failure, with the fingerprint the gateway presents so the user can pin it."""
        seen = await self.peer_fingerprint()
        shown = colon_hex(seen) if seen else None
        if self.fingerprint:
            detail = (f"the gateway's certificate ({shown}) does not match tls_fingerprint" if shown else
                      "the certificate could not be checked against tls_fingerprint")
            return PollError("tls", f"{url}: {detail}")
        hint = (f"; the gateway's certificate is self-signed: if {shown} is its fingerprint (compare with "
                "the gateway's certificate in a browser), set tls_fingerprint to it") if shown else ""
        return PollError("tls", f"{exc.message}{hint}")

    async def peer_fingerprint(self) -> str | None:
        return await peer_fingerprint(*split_host(self.host, 443), timeout=3)
