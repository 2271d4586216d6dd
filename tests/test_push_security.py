"""Push receivers never dial out on a message's say-so.

The HTTP push listener and the MQTT subscription take data from the network; nothing in a
request (body fields, URLs, Host and forwarding headers, topic names) may make the exporter
contact an address that is not configured. A trap socket listens on the named address and must
see no connection, while the configured meters keep being exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import textwrap

import aiohttp
import pytest

from exporter.daemon import Daemon
from exporter.model import catalogue as M
from exporter.web import statuspage
from simulators.iammeter_push import HttpPushMeter, MosquittoBroker, mosquitto_binary
from simulators.tls import new_authority

from .configs import load_config
from .conftest import (async_wait_until, exposition_text, free_port, push_listener_config, sample_value,
                       start_push_daemon, wait_listening)

SN = "3E0BAF87"
TRAP_HOST = "127.0.0.77"


class Trap:
    """A TCP listener that counts connections: any is a request the exporter should not make."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> "Trap":
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(handle, TRAP_HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{TRAP_HOST}:{self.port}/"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def hostile_bodies(meter: HttpPushMeter, trap: Trap) -> list[bytes]:
    doc = json.loads(meter.body())
    named = {**doc, "url": trap.url, "callback": trap.url, "server": f"{TRAP_HOST}:{trap.port}",
             "host": TRAP_HOST, "mqtt": f"mqtt://{TRAP_HOST}:{trap.port}"}
    return [
        json.dumps(named).encode(),
        json.dumps({**doc, "SN": f"{TRAP_HOST}:{trap.port}"}).encode(),
        json.dumps({**doc, "SN": trap.url}).encode(),
        trap.url.encode(),
        json.dumps({"$ref": trap.url}).encode(),
    ]


async def test_no_push_request_makes_the_exporter_connect_anywhere(tmp_path):
    port = free_port()
    broker = None
    mqtt_lines = ""
    if mosquitto_binary():
        broker = await MosquittoBroker(directory=tmp_path / "mosquitto").start()
        mqtt_lines = textwrap.dedent(f"""
            mqtt_brokers:
              - name: home
                host: 127.0.0.1
                port: {broker.port}
                reconnect_delay: 0.1
            """)
    (tmp_path / "c.yaml").write_text(
        f"state_directory: {tmp_path / 'state'}\n" + mqtt_lines + push_listener_config(port, SN)
        + (f"  - name: mqtt\n    vendor: iammeter\n    transport: mqtt\n    broker: home\n    sn: {SN}\n"
           "    interval: 2s\n" if broker else ""))
    trap = await Trap().start()
    daemon = Daemon(load_config(tmp_path / "c.yaml"))
    await daemon.start("127.0.0.1", 0)
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", serial=SN)
    try:
        await wait_listening(port)
        async with aiohttp.ClientSession() as session:
            # a genuine upload first: the listener works
            async with session.post(f"http://127.0.0.1:{port}/", data=meter.body()) as resp:
                assert resp.status < 300
            headers = {"Host": f"{TRAP_HOST}:{trap.port}", "X-Forwarded-Host": f"{TRAP_HOST}:{trap.port}",
                       "X-Forwarded-For": TRAP_HOST, "Forwarded": f"for={TRAP_HOST};host={TRAP_HOST}",
                       "Referer": trap.url, "Location": trap.url}
            statuses = []
            for body in hostile_bodies(meter, trap):
                for path in ("/", f"/{trap.url}", "/?url=" + trap.url):
                    async with session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as resp:
                        statuses.append(resp.status)
                        await resp.read()
            async with session.get(f"http://127.0.0.1:{port}/?redirect={trap.url}", headers=headers) as resp:
                await resp.read()
            if broker is not None:
                import aiomqtt

                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    for body in hostile_bodies(meter, trap):
                        await client.publish(f"device/{SN}/realtime", body)
                        await client.publish(f"device/{TRAP_HOST}:{trap.port}/realtime", body)
                        await client.publish(f"device/{SN}/realtime/{trap.url}", body)
            await asyncio.sleep(1.0)  # time for any (wrong) follow-up connection to happen
            text = exposition_text(daemon.store)
        assert trap.connections == 0, "a pushed message made the exporter connect to an address it was not given"
        assert daemon.store.targets["pushed"].up
        assert sample_value(text, M.PHASE_VOLTAGE.name, device="pushed", phase="l1") is not None
        # nothing named by a message turned into a target or a label
        assert TRAP_HOST not in text
        assert set(daemon.store.targets) == ({"pushed", "mqtt"} if broker else {"pushed"})
        assert any(status >= 400 for status in statuses), statuses
    finally:
        await daemon.stop()
        await trap.stop()
        if broker is not None:
            await broker.close()


@pytest.mark.parametrize("size", [10_000_000])
async def test_a_huge_push_is_refused_without_reading_it_all(tmp_path, size):
    daemon, port = await start_push_daemon(tmp_path, SN, "max_body_bytes: 4096\n")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/", data=b"{" + b" " * size + b"}") as resp:
                assert resp.status == 413
        await async_wait_until(lambda: "push_rejected" in exposition_text(daemon.store),
                               what="the refusal counted")
    finally:
        await daemon.stop()


# --- what protects the listener: a path token, TLS, client certificates -------------------------------

TOKEN = "k3J9-rQ2x_Vb7.Lm4~Tz8pW"


async def test_a_path_token_keeps_out_uploads_without_it_and_never_shows(tmp_path, capsys):
    (tmp_path / "push.token").write_text(TOKEN + "\n")
    daemon, port = await start_push_daemon(tmp_path, SN, f"path_token_file: {tmp_path / 'push.token'}\n")
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/{TOKEN}", serial=SN)
    try:
        status, reply = await meter.post_once()
        assert status == 200 and reply["successful"], reply
        await async_wait_until(lambda: daemon.store.targets["pushed"].up, what="the meter's upload received")
        wrong = ["/", "/upload", f"/{TOKEN[:-1]}", f"/{TOKEN}x", f"/x{TOKEN}", f"/{TOKEN.upper()}",
                 f"/api/{TOKEN}", f"/?token={TOKEN}"]
        replies = []
        async with aiohttp.ClientSession() as session:
            for path in wrong:
                async with session.post(f"http://127.0.0.1:{port}{path}", data=meter.body()) as resp:
                    replies.append((resp.status, await resp.text()))
            # the token is the first segment; what follows it is the meter's (any, unless `path` is set)
            async with session.post(f"http://127.0.0.1:{port}/{TOKEN}/api/v1/sensor/UploadSensor",
                                    data=meter.body()) as resp:
                assert resp.status == 200
        # a malformed request with the right token: aiohttp's error quotes the request line
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /{TOKEN}/\x00 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await reader.read(100)).startswith(b"HTTP/1.")
        writer.close()
        assert {status for status, _ in replies} == {404}
        assert len({text for _, text in replies}) == 1, "refusals must not differ by how close the guess was"
        text = exposition_text(daemon.store)
        assert sample_value(text, M.PUSH_REJECTED.name, listener="http_push", reason="bad_token") == len(wrong)
        page, doc = statuspage.render(daemon.view().status()), json.dumps(daemon.view().status().as_json())
        captured = capsys.readouterr()
        for where, content in [("metrics", text), ("status page", page), ("targets JSON", doc),
                               ("replies", repr(replies)), ("log", captured.out + captured.err),
                               ("settings", repr(daemon.config.sections))]:
            assert TOKEN not in content, f"the push token shows in the {where}"
    finally:
        await daemon.stop()


async def test_push_over_tls_and_with_client_certificates(tmp_path):
    authority = new_authority("Push CA", "tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    authority.issue("meter", name="client")
    stranger = new_authority("Other CA", "someone else", tmp_path / "other")
    stranger.issue("intruder", name="client")
    daemon, port = await start_push_daemon(tmp_path, SN, f"""
        tls_cert_file: {authority.directory / 'server.pem'}
        tls_key_file: {authority.directory / 'server.key'}
        tls_client_ca_file: {authority.ca_file}
        """)
    meter = HttpPushMeter("WEM3080T", url=f"https://127.0.0.1:{port}/", serial=SN)

    def client(directory=None) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(authority.ca_file))
        if directory is not None:
            context.load_cert_chain(directory / "client.pem", directory / "client.key")
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

    try:
        async with client(authority.directory) as session:
            status, _ = await meter.post_once(session)
            assert status == 200
        for directory in (None, stranger.directory):  # no certificate, or one of another CA
            async with client(directory) as session:
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    await meter.post_once(session)
        async with aiohttp.ClientSession() as session:  # plain HTTP to the TLS port
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                async with session.post(f"http://127.0.0.1:{port}/", data=meter.body()) as resp:
                    await resp.read()
        assert daemon.store.targets["pushed"].up
    finally:
        await daemon.stop()


async def test_stalled_tls_handshakes_are_held_to_the_connection_limit(tmp_path):
    """Connections that never begin their handshake hold no more than max_connections file
    descriptors (the oldest make room), and a meter still gets through."""
    authority = new_authority("Push CA", "tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    daemon, port = await start_push_daemon(tmp_path, SN, f"""
        tls_cert_file: {authority.directory / 'server.pem'}
        tls_key_file: {authority.directory / 'server.key'}
        max_connections: 8
        read_timeout: 60s
        """)
    meter = HttpPushMeter("WEM3080T", url=f"https://127.0.0.1:{port}/", serial=SN)
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(40):
            stalled.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.005)

        async def closed(reader: asyncio.StreamReader) -> bool:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                return await asyncio.wait_for(reader.read(1), 0.05) == b""
            return False

        async def still_open() -> int:
            return sum([not await closed(reader) for reader, _ in stalled])

        open_now = await still_open()
        assert open_now <= 8, f"{open_now} stalled handshakes held open past max_connections 8"
        context = ssl.create_default_context(cafile=str(authority.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            status, _ = await meter.post_once(session)
        assert status == 200
        await async_wait_until(lambda: daemon.store.targets["pushed"].up, what="the meter's reading")
    finally:
        for _, writer in stalled:
            writer.close()
        await daemon.stop()


@pytest.mark.parametrize("protection,expected", [
    ("path_token: short\n", "http_push.path_token: too short"),
    ("path_token: 'has/a slash and more'\n", "http_push.path_token: may hold only"),
    ("tls_cert_file: /nonexistent/cert.pem\n", "tls_cert_file and tls_key_file go together"),
    ("tls_cert_file: /nonexistent/c.pem\ntls_key_file: /nonexistent/k.pem\n", "cannot load the certificate"),
    ("tls_client_ca_file: /nonexistent/ca.pem\n", "needs tls_cert_file"),
])
def test_check_config_names_bad_push_protection(tmp_path, protection, expected):
    (tmp_path / "c.yaml").write_text(push_listener_config(8088, SN, protection))
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", f"--config.file={tmp_path / 'c.yaml'}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "short" not in proc.stderr.replace("too short", "") and "has/a slash" not in proc.stderr


async def test_a_forged_upload_cannot_poison_a_counter(tmp_path):
    """An upload claiming 1e12 kWh (no meter gets there) is refused sample by sample, and the
    meter's real readings right after it are exported: nothing is held back as "decreasing"."""
    daemon, port = await start_push_daemon(tmp_path, SN)
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", serial=SN)
    forged = json.loads(meter.body())
    forged["Datas"][0][3] = 1e12
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/", data=json.dumps(forged)) as resp:
                assert resp.status == 200
            real = json.loads(meter.body())
            async with session.post(f"http://127.0.0.1:{port}/", data=json.dumps(real)) as resp:
                assert resp.status == 200
        text = exposition_text(daemon.store)
        assert sample_value(text, "energy_meter_phase_energy_imported_joules_total", phase="l1",
                            device="pushed") == pytest.approx(real["Datas"][0][3] * 3.6e6)
        assert sample_value(text, M.SAMPLES_DROPPED.name, device="pushed", reason="out_of_range") == 1
        assert sample_value(text, "energy_meter_exporter_decreasing_readings_total", device="pushed") == 0
    finally:
        await daemon.stop()


# --- the TCP/TLS upload listener ----------------------------------------------------------------------


async def test_a_connection_flood_cannot_push_a_meter_off_the_tcp_listener(tmp_path):
    """Connections that deliver no reading (silent, or trickling blanks) are the ones closed to
    make room, and closed after idle_timeout anyway; the meter's kept connection stays."""
    from simulators.iammeter_tcp import TcpMeter

    port = free_port()
    (tmp_path / "c.yaml").write_text(
        f"tcp_push:\n  listen: 127.0.0.1:{port}\n  max_connections: 16\n  idle_timeout: 1s\n"
        f"targets:\n  - {{name: meter, vendor: iammeter, transport: tcp, sn: {SN}, interval: 2s}}\n")
    daemon = Daemon(load_config(tmp_path / "c.yaml"))
    await daemon.start("127.0.0.1", 0)
    meter = TcpMeter("WEM3080T", port=port, serial=SN, interval=0.1)
    flood: list[asyncio.StreamWriter] = []
    try:
        await wait_listening(port)
        await meter.start()
        await async_wait_until(lambda: daemon.store.targets["meter"].up, what="the meter read")
        for _ in range(100):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            flood.append(writer)
            await asyncio.sleep(0.01)
        sent = meter.sent
        await async_wait_until(lambda: meter.sent >= sent + 5, what="more uploads")
        text = exposition_text(daemon.store)
        assert sample_value(text, M.PUSH_REJECTED.name, listener="tcp_push", reason="over_limit") >= 84
        assert meter.connections == 1 and meter.errors == 0, "the meter's connection was closed"
        assert daemon.store.targets["meter"].up
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        flood.append(writer)
        for _ in range(50):  # a blank every 0.1 s, for longer than idle_timeout: not a sign of life
            if reader.at_eof() or reader.exception() is not None or writer.is_closing():
                break
            writer.write(b"\n")
            await asyncio.sleep(0.1)
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), 0.01)
        assert reader.at_eof() or reader.exception() is not None, "a connection trickling blanks was kept open"
        assert daemon.store.targets["meter"].up
    finally:
        for writer in flood:
            writer.close()
        await meter.stop()
        await daemon.stop()
