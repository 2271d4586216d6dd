"""Authorization headers of the IOmeter Partner API: Basic, and WSSE as the API documents it.

WSSE: digest = base64(hex(sha256(nonce + created + secret))), where nonce is 16 random bytes
in hex and created an RFC 3339 UTC timestamp to the second. The header is sent as
`Authorization: UsernameToken Username="...", PasswordDigest="...", Nonce="...", Created="..."`.
The secret itself never travels with WSSE; every request gets a fresh nonce.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ...config.loader import Secret

METHODS = ("basic", "wsse")


def basic_header(partner_id: str, secret: str) -> str:
    token = base64.b64encode(f"{partner_id}:{secret}".encode("utf-8")).decode("ascii")
    return f"Basic {token}"


def created_timestamp(now: float) -> str:
    """RFC 3339 UTC to the second, as Go's time.RFC3339 writes it for UTC."""
    return datetime.fromtimestamp(int(now), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_nonce() -> str:
    return secrets.token_hex(16)


def password_digest(nonce: str, created: str, secret: str) -> str:
    hex_digest = hashlib.sha256((nonce + created + secret).encode("utf-8")).hexdigest()
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")


def wsse_header(partner_id: str, secret: str, nonce: str, created: str) -> str:
    digest = password_digest(nonce, created, secret)
    return (
        f'UsernameToken Username="{partner_id}", PasswordDigest="{digest}", '
        f'Nonce="{nonce}", Created="{created}"'
    )


_WSSE_FIELD = re.compile(r'(\w+)="([^"]*)"')


def parse_wsse(header: str) -> dict[str, str] | None:
    """The fields of a WSSE header (for servers, e.g. the simulator), or None if it is not one."""
    text = header.strip()
    if not text.startswith("UsernameToken "):
        return None
    fields = dict(_WSSE_FIELD.findall(text[len("UsernameToken "):]))
    needed = ("Username", "PasswordDigest", "Nonce", "Created")
    return fields if all(k in fields for k in needed) else None


@dataclass(frozen=True)
class Credentials:
    method: str  # basic | wsse
    partner_id: str
    secret: Secret
    clock: Callable[[], float] = time.time

    def header(self) -> str:
        """A fresh Authorization value (a new nonce and timestamp each time for WSSE)."""
        if self.method == "wsse":
            return wsse_header(
                self.partner_id, self.secret.reveal(), new_nonce(), created_timestamp(self.clock())
            )
        return basic_header(self.partner_id, self.secret.reveal())
