"""A lean HTTP/1.1 client for plain-HTTP devices on the local network: one keep-alive
connection per device, GET only.

Polling thousands of devices a second from one core, the general-purpose client's per-request
machinery (URL objects, cookie jar, connector bookkeeping, stream readers) cost more than the
whole rest of a poll. A device's local API needs none of it: a GET, a small body with a length
(or chunked, or ended by closing the connection), the same connection next time. Failures map to
`PollError` with the same reasons and wording as `exporter.http.request`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .errors import PollError
from .http import MAX_BODY_BYTES, Response

MAX_HEAD_BYTES = 64 * 1024  # status line and headers; a device's are a few hundred bytes
IDLE_SECONDS = 60.0  # an idle connection older than this is not trusted: devices drop them


class _Malformed(Exception):
    pass


class _Protocol(asyncio.Protocol):
    """Collects one response at a time into `buffer`; wakes `waiter` when it is complete or
    the connection ends."""

    __slots__ = ("transport", "buffer", "waiter", "lost", "eof", "max_bytes", "head", "received")

    def __init__(self, max_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False
        self.eof = False
        self.max_bytes = max_bytes
        self.head: _Head | None = None
        self.received = 0  # bytes of the current response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Head:
    __slots__ = ("status", "headers", "body_start", "length", "chunked", "keep_alive")

    def __init__(self, status: int, headers: CIMultiDict, body_start: int, length: int | None,
                 chunked: bool, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.body_start = body_start
        self.length = length
        self.chunked = chunked
        self.keep_alive = keep_alive


def _parse_head(buffer: bytearray, end: int, method: str) -> _Head:
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise _Malformed(f"not an HTTP status line: {lines[0][:40]!r}")
    version, status = status_line[0], int(status_line[1])
    headers: CIMultiDict = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _Malformed(f"bad header line: {line[:40]!r}")
        headers.add(name, value.strip())
    connection = headers.get("Connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    length: int | None = None
    if status in (204, 304) or 100 <= status < 200 or method == "HEAD":
        length = 0
    elif not chunked and "Content-Length" in headers:
        text = headers["Content-Length"]
        if not text.isdigit():
            raise _Malformed(f"bad Content-Length: {text[:20]!r}")
        length = int(text)
    if length is None and not chunked:
        keep_alive = False  # the body ends when the connection does
    return _Head(status, headers, end + 4, length, chunked, keep_alive)


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """The body of a chunked message beginning at `start`, and where the message ends; None
    while incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            if len(buffer) - pos > 1024:
                raise _Malformed("chunk size line too long")
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Malformed(f"bad chunk size: {size_text[:20]!r}") from None
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        data_start = line_end + 2
        data_end = data_start + size
        if len(buffer) < data_end + 2:
            return None
        if buffer[data_end:data_end + 2] != b"\r\n":
            raise _Malformed("chunk not followed by CRLF")
        parts.append(bytes(buffer[data_start:data_end]))
        pos = data_end + 2


class PlainHttpConnection:
    """GET requests to one device over one reused connection. The caller bounds each request
    in time (a cancelled request closes the connection: its state is unknown)."""

    def __init__(self, host: str, *, user_agent: str = "", max_bytes: int = MAX_BODY_BYTES) -> None:
        parts = urlsplit(f"http://{host}")
        self.authority = host  # what the Host header and messages show
        self.hostname = parts.hostname or host
        self.port = parts.port or 80
        self.max_bytes = max_bytes
        self._fixed_headers = f"Host: {host}\r\n" + (f"User-Agent: {user_agent}\r\n" if user_agent else "") + \
            "Accept: */*\r\nConnection: keep-alive\r\n"
        self._protocol: _Protocol | None = None
        self._last_used = 0.0
        self._busy = False

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        url = f"http://{self.authority}{path}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        request = f"GET {path} HTTP/1.1\r\n{self._fixed_headers}{extra}\r\n".encode("latin-1")
        if self._busy:
            raise PollError("internal", f"{url}: a request to this device is already running")
        self._busy = True
        try:
            loop = asyncio.get_running_loop()
            protocol = self._protocol
            reused = protocol is not None and not (protocol.lost or protocol.eof or protocol.buffer) \
                and loop.time() - self._last_used < IDLE_SECONDS
            if not reused:
                self.close()
                protocol = await self._connect(url)
            assert protocol is not None
            try:
                response = await self._exchange(protocol, request, url, retry=reused)
            except _Retry:
                # The device closed the idle connection just as we used it: once more on a new one.
                self.close()
                protocol = await self._connect(url)
                response = await self._exchange(protocol, request, url, retry=False)
            self._last_used = loop.time()
            return response
        except BaseException:
            self.close()
            raise
        finally:
            self._busy = False

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _connect(self, url: str) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: _Protocol(self.max_bytes), self.hostname, self.port)
        except socket.gaierror as exc:
            raise PollError("connection", f"{url}: cannot connect: {exc.strerror or exc}") from None
        except OSError as exc:
            raise PollError("connection", f"{url}: cannot connect: {exc.strerror or exc}") from None
        sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._protocol = protocol
        return protocol

    async def _exchange(self, protocol: _Protocol, request: bytes, url: str, retry: bool) -> Response:
        loop = asyncio.get_running_loop()
        protocol.buffer.clear()
        protocol.head = None
        protocol.received = 0
        assert protocol.transport is not None
        protocol.transport.write(request)
        while True:
            try:
                result = self._complete(protocol, url)
            except _Malformed as exc:
                raise PollError("http_error", f"{url}: malformed HTTP answer: {exc}") from None
            if result is not None:
                if not protocol.head.keep_alive:  # type: ignore[union-attr]
                    self.close()
                protocol.buffer.clear()  # anything arriving before the next request is suspect
                protocol.head = None  # its headers are the response's now (kept per device, they add up)
                return result
            if protocol.lost or protocol.eof:
                if protocol.received == 0 and retry:
                    raise _Retry()
                what = "closed without an answer" if protocol.received == 0 else "the answer ended early"
                raise PollError("connection", f"{url}: connection lost: {what}")
            protocol.waiter = loop.create_future()
            try:
                await protocol.waiter
            finally:
                protocol.waiter = None

    def _complete(self, protocol: _Protocol, url: str) -> Response | None:
        buffer = protocol.buffer
        head = protocol.head
        if head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise _Malformed("header section too large")
                return None
            head = protocol.head = _parse_head(buffer, end, "GET")
            if head.length is not None and head.length > self.max_bytes:
                raise PollError("too_large", f"{url}: answer of {head.length} bytes refused (limit {self.max_bytes})")
        start = head.body_start
        if len(buffer) - start > self.max_bytes + (self.max_bytes // 8 if head.chunked else 0):
            raise PollError("too_large", f"{url}: answer larger than {self.max_bytes} bytes refused")
        if head.length is not None:
            end = start + head.length
            if len(buffer) < end:
                return None
            body = bytes(buffer[start:end])
            if len(buffer) > end:
                head.keep_alive = False  # bytes nobody asked for: do not trust this connection
        elif head.chunked:
            found = _dechunk(buffer, start)
            if found is None:
                return None
            body, end = found
            if len(body) > self.max_bytes:
                raise PollError("too_large", f"{url}: answer larger than {self.max_bytes} bytes refused")
            if len(buffer) > end:
                head.keep_alive = False
        else:
            if not (protocol.eof or protocol.lost):
                return None
            body = bytes(buffer[start:])
        return Response(head.status, body, head.headers)


class _Retry(Exception):
    """A reused connection was closed before any byte of the answer came."""
