"""The schedule against anything a poll may raise: every exception on a poll's way (the device's
answer, parsing it, rendering it) ends that poll as a failure with a reason and a log line, the
next poll still comes, and the log does not grow with every poll of a broken device."""

from __future__ import annotations

import asyncio
import json

import pytest

from exporter.config.loader import ConfigError, TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.model.samples import Reading, Sample
from exporter.runtime import scheduler
from exporter.runtime.scheduler import TargetRunner
from exporter.store import SnapshotStore

from .configs import load_config
from .conftest import async_wait_until, exposition_text, sample_value


def target(name: str, interval: float = 0.05, **options) -> TargetConfig:
    return TargetConfig(name=name, vendor="homewizard", transport="local", interval=interval, timeout=0.04,
                        max_backoff=interval, stale_after=60, jitter=0.0, options=options)


class RecordingLog:
    """A target's logger that keeps its lines: (level, message, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        def log(message: str, **fields) -> None:
            self.lines.append((level, message, fields))
        return log

    def count(self, message: str) -> int:
        return sum(1 for _, m, _ in self.lines if m == message)


def good_reading(n: int) -> Reading:
    r = Reading()
    r.add(M.ACTIVE_POWER, 100 + n)
    r.add(M.ENERGY_IMPORTED, 1e9 + n)
    return r


def unrenderable_reading(n: int) -> Reading:
    """A reading with a label value that is not text (a parser's bug): rendering it raises."""
    r = good_reading(n)
    r.samples.append(Sample(M.GAS, (("meter", 12345),), 1.0))
    return r


class ScriptedAdapter:
    """Polls answer with `script(n)`: a Reading, or an exception to raise."""

    def __init__(self, script) -> None:
        self.script = script
        self.calls = 0

    async def poll(self) -> Reading:
        self.calls += 1
        result = self.script(self.calls)
        if isinstance(result, BaseException):
            raise result
        return result

    async def close(self) -> None:
        pass


async def run_target(adapter, seconds: float, log: RecordingLog | None = None, name: str = "x"):
    store = SnapshotStore()
    store.add_target(name, "homewizard", 60)
    runner = TargetRunner(target(name), adapter, store, log or RecordingLog())
    runner.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await runner.stop()
    return store.targets[name], store, runner


async def test_a_reading_the_store_cannot_render_fails_the_poll_and_the_next_poll_comes():
    log = RecordingLog()
    adapter = ScriptedAdapter(unrenderable_reading)
    state, store, _ = await run_target(adapter, 0.8, log)
    assert adapter.calls >= 5, "polling stopped after the first broken reading"
    assert not state.up and state.last_reason == "internal"
    assert set(state.errors) == {"internal"}
    assert adapter.calls - 1 <= state.errors["internal"] <= adapter.calls  # (one may be cut by the stop)
    text = exposition_text(store)
    assert sample_value(text, "energy_meter_exporter_target_up", device="x") == 0
    assert sample_value(text, M.ACTIVE_POWER.name, device="x") is None  # nothing half-taken
    # one traceback for the bug, one line for the failures: not one per poll
    assert log.count("poll crashed") == 1
    assert log.count("poll failed") == 1
    assert any("exc_info" in fields for _, m, fields in log.lines if m == "poll crashed")


async def test_a_target_that_breaks_after_a_good_reading_shows_down_not_frozen():
    adapter = ScriptedAdapter(lambda n: good_reading(n) if n <= 2 else unrenderable_reading(n))
    state, store, _ = await run_target(adapter, 0.8)
    assert adapter.calls >= 5
    assert not state.up and state.last_reason == "internal"
    text = exposition_text(store)
    assert sample_value(text, "energy_meter_exporter_target_up", device="x") == 0
    assert sample_value(text, M.ACTIVE_POWER.name, device="x") == 102  # the last good reading, held
    assert list(state.values) == [102.0, 1e9 + 2]


@pytest.mark.parametrize("exc,message", [
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not valid Unicode"),
    (json.JSONDecodeError("Expecting value", "x", 0), "not JSON"),
])
async def test_errors_from_what_a_device_sent_are_parse_errors(exc, message):
    log = RecordingLog()
    adapter = ScriptedAdapter(lambda n: exc)
    state, _, _ = await run_target(adapter, 0.4, log)
    assert adapter.calls >= 3
    assert state.last_reason == "parse" and message in state.last_error
    assert log.count("poll crashed") == 0  # not a bug of the exporter: no traceback


async def test_an_internal_error_logs_its_traceback_once_per_origin():
    log = RecordingLog()

    def script(n: int):
        return KeyError("a") if n % 2 else ZeroDivisionError("b")

    adapter = ScriptedAdapter(script)
    state, _, _ = await run_target(adapter, 0.8, log)
    assert adapter.calls >= 6
    assert state.last_error in ("internal error: KeyError", "internal error: ZeroDivisionError")
    crashed = [fields["error_type"] for _, m, fields in log.lines if m == "poll crashed"]
    assert sorted(crashed) == ["KeyError", "ZeroDivisionError"]


async def test_repeated_failures_are_logged_once_then_summarised(monkeypatch):
    monkeypatch.setattr(scheduler, "REPEAT_LOG_SECONDS", 0.3)
    log = RecordingLog()
    adapter = ScriptedAdapter(lambda n: PollError("connection", "refused"))
    await run_target(adapter, 1.0, log)
    failed = [fields for _, m, fields in log.lines if m == "poll failed"]
    assert adapter.calls >= 12
    assert 2 <= len(failed) <= 5, failed
    assert "repeated" not in failed[0]
    assert all(f["repeated"] >= 1 for f in failed[1:])
    assert sum(f.get("repeated", 0) for f in failed) + len(failed) <= adapter.calls


async def test_refused_values_are_logged_once_per_metric_and_reason():
    log = RecordingLog()

    def script(n: int) -> Reading:
        r = Reading()
        r.samples.append(Sample(M.ENERGY_IMPORTED, (), -5.0 * 3.6e6))
        r.add(M.ACTIVE_POWER, n)
        return r

    adapter = ScriptedAdapter(script)
    state, store, _ = await run_target(adapter, 0.5, log)
    assert state.up
    text = exposition_text(store)
    counted = sample_value(text, "energy_meter_exporter_samples_dropped_total", device="x", reason="negative")
    assert counted == adapter.calls >= 4
    refused = [fields for _, m, fields in log.lines if m == "value refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "negative"
    assert refused[0]["metric"] == M.ENERGY_IMPORTED.name


async def test_max_power_from_the_configuration_reaches_the_store(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "defaults:\n  max_power: 5000\ntargets:\n"
        "  - {name: a, vendor: homewizard, host: 127.0.0.1}\n"
        "  - {name: b, vendor: homewizard, host: 127.0.0.2, max_power: 20000}\n"
        "  - {name: c, vendor: iammeter, host: 127.0.0.3}\n")
    config = load_config(tmp_path / "c.yaml")
    store = SnapshotStore()
    for t in config.targets:
        store.add_target(t.name, t.vendor, 60)
        runner = TargetRunner(t, ScriptedAdapter(good_reading), store, RecordingLog())
        runner.start()
        await runner.stop()
    assert {name: state.max_power for name, state in store.targets.items()} == {"a": 5000.0, "b": 20000.0, "c": 5000.0}
    (tmp_path / "c.yaml").write_text("targets:\n  - {name: a, vendor: homewizard, host: h, max_power: 0}\n"
                                     "  - {name: b, vendor: homewizard, host: h, max_power: lots}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert len(err.value.problems) == 2 and all("max_power" in p for p in err.value.problems)
    (tmp_path / "c.yaml").write_text("targets:\n  - {name: a, vendor: homewizard, host: h}\n")
    assert load_config(tmp_path / "c.yaml").targets[0].options.get("max_power") is None  # the default: 10 MW


class PushAdapter:
    """A push receiver: hands in a message every few milliseconds, good and bad ones."""

    kind = "push"

    def __init__(self, messages: list) -> None:
        self.messages = messages
        self.handed = 0

    async def run(self, emit) -> None:
        for message in self.messages:
            emit(message)
            self.handed += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass


async def test_a_pushed_message_the_store_cannot_take_is_a_failure_and_the_receiver_goes_on():
    messages = [good_reading(1), unrenderable_reading(2), unrenderable_reading(3), PollError("parse", "bad"),
                good_reading(4)]
    adapter = PushAdapter(messages)
    store = SnapshotStore()
    store.add_target("p", "iammeter", 60)
    log = RecordingLog()
    runner = TargetRunner(target("p"), adapter, store, log, delivery="push")
    runner.start()
    try:
        await async_wait_until(lambda: adapter.handed == len(messages), timeout=5, what="every message handed in")
        assert not runner.task.done(), "the receiver stopped"
        state = store.targets["p"]
        assert state.errors == {"internal": 2, "parse": 1}
        assert state.up and state.polls == 5
        text = exposition_text(store)
        assert sample_value(text, M.ACTIVE_POWER.name, device="p") == 104
        assert log.count("poll crashed") == 1
    finally:
        await runner.stop()
