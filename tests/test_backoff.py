"""The one backoff policy: its delays, and every retry and reconnection asking it for theirs.

The transports are driven on real sockets (the bridge and Partner API simulators, a Mosquitto
broker, a taken port). The policy's `delay` is replaced by one that notes who asked for which
failure and answers at once: each transport then reconnects as fast as the test can watch,
which it would not if it still computed a sleep of its own (the configured delays are seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter.config.loader import TargetConfig
from exporter.model.errors import PollError
from exporter.model.samples import Reading
from exporter.runtime.backoff import RECONNECT_SPREAD, Backoff, Deadline, poll_spread, retry_forever
from exporter.runtime.context import AdapterContext, SharedResources
from exporter.runtime.logs import get as get_log
from exporter.runtime.scheduler import TargetRunner
from exporter.runtime.state import StateDirectory
from exporter.store import SnapshotStore
from exporter.transport import mqtt
from exporter.vendors.iammeter import push as iam_push
from exporter.vendors.iometer import bridge as iometer_bridge
from exporter.vendors.iometer import partner as iometer_partner
from simulators.iometer import BridgeSimulator
from simulators.iometer_partner import PartnerApiSimulator, demo_installations, demo_values

from .conftest import async_wait_until, require_binary

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


def poll_target(interval: float = 10.0, max_backoff: float = 300.0, jitter: float = 0.0, **options: Any) -> TargetConfig:
    return TargetConfig(name="t", vendor="homewizard", transport="local", interval=interval, timeout=interval / 2,
                        max_backoff=max_backoff, stale_after=60.0, jitter=jitter, options=options)


# --- the policy (pure) ---------------------------------------------------------------------------


def test_the_poll_policy_keeps_the_schedulers_sequence():
    policy = Backoff.for_polls(poll_target(interval=10, max_backoff=300))
    assert [policy.delay(n) for n in range(1, 11)] == [10, 10, 10, 20, 40, 80, 160, 300, 300, 300]


def test_the_poll_ceiling_is_never_below_the_interval():
    policy = Backoff.for_polls(poll_target(interval=60, max_backoff=30))
    assert {policy.delay(n) for n in range(1, 8)} == {60}


def test_a_poll_retry_is_only_ever_later_by_at_most_the_targets_spread():
    target = poll_target(interval=10, max_backoff=300, jitter=0.1)
    policy = Backoff.for_polls(target)
    assert policy.slack == poll_spread(target) == 0.5
    rng = random.Random(7)
    for failures in range(1, 12):
        draws = [policy.delay(failures, rng) for _ in range(200)]
        nominal = policy.nominal(failures)
        assert all(nominal <= d <= nominal + 0.5 for d in draws)
        assert max(draws) - min(draws) > 0.25  # it does vary


def test_reconnections_double_from_the_first_delay_to_the_ceiling():
    policy = Backoff.for_reconnects(1.0, 60.0)
    assert [policy.nominal(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.nominal(0) == 1  # asked before any failure: the first delay


def test_reconnection_spread_stays_within_ten_percent_and_below_the_ceiling():
    policy = Backoff.for_reconnects(1.0, 60.0)
    assert RECONNECT_SPREAD == 0.1
    rng = random.Random(42)
    for failures in range(1, 10):
        nominal = policy.nominal(failures)
        draws = [policy.delay(failures, rng) for _ in range(300)]
        assert all(nominal * 0.9 <= d <= min(nominal * 1.1, 60.0) for d in draws)
        assert min(draws) < nominal < max(draws) or nominal == 60.0
    at_ceiling = [policy.delay(30, rng) for _ in range(300)]
    assert all(54.0 <= d <= 60.0 for d in at_ceiling) and min(at_ceiling) < 57.0


def test_a_seeded_rng_gives_the_same_delays():
    policy = Backoff.for_reconnects(2.0, 100.0)
    first = [policy.delay(n, random.Random(3)) for n in range(1, 8)]
    assert first == [policy.delay(n, random.Random(3)) for n in range(1, 8)]
    assert first != [policy.nominal(n) for n in range(1, 8)]


def test_a_ceiling_below_the_first_delay_wins():
    policy = Backoff.for_reconnects(1.0, 0.5)  # a broker whose targets poll every 0.5 s
    assert all(policy.delay(n) <= 0.5 for n in (1, 2, 10) for _ in range(50))


def test_thousands_of_failures_stay_at_the_ceiling():
    # (2 ** n times a float overflows past n = 1023: a device away for days must still be asked)
    assert Backoff.for_polls(poll_target(interval=10, max_backoff=300)).delay(5000) == 300
    assert Backoff.for_reconnects(0.1, 60.0).delay(10 ** 6) <= 60.0
    assert Backoff(base=1.5, ceiling=7.0, factor=1.5).nominal(100_000) == 7.0


def test_a_kept_delay_doubles_without_its_count():
    holdoff = Backoff(base=300.0, ceiling=86400.0)  # a cloud quota's hold-off: exact
    seconds = [holdoff.delay(1)]
    while seconds[-1] < 86400.0:
        seconds.append(holdoff.after(seconds[-1]))
    assert seconds == [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, 86400]
    assert holdoff.after(86400.0) == 86400.0


def test_a_policy_refuses_nonsense():
    for bad in ({"spread": 1.0}, {"spread": -0.1}, {"grace": -1}, {"factor": 0.5}, {"slack": -1.0}):
        with pytest.raises(ValueError):
            Backoff(base=1.0, ceiling=2.0, **bad)


async def test_a_deadline_tells_what_is_left_of_a_share_of_the_poll():
    started = asyncio.get_running_loop().time() - 3.0
    deadline = Deadline(started, 10.0)  # a poll of 10 s, 3 s in
    assert 3.0 < deadline.left(0.7) <= 4.0
    assert deadline.left() > deadline.left(0.4) > 0 > deadline.left(0.2)
    assert Deadline.from_now(10.0).left() > deadline.left()


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class Asked:
    policy: Backoff
    failures: int
    task: asyncio.Task | None


@pytest.fixture
def asked(monkeypatch) -> list[Asked]:
    """Every delay asked of any Backoff from now on; each is answered with 10 ms."""
    calls: list[Asked] = []

    def delay(self: Backoff, failures: int, rng: Any = None) -> float:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        calls.append(Asked(self, failures, task))
        return 0.01

    monkeypatch.setattr(Backoff, "delay", delay)
    return calls


async def test_retry_forever_counts_failures_and_starts_over_after_a_good_run(asked):
    outcomes = iter([False, False, ValueError("boom"), True, False, True, False])
    failures_seen: list[Exception] = []
    done = asyncio.Event()

    async def attempt() -> bool:
        outcome = next(outcomes, None)
        if outcome is None:
            done.set()
            await asyncio.Event().wait()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = Backoff.for_reconnects(5.0, 60.0)
    task = asyncio.create_task(retry_forever(attempt, policy, failures_seen.append))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [a.failures for a in asked] == [1, 2, 3, 1, 2, 1, 2]
    assert all(a.policy is policy for a in asked)
    assert [str(e) for e in failures_seen] == ["boom"]


async def test_retry_forever_waits_every_after_success_and_lets_exceptions_through_without_a_handler(
        asked, monkeypatch):
    runs = 0
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def attempt() -> bool:
        nonlocal runs
        runs += 1
        if runs == 3:
            raise KeyError("bug")
        return runs == 1

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(KeyError):
        await retry_forever(attempt, Backoff.for_reconnects(5.0, 60.0), every=600.0)
    assert slept == [600.0, 0.01]  # after the good run the period; after the failed one the policy's
    assert [a.failures for a in asked] == [1]


# --- the scheduler's retries of failed polls -----------------------------------------------------


class FlakyAdapter:
    def __init__(self) -> None:
        self.refuse = True
        self.calls = 0

    async def poll(self) -> Reading:
        self.calls += 1
        if self.refuse:
            raise PollError("connection", "refused")
        return Reading()

    async def close(self) -> None:
        pass


async def test_the_scheduler_asks_the_poll_policy_after_each_failed_poll(asked):
    # Unasked, five failures would take 0.5 + 0.5 + 0.5 + 1 + 2 s.
    target = poll_target(interval=0.5, max_backoff=300.0, jitter=0.1)
    store = SnapshotStore()
    store.add_target(target.name, target.vendor, target.stale_after)
    adapter = FlakyAdapter()
    runner = TargetRunner(target, adapter, store, get_log())
    runner.start()
    try:
        await async_wait_until(lambda: len(asked) >= 5, timeout=10, what="five failed polls")
        adapter.refuse = False
        await async_wait_until(lambda: store.targets[target.name].up, timeout=10, what="recovery")
        adapter.refuse = True
        mark = len(asked)
        await async_wait_until(lambda: len(asked) >= mark + 2, timeout=10, what="failures after recovery")
    finally:
        await runner.stop()
    assert [a.failures for a in asked[:5]] == [1, 2, 3, 4, 5]
    assert [a.failures for a in asked[mark:mark + 2]] == [1, 2]  # recovered: the count started over
    assert {a.policy for a in asked} == {Backoff.for_polls(target)}


async def test_a_target_failing_for_days_is_still_polled():
    target = poll_target(interval=0.05, max_backoff=0.1)
    store = SnapshotStore()
    store.add_target(target.name, target.vendor, target.stale_after)
    adapter = FlakyAdapter()
    runner = TargetRunner(target, adapter, store, get_log())
    runner.failures = 5000  # some 17 days at a 300 s ceiling
    runner.start()
    try:
        await async_wait_until(lambda: adapter.calls >= 3, timeout=10, what="polls after 5000 failures")
    finally:
        await runner.stop()


# --- the IOmeter bridge's event streams ----------------------------------------------------------


def converted(options: dict, raw: dict[str, Any]) -> dict[str, Any]:
    """A target's options as the configuration loader leaves them: converted, defaults filled in."""
    out = {key: options[key].convert(value) for key, value in raw.items()}
    out.update({key: option.default for key, option in options.items() if key not in out and option.default is not None})
    return out


def bridge_target(host: str, **options: Any) -> TargetConfig:
    return TargetConfig(name="bridge", vendor="iometer", transport="local", interval=10.0, timeout=5.0,
                        max_backoff=120.0, stale_after=60.0, jitter=0.1,
                        options=converted(iometer_bridge.OPTIONS, {"host": host, "mode": "sse", **options}))


async def test_the_bridge_streams_reconnect_with_the_policys_delays(asked, session, tmp_path):
    sim = BridgeSimulator(conformance_root=CONFORMANCE / "iometer-local")
    await sim.start()
    adapter = iometer_bridge.IOmeterBridge(bridge_target(sim.host, reconnect_delay="5s"),
                                           AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger()))
    emitted: list[Reading | PollError] = []
    task = asyncio.create_task(adapter.run(emitted.append))
    try:
        await async_wait_until(lambda: sim.open_streams == 2, what="both streams")
        assert asked == []  # streams that hold ask for nothing
        sim.fail_with = 503  # every reconnection is answered with an error
        await sim.drop_streams()
        await async_wait_until(lambda: len(asked) >= 8, what="failed reconnections")
        sim.fail_with = None
        await async_wait_until(lambda: sim.open_streams == 2, what="both streams back")
        mark, opened = len(asked), sim.stream_requests["reading"]
        sim.end_streams("reading")  # the stream ends properly after its events
        await async_wait_until(lambda: sim.stream_requests["reading"] > opened and sim.open_streams == 2,
                               what="the reading stream reopened")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()
        await sim.stop()
    assert {a.policy for a in asked} == {Backoff.for_reconnects(5.0, 120.0)}
    per_stream: dict[Any, list[int]] = {}
    for a in asked[:mark]:
        per_stream.setdefault(a.task, []).append(a.failures)
    # Two streams, each counting its own failures: the break, then the refusals.
    assert len(per_stream) == 2
    assert all(counts == list(range(1, len(counts) + 1)) for counts in per_stream.values())
    assert [a.failures for a in asked[mark:]] == [1]  # it had delivered: the count started over
    assert any(isinstance(e, PollError) and e.reason == "http_error" for e in emitted)


# --- the IOmeter Partner API's subscription ------------------------------------------------------


def partner_target(sim: PartnerApiSimulator, **options: Any) -> TargetConfig:
    raw = {"partner_id": sim.partner_id, "secret": sim.secret, "endpoint": sim.url, "min_emit_interval": 0,
           **options}
    return TargetConfig(name="account", vendor="iometer", transport="partner", interval=60.0, timeout=5.0,
                        max_backoff=90.0, stale_after=180.0, jitter=0.1, options=converted(iometer_partner.OPTIONS, raw))


@pytest.mark.parametrize("protocol", ["websocket", "sse"])
async def test_the_partner_subscription_reconnects_with_the_policys_delays(asked, session, tmp_path, protocol):
    sim = PartnerApiSimulator(installations=demo_installations(1, 1))
    await sim.start()
    adapter = iometer_partner.IOmeterPartner(partner_target(sim, reconnect_delay="4s", subscription_protocol=protocol),
                                             AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger()))
    meter = sim.installations[0].meters[0]
    runner = asyncio.create_task(adapter.run(lambda item: None))

    def subscription_asks() -> list[int]:  # (discovery runs in a task of its own)
        return [a.failures for a in asked if a.task is runner]

    try:
        await async_wait_until(lambda: sim.active_subscriptions == 1, what="a subscription")
        sim.publish(meter, time.time() - 5, demo_values(1.0, 2.0))
        await async_wait_until(lambda: adapter.account.received >= 1, what="a reading")
        secret, sim.secret = sim.secret, "changed"  # from now on every connection is refused
        await sim.drop_connections()
        await async_wait_until(lambda: len(subscription_asks()) >= 4, what="refused reconnections")
        sim.secret = secret
        await async_wait_until(lambda: sim.active_subscriptions == 1, what="the subscription back")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await adapter.close()
        await sim.stop()
    asks = subscription_asks()
    assert asks[:4] == [1, 2, 3, 4]  # the break after a reading, then refusals: 1, 2, 3 ...
    assert {a.policy for a in asked} == {Backoff.for_reconnects(4.0, 90.0)}
    assert adapter.last_error is not None and adapter.last_error.reason == "unauthorized"


async def test_a_failed_discovery_is_retried_with_the_policys_delays(asked, session, tmp_path):
    sim = PartnerApiSimulator(installations=demo_installations(1, 1))
    await sim.start()
    adapter = iometer_partner.IOmeterPartner(partner_target(sim, reconnect_delay="4s", secret="wrong"),
                                             AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger()))
    runner = asyncio.create_task(adapter.run(lambda item: None))
    try:
        await async_wait_until(lambda: len([a for a in asked if a.task is not runner]) >= 3, what="failed discoveries")
    finally:
        runner.cancel()
        # The adapter stops when cancelled (what the daemon relies on), even in the middle of
        # the refused reconnections this test provokes 100 times a second...
        await asyncio.wait_for(asyncio.gather(runner, return_exceptions=True), 20)
        # ... while the simulator may still be closing the connections they left behind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sim.stop(), 20)
    discovery = [a.failures for a in asked if a.task is not runner]
    assert discovery[:3] == [1, 2, 3]
    assert {a.policy for a in asked} == {Backoff.for_reconnects(4.0, 90.0)}


# --- MQTT brokers ---------------------------------------------------------------------------------


async def test_the_mqtt_connection_reconnects_with_the_policys_delays(asked, tmp_path, monkeypatch):
    require_binary("mosquitto")
    from simulators.iammeter_push import MosquittoBroker

    monkeypatch.setattr(mqtt, "STABLE_AFTER", 0.0)  # any connection that came up counts as good
    broker = await MosquittoBroker(directory=tmp_path / "broker").start()
    settings = mqtt.BrokerSettings.from_section({"name": "b", "host": "127.0.0.1", "port": broker.port,
                                                 "reconnect_delay": 3.0, "max_reconnect_delay": 50.0})
    connection = mqtt.BrokerConnection(settings, structlog.get_logger())
    connection.add_interval(20.0)  # the ceiling: the shortest interval of its targets
    await connection.start()
    try:
        await asyncio.wait_for(connection.connected.wait(), 10)
        await broker.stop()
        await async_wait_until(lambda: len(asked) >= 4, what="refused reconnections")
        await broker.start()  # the same port
        await asyncio.wait_for(connection.connected.wait(), 10)
        mark = len(asked)
        await broker.stop()
        await async_wait_until(lambda: len(asked) > mark, what="the next loss")
    finally:
        await connection.close()
        await broker.close()
    assert [a.failures for a in asked[:4]] == [1, 2, 3, 4]
    assert asked[mark].failures == 1  # it had connected: the count started over
    assert {a.policy for a in asked} == {Backoff.for_reconnects(3.0, 20.0)}


# --- the HTTP push listener -----------------------------------------------------------------------


async def test_a_taken_push_port_is_tried_again_with_the_policys_delays(asked, session, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    target = TargetConfig(name="meter", vendor="iammeter", transport="push", interval=60.0, timeout=5.0,
                          max_backoff=60.0, stale_after=60.0, jitter=0.0, options={"sn": "3E0BAF87"})
    context = AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger(), shared=SharedResources(),
                             sections={"http_push": {"listen": f"127.0.0.1:{port}"}}, store=SnapshotStore())
    adapter = iam_push.SPEC.create(target, context)
    emitted: list[Any] = []
    task = asyncio.create_task(adapter.run(emitted.append))
    try:
        await async_wait_until(lambda: len(asked) >= 3, what="failed attempts to listen")
        taken.close()
        await async_wait_until(lambda: adapter.listener is not None, what="the listener")
    finally:
        taken.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [a.failures for a in asked[:3]] == [1, 2, 3]
    assert {a.policy for a in asked} == {iam_push.LISTEN_RETRY}
    assert all(isinstance(e, PollError) for e in emitted)


@pytest.mark.parametrize("swallowed_as", ["timeout", "false"])
async def test_retry_forever_stops_when_an_attempt_swallows_the_cancellation(asked, swallowed_as):
    """Python 3.11's wait_for turns a cancellation that meets its own timeout into TimeoutError;
    a library using it hands the attempt an ordinary error. The loop still stops."""
    attempts = 0

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed_as == "timeout":
                raise TimeoutError("the library's own timeout") from None
            return False
        return True

    loop = asyncio.create_task(retry_forever(attempt, Backoff.for_reconnects(1.0, 60.0), lambda exc: None))
    await async_wait_until(lambda: attempts == 1, what="the first attempt")
    loop.cancel()
    done, _ = await asyncio.wait([loop], timeout=10)
    assert done, "the loop went on after its cancellation was swallowed"
    assert loop.cancelled() and attempts == 1
