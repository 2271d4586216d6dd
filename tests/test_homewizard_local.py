"""The HomeWizard transport against the simulators, over real HTTP and real TLS."""

from __future__ import annotations

import pytest

from exporter.config.loader import Secret, TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.runtime.context import AdapterContext
from exporter.runtime.logs import get as get_log
from exporter.runtime.state import StateDirectory
from exporter.vendors.homewizard.local import HomeWizardLocal
from simulators.homewizard import HomeWizardSimulator
from simulators.tls import new_authority

from .conftest import free_port


def target(**options) -> TargetConfig:
    options.setdefault("api_version", "auto")
    options.setdefault("tls_verify", True)
    return TargetConfig(name="hw", vendor="homewizard", transport="local", interval=10, timeout=5,
                        max_backoff=60, stale_after=60, jitter=0, options=options)


def adapter(session, tmp_path, **options) -> HomeWizardLocal:
    ctx = AdapterContext(session=session, state=StateDirectory(tmp_path), log=get_log())
    return HomeWizardLocal(target(**options), ctx)


@pytest.fixture
async def p1():
    sim = await HomeWizardSimulator("HWE-P1").start()
    yield sim
    await sim.stop()


async def test_v1_poll_reads_data_and_identity(p1, session, tmp_path):
    reading = await adapter(session, tmp_path, host=p1.v1_host).poll()
    assert reading.value_of(M.ACTIVE_POWER) == -543
    assert reading.devices[0].model == "HWE-P1"
    assert reading.devices[0].firmware == "2.11"
    assert p1.requests == ["v1 /api", "v1 /api/v1/data"]


async def test_v2_with_token_verifies_ca_and_appliance_name(p1, session, tmp_path):
    token = p1.issue_token()
    a = adapter(session, tmp_path, host=p1.v2_host, token=Secret(token), ca_file=str(p1.ca_file))
    reading = await a.poll()
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(13779.338 * 3.6e6)
    assert reading.value_of(M.WIFI_RSSI) == -77  # from /api/system
    assert reading.devices[0].firmware == "6.00"
    # /api/system is read once a minute, not every poll
    await a.poll()
    assert p1.requests.count("v2 /api/system") == 1
    assert p1.requests.count("v2 /api/measurement") == 2


async def test_v2_refuses_a_certificate_from_another_ca(p1, session, tmp_path):
    other = new_authority("Appliance Access CA", "Impostor")
    a = adapter(session, tmp_path, host=p1.v2_host, token=Secret(p1.issue_token()), ca_file=str(other.ca_file))
    with pytest.raises(PollError) as err:
        await a.poll()
    assert err.value.reason == "tls"


async def test_v2_refuses_a_certificate_for_another_serial(p1, session, tmp_path):
    a = adapter(session, tmp_path, host=p1.v2_host, token=Secret(p1.issue_token()), ca_file=str(p1.ca_file),
                serial="5c2faf000000")
    with pytest.raises(PollError) as err:
        await a.poll()
    # /api answers with the real serial, which does not match the configured one
    assert err.value.reason == "config"
    assert "5c2faf000000" in err.value.message


async def test_v2_name_check_catches_a_device_whose_certificate_names_another_serial(session, tmp_path):
    sim = HomeWizardSimulator("HWE-P1", v1=False)
    sim.authority = new_authority("Appliance Access CA", "HomeWizard (simulated)")
    real_serial = sim.serial
    sim.serial = "aaaaaaaaaaaa"  # the certificate is issued for this serial ...
    await sim.start()
    sim.v2_device["serial"] = real_serial  # ... while /api reports another one
    try:
        a = adapter(session, tmp_path, host=sim.v2_host, token=Secret(sim.issue_token()), ca_file=str(sim.ca_file))
        with pytest.raises(PollError) as err:
            await a.poll()
        assert err.value.reason == "tls"
    finally:
        await sim.stop()


async def test_tls_verify_off_is_an_explicit_choice(p1, session, tmp_path):
    a = adapter(session, tmp_path, host=p1.v2_host, token=Secret(p1.issue_token()), tls_verify=False)
    reading = await a.poll()
    assert reading.value_of(M.ACTIVE_POWER) == -543


async def test_wrong_token_is_unauthorized_with_a_pairing_hint(p1, session, tmp_path):
    a = adapter(session, tmp_path, host=p1.v2_host, token=Secret("0" * 32), ca_file=str(p1.ca_file))
    with pytest.raises(PollError) as err:
        await a.poll()
    assert err.value.reason == "unauthorized"
    assert "pair" in err.value.message
    assert "0" * 32 not in err.value.message


async def test_api_switched_off_in_the_app(p1, session, tmp_path):
    p1.api_enabled = False
    with pytest.raises(PollError) as err:
        await adapter(session, tmp_path, host=p1.v1_host).poll()
    assert err.value.reason == "api_disabled"
    assert "enable it" in err.value.message


async def test_v2_only_device_without_token_says_what_to_do(session, tmp_path):
    sim = await HomeWizardSimulator("HWE-BAT").start()  # the battery has no v1
    try:
        a = adapter(session, tmp_path, host=f"127.0.0.1:{free_port()}")
        with pytest.raises(PollError) as err:
            await a.poll()
        assert err.value.reason == "connection"
        a = adapter(session, tmp_path, host=sim.v2_host, api_version="v1")
        with pytest.raises(PollError) as err:
            await a.poll()
        assert err.value.reason in ("connection", "parse")
    finally:
        await sim.stop()


@pytest.mark.parametrize("fault,reason", [("garbage", "parse"), ("500", "http_error"), ("empty", "parse"),
                                          ("wrong_types", "parse")])
async def test_faulty_answers_are_errors_with_reasons(p1, session, tmp_path, fault, reason):
    p1.broken = fault
    with pytest.raises(PollError) as err:
        await adapter(session, tmp_path, host=p1.v1_host).poll()
    assert err.value.reason == reason


async def test_device_gone_and_back(session, tmp_path):
    sim = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    port = sim.http_port
    a = adapter(session, tmp_path, host=sim.v1_host)
    assert (await a.poll()).value_of(M.FREQUENCY) == pytest.approx(49.926)
    await sim.stop()
    with pytest.raises(PollError) as err:
        await a.poll()
    assert err.value.reason == "connection"
    sim2 = await HomeWizardSimulator("HWE-KWH3", v2=False).start(http_port=port)
    try:
        assert (await a.poll()).value_of(M.FREQUENCY) == pytest.approx(49.926)
    finally:
        await sim2.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def v2_adapter(sim: HomeWizardSimulator, session, tmp_path, clock=None) -> HomeWizardLocal:
    ctx = AdapterContext(session=session, state=StateDirectory(tmp_path), log=get_log(), clock=clock or Clock())
    return HomeWizardLocal(target(host=sim.v2_host, token=Secret(sim.issue_token()), ca_file=str(sim.ca_file)), ctx)


async def test_p1_exports_its_battery_group_every_poll_and_its_smart_meter(p1, session, tmp_path):
    a = v2_adapter(p1, session, tmp_path)
    reading = await a.poll()
    assert reading.value_of(M.BATTERY_POWER) == 404  # the group discharges 404 W (power_w -404)
    assert reading.value_of(M.BATTERY_CONTROL_MODE, mode="zero") == 1
    assert reading.value_of(M.SMART_METER_INFO, model="ISKRA  2M550T-101", protocol_version="50") == 1
    p1.batteries = {**p1.batteries, "power_w": 1599, "mode": "to_full"}
    reading = await a.poll()
    assert reading.value_of(M.BATTERY_POWER) == -1599  # charging now
    assert reading.value_of(M.BATTERY_CONTROL_MODE, mode="to_full") == 1
    assert p1.requests.count("v2 /api/batteries") == 2


async def test_meter_without_batteries_is_asked_once_a_minute_and_a_missing_path_not_again(session, tmp_path):
    clock = Clock()
    sim = await HomeWizardSimulator("HWE-KWH3", v1=False).start()
    try:
        sim.batteries = {"mode": "zero", "battery_count": 0, "power_w": 0}
        a = v2_adapter(sim, session, tmp_path, clock)
        assert (await a.poll()).value_of(M.BATTERY_COUNT) == 0
        clock.now += 10
        assert (await a.poll()).value_of(M.BATTERY_POWER) is None
        assert sim.requests.count("v2 /api/batteries") == 1
        sim.batteries = None  # firmware without the path: 404
        clock.now += 61
        reading = await a.poll()
        assert reading.value_of(M.ACTIVE_POWER) is not None and reading.value_of(M.BATTERY_COUNT) is None
        clock.now += 61
        await a.poll()
        assert sim.requests.count("v2 /api/batteries") == 2
    finally:
        await sim.stop()


async def test_failing_battery_read_keeps_the_poll_and_the_battery_itself_is_not_asked(session, tmp_path):
    battery = await HomeWizardSimulator("HWE-BAT").start()
    try:
        reading = await v2_adapter(battery, session, tmp_path).poll()
        assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) is not None
        assert "v2 /api/batteries" not in battery.requests
    finally:
        await battery.stop()
    sim = await HomeWizardSimulator("HWE-P1", v1=False).start()
    try:
        sim.batteries = {"mode": 7}  # not a mode
        reading = await v2_adapter(sim, session, tmp_path).poll()
        assert reading.value_of(M.ACTIVE_POWER) == -543 and reading.value_of(M.BATTERY_POWER) is None
    finally:
        await sim.stop()
