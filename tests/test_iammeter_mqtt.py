"""IAMMETER meters in MQTT mode, through a real Mosquitto broker started by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap

import aiohttp
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config.loader import ConfigError, Secret, TargetConfig
from exporter.daemon import Daemon
from exporter.model import catalogue as M
from exporter.runtime.context import AdapterContext, SharedResources
from exporter.runtime.scheduler import TargetRunner
from exporter.runtime.state import StateDirectory
from exporter.store import SnapshotStore
from exporter.transport.mqtt import BrokerSettings, PacketSizeGuard, topic_filter_problem, topic_matches, wildcard_value
from exporter.vendors.iammeter import mqtt as iam_mqtt
from simulators import hostile
from simulators.iammeter_push import MosquittoBroker, MqttMeter, mosquitto_passwd_binary

from .configs import load_config
from .conftest import async_wait_until, exposition_text, require_binary, sample_value

KWH = 3.6e6
SN = "3E0BAF87"  # the meter of conformance/iammeter/wem3080t_i.75.97.9_monitorjson.json
OTHER_SN = "5DB50BF4"
PASSWORD = "correct-horse-42"


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
        runner = TargetRunner(config, adapter, self.store, structlog.get_logger(), delivery="push")
        runner.start()
        self.runners.append(runner)
        return runner

    def metrics(self) -> str:
        self.store.expire()
        return exposition_text(self.store)

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


LIMIT = 1000


def fed(guard: PacketSizeGuard, data: bytes, cuts: list[int]) -> PacketSizeGuard:
    start = 0
    for edge in sorted({min(cut, len(data)) for cut in cuts} | {len(data)}):
        guard.feed(data[start:edge])
        start = edge
    return guard


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=3 * LIMIT), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=12))
def test_the_packet_size_guard_finds_the_first_oversized_packet_however_the_reads_fall(sizes, cuts):
    """Packets of any size, read in pieces cut anywhere: the guard names the first packet over the
    limit once its length field is complete, before any of its body is read."""
    packets = [hostile.mqtt_publish(b"t", b"\0" * size) for size in sizes]
    lengths = [3 + size for size in sizes]  # topic length, topic, payload
    stream = b"".join(packets)
    over = next((index for index, length in enumerate(lengths) if length > LIMIT), None)
    assert fed(PacketSizeGuard(LIMIT), stream, cuts).refused == (None if over is None else lengths[over])
    if over is not None:
        head_end = sum(map(len, packets[:over])) + 1 + len(hostile.mqtt_remaining_length(lengths[over]))
        assert fed(PacketSizeGuard(LIMIT), stream[:head_end], cuts).refused == lengths[over]
        assert fed(PacketSizeGuard(LIMIT), stream[:head_end - 1], cuts).refused is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_the_packet_size_guard_takes_any_bytes(data):
    guard = PacketSizeGuard(LIMIT)
    guard.feed(data)
    assert guard.refused is None or guard.refused > LIMIT


# --- a real broker ---------------------------------------------------------------------------


async def test_published_readings_become_series_in_base_units(broker, session, tmp_path, conformance):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2, conformance=conformance)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(meter):
        e.add(target())
        await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l3"), what="a reading")
        assert meter.body() == (conformance / "iammeter" / "wem3080t_i.75.97.9_monitorjson.json").read_bytes()
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l3") == 263.5
        assert e.value(M.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198
        assert e.value(M.PHASE_ENERGY_IMPORTED.name, device="meter", phase="l2") == pytest.approx(11.039 * KWH)
        assert e.value(M.DEVICE_INFO.name, device="meter", serial=SN, model="WEM3080T", firmware="i.75.97.9") == 1
        assert e.value(M.TARGET_UP.name, device="meter") == 1
        assert e.value(M.MQTT_CONNECTED.name, broker="local") == 1


async def test_one_connection_serves_every_target_of_a_broker(broker, session, tmp_path):
    first = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    second = MqttMeter("WEM3080", port=broker.port, interval=0.2, serial=OTHER_SN)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(first), publishing(second):
        a = e.add(target(SN, "three-phase"))
        b = e.add(target(OTHER_SN, "single-phase"))
        await async_wait_until(lambda: e.value(M.ACTIVE_POWER.name, device="single-phase"), what="the second meter")
        await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="three-phase", phase="l1"), what="the first")
        assert connection_of(a) is connection_of(b)
        assert len(e.shared) == 2  # one router and one broker connection
        assert e.value(M.PHASE_VOLTAGE.name, device="single-phase", phase="l1") == pytest.approx(226.85)
        assert e.value(M.ACTIVE_POWER.name, device="three-phase") is None  # the JSON has no total
        await a.stop()
        await b.stop()
        assert len(e.shared) == 0  # the last target closed the connection
        await async_wait_until(lambda: e.value(M.MQTT_CONNECTED.name, broker="local") is None, what="series gone")


async def test_broker_restart_reconnects_and_resubscribes(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    async with exporter(session, tmp_path, broker_item(broker)) as e, publishing(meter):
        runner = e.add(target())
        await async_wait_until(lambda: e.value(M.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198,
                               what="first reading")
        connection = connection_of(runner)
        assert connection.connections == 1

        await broker.stop()
        await async_wait_until(lambda: e.value(M.MQTT_CONNECTED.name, broker="local") == 0, what="disconnected")
        # While the broker stays away, reconnection attempts fail and say so on the target.
        await async_wait_until(lambda: e.state().last_reason == "connection", what="reason connection")
        assert e.value(M.TARGET_UP.name, device="meter") == 0
        assert "cannot connect" in e.state().last_error

        meter.state.phases[0].power = -1500.0  # only a message sent after the restart has this
        await broker.start()  # the same port, a fresh broker that knows no subscription
        await async_wait_until(lambda: e.value(M.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == -1500,
                               timeout=20, what="a reading after the restart")
        assert connection.connections >= 2
        assert e.value(M.MQTT_CONNECTED.name, broker="local") == 1
        assert e.value(M.TARGET_UP.name, device="meter") == 1


async def test_unknown_sn_is_counted_and_dropped(broker, session, tmp_path):
    stranger = MqttMeter("WEM3080", port=broker.port, serial="ABCDEF01")
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        runner = e.add(target())
        await async_wait_until(lambda: connection_of(runner) and connection_of(runner).connected.is_set(),
                               what="subscribed")
        for _ in range(3):
            await stranger.publish_once()
        rejected = lambda: e.value(M.PUSH_REJECTED.name, listener="mqtt:local", reason="unknown_sn")  # noqa: E731
        await async_wait_until(lambda: rejected() == 3, what="three unknown messages counted")
        assert e.value(M.ACTIVE_POWER.name) is None  # nobody got the stranger's reading
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
        assert e.value(M.PHASE_ACTIVE_POWER.name, device="meter", phase="l1") == 2198


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
        await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="bad", phase="l1") == 220.0, what="good")
        bad.fault = fault
        await bad.publish_once()
        await good.publish_once()
        await async_wait_until(lambda: e.state("good").up, what="the other meter's reading")
        await async_wait_until(lambda: e.state("bad").last_reason is not None, what="the failure")
        reason = "too_large" if fault == "huge" else "parse"
        assert e.state("bad").last_reason == reason and not e.state("bad").up
        assert e.value(M.POLL_ERRORS.name, device="bad", reason=reason) == 1
        assert e.value(M.POLL_ERRORS.name, device="good", reason=reason) is None
        # The last good value stays (until stale_after); nothing of the bad message got through.
        assert e.value(M.PHASE_VOLTAGE.name, device="bad", phase="l1") == 220.0
        counted = "too_large" if fault == "huge" else "malformed"
        assert e.value(M.PUSH_REJECTED.name, listener="mqtt:local", reason=counted) == 1


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
        assert e.value(M.PUSH_REJECTED.name, listener="mqtt:local", reason="sn_mismatch") == 1
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") is None


async def test_silence_marks_the_target_stale_then_its_series_expire(broker, session, tmp_path):
    meter = MqttMeter("WEM3080T", port=broker.port, interval=0.2)
    async with exporter(session, tmp_path, broker_item(broker)) as e:
        e.add(target(stale_after=1.0, interval=0.5))
        await meter.start()
        await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1"), what="readings")
        await meter.stop()  # the meter goes quiet; the broker and the connection stay up
        await async_wait_until(lambda: e.state().last_reason == "stale", timeout=10, what="stale")
        assert e.value(M.TARGET_UP.name, device="meter") == 0
        assert e.value(M.MQTT_CONNECTED.name, broker="local") == 1
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") is None  # expired with the silence
        assert e.value(M.LAST_SUCCESS.name, device="meter") is not None


# --- a hostile broker on a raw socket --------------------------------------------------------


class RawBroker:
    """Just enough MQTT 3.1.1 to let a client in (CONNACK, SUBACK, PINGRESP); once it has
    subscribed, `after_subscribe(writer)` sends what the test wants on that connection."""

    def __init__(self, after_subscribe) -> None:
        self.after_subscribe = after_subscribe
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "RawBroker":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        if hasattr(self._server, "close_clients"):
            self._server.close_clients()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, factor = 0, 1
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length, factor = length + (byte & 0x7F) * factor, factor * 128
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first & 0xF0
                if kind == 0x10:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 0x80:  # SUBSCRIBE: granted QoS 0
                    writer.write(b"\x90\x03" + body[:2] + b"\x00")
                    await writer.drain()
                    await self.after_subscribe(writer)
                elif kind == 0xA0:  # UNSUBSCRIBE
                    writer.write(b"\xb0\x02" + body[:2])
                elif kind == 0xC0:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 0xE0:  # DISCONNECT
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def reading() -> bytes:
    return MqttMeter("WEM3080T").body()


def publish(topic: bytes, payload: bytes) -> bytes:
    return hostile.mqtt_publish(topic, payload)


GOOD_TOPIC = f"device/{SN}/realtime".encode()


@pytest.mark.parametrize("topic", [b"device/\xff\xfe" + SN.encode() + b"/realtime", b"device/+/realtime"],
                         ids=["invalid_utf8", "wildcard"])
async def test_a_message_whose_topic_is_not_a_topic_is_dropped_and_the_connection_kept(session, tmp_path, topic):
    """Fifty messages under a topic that is not valid UTF-8 (or not a topic name at all), then a
    good one on the same connection: the bad ones are counted and logged once, the good one is
    read, and the client never reconnects."""
    async def after_subscribe(writer: asyncio.StreamWriter) -> None:
        writer.write(publish(topic, reading()) * 50 + publish(GOOD_TOPIC, reading()))

    with structlog.testing.capture_logs() as logged:
        async with RawBroker(after_subscribe) as raw, exporter(session, tmp_path, broker_item(raw)) as e:
            runner = e.add(target())
            await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0,
                                   what="the good reading after the bad ones")
            assert e.value(M.PUSH_REJECTED.name, listener="mqtt:local", reason="malformed") == 50
            assert e.state().up and e.state().polls == 1
            assert raw.connections == 1 and connection_of(runner).connections == 1
            assert e.value(M.MQTT_CONNECTED.name, broker="local") == 1
    dropped = [entry for entry in logged if entry["event"] == "mqtt message with a malformed topic dropped"]
    assert len(dropped) == 1, dropped
    assert dropped[0]["topic"] == topic.decode("utf-8", "replace")


async def test_a_packet_announcing_256_mb_drops_the_connection_before_it_is_read(session, tmp_path):
    """A PUBLISH whose length field announces 256 MB, then 32 MiB as fast as the client reads: the
    client drops the connection once the length is known, instead of buffering what comes and
    waiting for the rest; the target goes down with `too_large` (not only `stale` after the
    keepalive), and after the fault the reconnection reads the meter again."""
    streamed_whole = []
    hostile_on = [True]

    async def after_subscribe(writer: asyncio.StreamWriter) -> None:
        if not hostile_on[0]:
            writer.write(publish(GOOD_TOPIC, reading()))
            return
        writer.write(hostile.MQTT_ENDLESS_HEAD)
        piece = b"\0" * 65536
        for _ in range(512):
            writer.write(piece)
            await writer.drain()
        streamed_whole.append(True)

    async with RawBroker(after_subscribe) as raw:
        async with exporter(session, tmp_path, broker_item(raw, keepalive=60.0)) as e:
            e.add(target(stale_after=120.0))
            # (long before the 60 s keepalive would end a wait for the rest)
            await async_wait_until(lambda: e.state().last_reason == "too_large", timeout=10, what="too_large")
            assert "268435455 bytes" in e.state().last_error and "max_message_bytes 262144" in e.state().last_error
            assert e.value(M.TARGET_UP.name, device="meter") == 0
            assert e.value(M.PUSH_REJECTED.name, listener="mqtt:local", reason="too_large") >= 1
            await async_wait_until(lambda: raw.connections >= 2, timeout=10, what="a reconnection")
            assert not streamed_whole, "the client read the whole stream"
            hostile_on[0] = False
            await async_wait_until(lambda: e.state().up, timeout=10, what="the reading after the fault")
            assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0
            assert not streamed_whole


async def test_max_message_bytes_sets_the_limit(session, tmp_path):
    """A 5 kB reading (valid JSON, padded) passes the default limit and is refused under
    max_message_bytes 4096, before it is read."""
    padded = reading().rstrip()[:-1] + b" " * 5000 + b"}"

    async def after_subscribe(writer: asyncio.StreamWriter) -> None:
        writer.write(publish(GOOD_TOPIC, padded))

    async with RawBroker(after_subscribe) as raw:
        async with exporter(session, tmp_path, broker_item(raw)) as e:
            e.add(target())
            await async_wait_until(lambda: e.state().up, what="the padded reading under the default limit")
        async with exporter(session, tmp_path, broker_item(raw, max_message_bytes=4096)) as e:
            e.add(target())
            await async_wait_until(lambda: e.state().last_reason == "too_large", what="too_large")
            assert "packet of 5" in e.state().last_error and "limit max_message_bytes 4096" in e.state().last_error
            assert not e.state().up


def test_max_message_bytes_is_a_checked_option(tmp_path):
    config = write(tmp_path / "c.yaml", """
        mqtt_brokers:
          - name: home
            host: 127.0.0.1
            max_message_bytes: 512
        targets:
          - name: a
            vendor: iammeter
            transport: mqtt
            broker: home
            sn: 3E0BAF87
    """)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "mqtt_brokers[0].max_message_bytes" in str(info.value)
    assert BrokerSettings.from_section({"name": "b", "host": "h"}).max_message_bytes == 256 * 1024


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
        await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0,
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
            await async_wait_until(lambda: e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0,
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
                if sample_value(body, M.PHASE_VOLTAGE.name, device="grid", phase="l2") is not None:
                    break
                await asyncio.sleep(0.1)
            assert sample_value(body, M.PHASE_VOLTAGE.name, device="grid", phase="l2", vendor="iammeter") == 222.5
            assert sample_value(body, M.MQTT_CONNECTED.name, broker="home") == 1
            assert sample_value(body, M.PUSH_REJECTED.name, listener="mqtt:home", reason="unknown_sn") == 0
            assert sample_value(body, M.TARGET_UP.name, device="grid") == 1
    finally:
        await daemon.stop()
