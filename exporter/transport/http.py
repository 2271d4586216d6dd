"""HTTP requests for adapters: bounded bodies, and every failure turned into a PollError."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import aiohttp

from ..model.errors import PollError
from ..model.jsontext import JsonError, header_problem, label_text, loads

MAX_BODY_BYTES = 4 * 1024 * 1024  # no meter answers with more; a bigger body is a fault


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON (see `jsontext.loads`); PollError(parse) when it is not."""
        try:
            return loads(self.body)
        except JsonError as exc:
            raise PollError("parse", str(exc)) from None


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    ssl_context: ssl.SSLContext | aiohttp.Fingerprint | bool | None = None,
    server_hostname: str | None = None,
    auth: aiohttp.BasicAuth | None = None,
    middlewares: Sequence[aiohttp.ClientMiddlewareType] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Response:
    """One request; the caller bounds it in time. The URL goes into messages, so it must not
    carry secrets (tokens travel in headers). `middlewares` (an authentication handshake, say)
    wrap this request only; None keeps the session's."""
    if headers:
        _check_headers(url, headers)
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs["ssl"] = ssl_context
    if server_hostname:
        kwargs["server_hostname"] = server_hostname
    if middlewares is not None:
        kwargs["middlewares"] = tuple(middlewares)
    try:
        async with session.request(
            method, url, headers=headers, json=json_body, data=data, auth=auth,
            allow_redirects=False, **kwargs,
        ) as resp:
            length = resp.content_length
            if length is not None and length > max_bytes:
                raise PollError("too_large", f"{url}: answer of {length} bytes refused (limit {max_bytes})")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise PollError("too_large", f"{url}: answer larger than {max_bytes} bytes refused")
                chunks.append(chunk)
            return Response(resp.status, b"".join(chunks), dict(resp.headers))
    except PollError:
        raise
    except asyncio.TimeoutError:
        raise PollError("timeout", f"{url}: no answer in time") from None
    except aiohttp.ServerFingerprintMismatch as exc:
        raise PollError("tls", f"{url}: certificate fingerprint {exc.got.hex()} is not the pinned one") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise PollError("tls", f"{url}: certificate not trusted: {_tls_reason(exc.certificate_error)}") from None
    except aiohttp.ClientSSLError as exc:
        raise PollError("tls", f"{url}: TLS failed: {_tls_reason(exc)}") from None
    except ssl.SSLError as exc:
        raise PollError("tls", f"{url}: TLS failed: {_tls_reason(exc)}") from None
    except aiohttp.ClientConnectorError as exc:
        raise PollError("connection", f"{url}: cannot connect: {exc.os_error.strerror or exc.os_error}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise PollError("connection", f"{url}: connection lost: {exc.__class__.__name__}") from None
    except aiohttp.ClientResponseError as exc:
        raise PollError("parse", f"{url}: malformed HTTP answer: {label_text(str(exc.message), 200)}") from None
    except aiohttp.ClientError as exc:
        raise PollError("connection", f"{url}: {exc.__class__.__name__}: {label_text(str(exc), 200)}") from None
    except OSError as exc:
        raise PollError("connection", f"{url}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a header, name or URL the client refuses to send
        raise PollError("config", f"{url}: the request cannot be sent ({exc.__class__.__name__})") from None


def _check_headers(url: str, headers: Mapping[str, str]) -> None:
    """A header that cannot be sent (a token with a line break, from token_file or a state
    file) is the configuration's fault: reason `config`, and the value is never quoted."""
    for name, value in headers.items():
        problem = header_problem(value)
        if problem is not None:
            raise PollError("config", f"{url}: the {name} header cannot be sent: {problem} "
                                      "(check the token or credentials configured for this target)")


def _tls_reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return str(reason)


def status_error(url: str, resp: Response, detail: str = "") -> PollError:
    """A PollError for an unexpected status, classified the way users act on it."""
    reason = "unauthorized" if resp.status in (401, 403) else "http_error"
    extra = f": {detail}" if detail else ""
    return PollError(reason, f"{url}: HTTP {resp.status}{extra}")
