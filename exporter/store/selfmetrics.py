"""The exporter's own series: per target status (up, polls, errors, durations, drops), device
identity, build and reload, process and quota. Plain functions from state to rendered lines;
the snapshot store puts them in the family cache."""

from __future__ import annotations

import asyncio
import sys
from typing import Iterable

from prometheus_client import ProcessCollector

from .. import __version__
from ..exposition import format_value, sample_line
from ..model import catalogue as M
from ..model.catalogue import Metric
from ..model.samples import DeviceInfo
from .targetstate import TargetState

PROCESS_FAMILIES = (*M.PROCESS_METRICS, M.ASYNCIO_TASKS)
QUOTA_FAMILIES = (M.QUOTA_REMAINING, M.QUOTA_LIMIT)
BUILD_FAMILIES = (M.BUILD_INFO, M.CONFIG_RELOAD_OK, M.CONFIG_RELOAD_TIME)


def status_fragments(state: TargetState) -> dict[Metric, bytes]:
    """A target's status series, rendered at every poll."""
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
    if state.dropped:
        pairs = (("vendor", state.vendor), ("device", state.name))
        fragments[M.SAMPLES_DROPPED] = "".join(
            sample_line(M.SAMPLES_DROPPED.name, pairs + (("reason", reason),), count)
            for reason, count in sorted(state.dropped.items())
        ).encode()
    return fragments


def info_lines(base: tuple[tuple[str, str], ...], devices: Iterable[DeviceInfo]) -> bytes:
    """`energy_meter_device_info` lines of a target's devices."""
    lines = []
    for info in devices:
        pairs = base + ((("meter", info.meter),) if info.meter is not None else ()) + (
            ("model", info.model), ("serial", info.serial), ("firmware", info.firmware))
        lines.append(sample_line(M.DEVICE_INFO.name, pairs, 1))
    return "".join(lines).encode()


def build_fragments(reload_ok: int, reload_time: float) -> dict[Metric, str]:
    version = sys.version.split()[0]
    return {
        M.BUILD_INFO: sample_line(M.BUILD_INFO.name, (("version", __version__), ("python_version", version)), 1),
        M.CONFIG_RELOAD_OK: sample_line(M.CONFIG_RELOAD_OK.name, (), reload_ok),
        M.CONFIG_RELOAD_TIME: sample_line(M.CONFIG_RELOAD_TIME.name, (), round(reload_time, 3)),
    }


def process_fragments(collector: ProcessCollector) -> dict[Metric, str]:
    """Memory, file descriptors and CPU of the process, and the event loop's task count."""
    values = {s.name: s.value for family in collector.collect() for s in family.samples}
    fragments = {m: sample_line(m.name, (), values[m.name]) for m in M.PROCESS_METRICS if m.name in values}
    try:
        fragments[M.ASYNCIO_TASKS] = sample_line(M.ASYNCIO_TASKS.name, (), len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop (unit tests)
        pass
    return fragments


def quota_fragments(windows) -> dict[Metric, str]:
    """Calls left and allowed per window of the quota ledger (`QuotaLedger.windows()`)."""
    fragments = {}
    for metric, attr in ((M.QUOTA_REMAINING, "remaining"), (M.QUOTA_LIMIT, "limit")):
        lines = "".join(
            sample_line(metric.name, (("api", w.api), ("scope", w.scope), ("window", w.window)), getattr(w, attr))
            for w in windows
        )
        if lines:
            fragments[metric] = lines
    return fragments
