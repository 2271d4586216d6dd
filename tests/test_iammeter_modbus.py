"""The IAMMETER Modbus/TCP adapter against a real pymodbus server holding the simulated meter."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
import structlog

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import REASONS, PollError
from exporter.model.samples import Reading
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors.iammeter import http as iam_http
from exporter.vendors.iammeter import modbus as iam_modbus
from simulators.iammeter import IammeterHttpSimulator, IammeterModbusSimulator

KWH = 3.6e6
# What one register step is worth, per metric (Modbus is coarser than the JSON).
RESOLUTION = {
    M.PHASE_VOLTAGE: 0.005, M.PHASE_CURRENT: 0.005, M.PHASE_ACTIVE_POWER: 0.5, M.ACTIVE_POWER: 0.5,
    M.PHASE_ENERGY_IMPORTED: KWH / 1600, M.PHASE_ENERGY_EXPORTED: KWH / 1600,
    M.ENERGY_IMPORTED: KWH / 6400, M.ENERGY_EXPORTED: KWH / 6400,
    M.PHASE_POWER_FACTOR: 0.0005, M.FREQUENCY: 0.005, M.PHASE_REACTIVE_POWER: 0.5,
    M.PHASE_REACTIVE_ENERGY_INDUCTIVE: KWH / 2000, M.PHASE_REACTIVE_ENERGY_CAPACITIVE: KWH / 2000,
}


def target(transport: str, timeout: float = 2.0, **raw) -> TargetConfig:
    schema = iam_modbus.OPTIONS if transport == "modbus" else iam_http.OPTIONS
    options = {key: schema[key].convert(value) for key, value in raw.items()}
    for key, option in schema.items():
        if key not in options and option.default is not None:
            options[key] = option.default
    return TargetConfig(name="meter", vendor="iammeter", transport=transport, interval=10.0, timeout=timeout,
                        max_backoff=300.0, stale_after=60.0, jitter=0.0, options=options)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def context(session, tmp_path):
    return AdapterContext(session=session, state=StateDirectory(tmp_path), log=structlog.get_logger())


@pytest.fixture
async def adapters():
    """Adapters made in a test, closed at its end."""
    made: list = []
    yield made
    for adapter in made:
        await adapter.close()


@pytest.fixture
def make_modbus(context, adapters):
    def build(port: int, timeout: float = 2.0, **options) -> iam_modbus.IammeterModbusAdapter:
        adapter = iam_modbus.SPEC.create(target("modbus", timeout, host="127.0.0.1", port=port, **options), context)
        adapters.append(adapter)
        return adapter
    return build


@contextlib.asynccontextmanager
async def running(*simulators):
    for simulator in simulators:
        await simulator.start()
    try:
        yield simulators
    finally:
        for simulator in simulators:
            await simulator.stop()


def assert_same_series(http: Reading, modbus: Reading) -> int:
    """Every series both transports give agrees within the register resolution; returns how many."""
    compared = 0
    for sample in http.samples:
        other = modbus.value_of(sample.metric, **dict(sample.labels))
        if other is None:
            continue
        assert other == pytest.approx(sample.value, abs=RESOLUTION[sample.metric] + 1e-9), sample
        compared += 1
    return compared


async def test_three_phase_meter_reads_the_same_over_http_and_modbus(context, make_modbus, conformance):
    http_sim = IammeterHttpSimulator("WEM3080T", conformance=conformance)
    modbus_sim = IammeterModbusSimulator(http_sim.state)
    async with running(http_sim, modbus_sim):
        over_http = await iam_http.SPEC.create(target("http", host=http_sim.host), context).poll()
        over_modbus = await make_modbus(modbus_sim.port).poll()
    # All 19 JSON series (3 phases x 6 + frequency) are there over Modbus too, with equal values.
    assert assert_same_series(over_http, over_modbus) == 19
    # Modbus adds the meter's own totals (the JSON has them only in its net row, with net
    # metering on) and its runtime. The simulator fills the total registers from its phases.
    assert over_modbus.value_of(M.ACTIVE_POWER) == 2198 + 1100 + 1213
    assert over_modbus.value_of(M.ENERGY_IMPORTED) == pytest.approx((11.337 + 11.039 + 10.975) * KWH, abs=KWH / 1600)
    assert over_modbus.value_of(M.DEVICE_UPTIME) == http_sim.state.runtime_s
    assert modbus_sim.reads == [(0, 66)]


async def test_reactive_values_agree_between_http_and_modbus(context, make_modbus):
    http_sim = IammeterHttpSimulator("WEM3046T", reactive=True)
    modbus_sim = IammeterModbusSimulator(http_sim.state)
    async with running(http_sim, modbus_sim):
        over_http = await iam_http.SPEC.create(target("http", host=http_sim.host), context).poll()
        over_modbus = await make_modbus(modbus_sim.port, model="WEM3046T").poll()
    assert assert_same_series(over_http, over_modbus) == 19 + 9
    assert over_modbus.value_of(M.PHASE_ACTIVE_POWER, phase="l3") == -9630
    assert over_modbus.devices[0].model == "WEM3046T"


async def test_single_phase_meter_is_detected_and_matches_http(context, make_modbus):
    http_sim = IammeterHttpSimulator("WEM3080")
    modbus_sim = IammeterModbusSimulator(http_sim.state)
    async with running(http_sim, modbus_sim):
        over_http = await iam_http.SPEC.create(target("http", host=http_sim.host), context).poll()
        adapter = make_modbus(modbus_sim.port)  # model: auto
        over_modbus = await adapter.poll()
        again = await adapter.poll()
    # voltage, current, power, import, export
    assert assert_same_series(over_http, over_modbus) == 5
    assert over_modbus.value_of(M.ENERGY_IMPORTED) == pytest.approx(22920.38 * KWH, abs=KWH / 6400)
    assert over_modbus.devices[0].model == "WEM3080"
    assert again.value_of(M.ACTIVE_POWER) == 152
    # The long reads were refused once; afterwards only the 8 registers are read.
    assert modbus_sim.reads == [(0, 8), (0, 8)]


async def test_three_phase_meter_without_reactive_block_is_read_with_core_registers(make_modbus):
    http_sim = IammeterHttpSimulator("WEM3080T")
    modbus_sim = IammeterModbusSimulator(http_sim.state, wide=False)
    async with running(modbus_sim):
        adapter = make_modbus(modbus_sim.port, model="WEM3080T")
        first = await adapter.poll()
        await adapter.poll()
    assert first.value_of(M.PHASE_VOLTAGE, phase="l2") == pytest.approx(222.5)
    assert first.value_of(M.DEVICE_UPTIME) is None
    assert modbus_sim.reads == [(0, 38), (0, 38)]  # the refused 66-register read is not retried


async def test_exception_response_is_a_modbus_exception_error(make_modbus):
    modbus_sim = IammeterModbusSimulator(IammeterHttpSimulator("WEM3080T").state)
    async with running(modbus_sim):
        adapter = make_modbus(modbus_sim.port, model="WEM3080T")
        modbus_sim.fault = "exception"
        with pytest.raises(PollError) as info:
            await adapter.poll()
        modbus_sim.fault = None
        reading = await adapter.poll()
    assert info.value.reason == "modbus_exception" and "modbus_exception" in REASONS
    assert "device failure" in str(info.value)
    assert reading.value_of(M.FREQUENCY) == pytest.approx(49.99)


async def test_short_read_is_a_parse_error(make_modbus):
    modbus_sim = IammeterModbusSimulator(IammeterHttpSimulator("WEM3080T").state)
    async with running(modbus_sim):
        adapter = make_modbus(modbus_sim.port)
        modbus_sim.fault = "short"
        with pytest.raises(PollError) as info:
            await adapter.poll()
    assert info.value.reason == "parse" and "short read" in str(info.value)


async def test_adapter_reconnects_after_the_meter_restarts(make_modbus):
    modbus_sim = IammeterModbusSimulator(IammeterHttpSimulator("WEM3080T").state)
    async with running(modbus_sim):
        adapter = make_modbus(modbus_sim.port)
        assert (await adapter.poll()).value_of(M.PHASE_VOLTAGE, phase="l1") == pytest.approx(220.0)
        await modbus_sim.stop()
        with pytest.raises(PollError) as info:
            await adapter.poll()
        # A vanished meter is seen as a closed connection (or, if the close got lost, silence).
        assert info.value.reason in ("connection", "timeout")
        modbus_sim.state.phases[0].voltage = 231.0
        await modbus_sim.start()  # the same port again
        reading = await adapter.poll()
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == pytest.approx(231.0)


async def test_unreachable_meter_is_a_connection_error(make_modbus):
    modbus_sim = IammeterModbusSimulator(IammeterHttpSimulator("WEM3080T").state)
    port = await modbus_sim.start()
    await modbus_sim.stop()
    with pytest.raises(PollError) as info:
        await make_modbus(port).poll()
    assert info.value.reason == "connection"


async def test_silent_meter_is_a_timeout(make_modbus):
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # take the request, never answer
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PollError) as info:
            await make_modbus(port, timeout=0.3, model="WEM3080T").poll()
    finally:
        server.close()
    assert info.value.reason == "timeout"


@pytest.mark.parametrize("options, key", [({"port": 70000}, "port"), ({"unit_id": 300}, "unit_id")])
def test_check_target_rejects_out_of_range_numbers(options, key):
    assert [k for k, _ in iam_modbus.check_target(options)] == [key]


def test_model_option_rejects_unknown_maps():
    with pytest.raises(ValueError, match="must be one of"):
        iam_modbus.OPTIONS["model"].convert("WEM9999")
