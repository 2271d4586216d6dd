"""Per target, the last good reading and the state of its polling; counters held and screened."""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from itertools import islice
from typing import Any

from prometheus_client import ProcessCollector

from ..exposition import FamilyCache, base_label_text, render_series, sample_line
from ..model import catalogue as M
from ..model.catalogue import Metric
from ..model.errors import REASONS, safe_message, safe_text
from ..model.samples import DeviceInfo, Reading, Sample
from .selfmetrics import (BUILD_FAMILIES, PROCESS_FAMILIES, QUOTA_FAMILIES, build_fragments, info_lines,
                          process_fragments, quota_fragments, status_fragments)
from .targetstate import TargetState

# A counter reading lower than the one held is a firmware glitch until it has stayed lower for
# this long; then it is taken as a replaced meter and the new value exported (a reset). The
# same holds for an energy counter rising faster than `max_power` allows (a replaced meter may
# also read more than the old one).
COUNTER_RESET_GRACE = 3600.0

# No energy counter holds more than `max_power` gives in this long (a first value of 1e12 kWh
# is refused rather than held against every real reading after it).
CEILING_SECONDS = 100 * 365.25 * 86400
# Any other running total (m3 of gas or water, counts) beyond this, in its base unit, is garbage.
COUNTER_CEILING = 1e15
# A rise is judged over at least this long: readings moments apart (pushes, a clock step back)
# must not make one resolution step of a counter look like an enormous power.
MIN_RISE_SECONDS = 1.0
# Counters absent from the last reading are held for their return, the newest this many per
# target (or as many as this reading or the last one has counters, for accounts of many
# meters): a device that names new meters on every poll must not grow the state without end.
RETIRED_MIN = 256
# Device identities kept per target (each meter of a cloud account is one).
MAX_DEVICES = 20_000

DEVICE_FAMILIES_KEY = "device"
# Failing endpoints kept per target for the status page (a device has a dozen), and the length
# of a name shown.
MAX_ENDPOINTS_DOWN = 50
MAX_ENDPOINT_NAME = 80


# Targets of one kind export the same families and series: one tuple for all of them, and
# the positions of its counters. Bounded in entries and in the items they hold: a device whose
# series change shape on every poll (and one answer may hold thousands) must not fill them.
_SHARED: dict[tuple[Metric, ...], tuple[Metric, ...]] = {}
_COUNTERS: dict[tuple[Metric, ...], tuple[int, ...]] = {}
_SHARED_MAX = 10_000
_SHARED_MAX_ITEMS = 1_000_000
_sizes = {"shared": 0, "counters": 0}


def _shared(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    found = _SHARED.get(metrics)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX or _sizes["shared"] >= _SHARED_MAX_ITEMS:
            _SHARED.clear()
            _sizes["shared"] = 0
        found = _SHARED[metrics] = metrics
        _sizes["shared"] += len(metrics)
    return found


def _counter_positions(metrics: tuple[Metric, ...]) -> tuple[int, ...]:
    found = _COUNTERS.get(metrics)
    if found is None:
        if len(_COUNTERS) >= _SHARED_MAX or _sizes["counters"] >= _SHARED_MAX_ITEMS:
            _COUNTERS.clear()
            _sizes["counters"] = 0
        found = _COUNTERS[metrics] = tuple(i for i, m in enumerate(metrics) if m.type == "counter")
        _sizes["counters"] += len(metrics)
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

    def set_max_power(self, name: str, watts: float) -> None:
        """The fastest rise (in watts) the target's energy counters may show (`max_power`)."""
        state = self.targets.get(name)
        if state is not None:
            state.max_power = watts

    def remove_target(self, name: str) -> None:
        state = self.targets.pop(name, None)
        if state is not None:
            self.cache.drop_owner(name)

    def record_success(self, name: str, reading: Reading, duration: float | None = None) -> list[Notice] | None:
        """Take a good reading: its series replace the target's. Returns what was refused or
        forgotten on the way, for the log (None: nothing). If rendering fails (an exception),
        the target's state and series are those of the reading before."""
        state = self.targets.get(name)
        if state is None:  # removed by a reload while its poll was in flight
            return None
        now = self.clock()
        devices = None
        if reading.devices and reading.devices != state.devices:
            devices = _safe_devices(reading.devices)
            info_lines = self._info_lines(state, devices)
        fragments, whole, notices = self._series(state, reading.samples, now)
        if devices is not None:
            state.devices = devices
            state.info_lines = info_lines
            fragments[M.DEVICE_INFO] = info_lines
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
        state.endpoints_down = _endpoints_down(reading.endpoints_down)
        state.up = True
        state.last_success = now
        state.last_attempt = now
        state.last_error = None
        state.last_reason = None
        state.polls += 1
        if duration is not None:
            state.poll_duration = duration
        self._render_status(state)
        return notices

    def record_failure(self, name: str, reason: str, message: str, duration: float | None = None) -> None:
        state = self.targets.get(name)
        if state is None:
            return
        if reason not in REASONS:  # one label value per known reason: the errors stay bounded
            reason = "internal"
        state.up = False
        state.last_attempt = self.clock()
        state.last_error = safe_message(message)  # shown on the status page and /api: valid text
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
                state.endpoints_down = ()
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
        self.cache.set_fragments("process", process_fragments(self._process), scope=PROCESS_FAMILIES)

    def set_quota(self, windows) -> None:
        """Render the quota ledger's windows (`QuotaLedger.windows()`): calls left and allowed."""
        self.cache.set_fragments("", quota_fragments(windows), scope=QUOTA_FAMILIES)

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
    def _info_lines(self, state: TargetState, devices: list[DeviceInfo]) -> bytes:
        return info_lines((("vendor", state.vendor), ("device", state.name)), devices)

    def _render_status(self, state: TargetState) -> None:
        self.cache.set_fragments(state.name, status_fragments(state), scope=M.EXPORTER_SELF)

    def _render_global(self) -> None:
        self.cache.set_fragments("", build_fragments(self.reload_ok, self.reload_time), scope=BUILD_FAMILIES)

    def _series(self, state: TargetState, samples: list[Sample],
                now: float) -> tuple[dict[Metric, bytes], bool, list[Notice] | None]:
        """Check and hold the counters of a reading and render what changed: (lines per family,
        whether they are all of the target's families or only the changed ones, notices). The
        state changes only once everything is rendered."""
        metrics = tuple([s.metric for s in samples])
        metrics = state.metrics if metrics == state.metrics else _shared(metrics)
        positions = _counter_positions(metrics)
        values = [s.value for s in samples]
        changes: _Changes | None = None
        if not _plausible(values, positions, min(COUNTER_CEILING, state.max_power * CEILING_SECONDS)):
            changes = _Changes()
            samples = self._screen(state, samples, changes)
            metrics = tuple([s.metric for s in samples])
            metrics = state.metrics if metrics == state.metrics else _shared(metrics)
            positions = _counter_positions(metrics)
            values = [s.value for s in samples]
        labels = tuple([s.labels for s in samples])
        old = state.values
        shape = hash(labels)
        if (shape != state.shape or metrics is not state.metrics) and len(set(zip(metrics, labels))) < len(samples):
            # One series twice: a scraper refuses the whole body (OpenMetrics) or the series.
            # (A reading of the same series as the last one has none: checked when they change.)
            changes = changes or _Changes()
            samples = _first_of_each(samples, changes)
            metrics = tuple([s.metric for s in samples])
            metrics = state.metrics if metrics == state.metrics else _shared(metrics)
            positions = _counter_positions(metrics)
            values = [s.value for s in samples]
            labels = tuple([s.labels for s in samples])
            shape = hash(labels)
        disputed = state.disputed_since
        # The fastest rise an energy counter may show since the values held were read.
        allowed = state.max_power * max(now - (state.last_success or now), MIN_RISE_SECONDS)
        # The same series as the last reading: same metrics and labels (equal hashes of labels
        # from different series: a chance of one in 2**64 per poll).
        same = old is not None and shape == state.shape and metrics is state.metrics
        retired = None
        if same:
            for i in positions:
                value, was = values[i], old[i]
                if not value >= was:
                    changes = changes or _Changes()
                    values[i] = self._dispute(state, changes, (metrics[i].name, labels[i]), value, was, now, None)
                elif value - was > allowed and metrics[i].unit in M.ENERGY_UNITS:
                    changes = changes or _Changes()
                    values[i] = self._dispute(state, changes, (metrics[i].name, labels[i]), value, was, now,
                                              "implausible_jump")
                elif disputed and (metrics[i].name, labels[i]) in disputed:
                    changes = changes or _Changes()
                    changes.disputes[(metrics[i].name, labels[i])] = None
        else:
            # The counters of the last reading, read at the last success; and those held from
            # before it (when they were read is not known: no rise is judged against them).
            recent: dict[tuple[str, tuple], float] = {}
            if old is not None:
                recent = {(state.metrics[i].name, pairs): old[i]
                          for i, pairs in zip(_counter_positions(state.metrics), state.counter_labels)}
            retired = dict(state.retired) if state.retired else {}
            current = []
            for i in positions:
                key = (metrics[i].name, labels[i])
                current.append(key)
                value = values[i]
                before = recent.pop(key, None)
                if before is None:
                    before = retired.pop(key, None)
                    jump = False
                else:
                    jump = value - before > allowed and metrics[i].unit in M.ENERGY_UNITS
                if before is not None and not value >= before:
                    changes = changes or _Changes()
                    values[i] = self._dispute(state, changes, key, value, before, now, None)
                elif jump:
                    changes = changes or _Changes()
                    values[i] = self._dispute(state, changes, key, value, before, now, "implausible_jump")
                elif disputed and key in disputed:
                    changes = changes or _Changes()
                    changes.disputes[key] = None
            retired.update(recent)  # counters seen before, absent now: kept for their return
            keep = max(RETIRED_MIN, len(positions), len(state.counter_labels))
            if len(retired) > keep:  # the oldest go
                forgotten = len(retired) - keep
                retired = dict(islice(retired.items(), forgotten, None))
                changes = changes or _Changes()
                changes.notices.append(Notice("forgotten", "", (), forgotten))
            if disputed:  # only counters still known can be disputed
                changes = changes or _Changes()
                known = set(current)
                for key in disputed:
                    if key not in known and key not in retired:
                        changes.disputes[key] = None
        if same and state.has_series:
            changed = {m for m, new, was in zip(metrics, values, old) if new != was}
            fragments = render_series(metrics, labels, values, state.base, only=changed) if changed else {}
        else:
            fragments = render_series(metrics, labels, values, state.base)
        # Rendered: from here on the reading is taken.
        notices = None
        if changes is not None:
            notices = self._apply(state, changes)
        if same and old.__class__ is array:
            # Keep the objects of the last poll: a fleet's polls then leave nothing new behind
            # for the garbage collector (whose full passes over 10,000 targets' objects take a
            # noticeable pause).
            for i, (new, was) in enumerate(zip(values, old)):
                if new != was:
                    old[i] = new
        else:
            state.metrics, state.shape, state.values = metrics, shape, _values(values)
            state.counter_labels = tuple([labels[i] for i in positions])
        if retired is not None:
            state.retired = retired or None
        return fragments, not (same and state.has_series), notices

    def _dispute(self, state: TargetState, changes: "_Changes", key: tuple[str, tuple], value: float,
                 held: float, now: float, reason: str | None) -> float:
        """A counter out of line with the value held keeps the held value (and is counted: as a
        decreasing reading, or as dropped for `reason`), unless it stays out of line for
        COUNTER_RESET_GRACE (a replaced meter)."""
        since = state.disputed_since.get(key, now) if state.disputed_since else now
        if now - since >= COUNTER_RESET_GRACE:
            changes.disputes[key] = None
            return value
        changes.disputes[key] = since
        if reason is None:
            changes.regressions += 1
        else:
            changes.drop(reason, key[0], key[1], value)
        return held

    def _screen(self, state: TargetState, samples: list[Sample], changes: "_Changes") -> list[Sample]:
        """The samples a meter can mean: NaN and infinities are dropped, and running totals that
        are negative or beyond any meter (see COUNTER_CEILING); such a counter keeps the value
        held, if there is one. The slow path: only readings that hold such values come here."""
        held: dict[tuple[str, tuple], float] = dict(state.retired or ())
        if state.values is not None:
            held.update(((state.metrics[i].name, pairs), state.values[i])
                        for i, pairs in zip(_counter_positions(state.metrics), state.counter_labels))
        energy_ceiling = state.max_power * CEILING_SECONDS
        kept = []
        for sample in samples:
            metric, value = sample.metric, sample.value
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                number = float("nan")
            reason = None
            if number - number != 0.0:
                reason = "not_finite"
            elif metric.type == "counter":
                if number < 0.0:
                    reason = "negative"
                elif number > (energy_ceiling if metric.unit in M.ENERGY_UNITS else COUNTER_CEILING):
                    reason = "out_of_range"
            if reason is None:
                kept.append(sample if number is value else Sample(metric, sample.labels, number))
                continue
            changes.drop(reason, metric.name, sample.labels, value)
            before = held.get((metric.name, sample.labels)) if metric.type == "counter" else None
            if before is not None:
                kept.append(Sample(metric, sample.labels, before))
        return kept

    def _apply(self, state: TargetState, changes: "_Changes") -> list[Notice] | None:
        """What a rendered reading changes besides its series: disputes, counts."""
        if changes.disputes:
            disputed = state.disputed_since or {}
            for key, since in changes.disputes.items():
                if since is None:
                    disputed.pop(key, None)
                else:
                    disputed[key] = since
            state.disputed_since = disputed or None
        state.regressions += changes.regressions
        if changes.dropped:
            dropped = state.dropped or {}
            for reason, count in changes.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
            state.dropped = dropped
        return changes.notices or None


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a reading lost, for the log: `reason` (a SAMPLES_DROPPED reason, or
    "forgotten": held counters let go of), the series (metric name and labels) and its value
    (for "forgotten": how many)."""

    reason: str
    metric: str
    labels: tuple
    value: Any


class _Changes:
    """What a reading changes in its target's state besides the series, applied only once its
    lines are rendered (a reading that fails to render leaves the state as it was)."""

    __slots__ = ("disputes", "regressions", "dropped", "notices")

    def __init__(self) -> None:
        self.disputes: dict[tuple[str, tuple], float | None] = {}  # None: no longer disputed
        self.regressions = 0
        self.dropped: dict[str, int] = {}
        self.notices: list[Notice] = []

    def drop(self, reason: str, metric: str, labels: tuple, value: Any) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.notices) < 16:  # the log needs examples, not every one
            self.notices.append(Notice(reason, metric, labels, value))


def _plausible(values: list, positions: tuple[int, ...], ceiling: float) -> bool:
    """Whether every value is a finite number and every counter within [0, ceiling]: the fast
    check of every reading (one C-speed sum; the counters one by one)."""
    try:
        total = sum(values)
    except (TypeError, OverflowError):
        return False
    if total - total != 0:  # NaN or an infinity somewhere (or finite values summing past the range)
        return False
    for i in positions:
        if not 0.0 <= values[i] <= ceiling:
            return False
    return True


def _first_of_each(samples: list[Sample], changes: _Changes) -> list[Sample]:
    """The samples without repeats of a series (metric and labels): the first one is kept."""
    seen: set[tuple[Metric, tuple]] = set()
    kept = []
    for sample in samples:
        key = (sample.metric, sample.labels)
        if key in seen:
            changes.drop("duplicate", sample.metric.name, sample.labels, sample.value)
        else:
            seen.add(key)
            kept.append(sample)
    return kept


def _endpoints_down(down: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    """A reading's failing endpoints as kept for the status page: valid text, bounded."""
    if not down:
        return ()
    return tuple((safe_message(str(name))[:MAX_ENDPOINT_NAME], safe_message(str(problem)))
                 for name, problem in islice(down.items(), MAX_ENDPOINTS_DOWN))


def _safe_devices(devices: list[DeviceInfo]) -> list[DeviceInfo]:
    """Device identities as kept and shown: valid text only, at most MAX_DEVICES."""
    out = []
    for info in devices[:MAX_DEVICES]:
        fields = (info.model, info.serial, info.firmware, info.meter or "")
        if all(text.__class__ is str and text.isascii() for text in fields):
            out.append(info)
        else:
            out.append(DeviceInfo(_text(info.model), _text(info.serial), _text(info.firmware),
                                  None if info.meter is None else _text(info.meter)))
    return out


def _text(value: Any) -> str:
    return safe_text(value if value.__class__ is str else str(value))
