"""Clients that hold connections instead of using them (slowloris, idle floods, file-descriptor
exhaustion), against the main listener and the push listener, on real sockets."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

import aiohttp

from exporter.config.webconfig import load_web_config
from exporter.daemon import Daemon
from exporter.web.serving import Limits
from simulators.homewizard import HomeWizardSimulator
from simulators.iammeter_push import HttpPushMeter

from .configs import load_config
from .conftest import (ExporterProcess, async_wait_until, exposition_text, free_port, http_get, sample_value,
                       start_push_daemon, wait_until)

SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 4000
LIVENESS = 5.0  # seconds an honest request may take while the attack runs


@dataclass
class Flood:
    """`count` connections, each sending one byte of a request head a second that never ends,
    until `seconds` have passed; with `reconnect`, a connection the server closed is opened again.
    Counts the connections the server closed."""

    host: str
    port: int
    count: int
    seconds: float
    reconnect: bool = False
    head: bytes = SLOW_HEAD
    opened: int = 0
    closed_by_server: int = 0
    failed_to_open: int = 0
    still_open_at_end: int = 0
    _tasks: list = field(default_factory=list)

    async def run(self) -> "Flood":
        stop_at = time.monotonic() + self.seconds
        await asyncio.gather(*(self._one(stop_at, i) for i in range(self.count)))
        return self

    async def _one(self, stop_at: float, index: int) -> None:
        await asyncio.sleep(index * 0.002)  # not all in one instant: the listen backlog is finite
        while time.monotonic() < stop_at:
            closed = await self._connection(stop_at)
            if not (closed and self.reconnect):
                return

    async def _connection(self, stop_at: float) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 3)
        except (OSError, asyncio.TimeoutError):
            self.failed_to_open += 1
            await asyncio.sleep(0.5)
            return True
        self.opened += 1
        eof = asyncio.ensure_future(reader.read(65536))
        try:
            for byte in self.head:
                if time.monotonic() >= stop_at:
                    self.still_open_at_end += 1
                    return False
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.wait([eof], timeout=1.0)
                if eof.done():
                    self.closed_by_server += 1
                    return True
            self.still_open_at_end += 1
            return False
        except (ConnectionError, OSError):
            self.closed_by_server += 1
            return True
        finally:
            eof.cancel()
            writer.close()


@dataclass
class Prober:
    """An honest client polling URLs in turn on fresh connections; every answer must come within
    LIVENESS seconds."""

    urls: list[str]
    answers: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    async def run(self, seconds: float, connector_options: dict | None = None) -> "Prober":
        stop_at = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(force_close=True, **(connector_options or {}))
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < stop_at:
                for url in self.urls:
                    started = time.monotonic()
                    try:
                        async with session.get(url, timeout=aiohttp.ClientTimeout(total=LIVENESS)) as resp:
                            await resp.read()
                            self.answers.append((url, resp.status, time.monotonic() - started))
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                        self.failures.append((url, repr(exc)))
                await asyncio.sleep(0.3)
        return self

    def check(self) -> None:
        assert not self.failures, f"honest requests failed during the attack: {self.failures[:5]}"
        assert self.answers and all(status == 200 for _, status, _ in self.answers), self.answers[:5]


async def start_daemon(tmp_path, limits: Limits, config_text: str = "targets: []\n", web_config=None) -> Daemon:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_directory: {tmp_path / 'state'}\n" + config_text)
    daemon = Daemon(load_config(path), web_config=web_config)
    await daemon.start("127.0.0.1", 0, limits=limits)
    return daemon


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server ends the connection within `seconds` (reading whatever it sends)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


# --- the main listener ------------------------------------------------------------------------------


async def test_slowloris_flood_is_cut_off_and_scrapes_keep_answering(tmp_path, loop_thread):
    meter = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False).start())
    daemon = await start_daemon(tmp_path, Limits(head_timeout=2.0, max_connections=512), textwrap.dedent(f"""
        targets:
          - name: kwh
            vendor: homewizard
            host: {meter.v1_host}
            interval: 0.5s
        """))
    base = f"http://127.0.0.1:{daemon.port}"
    try:
        await async_wait_until(lambda: daemon.store.targets["kwh"].up, what="the meter up")
        polls = daemon.store.targets["kwh"].polls
        flood = Flood("127.0.0.1", daemon.port, count=320, seconds=7.0)
        flood_run = asyncio.ensure_future(flood.run())
        prober = await Prober([f"{base}/metrics", f"{base}/-/healthy"]).run(6.0)
        await flood_run
        prober.check()
        # Every trickling connection was closed by the server (none lasted the 7 s of bytes).
        assert flood.opened >= 300
        assert flood.closed_by_server == flood.opened and flood.still_open_at_end == 0, flood
        assert daemon.store.targets["kwh"].polls >= polls + 6, "the meter's polls stalled during the flood"
    finally:
        await daemon.stop()
        loop_thread.run(meter.stop())


async def test_half_a_head_is_closed_after_the_head_timeout_and_a_whole_one_is_served(tmp_path):
    daemon = await start_daemon(tmp_path, Limits(head_timeout=1.0))
    try:
        # Half a head, then silence.
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert await closed_within(reader, LIVENESS), "a connection with half a request head was kept open"
        writer.close()
        # A connection that sends nothing at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        assert await closed_within(reader, LIVENESS)
        writer.close()
        # A whole head is served, and the keep-alive connection then waits for the next request
        # longer than the head timeout (it is idle, not slow) and serves it too.
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        request = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request)
        assert (await reader.readuntil(b"Healthy.\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.5)
        writer.write(request)
        assert (await reader.readuntil(b"Healthy.\n")).startswith(b"HTTP/1.1 200")
        # The second request's head trickled: closed again by the head timeout.
        for byte in request[:20]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)
        assert await closed_within(reader, LIVENESS)
        writer.close()
    finally:
        await daemon.stop()


async def test_idle_keep_alive_connections_are_closed(tmp_path):
    daemon = await start_daemon(tmp_path, Limits(idle_timeout=1.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await reader.readuntil(b"Healthy.\n")
        assert await closed_within(reader, LIVENESS), "an idle keep-alive connection was kept forever"
        writer.close()
    finally:
        await daemon.stop()


async def test_at_the_connection_limit_waiting_connections_make_room(tmp_path):
    """A flood from one address far above the limit, reconnecting as fast as it is cut off:
    connections still waiting for their head are closed at once to make room (the flooding
    address's own first), so Prometheus, from another address, gets in long before any head
    timeout."""
    daemon = await start_daemon(tmp_path, Limits(head_timeout=30.0, max_connections=20))
    base = f"http://127.0.0.1:{daemon.port}"
    try:
        flood = Flood("127.0.0.1", daemon.port, count=150, seconds=5.0, reconnect=True)
        flood_run = asyncio.ensure_future(flood.run())
        await asyncio.sleep(1.0)
        prometheus = {"local_addr": ("127.0.0.2", 0)}
        prober = await Prober([f"{base}/metrics", f"{base}/-/healthy"]).run(3.0, prometheus)
        await flood_run
        prober.check()
        assert flood.closed_by_server >= 100, flood  # far before the 30 s head timeout
    finally:
        await daemon.stop()


async def test_a_client_that_stops_reading_the_metrics_is_dropped(tmp_path, monkeypatch):
    from exporter.web import server as web

    monkeypatch.setattr(web, "SEND_TIMEOUT", 1.0)
    daemon = await start_daemon(tmp_path, Limits())
    # A body far bigger than the socket buffers, so that its writes wait for the reader.
    body = [b"# padding " + b"x" * 1_000_000 + b"\n"] * 40
    monkeypatch.setattr(daemon.store.cache, "chunks", lambda openmetrics: body)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port, limit=4096)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(3.0)  # not reading
        received = 0
        try:
            async with asyncio.timeout(LIVENESS):
                while chunk := await reader.read(65536):
                    received += len(chunk)
        except (ConnectionError, OSError):
            pass
        writer.close()
        assert received < sum(len(chunk) for chunk in body), "the whole body was kept for a reader that stopped"
    finally:
        await daemon.stop()


async def test_a_tls_handshake_that_never_ends_is_closed(tmp_path):
    from simulators.tls import new_authority

    authority = new_authority("Test CA", "tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(f"tls_server_config:\n  cert_file: {authority.directory / 'server.pem'}\n"
                       f"  key_file: {authority.directory / 'server.key'}\n")
    daemon = await start_daemon(tmp_path, Limits(head_timeout=1.0), web_config=load_web_config(web_yml))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and no more
        assert await closed_within(reader, LIVENESS), "a stalled TLS handshake was kept open"
        writer.close()
    finally:
        await daemon.stop()


# --- the push listener ------------------------------------------------------------------------------

SN = "3E0BAF87"


async def test_push_listener_cuts_off_slowloris_and_keeps_taking_uploads(tmp_path):
    daemon, port = await start_push_daemon(tmp_path, SN, "read_timeout: 2s\nmax_connections: 50\n")
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", serial=SN)
    try:
        flood = Flood("127.0.0.1", port, count=300, seconds=6.0, reconnect=True,
                      head=b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 4000)
        flood_run = asyncio.ensure_future(flood.run())
        await asyncio.sleep(0.5)
        statuses = []
        stop_at = time.monotonic() + 4.0
        # the meter is another host than the flooding one
        connector = aiohttp.TCPConnector(force_close=True, local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < stop_at:
                status, _ = await asyncio.wait_for(meter.post_once(session), LIVENESS)
                statuses.append(status)
                await asyncio.sleep(0.3)
        await flood_run
        assert statuses and set(statuses) == {200}, statuses
        assert flood.closed_by_server >= flood.opened - flood.still_open_at_end > 0
        assert flood.closed_by_server >= 250, flood
    finally:
        await daemon.stop()


async def test_push_connections_over_the_limit_are_closed_at_once_and_slow_bodies_time_out(tmp_path):
    daemon, port = await start_push_daemon(tmp_path, SN, "read_timeout: 3s\nmax_connections: 3\n")
    held = []
    try:
        # Three uploads whose bodies stall: each is being served (its handler reads the body).
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"SN\":")
            held.append((reader, writer))
        await asyncio.sleep(0.5)
        # A fourth connection finds every slot busy: it is closed at once, not left waiting.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        assert await closed_within(reader, 1.0), "a connection over the limit was left hanging"
        writer.close()
        # The stalled bodies end with 408 once read_timeout has passed, and are counted.
        for reader, writer in held:
            answer = await asyncio.wait_for(reader.read(65536), LIVENESS)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        text = exposition_text(daemon.store)
        assert sample_value(text, "energy_meter_exporter_push_rejected_total", listener="http_push",
                            reason="timeout") == 3
    finally:
        for _, writer in held:
            writer.close()
        await daemon.stop()


# --- file descriptors run out ---------------------------------------------------------------------------


def _limit_files(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_out_of_file_descriptors_logs_little_and_recovers(tmp_path):
    """A flood bigger than the process's open-file limit: accept fails (EMFILE) while it lasts;
    that is logged once, not as a traceback per attempt, and /metrics answers again after."""
    config = tmp_path / "config.yaml"
    config.write_text(f"state_directory: {tmp_path / 'state'}\ntargets: []\n")
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             "--web.read-header-timeout=2s", "--web.max-connections=1000"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path, preexec_fn=_limit_files(96))
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: http_get(url, timeout=1)[0] == 200, what="the exporter up")

        async def attack() -> Flood:
            return await Flood("127.0.0.1", port, count=400, seconds=8.0, reconnect=True).run()

        flood = asyncio.run(attack())
        assert flood.opened > 96, flood  # the flood did outnumber the descriptors
        wait_until(lambda: http_get(url, timeout=2)[0] == 200, timeout=20, what="/metrics again after the flood")
        assert proc.poll() is None
        text = log.read_text()
        assert "cannot accept connections" in text, text[-2000:]
        assert "Traceback" not in text, text[:3000]
        assert len(text) < 20_000, f"{len(text)} bytes of log in a few seconds"
        assert text.count("cannot accept connections") <= 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_malformed_requests_do_not_fill_the_log(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_directory: {tmp_path / 'state'}\ntargets: []\n")
    proc = ExporterProcess(config, free_port())
    try:
        for _ in range(100):
            for request in (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
                            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"):
                with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                    sock.sendall(request)
                    assert sock.recv(100).startswith(b"HTTP/1.")
        assert http_get(proc.url("/-/healthy"))[0] == 200
        text = proc.logs()
        assert "Traceback" not in text, text[:2000]
        assert 1 <= text.count("bad or broken HTTP requests") <= 3, text  # once per kind of error
    finally:
        proc.stop()
