"""The exporter's HTTP endpoints: /metrics (optionally one target's: `?target=NAME`), the status
page and its JSON (`/`, `/api/v1/targets`, see statuspage.py), health, readiness and reload.

`POST /-/reload` works only when the daemon runs with `--web.enable-lifecycle` (as Prometheus's
own), and never for a request a browser sends on another site's behalf: any page the user
visits could otherwise make the browser post to the exporter on the local network.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.parse
from typing import TYPE_CHECKING

from aiohttp import web

from . import statuspage
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, headers

if TYPE_CHECKING:
    from .daemon import Daemon


def _q(params: str) -> float:
    """The q value of one element of an Accept or Accept-Encoding header (1 when absent)."""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0  # also NaN
    return 1.0


def wants_openmetrics(accept: str) -> bool:
    """Prometheus asks for OpenMetrics first when it wants it; anything else gets text 0.0.4."""
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() == "application/openmetrics-text":
            return _q(params) > 0
    return False


def wants_gzip(accept_encoding: str) -> bool:
    """gzip only when named, with a q above 0 (`gzip;q=0` and `gzip;q=0.0` refuse it)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return _q(params) > 0
    return False


# The content types a cross-site page can POST without the browser asking the server first
# (a CORS preflight, which this server never approves): an HTML form's, or fetch's "simple" ones.
FORM_CONTENT_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
LIFECYCLE_FLAG = "--web.enable-lifecycle"


def cross_site(request: web.BaseRequest) -> str | None:
    """Why `request` looks sent by a browser on another site's behalf, or None."""
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = request.headers.get("Origin")
    if origin is not None:
        parsed = urllib.parse.urlsplit(origin.strip())
        if origin.strip() == "null" or parsed.netloc.lower() != request.host.lower():
            return "Origin is not this server"
    if request.content_type.lower() in FORM_CONTENT_TYPES and request.headers.get("Content-Type"):
        return f"Content-Type: {request.content_type}"
    return None


def make_app(daemon: "Daemon", middlewares=(), lifecycle: bool = False) -> web.Application:
    """`lifecycle`: whether `POST /-/reload` may reload (`--web.enable-lifecycle`)."""
    app = web.Application(client_max_size=64 * 1024, middlewares=list(middlewares))

    async def metrics(request: web.Request) -> web.StreamResponse:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        compress = wants_gzip(request.headers.get("Accept-Encoding", ""))
        daemon.store.expire()
        daemon.store.refresh_process()
        name = request.query.get("target")
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
        if compress:
            headers["Content-Encoding"] = "gzip"
        if name is not None:
            if name not in daemon.store.targets:
                return web.Response(status=404, text=f"No target named {name!r}.\n")
            body = target_body(daemon, name, openmetrics)
            if compress:
                body = gzip.compress(body, compresslevel=3)
            return web.Response(body=body, headers=headers)
        # The whole body: cached chunks written as they are (tens of MB for a big fleet), never
        # joined into one string; gzip compresses only what changed since the last scrape.
        cache = daemon.store.cache
        chunks = await cache.gzip_chunks(openmetrics) if compress else cache.chunks(openmetrics)
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(chunk) for chunk in chunks)
        try:
            # A client that stops reading would hold its connection, and these chunks, forever.
            async with asyncio.timeout(SEND_TIMEOUT):
                await response.prepare(request)
                for batch in _batches(chunks):
                    await response.write(batch)
                await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away: nothing to answer, nothing to log
        return response

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def ready(request: web.Request) -> web.Response:
        if daemon.ready():
            return web.Response(text="Ready.\n")
        return web.Response(status=503, text="Not ready: targets have not all been polled once.\n")

    async def reload(request: web.Request) -> web.Response:
        if not lifecycle:
            return web.Response(status=403, text=f"Reloading over HTTP is off: start the exporter with "
                                                 f"{LIFECYCLE_FLAG} to allow it, or send it SIGHUP.\n")
        why = cross_site(request)
        if why is not None:
            return web.Response(status=403, text=f"Refused: this looks like a cross-site request ({why}). "
                                                 f"Reload with e.g. `curl -X POST {request.url.with_query(None)}`.\n")
        ok, message = await daemon.reload()
        return web.Response(status=200 if ok else 400, text=message + "\n")

    async def reload_wrong_method(request: web.Request) -> web.Response:
        return web.Response(status=405, text="Use POST to reload.\n", headers={"Allow": "POST"})

    async def landing(request: web.Request) -> web.Response:
        try:
            refresh = float(request.query.get("refresh", statuspage.DEFAULT_REFRESH))
        except ValueError:
            refresh = statuspage.DEFAULT_REFRESH
        refresh = min(max(refresh, 1.0), 3600.0) if refresh == refresh else statuspage.DEFAULT_REFRESH
        return web.Response(text=statuspage.render(daemon, refresh), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def targets(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(statuspage.status(daemon)), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/-/reload", reload_wrong_method)
    app.router.add_get("/", landing)
    app.router.add_get("/api/v1/targets", targets)
    return app


WRITE_BATCH = 256 * 1024
# Seconds a /metrics body may take to send: far above a scrape timeout, and the end of a client
# that stopped reading.
SEND_TIMEOUT = 120.0


def _batches(chunks: list[bytes]):
    """Chunks joined into writes of about WRITE_BATCH bytes: few writes for thousands of small
    compressed pieces, and no copy of the big plain ones."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if size and size + len(chunk) > WRITE_BATCH:
            yield b"".join(pending) if len(pending) > 1 else pending[0]
            pending, size = [], 0
        pending.append(chunk)
        size += len(chunk)
    if pending:
        yield b"".join(pending) if len(pending) > 1 else pending[0]


def target_body(daemon: "Daemon", name: str, openmetrics: bool) -> bytes:
    """One target's series only, from the cached lines (each family's header once)."""
    parts = []
    for metric, lines in daemon.store.target_lines(name).items():
        parts.append(headers(metric)[1 if openmetrics else 0])
        parts.append(lines)
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts).encode("utf-8")
