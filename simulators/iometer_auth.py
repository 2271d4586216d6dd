"""Checking the IOmeter Partner API's Authorization headers, as the API's document describes them.

Written from the seed document (iometer-partner-graphql-api.txt, "Authentication"), apart from the
exporter's header builder, so that a mistake in one shows against the other:
  Basic: `Basic base64(<partner_id>:<partner_secret>)`.
  WSSE:  `UsernameToken Username="..", PasswordDigest="..", Nonce="..", Created=".."`, where
         PasswordDigest = base64(hex(sha256(nonce + created + secret))), the nonce 16 random bytes in
         hex and Created an RFC 3339 UTC time. The digest covers Created exactly as sent.
Freshness (the time window, nonces seen before) is the server's business and stays in the simulator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

_BASIC = "Basic "
_WSSE = "UsernameToken "
_ITEM = re.compile(r'\s*([A-Za-z]+)="([^"]*)"\s*')


def basic_matches(header: str, partner_id: str, secret: str) -> bool:
    """Whether a `Basic` header carries exactly these credentials."""
    if not header.startswith(_BASIC):
        return False
    try:
        decoded = base64.b64decode(header[len(_BASIC):], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, colon, password = decoded.partition(":")
    if not colon:
        return False
    # Both compared in full, whatever the first gives: no timing hint on which was wrong.
    user_ok = hmac.compare_digest(user.encode(), partner_id.encode())
    password_ok = hmac.compare_digest(password.encode(), secret.encode())
    return user_ok and password_ok


@dataclass(frozen=True)
class WsseToken:
    username: str
    digest: str
    nonce: str
    created: str

    def signed_with(self, secret: str) -> bool:
        expected = base64.b64encode(hashlib.sha256(f"{self.nonce}{self.created}{secret}".encode()).hexdigest().encode())
        return hmac.compare_digest(self.digest.encode(), expected)


def read_wsse(header: str) -> WsseToken | None:
    """The token of a WSSE header, or None if the header is not a complete one.

    The items are comma-separated `Name="value"` pairs; a name the document does not give is
    ignored, one it gives must be there.
    """
    if not header.startswith(_WSSE):
        return None
    items: dict[str, str] = {}
    for part in header[len(_WSSE):].split(","):
        match = _ITEM.fullmatch(part)
        if match is None:
            return None
        items[match.group(1)] = match.group(2)
    try:
        return WsseToken(items["Username"], items["PasswordDigest"], items["Nonce"], items["Created"])
    except KeyError:
        return None
