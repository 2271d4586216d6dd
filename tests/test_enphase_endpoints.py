"""Endpoints of the IQ Gateway that fail or refuse while the others answer: the real adapter
against the gateway simulator, over real sockets. The primary figures (CT readings, else the
production family) keep the target up; a failing endpoint shows as endpoint_up 0, on the status
page, and its series go; an endpoint refused whatever the credentials is switched off."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from exporter.config.loader import Secret
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.store import SnapshotStore
from exporter.web import readout, statuspage
from simulators.enphase import GatewaySimulator, TokenIssuer

from .test_enphase_local import Clock, make, needs

INVERTERS = "/api/v1/production/inverters"  # secondary: every five minutes, first on the second poll
ONE_INVERTER = "482208990017"  # of 8.3.5169, 142 W


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def gateway(clock):
    """A firmware 8.3 gateway with CTs; the adapter uses a pasted token."""
    needs("8.3.5169_with_generator")
    gateway = await GatewaySimulator("8.3.5169_with_generator", issuer=TokenIssuer(clock=clock)).start()
    yield gateway
    await gateway.stop()


def token_options(gateway) -> dict:
    return dict(host=gateway.host, token=Secret(gateway.mint_token()), tls_fingerprint=gateway.fingerprint)


async def polls(adapter, clock, count: int, every: float = 10):
    reading = None
    for _ in range(count):
        reading = await adapter.poll()
        clock.advance(every)
    return reading


def break_path(gateway, path: str, kind: str) -> None:
    if kind == "500":
        gateway.force(path, 500)
    elif kind == "garbage":
        gateway.garbled.add(path)
    else:
        gateway.slow[path] = 5.0


def mend_path(gateway, path: str) -> None:
    gateway.force(path, None)
    gateway.garbled.discard(path)
    gateway.slow.pop(path, None)


PROBLEMS = {"500": "HTTP 500", "garbage": "parse", "slow": "timeout"}


@pytest.mark.parametrize("kind", sorted(PROBLEMS))
async def test_a_failing_secondary_endpoint_leaves_the_target_up_without_its_series(kind, gateway, session, tmp_path,
                                                                                   clock):
    break_path(gateway, INVERTERS, kind)
    adapter = make(session, tmp_path, clock, timeout=1.0, **token_options(gateway))
    with capture_logs() as logs:
        for _ in range(32):  # the inverters are asked on the second poll (10 s) and 300 s later
            async with asyncio.timeout(1.0):  # the scheduler's bound of a poll: a slow endpoint must not reach it
                reading = await adapter.poll()
            clock.advance(10)
    assert gateway.count(INVERTERS) == 2  # at its own cadence, not every poll
    assert reading.value_of(M.ACTIVE_POWER) == 160.49  # the CT readings, the primary figures
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154
    assert reading.value_of(M.ENDPOINT_UP, endpoint="inverters") == 0
    assert reading.value_of(M.ENDPOINT_UP, endpoint="meters_readings") == 1
    assert reading.value_of(M.ENDPOINT_UP, endpoint="production_json") == 1
    assert reading.value_of(M.INVERTER_POWER, inverter=ONE_INVERTER) is None
    assert reading.endpoints_down == {"inverters": PROBLEMS[kind]}
    failed = [e for e in logs if e["event"].startswith("endpoint failed")]
    assert len(failed) == 1 and failed[0]["endpoint"] == INVERTERS  # once, not at every read

    mend_path(gateway, INVERTERS)
    clock.advance(300)
    with capture_logs() as logs:
        reading = await adapter.poll()
    assert reading.value_of(M.ENDPOINT_UP, endpoint="inverters") == 1
    assert reading.value_of(M.INVERTER_POWER, inverter=ONE_INVERTER) == 142
    assert reading.endpoints_down is None
    assert [e["endpoint"] for e in logs if e["event"] == "endpoint answers again"] == [INVERTERS]


async def test_figures_of_an_endpoint_that_stops_answering_go_stale_not_frozen(gateway, session, tmp_path, clock):
    adapter = make(session, tmp_path, clock, **token_options(gateway))
    reading = await polls(adapter, clock, 2)
    assert reading.value_of(M.INVERTER_POWER, inverter=ONE_INVERTER) == 142
    gateway.force(INVERTERS, 503)
    clock.advance(300)
    reading = await adapter.poll()  # the read fails: the last figures still pass for the present
    assert reading.value_of(M.ENDPOINT_UP, endpoint="inverters") == 0
    assert reading.value_of(M.INVERTER_POWER, inverter=ONE_INVERTER) == 142
    clock.advance(600)  # 900 s after the last answer: three of its cadences
    reading = await adapter.poll()
    assert reading.value_of(M.INVERTER_POWER, inverter=ONE_INVERTER) is None
    assert reading.value_of(M.ACTIVE_POWER) == 160.49


async def test_a_failing_ct_list_keeps_the_poll_and_is_asked_again_soon(gateway, session, tmp_path, clock):
    gateway.force("/ivp/meters", 500)
    adapter = make(session, tmp_path, clock, **token_options(gateway))
    reading = await adapter.poll()
    # Without the CT list the CTs are unknown: the production family is primary.
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154
    assert reading.value_of(M.ENDPOINT_UP, endpoint="ct_list") == 0
    assert reading.endpoints_down == {"ct_list": "HTTP 500"}
    gateway.force("/ivp/meters", None)
    clock.advance(60)
    reading = await adapter.poll()
    assert reading.value_of(M.ENDPOINT_UP, endpoint="ct_list") == 1
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="production") == 2891.863  # the CT readings again


async def test_all_primary_endpoints_failing_fail_the_poll_with_their_reason(clock, session, tmp_path):
    needs("5.0.62")  # no CTs: the production family is primary
    gateway = await GatewaySimulator("5.0.62").start()
    try:
        gateway.force("/production.json", 503)
        adapter = make(session, tmp_path, clock, host=gateway.host)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "http_error" and "HTTP 503" in str(err.value)
        clock.advance(10)
        with pytest.raises(PollError):
            await adapter.poll()
        assert gateway.count("/production.json") == 2  # a primary endpoint is asked at every poll
        gateway.force("/production.json", None)
        clock.advance(10)
        reading = await adapter.poll()
        assert reading.value_of(M.PRODUCTION_POWER) == 7904
    finally:
        await gateway.stop()


async def test_digest_firmware_refusing_the_ct_list_whatever_the_credentials(clock, session, tmp_path):
    """Firmware D3.18 answers /ivp/meters with 401 and a fresh challenge even to the right user."""
    needs("5.0.62")
    gateway = await GatewaySimulator("5.0.62").start()
    gateway.refusing.add("/ivp/meters")
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host)
        with capture_logs() as logs:
            reading = await adapter.poll()  # the first poll: the refusal waits for the primary answer
            clock.advance(10)
            reading = await polls(adapter, clock, 30)
        assert reading.value_of(M.PRODUCTION_POWER) == 7904
        # The same credentials open the microinverters (Digest), so they are right.
        assert len({s.labels for s in reading.samples if s.metric is M.INVERTER_POWER}) == 40
        assert reading.value_of(M.ENDPOINT_UP, endpoint="ct_list") is None  # not available, like a 404
        assert reading.value_of(M.ENDPOINT_UP, endpoint="production_json") == 1
        assert gateway.count("/ivp/meters") == 2  # the challenge answered once, then switched off
        assert sum("refuses Digest user 'envoy'" in e["event"] for e in logs) == 1
        clock.advance(3600)
        await adapter.poll()
        assert gateway.count("/ivp/meters") == 4  # asked again an hour later
    finally:
        await gateway.stop()


async def test_digest_firmware_refusing_the_primary_endpoint_is_unauthorized(clock, session, tmp_path):
    needs("5.0.62")
    gateway = await GatewaySimulator("5.0.62").start()
    gateway.refusing.update({"/ivp/meters", "/production.json"})
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized" and "refused Digest user 'envoy'" in str(err.value)
    finally:
        await gateway.stop()


async def test_token_firmware_refusing_the_ct_list_while_check_jwt_accepts(gateway, session, tmp_path, clock):
    gateway.refusing.add("/ivp/meters")
    adapter = make(session, tmp_path, clock, **token_options(gateway))
    reading = await polls(adapter, clock, 3)
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154
    assert reading.value_of(M.ENDPOINT_UP, endpoint="ct_list") is None
    assert gateway.count("/ivp/meters") == 1 and gateway.count("/auth/check_jwt") == 1


async def test_status_page_lists_the_endpoints_down():
    from exporter.config.loader import TargetConfig
    from exporter.model.samples import Reading

    store = SnapshotStore()
    target = TargetConfig(name="roof", vendor="enphase", transport="local", interval=10, timeout=5, max_backoff=60,
                          stale_after=60, jitter=0, options={"host": "envoy.local"})
    store.add_target("roof", "enphase", 60)
    reading = Reading()
    reading.add(M.ACTIVE_POWER, 160.49)
    reading.report_endpoint("meters_readings")
    reading.report_endpoint("inverters", "HTTP 500")
    reading.report_endpoint("<b>", "timeout")  # names are escaped on the page
    store.record_success("roof", reading)
    status = readout.status([target], store, [], lambda name: "poll")
    doc = status.as_json()["targets"][0]
    assert doc["state"] == "up"
    assert doc["endpoints_down"] == [{"endpoint": "inverters", "problem": "HTTP 500"},
                                     {"endpoint": "<b>", "problem": "timeout"}]
    page = statuspage.render(status)
    assert "endpoints down: inverters (HTTP 500), &lt;b&gt; (timeout)" in page
    lines = store.cache.fragment(M.ENDPOINT_UP, "roof") or ""
    assert 'endpoint="inverters"} 0' in lines and 'endpoint="meters_readings"} 1' in lines
    # All answering again: the line goes.
    healthy = Reading()
    healthy.add(M.ACTIVE_POWER, 160.49)
    healthy.report_endpoint("inverters")
    store.record_success("roof", healthy)
    assert "endpoints down" not in statuspage.render(readout.status([target], store, [], lambda name: "poll"))


async def test_daemon_shows_a_failing_endpoint_on_metrics_api_and_page(tmp_path, monkeypatch):
    """The whole way: the gateway simulator, the daemon, /metrics, /api/v1/targets and the page."""
    import dataclasses
    import textwrap

    import aiohttp

    from exporter.daemon import Daemon
    from exporter.vendors import load_all, registry

    from .configs import load_config
    from .conftest import async_wait_until

    load_all()
    spec = registry._SPECS[("enphase", "local")]
    monkeypatch.setitem(registry._SPECS, ("enphase", "local"), dataclasses.replace(spec, min_interval=0.5))
    gateway = await GatewaySimulator().start()  # the demo firmware: CTs, inverters, batteries
    gateway.force(INVERTERS, 500)
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / "state"}
        targets:
          - name: solar
            vendor: enphase
            host: {gateway.host}
            token: {gateway.mint_token()}
            tls_fingerprint: {gateway.fingerprint}
            nightly_window: "off"
            interval: 0.5s
    """))
    daemon = Daemon(load_config(config))
    port = await daemon.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        state = daemon.store.targets["solar"]
        await async_wait_until(lambda: state.endpoints_down, timeout=20, what="the inverters read")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"{base}/api/v1/targets") as resp:
                target = (await resp.json())["targets"][0]
            async with http.get(f"{base}/") as resp:
                page = await resp.text()
        assert state.up and target["state"] == "up"
        assert 'energy_meter_exporter_endpoint_up{vendor="enphase",device="solar",endpoint="inverters"} 0' in text
        assert 'energy_meter_exporter_endpoint_up{vendor="enphase",device="solar",endpoint="meters_readings"} 1' in text
        assert "energy_meter_active_power_watts{" in text and "energy_meter_inverter_power_watts{" not in text
        assert target["endpoints_down"] == [{"endpoint": "inverters", "problem": "HTTP 500"}]
        assert "endpoints down: inverters (HTTP 500)" in page
    finally:
        await daemon.stop()
        await gateway.stop()
