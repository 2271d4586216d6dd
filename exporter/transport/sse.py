"""Server-Sent Events: the framing (WHATWG event stream), reading a response's events with an
idle limit, and what broke a stream as a PollError.

Vendor-neutral: the IOmeter bridge streams its readings this way, and GraphQL subscriptions over
SSE (the IOmeter Partner API) ride on the same reader.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import AsyncIterator

import aiohttp

from ..model.errors import PollError
from ..model.jsontext import label_text
from ..model.samples import ParseError

MAX_EVENT_BYTES = 1 << 20  # an event of a meter is a few kB at most; more is a fault
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None


class EventTooLarge(ParseError):
    """An event (or a line) longer than the decoder accepts: the stream is dropped."""


_LINE_BREAK = re.compile(rb"[\r\n]")


@dataclass
class SseDecoder:
    """Splits an event stream into events (WHATWG rules: `\\n`, `\\r\\n` or `\\r` line ends,
    `:` comments, multi-line `data`, dispatch on a blank line).

    Incremental: each chunk is searched for line ends once (bytes already searched are not
    searched again), so a long line in small pieces costs its length, not its length squared.
    An event (all its lines, including one still incomplete) longer than `max_bytes` raises
    EventTooLarge."""

    max_bytes: int = MAX_EVENT_BYTES
    _buffer: bytearray = field(default_factory=bytearray)
    _scanned: int = 0  # bytes of the buffer searched for a line end already
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _size: int = 0  # characters of the current event's data so far

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._buffer
        buffer += chunk
        events: list[SseEvent] = []
        start = 0  # where the current line begins
        while True:
            match = _LINE_BREAK.search(buffer, self._scanned)
            if match is None:
                self._scanned = len(buffer)
                break
            end = match.start()
            width = 1
            if buffer[end] == 0x0D:
                if end + 1 == len(buffer):  # a lone CR at the very end may still become CRLF
                    self._scanned = end
                    break
                if buffer[end + 1] == 0x0A:
                    width = 2
            if end - start > self.max_bytes:
                raise EventTooLarge(f"event stream: a line longer than {self.max_bytes} bytes")
            line = buffer[start:end].decode("utf-8", "replace")
            start = self._scanned = end + width
            event = self._line(line)
            if event is not None:
                events.append(event)
        if start:
            del buffer[:start]  # a bytearray drops its head without copying the rest
            self._scanned -= start
        if len(buffer) + self._size > self.max_bytes:
            raise EventTooLarge(f"event stream: an event larger than {self.max_bytes} bytes")
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
            self._size += len(value) + 1
            if self._size > self.max_bytes:
                raise EventTooLarge(f"event stream: an event larger than {self.max_bytes} bytes")
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return EVENT_STREAM in response.headers.get("Content-Type", "")


async def read_events(content: aiohttp.StreamReader, url: str, idle: float,
                      max_bytes: int = MAX_EVENT_BYTES) -> AsyncIterator[SseEvent]:
    """The events of a response body until it ends. A stream that keeps sending bytes
    (comments, a line that never ends) but no event for `idle` seconds is as good as silent
    (the socket's read timeout alone would never fire): PollError(timeout). An event over
    `max_bytes`: EventTooLarge."""
    loop = asyncio.get_running_loop()
    decoder = SseDecoder(max_bytes)
    last_event = loop.time()
    async for chunk in content.iter_any():
        events = decoder.feed(chunk)
        if not events:
            if loop.time() - last_event > idle:
                raise PollError("timeout", f"{url}: no complete event for {idle:g}s")
            continue
        last_event = loop.time()
        for event in events:
            yield event


async def read_bounded(content: aiohttp.StreamReader, limit: int, url: str) -> bytes:
    """The whole body, refused past `limit` bytes (read() alone may return only a part)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PollError("too_large", f"{url}: answer larger than {limit} bytes refused")
        chunks.append(chunk)
    return b"".join(chunks)


def stream_failure(exc: BaseException, url: str, connect_timeout: float, idle: float) -> PollError | None:
    """The PollError for what broke an event stream (the decoder's errors, aiohttp's), or None
    for anything else (a bug, which the caller lets through)."""
    if isinstance(exc, PollError):
        return exc
    if isinstance(exc, EventTooLarge):
        return PollError("too_large", f"{url}: {exc}")
    if isinstance(exc, ParseError):
        return PollError("parse", f"{url}: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return PollError("timeout", f"{url}: no connection within {connect_timeout:g}s")
    if isinstance(exc, asyncio.TimeoutError):
        return PollError("timeout", f"{url}: event stream silent for {idle:g}s")
    if isinstance(exc, aiohttp.ClientSSLError):
        return PollError("tls", f"{url}: TLS failed: {exc.__class__.__name__}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return PollError("connection", f"{url}: cannot connect: {exc.os_error.strerror or exc.os_error}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return PollError("parse", f"{url}: malformed HTTP answer: {label_text(str(exc.message), 120)}")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return PollError("connection", f"{url}: event stream broken: {exc.__class__.__name__}")
    if isinstance(exc, ValueError):  # the client refused to send the request (a malformed host)
        return PollError("config", f"{url}: the request cannot be sent ({exc.__class__.__name__})")
    return None
