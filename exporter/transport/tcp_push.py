"""The stream receiver: one TCP listener, and one TLS listener, (the `tcp_push:` section) for every
target whose device opens a connection to the exporter and writes its readings as JSON documents.

A device may send one document per connection and close it, or keep the connection and write
documents back to back (with or without blanks between them): `JsonStream` finds where each
document ends by counting brackets outside strings, without decoding, so a document is decoded
(by the one decoder for outside bytes, `model.jsontext`) only once it is whole. Nothing is
written back: the devices documented to upload this way expect no answer.

What protects it:
- `allowed_networks`: a connection from elsewhere is closed at once (`forbidden_network`).
- `tls_listen` with `tls_cert_file`/`tls_key_file`: TLS; with `tls_client_ca_file` only devices
  with a certificate from that CA get through the handshake (a failed handshake: `tls`).
- `max_message_bytes`: a document growing past it drops the connection (`too_large`); the
  bytes are never held beyond it.
- `read_timeout`: the TLS handshake, and each document from its first byte, must arrive within
  it (`timeout`, the connection dropped): a device dripping bytes holds nothing for long.
- `idle_timeout`: a connection that completes no document for this long is closed (not
  counted); blanks between documents do not keep it open.
- `max_messages_per_minute`: per source address; a sender over it is dropped (`rate_limited`).
- `max_connections`: at the limit, a connection is closed to make room (`over_limit`): the
  oldest of those that never delivered a reading of a configured device, else the one whose last
  reading is the oldest. A flood of connections churns through its own and cannot push the
  meters' kept connections out.

Every refusal is counted in `energy_meter_exporter_push_rejected_total{listener="tcp_push"}`.
A document that names a configured device but cannot be used also fails that device's target
(`parse`; a document cut off by the size or time limit: `too_large` / `timeout`). Bytes between
documents that cannot begin one (framing lost) drop the connection (`malformed`).

The listener knows no vendor: the vendor's `PushFormat` (shared with the HTTP push listener) says
where a document names its device.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..config.loader import SectionSpec, Settings, setting
from ..model import catalogue as M
from ..model.errors import PollError
from ..model.jsontext import loads as decode_json
from ..model.samples import ParseError
from ..web.serving import parse_listen_address
from .http_push import DeviceRouting, PushFormat, Sink, SourceRate, network_allowed, parse_networks, tls_context

LISTENER = "tcp_push"
DEFAULT_MAX_MESSAGE = 64 * 1024
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0  # longer than the meters' usual upload interval (60 s), so kept connections stay
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MESSAGES_PER_MINUTE = 120
CHUNK = 65536
MAX_UNKNOWN_LOGGED = 100  # distinct unknown ids logged once each; the counter counts them all
# Shown from the start at 0, so that rate() works from the first refusal on.
REASONS = ("unknown_sn", "malformed", "too_large", "forbidden_network", "rate_limited", "timeout", "tls",
           "over_limit")


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpPushSection(Settings):
    """The `tcp_push` section as written; TcpPushSettings is what the listener runs with."""

    listen: str | None = setting("str", help="[host]:port for plain TCP uploads (the meter's address host:port)")
    tls_listen: str | None = setting(
        "str", help="[host]:port for TLS uploads (the meter's address tls://host:port); needs tls_cert_file")
    tls_cert_file: str | None = setting("path", help="certificate (PEM) of the TLS listener (with tls_key_file)")
    tls_key_file: str | None = setting("path", help="private key (PEM) of tls_cert_file")
    tls_client_ca_file: str | None = setting("path", help="require client certificates signed by this CA")
    allowed_networks: tuple[str, ...] = setting("list", help="source networks (CIDR) allowed to connect; default: any")
    max_message_bytes: int = setting("int", default=DEFAULT_MAX_MESSAGE, minimum=256,
                                     help="a larger document drops the connection")
    max_messages_per_minute: int = setting(
        "int", default=DEFAULT_MESSAGES_PER_MINUTE, minimum=0,
        help="per source address, over it the connection is dropped; 0 = no limit (meters upload every 2 s at most)")
    read_timeout: float = setting(
        "duration", default=DEFAULT_READ_TIMEOUT, minimum=0.1,
        help="the TLS handshake, and each document from its first byte, must arrive within this")
    idle_timeout: float = setting("duration", default=DEFAULT_IDLE_TIMEOUT, minimum=1.0,
                                  help="a connection that completes no document for this long is closed (above the upload interval)")
    max_connections: int = setting(
        "int", default=DEFAULT_MAX_CONNECTIONS, minimum=1,
        help="connections at once; at the limit one is closed, first of those that delivered no reading")


OPTIONS = TcpPushSection.table()

SECTION = SectionSpec(
    name="tcp_push", options=OPTIONS, many=False,
    description="the listeners that meters in TCP/TLS upload mode connect to (targets with transport: tcp)",
)


def check_section(section: Mapping[str, Any]) -> Iterable[tuple[tuple, str]]:
    """Problems of the section, for check-config: (key path, message)."""
    for key in ("listen", "tls_listen"):
        if section.get(key):
            try:
                parse_listen_address(section[key], ":9100")
            except ValueError as exc:
                yield ("tcp_push", key), str(exc)
    try:
        parse_networks(section.get("allowed_networks"))
    except ValueError as exc:
        yield ("tcp_push", "allowed_networks"), str(exc)
    cert, key = section.get("tls_cert_file"), section.get("tls_key_file")
    if bool(cert) != bool(key):
        yield ("tcp_push", "tls_cert_file" if key else "tls_key_file"), "tls_cert_file and tls_key_file go together"
    elif section.get("tls_listen") and not cert:
        yield ("tcp_push", "tls_listen"), "a TLS listener needs tls_cert_file and tls_key_file"
    elif section.get("tls_client_ca_file") and not cert:
        yield ("tcp_push", "tls_client_ca_file"), "needs tls_cert_file and tls_key_file (client certificates are TLS)"
    elif cert and not section.get("tls_listen"):
        yield ("tcp_push", "tls_cert_file"), "is used by tls_listen only, which is not set"
    elif cert:
        try:
            tls_context(cert, key, section.get("tls_client_ca_file"))
        except ValueError as exc:
            yield ("tcp_push", "tls_cert_file"), str(exc)


@dataclass(frozen=True)
class TcpPushSettings:
    plain: tuple[str, int] | None
    tls: tuple[str, int] | None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    networks: tuple = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_messages_per_minute: int = DEFAULT_MESSAGES_PER_MINUTE
    read_timeout: float = DEFAULT_READ_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "TcpPushSettings":
        written = TcpPushSection.from_options(section)
        if not written.listen and not written.tls_listen:
            raise PollError("config", "tcp_push has neither listen nor tls_listen")
        problems = list(check_section(section))
        if problems:
            (_, key), message = problems[0]
            raise PollError("config", f"tcp_push.{key}: {message}")
        return cls(plain=parse_listen_address(written.listen) if written.listen else None,
                   tls=parse_listen_address(written.tls_listen) if written.tls_listen else None,
                   tls_cert_file=written.tls_cert_file, tls_key_file=written.tls_key_file,
                   tls_client_ca_file=written.tls_client_ca_file,
                   networks=parse_networks(written.allowed_networks),
                   max_message_bytes=written.max_message_bytes,
                   max_messages_per_minute=written.max_messages_per_minute,
                   read_timeout=written.read_timeout, idle_timeout=written.idle_timeout,
                   max_connections=written.max_connections)

    def key(self) -> tuple:
        return (LISTENER, self.plain, self.tls, self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file,
                self.networks, self.max_message_bytes, self.max_messages_per_minute, self.read_timeout,
                self.idle_timeout, self.max_connections)


# --- framing ---------------------------------------------------------------------------------------


class StreamError(Exception):
    """The stream cannot go on: `reason` is the refusal's (`too_large`, `malformed`); `documents`
    the whole ones that came before the fault, `partial` the start of the refused one."""

    def __init__(self, reason: str, message: str, documents: list[bytes], partial: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.documents = documents
        self.partial = partial


_BLANKS = re.compile(rb"[ \t\r\n]*")
_OUTSIDE = re.compile(rb'[{}\[\]"]')  # what changes the depth, or opens a string
_INSIDE = re.compile(rb'["\\]')  # what ends a string, or escapes its next byte


class JsonStream:
    """Splits a byte stream into JSON documents (objects or arrays), back to back or one per
    connection, without decoding them. Holds at most `limit` bytes of the document under way."""

    __slots__ = ("limit", "_pending", "_depth", "_in_string", "_escape")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False

    @property
    def pending(self) -> bytes:
        """The start of a document not yet ended."""
        return bytes(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        """The documents `data` ends; StreamError when framing is lost or a document is too large."""
        out: list[bytes] = []
        i, n, start = 0, len(data), 0
        while i < n:
            if self._depth == 0:  # between documents: blanks, then `{` or `[`
                i = _BLANKS.match(data, i).end()
                if i >= n:
                    break
                if data[i] not in b"{[":
                    raise StreamError("malformed", f"expected a JSON object between documents, got {data[i:i + 1]!r}",
                                      out)
                start, self._depth = i, 1
                i += 1
                continue
            if self._escape:
                self._escape, i = False, i + 1
                continue
            if self._in_string:
                found = _INSIDE.search(data, i)
                if found is None:
                    i = n
                elif found.group() == b'"':
                    self._in_string, i = False, found.end()
                elif found.end() < n:
                    i = found.end() + 1  # the escaped byte (it may be a quote)
                else:
                    self._escape, i = True, n
                continue
            found = _OUTSIDE.search(data, i)
            if found is None:
                i = n
                continue
            byte, i = found.group(), found.end()
            if byte == b'"':
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    size = len(self._pending) + i - start
                    if size > self.limit:
                        raise StreamError("too_large", f"a document of {size} bytes (limit {self.limit})", out,
                                          self._partial(data, start))
                    out.append(bytes(self._pending) + data[start:i] if self._pending else data[start:i])
                    self._pending.clear()
        if self._depth:
            if len(self._pending) + n - start > self.limit:
                raise StreamError("too_large", f"a document over {self.limit} bytes", out, self._partial(data, start))
            self._pending += data[start:]
        return out

    def _partial(self, data: bytes, start: int, size: int = 4096) -> bytes:
        """The start of the document under way (where a device names itself)."""
        return (bytes(self._pending[:size]) + data[start:start + size])[:size]


# --- the listener ----------------------------------------------------------------------------------


class _Connection:
    __slots__ = ("writer", "source", "dropped")

    def __init__(self, writer: asyncio.StreamWriter, source: str) -> None:
        self.writer = writer
        self.source = source
        self.dropped = False  # closed by the listener to make room


class _Protocol(asyncio.StreamReaderProtocol):
    """A connection's protocol; for TLS, reading waits until the handshake is set up, so the
    device's first bytes go to TLS and not to the plain stream."""

    def __init__(self, callback, tls: bool) -> None:
        super().__init__(asyncio.StreamReader(limit=CHUNK), callback)
        self._tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tls:
            transport.pause_reading()  # type: ignore[attr-defined]  # start_tls resumes it
        super().connection_made(transport)


@dataclass
class TcpPushListener(DeviceRouting):
    """The TCP and TLS servers for all stream-uploading targets of a vendor, whose `format` it speaks."""

    name = LISTENER

    settings: TcpPushSettings
    log: Any
    store: Any = None
    format: PushFormat = field(kw_only=True)
    sinks: dict[str, Sink] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    accepted: int = 0
    port: int = 0  # the plain listener's (bound) port
    tls_port: int = 0
    _servers: list = field(default_factory=list)
    # Open connections (_Connection -> None), oldest first: those that never delivered a reading
    # of a configured device, and those that did (by their last one).
    _unproven: dict = field(default_factory=dict)
    _proven: dict = field(default_factory=dict)
    _rate: SourceRate = field(init=False)
    _unknown_logged: set[str] = field(default_factory=set)
    _context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._rate = SourceRate(self.settings.max_messages_per_minute)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "TcpPushListener":
        s = self.settings
        if s.tls is not None:
            try:
                self._context = tls_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            except ValueError as exc:
                raise PollError("config", f"tcp_push: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            for address, tls in ((s.plain, False), (s.tls, True)):
                if address is None:
                    continue

                async def serve(reader, writer, tls=tls) -> None:
                    await self._serve(reader, writer, tls)

                server = await loop.create_server(lambda serve=serve, tls=tls: _Protocol(serve, tls), *address)
                self._servers.append(server)
                bound = server.sockets[0].getsockname()[1]
                if tls:
                    self.tls_port = bound
                else:
                    self.port = bound
        except OSError as exc:
            await self.close()
            raise PollError("config", f"tcp_push: cannot listen on {address[0]}:{address[1]}: "
                                      f"{exc.strerror or exc}") from None
        self.publish()
        self.log.info("tcp push listening", plain=f"{s.plain[0]}:{self.port}" if s.plain else None,
                      tls=f"{s.tls[0]}:{self.tls_port}" if s.tls else None,
                      client_certificates=bool(s.tls and s.tls_client_ca_file))
        return self

    async def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for connection in [*self._unproven, *self._proven]:
            connection.dropped = True
            connection.writer.transport.abort()
        for server in servers:
            await server.wait_closed()
        if self.store is not None:
            self.store.set_global(LISTENER, M.PUSH_REJECTED, [])

    # --- connections -----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not network_allowed(source, self.settings.networks):
            self.count("forbidden_network")
            writer.transport.abort()
            return
        connection = _Connection(writer, source)
        self._admit(connection)
        try:
            if tls:
                try:
                    async with asyncio.timeout(self.settings.read_timeout):
                        await writer.start_tls(self._context, ssl_handshake_timeout=self.settings.read_timeout)
                except (OSError, TimeoutError, ConnectionError, ssl.SSLError):
                    if not connection.dropped:
                        self.count("tls")
                    return
            await self._read(reader, connection)
        except (ConnectionError, OSError):
            pass  # the device went away: its target goes stale if it does not come back
        finally:
            self._unproven.pop(connection, None)
            self._proven.pop(connection, None)
            writer.transport.abort()

    async def _read(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        s = self.settings
        stream = JsonStream(s.max_message_bytes)
        since: float | None = None  # when the document under way began
        last = time.monotonic()  # when the last document ended (or the connection began)
        while True:
            now = time.monotonic()
            wait = s.idle_timeout - (now - last) if since is None else s.read_timeout - (now - since)
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    data = await reader.read(CHUNK)
            except TimeoutError:
                if since is not None:
                    self._cut_off(stream.pending, "timeout", PollError(
                        "timeout", f"an upload did not arrive whole within {s.read_timeout:g}s"))
                return  # (idle: closed without a word, the device reconnects for its next upload)
            if connection.dropped:
                return
            if not data:
                if since is not None:
                    self._cut_off(stream.pending, "malformed", PollError(
                        "parse", "upload cut off: the connection closed in the middle of a document"))
                return
            try:
                documents, broken = stream.feed(data), None
            except StreamError as exc:
                documents, broken = exc.documents, exc
            for document in documents:
                if not self._rate.allow(connection.source):
                    self.count("rate_limited")
                    return
                if self.receive(document):
                    self._unproven.pop(connection, None)
                    self._proven.pop(connection, None)
                    self._proven[connection] = None  # the latest reading, last
            if documents:
                last = time.monotonic()
            if broken is not None:
                if broken.reason == "too_large":  # the device that named itself in it is told
                    self._cut_off(broken.partial, "too_large", PollError("too_large", f"upload refused: {broken}"))
                else:  # bytes that begin no document: no device to blame, only the count
                    self.count(broken.reason)
                return
            if not stream.pending:
                since = None
            elif documents or since is None:
                since = time.monotonic()

    def _admit(self, connection: _Connection) -> None:
        if len(self._unproven) + len(self._proven) >= self.settings.max_connections:
            held = self._unproven or self._proven
            victim = next(iter(held))
            del held[victim]
            victim.dropped = True
            victim.writer.transport.abort()
            self.count("over_limit")
        self._unproven[connection] = None

    # --- documents -------------------------------------------------------------------------
    def receive(self, body: bytes) -> bool:
        """Route one document to its target; whether it was accepted."""
        try:
            document = decode_json(body, "upload")
        except ParseError as exc:
            sink = self.sink_named_in(body.decode("utf-8", "replace"))
            if sink is not None:
                sink.emit(PollError("parse", str(exc)))
            self.count("malformed")
            return False
        refusal = self.route(document, "uploaded document")
        if refusal is not None:
            self.count(refusal[0])
        return refusal is None

    def _cut_off(self, partial: bytes, reason: str, error: PollError) -> None:
        """A document that will never be whole: counted, and its device's target told when the
        part that came names one."""
        self.count(reason)
        sink = self.sink_named_in(partial[:self.settings.max_message_bytes].decode("utf-8", "replace"))
        if sink is not None:
            sink.emit(error)
