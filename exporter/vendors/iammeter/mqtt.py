"""IAMMETER meters in MQTT mode: they publish the `/api/monitorjson` document to
`device/<SN>/realtime` on a broker every upload interval (2 s at the fastest).

A target names a broker of the `mqtt_brokers:` section and the meter's SN. All targets on one
broker share one connection and one subscription to the broker's `topic` filter; a message is
routed by the SN in its topic (the level the filter's `+` stands for; with a filter without `+`,
by the SN in the body) and, when the body names an SN too, both must agree. Refused messages are
counted in `energy_meter_exporter_push_rejected_total{listener="mqtt:<broker>"}`: an SN no
target claims (`unknown_sn`), a body that is not a valid measurement (`malformed`, and the
target of its SN fails with reason `parse`), an SN in the body that differs from the topic's
(`sn_mismatch`, also a `parse` failure of the topic's target), a payload over 64 KiB
(`too_large`). The broker connection itself refuses a topic that is not valid UTF-8
(`malformed`, the connection kept) and a packet over the broker's `max_message_bytes`
(`too_large`, the connection dropped before the packet is read, every target of the broker down).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping

from ...config.loader import Config, Settings, TargetConfig, setting
from ...model.errors import PollError
from ...model.jsontext import JsonError, label_text, loads
from ...model.samples import Emit, ParseError
from ...runtime import logs
from ...runtime.context import AdapterContext
from ...transport.http_push import normalize_id
from ...transport.mqtt import BrokerConnection, BrokerSettings, topic_filter_problem, wildcard_value
from ..registry import TransportSpec, register
from .parse import parse_monitorjson

# Where the meters publish, '+' standing for the SN: a broker's `topic` replaces it.
DEFAULT_TOPIC = "device/+/realtime"

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_UNKNOWN_LOGGED = 100  # distinct unknown SNs logged once each; the counter counts them all


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterMqttSettings(Settings):
    broker: str = setting("str", required=True, help="name of the broker under mqtt_brokers")
    sn: str = setting("str", required=True, help="the meter's serial number, as in its topic device/<SN>/realtime")


OPTIONS = IammeterMqttSettings.table()

_SN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")



def check_target(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    sn = options.get("sn")
    if isinstance(sn, str) and not _SN.match(sn.strip()):
        yield "sn", f"{sn!r} is not a meter serial number (letters, digits, '-', '_', '.'; no '/', '+', '#')"


def check_config(config: Config) -> Iterable[tuple[tuple, str]]:
    brokers = config.sections.get("mqtt_brokers", ())
    for index, item in enumerate(brokers):
        problem = topic_filter_problem(item.get("topic") or DEFAULT_TOPIC)
        if problem:
            yield ("mqtt_brokers", index, "topic"), problem
        if item.get("password") and not item.get("username"):
            yield ("mqtt_brokers", index, "password"), "a password without a username is never sent; give both"
    names = [item.get("name") for item in brokers]
    seen: dict[str, str] = {}
    # The loader runs this only when every target is valid, so the index is the file's index.
    for index, target in enumerate(config.targets):
        if (target.vendor, target.transport) != ("iammeter", "mqtt"):
            continue
        settings = IammeterMqttSettings.of(target)
        broker = settings.broker
        if broker not in names:
            known = ", ".join(repr(n) for n in names) or "none"
            yield ("targets", index, "broker"), f"no broker named {broker!r} under mqtt_brokers (known: {known})"
        sn = normalize_id(settings.sn)
        if sn in seen:
            yield ("targets", index, "sn"), f"SN {sn} is already read over MQTT by target {seen[sn]!r}"
        else:
            seen[sn] = target.name


class IammeterMqttRouter:
    """One per broker: the subscription to the broker's topic filter, messages routed by SN."""

    def __init__(self, connection: BrokerConnection, log: Any,
                 release: Callable[[], Awaitable[None]] | None = None) -> None:
        self.connection = connection
        self._release = release  # lets go of the shared connection
        self.topic_filter = connection.settings.topic or DEFAULT_TOPIC
        self.log = log
        self.routes: dict[str, Emit] = {}
        self._unknown_logged: set[str] = set()
        connection.add_error_listener(self._on_error)
        connection.subscribe(self.topic_filter, self.on_message)

    def attach(self, sn: str, emit: Emit) -> None:
        self.routes[normalize_id(sn)] = emit
        error = self.connection.last_error
        if error is not None and not self.connection.connected.is_set():
            emit(error)  # a target added while the broker refuses us learns why at once

    def detach(self, sn: str, emit: Emit) -> None:
        key = normalize_id(sn)
        if self.routes.get(key) is emit:
            del self.routes[key]

    async def close(self) -> None:
        self.connection.unsubscribe(self.topic_filter, self.on_message)
        self.connection.remove_error_listener(self._on_error)
        if self._release is not None:
            await self._release()

    def _on_error(self, error: PollError) -> None:
        for emit in list(self.routes.values()):
            emit(error)

    def on_message(self, topic: str, payload: bytes) -> None:
        topic_sn = wildcard_value(self.topic_filter, topic)
        where = label_text(topic, 200)  # what messages and logs say: no control characters
        emit = None
        if topic_sn is not None:
            emit = self.routes.get(normalize_id(topic_sn))
            if emit is None:
                self._unknown(topic_sn, where)
                return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._refuse(emit, "too_large", PollError(
                "too_large", f"MQTT message on {where} of {len(payload)} bytes refused (limit {MAX_PAYLOAD_BYTES})"))
            return
        try:
            document = loads(payload, f"MQTT message on {where}")
        except JsonError as exc:
            self._refuse(emit, "malformed", PollError("parse", str(exc)))
            return
        body_sn = document.get("SN") if isinstance(document, dict) else None
        if body_sn is not None and (isinstance(body_sn, bool) or not isinstance(body_sn, (str, int))):
            self._refuse(emit, "malformed", PollError("parse", f"MQTT message on {where}: SN is not text"))
            return
        if emit is None:  # a filter without '+': the body alone names the meter
            if body_sn is None or not str(body_sn).strip():
                self._refuse(None, "malformed", None)
                return
            emit = self.routes.get(normalize_id(body_sn))
            if emit is None:
                self._unknown(str(body_sn), where)
                return
        elif body_sn is not None and normalize_id(body_sn) != normalize_id(topic_sn):
            self._refuse(emit, "sn_mismatch", PollError(
                "parse", f"MQTT message on {where} carries SN {str(body_sn)[:64]!r}, not the topic's"))
            return
        try:
            reading = parse_monitorjson(document)
        except ParseError as exc:
            self._refuse(emit, "malformed", PollError("parse", f"MQTT message on {where}: {exc}"))
            return
        emit(reading)

    def _refuse(self, emit: Emit | None, reason: str, error: PollError | None) -> None:
        self.connection.count_rejected(reason)
        if emit is not None and error is not None:
            emit(error)

    def _unknown(self, sn: str, topic: str) -> None:
        self.connection.count_rejected("unknown_sn")
        key = normalize_id(sn)
        if key not in self._unknown_logged and len(self._unknown_logged) < MAX_UNKNOWN_LOGGED:
            self._unknown_logged.add(key)
            self.log.info("mqtt message from a meter no target reads", sn=label_text(sn, 64), topic=topic)


class IammeterMqttAdapter:
    """A push target: registers its SN with the broker's router and waits."""

    def __init__(self, target: TargetConfig, context: AdapterContext) -> None:
        self.target = target
        self._context = context
        settings = IammeterMqttSettings.of(target)
        self.sn = normalize_id(settings.sn)
        self.broker = settings.broker
        self._router: IammeterMqttRouter | None = None
        self._key: tuple | None = None
        self._emit: Emit | None = None

    def settings(self) -> BrokerSettings | None:
        item = next((b for b in self._context.sections.get("mqtt_brokers", ()) if b.get("name") == self.broker), None)
        return None if item is None else BrokerSettings.from_section(item)

    async def run(self, emit: Emit) -> None:
        settings = self.settings()
        if settings is None:  # the loader checks this; a hand-made config may not have been
            emit(PollError("config", f"no broker named {self.broker!r} under mqtt_brokers"))
            await asyncio.Event().wait()
        shared = self._context.shared
        store = self._context.store
        key = ("iammeter-mqtt", settings.key())

        async def new_router() -> IammeterMqttRouter:
            connection_key = ("mqtt", settings.key())

            async def new_connection() -> BrokerConnection:
                return await BrokerConnection(settings, logs.get(broker=settings.name), store).start()

            connection = await shared.acquire(connection_key, new_connection)
            return IammeterMqttRouter(connection, logs.get(broker=settings.name, vendor="iammeter"),
                                      release=lambda: shared.release(connection_key))

        self._router = await shared.acquire(key, new_router)
        self._key, self._emit = key, emit
        self._router.attach(self.sn, emit)
        self._router.connection.add_interval(self.target.interval)
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    @property
    def connection(self) -> BrokerConnection | None:
        return self._router.connection if self._router is not None else None

    async def close(self) -> None:
        router, self._router = self._router, None
        if router is None:
            return
        router.detach(self.sn, self._emit)
        router.connection.remove_interval(self.target.interval)
        await self._context.shared.release(self._key)


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="mqtt",
    options=OPTIONS,
    create=IammeterMqttAdapter,
    delivery="push",
    default_interval=60.0,  # the meter's default upload interval
    min_interval=2.0,  # the fastest the firmware uploads
    check_target=check_target,
    check_config=check_config,
    description="IAMMETER meter in MQTT mode (device/<SN>/realtime on a broker of mqtt_brokers)",
))
