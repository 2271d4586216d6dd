"""The IAMMETER HTTP adapter against the simulated meter on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
import structlog
from aiohttp import web

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors.iammeter import http as iam_http
from simulators.iammeter import IammeterHttpSimulator

KWH = 3.6e6


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def target(timeout: float = 2.0, **raw) -> TargetConfig:
    """A target as the configuration loader would build it (options converted, defaults set)."""
    options = {key: iam_http.OPTIONS[key].convert(value) for key, value in raw.items()}
    for key, option in iam_http.OPTIONS.items():
        if key not in options and option.default is not None:
            options[key] = option.default
    return TargetConfig(name="meter", vendor="iammeter", transport="http", interval=10.0, timeout=timeout,
                        max_backoff=300.0, stale_after=60.0, jitter=0.0, options=options)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make(session, tmp_path, clock):
    def build(timeout: float = 2.0, **options) -> iam_http.IammeterHttpAdapter:
        context = AdapterContext(session=session, state=StateDirectory(tmp_path), log=structlog.get_logger(),
                                 clock=clock)
        return iam_http.SPEC.create(target(timeout, **options), context)
    return build


@contextlib.asynccontextmanager
async def running(simulator: IammeterHttpSimulator):
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def test_poll_gives_the_meter_values_and_identity(make, conformance):
    async with running(IammeterHttpSimulator("WEM3080T", conformance=conformance)) as sim:
        reading = await make(host=sim.host).poll()
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l3") == 263.5
    assert reading.value_of(M.PHASE_ACTIVE_POWER, phase="l1") == 2198
    assert reading.value_of(M.PHASE_ENERGY_IMPORTED, phase="l2") == pytest.approx(11.039 * KWH)
    assert reading.value_of(M.FREQUENCY) == 49.99
    device = reading.devices[0]
    assert (device.model, device.serial, device.firmware) == ("WEM3080T", "3E0BAF87", "i.75.97.9")


async def test_identity_is_read_once_per_info_interval_not_every_poll(make, clock):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        adapter = make(host=sim.host, info_interval="1h")
        await adapter.poll()
        await adapter.poll()
        assert sim.requests == ["/api/monitorjson", "/api/wifidata", "/api/monitor", "/api/monitorjson"]
        clock.now += 3601
        await adapter.poll()
    assert sim.requests[4:] == ["/api/monitorjson", "/api/wifidata", "/api/monitor"]


async def test_wifi_signal_and_upload_settings_are_exported(make):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        sim.state.signal = 64
        reading = await make(host=sim.host).poll()
    assert reading.value_of(M.WIFI_SIGNAL) == 0.64
    # the simulated meter runs standalone, uploading every 60 s (its /api/wifidata)
    assert reading.value_of(M.UPLOAD_MODE, mode="standalone") == 1
    assert reading.value_of(M.UPLOAD_MODE, mode="mqtt") == 0
    assert reading.value_of(M.UPLOAD_INTERVAL) == 60


async def test_wifi_signal_is_read_every_five_minutes_and_kept_between_reads(make, clock):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        adapter = make(host=sim.host, info_interval="1h")
        await adapter.poll()
        sim.state.signal = 30
        clock.now += 60
        assert (await adapter.poll()).value_of(M.WIFI_SIGNAL) == 0.8  # the last read's, not asked again
        assert sim.requests.count("/api/monitor") == 1
        clock.now += 241
        assert (await adapter.poll()).value_of(M.WIFI_SIGNAL) == 0.3
        assert sim.requests.count("/api/monitor") == 2
        assert sim.requests.count("/api/wifidata") == 1


async def test_changed_values_show_on_the_next_poll(make):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        adapter = make(host=sim.host)
        await adapter.poll()
        sim.state.phases[0].power = -1500.0
        sim.state.phases[2].imported_kwh = 20.5
        reading = await adapter.poll()
    assert reading.value_of(M.PHASE_ACTIVE_POWER, phase="l1") == -1500.0
    assert reading.value_of(M.PHASE_ENERGY_IMPORTED, phase="l3") == pytest.approx(20.5 * KWH)


async def test_wem3046t_exports_its_ct_ratio(make):
    sim = IammeterHttpSimulator("WEM3046T")
    sim.state.ct_ratio = 400
    async with running(sim):
        reading = await make(host=sim.host).poll()
    assert reading.value_of(M.CT_RATIO) == 400
    assert "/api/ratio" in sim.requests
    assert reading.devices[0].model == "WEM3046T"


async def test_other_models_are_not_asked_for_a_ct_ratio(make):
    async with running(IammeterHttpSimulator("WEM3080")) as sim:
        reading = await make(host=sim.host).poll()
    assert "/api/ratio" not in sim.requests
    assert reading.value_of(M.CT_RATIO) is None
    assert reading.value_of(M.ACTIVE_POWER) == 152.0


async def test_net_metering_row_arrives_as_the_meter_totals(make):
    async with running(IammeterHttpSimulator("WEM3080T", nem=True, reactive=True)) as sim:
        reading = await make(host=sim.host).poll()
    # The same names as the Modbus total registers: the whole meter's power and counters.
    assert reading.value_of(M.ACTIVE_POWER) == 2198 + 1100 + 1213
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(sim.state.net_imported_kwh * KWH)
    assert reading.value_of(M.ENERGY_EXPORTED) == pytest.approx(sim.state.net_exported_kwh * KWH)
    assert reading.value_of(M.PHASE_REACTIVE_POWER, phase="l2") == pytest.approx(sim.state.reactive[1].power_var, abs=0.05)


async def test_legacy_meter_is_read_with_basic_auth(make, conformance):
    async with running(IammeterHttpSimulator("WEM3162", conformance=conformance)) as sim:
        reading = await make(host=sim.host, legacy=True).poll()
    assert reading.value_of(M.ACTIVE_POWER) == 189
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(1265.17 * KWH)
    assert sim.requests == ["/monitorjson"]  # legacy firmware has no /api/wifidata


async def test_legacy_meter_refuses_requests_without_credentials(session):
    async with running(IammeterHttpSimulator("WEM3162")) as sim:
        async with session.get(sim.base_url + "/monitorjson") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_legacy_password_is_unauthorized_and_not_leaked(make):
    async with running(IammeterHttpSimulator("WEM3162", password="right-one")) as sim:
        adapter = make(host=sim.host, legacy=True, password="hunter2-wrong")
        with pytest.raises(PollError) as info:
            await adapter.poll()
    assert info.value.reason == "unauthorized"
    assert "hunter2" not in str(info.value)


async def test_configured_password_is_accepted_by_the_legacy_meter(make):
    async with running(IammeterHttpSimulator("WEM3162", username="owner", password="s3cret")) as sim:
        reading = await make(host=sim.host, legacy=True, username="owner", password="s3cret").poll()
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == 235.0


async def test_legacy_meter_polled_as_current_firmware_is_an_http_error(make):
    async with running(IammeterHttpSimulator("WEM3162")) as sim:
        with pytest.raises(PollError) as info:
            await make(host=sim.host).poll()
    assert info.value.reason == "http_error" and "404" in str(info.value)


@pytest.mark.parametrize("fault, reason", [
    ("garbage", "parse"), ("short_row", "parse"), ("nulls", "parse"), ("null_data", "parse"),
    ("string_value", "parse"), ("error500", "http_error"),
])
async def test_faulty_answers_fail_the_poll_with_a_reason(make, fault, reason):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        adapter = make(host=sim.host)
        sim.fault = fault
        with pytest.raises(PollError) as info:
            await adapter.poll()
        assert info.value.reason == reason
        sim.fault = None
        reading = await adapter.poll()  # the next good answer is taken again
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == 220.0


async def test_a_cancelled_slow_poll_does_not_block_the_next_one(make):
    async with running(IammeterHttpSimulator("WEM3080T")) as sim:
        adapter = make(host=sim.host)
        sim.fault, sim.slow_seconds = "slow", 1.0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(adapter.poll(), 0.3)  # as the scheduler bounds a poll
        sim.fault = None
        reading = await asyncio.wait_for(adapter.poll(), 3)
    assert reading.value_of(M.FREQUENCY) == 49.99


async def test_unreachable_meter_is_a_connection_error(make):
    sim = IammeterHttpSimulator("WEM3080T")
    await sim.start()
    host = sim.host
    await sim.stop()
    with pytest.raises(PollError) as info:
        await make(host=host).poll()
    assert info.value.reason == "connection"


@contextlib.asynccontextmanager
async def scripted(routes: dict[str, tuple]):
    """A bare web server answering fixed (status, body[, delay]) per path, counting requests.

    (aioresponses does not work with this aiohttp version, and a real socket is better anyway.)
    """
    counts: dict[str, int] = {}

    async def handler(request: web.Request) -> web.Response:
        counts[request.path] = counts.get(request.path, 0) + 1
        status, body, *delay = routes.get(request.path, (404, "not found"))
        if delay:
            await asyncio.sleep(delay[0])
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}", counts
    finally:
        await runner.cleanup()


WEM3046T_BODY = (
    '{"method":"3-5","mac":"B0F893118F20","version":"i.91.063T2","server":"em","SN":"7A30C2E1",'
    '"Datas":[[231.4,48.2,10512.0,38211.125,1200.5,50.01,0.94],[230.9,51.7,11303.0,40133.75,1180.25,'
    '50.01,0.95],[232.1,45.1,-9630.0,35870.0,2250.875,50.01,0.92]]}')


async def test_failed_identity_read_keeps_the_poll_and_is_retried_sooner(make, clock):
    routes = {
        "/api/monitorjson": (200, WEM3046T_BODY),
        "/api/wifidata": (500, "oops"),
        "/api/ratio": (200, '{"successful":0,"message":"invalid parameter"}'),
    }
    async with scripted(routes) as (host, counts):
        adapter = make(host=host, info_interval="1h")
        reading = await adapter.poll()
        assert reading.value_of(M.PHASE_ACTIVE_POWER, phase="l3") == -9630.0
        assert reading.value_of(M.CT_RATIO) is None
        assert reading.devices[0].serial == "7A30C2E1"
        assert counts["/api/wifidata"] == 1 and counts["/api/ratio"] == 1
        clock.now += 301  # failed info reads are retried after 5 minutes, not after info_interval
        await adapter.poll()
        assert counts["/api/wifidata"] == 2 and counts["/api/monitorjson"] == 2


async def test_slow_identity_read_does_not_make_the_poll_overrun_its_timeout(make):
    routes = {
        "/api/monitorjson": (200, WEM3046T_BODY),
        "/api/wifidata": (200, '{"SN":"late"}', 1.5),
    }
    async with scripted(routes) as (host, counts):
        adapter = make(host=host, timeout=0.5)
        # The scheduler cancels a poll at its timeout; this one must finish before that.
        reading = await asyncio.wait_for(adapter.poll(), 0.5)
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == 231.4
    assert reading.devices[0].serial == "7A30C2E1"
    assert counts["/api/wifidata"] == 1


async def test_meter_without_api_monitor_is_asked_again_only_after_info_interval(make, clock):
    routes = {
        "/api/monitorjson": (200, WEM3046T_BODY),
        "/api/wifidata": (200, '{"SN":"7A30C2E1","runMode":2,"uploadinterval":"10","sig":-67}'),
        "/api/ratio": (200, '{"CTratio":400}'),
    }
    async with scripted(routes) as (host, counts):
        adapter = make(host=host, info_interval="1h")
        reading = await adapter.poll()
        # /api/monitor answers 404 here: the poll succeeds, the signal comes from /api/wifidata
        assert counts["/api/monitor"] == 1
        assert reading.value_of(M.WIFI_RSSI) == -67
        assert reading.value_of(M.UPLOAD_MODE, mode="http") == 1
        assert reading.value_of(M.UPLOAD_INTERVAL) == 10
        clock.now += 600
        await adapter.poll()
        assert counts["/api/monitor"] == 1
        clock.now += 3001
        await adapter.poll()
        assert counts["/api/monitor"] == 2


async def test_wifidata_fills_identity_the_measurement_lacks(make):
    routes = {
        "/api/monitorjson": (200, '{"Data":[230,1,100,5,0,50,1]}'),
        "/api/wifidata": (200, '{"version":"i.91.1","SN":"ABCD1234"}'),
    }
    async with scripted(routes) as (host, _):
        reading = await make(host=host).poll()
    assert reading.devices[0].serial == "ABCD1234"
    assert reading.devices[0].firmware == "i.91.1"
    assert reading.devices[0].model == "WEM3080"


@pytest.mark.parametrize("options, key", [
    ({"host": "http://192.168.1.9"}, "host"),
    ({"host": "192.168.1.9/api"}, "host"),
    ({"host": "meter.lan:99999"}, "host"),
    ({"host": "meter.lan", "username": "admin"}, "password"),
])
def test_check_target_rejects_bad_options(options, key):
    problems = list(iam_http.check_target(options))
    assert [k for k, _ in problems] == [key]
    assert re.search(r"\w", problems[0][1])


@pytest.mark.parametrize("host", ["192.168.1.9", "meter.lan:8080", "[fe80::1]:80"])
def test_check_target_accepts_host_forms(host):
    assert list(iam_http.check_target({"host": host})) == []
