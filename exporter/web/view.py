"""What the HTTP endpoints see of the running exporter: a read-only view the daemon builds.

The web layer gets these callables and documents and nothing else: not the configuration
(which holds secrets), not the runners, the store or the ledger. The documents carry only names,
vendors, the `host` option, states, times, error messages (which never hold secrets, see
`exporter/model/errors.py`), device identities, quota counts and token expiry times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable


@dataclass(frozen=True)
class Device:
    model: str
    serial: str
    firmware: str
    meter: str | None  # set where one target holds several meters


@dataclass(frozen=True)
class QuotaWindow:
    api: str
    scope: str
    window: str  # "hour", "day", "5m"
    remaining: int


@dataclass(frozen=True)
class EndpointDown:
    """An endpoint of a device read through several that failed at its last read."""

    endpoint: str
    problem: str  # short: "HTTP 500", "timeout", "parse"


@dataclass(frozen=True)
class TargetStatus:
    """One target as the status page shows it; its fields are those of /api/v1/targets."""

    name: str
    vendor: str
    transport: str
    kind: str  # "poll" or "push": the target's delivery, under the API's name
    host: str | None
    interval: float
    state: str  # "up", "down" or "pending"
    last_success: float | None  # Unix seconds
    last_attempt: float | None
    next_poll: float | None  # None for push targets
    last_reason: str | None
    last_error: str | None
    next_step: str | None
    polls: int
    errors: dict[str, int]
    devices: tuple[Device, ...]
    token_expiry: float | None
    # Endpoints that failed at the last successful poll while the target stayed up on the others.
    endpoints_down: tuple[EndpointDown, ...]
    quota: tuple[QuotaWindow, ...]
    metrics_url: str

    def as_json(self) -> dict[str, Any]:
        doc = dict(vars(self))  # the fields, in order
        doc["errors"] = dict(self.errors)
        doc["devices"] = [dict(vars(d)) for d in self.devices]
        doc["endpoints_down"] = [dict(vars(d)) for d in self.endpoints_down]
        doc["quota"] = [dict(vars(q)) for q in self.quota]
        return doc


@dataclass(frozen=True)
class Status:
    """The document of `/api/v1/targets` (documented in docs/operations.md)."""

    version: str
    generated_at: float  # the server's clock: the page shows times relative to it
    reload_ok: bool
    targets: tuple[TargetStatus, ...]
    quota: tuple[QuotaWindow, ...]

    def as_json(self) -> dict[str, Any]:
        # The field order is the manual's. Not dataclasses.asdict: it deep-copies, a good part of
        # a second for 10,000 targets, during which nothing else runs.
        return {"version": self.version, "generated_at": self.generated_at, "reload_ok": self.reload_ok,
                "targets": [t.as_json() for t in self.targets], "quota": [dict(vars(q)) for q in self.quota]}


@dataclass(frozen=True)
class WebView:
    """What the endpoints may call. Each metrics callable expires stale targets first."""

    # The whole exposition, as cached chunks (never joined: tens of MB for a big fleet);
    # the argument says OpenMetrics (True) or text 0.0.4.
    metrics: Callable[[bool], list[bytes]]
    # The same, gzip-compressed (only what changed since the last scrape is compressed again).
    metrics_gzip: Callable[[bool], Awaitable[list[bytes]]]
    # One target's series, each family's header once; None when there is no such target.
    target_metrics: Callable[[str, bool], bytes | None]
    ready: Callable[[], bool]
    status: Callable[[], Status]
    # Reload the configuration: (ok, message). None unless `--web.enable-lifecycle` is given.
    reload: Callable[[], Awaitable[tuple[bool, str]]] | None = None
