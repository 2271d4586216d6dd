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
from array import array
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import ProcessCollector

from . import __version__
from . import catalogue as M
from .catalogue import Metric
from .exposition import FamilyCache, base_label_text, format_value, render_series, sample_line
from .samples import DeviceInfo, Reading, Sample

# A counter reading lower than the one held is a firmware glitch until it has stayed lower for
# this long; then it is taken as a replaced meter and the new value exported (a reset).
COUNTER_RESET_GRACE = 3600.0

DEVICE_FAMILIES_KEY = "device"


@dataclass(slots=True)  # 10,000 of them in a fleet: no per-object __dict__
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
    # The series of the last reading as exported (counters held): its metrics (one tuple
    # shared by targets of a kind), a hash of their labels, the labels of its counters, and
    # the values. The next poll is compared with them: only families whose values changed are
    # rendered again (about a third of a meter's lines), and counters are held against them.
    # The labels of every series are not kept: they are the biggest part of a target's state
    # (1.3 kB of small tuples and strings from the device's answer for a P1 meter with its
    # M-Bus meters), and a poll renders the families that changed from its own labels.
    metrics: tuple[Metric, ...] = ()
    shape: int = 0  # hash() of the labels of the series, in order
    counter_labels: tuple[tuple, ...] = ()  # labels of the counters (_counter_positions order)
    values: Any = None  # array("d"), or a list if a value does not fit one
    # Counters not in the last reading, held in case they come back: (name, labels) -> value.
    retired: dict[tuple[str, tuple], float] | None = None
    # While a counter reads lower than held: (name, labels) -> when that was first seen.
    lower_since: dict[tuple[str, tuple], float] | None = None
    device_families: tuple[Metric, ...] = ()
    base: str = ""  # the target's labels, rendered once: vendor="...",device="..."
    info_lines: bytes = b""  # device_info lines of `devices`


# Targets of one kind export the same families and series: one tuple for all of them, and
# the positions of its counters.
_SHARED: dict[tuple[Metric, ...], tuple[Metric, ...]] = {}
_COUNTERS: dict[tuple[Metric, ...], tuple[int, ...]] = {}


def _shared(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    found = _SHARED.get(metrics)
    if found is None:
        if len(_SHARED) > 10_000:
            _SHARED.clear()
        found = _SHARED[metrics] = metrics
    return found


def _counter_positions(metrics: tuple[Metric, ...]) -> tuple[int, ...]:
    found = _COUNTERS.get(metrics)
    if found is None:
        if len(_COUNTERS) > 10_000:
            _COUNTERS.clear()
        found = _COUNTERS[metrics] = tuple(i for i, m in enumerate(metrics) if m.kind == "counter")
    return found


def _values(values: list) -> Any:
    try:
        return array("d", values)
    except (OverflowError, TypeError):
        return values


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
            state.base = base_label_text((("vendor", vendor), ("device", name)))
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
        fragments, whole = self._series(state, reading.samples, now)
        if reading.devices and reading.devices != state.devices:
            state.devices = list(reading.devices)
            state.info_lines = self._info_lines(state)
            fragments[M.DEVICE_INFO] = state.info_lines
        elif whole and state.devices:  # most polls carry no identity: keep what was learnt before
            fragments[M.DEVICE_INFO] = state.info_lines
        if whole:  # the reading's families replace the target's
            self.cache.set_fragments(name, fragments, scope=state.device_families)
            state.device_families = _shared(tuple(fragments))
        elif fragments:  # the same series: only the families that changed
            self.cache.set_fragments(name, fragments, scope=())
            if M.DEVICE_INFO in fragments and M.DEVICE_INFO not in state.device_families:
                state.device_families = _shared(state.device_families + (M.DEVICE_INFO,))
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
                state.device_families = ()
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
    def _info_lines(self, state: TargetState) -> bytes:
        base = (("vendor", state.vendor), ("device", state.name))
        lines = []
        for info in state.devices:
            pairs = base + ((("meter", info.meter),) if info.meter is not None else ()) + (
                ("model", info.model), ("serial", info.serial), ("firmware", info.firmware))
            lines.append(sample_line(M.DEVICE_INFO.name, pairs, 1))
        return "".join(lines).encode()

    def _render_status(self, state: TargetState) -> None:
        # Every poll renders these: f-strings on the pre-rendered labels (as sample_line would).
        base = state.base
        fragments = {
            M.TARGET_UP: f"{M.TARGET_UP.name}{{{base}}} {1 if state.up else 0}\n".encode(),
            M.POLLS: f"{M.POLLS.name}{{{base}}} {state.polls}\n".encode(),
            M.COUNTER_REGRESSIONS: f"{M.COUNTER_REGRESSIONS.name}{{{base}}} {state.regressions}\n".encode(),
        }
        if state.last_success is not None:
            fragments[M.LAST_SUCCESS] = (
                f"{M.LAST_SUCCESS.name}{{{base}}} {format_value(round(state.last_success, 3))}\n".encode())
        if state.poll_duration is not None:
            fragments[M.POLL_DURATION] = (
                f"{M.POLL_DURATION.name}{{{base}}} {format_value(round(state.poll_duration, 6))}\n".encode())
        if state.errors:
            pairs = (("vendor", state.vendor), ("device", state.name))
            fragments[M.POLL_ERRORS] = "".join(
                sample_line(M.POLL_ERRORS.name, pairs + (("reason", reason),), count)
                for reason, count in sorted(state.errors.items())
            ).encode()
        self.cache.set_fragments(state.name, fragments, scope=M.EXPORTER_SELF)

    def _render_global(self) -> None:
        version = sys.version.split()[0]
        self.cache.set_fragments("", {
            M.BUILD_INFO: sample_line(M.BUILD_INFO.name, (("version", __version__), ("python_version", version)), 1),
            M.CONFIG_RELOAD_OK: sample_line(M.CONFIG_RELOAD_OK.name, (), self.reload_ok),
            M.CONFIG_RELOAD_TIME: sample_line(M.CONFIG_RELOAD_TIME.name, (), round(self.reload_time, 3)),
        }, scope=(M.BUILD_INFO, M.CONFIG_RELOAD_OK, M.CONFIG_RELOAD_TIME))

    def _series(self, state: TargetState, samples: list[Sample], now: float) -> tuple[dict[Metric, bytes], bool]:
        """Hold the counters of a reading and render what changed: (lines per family, whether
        they are all of the target's families or only the changed ones)."""
        metrics = tuple([s.metric for s in samples])
        labels = tuple([s.labels for s in samples])
        values = [s.value for s in samples]
        old = state.values
        shape = hash(labels)
        # The same series as the last reading: same metrics and labels (equal hashes of labels
        # from different series: a chance of one in 2**64 per poll).
        same = old is not None and shape == state.shape and metrics == state.metrics
        if same:
            metrics = state.metrics
            for i in _counter_positions(metrics):
                if not values[i] >= old[i]:
                    values[i] = self._hold(state, (metrics[i].name, labels[i]), values[i], old[i], now)
                elif state.lower_since:
                    state.lower_since.pop((metrics[i].name, labels[i]), None)
        else:
            metrics = _shared(metrics)
            held: dict[tuple[str, tuple], float] = dict(state.retired or ())
            if old is not None:
                held.update(((state.metrics[i].name, pairs), old[i])
                            for i, pairs in zip(_counter_positions(state.metrics), state.counter_labels))
            for i in _counter_positions(metrics):
                key = (metrics[i].name, labels[i])
                before = held.pop(key, None)
                if before is not None and not values[i] >= before:
                    values[i] = self._hold(state, key, values[i], before, now)
                elif state.lower_since:
                    state.lower_since.pop(key, None)
            state.retired = held or None  # counters seen before, absent now: kept for their return
        if same and state.has_series:
            changed = {m for m, new, was in zip(metrics, values, old) if new != was}
            fragments = render_series(metrics, labels, values, state.base, only=changed) if changed else {}
        else:
            fragments = render_series(metrics, labels, values, state.base)
        if same and old.__class__ is array:
            # Keep the objects of the last poll: a fleet's polls then leave nothing new behind
            # for the garbage collector (whose full passes over 10,000 targets' objects take a
            # noticeable pause).
            for i, (new, was) in enumerate(zip(values, old)):
                if new != was:
                    old[i] = new
        else:
            state.metrics, state.shape, state.values = metrics, shape, _values(values)
            state.counter_labels = tuple([labels[i] for i in _counter_positions(metrics)])
        return fragments, not (same and state.has_series)

    def _hold(self, state: TargetState, key: tuple[str, tuple], value: float, held: float, now: float) -> float:
        """Counters never step back: a lower reading keeps the held value (and is counted),
        unless it stays lower for COUNTER_RESET_GRACE (a replaced meter)."""
        if state.lower_since is None:
            state.lower_since = {}
        since = state.lower_since.setdefault(key, now)
        if now - since >= COUNTER_RESET_GRACE:
            del state.lower_since[key]
            return value
        state.regressions += 1
        return held
