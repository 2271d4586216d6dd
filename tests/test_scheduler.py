"""Background polling: cadence, timeouts, backoff, isolation of a misbehaving device."""

from __future__ import annotations

import asyncio

import pytest

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.model.samples import Reading
from exporter.runtime.logs import get as get_log
from exporter.runtime.scheduler import TargetRunner
from exporter.store import SnapshotStore


def target(name: str, interval: float = 0.1, timeout: float = 0.05, max_backoff: float = 1.0) -> TargetConfig:
    return TargetConfig(name=name, vendor="homewizard", transport="local", interval=interval, timeout=timeout,
                        max_backoff=max_backoff, stale_after=60, jitter=0.0, options={})


class FakeAdapter:
    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def poll(self) -> Reading:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.behaviour == "hang":
                await asyncio.sleep(3600)
            if self.behaviour == "refuse":
                raise PollError("connection", "refused")
            if self.behaviour == "crash":
                raise KeyError("bug")
            await asyncio.sleep(0.001)
            r = Reading()
            r.add(M.ACTIVE_POWER, self.calls)
            return r
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass


# The sequence of delays after failed polls: tests/test_backoff.py (the poll policy).


async def run_for(seconds: float, runners: list[TargetRunner]) -> None:
    for r in runners:
        r.start()
    await asyncio.sleep(seconds)
    await asyncio.gather(*(r.stop() for r in runners))


async def test_a_hanging_device_does_not_slow_the_others():
    store = SnapshotStore()
    good, bad = FakeAdapter(), FakeAdapter("hang")
    runners = []
    for name, adapter in (("good", good), ("bad", bad)):
        store.add_target(name, "homewizard", 60)
        runners.append(TargetRunner(target(name), adapter, store, get_log()))
    for r in runners:
        r.start()
    try:
        for _ in range(200):  # until the healthy device has been polled 10 times
            if good.calls >= 10:
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(r.stop() for r in runners))
    assert good.calls >= 10
    assert bad.max_in_flight == 1 and good.max_in_flight == 1  # never two requests to one device
    assert store.targets["good"].up and not store.targets["bad"].up
    assert store.targets["bad"].errors == {"timeout": bad.calls}
    # the healthy device kept its interval (0.1 s) while the other hung: polls on schedule
    lags = sorted(runners[0].lags)
    assert lags[len(lags) // 2] < 0.1
    # backoff: the hanging device is asked less often than the healthy one
    assert bad.calls < good.calls


async def test_errors_and_crashes_become_reasons_not_exceptions():
    store = SnapshotStore()
    adapters = {"refused": FakeAdapter("refuse"), "buggy": FakeAdapter("crash")}
    runners = []
    for name, adapter in adapters.items():
        store.add_target(name, "homewizard", 60)
        runners.append(TargetRunner(target(name), adapter, store, get_log()))
    await run_for(0.5, runners)
    assert set(store.targets["refused"].errors) == {"connection"}
    assert set(store.targets["buggy"].errors) == {"internal"}
    assert store.targets["buggy"].last_error == "internal error: KeyError"


async def test_recovery_resets_backoff():
    store = SnapshotStore()
    adapter = FakeAdapter("refuse")
    store.add_target("x", "homewizard", 60)
    runner = TargetRunner(target("x", interval=0.05, max_backoff=0.2), adapter, store, get_log())
    runner.start()
    await asyncio.sleep(0.6)
    assert runner.failures >= 2
    adapter.behaviour = "ok"
    await asyncio.sleep(0.5)
    assert runner.failures == 0 and store.targets["x"].up
    await runner.stop()


async def test_poll_once_reports_the_error():
    store = SnapshotStore()
    store.add_target("x", "homewizard", 60)
    runner = TargetRunner(target("x"), FakeAdapter("hang"), store, get_log())
    with pytest.raises(PollError) as err:
        await runner.poll_once()
    assert err.value.reason == "timeout"
