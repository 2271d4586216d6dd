"""The status page (`/`) and its JSON (`/api/v1/targets`).

The page is rendered on the server, so it works without JavaScript (it then reloads itself
every 30 s); a few lines of plain JavaScript fetch the JSON every few seconds and redraw the
table in place, and a line at the top says when they last did. Narrow screens get one card per
target instead of a wide table.

Neither the page nor the JSON carries secrets: only names, vendors, the `host` option, states,
times, error messages (which never hold secrets, see `exporter/errors.py`), device identities,
quota counts and token expiry times.
"""

from __future__ import annotations

import html
import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from . import __version__
from . import catalogue as M
from .config import Secret
from .console import next_step

if TYPE_CHECKING:
    from .daemon import Daemon

DEFAULT_REFRESH = 5.0  # seconds between the script's refreshes
TOKEN_WARN = 14 * 86400.0  # token expiry shown as a warning below this


def status(daemon: "Daemon", now: float | None = None) -> dict[str, Any]:
    """The JSON document of `/api/v1/targets` (documented in the README)."""
    now = time.time() if now is None else now
    windows = daemon.ledger.windows()
    targets = []
    for target in daemon.config.targets:
        state = daemon.store.targets.get(target.name)
        if state is None:
            continue
        runner = daemon.runners.get(target.name)
        kind = runner.kind if runner is not None else "poll"
        # A quota belongs to a target when its scope is the target's name or one of its plain
        # option values (an account, a serial); all of them are listed under "quota" too.
        values = {target.name} | {str(v) for v in target.options.values()
                                  if isinstance(v, (str, int)) and not isinstance(v, (bool, Secret))}
        host = target.options.get("host")
        targets.append({
            "name": target.name,
            "vendor": target.vendor,
            "transport": target.transport,
            "kind": kind,
            "host": host if isinstance(host, str) else None,
            "interval": target.interval,
            "state": "up" if state.up else ("pending" if state.last_attempt is None else "down"),
            "last_success": state.last_success,
            "last_attempt": state.last_attempt,
            "next_poll": state.next_poll if kind == "poll" else None,
            "last_reason": state.last_reason,
            "last_error": state.last_error,
            "next_step": next_step(state.last_reason) if state.last_error else None,
            "polls": state.polls,
            "errors": dict(sorted(state.errors.items())),
            "devices": [{"model": d.model, "serial": d.serial, "firmware": d.firmware, "meter": d.meter}
                        for d in state.devices],
            "token_expiry": daemon.store.target_value(target.name, M.TOKEN_EXPIRY),
            "quota": [_window(w) for w in windows if w.scope in values],
            "metrics_url": "metrics?" + urllib.parse.urlencode({"target": target.name}),
        })
    return {
        "version": __version__,
        "generated_at": round(now, 3),
        "reload_ok": bool(daemon.store.reload_ok),
        "targets": targets,
        "quota": [_window(w) for w in windows],
    }


def _window(w: Any) -> dict[str, Any]:
    return {"api": w.api, "scope": w.scope, "window": w.window, "remaining": w.remaining}


# --- server-side rendering (the script below draws the same cells from the JSON) -------------------


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _ago(when: float | None, now: float) -> str:
    return "never" if when is None else f"{_span(now - when)} ago"


def _until(when: float | None, now: float) -> str:
    if when is None:
        return DASH
    return "now" if when <= now else f"in {_span(when - now)}"


def _iso(when: float | None) -> str:
    return "" if when is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _token(expiry: float | None, now: float) -> tuple[str, str]:
    if expiry is None:
        return DASH, ""
    if expiry <= now:
        return f"expired {_span(now - expiry)} ago", "bad"
    return f"in {_span(expiry - now)}", "warn" if expiry - now < TOKEN_WARN else ""


DASH = "\u2014"


def _cell(label: str, content: str, cls: str = "", title: str = "") -> str:
    # Empty cells are hidden on narrow screens, where each cell is a line of a card.
    classes = " ".join(c for c in (cls, "empty" if content == DASH else "") if c)
    attributes = f" data-label='{label}'"
    if classes:
        attributes += f" class='{classes}'"
    if title:
        attributes += f" title='{title}'"
    return f"<td{attributes}>{content}</td>"


def _row(t: dict[str, Any], now: float) -> str:
    e = html.escape
    devices = ", ".join(" ".join(x for x in (d["model"], d["serial"]) if x) for d in t["devices"])
    error = DASH
    if t["last_error"]:
        error = f"<b>{e(t['last_reason'] or '')}</b>: {e(t['last_error'])}"
        if t["next_step"]:
            error += f"<br><small>What to do: {e(t['next_step'])}</small>"
    quota = "<br>".join(f"{e(q['api'])} {e(q['window'])}: {q['remaining']} left" for q in t["quota"]) or DASH
    token, token_class = _token(t["token_expiry"], now)
    next_poll = _until(t["next_poll"], now) if t["kind"] == "poll" else "push"
    target = (f"<b>{e(t['name'])}</b><br><small>{e(t['vendor'])} {e(t['transport'])}"
              f"{' · ' + e(t['host']) if t['host'] else ''}{'<br>' + e(devices) if devices else ''}</small>")
    return (
        f"<tr class='{t['state']}' data-target='{e(t['name'])}'>"
        + _cell("Target", target)
        + _cell("State", f"<span class='badge'>{t['state']}</span>", "state")
        + _cell("Last success", _ago(t["last_success"], now), title=_iso(t["last_success"]))
        + _cell("Next poll", next_poll, title=_iso(t["next_poll"]))
        + _cell("Last error", error, "error")
        + _cell("Quota", quota)
        + _cell("Token expires", token, token_class, _iso(t["token_expiry"]))
        + _cell("Series", f"<a href='{e(t['metrics_url'])}'>metrics</a>", "series")
        + "</tr>"
    )


def _summary(doc: dict[str, Any]) -> str:
    targets = doc["targets"]
    up = sum(1 for t in targets if t["state"] == "up")
    return f"{up} of {len(targets)} targets up"


def render(daemon: "Daemon", refresh: float = DEFAULT_REFRESH, now: float | None = None) -> str:
    now = time.time() if now is None else now
    doc = status(daemon, now)
    rows = "".join(_row(t, now) for t in doc["targets"]) or "<tr><td colspan='8'>No targets configured.</td></tr>"
    reload_note = "" if doc["reload_ok"] else (
        "<p class='bad'>The last configuration reload failed; the previous configuration is still running. "
        "See the log.</p>")
    return PAGE.format(
        version=html.escape(__version__), refresh=f"{refresh:g}", rows=rows, reload_note=reload_note,
        summary=_summary(doc), rendered=_iso(now), script=SCRIPT,
        initial=html.escape(json.dumps(doc), quote=True),
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="30"></noscript>
<title>energy-meter-exporter</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 80em; line-height: 1.35; }}
h1 {{ font-size: 1.3em; margin: 0 0 .3em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4em .5em; text-align: left; vertical-align: top; }}
td {{ overflow-wrap: break-word; }} td.error {{ overflow-wrap: anywhere; }} td.series {{ white-space: nowrap; }}
.badge {{ display: inline-block; padding: .05em .5em; border-radius: .8em; background: #ddd; font-weight: 600; }}
tr.up .badge {{ background: #c9f0cf; color: #0d5e18; }}
tr.down .badge {{ background: #f9cfcf; color: #8a1010; }}
tr.down td {{ background: #fff4f4; }}
.bad {{ color: #a00; }} .warn {{ color: #a25a00; }} small {{ color: #555; }}
#refreshed {{ color: #555; font-size: .9em; }} #refreshed.stale {{ color: #a00; }}
@media (max-width: 40em) {{
  thead {{ display: none; }}
  table, tbody, tr, td {{ display: block; width: auto; }}
  tr {{ border: 1px solid #ccc; border-radius: .4em; margin: 0 0 .8em; padding: .2em .4em; }}
  td {{ border: none; padding: .2em 0; }}
  td[data-label]::before {{ content: attr(data-label) ": "; font-weight: 600; color: #333; }}
  td[data-label='Target']::before {{ content: none; }}
  td.empty {{ display: none; }}
}}
</style></head>
<body data-refresh="{refresh}">
<h1>energy-meter-exporter {version}</h1>
<p><span id="summary">{summary}</span> · <a href="metrics">All metrics</a> · <a href="-/healthy">Health</a> ·
<a href="-/ready">Readiness</a> · <a href="api/v1/targets">JSON</a></p>
<p id="refreshed" data-by="server">Rendered at {rendered}.</p>
{reload_note}
<table><thead><tr><th>Target</th><th>State</th><th>Last success</th><th>Next poll</th><th>Last error</th>
<th>Quota</th><th>Token expires</th><th>Series</th></tr></thead>
<tbody id="targets" data-rendered-by="server">
{rows}
</tbody></table>
<script id="initial" type="application/json" data-json="{initial}"></script>
<script>{script}</script>
</body></html>
"""

# Draws the same cells as `_row` from /api/v1/targets. Times are shown relative to the
# server's clock (the offset is learnt from `generated_at`), and redrawn every second.
SCRIPT = r"""
(function () {
  var every = Math.max(1, Number(document.body.dataset.refresh) || 5) * 1000;
  var tbody = document.getElementById("targets"), note = document.getElementById("refreshed");
  var doc = null, offset = 0, refreshes = 0;
  function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}[c]; }); }
  function span(s) { s = Math.abs(s); return s < 90 ? Math.round(s) + "s" : s < 5400 ? Math.round(s / 60) + "m"
    : s < 172800 ? Math.round(s / 3600) + "h" : Math.round(s / 86400) + "d"; }
  function iso(t) { return t == null ? "" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"; }
  function cell(label, content, cls, title) {
    cls = [cls, content === "\u2014" ? "empty" : ""].filter(Boolean).join(" ");
    return "<td data-label='" + label + "'" + (cls ? " class='" + cls + "'" : "") +
      (title ? " title='" + title + "'" : "") + ">" + content + "</td>";
  }
  function row(t, now) {
    var devices = t.devices.map(function (d) { return [d.model, d.serial].filter(Boolean).join(" "); }).join(", ");
    var error = t.last_error ? "<b>" + esc(t.last_reason) + "</b>: " + esc(t.last_error) +
      (t.next_step ? "<br><small>What to do: " + esc(t.next_step) + "</small>" : "") : "\u2014";
    var quota = t.quota.map(function (q) { return esc(q.api) + " " + esc(q.window) + ": " + q.remaining + " left"; })
      .join("<br>") || "\u2014";
    var token = "\u2014", tokenClass = "";
    if (t.token_expiry != null) {
      token = t.token_expiry <= now ? "expired " + span(now - t.token_expiry) + " ago" : "in " + span(t.token_expiry - now);
      tokenClass = t.token_expiry <= now ? "bad" : t.token_expiry - now < 14 * 86400 ? "warn" : "";
    }
    var next = t.kind !== "poll" ? "push" : t.next_poll == null ? "\u2014" : t.next_poll <= now ? "now" : "in " + span(t.next_poll - now);
    var target = "<b>" + esc(t.name) + "</b><br><small>" + esc(t.vendor) + " " + esc(t.transport) +
      (t.host ? " \u00b7 " + esc(t.host) : "") + (devices ? "<br>" + esc(devices) : "") + "</small>";
    return "<tr class='" + esc(t.state) + "' data-target='" + esc(t.name) + "'>" +
      cell("Target", target) +
      cell("State", "<span class='badge'>" + esc(t.state) + "</span>", "state") +
      cell("Last success", t.last_success == null ? "never" : span(now - t.last_success) + " ago", "", iso(t.last_success)) +
      cell("Next poll", next, "", iso(t.next_poll)) +
      cell("Last error", error, "error") +
      cell("Quota", quota) +
      cell("Token expires", token, tokenClass, iso(t.token_expiry)) +
      cell("Series", "<a href='" + esc(t.metrics_url) + "'>metrics</a>", "series") + "</tr>";
  }
  function draw() {
    if (!doc) return;
    var now = Date.now() / 1000 + offset;
    tbody.innerHTML = doc.targets.map(function (t) { return row(t, now); }).join("") ||
      "<tr><td colspan='8'>No targets configured.</td></tr>";
    tbody.dataset.renderedBy = "script";
    var up = doc.targets.filter(function (t) { return t.state === "up"; }).length;
    document.getElementById("summary").textContent = up + " of " + doc.targets.length + " targets up";
  }
  function refresh() {
    fetch("api/v1/targets", {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (d) {
      doc = d; offset = d.generated_at - Date.now() / 1000; refreshes += 1; draw();
      document.body.dataset.refreshes = refreshes;
      note.dataset.by = "script"; note.className = "";
      note.textContent = "Live: updated " + new Date().toLocaleTimeString() + ", every " + every / 1000 + "s.";
    }).catch(function (e) {
      note.className = "stale";
      note.textContent = "Cannot reach the exporter (" + e.message + "); the table may be out of date. Retrying.";
    }).then(function () { setTimeout(refresh, every); });
  }
  try { doc = JSON.parse(document.getElementById("initial").dataset.json); offset = doc.generated_at - Date.now() / 1000; }
  catch (e) { doc = null; }
  setInterval(draw, 1000);
  setTimeout(refresh, every);
})();
"""
