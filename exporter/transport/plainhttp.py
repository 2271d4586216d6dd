"""A lean HTTP/1.1 client for plain-HTTP devices on the local network: one keep-alive
connection per device, GET only.

Polling thousands of devices a second from one core, the general-purpose client's per-request
machinery (URL objects, cookie jar, connector bookkeeping, stream readers) cost more than the
whole rest of a poll. A device's local API needs none of it: a GET, a small body with a length
(or chunked, or ended by closing the connection), the same connection next time. Failures map to
`PollError` with the wording of `exporter.transport.http.request`.

Answers are parsed by llhttp (through httptools) as the bytes arrive, so a slow or hostile device
costs time linear in what it sends and nothing is scanned twice. Whatever the device sends ends the
poll: an answer, or `parse` (malformed status line, headers or chunk framing), `too_large` (head,
header count, chunk count or body over its limit) or `connection`. A connection that carried
anything malformed or unasked for is closed, never reused. Messages hold no bytes of the device's.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Mapping
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from ..model.errors import PollError
from .http import MAX_BODY_BYTES, Response

MAX_HEAD_BYTES = 64 * 1024  # status line and headers; a device's are a few hundred bytes
MAX_HEADERS = 128  # a device sends a handful; thousands of tiny ones are a flood
MAX_CHUNKS = 4096  # a device's chunked body comes in a few chunks; 1-byte chunks are an attack
MAX_INTERIM = 8  # 1xx answers before the real one
IDLE_SECONDS = 60.0  # an idle connection older than this is not trusted: devices drop them


class _Stop(Exception):
    """Raised inside a parser callback to end parsing; the reason is in `_Protocol.failure`."""


class _Protocol(asyncio.Protocol):
    """Feeds every byte of the answer to the parser as it arrives and resolves `waiter` with
    the `Response`, or with the `PollError` that ends the poll."""

    __slots__ = ("transport", "parser", "max_bytes", "max_raw", "waiter", "url", "retry", "lost", "eof",
                 "dirty", "received", "failure", "response", "keep_alive", "status", "header_list",
                 "headers", "head_bytes", "chunks", "interim", "body", "body_parts", "size", "until_eof")

    def __init__(self, max_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)  # one per connection: it follows keep-alive
        self.max_bytes = max_bytes
        # Bytes on the wire for one answer: body, head, trailers and chunk framing.
        self.max_raw = max_bytes + max_bytes // 8 + 2 * MAX_HEAD_BYTES
        self.waiter: asyncio.Future[Response] | None = None
        self.url = ""
        self.retry = False  # a reused connection: closed before any byte means "try once more"
        self.lost = False
        self.eof = False
        self.dirty = False  # bytes nobody asked for, or a broken answer: never reuse
        self.received = 0  # bytes of the current answer
        self.failure: PollError | None = None
        self.response: Response | None = None
        self.interim = 0  # 1xx answers so far
        self._reset_message()

    def _reset_message(self) -> None:
        self.keep_alive = False
        self.status = 0
        self.header_list: list[tuple[str, str]] = []
        self.headers: CIMultiDict | None = None  # set once the head is complete
        self.head_bytes = 0
        self.chunks = 0
        self.body: bytes | None = None  # the body when it came in one piece (no copy)
        self.body_parts: bytearray | None = None  # else the pieces, appended in place
        self.size = 0
        self.until_eof = False

    # --- one request ----------------------------------------------------------------------
    def begin(self, waiter: asyncio.Future[Response], url: str, retry: bool) -> None:
        self.waiter = waiter
        self.url = url
        self.retry = retry
        self.received = 0
        self.failure = None
        self.response = None
        self.interim = 0
        self._reset_message()
        if self.lost or self.eof:
            self._ended()

    def _fail(self, error: BaseException) -> None:
        self.dirty = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()  # stop reading whatever else it sends

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.dirty = True  # nothing was asked: the connection's state is unknown
            return
        self.received += len(data)
        if self.received > self.max_raw:
            self._fail(PollError("too_large", f"{self.url}: answer larger than {self.max_bytes} bytes refused"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.response is None:
                self._fail(PollError("parse", f"{self.url}: malformed HTTP answer: unexpected protocol switch"))
                return
            self.dirty = True
        except httptools.HttpParserError as exc:
            if self.response is None:
                self._fail(self.failure or PollError("parse", f"{self.url}: malformed HTTP answer: {exc}"))
                return
            self.dirty = True  # bytes after the answer: it stands, the connection does not
        if self.response is not None:
            waiter.set_result(self.response)
            self.response = None  # the caller holds it now (kept per device, they would add up)
        elif self.headers is None and self.received > MAX_HEAD_BYTES:
            self._fail(PollError("too_large", f"{self.url}: header section larger than {MAX_HEAD_BYTES} bytes refused"))

    def eof_received(self) -> bool:
        self.eof = True
        self._ended()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._ended()

    def _ended(self) -> None:
        """The device closed the connection: that ends a body without length, or the poll."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.until_eof:
            waiter.set_result(self._finish())
        elif self.received == 0 and self.retry:
            waiter.set_exception(_Retry())
        else:
            what = "closed without an answer" if self.received == 0 else "the answer ended early"
            waiter.set_exception(PollError("connection", f"{self.url}: connection lost: {what}"))

    # --- parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.response is not None:
            self.dirty = True  # a second answer nobody asked for
            raise _Stop()
        self._reset_message()

    def on_status(self, reason: bytes) -> None:
        self.head_bytes += len(reason) + 15  # "HTTP/1.1 200 " and CRLF
        if self.head_bytes > MAX_HEAD_BYTES:
            self._stop(PollError("too_large", f"{self.url}: header section larger than {MAX_HEAD_BYTES} bytes refused"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers is not None:
            return  # a trailer after a chunked body: nothing a device's API needs
        self.head_bytes += len(name) + len(value) + 4
        if len(self.header_list) >= MAX_HEADERS or self.head_bytes > MAX_HEAD_BYTES:
            what = f"more than {MAX_HEADERS} headers" if len(self.header_list) >= MAX_HEADERS \
                else f"header section larger than {MAX_HEAD_BYTES} bytes"
            self._stop(PollError("too_large", f"{self.url}: {what} refused"))
        self.header_list.append((name.decode("latin-1"), value.decode("latin-1").strip()))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.status = status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.headers = headers = CIMultiDict(self.header_list)
        if status < 200 or status in (204, 304):
            return
        length = headers.get("Content-Length")
        if length is not None:
            if int(length) > self.max_bytes:  # llhttp has checked it is digits only
                self._stop(PollError("too_large", f"{self.url}: answer of {int(length)} bytes refused (limit {self.max_bytes})"))
            return
        coding = headers.get("Transfer-Encoding")
        # Without a length or chunked framing the body ends when the connection does.
        self.until_eof = coding is None or not coding.rstrip().lower().endswith("chunked")

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks > MAX_CHUNKS:
            self._stop(PollError("too_large", f"{self.url}: answer in more than {MAX_CHUNKS} chunks refused"))

    def on_body(self, data: bytes) -> None:
        size = self.size + len(data)
        if size > self.max_bytes:
            self._stop(PollError("too_large", f"{self.url}: answer larger than {self.max_bytes} bytes refused"))
        self.size = size
        if self.body is None:
            self.body = data
        else:
            if self.body_parts is None:
                self.body_parts = bytearray(self.body)
            self.body_parts += data

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self._stop(PollError("parse", f"{self.url}: malformed HTTP answer: more than {MAX_INTERIM} interim answers"))
            return
        self.response = self._finish()

    def _finish(self) -> Response:
        body = bytes(self.body_parts) if self.body_parts is not None else (self.body or b"")
        response = Response(self.status, body, self.headers if self.headers is not None else CIMultiDict())
        self.until_eof = False
        if not self.keep_alive:
            self.dirty = True
        self._reset_message()
        return response

    def _stop(self, error: PollError) -> None:
        self.failure = error
        raise _Stop()


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
            reused = protocol is not None and not (protocol.lost or protocol.eof or protocol.dirty) \
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
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        assert protocol.transport is not None
        protocol.begin(waiter, url, retry)
        if not waiter.done():
            protocol.transport.write(request)
        try:
            response = await waiter
        finally:
            protocol.waiter = None
        if protocol.dirty:
            self.close()  # no keep-alive, or more bytes than the answer: do not trust this connection
        return response


class _Retry(Exception):
    """A reused connection was closed before any byte of the answer came."""
