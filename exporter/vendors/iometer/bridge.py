"""IOmeter bridge, local API (`http://<bridge>/v1`): transport `local`, the vendor's default.

mode `poll`: `GET /v1/reading` every interval, `GET /v1/status` every `status_interval` (the
state of the reader changes rarely; its last answer is kept in between). Readings are the
primary figures: a bridge whose `/v1/status` answers 404 (some device states do, while
`/v1/reading` keeps working) still delivers them; the device-state series are left out until the
status is back, asked for again every `MISSING_STATUS_RETRY` seconds, with one log line each way.
mode `sse`: the bridge streams both paths as Server-Sent Events when asked with
`Accept: text/event-stream`; the adapter keeps both streams open (on its own connections, as
the vendor's own integration does), emits one Reading (newest reading + newest status) per
event, and reconnects a stream that breaks or goes silent with a growing delay
(`reconnect_delay`, doubling up to the target's `max_backoff`). A bridge that
answers a stream request with plain JSON (no SSE) is read like a poll, once per interval.
The adapter is a push adapter (`run`) in sse mode; a daemon that polls it anyway gets the newest
streamed state from `poll()` (the streams then run in the background), or the error that broke
them since. Every way a stream fails (refused or timed-out connection, an HTTP error status, an
answer that is not HTTP, an event that is not JSON, an event or line over 1 MiB, no complete
event for `stream_idle_timeout`) reaches the target as a failure with its reason, and the
stream is opened again after the delay.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import aiohttp

from ...config.loader import Settings, TargetConfig, setting
from ...model.catalogue import IOMETER
from ...model.errors import PollError
from ...model.jsontext import JsonError, loads
from ...model.samples import Emit, ParseError, Reading
from ...runtime.backoff import Backoff, retry_forever
from ...runtime.context import AdapterContext
from ...runtime.tasks import cancel_and_wait
from ...transport.http import Response, request, status_error
from ...transport.sse import MAX_EVENT_BYTES, is_event_stream, read_bounded, read_events, stream_failure
from ..registry import TransportSpec, register
from . import parse

# The status stream may stay quiet while nothing changes; only readings must keep coming, so
# the status stream is given this many times `stream_idle_timeout`.
STATUS_IDLE_FACTOR = 10
# A status that answers 404 is asked for again this often (at least `status_interval`): the
# device state it lacks changes rarely, and each try costs the bridge a request.
MISSING_STATUS_RETRY = 600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class BridgeSettings(Settings):
    host: str = setting("str", required=True, help="address of the bridge, optionally host:port")
    mode: str = setting("str", default="poll", choices=("poll", "sse"),
                        help="poll: GET every interval; sse: keep the bridge's event streams open")
    status_interval: float = setting("duration", default=60.0, minimum=1.0,
                                     help="poll mode: time between reads of /v1/status")
    reconnect_delay: float = setting("duration", default=1.0, minimum=0.001,
                                     help="sse mode: first delay before reconnecting a broken stream")
    stream_idle_timeout: float = setting("duration", default=60.0, minimum=0.1,
                                         help="sse mode: reconnect a reading stream silent this long")


OPTIONS = BridgeSettings.table()


def check_target(options: Mapping[str, Any]):
    host = str(options.get("host") or "")
    if "/" in host.removeprefix("http://").removeprefix("https://").rstrip("/"):
        yield "host", "give the bridge's address (host or host:port), without a path"


def base_url(host: str) -> str:
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


# --- The adapter -----------------------------------------------------------------------------


class IOmeterBridge:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        settings = BridgeSettings.of(target)
        self.base = base_url(settings.host)
        self.mode = settings.mode
        # The daemon picks poll or push per spec (poll here); a daemon that reads this runs sse
        # mode as push. Polled, sse mode still streams (see _from_streams).
        self.delivery = "push" if self.mode == "sse" else "poll"
        self.status_interval = float(settings.status_interval)
        reconnect_delay = float(settings.reconnect_delay)
        self.reconnects = Backoff.for_reconnects(reconnect_delay, max(target.max_backoff, reconnect_delay))
        self.idle_timeout = float(settings.stream_idle_timeout)
        self.status: Reading | None = None
        self.status_read_at: float | None = None
        self.status_missing = False  # /v1/status answered 404 at its last read
        self.reading: Reading | None = None
        self.last_error: PollError | None = None
        self.streams_opened = 0
        # sse mode under a polling daemon: the streams run in the background, poll() hands out
        # the newest snapshot, or the stream's error if that came after it.
        self._background: asyncio.Task | None = None
        self._snapshot: Reading | None = None
        self._snapshot_seq = 0
        self._error_seq = 0
        self._news = asyncio.Event()
        self._streams: aiohttp.ClientSession | None = None
        self._emit: Emit | None = None

    # --- poll mode ---
    async def poll(self) -> Reading:
        if self.mode == "sse":
            return await self._from_streams()
        reading = parse_or_fail(parse.parse_bridge_reading, await self._get("reading"), "/v1/reading")
        now = self.ctx.clock()
        every = max(self.status_interval, MISSING_STATUS_RETRY) if self.status_missing else self.status_interval
        if self.status_read_at is None or now - self.status_read_at >= every:
            self.status_read_at = now
            try:
                payload = await self._get("status")
            except StatusMissing:
                self._status_gone()
            else:
                self.status = parse_or_fail(parse.parse_bridge_status, payload, "/v1/status")
                self._status_back()
        return parse.merge(reading, self.status)

    def _status_gone(self) -> None:
        """/v1/status answered 404: the device-state series go stale, the readings go on."""
        self.status = None
        if not self.status_missing:
            self.status_missing = True
            self.ctx.log.warning("bridge has no /v1/status (HTTP 404); readings go on without the device state",
                                 retry_every=f"{max(self.status_interval, MISSING_STATUS_RETRY):g}s")

    def _status_back(self) -> None:
        if self.status_missing:
            self.status_missing = False
            self.ctx.log.info("bridge answers /v1/status again")

    async def _get(self, name: str) -> Any:
        url = f"{self.base}/v1/{name}"
        response = await request(self.ctx.session, "GET", url, headers={"Accept": "application/json"})
        if response.status == 404 and name == "status":
            raise StatusMissing(url)
        if response.status != 200:
            raise status_error(url, response)
        return response.json()

    # --- sse mode ---
    async def run(self, emit: Emit) -> None:
        """sse mode: both streams, each reopened after it breaks or ends (the reconnection
        policy's delays). Poll mode is polled: the daemon never runs it."""
        if self.mode != "sse":
            raise RuntimeError("a bridge in poll mode is polled, not run")
        # Every failure goes to `emit` as a PollError: the target is down with its reason and
        # its error counter moves (a push adapter cannot raise into the daemon's loop).
        self._emit = emit
        await asyncio.gather(*(
            retry_forever(partial(self._stream_once, name, emit), self.reconnects, partial(self._stream_failed, name))
            for name in ("reading", "status")
        ))

    def _stream_failed(self, name: str, exc: Exception) -> None:
        if not isinstance(exc, PollError):  # a bug: said as such, and the stream is opened again
            exc = PollError("internal", f"/v1/{name} event stream: internal error: {exc.__class__.__name__}")
        self._failed(exc)

    async def _stream_once(self, name: str, emit: Emit) -> bool:
        """One connection to one event stream, until it ends: True once it delivered an event
        (the next reconnection starts the backoff over). Every way it can fail ends in a
        PollError with a reason."""
        url = f"{self.base}/v1/{name}"
        idle = self.idle_timeout if name == "reading" else self.idle_timeout * STATUS_IDLE_FACTOR
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.target.timeout, sock_read=idle)
        delivered = False
        self.streams_opened += 1
        try:
            async with self._stream_session().get(
                url, headers={"Accept": "text/event-stream"}, timeout=timeout, allow_redirects=False
            ) as response:
                if response.status == 404 and name == "status":
                    # No status on this bridge: the readings go on without the device state.
                    self._status_gone()
                    if self.reading is not None:
                        emit(parse.merge(self.reading, None))
                    await asyncio.sleep(MISSING_STATUS_RETRY)
                    return True
                if response.status != 200:
                    body = await response.content.read(256)
                    raise status_error(url, Response(response.status, body, dict(response.headers)))
                if not is_event_stream(response):
                    # No SSE on this firmware: take the body as one event, read again later.
                    body = await read_bounded(response.content, MAX_EVENT_BYTES, url)
                    self._event(name, Response(200, body, {}).json(), emit)
                    await asyncio.sleep(self.target.interval)
                    return True
                delivered = await self._read_events(response.content, url, name, idle, emit)
        except Exception as exc:  # every way a stream breaks, as a PollError with its reason
            failure = stream_failure(exc, url, self.target.timeout, idle)
            if failure is None:
                raise
            raise failure from None
        if not delivered:
            raise PollError("connection", f"{url}: event stream closed without an event")
        self.ctx.log.info("event stream ended; reconnecting", path=f"/v1/{name}")
        return delivered

    async def _read_events(self, content: aiohttp.StreamReader, url: str, name: str, idle: float,
                           emit: Emit) -> bool:
        """Events until the stream ends; True if any was taken."""
        delivered = False
        async for event in read_events(content, url, idle):
            try:
                payload = loads(event.data, "event data")
            except JsonError as exc:
                self._failed(PollError("parse", f"{url}: {exc}"))
                continue
            self._event(_kind_of(payload, event.event, name), payload, emit)
            delivered = True
        return delivered

    def _event(self, name: str, payload: Any, emit: Emit) -> None:
        try:
            if name == "status":
                self.status = parse.parse_bridge_status(payload)
                self._status_back()
            else:
                self.reading = parse.parse_bridge_reading(payload)
        except ParseError as exc:
            self._failed(PollError("parse", f"/v1/{name} event: {exc}"))
            return
        emit(parse.merge(self.reading, self.status))

    def _failed(self, exc: PollError) -> None:
        self.last_error = exc
        self._error_seq = self._snapshot_seq + 1
        self._news.set()
        if self._emit is not None:
            self._emit(exc)  # the daemon records it and logs it (rate-limited)
        else:
            self.ctx.log.warning("bridge stream problem", reason=exc.reason, error=exc.message)

    async def _from_streams(self) -> Reading:
        """sse mode polled by the daemon: the newest streamed state (the first poll waits for
        it; the daemon bounds the wait), or the error that broke the streams since."""
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self.run(self._keep))
        while True:
            self._news.clear()
            if self._error_seq > self._snapshot_seq and self.last_error is not None:
                raise self.last_error
            if self._snapshot is not None:
                return self._snapshot
            await self._news.wait()

    def _keep(self, reading: Reading | PollError) -> None:
        if isinstance(reading, PollError):
            return  # `_failed` has recorded it; the next poll raises it
        self._snapshot = reading
        self._snapshot_seq = max(self._snapshot_seq, self._error_seq) + 1
        self._news.set()

    def _stream_session(self) -> aiohttp.ClientSession:
        """The streams' own session: the daemon's allows one connection per device, which a
        stream would hold forever; the two streams are the bridge's only long-lived clients."""
        if self._streams is None or self._streams.closed:
            self._streams = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=2))
        return self._streams

    async def close(self) -> None:
        await cancel_and_wait(self._background)
        self._background = None
        if self._streams is not None:
            await self._streams.close()
            self._streams = None


class StatusMissing(Exception):
    """/v1/status answered 404 (the readings may still be there)."""


def _kind_of(payload: Any, event: str, default: str) -> str:
    """Which payload an event carries: by its `__typename`, else its event name, else the path."""
    typename = payload.get("__typename") if isinstance(payload, dict) else None
    if isinstance(typename, str):
        if typename.startswith("iometer.status."):
            return "status"
        if typename.startswith("iometer.reading."):
            return "reading"
    if event in ("statusEvent", "readingEvent"):
        return "status" if event == "statusEvent" else "reading"
    return default


def parse_or_fail(parser: Callable[[Any], Reading], payload: Any, path: str) -> Reading:
    try:
        return parser(payload)
    except ParseError as exc:
        raise PollError("parse", f"{path}: {exc}") from None


SPEC = register(TransportSpec(
    vendor=IOMETER, transport="local", options=OPTIONS, create=IOmeterBridge,
    delivery="poll", default_interval=10.0, min_interval=1.0, check_target=check_target,
    description="IOmeter bridge, local API: /v1/reading and /v1/status, polled or as Server-Sent Events",
))
