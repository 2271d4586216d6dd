"""The snapshot store: per target, the last good reading and the state of its polling.

A successful poll (or push message) replaces the target's snapshot whole and re-renders its
lines in the family cache; a failure only changes the target's own status series. Series of a
target that has not succeeded for `stale_after` are removed by `expire()`, so a dead meter does
not show a frozen value forever.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from prometheus_client import ProcessCollector

from . import __version__
from . import catalogue as M
from .catalogue import Metric
from .exposition import FamilyCache, render_samples, sample_line
from .samples import DeviceInfo, Reading, Sample

# A counter reading lower than the one held is a firmware glitch until it has stayed lower for
# this long; then it is taken as a replaced meter and the new value exported (a reset).
COUNTER_RESET_GRACE = 3600.0

DEVICE_FAMILIES_KEY = "device"


@dataclass
class TargetState:
    name: str
    vendor: str
    stale_after: float
    up: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_reason: str | None = None
    next_poll: float | None = None
    poll_duration: float | None = None
    polls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    regressions: int = 0
    devices: list[DeviceInfo] = field(default_factory=list)
    has_series: bool = False
    # (metric name, labels) -> [held value, time the first lower reading was seen or None]
    counters: dict[tuple[str, tuple], list] = field(default_factory=dict)
    device_families: set[Metric] = field(default_factory=set)


class SnapshotStore:
    def __init__(self, clock=time.time) -> None:
        self.cache = FamilyCache()
        self.targets: dict[str, TargetState] = {}
        self.clock = clock
        self.reload_ok = 1
        self.reload_time = clock()
        self._process = ProcessCollector(registry=None)
        self._process_at = float("-inf")
        self._render_global()

    # --- targets ---------------------------------------------------------------------------
    def add_target(self, name: str, vendor: str, stale_after: float) -> TargetState:
        state = self.targets.get(name)
        if state is None or state.vendor != vendor:
            if state is not None:
                self.remove_target(name)
            state = self.targets[name] = TargetState(name, vendor, stale_after)
        state.stale_after = stale_after
        self._render_status(state)
        return state

    def remove_target(self, name: str) -> None:
        state = self.targets.pop(name, None)
        if state is not None:
            self.cache.drop_owner(name)

    def record_success(self, name: str, reading: Reading, duration: float | None = None) -> None:
        state = self.targets.get(name)
        if state is None:  # removed by a reload while its poll was in flight
            return
        now = self.clock()
        samples = self._hold_counters(state, reading.samples, now)
        base = (("vendor", state.vendor), ("device", name))
        fragments = render_samples(samples, base)
        if reading.devices:
            state.devices = list(reading.devices)
        if state.devices:  # most polls carry no identity: keep what was learnt before
            fragments[M.DEVICE_INFO] = self._info_lines(state, base)
        self.cache.set_fragments(name, fragments, scope=state.device_families)
        state.device_families = set(fragments)
        state.has_series = True
        state.up = True
        state.last_success = now
        state.last_attempt = now
        state.last_error = None
        state.last_reason = None
        state.polls += 1
        if duration is not None:
            state.poll_duration = duration
        self._render_status(state)

    def record_failure(self, name: str, reason: str, message: str, duration: float | None = None) -> None:
        state = self.targets.get(name)
        if state is None:
            return
        state.up = False
        state.last_attempt = self.clock()
        state.last_error = message
        state.last_reason = reason
        state.polls += 1
        state.errors[reason] = state.errors.get(reason, 0) + 1
        if duration is not None:
            state.poll_duration = duration
        self._render_status(state)

    def set_next_poll(self, name: str, when: float) -> None:
        state = self.targets.get(name)
        if state is not None:
            state.next_poll = when

    def expire(self) -> list[str]:
        """Drop the device series of targets whose last success is older than their limit."""
        now = self.clock()
        expired = []
        for state in self.targets.values():
            if not state.has_series:
                continue
            if state.last_success is None or now - state.last_success > state.stale_after:
                self.cache.drop_owner(state.name, scope=state.device_families)
                state.device_families = set()
                state.has_series = False
                expired.append(state.name)
        return expired

    def set_reload_result(self, ok: bool) -> None:
        self.reload_ok = 1 if ok else 0
        if ok:
            self.reload_time = self.clock()
        self._render_global()

    def set_global(self, owner: str, metric: Metric, series: list[tuple[tuple[tuple[str, str], ...], float]]) -> None:
        """Series that belong to no single target (a shared listener's counters): `owner` names
        their source, and a later call replaces them."""
        lines = "".join(sample_line(metric.name, labels, value) for labels, value in series)
        self.cache.set_fragments(f"global:{owner}", {metric: lines} if lines else {}, scope=(metric,))

    def refresh_process(self, min_age: float = 1.0) -> None:
        """Process series (memory, file descriptors, CPU, event-loop tasks), at most once per
        `min_age` seconds however often Prometheus scrapes."""
        now = time.monotonic()
        if now - self._process_at < min_age:
            return
        self._process_at = now
        values = {s.name: s.value for family in self._process.collect() for s in family.samples}
        fragments = {m: sample_line(m.name, (), values[m.name]) for m in M.PROCESS_METRICS if m.name in values}
        try:
            fragments[M.ASYNCIO_TASKS] = sample_line(M.ASYNCIO_TASKS.name, (), len(asyncio.all_tasks()))
        except RuntimeError:  # no running loop (unit tests)
            pass
        self.cache.set_fragments("process", fragments, scope=(*M.PROCESS_METRICS, M.ASYNCIO_TASKS))

    def set_quota(self, windows) -> None:
        """Render the quota ledger's windows (`QuotaLedger.windows()`): calls left and allowed."""
        fragments = {}
        for metric, attr in ((M.QUOTA_REMAINING, "remaining"), (M.QUOTA_LIMIT, "limit")):
            lines = "".join(
                sample_line(metric.name, (("api", w.api), ("scope", w.scope), ("window", w.window)), getattr(w, attr))
                for w in windows
            )
            if lines:
                fragments[metric] = lines
        self.cache.set_fragments("", fragments, scope=(M.QUOTA_REMAINING, M.QUOTA_LIMIT))

    # --- read-only views (status page, /metrics?target=) ------------------------------------
    def target_lines(self, name: str) -> dict[Metric, str]:
        """One target's rendered sample lines (device and status series), per family, in the
        order of a full scrape. Reads the family cache: nothing is rendered again."""
        return self.cache.fragments_of(name)

    def target_value(self, name: str, metric: Metric) -> float | None:
        """The value of a target's single series of `metric` (e.g. its token expiry), or None."""
        lines = self.cache.fragment(metric, name)
        if not lines:
            return None
        try:
            return float(lines.splitlines()[0].rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            return None

    # --- rendering -------------------------------------------------------------------------
    def _info_lines(self, state: TargetState, base: tuple) -> str:
        lines = []
        for info in state.devices:
            pairs = base + ((("meter", info.meter),) if info.meter is not None else ()) + (
                ("model", info.model), ("serial", info.serial), ("firmware", info.firmware))
            lines.append(sample_line(M.DEVICE_INFO.name, pairs, 1))
        return "".join(lines)

    def _render_status(self, state: TargetState) -> None:
        base = (("vendor", state.vendor), ("device", state.name))
        fragments = {
            M.TARGET_UP: sample_line(M.TARGET_UP.name, base, 1 if state.up else 0),
            M.POLLS: sample_line(M.POLLS.name, base, state.polls),
            M.COUNTER_REGRESSIONS: sample_line(M.COUNTER_REGRESSIONS.name, base, state.regressions),
        }
        if state.last_success is not None:
            fragments[M.LAST_SUCCESS] = sample_line(M.LAST_SUCCESS.name, base, round(state.last_success, 3))
        if state.poll_duration is not None:
            fragments[M.POLL_DURATION] = sample_line(M.POLL_DURATION.name, base, round(state.poll_duration, 6))
        if state.errors:
            fragments[M.POLL_ERRORS] = "".join(
                sample_line(M.POLL_ERRORS.name, base + (("reason", reason),), count)
                for reason, count in sorted(state.errors.items())
            )
        self.cache.set_fragments(state.name, fragments, scope=M.EXPORTER_SELF)

    def _render_global(self) -> None:
        version = sys.version.split()[0]
        self.cache.set_fragments("", {
            M.BUILD_INFO: sample_line(M.BUILD_INFO.name, (("version", __version__), ("python_version", version)), 1),
            M.CONFIG_RELOAD_OK: sample_line(M.CONFIG_RELOAD_OK.name, (), self.reload_ok),
            M.CONFIG_RELOAD_TIME: sample_line(M.CONFIG_RELOAD_TIME.name, (), round(self.reload_time, 3)),
        }, scope=(M.BUILD_INFO, M.CONFIG_RELOAD_OK, M.CONFIG_RELOAD_TIME))

    def _hold_counters(self, state: TargetState, samples: list[Sample], now: float) -> list[Sample]:
        """Counters never step back: a lower reading keeps the held value (and is counted),
        unless it stays lower for COUNTER_RESET_GRACE (a replaced meter)."""
        out = samples
        for index, sample in enumerate(samples):
            if sample.metric.kind != "counter":
                continue
            key = (sample.metric.name, sample.labels)
            held = state.counters.get(key)
            if held is None or sample.value >= held[0]:
                state.counters[key] = [sample.value, None]
                continue
            if held[1] is None:
                held[1] = now
            if now - held[1] >= COUNTER_RESET_GRACE:
                state.counters[key] = [sample.value, None]
                continue
            state.regressions += 1
            if out is samples:
                out = list(samples)
            out[index] = Sample(sample.metric, sample.labels, held[0])
        return out
