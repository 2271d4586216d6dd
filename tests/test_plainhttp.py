"""The lean plain-HTTP client against a raw server on a real socket: every way a device's
embedded web server frames (or fails to frame) an answer."""

from __future__ import annotations

import asyncio

import pytest

from exporter.errors import PollError
from exporter.plainhttp import PlainHttpConnection


class RawServer:
    """Answers each request with the next scripted bytes (a callable may close or stall)."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.answers.pop(0)
                if callable(answer):
                    if await answer(writer) == "close":
                        break
                    continue
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def with_server(answers: list, run):
    server = RawServer(answers)
    host = await server.start()
    conn = PlainHttpConnection(host, user_agent="test-agent/1")
    try:
        return await run(conn, server)
    finally:
        conn.close()
        await server.stop()


async def test_keep_alive_reuses_one_connection_and_sends_host_and_agent():
    async def run(conn, server):
        first = await conn.get("/api/v1/data")
        second = await conn.get("/api")
        assert (first.status, first.json()) == (200, {"a": 1})
        assert second.json() == {"b": 2}
        assert first.headers["content-type"] == "application/json"  # case-insensitive
        assert server.connections == 1
        assert server.requests[0].startswith(b"GET /api/v1/data HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:" in server.requests[0]
        assert b"\r\nUser-Agent: test-agent/1\r\n" in server.requests[0]

    await with_server([ok(b'{"a": 1}'), ok(b'{"b": 2}')], run)


async def test_chunked_answer_split_over_many_writes():
    async def chunked(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b'{"total"', b': 12', b'34.5}'):
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")

    async def run(conn, server):
        assert (await conn.get("/x")).json() == {"total": 1234.5}
        assert (await conn.get("/x")).json() == {"again": True}
        assert server.connections == 1

    await with_server([chunked, ok(b'{"again": true}')], run)


async def test_answer_ended_by_closing_and_http_1_0():
    async def close_delimited(writer):
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
        return "close"

    async def run(conn, server):
        assert (await conn.get("/")).body == b"hello"
        assert (await conn.get("/")).body == b'{"n": 2}'  # a new connection for the next one
        assert server.connections == 2

    await with_server([close_delimited, ok(b'{"n": 2}')], run)


async def test_connection_close_header_opens_a_new_connection_next_time():
    async def run(conn, server):
        assert (await conn.get("/")).json() == 1
        assert (await conn.get("/")).json() == 2
        assert server.connections == 2

    await with_server([ok(b"1", "Connection: close\r\n"), ok(b"2")], run)


async def test_idle_connection_closed_by_the_device_is_retried_once():
    async def answer_then_close(writer):
        writer.write(ok(b"1"))
        await writer.drain()
        return "close"

    async def run(conn, server):
        assert (await conn.get("/")).json() == 1
        await asyncio.sleep(0.05)  # the device has dropped the idle connection by now
        assert (await conn.get("/")).json() == 2
        assert server.connections == 2

    await with_server([answer_then_close, ok(b"2")], run)


async def test_cut_answer_is_a_connection_error_not_a_short_body():
    async def cut(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"total\": 1")
        await writer.drain()
        return "close"

    async def run(conn, server):
        with pytest.raises(PollError) as info:
            await conn.get("/api/v1/data")
        assert info.value.reason == "connection"
        assert "ended early" in info.value.message and "/api/v1/data" in info.value.message

    await with_server([cut], run)


async def test_closed_without_answer_on_a_fresh_connection():
    async def hang_up(writer):
        return "close"

    async def run(conn, server):
        with pytest.raises(PollError) as info:
            await conn.get("/")
        assert info.value.reason == "connection"

    await with_server([hang_up], run)


@pytest.mark.parametrize("answer, reason", [
    (b"garbage\r\n\r\n", "http_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "http_error"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "http_error"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "http_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "too_large"),
])
async def test_malformed_or_oversized_answers(answer, reason):
    async def run(conn, server):
        with pytest.raises(PollError) as info:
            await conn.get("/")
        assert info.value.reason == reason

    await with_server([answer], run)


async def test_endless_chunked_body_is_cut_at_the_limit():
    async def flood(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        try:
            for _ in range(200):  # 13 MB, far beyond the limit
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        return "close"

    async def run(conn, server):
        with pytest.raises(PollError) as info:
            await conn.get("/")
        assert info.value.reason == "too_large"

    await with_server([flood], run)


async def test_a_timeout_closes_the_connection_and_the_next_request_works():
    async def stall(writer):
        await asyncio.sleep(5)

    async def run(conn, server):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await conn.get("/")
        assert (await conn.get("/")).json() == 3  # on a new connection: the old one's state is unknown
        assert server.connections == 2

    await with_server([stall, ok(b"3")], run)


async def test_refused_connection():
    server = RawServer([])
    host = await server.start()
    await server.stop()  # nothing listens there any more
    conn = PlainHttpConnection(host)
    with pytest.raises(PollError) as info:
        await conn.get("/")
    assert info.value.reason == "connection" and "cannot connect" in info.value.message
