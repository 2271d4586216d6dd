"""HTTP Digest authentication (RFC 7616) for gateways with firmware below 7: aiohttp's
middleware, which answers a 401's challenge once and then keeps sending its nonce (with a rising
nonce count) on later requests to the gateway, so that they need no extra round trip until the
gateway asks again. One instance per gateway, kept across polls.

The middleware answers any challenge it can parse, and echoes its realm, nonce and opaque into
the `Authorization` header. A challenge whose values cannot travel back in a header (a control
character, a byte that is not text) would make aiohttp refuse to send the answer (a ValueError,
which reads as a configuration fault); one it cannot answer (no realm or nonce, an unknown
algorithm, no usable qop) would make it raise a ClientError. Such a challenge is the gateway's
fault: it is not answered, and the 401 stands as the gateway's refusal.
"""

from __future__ import annotations

from aiohttp import ClientResponse, DigestAuthMiddleware, hdrs
from aiohttp.client_middleware_digest_auth import DigestFunctions, parse_header_pairs

from ...model.jsontext import header_problem


def answerable(header: str) -> bool:
    """Whether a Digest challenge can be answered without echoing anything unsafe."""
    if header_problem(header) is not None:
        return False
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "digest":
        return True  # not a Digest challenge: the middleware ignores it
    pairs = parse_header_pairs(params)
    if not pairs.get("nonce") or "realm" not in pairs:
        return False
    if pairs.get("algorithm", "MD5").upper() not in DigestFunctions:
        return False
    qops = {q.strip() for q in pairs.get("qop", "").split(",") if q.strip()}
    return not qops or bool(qops & {"auth", "auth-int"})


class DigestAuth(DigestAuthMiddleware):
    """aiohttp's Digest middleware, refusing the challenges described above."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        self.username = username

    def __repr__(self) -> str:
        return f"DigestAuth(username={self.username!r})"

    # The middleware has no public hook between reading a challenge and answering it; this
    # one is where it decides to answer (aiohttp 3.12 to 3.14). tests/test_enphase_local.py
    # pins the behaviour, so a rename in aiohttp shows there.
    def _authenticate(self, response: ClientResponse) -> bool:
        header = response.headers.get(hdrs.WWW_AUTHENTICATE, "")
        if response.status == 401 and header and not answerable(header):
            return False
        return super()._authenticate(response)
