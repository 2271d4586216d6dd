"""The certificate a TLS server presents, read without verifying it: to tell whether a port speaks
TLS, and to show a self-signed certificate's fingerprint so that a person can pin it. Only
identities are read this way; nothing secret is ever sent over such a connection."""

from __future__ import annotations

import asyncio
import hashlib
import ssl


def unverified_context() -> ssl.SSLContext:
    """A client context that checks neither the certificate nor the name."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def peer_fingerprint(host: str, port: int, timeout: float, context: ssl.SSLContext | None = None) -> str | None:
    """SHA-256 (lower-case hex) of the certificate the server presents; None when it speaks no
    TLS or does not answer within `timeout` seconds."""
    writer = None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context or unverified_context()), timeout)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest() if der else None
    except (OSError, asyncio.TimeoutError, ssl.SSLError, AttributeError):
        return None
    finally:
        if writer is not None:
            writer.close()
            try:  # a peer that never answers the close must not hold the caller
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass


def colon_hex(digest: str) -> str:
    """`AB:CD:...`, the way browsers show a fingerprint."""
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)).upper()
