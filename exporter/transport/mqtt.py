"""MQTT brokers the exporter subscribes to: the `mqtt_brokers:` section and one shared connection
per broker.

A `BrokerConnection` keeps one client connected for every target that reads from that broker:
it subscribes to the topic filters its users register, hands each message to their handler, and
after a lost connection reconnects with exponential backoff and subscribes again (the broker
forgets a clean session's subscriptions). The delay's ceiling is `max_reconnect_delay`, and never
more than the shortest interval of the targets reading from the broker, so a meter is read again
within one of its intervals after the broker is back. `energy_meter_exporter_mqtt_connected{broker}`
tells whether it is connected now. Retained messages, which the broker replays on subscribing,
are ignored: they are readings of unknown age. A failed connection attempt is passed to the users as a
`PollError` (unauthorized, tls, connection, timeout, config), so that their targets go down with
a reason at once instead of only going stale later; a broker that restarts and takes the
connection back at the first attempt marks nobody down.

What the broker sends is guarded where paho leaves it to the application: a PUBLISH whose topic
is not valid UTF-8 (or not a topic at all) is dropped and counted `malformed`, the connection
kept; a packet announcing more than `max_message_bytes` drops the connection as soon as its
length is known, before its bytes are read (paho would buffer all of it, up to 256 MB), and
the targets go down with reason `too_large` until a connection holds again.

Passwords travel only to the broker: messages name the broker and the user, never the password.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import aiomqtt

from ..config.loader import SectionSpec, Secret, Settings, setting
from ..model import catalogue as M
from ..model.errors import PollError
from ..model.jsontext import label_text
from ..runtime.backoff import Backoff
from ..runtime.tasks import cancel_and_wait
from ..web.serving import Throttle

# A connection that held for this long counts as good: the backoff starts again from the
# beginning after it drops. A broker that accepts and then drops at once (a client id used
# twice) is retried ever more slowly instead of in a tight loop.
STABLE_AFTER = 10.0
# Reasons a subscriber refuses a message for; shown from the start at 0.
REJECT_REASONS = ("unknown_sn", "sn_mismatch", "malformed", "too_large")
# Meters publish a few kB; a broker's own default limit is far larger. 256 KiB leaves room for
# any reading while a hostile peer can make the client hold no more than that.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
MQTT_MAX_REMAINING_LENGTH = 268_435_455  # four length bytes (MQTT 3.1.1, 2.2.3)


@dataclass(frozen=True, kw_only=True)
class BrokerSettings(Settings):
    """One entry of `mqtt_brokers`: its name, and its keys as declared here."""

    name: str
    host: str = setting("str", required=True, help="address of the broker")
    # None is filled in: 1883, or 8883 with tls.
    port: int = setting("int", minimum=1, maximum=65535, help="port of the broker (default 1883, with tls 8883)")
    username: str | None = setting("str", help="user name, if the broker asks for one")
    password: Secret | None = setting("secret", help="password of that user (or password_file)")
    tls: bool = setting("bool", default=False, help="connect with TLS")
    ca_file: str | None = setting(
        "path", help="CA certificate(s) to verify the broker with (default: the system store)")
    tls_verify: bool = setting(
        "bool", default=True, help="verify the broker's certificate and name (false: encrypt only)")
    client_id: str | None = setting(
        "str", help="MQTT client id (default: energy-meter-exporter-<random>); unique per broker")
    # None: the subscriber's own (its vendor's) topic filter
    topic: str | None = setting("str", help="topic filter the meters publish under, '+' standing for the meter's id "
                                            "(default: the one the meters' vendor uses)")
    keepalive: float = setting("duration", default=60.0, minimum=5.0, help="MQTT keepalive interval")
    reconnect_delay: float = setting(
        "duration", default=1.0, minimum=0.01, help="first delay before a reconnection")
    max_reconnect_delay: float = setting(
        "duration", default=60.0, minimum=0.01, help="ceiling of the reconnection delay")
    max_message_bytes: int = setting(
        "int", default=DEFAULT_MAX_MESSAGE_BYTES, minimum=1024, maximum=MQTT_MAX_REMAINING_LENGTH,
        help="a packet from the broker announcing more drops the connection before it is read")

    def __post_init__(self) -> None:
        if self.port is None:
            object.__setattr__(self, "port", 8883 if self.tls else 1883)
        if isinstance(self.password, str):  # an entry made in code
            object.__setattr__(self, "password", Secret(self.password))
        if not self.topic:
            object.__setattr__(self, "topic", None)

    @classmethod
    def from_section(cls, item: Mapping[str, Any]) -> "BrokerSettings":
        return cls.from_options(item)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def key(self) -> tuple:
        """Identity for shared connections: a changed setting means a new connection."""
        return tuple(sorted((k, v) for k, v in self.__dict__.items()))


OPTIONS = BrokerSettings.table()

SECTION = SectionSpec(
    name="mqtt_brokers", options=OPTIONS, many=True,
    description="MQTT brokers that meters publish to; targets name one with `broker:`",
)


def topic_filter_problem(topic: str) -> str | None:
    """Why `topic` is not a valid MQTT topic filter, or None."""
    if not topic:
        return "empty topic filter"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching ('+' one level, '#' the rest)."""
    filter_levels, levels = topic_filter.split("/"), topic.split("/")
    for index, pattern in enumerate(filter_levels):
        if pattern == "#":
            return True
        if index >= len(levels) or (pattern != "+" and pattern != levels[index]):
            return False
    return len(levels) == len(filter_levels)


def wildcard_value(topic_filter: str, topic: str) -> str | None:
    """The topic level that the filter's first '+' matched (the meter's id), or None."""
    filter_levels, levels = topic_filter.split("/"), topic.split("/")
    for index, pattern in enumerate(filter_levels):
        if pattern == "+":
            return levels[index] if index < len(levels) else None
    return None


Handler = Callable[[str, bytes], None]
ErrorListener = Callable[[PollError], None]
BadTopicListener = Callable[[str, Exception], None]


class PacketSizeGuard:
    """Follows the fixed headers (MQTT 3.1.1, 2.2) in the bytes a client reads, and notes the first
    packet whose remaining length is over `limit` as soon as its length field is complete."""

    __slots__ = ("limit", "refused", "_left", "_length", "_factor", "_lost")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        """A new connection: a packet's first byte comes next."""
        self.refused: int | None = None  # the announced length of the refused packet
        self._left = 0  # body bytes of the current packet still to come
        self._length = -1  # the remaining length decoded so far; -1: a packet's type byte is next
        self._factor = 1
        self._lost = False

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self.refused is None and not self._lost:
            if self._left:  # a body: skipped whole, whatever the size of the read
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
            elif self._length < 0:
                self._length, self._factor = 0, 1
                pos += 1
            else:
                byte = data[pos]
                pos += 1
                self._length += (byte & 0x7F) * self._factor
                self._factor *= 128
                if not byte & 0x80:
                    if self._length > self.limit:
                        self.refused = self._length
                    self._left, self._length = self._length, -1
                elif self._factor >= 128 ** 4:
                    # A fifth length byte is a protocol error, which paho answers by dropping
                    # the connection itself; nothing after it can be followed.
                    self._lost = True


class _GuardedClient(aiomqtt.Client):
    """aiomqtt's client with two guards on what the broker sends.

    Both sit on the paho client that aiomqtt wraps (`_client`; aiomqtt has no public way to it):
    its public message callback, and `_sock_recv`, the one method through which paho reads the
    connection. These two private names are why pyproject.toml keeps aiomqtt and paho-mqtt below
    their next major version; the tests on real sockets catch a change within it.
    """

    def __init__(self, *args: Any, max_packet_bytes: int, on_bad_topic: BadTopicListener, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sizes = PacketSizeGuard(max_packet_bytes)
        paho = self._client
        deliver = paho.on_message

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            # aiomqtt decodes and checks the topic here. An exception would escape paho's read
            # loop, which hands the same packet over again on every read until the connection
            # drops: one bad message would flood the log and cost the connection.
            try:
                deliver(client, userdata, message)
            except Exception as exc:
                on_bad_topic(_shown_topic(message), exc)

        read = paho._sock_recv

        def sock_recv(bufsize: int) -> bytes:
            # paho reads a packet's whole announced length before it looks at it (up to 256 MB).
            # The end of the connection is what paho sees instead of a packet over the limit:
            # it closes the connection, and the caller learns why from `sizes.refused`.
            if self.sizes.refused is not None:
                return b""
            data = read(bufsize)
            self.sizes.feed(data)
            return b"" if self.sizes.refused is not None else data

        paho.on_message = on_message
        paho._sock_recv = sock_recv  # type: ignore[method-assign]

    async def __aenter__(self) -> "_GuardedClient":
        self.sizes.reset()
        await super().__aenter__()
        return self


def _shown_topic(message: Any) -> str:
    """The topic of a refused message as far as it can be shown (invalid UTF-8 replaced)."""
    try:
        topic = message.topic
    except UnicodeDecodeError as exc:
        raw = exc.object
        topic = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else ""
    return label_text(topic if isinstance(topic, str) else str(topic), 200)


class BrokerConnection:
    """One client connection to one broker, shared by every target that reads from it."""

    def __init__(self, settings: BrokerSettings, log: Any, store: Any = None) -> None:
        self.settings = settings
        self.log = log.bind(broker=settings.name) if hasattr(log, "bind") else log
        self.store = store
        self.connected = asyncio.Event()
        self.last_error: PollError | None = None
        self.connections = 0  # successful connections so far (tests, status)
        self.failures = 0  # consecutive failed attempts or short-lived connections
        self._handlers: dict[str, list[Handler]] = {}
        self._error_listeners: list[ErrorListener] = []
        self._intervals: list[float] = []  # of the targets reading from this broker
        self._client: aiomqtt.Client | None = None
        self._subscribed: set[str] = set()
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # (un)subscriptions in flight
        self._client_id = settings.client_id or f"energy-meter-exporter-{uuid.uuid4().hex[:12]}"
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.handler_crashes = 0
        self._bad_topic_log = Throttle()

    # --- users -----------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        handlers = self._handlers.setdefault(topic_filter, [])
        if handler not in handlers:
            handlers.append(handler)
        if self._client is not None and topic_filter not in self._subscribed:
            self._subscribed.add(topic_filter)
            self._in_background(self._subscribe(self._client, topic_filter))

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        handlers = self._handlers.get(topic_filter, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(topic_filter, None)
            client = self._client
            if client is not None and topic_filter in self._subscribed:
                self._subscribed.discard(topic_filter)
                self._in_background(self._quietly(client.unsubscribe(topic_filter)))

    def _in_background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._background.discard)

    def add_error_listener(self, listener: ErrorListener) -> None:
        self._error_listeners.append(listener)

    def remove_error_listener(self, listener: ErrorListener) -> None:
        if listener in self._error_listeners:
            self._error_listeners.remove(listener)

    def add_interval(self, seconds: float) -> None:
        """A target reading from this broker expects a message every `seconds`."""
        self._intervals.append(seconds)

    def remove_interval(self, seconds: float) -> None:
        if seconds in self._intervals:
            self._intervals.remove(seconds)

    @property
    def listener(self) -> str:
        """The `listener` label of this broker's refused messages."""
        return f"mqtt:{self.settings.name}"

    def count_rejected(self, reason: str) -> None:
        """Count a message nobody took (energy_meter_exporter_push_rejected_total)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._publish_rejected()

    def _publish_rejected(self) -> None:
        if self.store is not None:
            self.store.set_global(f"mqtt-rejected:{self.settings.name}", M.PUSH_REJECTED, [
                ((("listener", self.listener), ("reason", r)), n) for r, n in sorted(self.rejected.items())])

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "BrokerConnection":
        self._publish_state()
        self._publish_rejected()
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.settings.name}")
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        # Then the (un)subscriptions still in flight; not along with the connection: those just
        # made get their turn meanwhile (one cancelled before it starts leaves its call unawaited).
        await cancel_and_wait(*self._background)
        if self.store is not None:
            self.store.set_global(f"mqtt:{self.settings.name}", M.MQTT_CONNECTED, [])
            self.store.set_global(f"mqtt-rejected:{self.settings.name}", M.PUSH_REJECTED, [])

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            was_connected = False
            client: _GuardedClient | None = None
            try:
                client = self._new_client()
                async with client:
                    was_connected = True
                    await self._on_connected(client)
                    async for message in client.messages:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except aiomqtt.MqttError as exc:
                error = self._classify(exc, was_connected)
            except PollError as exc:  # the TLS settings could not be loaded
                error = exc
            except Exception as exc:  # a bug here must not end the subscription for good
                self.log.exception("mqtt connection crashed", error_type=exc.__class__.__name__)
                error = PollError("internal", f"MQTT broker {self.settings.name!r}: internal error: "
                                              f"{exc.__class__.__name__}")
            finally:
                self._client = None
                self._subscribed = set()
                self.connected.clear()
                self._publish_state()
            if client is not None and client.sizes.refused is not None:
                self.count_rejected("too_large")
                error = self._too_large(client.sizes.refused)
            if was_connected and time.monotonic() - started >= STABLE_AFTER:
                self.failures = 0
            self.failures += 1
            self.last_error = error
            if was_connected:
                self.log.warning("mqtt connection lost", reason=error.reason, error=error.message)
            elif self.failures == 1 or self.failures % 10 == 0:
                self.log.warning("mqtt connection failed", reason=error.reason, error=error.message,
                                 consecutive=self.failures)
            # Only a failed attempt marks the targets down: a broker that comes straight back
            # after a restart does not make every meter flap. A packet over the limit comes
            # again on the next connection (a retained message is replayed): say so at once.
            if not was_connected or error.reason == "too_large":
                for listener in list(self._error_listeners):
                    listener(error)
            await asyncio.sleep(self._delay())

    def _delay(self) -> float:
        s = self.settings
        ceiling = min([s.max_reconnect_delay, *self._intervals])
        return Backoff.for_reconnects(s.reconnect_delay, ceiling).delay(self.failures)

    def _new_client(self) -> _GuardedClient:
        s = self.settings
        return _GuardedClient(
            s.host, s.port, username=s.username,
            password=s.password.reveal() if s.password else None,
            identifier=self._client_id, keepalive=int(s.keepalive),
            tls_context=self._tls_context() if s.tls else None,
            timeout=max(5.0, min(s.keepalive, 30.0)),
            logger=_QUIET_LOGGER,
            max_packet_bytes=s.max_message_bytes, on_bad_topic=self._bad_topic,
        )

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        try:
            context = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise PollError("config", f"MQTT broker {s.name!r}: cannot load ca_file {s.ca_file}: "
                                      f"{getattr(exc, 'strerror', None) or exc}") from None
        if not s.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.connections += 1
        for topic_filter in list(self._handlers):
            self._subscribed.add(topic_filter)
            await self._subscribe(client, topic_filter)
        self.last_error = None
        self.connected.set()
        self._publish_state()
        self.log.info("mqtt connected", address=self.settings.address, subscriptions=sorted(self._subscribed),
                      connection=self.connections)

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        try:
            granted = await client.subscribe(topic_filter, qos=0)
        except aiomqtt.MqttError as exc:
            # The next connection subscribes again; a refused filter is worth a warning.
            self.log.warning("mqtt subscribe failed", topic=topic_filter, error=_clean(str(exc), self.settings))
            return
        if any(getattr(code, "value", code) >= 0x80 for code in granted):
            self.log.warning("mqtt broker refused the subscription", topic=topic_filter,
                             hint="check the broker's ACL for this user")

    @staticmethod
    async def _quietly(awaitable) -> None:
        try:
            await awaitable
        except aiomqtt.MqttError:
            pass

    def _dispatch(self, message: aiomqtt.Message) -> None:
        if message.retain:
            # Replayed by the broker on subscribing: a reading of unknown age, not a live one.
            return
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, (bytes, bytearray)):
            payload = b"" if payload is None else str(payload).encode()
        for topic_filter, handlers in list(self._handlers.items()):
            if topic_matches(topic_filter, topic):
                for handler in list(handlers):
                    try:
                        handler(topic, bytes(payload))
                    except Exception as exc:  # one bad handler must not stop the others
                        self._handler_crashed(topic, exc)

    def _bad_topic(self, topic: str, exc: Exception) -> None:
        """A message whose topic is not valid UTF-8, or not a topic: dropped, the connection kept."""
        self.count_rejected("malformed")
        held = self._bad_topic_log.ready()
        if held is not None:
            self.log.warning("mqtt message with a malformed topic dropped", topic=topic,
                             error=label_text(f"{exc.__class__.__name__}: {exc}", 200), more_since_last=held)

    def _too_large(self, length: int) -> PollError:
        s = self.settings
        return PollError("too_large", f"MQTT broker {s.name!r} ({s.address}) sent a packet of {length} bytes "
                                      f"(limit max_message_bytes {s.max_message_bytes}); connection dropped")

    def _handler_crashed(self, topic: str, exc: Exception) -> None:
        """A traceback the first time, then a line every 100th: a publisher repeating one bad
        message must not fill the log."""
        self.handler_crashes += 1
        if self.handler_crashes == 1:
            self.log.exception("mqtt handler crashed", topic=label_text(topic, 200), error_type=exc.__class__.__name__)
        elif self.handler_crashes % 100 == 0:
            self.log.warning("mqtt handler crashed again", topic=label_text(topic, 200),
                             error_type=exc.__class__.__name__, crashes=self.handler_crashes)

    def _publish_state(self) -> None:
        if self.store is not None:
            self.store.set_global(f"mqtt:{self.settings.name}", M.MQTT_CONNECTED,
                                  [((("broker", self.settings.name),), 1 if self.connected.is_set() else 0)])

    def _classify(self, exc: aiomqtt.MqttError, was_connected: bool) -> PollError:
        s = self.settings
        where = f"MQTT broker {s.name!r} ({s.address})"
        if was_connected:
            return PollError("connection", f"{where}: connection lost")
        code = getattr(exc, "rc", None)
        value = getattr(code, "value", code)
        text = _clean(str(exc), s)
        if value in (4, 5, 134, 135):
            who = f"user {s.username!r}" if s.username else "an anonymous client"
            what = "bad user name or password" if value in (4, 134) else "not authorized"
            return PollError("unauthorized", f"{where} refused the login of {who}: {what}")
        lowered = text.lower()
        if "ssl" in lowered or "certificate" in lowered or "tls" in lowered:
            return PollError("tls", f"{where}: TLS failed: {text}")
        if "timed out" in lowered or "timeout" in lowered:
            return PollError("timeout", f"{where}: no answer in time")
        return PollError("connection", f"{where}: cannot connect: {text}")


def _clean(text: str, settings: BrokerSettings) -> str:
    """Belt and braces: a message must never carry the password, whatever the library says."""
    if settings.password:
        secret = settings.password.reveal()
        if secret and secret in text:
            text = text.replace(secret, "<secret>")
    return re.sub(r"\s+", " ", text).strip()[:200]


# paho's own debug lines (one per ping) are of no use to the exporter's users; its warnings are.
_QUIET_LOGGER = logging.getLogger("exporter.transport.mqtt.client")
_QUIET_LOGGER.setLevel(logging.WARNING)
