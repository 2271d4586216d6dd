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

from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ..exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from . import statuspage
from .view import WebView


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


def _without_refusals(header: str) -> str:
    """The header without its elements of q=0, which refuse what they name (RFC 9110): the
    client library's negotiation reads no q values."""
    return ",".join(part for part in header.split(",") if _q(part.partition(";")[2]) > 0)


def wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when prometheus_client would choose it for this Accept header (the first
    `application/openmetrics-text` without a version or of version 1.0.0 or later); anything
    else gets text 0.0.4. The body is OpenMetrics 1.0.0 whichever version was asked for."""
    try:
        _, content_type = choose_encoder(_without_refusals(accept))
    except (TypeError, ValueError):  # a version it cannot compare, as `version=x`
        return False
    return content_type.startswith("application/openmetrics-text")


def wants_gzip(accept_encoding: str) -> bool:
    """gzip when prometheus_client would send it and the header does not refuse it with q=0
    (`gzip;q=0`, `gzip;q=0.0`)."""
    return gzip_accepted(_without_refusals(accept_encoding))


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


def make_app(view: WebView, middlewares=()) -> web.Application:
    """The endpoints over `view`; `POST /-/reload` reloads only when the view allows it
    (`--web.enable-lifecycle`)."""
    app = web.Application(client_max_size=64 * 1024, middlewares=list(middlewares))

    async def metrics(request: web.Request) -> web.StreamResponse:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        compress = wants_gzip(request.headers.get("Accept-Encoding", ""))
        name = request.query.get("target")
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
        if compress:
            headers["Content-Encoding"] = "gzip"
        if name is not None:
            body = view.target_metrics(name, openmetrics)
            if body is None:
                return web.Response(status=404, text=f"No target named {name!r}.\n")
            if compress:
                body = gzip.compress(body, compresslevel=3)
            return web.Response(body=body, headers=headers)
        # The whole body: cached chunks written as they are (tens of MB for a big fleet), never
        # joined into one string; gzip compresses only what changed since the last scrape.
        chunks = await view.metrics_gzip(openmetrics) if compress else view.metrics(openmetrics)
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
        if view.ready():
            return web.Response(text="Ready.\n")
        return web.Response(status=503, text="Not ready: targets have not all been polled once.\n")

    async def reload(request: web.Request) -> web.Response:
        if view.reload is None:
            return web.Response(status=403, text=f"Reloading over HTTP is off: start the exporter with "
                                                 f"{LIFECYCLE_FLAG} to allow it, or send it SIGHUP.\n")
        why = cross_site(request)
        if why is not None:
            return web.Response(status=403, text=f"Refused: this looks like a cross-site request ({why}). "
                                                 f"Reload with e.g. `curl -X POST {request.url.with_query(None)}`.\n")
        ok, message = await view.reload()
        return web.Response(status=200 if ok else 400, text=message + "\n")

    async def reload_wrong_method(request: web.Request) -> web.Response:
        return web.Response(status=405, text="Use POST to reload.\n", headers={"Allow": "POST"})

    async def landing(request: web.Request) -> web.Response:
        refresh = statuspage.refresh_of(request.query.get("refresh"))
        return web.Response(text=statuspage.render(view.status(), refresh), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def targets(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(view.status().as_json()), content_type="application/json",
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
