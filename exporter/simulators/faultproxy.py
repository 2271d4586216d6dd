"""A TCP proxy that misbehaves on command, placed between the exporter and a simulator.

Transport faults are the same for every protocol (HTTP, HTTPS, Modbus, MQTT, WebSocket), so
one proxy drives them all on real sockets:

- `pass`: forward both ways untouched.
- `refuse`: nothing listens (the port is closed; connections are refused).
- `blackhole`: accept, read, never answer (the client times out).
- `reset`: forward the request, then reset the connection after the first bytes of the answer.
- `drip`: forward the answer one byte per `drip_interval` seconds.
- `truncate`: forward only the first `truncate_at` bytes of the answer, then close cleanly.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

MODES = ("pass", "refuse", "blackhole", "reset", "drip", "truncate")


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
    _server: asyncio.base_events.Server | None = None
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
        if mode != "pass":
            for task in list(self._tasks):  # faults apply to open connections too
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
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            forward = asyncio.create_task(self._pipe(reader, upstream_writer, faulty=False))
            try:
                await self._pipe(upstream_reader, writer, faulty=True)
            finally:
                forward.cancel()
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream_writer):
                if w is not None:
                    try:
                        w.close()
                    except Exception:
                        pass

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
