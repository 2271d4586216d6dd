"""The IOmeter Partner API adapter against the Partner API simulator, on real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import structlog
from aiohttp import web
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.model.samples import Reading
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors import registry
from exporter.vendors.iometer.auth import basic_header
from exporter.vendors.iometer.partner import METER_READINGS, OPTIONS, IOmeterPartner, check_target
from simulators.iometer_partner import (LEGACY_WS, TRANSPORT_WS, PartnerApiSimulator, SimInstallation,
                                        demo_installations, demo_values)


def make_target(sim: PartnerApiSimulator | None, **options: Any) -> TargetConfig:
    raw: dict[str, Any] = {"partner_id": sim.partner_id if sim else "p", "secret": sim.secret if sim else "s",
                           "endpoint": sim.url if sim else "http://127.0.0.1:9/api/v1/query",
                           "reconnect_delay": "10ms", "min_emit_interval": 0}
    raw.update(options)
    converted = {key: OPTIONS[key].convert(value) for key, value in raw.items()}
    for key, option in OPTIONS.items():
        if key not in converted and option.default is not None:
            converted[key] = option.default
    return TargetConfig(
        name="account", vendor="iometer", transport="partner", interval=60.0, timeout=5.0,
        max_backoff=0.1, stale_after=180.0, jitter=0.1, options=converted,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def started(sim: PartnerApiSimulator) -> PartnerApiSimulator:
    await sim.start()
    return sim


def adapter_for(sim: PartnerApiSimulator | None, session: aiohttp.ClientSession, tmp_path: Path, **options: Any) -> IOmeterPartner:
    ctx = AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger())
    return IOmeterPartner(make_target(sim, **options), ctx)


async def wait_for(predicate: Any, what: str, limit: float = 15.0) -> None:
    """Wait until predicate() holds (a bound on waiting, not a timing assertion)."""
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def energies(reading: Reading) -> dict[tuple[str, str], float]:
    return {
        (dict(s.labels)["installation"], dict(s.labels)["meter"]): s.value
        for s in reading.samples if s.metric is M.ACCOUNT_ENERGY_IMPORTED
    }


def assert_never_backwards(snapshots: list[Reading]) -> None:
    held: dict[tuple[str, str], float] = {}
    counters = (0.0, 0.0)
    for snapshot in snapshots:
        for key, value in energies(snapshot).items():
            assert value >= held.get(key, 0.0), f"energy of {key} went backwards"
            held[key] = value
        now = (snapshot.value_of(M.READINGS_RECEIVED) or 0.0, snapshot.value_of(M.DUPLICATE_READINGS) or 0.0)
        assert now[0] >= counters[0] and now[1] >= counters[1]
        counters = now


def test_partner_transport_is_registered_as_push() -> None:
    spec = registry.get("iometer", "partner")
    assert spec is not None and spec.delivery == "push"
    assert registry.transports("iometer") == ["local", "partner"]


def test_check_target() -> None:
    problems = dict(check_target({"meters": ("1EMH1",), "obis_codes": ("nope",), "endpoint": "ftp://x",
                                  "ws_endpoint": "http://x", "lookback": 2 * 86400.0}))
    assert set(problems) == {"meters", "obis_codes", "endpoint", "ws_endpoint", "lookback"}
    assert list(check_target({"meters": ("1EMH1=house",), "obis_codes": ("01-00:01.08.00*ff",)})) == []


async def test_discovery_walks_every_page(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(5, 2), max_page=2))
    try:
        adapter = adapter_for(sim, session, tmp_path, page_size=2, auth="wsse")
        found = await adapter.discover()
        assert len(found) == 5
        assert sim.http_requests == 4  # pages of 2, 2, 1 and the empty one that ends the list
        assert sum(len(i.meters) for i in found) == 10
        snapshot = adapter.account.snapshot()
        for installation in sim.installations:
            device = {"installation": installation.id, "device_id": installation.devices[0].id}
            assert snapshot.value_of(M.GATEWAY_CONNECTED, **device) == 1
            assert snapshot.value_of(M.READER_BATTERY, **device) == pytest.approx(0.87)
            assert snapshot.value_of(M.READER_PIN_STATE, **device, state="entered") == 1
    finally:
        await sim.stop()


class _OffsetIgnoringSimulator(PartnerApiSimulator):
    def _page(self, items: list[Any], pagination: dict[str, Any] | None) -> list[Any]:
        return super()._page(items, {"limit": (pagination or {}).get("limit")})


async def test_discovery_does_not_stop_at_a_page_shorter_than_asked(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(5), max_page=2))
    try:
        found = await adapter_for(sim, session, tmp_path, page_size=100).discover()
        assert len(found) == 5  # the server's pages hold 2, whatever was asked
    finally:
        await sim.stop()


async def test_discovery_ends_when_the_server_ignores_the_offset(session, tmp_path) -> None:
    sim = await started(_OffsetIgnoringSimulator(installations=demo_installations(3), max_page=2))
    try:
        found = await adapter_for(sim, session, tmp_path, page_size=2).discover()
        assert len(found) == 2 and sim.http_requests == 2  # the repeat page ends the walk
    finally:
        await sim.stop()


def publish_round(sim: PartnerApiSimulator, taken: float, step: int) -> None:
    for installation in sim.installations:
        for meter in installation.meters:
            sim.publish(meter, taken, demo_values(1000.0 + step, 400.0 + step))


async def test_query_mode_pages_and_resumes(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(3, 1), max_page=5))
    try:
        base = time.time() - 300
        for step in range(4):
            publish_round(sim, base + step, step)  # 12 readings: 3 pages of 5
        adapter = adapter_for(sim, session, tmp_path, mode="query", page_size=5,
                              meters=[f"{sim.installations[0].meters[0].number}=house"])
        assert adapter.delivery == "poll"
        first = await adapter.poll()
        assert first.value_of(M.READINGS_RECEIVED) == 12
        assert first.value_of(M.DUPLICATE_READINGS) == 0
        values = energies(first)
        assert len(values) == 3 and set(values.values()) == {1003.0 * 3600}
        assert first.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="house") == 1003.0 * 3600
        assert first.value_of(M.ACCOUNT_ACTIVE_POWER, meter="house") == 403.0
        assert first.value_of(M.ACCOUNT_MEASUREMENT_TIME, meter="house") == int(base + 3)

        publish_round(sim, base + 10, 10)
        second = await adapter.poll()
        # From the newest held reading on: the 3 readings at base+3 come again, then 3 new ones.
        assert second.value_of(M.READINGS_RECEIVED) == 18
        assert second.value_of(M.DUPLICATE_READINGS) == 3
        assert set(energies(second).values()) == {1010.0 * 3600}
        assert_never_backwards([first, second])
    finally:
        await sim.stop()


@pytest.mark.parametrize(("protocol", "auth", "over"), [(TRANSPORT_WS, "wsse", "websocket"),
                                                       (LEGACY_WS, "basic", "websocket"),
                                                       (TRANSPORT_WS, "wsse", "sse"), (TRANSPORT_WS, "basic", "sse")])
async def test_subscription_dropped_three_times_while_readings_flow(session, tmp_path, protocol, auth, over) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(2, 2), protocols=(protocol,)))
    adapter = adapter_for(sim, session, tmp_path, auth=auth, subscription_protocol=over)
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    base = time.time() - 600
    published = {"step": 0}

    async def publisher() -> None:
        while True:
            published["step"] += 1
            publish_round(sim, base + published["step"], published["step"])
            await asyncio.sleep(0.005)

    flow = asyncio.create_task(publisher())
    try:
        for drop in range(3):
            await wait_for(lambda: sim.active_subscriptions == 1 and adapter.account.received > 0, "a live subscription")
            received = adapter.account.received
            await wait_for(lambda: adapter.account.received > received + 8, "readings flowing")
            assert await sim.drop_connections() == 1
        await wait_for(lambda: sim.active_subscriptions == 1, "the fourth connection")
        flow.cancel()
        await asyncio.gather(flow, return_exceptions=True)
        last = published["step"]
        final = 1000.0 + last
        await wait_for(lambda: snapshots and set(energies(snapshots[-1]).values()) == {final * 3600}, "the newest readings")

        newest = snapshots[-1]
        assert len(energies(newest)) == 4
        assert newest.value_of(M.ACCOUNT_MEASUREMENT_TIME) == int(base + last)
        assert adapter.connections == 4
        assert (sim.ws_connections, sim.sse_connections) == ((4, 0) if over == "websocket" else (0, 4))
        # Each resume asked from the newest reading held, and its replay was dropped, counted.
        starts = [v.get("startTime") for v in sim.subscriptions_started]
        assert len(starts) == 4 and starts == sorted(starts) and starts[0] < starts[-1]
        assert newest.value_of(M.DUPLICATE_READINGS) >= 3 * 4  # at least the boundary readings
        assert newest.value_of(M.READINGS_RECEIVED) >= 4 * last
        assert_never_backwards(snapshots)
    finally:
        flow.cancel()
        runner.cancel()
        await asyncio.gather(flow, runner, return_exceptions=True)
        await adapter.close()
        await sim.stop()


async def test_repeated_deliveries_are_counted_and_dropped(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1, 1)))
    adapter = adapter_for(sim, session, tmp_path)
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    try:
        await wait_for(lambda: sim.active_subscriptions == 1, "a subscription")
        sim.duplicate_deliveries = True
        base = time.time() - 60
        for step in range(5):
            publish_round(sim, base + step, step)
        await wait_for(lambda: adapter.account.received == 10, "ten deliveries")
        await wait_for(lambda: snapshots and snapshots[-1].value_of(M.READINGS_RECEIVED) == 10, "a snapshot")
        assert snapshots[-1].value_of(M.DUPLICATE_READINGS) == 5
        assert set(energies(snapshots[-1]).values()) == {1004.0 * 3600}
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sim.stop()


async def test_live_readings_per_installation_with_obis_codes(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(2, 1), obis_format="hex"))
    adapter = adapter_for(sim, session, tmp_path, subscription="liveReadings", obis_codes=["1.8.0", "16.7.0"],
                          installations=[demo_installations(2, 1)[1].id])
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    try:
        await wait_for(lambda: sim.active_subscriptions == 1, "one subscription per wanted installation")
        assert sim.subscriptions_started == [
            {"installationId": sim.installations[1].id, "obisCodes": ["1-0:1.8.0", "1-0:16.7.0"]}]
        publish_round(sim, time.time(), 7)
        await wait_for(lambda: snapshots and energies(snapshots[-1]), "a reading")
        newest = snapshots[-1]
        assert list(energies(newest)) == [(sim.installations[1].id, sim.installations[1].meters[0].number)]
        assert newest.value_of(M.ACCOUNT_ACTIVE_POWER) == 407.0
        assert newest.value_of(M.ACCOUNT_PHASE_VOLTAGE) is None  # not asked for
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sim.stop()


async def test_live_readings_follow_new_installations(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1, 1)))
    adapter = adapter_for(sim, session, tmp_path, subscription="liveReadings")
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    try:
        await wait_for(lambda: sim.active_subscriptions == 1, "the first installation's subscription")
        sim.installations.append(demo_installations(2, 1)[1])  # a user links another account
        await adapter.discover()  # what the next discovery round does
        await wait_for(lambda: sim.active_subscriptions == 2 and len(sim.subscriptions_started) == 3, "resubscription")
        publish_round(sim, time.time(), 3)
        await wait_for(lambda: snapshots and len(energies(snapshots[-1])) == 2, "readings of both")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sim.stop()


async def test_wrong_secret_is_unauthorized_for_queries_and_subscriptions(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1)))
    try:
        for auth in ("basic", "wsse"):
            adapter = adapter_for(sim, session, tmp_path, auth=auth, secret="wrong", mode="query")
            with pytest.raises(PollError) as err:
                await adapter.poll()
            assert err.value.reason == "unauthorized" and "wrong" not in err.value.message
        adapter = adapter_for(sim, session, tmp_path, secret="wrong")
        runner = asyncio.create_task(adapter.run(lambda reading: None))
        await wait_for(lambda: adapter.last_error is not None and sim.rejected >= 4, "refusals")
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert adapter.last_error.reason == "unauthorized"
        assert sim.active_subscriptions == 0
    finally:
        await sim.stop()


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_simulator_takes_credentials_from_connection_init(protocol) -> None:
    """Servers that read the Authorization from `connection_init` (no header on the upgrade)."""
    sim = await started(PartnerApiSimulator(installations=demo_installations(1), protocols=(protocol,)))
    try:
        for secret, accepted in ((sim.secret, True), ("wrong", False)):
            transport = WebsocketsTransport(url=sim.ws_url, init_payload={"Authorization": basic_header(sim.partner_id, secret)})
            meter = sim.installations[0].meters[0]
            sim.publish(meter, time.time() - 5, demo_values(1.0, 2.0))
            request_ = GraphQLRequest(METER_READINGS, variable_values={"startTime": "2000-01-01T00:00:00Z"})
            try:
                async with Client(transport=transport) as client:
                    async for data in client.subscribe(request_):
                        assert data["meterReadings"]["meter"]["number"] == meter.number
                        break
                got_in = True
            except Exception:
                got_in = False
            assert got_in is accepted
    finally:
        await sim.stop()


# --- error paths of the HTTP queries (a scripted server; aioresponses does not work with
# this aiohttp version) ---------------------------------------------------------------------


class Scripted:
    """A bare server answering queued (status, body) pairs in order, on a real socket."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> "Scripted":
        app = web.Application()
        app.router.add_post("/api/v1/query", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api/v1/query"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        status, body = self.answers.pop(0)
        return web.Response(status=status, text=body, content_type="application/json")


async def test_graphql_and_http_errors_have_reasons(session, tmp_path) -> None:
    cases = [
        ((500, "oops"), "http_error"),
        ((200, "<html>"), "parse"),
        ((200, json.dumps({"data": None, "errors": [{"message": "denied", "extensions": {"code": "FORBIDDEN"}}]})), "unauthorized"),
        ((200, json.dumps({"data": None, "errors": [{"message": "internal error"}]})), "http_error"),
        ((200, json.dumps({"data": {"installations": [{"id": None}]}})), "parse"),
        ((200, json.dumps({"data": None})), "parse"),
        ((403, ""), "unauthorized"),
    ]
    async with Scripted() as server:
        adapter = adapter_for(None, session, tmp_path, mode="query", endpoint=server.url)
        for answer, reason in cases:
            server.answers.append(answer)
            with pytest.raises(PollError) as err:
                await adapter.discover()
            assert err.value.reason == reason, answer


async def test_discovery_falls_back_to_one_unpaged_call(session, tmp_path) -> None:
    refused = {"data": None, "errors": [{"message": 'Field "offset" is not defined by type "Pagination".'}]}
    page = {"data": {"installations": [{"id": "i1", "meters": [], "devices": [], "currentDevice": None}]}}
    async with Scripted() as server:
        server.answers += [(200, json.dumps(refused)), (200, json.dumps(page))]
        adapter = adapter_for(None, session, tmp_path, mode="query", endpoint=server.url)
        found = await adapter.discover()
    assert [i.id for i in found] == ["i1"]
    assert not adapter._paged


def test_simulator_schema_matches_the_queries() -> None:
    sim = PartnerApiSimulator(installations=[SimInstallation("i1")])
    body = sim.execute("{ partner { id name installations { id } } connectUrl(redirectUrl: \"https://x\") }")
    assert "errors" not in body and body["data"]["partner"]["installations"] == [{"id": "i1"}]


# --- subscriptions over Server-Sent Events ----------------------------------------------------


async def test_simulator_speaks_graphql_over_sse(session) -> None:
    """The protocol as its document has it: POST, Accept: text/event-stream, `next` events with
    the execution result as data, `complete` at the end; validation errors as a `next` event."""
    sim = await started(PartnerApiSimulator(installations=demo_installations(1, 1)))
    try:
        headers = {"Authorization": basic_header(sim.partner_id, sim.secret), "Accept": "text/event-stream"}
        query = {"query": "{ partner { name } }"}
        async with session.post(sim.url, json=query, headers=headers) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
        assert text == 'event: next\ndata: {"data":{"partner":{"name":"Simulated Partner"}}}\n\nevent: complete\ndata:\n\n'
        async with session.post(sim.url, json={"query": "{ nope }"}, headers=headers) as response:
            events = (await response.text()).split("\n\n")
        assert events[0].startswith("event: next\ndata: {\"errors\":") and events[1] == "event: complete\ndata:"
        refused = {**headers, "Authorization": basic_header(sim.partner_id, "wrong")}
        async with session.post(sim.url, json=query, headers=refused) as response:
            assert response.status == 401
    finally:
        await sim.stop()


async def test_sse_readings_arrive_and_resume_from_the_newest_held(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1, 2)))
    adapter = adapter_for(sim, session, tmp_path, subscription_protocol="sse", auth="wsse")
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    try:
        base = time.time() - 120
        publish_round(sim, base, 1)
        await wait_for(lambda: sim.active_subscriptions == 1, "a stream")
        publish_round(sim, base + 1, 2)
        await wait_for(lambda: snapshots and set(energies(snapshots[-1]).values()) == {1002.0 * 3600}, "readings")
        assert snapshots[-1].value_of(M.ACCOUNT_IMPORT_POWER) == 402.0
        assert sim.ws_connections == 0 and sim.sse_connections == 1
        await sim.drop_connections()
        await wait_for(lambda: sim.sse_connections == 2 and sim.active_subscriptions == 1, "the stream again")
        # The second stream asked from the newest reading held: its replay is all duplicates.
        assert sim.subscriptions_started[-1]["startTime"] == parse_format(base + 1)
        await wait_for(lambda: adapter.account.duplicates == 2, "the replayed readings dropped")
        publish_round(sim, base + 2, 3)
        await wait_for(lambda: set(energies(snapshots[-1]).values()) == {1003.0 * 3600}, "new readings")
        assert_never_backwards(snapshots)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await adapter.close()
        await sim.stop()


def parse_format(timestamp: float) -> str:
    from exporter.vendors.iometer.parse import format_time

    return format_time(timestamp)


@pytest.mark.parametrize(("fault", "reason"), [("garbage", "parse"), ("oversized", "too_large")])
async def test_sse_garbage_and_oversized_events_fail_with_a_reason(session, tmp_path, fault, reason) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1, 1)))
    adapter = adapter_for(sim, session, tmp_path, subscription_protocol="sse")
    emitted: list[Reading | PollError] = []
    runner = asyncio.create_task(adapter.run(emitted.append))
    try:
        await wait_for(lambda: sim.active_subscriptions == 1, "a stream")
        sim.sse_fault = fault
        sim.publish(sim.installations[0].meters[0], time.time() - 5, demo_values(5.0, 6.0))
        await wait_for(lambda: any(isinstance(e, PollError) and e.reason == reason for e in emitted), reason)
        assert adapter.account.received == 0  # nothing of it taken
        sim.sse_fault = None
        sim.publish(sim.installations[0].meters[0], time.time() - 4, demo_values(7.0, 6.0))
        await wait_for(lambda: adapter.account.received >= 1 and isinstance(emitted[-1], Reading)
                       and set(energies(emitted[-1]).values()) == {7.0 * 3600}, "good readings again")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await adapter.close()
        await sim.stop()


async def test_sse_refused_credentials_are_unauthorized(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(1)))
    try:
        for auth in ("basic", "wsse"):
            adapter = adapter_for(sim, session, tmp_path, subscription_protocol="sse", secret="wrong", auth=auth)
            failures: list[PollError] = []
            runner = asyncio.create_task(adapter.run(failures.append))
            await wait_for(lambda: adapter.connections >= 2 and len(failures) >= 3, "refused streams")
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await adapter.close()
            assert {(f.reason, "wrong" in f.message) for f in failures} == {("unauthorized", False)}
            assert sim.sse_connections == 0 and sim.active_subscriptions == 0
    finally:
        await sim.stop()


async def test_sse_live_readings_one_stream_per_installation(session, tmp_path) -> None:
    sim = await started(PartnerApiSimulator(installations=demo_installations(2, 1), obis_format="hex"))
    adapter = adapter_for(sim, session, tmp_path, subscription_protocol="sse", subscription="liveReadings",
                          obis_codes=["1.8.0", "16.7.0"])
    snapshots: list[Reading] = []
    runner = asyncio.create_task(adapter.run(snapshots.append))
    try:
        await wait_for(lambda: sim.active_subscriptions == 2, "a stream per installation")
        assert sim.sse_connections == 2
        publish_round(sim, time.time(), 4)
        await wait_for(lambda: snapshots and len(energies(snapshots[-1])) == 2, "readings of both")
        assert snapshots[-1].value_of(M.ACCOUNT_PHASE_VOLTAGE) is None  # not asked for
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await adapter.close()
        await sim.stop()


def test_check_target_sse_endpoint() -> None:
    assert dict(check_target({"sse_endpoint": "wss://x"})) == {"sse_endpoint": "must start with https:// (or http://)"}
    assert list(check_target({"sse_endpoint": "https://x/api/v1/query", "subscription_protocol": "sse"})) == []
