"""The status page (`/`), rendered from the status document of `/api/v1/targets`.

Every row is rendered here, once: the page works without JavaScript (it then reloads itself
every 30 s), and its script (assets/status.js) fetches the page again every few seconds and
swaps in the rows, the summary and the reload note, so the table updates in place. Between
fetches the script only re-ages the times, which cells carry as `data-at` and `data-format`.
Narrow screens get one card per target instead of a wide table.

The document holds no secrets (see exporter/web/view.py), and neither does the page.
"""

from __future__ import annotations

import html
import math
import time
from importlib import resources
from string import Template

from .view import Status, TargetStatus

DEFAULT_REFRESH = 5.0  # seconds between the script's refreshes
TOKEN_WARN = 14 * 86400.0  # token expiry shown as a warning below this
DASH = "\u2014"

_ASSETS = resources.files(__package__).joinpath("assets")
PAGE = Template(_ASSETS.joinpath("status.html").read_text(encoding="utf-8"))
SCRIPT = _ASSETS.joinpath("status.js").read_text(encoding="utf-8")


def refresh_of(value: str | None) -> float:
    """`?refresh=SECONDS`, kept within 1 s and an hour."""
    try:
        refresh = float(value) if value is not None else DEFAULT_REFRESH
    except ValueError:
        return DEFAULT_REFRESH
    return min(max(refresh, 1.0), 3600.0) if refresh == refresh else DEFAULT_REFRESH  # NaN


# --- times (the script's `span` and `formats` age them alike between fetches) ---------------------


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    # Halves round up, as JavaScript's Math.round does.
    if seconds < 90:
        return f"{int(seconds + 0.5)}s"
    if seconds < 5400:
        return f"{int(seconds / 60 + 0.5)}m"
    if seconds < 172800:
        return f"{int(seconds / 3600 + 0.5)}h"
    return f"{int(seconds / 86400 + 0.5)}d"


def _ago(when: float, now: float) -> str:
    return f"{_span(now - when)} ago"


def _until(when: float, now: float) -> str:
    return "now" if when <= now else f"in {_span(when - now)}"


def _expiry(when: float, now: float) -> str:
    return f"expired {_span(now - when)} ago" if when <= now else f"in {_span(when - now)}"


_FORMATS = {"ago": _ago, "until": _until, "expiry": _expiry}


def _iso(when: float | None) -> str:
    return "" if when is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


# --- rows -----------------------------------------------------------------------------------------


def _cell(label: str, content: str, cls: str = "", title: str = "", at: float | None = None,
          style: str = "") -> str:
    # Empty cells are hidden on narrow screens, where each cell is a line of a card.
    classes = " ".join(c for c in (cls, "empty" if content == DASH else "") if c)
    attributes = f" data-label='{label}'"
    if classes:
        attributes += f" class='{classes}'"
    if title:
        attributes += f" title='{title}'"
    if at is not None:
        attributes += f" data-at='{at!r}' data-format='{style}'"
    return f"<td{attributes}>{content}</td>"


def _time_cell(label: str, when: float | None, style: str, now: float, absent: str = DASH, cls: str = "") -> str:
    """A cell showing `when` relative to `now` in a style of _FORMATS, which the script ages."""
    if when is None or not math.isfinite(when):
        return _cell(label, absent, cls)
    return _cell(label, _FORMATS[style](when, now), cls, _iso(when), at=when, style=style)


def _token_class(expiry: float | None, now: float) -> str:
    if expiry is None:
        return ""
    return "bad" if expiry <= now else "warn" if expiry - now < TOKEN_WARN else ""


def row(t: TargetStatus, now: float) -> str:
    e = html.escape
    devices = ", ".join(" ".join(x for x in (d.model, d.serial) if x) for d in t.devices)
    error = DASH
    if t.last_error:
        error = f"<b>{e(t.last_reason or '')}</b>: {e(t.last_error)}"
        if t.next_step:
            error += f"<br><small>What to do: {e(t.next_step)}</small>"
    if t.state == "up" and t.endpoints_down:
        # The target is up on its other endpoints; these ones' figures are missing.
        down = ", ".join(f"{e(d.endpoint)} ({e(d.problem)})" for d in t.endpoints_down)
        note = f"<span class='warn endpoints-down'>endpoints down: {down}</span>"
        error = note if error == DASH else f"{error}<br>{note}"
    quota = "<br>".join(f"{e(q.api)} {e(q.window)}: {q.remaining} left" for q in t.quota) or DASH
    target = (f"<b>{e(t.name)}</b><br><small>{e(t.vendor)} {e(t.transport)}"
              f"{' · ' + e(t.host) if t.host else ''}{'<br>' + e(devices) if devices else ''}</small>")
    next_poll = (_time_cell("Next poll", t.next_poll, "until", now) if t.kind == "poll"
                 else _cell("Next poll", "push"))
    return (
        f"<tr class='{e(t.state)}' data-target='{e(t.name)}'>"
        + _cell("Target", target)
        + _cell("State", f"<span class='badge'>{e(t.state)}</span>", "state")
        + _time_cell("Last success", t.last_success, "ago", now, absent="never")
        + next_poll
        + _cell("Last error", error, "error")
        + _cell("Quota", quota)
        + _time_cell("Token expires", t.token_expiry, "expiry", now, cls=_token_class(t.token_expiry, now))
        + _cell("Series", f"<a href='{e(t.metrics_url)}'>metrics</a>", "series")
        + "</tr>"
    )


def render(status: Status, refresh: float = DEFAULT_REFRESH) -> str:
    now = status.generated_at
    rows = "".join(row(t, now) for t in status.targets) or "<tr><td colspan='8'>No targets configured.</td></tr>"
    up = sum(1 for t in status.targets if t.state == "up")
    reload_note = "" if status.reload_ok else (
        "<p class='bad'>The last configuration reload failed; the previous configuration is still running. "
        "See the log.</p>")
    return PAGE.substitute(
        version=html.escape(status.version), refresh=f"{refresh:g}", rows=rows, reload_note=reload_note,
        summary=f"{up} of {len(status.targets)} targets up", rendered=_iso(now), now=repr(now), script=SCRIPT,
    )
