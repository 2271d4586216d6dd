"""A TCP proxy that misbehaves on command, placed between the exporter and a simulator.

Transport faults are the same for every protocol (HTTP, HTTPS, Modbus, MQTT, WebSocket), so
one proxy drives them all on real sockets:

- `pass`: forward both ways untouched.
- `refuse`: nothing listens (the port is closed; connections are refused).
- `blackhole`: accept, read, never answer (the client times out).
- `reset`: forward the request, then reset the connection after the first bytes of the answer.
- `drip`: forward the answer one byte per `drip_interval` seconds.
- `truncate`: forward only the first `truncate_at` bytes of the answer, then close cleanly.

Hostile modes break the protocol itself (see `hostile.py` for the bytes). HTTP/1.1 modes read
each answer from upstream and send it re-framed: `chunk:-6` (a negative chunk size),
`chunk:+6` (a signed one), `status_line` (a status code `int()` refuses), `content_length:conflict`
(two lengths that disagree), `endless:chunked` (a chunked body that never ends, sent as fast as
the client reads, up to `endless_cap` bytes, then silence). With `tls` (the device's server
context) and `upstream_tls`, the proxy ends the client's TLS itself in these modes, so HTTPS
devices get the same faults. Modbus/TCP modes rewrite each answer frame: `mbap:length` (a
header length shorter than the frame), `mbap:transaction` (another transaction id),
`mbap:truncated_pdu` (a byte count promising more registers than follow), `mbap:endless`
(frames of other transactions, without end). MQTT modes act on what the broker sends, once it
has acknowledged the subscription: `mqtt:garbage_frame` (a packet whose length field never
ends), `mqtt:topic_utf8` (every PUBLISH with invalid UTF-8 in its topic), `mqtt:endless` (a
PUBLISH announcing 256 MB, sent as fast as the client reads, then silence). Leaving a hostile
mode drops the connections it served.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from dataclasses import dataclass, field

from . import hostile

MODES = ("pass", "refuse", "blackhole", "reset", "drip", "truncate",
         *hostile.HTTP_MODES, *hostile.MODBUS_MODES, *hostile.MQTT_MODES)
HOSTILE = frozenset(hostile.HTTP_MODES + hostile.MODBUS_MODES + hostile.MQTT_MODES)
MAX_HEAD = 64 * 1024


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    mode: str = "pass"
    drip_interval: float = 1.0
    truncate_at: int = 200
    reset_after: int = 20
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    tls: ssl.SSLContext | None = None  # server side, for HTTP modes in front of an HTTPS device
    upstream_tls: ssl.SSLContext | None = None
    endless_cap: int = 16 * 1024 * 1024
    endless_full: int = 0  # endless answers the client read to the cap (it never gave up)
    _server: asyncio.base_events.Server | None = None
    _inner: asyncio.base_events.Server | None = None  # ends the client's TLS in HTTP modes
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def start(self) -> "FaultProxy":
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str) -> None:
        """Switch fault; `refuse` closes the listening socket, leaving it re-opens it on the same port."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode}")
        previous, self.mode = self.mode, mode
        if mode == "refuse" and self._server is not None:
            await self._close_server()
        elif previous == "refuse" and mode != "refuse":
            await self._listen()
        # Faults apply to open connections too; a connection a hostile mode served is in a
        # state no client can use again.
        if mode != "pass" or previous in HOSTILE:
            for task in list(self._tasks):
                task.cancel()

    async def _close_server(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._close_server()
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream_writer = None
        try:
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            if self.mode in hostile.HTTP_MODES:
                if self.tls is None:
                    await self._http(reader, writer)
                    return
                # Through a TLS server of our own, which ends the client's TLS.
                upstream_reader, upstream_writer = await asyncio.open_connection(self.host, await self._inner_port())
                forward = asyncio.create_task(self._pipe(reader, upstream_writer, faulty=False))
                try:
                    await self._pipe(upstream_reader, writer, faulty=False)
                finally:
                    forward.cancel()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            if self.mode in hostile.MODBUS_MODES or self.mode in hostile.MQTT_MODES:
                forward = asyncio.create_task(self._pipe(reader, upstream_writer, faulty=False))
                try:
                    if self.mode in hostile.MODBUS_MODES:
                        await self._modbus(upstream_reader, writer, self.mode)
                    else:
                        await self._mqtt(upstream_reader, writer, self.mode)
                    await forward  # silence until the client gives up
                finally:
                    forward.cancel()
                return
            forward = asyncio.create_task(self._pipe(reader, upstream_writer, faulty=False))
            try:
                await self._pipe(upstream_reader, writer, faulty=True)
            finally:
                forward.cancel()
        except (ConnectionError, asyncio.CancelledError, OSError, EOFError, asyncio.LimitOverrunError, ValueError):
            pass  # (a hostile mode meets what the client does about it)
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream_writer):
                if w is not None:
                    try:
                        w.close()
                    except Exception:
                        pass

    # --- hostile modes -------------------------------------------------------------------------
    async def _inner_port(self) -> int:
        if self._inner is None:
            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                self._tasks.add(task)
                try:
                    await self._http(reader, writer)
                except (ConnectionError, asyncio.CancelledError, OSError, EOFError, asyncio.LimitOverrunError,
                        ValueError):
                    pass
                finally:
                    self._tasks.discard(task)
                    writer.close()

            self._inner = await asyncio.start_server(serve, self.host, 0, ssl=self.tls)
        return self._inner.sockets[0].getsockname()[1]

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each request goes upstream; its answer comes back broken the way the mode says."""
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.upstream_host, self.upstream_port, ssl=self.upstream_tls)
        try:
            while True:
                request = await _read_message(reader, response=False)
                if request is None:
                    return
                mode = self.mode
                upstream_writer.write(request)
                await upstream_writer.drain()
                answer = await _read_message(upstream_reader, response=True)
                if answer is None:
                    return
                status_line, fields = hostile.split_head(answer[: answer.index(b"\r\n\r\n")])
                body = _body_of(answer)
                if mode == "endless:chunked":
                    writer.write(hostile.endless_head(status_line, fields, body))
                    await self._endless(writer, hostile.endless_chunk())
                    await reader.read()  # then silence, until the client gives up
                    return
                # The connection stays open: a client that accepts the answer asks again on it.
                writer.write(hostile.http_response(mode, status_line, fields, body))
                await writer.drain()
        finally:
            upstream_writer.close()

    async def _endless(self, writer: asyncio.StreamWriter, piece: bytes) -> None:
        """`piece` again and again, as fast as the client reads, up to `endless_cap` bytes."""
        sent = 0
        while sent < self.endless_cap:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
        self.endless_full += 1

    async def _modbus(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
        while True:
            try:
                header = await upstream.readexactly(6)
                frame = header + await upstream.readexactly(int.from_bytes(header[4:6], "big"))
            except asyncio.IncompleteReadError:
                return
            if mode == "mbap:endless":
                await self._endless(writer, hostile.modbus_garbage())
                return
            writer.write(hostile.modbus_frame(mode, frame))
            await writer.drain()

    async def _mqtt(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
        """Forward the broker's packets; once it has acknowledged a subscription, misbehave."""
        subscribed = False
        while True:
            packet = await _read_mqtt_packet(upstream)
            if packet is None:
                return
            kind = packet[0] & 0xF0
            if subscribed and mode == "mqtt:topic_utf8" and kind == 0x30:
                packet = _with_bad_topic(packet)
            writer.write(packet)
            await writer.drain()
            if kind == 0x90 and not subscribed:  # SUBACK
                subscribed = True
                if mode == "mqtt:garbage_frame":
                    writer.write(hostile.MQTT_GARBAGE_FRAME)
                elif mode == "mqtt:endless":
                    writer.write(hostile.MQTT_ENDLESS_HEAD)
                    await self._endless(writer, b"\0" * 65536)
                    return

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, faulty: bool) -> None:
        sent = 0
        while True:
            data = await reader.read(65536)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if faulty and self.mode == "reset" and sent + len(data) > self.reset_after:
                writer.write(data[: max(0, self.reset_after - sent)])
                await writer.drain()
                _reset(writer)
                return
            if faulty and self.mode == "truncate" and sent + len(data) >= self.truncate_at:
                writer.write(data[: self.truncate_at - sent])
                await writer.drain()
                writer.close()
                return
            if faulty and self.mode == "drip":
                for i in range(len(data)):
                    writer.write(data[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(self.drip_interval)
            else:
                writer.write(data)
                await writer.drain()
            sent += len(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN, as a crashed device or a NAT timeout does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _read_message(reader: asyncio.StreamReader, response: bool) -> bytes | None:
    """One HTTP/1.1 message (head and body) as it came, or None at the end of the connection.
    Bodies: Content-Length, chunked, or (answers only) up to the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    if len(head) > MAX_HEAD:
        return None
    _, fields = hostile.split_head(head[:-4])
    names = {name.lower(): value for name, value in fields}
    if b"chunked" in names.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            body += line + await reader.readexactly(size + 2)
            if size == 0:
                return head + bytes(body)
    if b"content-length" in names:
        return head + await reader.readexactly(int(names[b"content-length"]))
    if response and not head.startswith(b"HTTP/1.1 204") and not head.startswith(b"HTTP/1.1 304"):
        return head + await reader.read()
    return head


def _body_of(message: bytes) -> bytes:
    """The body of a message read by `_read_message` (de-chunked)."""
    end = message.index(b"\r\n\r\n") + 4
    _, fields = hostile.split_head(message[: end - 4])
    if not any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in fields):
        return message[end:]
    body, pos = bytearray(), end
    while True:
        line_end = message.index(b"\r\n", pos)
        size = int(message[pos:line_end].split(b";")[0].strip(), 16)
        if size == 0:
            return bytes(body)
        body += message[line_end + 2: line_end + 2 + size]
        pos = line_end + 2 + size + 2


async def _read_mqtt_packet(reader: asyncio.StreamReader) -> bytes | None:
    try:
        first = await reader.readexactly(1)
        length_bytes = b""
        length, multiplier = 0, 1
        while True:
            byte = await reader.readexactly(1)
            length_bytes += byte
            length += (byte[0] & 0x7F) * multiplier
            multiplier *= 128
            if not byte[0] & 0x80:
                break
        return first + length_bytes + await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


def _with_bad_topic(packet: bytes) -> bytes:
    """The PUBLISH with invalid UTF-8 put into its topic (after the first level)."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    body = packet[pos + 1:]
    size = int.from_bytes(body[:2], "big")
    topic, rest = body[2:2 + size], body[2 + size:]
    head, sep, tail = topic.partition(b"/")
    return hostile.mqtt_publish(head + sep + hostile.INVALID_UTF8 + tail, rest, packet[0])
