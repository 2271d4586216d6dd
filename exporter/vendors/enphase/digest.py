"""HTTP Digest authentication (RFC 7616) for gateways with firmware below 7.

`exporter.transport.http.request` takes headers, not aiohttp middlewares, so the few lines of Digest live
here: answer the challenge of a 401, then keep reusing its nonce (with a rising nonce count)
so that later requests need no extra round trip until the gateway asks again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from ...model.jsontext import header_problem

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    qop: str | None  # "auth" when offered, else None (RFC 2069 style)
    opaque: str | None
    algorithm: str  # MD5, MD5-sess, SHA-256, SHA-256-sess
    stale: bool = False


def parse_challenge(header: str | None) -> Challenge | None:
    """The Digest challenge of a `WWW-Authenticate` header, or None if it offers no Digest."""
    if not header or header_problem(header) is not None:
        return None  # its realm and nonce are sent back in a header: nothing that cannot be
    start = header.lower().find("digest ")
    if start < 0:
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(header[start + 7:])}
    if "nonce" not in params or "realm" not in params:
        return None
    algorithm = (params.get("algorithm") or "MD5").upper()
    if algorithm.removesuffix("-SESS") not in _HASHES:
        return None
    qops = [q.strip() for q in (params.get("qop") or "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        return None  # only auth-int offered: not supported
    return Challenge(
        realm=params["realm"], nonce=params["nonce"], qop="auth" if qops else None,
        opaque=params.get("opaque"), algorithm=algorithm, stale=(params.get("stale") or "").lower() == "true",
    )


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm.removesuffix("-SESS")](text.encode("utf-8")).hexdigest()


def response_value(challenge: Challenge, username: str, password: str, method: str, uri: str,
                   nc: str, cnonce: str) -> str:
    """The `response` field for one request (the verification the server also does)."""
    algo = challenge.algorithm
    ha1 = _h(algo, f"{username}:{challenge.realm}:{password}")
    if algo.endswith("-SESS"):
        ha1 = _h(algo, f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = _h(algo, f"{method}:{uri}")
    if challenge.qop:
        return _h(algo, f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:{challenge.qop}:{ha2}")
    return _h(algo, f"{ha1}:{challenge.nonce}:{ha2}")


class DigestAuth:
    """Client state for one gateway: the current challenge and its nonce count."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self.challenge: Challenge | None = None
        self._count = 0

    def __repr__(self) -> str:
        return f"DigestAuth(username={self.username!r})"

    def accept(self, header: str | None) -> bool:
        """Take the challenge of a 401; False when there is none we can answer."""
        challenge = parse_challenge(header)
        if challenge is None:
            return False
        self.challenge = challenge
        self._count = 0
        return True

    def authorization(self, method: str, uri: str) -> str | None:
        """The `Authorization` header for a request, or None before the first challenge."""
        challenge = self.challenge
        if challenge is None:
            return None
        self._count += 1
        nc = f"{self._count:08x}"
        cnonce = secrets.token_hex(8)
        digest = response_value(challenge, self.username, self._password, method, uri, nc, cnonce)
        parts = [f'username="{self.username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"',
                 f'uri="{uri}"', f"algorithm={challenge.algorithm}", f'response="{digest}"']
        if challenge.qop:
            parts += [f"qop={challenge.qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        if challenge.opaque is not None:
            parts.append(f'opaque="{challenge.opaque}"')
        return "Digest " + ", ".join(parts)
