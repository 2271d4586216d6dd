"""What the web layer reads of a running exporter (see exporter/web/view.py), built from the
configuration, the store and the quota ledger: each target's status, and one target's series.

Only what may be shown leaves here: of a target's options, its `host` and the plain values a
quota's scope is matched against (never a Secret).
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Callable, Iterable

from .. import __version__
from ..config.loader import Secret, TargetConfig
from ..console import next_step
from ..exposition import headers
from ..model import catalogue as M
from ..runtime.quota import WindowState
from ..store import SnapshotStore
from .view import Device, EndpointDown, QuotaWindow, Status, TargetStatus


def status(targets: Iterable[TargetConfig], store: SnapshotStore, windows: list[WindowState],
           delivery: Callable[[str], str], now: float | None = None) -> Status:
    """The targets the store knows (this replica's, under `--shard`), in configuration order;
    `delivery(name)` says how a target runs ("poll", or "push" for one that listens)."""
    now = time.time() if now is None else now
    quota = tuple(QuotaWindow(w.api, w.scope, w.window, w.remaining) for w in windows)
    rows = []
    for target in targets:
        state = store.targets.get(target.name)
        if state is None:
            continue
        runs_as = delivery(target.name)
        # A quota belongs to a target when its scope is the target's name or one of its plain
        # option values (an account, a serial); all of them are listed under "quota" too.
        values = {target.name} | {str(v) for v in target.options.values()
                                  if isinstance(v, (str, int)) and not isinstance(v, (bool, Secret))}
        host = target.options.get("host")
        rows.append(TargetStatus(
            name=target.name,
            vendor=target.vendor,
            transport=target.transport,
            kind=runs_as,
            host=host if isinstance(host, str) else None,
            interval=target.interval,
            state="up" if state.up else ("pending" if state.last_attempt is None else "down"),
            last_success=state.last_success,
            last_attempt=state.last_attempt,
            next_poll=state.next_poll if runs_as == "poll" else None,
            last_reason=state.last_reason,
            last_error=state.last_error,
            next_step=next_step(state.last_reason) if state.last_error else None,
            polls=state.polls,
            errors=dict(sorted(state.errors.items())),
            devices=tuple(Device(d.model, d.serial, d.firmware, d.meter) for d in state.devices),
            token_expiry=store.target_value(target.name, M.TOKEN_EXPIRY),
            endpoints_down=tuple(EndpointDown(name, problem) for name, problem in state.endpoints_down),
            quota=tuple(q for q in quota if q.scope in values),
            metrics_url="metrics?" + urllib.parse.urlencode({"target": target.name}),
        ))
    return Status(version=__version__, generated_at=round(now, 3), reload_ok=bool(store.reload_ok),
                  targets=tuple(rows), quota=quota)


def target_body(store: SnapshotStore, name: str, openmetrics: bool) -> bytes:
    """One target's series only, from the cached lines (each family's header once)."""
    parts = []
    for metric, lines in store.target_lines(name).items():
        parts.append(headers(metric)[1 if openmetrics else 0])
        parts.append(lines)
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts).encode("utf-8")
