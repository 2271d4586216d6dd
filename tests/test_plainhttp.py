"""The lean plain-HTTP client against a raw server on a real socket: every way a device's
embedded web server frames (or fails to frame) an answer."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
from typing import Any

import pytest

from exporter.model.errors import PollError
from exporter.transport.http import Response
from exporter.transport.plainhttp import PlainHttpConnection
from simulators.homewizard import HomeWizardSimulator

from .conftest import ExporterProcess, free_port, http_get, sample_value, wait_until


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


async def with_server(answers: list, run, **options: Any):
    """`run(conn, server)` with a connection (`options` for it) to a RawServer giving `answers`."""
    server = RawServer(answers)
    host = await server.start()
    conn = PlainHttpConnection(host, user_agent="test-agent/1", **options)
    try:
        return await run(conn, server)
    finally:
        conn.close()
        await server.stop()


async def failed_get(conn: PlainHttpConnection, path: str = "/", within: float | None = None) -> PollError:
    """The PollError a GET of `path` ends with (no error fails the test); `within`: seconds it may take."""
    with pytest.raises(PollError) as info:
        async with asyncio.timeout(within):
            await conn.get(path)
    return info.value


def streamed_answer(head: bytes, piece: bytes, times: int):
    """An answer: `head`, then `piece` `times` over as fast as the client reads, then a hang-up
    (sooner if the client hangs up first)."""
    async def answer(writer: asyncio.StreamWriter) -> str:
        writer.write(head)
        try:
            for _ in range(times):
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass
        return "close"

    return answer


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
        error = await failed_get(conn, "/api/v1/data")
        assert error.reason == "connection"
        assert "ended early" in error.message and "/api/v1/data" in error.message

    await with_server([cut], run)


async def test_closed_without_answer_on_a_fresh_connection():
    async def hang_up(writer):
        return "close"

    async def run(conn, server):
        assert (await failed_get(conn)).reason == "connection"

    await with_server([hang_up], run)


@pytest.mark.parametrize("answer, reason", [
    (b"garbage\r\n\r\n", "parse"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "parse"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "parse"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "parse"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "too_large"),
])
async def test_malformed_or_oversized_answers(answer, reason):
    async def run(conn, server):
        assert (await failed_get(conn)).reason == reason

    await with_server([answer], run)


async def test_endless_chunked_body_is_cut_at_the_limit():
    piece = b"x" * 65536
    flood = streamed_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            f"{len(piece):x}\r\n".encode() + piece + b"\r\n", 200)  # 13 MB, far beyond the limit

    async def run(conn, server):
        assert (await failed_get(conn)).reason == "too_large"

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
    error = await failed_get(PlainHttpConnection(host))
    assert error.reason == "connection" and "cannot connect" in error.message


# --- hostile devices: framing attacks, floods, drips ---------------------------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.timeout(30)  # the hand-written dechunker looped for ever on "-6"
@pytest.mark.parametrize("size_line", [
    b"-6", b"+6", b" 6", b"6 ", b"6_0", b"0x6", b"6\t", b"ffffffffffffffffffffff", b"", b"6;a\x00b",
])
async def test_a_malformed_chunk_size_ends_the_poll_and_the_connection(size_line):
    bad = CHUNKED_HEAD + size_line + b"\r\n{\"a\":1}\r\n0\r\n\r\n"

    async def run(conn, server):
        error = await failed_get(conn, "/api/v1/data", within=5)
        assert error.reason == "parse"
        assert "malformed HTTP answer" in error.message and "/api/v1/data" in error.message
        assert (await conn.get("/")).json() == 2  # the broken connection is not reused
        assert server.connections == 2

    await with_server([bad, ok(b"2")], run)


async def test_too_many_chunks_are_refused():
    async def tiny_chunks(writer):
        writer.write(CHUNKED_HEAD + b"1\r\nx\r\n" * 5000 + b"0\r\n\r\n")
        await writer.drain()

    async def run(conn, server):
        error = await failed_get(conn)
        assert error.reason == "too_large" and "chunks" in error.message
        assert (await conn.get("/")).json() == 2
        assert server.connections == 2

    await with_server([tiny_chunks, ok(b"2")], run)


async def test_a_few_chunks_with_extensions_and_trailers_are_fine():
    answer = CHUNKED_HEAD + b"3;name=value\r\n[1,\r\n2\r\n2]\r\n0\r\nX-Trailer: t\r\n\r\n"

    async def run(conn, server):
        response = await conn.get("/")
        assert response.json() == [1, 2]
        assert "X-Trailer" not in response.headers  # trailers are not the answer's headers
        assert (await conn.get("/")).json() == 2
        assert server.connections == 1  # a well-framed answer keeps the connection

    await with_server([answer, ok(b"2")], run)


async def test_a_huge_declared_chunk_stops_at_the_body_limit():
    # 4 MB, far beyond the connection's 64 kB limit
    huge = streamed_answer(CHUNKED_HEAD + b"fffffffffff\r\n", b"x" * 65536, 64)

    async def run(conn, server):
        assert (await failed_get(conn, within=10)).reason == "too_large"

    await with_server([huge], run, max_bytes=65536)


@pytest.mark.parametrize("head, what", [
    (b"HTTP/1.1 200 OK\r\n" + b"X-Flood: 1\r\n" * 1000 + b"Content-Length: 2\r\n\r\n{}", "headers"),
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\nContent-Length: 2\r\n\r\n{}", "header section"),
    (b"HTTP/1.1 200 " + b"O" * 70000 + b"\r\nContent-Length: 2\r\n\r\n{}", "header section"),
])
async def test_header_floods_are_refused(head, what):
    async def run(conn, server):
        error = await failed_get(conn)
        assert error.reason == "too_large" and what in error.message
        assert (await conn.get("/")).json() == 2
        assert server.connections == 2

    await with_server([head, ok(b"2")], run)


async def test_an_endless_header_is_cut_at_the_head_limit():
    endless = streamed_answer(b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 1024, 1000)

    async def run(conn, server):
        error = await failed_get(conn, within=10)
        assert error.reason == "too_large" and "header section" in error.message

    await with_server([endless], run)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 -200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.x 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"ICY 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n continued\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 2\r\n\r\n{}",
])
async def test_an_invalid_status_line_or_header_is_a_parse_error(answer):
    async def run(conn, server):
        error = await failed_get(conn, within=5)
        assert error.reason == "parse" and "malformed HTTP answer" in error.message

    await with_server([answer], run)


async def test_an_interim_answer_is_skipped():
    async def run(conn, server):
        assert (await conn.get("/")).json() == 1

    await with_server([b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"1")], run)


async def test_bytes_after_the_answer_keep_it_but_not_the_connection():
    async def run(conn, server):
        assert (await conn.get("/")).json() == 1
        assert (await conn.get("/")).json() == 2
        assert server.connections == 2

    await with_server([ok(b"1") + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n9", ok(b"2")], run)


async def test_an_endless_body_without_length_is_cut_at_the_limit():
    endless = streamed_answer(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n",
                              b"x" * 65536, 200)  # 13 MB, far beyond the limit

    async def run(conn, server):
        assert (await failed_get(conn, within=20)).reason == "too_large"

    await with_server([endless], run)


class DripServer:
    """Answers one request from a thread of its own, in pieces of `piece` bytes (each its own TCP
    segment), so the sender's work does not count against the client's event loop."""

    def __init__(self, answer: bytes, piece: int) -> None:
        self.answer = answer
        self.piece = piece
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10)
            try:
                conn.recv(65536)
                view = memoryview(self.answer)
                for start in range(0, len(view), self.piece):
                    conn.sendall(view[start:start + self.piece])
                conn.recv(1)  # until the client hangs up
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(15)


async def poll_while_watching_the_loop(answer: bytes, piece: int) -> tuple[object, float]:
    """The outcome of one GET from a DripServer sending `answer` in `piece`-byte pieces, and the
    longest the event loop was kept from a 10 ms timer."""
    longest = 0.0
    done = False

    async def watch() -> None:
        nonlocal longest
        loop = asyncio.get_running_loop()
        while not done:
            before = loop.time()
            await asyncio.sleep(0.01)
            longest = max(longest, loop.time() - before)

    server = DripServer(answer, piece)
    conn = PlainHttpConnection(server.host)
    try:
        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(60):
                outcome: object = await conn.get("/api/v1/data")
        except PollError as exc:
            outcome = exc
        done = True
        await watcher
        return outcome, longest
    finally:
        conn.close()
        server.close()


def chunked(body: bytes, size: int) -> bytes:
    return CHUNKED_HEAD + b"".join(f"{len(body[i:i + size]):x}\r\n".encode() + body[i:i + size] + b"\r\n"
                                   for i in range(0, len(body), size)) + b"0\r\n\r\n"


async def test_a_600_kB_body_dripped_in_small_pieces_keeps_the_loop_responsive():
    body = b'{"pad": "' + b"x" * 600_000 + b'"}'
    outcome, longest = await poll_while_watching_the_loop(chunked(body, 1000), piece=16)
    assert isinstance(outcome, Response) and outcome.body == body
    assert longest < 1.0, f"the event loop was blocked for {longest:.2f} s"


@pytest.mark.timeout(120)
async def test_a_600_kB_body_in_one_byte_chunks_is_refused_without_blocking_the_loop():
    outcome, longest = await poll_while_watching_the_loop(CHUNKED_HEAD + b"1\r\nx\r\n" * 600_000 + b"0\r\n\r\n",
                                                          piece=4096)
    assert isinstance(outcome, PollError) and outcome.reason == "too_large"
    assert longest < 1.0, f"the event loop was blocked for {longest:.2f} s"


# --- the daemon beside a hostile device ----------------------------------------------------------

class HostileDevice(RawServer):
    """A HomeWizard v1 address whose every answer has a negative chunk size, once armed; before
    that it hangs up (a device not there yet)."""

    def __init__(self) -> None:
        super().__init__([])
        self.armed = False
        self.answered = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while self.armed:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(CHUNKED_HEAD + b"-6\r\n{\"a\":1}\r\n0\r\n\r\n")
                self.answered += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_hostile_device_leaves_the_daemon_serving_and_stoppable(tmp_path, loop_thread):
    hostile = HostileDevice()
    hostile_host = loop_thread.run(hostile.start())
    healthy = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False).start())
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        state_directory: state
        defaults:
          interval: 0.5s
        targets:
          - name: hostile
            vendor: homewizard
            host: {hostile_host}
          - name: healthy
            vendor: homewizard
            host: {healthy.v1_host}
    """))
    proc = ExporterProcess(config, free_port())
    try:
        metric = lambda name, **labels: sample_value(proc.metrics(), name, **labels)  # noqa: E731
        wait_until(lambda: metric("energy_meter_exporter_target_up", device="healthy") == 1, what="healthy up")
        loop_thread.call(setattr, hostile, "armed", True)
        wait_until(lambda: (metric("energy_meter_exporter_poll_errors_total", device="hostile", reason="parse") or 0) >= 3,
                   what="hostile polls failing as parse errors")
        assert hostile.answered >= 3
        # The daemon keeps answering and keeps polling the healthy device.
        assert http_get(proc.url("/-/healthy"), timeout=5)[0] == 200
        text = http_get(proc.url("/metrics"), timeout=5)[2].decode()
        assert sample_value(text, "energy_meter_exporter_target_up", device="hostile") == 0
        assert sample_value(text, "energy_meter_exporter_target_up", device="healthy") == 1
        polls = sample_value(text, "energy_meter_exporter_polls_total", device="healthy")
        wait_until(lambda: metric("energy_meter_exporter_polls_total", device="healthy") >= polls + 3,
                   what="the healthy device still polled")
        assert "Traceback" not in proc.logs()
    finally:
        code = proc.stop()  # SIGTERM, killed after 10 s
        loop_thread.run(hostile.stop())
        loop_thread.run(healthy.stop())
    assert code == 0, "the daemon did not stop on SIGTERM"
