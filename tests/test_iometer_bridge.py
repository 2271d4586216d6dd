"""The IOmeter bridge adapter against the bridge simulator, on real sockets: poll and SSE."""

from __future__ import annotations

import asyncio
import copy
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import structlog

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.model.samples import ParseError, Reading
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors import registry
from exporter.transport.sse import SseDecoder, SseEvent
from exporter.vendors.iometer.bridge import OPTIONS, IOmeterBridge
from simulators.iometer import EMBEDDED_READING, BridgeSimulator

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


def make_target(host: str, **options: Any) -> TargetConfig:
    raw = {"host": host, **options}
    converted = {key: OPTIONS[key].convert(value) for key, value in raw.items()}
    for key, option in OPTIONS.items():
        if key not in converted and option.default is not None:
            converted[key] = option.default
    return TargetConfig(
        name="meter", vendor="iometer", transport="local", interval=0.05, timeout=5.0,
        max_backoff=0.2, stale_after=30.0, jitter=0.1, options=converted,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def bridge() -> AsyncIterator[BridgeSimulator]:
    sim = BridgeSimulator(conformance_root=CONFORMANCE / "iometer-local")
    await sim.start()
    yield sim
    await sim.stop()


def context(session: aiohttp.ClientSession, tmp_path: Path, clock: Any = None) -> AdapterContext:
    ctx = AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger())
    if clock is not None:
        ctx.clock = clock
    return ctx


def reading_with(energy_wh: float, time: str) -> dict[str, Any]:
    body = copy.deepcopy(EMBEDDED_READING)
    body["meter"]["reading"]["time"] = time
    body["meter"]["reading"]["registers"][0]["value"] = energy_wh
    return body


async def wait_for(predicate: Any, what: str, limit: float = 10.0) -> None:
    """Wait until predicate() holds (a bound on waiting, not a timing assertion)."""
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def test_local_is_the_default_transport() -> None:
    assert registry.transports("iometer")[0] == "local"
    assert registry.get("iometer", "local").delivery == "poll"


async def test_simulator_serves_the_corpus_byte_for_byte(bridge, session) -> None:
    for name in ("reading", "status"):
        path = CONFORMANCE / "iometer-local" / f"{name}.json"
        if not path.is_file():
            pytest.skip(f"conformance corpus not found at {path}")
        async with session.get(f"{bridge.base_url}/v1/{name}") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/json")
            assert await response.read() == path.read_bytes()
    async with session.get(f"{bridge.base_url}/v2/reading") as response:
        assert response.status == 404


async def test_poll_reads_both_endpoints_in_base_units(bridge, session, tmp_path) -> None:
    adapter = IOmeterBridge(make_target(bridge.host), context(session, tmp_path))
    reading = await adapter.poll()
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(1234.5 * 3600)
    assert reading.value_of(M.ACTIVE_POWER) == 100
    assert reading.value_of(M.WIFI_RSSI) == -30
    assert reading.value_of(M.READER_CONNECTED) == 1
    assert bridge.requests == {"reading": 1, "status": 1}


async def test_status_is_read_less_often(bridge, session, tmp_path) -> None:
    clock = Clock()
    adapter = IOmeterBridge(make_target(bridge.host, status_interval="60s"), context(session, tmp_path, clock))
    for _ in range(3):
        reading = await adapter.poll()
        clock.now += 10
        assert reading.value_of(M.READER_BATTERY) == 1.0  # the kept status is still exported
    assert bridge.requests == {"reading": 3, "status": 1}
    clock.now += 60
    await adapter.poll()
    assert bridge.requests == {"reading": 4, "status": 2}


async def test_poll_errors_have_reasons(bridge, session, tmp_path) -> None:
    adapter = IOmeterBridge(make_target(bridge.host), context(session, tmp_path))
    bridge.fail_with = 500
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "http_error"
    bridge.fail_with = None
    bridge.set_reading(b"<html>busy</html>")
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "parse"
    bridge.set_reading({"meter": {"number": "X", "reading": {"registers": [{"obis": "1.8.0", "value": "n/a", "unit": "Wh"}]}}})
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "parse"


async def test_unreachable_bridge(session, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = IOmeterBridge(make_target(f"127.0.0.1:{port}"), context(session, tmp_path))
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "connection"


async def test_sse_streams_both_endpoints_and_reconnects(bridge, session, tmp_path) -> None:
    adapter = IOmeterBridge(make_target(bridge.host, mode="sse", reconnect_delay="10ms"), context(session, tmp_path))
    assert adapter.delivery == "push"
    emitted: list[Reading] = []
    task = asyncio.create_task(adapter.run(emitted.append))
    try:
        await wait_for(lambda: emitted and emitted[-1].value_of(M.ENERGY_IMPORTED) and emitted[-1].value_of(M.READER_CONNECTED), "first events")
        assert bridge.requests == {"reading": 0, "status": 0}  # streamed, not polled

        bridge.set_reading(reading_with(2000, "2024-11-11T11:12:00Z"))
        await wait_for(lambda: emitted[-1].value_of(M.ENERGY_IMPORTED) == 2000 * 3600, "a pushed reading")
        assert emitted[-1].value_of(M.READER_CONNECTED) == 1  # the status stays in every snapshot

        for round_ in range(3):
            opened = bridge.stream_requests["reading"]
            await bridge.drop_streams()
            await wait_for(lambda: bridge.stream_requests["reading"] > opened and bridge.open_streams == 2, "a reconnect")
            bridge.set_reading(reading_with(3000 + round_, f"2024-11-11T11:2{round_}:00Z"))
            await wait_for(lambda: emitted[-1].value_of(M.ENERGY_IMPORTED) == (3000 + round_) * 3600, "readings after a reconnect")
        assert emitted[-1].value_of(M.MEASUREMENT_TIME) == 1731324120  # 11:22:00
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()


async def test_sse_skips_a_bad_event_and_keeps_the_last_good_state(bridge, session, tmp_path) -> None:
    adapter = IOmeterBridge(make_target(bridge.host, mode="sse"), context(session, tmp_path))
    emitted: list[Reading | PollError] = []

    def readings() -> list[Reading]:
        return [item for item in emitted if isinstance(item, Reading)]

    task = asyncio.create_task(adapter.run(emitted.append))
    try:
        await wait_for(lambda: readings() and readings()[-1].value_of(M.ENERGY_IMPORTED), "first event")
        count = len(readings())
        bridge.set_reading({"__typename": "iometer.reading.v1", "meter": {"reading": {"registers": "oops"}}})
        await wait_for(lambda: adapter.last_error is not None, "the bad event")
        assert adapter.last_error.reason == "parse"
        # the bad event reaches the daemon as a failure with its reason
        assert any(isinstance(item, PollError) and item.reason == "parse" for item in emitted)
        bridge.set_reading(reading_with(99, "2024-11-11T12:00:00Z"))
        await wait_for(lambda: readings()[-1].value_of(M.ENERGY_IMPORTED) == 99 * 3600, "the next good event")
        assert len(readings()) == count + 1  # no reading emitted for the bad one
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()


async def test_sse_mode_polled_serves_the_streamed_state(bridge, session, tmp_path) -> None:
    """A daemon that polls an sse-mode target: no request per poll, the newest pushed state."""
    adapter = IOmeterBridge(make_target(bridge.host, mode="sse", reconnect_delay="10ms"), context(session, tmp_path))
    try:
        first = await adapter.poll()
        assert first.value_of(M.ENERGY_IMPORTED) == pytest.approx(1234.5 * 3600)
        bridge.set_reading(reading_with(4321, "2024-11-11T13:00:00Z"))
        await wait_for(lambda: adapter._snapshot.value_of(M.ENERGY_IMPORTED) == 4321 * 3600, "the pushed reading")
        assert (await adapter.poll()).value_of(M.ENERGY_IMPORTED) == 4321 * 3600
        assert bridge.requests == {"reading": 0, "status": 0}
        assert bridge.stream_requests == {"reading": 1, "status": 1}
    finally:
        await adapter.close()


async def test_sse_mode_polled_reports_a_dead_bridge(session, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = IOmeterBridge(make_target(f"127.0.0.1:{port}", mode="sse", reconnect_delay="10ms"), context(session, tmp_path))
    try:
        with pytest.raises(PollError) as err:
            await asyncio.wait_for(adapter.poll(), 10)
        assert err.value.reason == "connection"
    finally:
        await adapter.close()


def test_sse_decoder_framing() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: readingEvent\r\nda") == []
    assert decoder.feed(b"ta: {\"a\":\r\ndata: 1}\r\n\r") == []  # a lone CR may still become CRLF
    assert decoder.feed(b"\n: keep-alive\n\ndata:x\rid: 7\r\r\n") == [
        SseEvent("readingEvent", '{"a":\n1}'), SseEvent("message", "x", "7")
    ]
    assert decoder.feed(b"event: statusEvent\n\n") == []  # no data: nothing dispatched


def test_sse_decoder_refuses_endless_events() -> None:
    decoder = SseDecoder(max_bytes=100)
    with pytest.raises(ParseError):
        decoder.feed(b"data: " + b"x" * 200)


class Log:
    """A logger that keeps what it was told (structlog's interface, the parts the adapter uses)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def warning(self, event: str, **_: Any) -> None:
        self.lines.append(("warning", event))

    def info(self, event: str, **_: Any) -> None:
        self.lines.append(("info", event))


async def test_a_missing_status_leaves_the_readings_and_is_asked_for_slowly(bridge, session, tmp_path) -> None:
    clock = Clock()
    ctx = context(session, tmp_path, clock)
    log = ctx.log = Log()
    adapter = IOmeterBridge(make_target(bridge.host, status_interval="60s"), ctx)
    first = await adapter.poll()
    assert first.value_of(M.READER_CONNECTED) == 1
    bridge.status_missing = True
    for _ in range(30):  # five minutes of polls every 10 s
        clock.now += 10
        reading = await adapter.poll()  # no PollError: the meter is not down
        assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(1234.5 * 3600)
        # the kept status until it is asked for again; then the state series go stale
        assert (reading.value_of(M.READER_CONNECTED) is None) == (bridge.status_404s > 0)
    assert bridge.status_404s == 1  # asked once, not at every poll nor every status_interval
    assert [line for line in log.lines if line[0] == "warning"] == [
        ("warning", "bridge has no /v1/status (HTTP 404); readings go on without the device state")]
    bridge.status_missing = False
    clock.now += 600
    back = await adapter.poll()
    assert back.value_of(M.READER_CONNECTED) == 1 and bridge.status_404s == 1
    assert sum(1 for line in log.lines if line[0] == "warning") == 1


async def test_a_missing_status_stream_leaves_the_readings(bridge, session, tmp_path) -> None:
    bridge.status_missing = True
    adapter = IOmeterBridge(make_target(bridge.host, mode="sse", reconnect_delay="10ms"), context(session, tmp_path))
    emitted: list[Reading | PollError] = []
    task = asyncio.create_task(adapter.run(emitted.append))
    try:
        await wait_for(lambda: bridge.status_404s == 1 and any(
            isinstance(e, Reading) and e.value_of(M.ENERGY_IMPORTED) for e in emitted), "a reading")
        bridge.set_reading(reading_with(2000, "2024-11-11T11:12:00Z"))
        await wait_for(lambda: emitted[-1].value_of(M.ENERGY_IMPORTED) == 2000 * 3600, "a pushed reading")
        assert not any(isinstance(e, PollError) for e in emitted)
        assert emitted[-1].value_of(M.READER_CONNECTED) is None
        assert bridge.status_404s == 1  # not asked again at the reconnection pace
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()


def test_device_state_without_an_installation_has_no_empty_label() -> None:
    from exporter.vendors.iometer import parse
    from simulators.iometer import EMBEDDED_STATUS

    status = copy.deepcopy(EMBEDDED_STATUS)
    del status["installationId"]
    reading = parse.parse_bridge_status(status)
    states = [s for s in reading.samples if s.metric is M.READER_CONNECTED]
    assert [dict(s.labels) for s in states] == [{"device_id": "658c2b34-2017-45f2-a12b-731235f8bb97"}]
    with_installation = parse.parse_bridge_status(EMBEDDED_STATUS)
    assert with_installation.value_of(M.READER_CONNECTED, installation="658c2b34-2017-45f2-a12b-731235f8bb97") == 1
