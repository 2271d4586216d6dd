"""IOmeter bridge, local API (`http://<bridge>/v1`): transport `local`, the vendor's default.

mode `poll`: `GET /v1/reading` every interval, `GET /v1/status` every `status_interval` (the
state of the reader changes rarely; its last answer is kept in between).
mode `sse`: the bridge streams both paths as Server-Sent Events when asked with
`Accept: text/event-stream`; the adapter keeps both streams open (on its own connections, as
the vendor's own integration does), emits one Reading (newest reading + newest status) per
event, and reconnects a stream that breaks or goes silent with a growing delay
(`reconnect_delay`, doubling up to the target's `max_backoff`). A bridge that
answers a stream request with plain JSON (no SSE) is read like a poll, once per interval.
The adapter is a push adapter (`run`) in sse mode; a daemon that polls it anyway gets the newest
streamed state from `poll()` (the streams then run in the background), or the error that broke
them since.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp

from ...catalogue import IOMETER
from ...config import Option, TargetConfig
from ...context import AdapterContext
from ...errors import PollError
from ...http import Response, request, status_error
from ...samples import ParseError, Reading
from ..registry import TransportSpec, register
from . import parse

MAX_EVENT_BYTES = 1 << 20  # a bridge event is a few hundred bytes; more is a fault

OPTIONS = {
    "host": Option("str", required=True, help="address of the bridge, optionally host:port"),
    "mode": Option("str", default="poll", choices=("poll", "sse"),
                   help="poll: GET every interval; sse: keep the bridge's event streams open"),
    "status_interval": Option("duration", default=60.0, minimum=1.0,
                              help="poll mode: time between reads of /v1/status"),
    "reconnect_delay": Option("duration", default=1.0, minimum=0.001,
                              help="sse mode: first delay before reconnecting a broken stream"),
    "stream_idle_timeout": Option("duration", default=60.0, minimum=0.1,
                                  help="sse mode: reconnect a reading stream silent this long"),
}


def check_target(options: Mapping[str, Any]):
    host = str(options.get("host") or "")
    if "/" in host.removeprefix("http://").removeprefix("https://").rstrip("/"):
        yield "host", "give the bridge's address (host or host:port), without a path"


def base_url(host: str) -> str:
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


# --- Server-Sent Events framing (pure) -------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class SseDecoder:
    """Splits an event stream into events (WHATWG rules: `\\n`, `\\r\\n` or `\\r` line ends,
    `:` comments, multi-line `data`, dispatch on a blank line)."""

    max_bytes: int = MAX_EVENT_BYTES
    _buffer: bytes = b""
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _size: int = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, width = cut
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + width:]
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) + self._size > self.max_bytes:
            raise ParseError(f"event stream: an event larger than {self.max_bytes} bytes")
        return events

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._size += len(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line ends and how wide its ending is; a lone `\\r` at the very end
    may still become `\\r\\n`, so it waits for more."""
    for i, byte in enumerate(buffer):
        if byte == 0x0A:
            return i, 1
        if byte == 0x0D:
            if i + 1 == len(buffer):
                return None
            return i, 2 if buffer[i + 1] == 0x0A else 1
    return None


# --- The adapter -----------------------------------------------------------------------------


class IOmeterBridge:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        self.base = base_url(target.option("host"))
        self.mode = target.option("mode", "poll")
        # The daemon picks poll or push per spec (poll here); a daemon that reads this runs sse
        # mode as push. Polled, sse mode still streams (see _from_streams).
        self.kind = "push" if self.mode == "sse" else "poll"
        self.status_interval = float(target.option("status_interval", 60.0))
        self.reconnect_delay = float(target.option("reconnect_delay", 1.0))
        self.idle_timeout = float(target.option("stream_idle_timeout", 60.0))
        self.status: Reading | None = None
        self.status_read_at: float | None = None
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

    # --- poll mode ---
    async def poll(self) -> Reading:
        if self.mode == "sse":
            return await self._from_streams()
        reading = parse_or_fail(parse.parse_bridge_reading, await self._get("reading"), "/v1/reading")
        now = self.ctx.clock()
        if self.status_read_at is None or now - self.status_read_at >= self.status_interval:
            self.status = parse_or_fail(parse.parse_bridge_status, await self._get("status"), "/v1/status")
            self.status_read_at = now
        return parse.merge(reading, self.status)

    async def _get(self, name: str) -> Any:
        url = f"{self.base}/v1/{name}"
        response = await request(self.ctx.session, "GET", url, headers={"Accept": "application/json"})
        if response.status != 200:
            raise status_error(url, response)
        return response.json()

    # --- sse mode ---
    async def run(self, emit: Callable[[Reading], None]) -> None:
        if self.mode != "sse":
            await self._poll_forever(emit)
            return
        await asyncio.gather(self._stream_forever("reading", emit), self._stream_forever("status", emit))

    async def _poll_forever(self, emit: Callable[[Reading], None]) -> None:
        """Poll mode run as a push adapter (if the daemon asks for one)."""
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self.target.timeout):
                    emit(await self.poll())
                failures = 0
            except (PollError, TimeoutError) as exc:
                failures += 1
                self._failed(exc if isinstance(exc, PollError) else PollError("timeout", "no answer in time"))
            await asyncio.sleep(min(self.target.interval * 2 ** min(failures, 16), max(self.target.max_backoff, self.target.interval)))

    async def _stream_forever(self, name: str, emit: Callable[[Reading], None]) -> None:
        delay = self.reconnect_delay
        while True:
            try:
                delivered = await self._stream_once(name, emit)
            except PollError as exc:
                delivered = False
                self._failed(exc)
            if delivered:
                delay = self.reconnect_delay  # it worked for a while: start over gently
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max(self.target.max_backoff, self.reconnect_delay))

    async def _stream_once(self, name: str, emit: Callable[[Reading], None]) -> bool:
        """One connection to one event stream; True if it delivered at least one event."""
        url = f"{self.base}/v1/{name}"
        # The status stream may stay quiet while nothing changes; only readings must keep coming.
        idle = self.idle_timeout if name == "reading" else self.idle_timeout * 10
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.target.timeout, sock_read=idle)
        delivered = False
        self.streams_opened += 1
        try:
            async with self._stream_session().get(
                url, headers={"Accept": "text/event-stream"}, timeout=timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    body = await response.content.read(256)
                    raise status_error(url, Response(response.status, body, dict(response.headers)))
                if "text/event-stream" not in response.headers.get("Content-Type", ""):
                    # No SSE on this firmware: take the body as one event, read again later.
                    body = await response.content.read(MAX_EVENT_BYTES)
                    self._event(name, Response(200, body, {}).json(), emit)
                    await asyncio.sleep(self.target.interval)
                    return True
                decoder = SseDecoder()
                async for chunk in response.content.iter_any():
                    for event in decoder.feed(chunk):
                        try:
                            payload = json.loads(event.data)
                        except ValueError:
                            self._failed(PollError("parse", f"{url}: event data is not JSON"))
                            continue
                        self._event(_kind_of(payload, event.event, name), payload, emit)
                        delivered = True
        except PollError:
            raise
        except ParseError as exc:
            raise PollError("parse", f"{url}: {exc}") from None
        except asyncio.TimeoutError:
            raise PollError("timeout", f"{url}: event stream silent for {idle:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise PollError("connection", f"{url}: cannot connect: {exc.os_error.strerror or exc.os_error}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PollError("connection", f"{url}: event stream broken: {exc.__class__.__name__}") from None
        if not delivered:
            raise PollError("connection", f"{url}: event stream closed without an event")
        self.ctx.log.info("event stream ended; reconnecting", path=f"/v1/{name}")
        return delivered

    def _event(self, name: str, payload: Any, emit: Callable[[Reading], None]) -> None:
        try:
            if name == "status":
                self.status = parse.parse_bridge_status(payload)
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

    def _keep(self, reading: Reading) -> None:
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
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
            self._background = None
        if self._streams is not None:
            await self._streams.close()
            self._streams = None


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
    vendor=IOMETER, transport="local", options=OPTIONS, create=IOmeterBridge, default=True,
    kind="poll", default_interval=10.0, min_interval=1.0, check_target=check_target,
    description="IOmeter bridge, local API: /v1/reading and /v1/status, polled or as Server-Sent Events",
))
