"""IAMMETER meters in MQTT mode, through a real Mosquitto broker started by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap

import aiohttp
import pytest
import structlog

from exporter import catalogue as c
from exporter.config import ConfigError, Secret, TargetConfig, load_config
from exporter.context import AdapterContext, SharedResources
from exporter.daemon import Daemon
from exporter.mqtt import BrokerSettings, topic_filter_problem, topic_matches, wildcard_value
from exporter.scheduler import TargetRunner
from exporter.simulators.iammeter_push import MosquittoBroker, MqttMeter, mosquitto_passwd_binary
from exporter.state import StateDirectory
from exporter.store import SnapshotStore
from exporter.vendors.iammeter import mqtt as iam_mqtt

from .conftest import async_wait_until, require_binary, sample_value

KWH = 3.6e6
SN = "3E0BAF87"  # the meter of conformance/iammeter/wem3080t_i.75.97.9_monitorjson.json
OTHER_SN = "5DB50BF4"
PASSWORD = "correct-horse-42"


@pytest.fixture
async def broker(tmp_path):
    require_binary("mosquitto")
    b = await MosquittoBroker(directory=tmp_path / "broker").start()
    yield b
    await b.close()


def broker_item(broker: MosquittoBroker, **extra) -> dict:
    item = {"name": "local", "host": "127.0.0.1", "port": broker.port, "topic": "device/+/realtime",
            "reconnect_delay": 0.1, "max_reconnect_delay": 0.5, "keepalive": 10.0}
    item.update(extra)
    return item


def target(sn: str = SN, name: str = "meter", stale_after: float = 60.0, interval: float = 2.0) -> TargetConfig:
    return TargetConfig(name=name, vendor="iammeter", transport="mqtt", interval=interval, timeout=2.0,
                        max_backoff=60.0, stale_after=stale_after, jitter=0.0,
                        options={"broker": "local", "sn": sn})


class Exporter:
    """The scheduler's push loop, the store and shared connections, as the daemon wires them."""

    def __init__(self, session, tmp_path, brokers: list[dict]) -> None:
        self.store = SnapshotStore()
        self.shared = SharedResources()
        self.session = session
        self.tmp_path = tmp_path
        self.sections = {"mqtt_brokers": tuple(brokers)}
        self.runners: list[TargetRunner] = []

    def add(self, config: TargetConfig) -> TargetRunner:
        self.store.add_target(config.name, config.vendor, config.stale_after)
        context = AdapterContext(session=self.session, state=StateDirectory(self.tmp_path), log=structlog.get_logger(),
                                 shared=self.shared, sections=self.sections, store=self.store)
        adapter = iam_mqtt.SPEC.create(config, context)
        runner = TargetRunner(config, adapter, self.store, structlog.get_logger(), kind="push")
        runner.start()
        self.runners.append(runner)
        return runner

    def metrics(self) -> str:
        self.store.expire()
        return self.store.cache.body(False)

    def value(self, name: str, **labels) -> float | None:
        return sample_value(self.metrics(), name, **labels)

    def state(self, name: str = "meter"):
        return self.store.targets[name]

    async def close(self) -> None:
        for runner in self.runners:
            await runner.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@contextlib.asynccontextmanager
async def exporter(session, tmp_path, *brokers: dict):
    e = Exporter(session, tmp_path, list(brokers))
    try:
        yield e
    finally:
        await e.close()


@contextlib.asynccontextmanager
async def publishing(meter: MqttMeter):
    await meter.start()
    try:
        yield meter
    finally:
        await meter.stop()


def connection_of(runner: TargetRunner):
    return runner.adapter.connection


# --- topic filters (pure) -----------------------------------------------------------------------


def test_topic_filters_route_by_the_sn_level():
    assert topic_matches("device/+/realtime", "device/3E0BAF87/realtime")
    assert not topic_matches("device/+/realtime", "device/3E0BAF87/realtime/extra")
    assert not topic_matches("device/+/realtime", "device/3E0BAF87")
    assert topic_matches("meters/#", "meters/a/b")
    assert wildcard_value("device/+/realtime", "device/3E0BAF87/realtime") == "3E0BAF87"
    assert wildcard_value("home/meter", "home/meter") is None
    assert topic_filter_problem("device/+/realtime") is None
    assert topic_filter_problem("device/x+/realtime") and topic_filter_problem("a/#/b")


def test_broker_settings_default_port_follows_tls():
    assert BrokerSettings.from_section({"name": "b", "host": "h"}).port == 1883
    assert BrokerSettings.from_section({"name": "b", "host": "h", "tls": True}).port == 8883


# --- a real broker ---------------------------------------------------------------------------


async def test_published_readings_become_series_in_base_units(broker, session, tmp_path, conformance):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2, conformance=conformance)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(meter):
        e.add(target())
        await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l3"), what="a reading")
        assert meter.body() == (conformance / "iammeter" / "wem3080t_i.75.97.9_monitorjson.json").read_bytes()
        assert e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l3") == 263.5
        assert e.value(c.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198
        assert e.value(c.PHASE_ENERGY_IMPORTED.name, device="meter", phase="l2") == pytest.approx(11.039 * KWH)
        assert e.value(c.DEVICE_INFO.name, device="meter", serial=SN, model="WEM3080T", firmware="i.75.97.9") == 1
        assert e.value(c.TARGET_UP.name, device="meter") == 1
        assert e.value(c.MQTT_CONNECTED.name, broker="local") == 1


async def test_one_connection_serves_every_target_of_a_broker(broker, session, tmp_path):
    first = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    second = MqttMeter("WEM3080", port=broker.port, interval=0.2, serial=OTHER_SN)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(first), publishing(second):
        a = e.add(target(SN, "three-phase"))
        b = e.add(target(OTHER_SN, "single-phase"))
        await async_wait_until(lambda: e.value(c.ACTIVE_POWER.name, device="single-phase"), what="the second meter")
        await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="three-phase", phase="l1"), what="the first")
        assert connection_of(a) is connection_of(b)
        assert len(e.shared) == 2  # one router and one broker connection
        assert e.value(c.PHASE_VOLTAGE.name, device="single-phase", phase="l1") == pytest.approx(226.85)
        assert e.value(c.ACTIVE_POWER.name, device="three-phase") is None  # the JSON has no total
        await a.stop()
        await b.stop()
        assert len(e.shared) == 0  # the last target closed the connection
        await async_wait_until(lambda: e.value(c.MQTT_CONNECTED.name, broker="local") is None, what="series gone")


async def test_broker_restart_reconnects_and_resubscribes(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(meter):
        runner = e.add(target())
        await async_wait_until(lambda: e.value(c.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198,
                               what="first reading")
        connection = connection_of(runner)
        assert connection.connections == 1

        await broker.stop()
        await async_wait_until(lambda: e.value(c.MQTT_CONNECTED.name, broker="local") == 0, what="disconnected")
        # While the broker stays away, reconnection attempts fail and say so on the target.
        await async_wait_until(lambda: e.state().last_reason == "connection", what="reason connection")
        assert e.value(c.TARGET_UP.name, device="meter") == 0
        assert "cannot connect" in e.state().last_error

        meter.state.phases[0].power = -1500.0  # only a message sent after the restart has this
        await broker.start()  # the same port, a fresh broker that knows no subscription
        await async_wait_until(lambda: e.value(c.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == -1500,
                               timeout=20, what="a reading after the restart")
        assert connection.connections >= 2
        assert e.value(c.MQTT_CONNECTED.name, broker="local") == 1
        assert e.value(c.TARGET_UP.name, device="meter") == 1


async def test_unknown_sn_is_counted_and_dropped(broker, session, tmp_path):
    stranger = MqttMeter("WEM3080", port=broker.port, serial="ABCDEF01")
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        runner = e.add(target())
        await async_wait_until(lambda: connection_of(runner) and connection_of(runner).connected.is_set(),
                               what="subscribed")
        for _ in range(3):
            await stranger.publish_once()
        rejected = lambda: e.value(c.PUSH_REJECTED.name, listener="mqtt:local", reason="unknown_sn")  # noqa: E731
        await async_wait_until(lambda: rejected() == 3, what="three unknown messages counted")
        assert e.value(c.ACTIVE_POWER.name) is None  # nobody got the stranger's reading
        assert e.state().polls == 0


async def test_a_retained_reading_of_unknown_age_is_not_taken_for_a_live_one(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port)
    meter.state.phases[0].power = -1500.0
    await meter.publish_once(retain=True)  # the broker keeps it and replays it on subscribing
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        runner = e.add(target())
        await async_wait_until(lambda: connection_of(runner) and connection_of(runner).connected.is_set(),
                               what="subscribed")
        meter.state.phases[0].power = 2198.0
        await meter.publish_once()
        await async_wait_until(lambda: e.state().polls, what="the live reading")
        assert e.state().polls == 1
        assert e.value(c.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198


@pytest.mark.parametrize("fault", ["garbage", "short_row", "nulls", "string_value", "huge"])
async def test_a_malformed_message_fails_only_its_own_target(broker, session, tmp_path, fault):
    bad = MqttMeter("WEM3080T", port=broker.port)
    good = MqttMeter("WEM3080", port=broker.port, serial=OTHER_SN)
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        runner = e.add(target(SN, "bad"))
        e.add(target(OTHER_SN, "good"))
        await async_wait_until(lambda: connection_of(runner) and connection_of(runner).connected.is_set(),
                               what="subscribed")
        await bad.publish_once()
        await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="bad", phase="l1") == 220.0, what="good")
        bad.fault = fault
        await bad.publish_once()
        await good.publish_once()
        await async_wait_until(lambda: e.state("good").up, what="the other meter's reading")
        await async_wait_until(lambda: e.state("bad").last_reason is not None, what="the failure")
        reason = "too_large" if fault == "huge" else "parse"
        assert e.state("bad").last_reason == reason and not e.state("bad").up
        assert e.value(c.POLL_ERRORS.name, device="bad", reason=reason) == 1
        assert e.value(c.POLL_ERRORS.name, device="good", reason=reason) is None
        # The last good value stays (until stale_after); nothing of the bad message got through.
        assert e.value(c.PHASE_VOLTAGE.name, device="bad", phase="l1") == 220.0
        counted = "too_large" if fault == "huge" else "malformed"
        assert e.value(c.PUSH_REJECTED.name, listener="mqtt:local", reason=counted) == 1


async def test_an_sn_in_the_body_that_differs_from_the_topic_is_refused(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port)
    meter.fault = "wrong_sn"
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        runner = e.add(target())
        await async_wait_until(lambda: connection_of(runner) and connection_of(runner).connected.is_set(),
                               what="subscribed")
        await meter.publish_once()
        await async_wait_until(lambda: e.state().last_reason == "parse", what="the failure")
        assert "0BADC0DE" in e.state().last_error
        assert e.value(c.PUSH_REJECTED.name, listener="mqtt:local", reason="sn_mismatch") == 1
        assert e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l1") is None


async def test_silence_marks_the_target_stale_then_its_series_expire(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        e.add(target(stale_after=1.0, interval=0.5))
        await meter.start()
        await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l1"), what="readings")
        await meter.stop()  # the meter goes quiet; the broker and the connection stay up
        await async_wait_until(lambda: e.state().last_reason == "stale", timeout=10, what="stale")
        assert e.value(c.TARGET_UP.name, device="meter") == 0
        assert e.value(c.MQTT_CONNECTED.name, broker="local") == 1
        assert e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l1") is None  # expired with the silence
        assert e.value(c.LAST_SUCCESS.name, device="meter") is not None


# --- authentication and TLS ----------------------------------------------------------------------


@pytest.fixture
async def secured_broker(tmp_path):
    require_binary("mosquitto")
    if mosquitto_passwd_binary() is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with the mosquitto package)")
    b = await MosquittoBroker(username="exporter", password=PASSWORD, directory=tmp_path / "secured").start()
    yield b
    await b.close()


async def test_username_and_password_log_in(secured_broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=secured_broker.port, username="exporter", password=PASSWORD, interval=0.2)
    item = broker_item(secured_broker, username="exporter", password=Secret(PASSWORD))
    async with exporter(session, tmp_path, item) as e, publishing(meter):
        e.add(target())
        await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0,
                               what="a reading through the secured broker")


async def test_a_wrong_password_is_a_clear_error_without_the_password(secured_broker, session, tmp_path):
    wrong = "not-the-password-7"
    item = broker_item(secured_broker, username="exporter", password=Secret(wrong))
    with structlog.testing.capture_logs() as logged:
        async with exporter(session, tmp_path, item) as e:
            e.add(target())
            await async_wait_until(lambda: e.state().last_reason == "unauthorized", what="unauthorized")
            message = e.state().last_error
            body = e.metrics()
    assert "refused the login of user 'exporter'" in message
    for text in (message, body, repr(logged)):
        assert wrong not in text and PASSWORD not in text
    assert any(entry.get("reason") == "unauthorized" for entry in logged)


async def test_tls_with_the_brokers_ca(tmp_path, session):
    require_binary("mosquitto")
    b = await MosquittoBroker(tls=True, directory=tmp_path / "tls-broker").start()
    try:
        meter = MqttMeter("WEM3080T", port=b.tls_port, ca_file=b.ca_file, interval=0.2)
        item = broker_item(b, port=b.tls_port, tls=True, ca_file=str(b.ca_file))
        async with exporter(session, tmp_path, item) as e, publishing(meter):
            e.add(target())
            await async_wait_until(lambda: e.value(c.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0,
                                   what="a reading over TLS")
        # The system store does not know the broker's private CA: a TLS error, not a hang.
        async with exporter(session, tmp_path, broker_item(b, port=b.tls_port, tls=True)) as e:
            e.add(target())
            await async_wait_until(lambda: e.state().last_reason == "tls", what="reason tls")
            assert "certificate" in e.state().last_error.lower()
    finally:
        await b.close()


# --- configuration and the daemon -----------------------------------------------------------------


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_config_names_a_missing_broker_and_a_duplicate_sn_with_their_lines(tmp_path):
    config = write(tmp_path / "c.yaml", """
        mqtt_brokers:
          - name: home
            host: 127.0.0.1
        targets:
          - name: a
            vendor: iammeter
            transport: mqtt
            broker: garage
            sn: 3E0BAF87
          - name: b
            vendor: iammeter
            transport: mqtt
            broker: home
            sn: 3e0baf87
    """)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert f"{config}:9: targets[0].broker: no broker named 'garage' under mqtt_brokers (known: 'home')" in text
    assert f"{config}:15: targets[1].sn: SN 3E0BAF87 is already read over MQTT by target 'a'" in text


@pytest.mark.parametrize("topic, sn, expected", [
    ("device/#/realtime", "3E0BAF87", ":5: mqtt_brokers[0].topic: '#' must be a whole level and the last one"),
    ("device/+/realtime", "3E0B/AF87", ":11: targets[0].sn: '3E0B/AF87' is not a meter serial number"),
])
def test_config_refuses_a_bad_topic_filter_or_sn(tmp_path, topic, sn, expected):
    config = write(tmp_path / "c.yaml", f"""
        mqtt_brokers:
          - name: home
            host: 127.0.0.1
            topic: {topic}
        targets:
          - name: a
            vendor: iammeter
            transport: mqtt
            broker: home
            sn: "{sn}"
    """)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert f"{config}{expected}" in str(info.value)


async def test_the_daemon_exports_a_meter_that_publishes(broker, tmp_path, conformance):
    config = write(tmp_path / "exporter.yaml", f"""
        state_directory: state
        mqtt_brokers:
          - name: home
            host: 127.0.0.1
            port: {broker.port}
            reconnect_delay: 0.1
        targets:
          - name: grid
            vendor: iammeter
            transport: mqtt
            broker: home
            sn: {SN}
            interval: 2s
    """)
    daemon = Daemon(load_config(config))
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2, conformance=conformance)
    await daemon.start("127.0.0.1", 0)
    try:
        async with publishing(meter), aiohttp.ClientSession() as http:
            async def scrape() -> str:
                async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
                    return await resp.text()

            body = ""
            for _ in range(100):
                body = await scrape()
                if sample_value(body, c.PHASE_VOLTAGE.name, device="grid", phase="l2") is not None:
                    break
                await asyncio.sleep(0.1)
            assert sample_value(body, c.PHASE_VOLTAGE.name, device="grid", phase="l2", vendor="iammeter") == 222.5
            assert sample_value(body, c.MQTT_CONNECTED.name, broker="home") == 1
            assert sample_value(body, c.PUSH_REJECTED.name, listener="mqtt:home", reason="unknown_sn") == 0
            assert sample_value(body, c.TARGET_UP.name, device="grid") == 1
    finally:
        await daemon.stop()
