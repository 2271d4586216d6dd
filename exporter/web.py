"""The exporter's HTTP endpoints: /metrics, the landing page, health, readiness and reload."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from aiohttp import web

from . import __version__
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

if TYPE_CHECKING:
    from .daemon import Daemon


def wants_openmetrics(accept: str) -> bool:
    """Prometheus asks for OpenMetrics first when it wants it; anything else gets text 0.0.4."""
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() == "application/openmetrics-text":
            q = 1.0
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            return q > 0
    return False


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return "q=0" not in params.replace(" ", "") or "q=0." in params
    return False


def make_app(daemon: "Daemon", middlewares=()) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=list(middlewares))

    async def metrics(request: web.Request) -> web.Response:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        compress = wants_gzip(request.headers.get("Accept-Encoding", ""))
        daemon.store.expire()
        body = daemon.store.cache.encoded(openmetrics, compress)
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def ready(request: web.Request) -> web.Response:
        if daemon.ready():
            return web.Response(text="Ready.\n")
        return web.Response(status=503, text="Not ready: targets have not all been polled once.\n")

    async def reload(request: web.Request) -> web.Response:
        ok, message = await daemon.reload()
        return web.Response(status=200 if ok else 400, text=message + "\n")

    async def reload_wrong_method(request: web.Request) -> web.Response:
        return web.Response(status=405, text="Use POST to reload.\n", headers={"Allow": "POST"})

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=landing_page(daemon), content_type="text/html")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/-/reload", reload_wrong_method)
    app.router.add_get("/", landing)
    return app


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = max(0, now - when)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def landing_page(daemon: "Daemon") -> str:
    """A table of targets. Only names, vendors, states and error texts: never connection secrets."""
    now = time.time()
    rows = []
    for target in daemon.config.targets:
        state = daemon.store.targets.get(target.name)
        if state is None:
            continue
        status = "up" if state.up else ("pending" if state.last_attempt is None else "down")
        error = "" if state.last_error is None else f"{state.last_reason}: {state.last_error}"
        rows.append(
            "<tr class='{cls}'><td>{name}</td><td>{vendor}</td><td>{transport}</td><td>{status}</td>"
            "<td>{success}</td><td>{error}</td></tr>".format(
                cls=status, name=html.escape(target.name), vendor=html.escape(target.vendor),
                transport=html.escape(target.transport), status=status,
                success=html.escape(_ago(state.last_success, now)), error=html.escape(error),
            )
        )
    reload_note = "" if daemon.store.reload_ok else (
        "<p class='warn'>The last configuration reload failed; the previous configuration is still running. "
        "See the log.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>energy-meter-exporter</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; }}
tr.down td {{ background: #fde8e8; }} tr.up td:nth-child(4) {{ color: #157f1f; }} .warn {{ color: #a00; }}
</style></head><body>
<h1>energy-meter-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">Metrics</a> · <a href="/-/healthy">Health</a> · <a href="/-/ready">Readiness</a></p>
{reload_note}
<table><thead><tr><th>Target</th><th>Vendor</th><th>Transport</th><th>State</th><th>Last success</th><th>Last error</th></tr></thead>
<tbody>
{"".join(rows) or "<tr><td colspan=6>No targets configured.</td></tr>"}
</tbody></table>
</body></html>
"""
