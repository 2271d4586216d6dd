"""`--web.config.file` (TLS, client certificates, bcrypt basic auth) with real TLS clients; password
checks under attack; `POST /-/reload` behind `--web.enable-lifecycle` and refused cross-site; gzip
only when `Accept-Encoding` allows it, OpenMetrics only when `Accept` asks for it."""

from __future__ import annotations

import asyncio
import base64
import http.client
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import bcrypt
import pytest

from exporter.config import webconfig
from exporter.config.webconfig import load_web_config
from exporter.daemon import Daemon
from simulators.homewizard import HomeWizardSimulator
from simulators.tls import new_authority

from .configs import load_config
from .conftest import ExporterProcess, free_port, sample_value

PASSWORD = "correct horse battery staple"


@pytest.fixture
def pki(tmp_path):
    authority = new_authority("Test CA", "energy-meter-exporter tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    authority.issue("prometheus", name="client")
    other = new_authority("Other CA", "someone else", tmp_path / "other")
    other.issue("intruder", name="client")
    return authority, other


def write_web_config(tmp_path, pki, client_auth: bool = False, users: bool = True):
    authority, _ = pki
    lines = ["tls_server_config:", f"  cert_file: {authority.directory / 'server.pem'}",
             f"  key_file: {authority.directory / 'server.key'}"]
    if client_auth:
        lines += ["  client_auth_type: RequireAndVerifyClientCert", f"  client_ca_file: {authority.ca_file}"]
    if users:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
        lines += ["basic_auth_users:", f"  prometheus: '{hashed}'"]
    path = tmp_path / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(tmp_path, web_config) -> ExporterProcess:
    config = tmp_path / "config.yaml"
    config.write_text("targets: []\n")
    pki = tmp_path / "pki"
    return ExporterProcess(config, free_port(), extra=[f"--web.config.file={web_config}"], scheme="https",
                           ca_file=str(pki / "ca.pem"), client_cert=(str(pki / "client.pem"), str(pki / "client.key")))


def get(url, ca_file, user=None, password=None, client=None):
    context = ssl.create_default_context(cafile=str(ca_file))
    if client:
        context.load_cert_chain(client / "client.pem", client / "client.key")
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_tls_and_basic_auth(tmp_path, pki):
    authority, _ = pki
    proc = start(tmp_path, write_web_config(tmp_path, pki))
    try:
        url = proc.url("/metrics")
        assert url.startswith("https://")
        status, body = get(url, authority.ca_file, "prometheus", PASSWORD)
        assert status == 200 and b"energy_meter_exporter_build_info" in body
        assert get(url, authority.ca_file, "prometheus", "wrong")[0] == 401
        assert get(url, authority.ca_file, "nobody", PASSWORD)[0] == 401
        assert get(url, authority.ca_file)[0] == 401
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            # plain HTTP to the TLS port gets nowhere
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=5)
        assert PASSWORD not in proc.logs()
    finally:
        proc.stop()


def test_client_certificates(tmp_path, pki):
    authority, other = pki
    proc = start(tmp_path, write_web_config(tmp_path, pki, client_auth=True, users=False))
    try:
        url = proc.url("/metrics")
        assert get(url, authority.ca_file, client=authority.directory)[0] == 200
        for client in (None, other.directory):  # no certificate, or one from another CA
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                get(url, authority.ca_file, client=client)
    finally:
        proc.stop()


@pytest.mark.parametrize("content,expected", [
    ("basic_auth_users:\n  alice: plaintext\n", "web.yml:2: basic_auth_users.alice: expected a bcrypt hash"),
    ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n", "cannot load the certificate"),
    ("tls_config:\n  x: 1\n", "web.yml:1: tls_config: unknown key"),
])
def test_bad_web_config_exits_2_with_file_and_line(tmp_path, content, expected):
    (tmp_path / "web.yml").write_text(content)
    (tmp_path / "c.yaml").write_text("targets: []\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={tmp_path / 'c.yaml'}",
                           f"--web.config.file={tmp_path / 'web.yml'}"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert expected in proc.stderr


# --- basic auth under attack ------------------------------------------------------------------------

def auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def basic_auth_file(tmp_path, cost: int, password: str = PASSWORD):
    hashed = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=cost)).decode().replace("$2b$", "$2y$", 1)
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


async def in_process(tmp_path, web_yml=None, lifecycle: bool = False, targets: str = "targets: []\n") -> Daemon:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_directory: {tmp_path / 'state'}\n" + targets)
    daemon = Daemon(load_config(path), web_config=load_web_config(str(web_yml)) if web_yml else None)
    await daemon.start("127.0.0.1", 0, lifecycle=lifecycle)
    return daemon


async def test_wrong_passwords_do_not_stall_scrapes_or_polls(tmp_path, loop_thread):
    """20 clients guessing passwords (bcrypt cost 13, half a second a guess) while Prometheus
    scrapes with the right one and a meter is polled every 0.5 s: the checks run beside the
    event loop, a few at a time, so neither waits for them."""
    meter = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False).start())
    config = tmp_path / "config.yaml"
    config.write_text(f"state_directory: {tmp_path / 'state'}\ntargets:\n  - name: kwh\n    vendor: homewizard\n"
                      f"    host: {meter.v1_host}\n    interval: 0.5s\n")
    proc = ExporterProcess(config, free_port(), extra=[f"--web.config.file={basic_auth_file(tmp_path, 13)}"])
    right = auth("prometheus", PASSWORD)
    url = proc.url("/metrics")

    async def polls(session) -> float:
        async with session.get(url, headers=right, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
            return sample_value(await resp.text(), "energy_meter_exporter_polls_total", device="kwh") or 0

    async def guess(session, stop_at: float, statuses: list) -> None:
        while time.monotonic() < stop_at:
            async with session.get(url, headers=auth("prometheus", "wrong")) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    await asyncio.sleep(0.2)

    try:
        async with aiohttp.ClientSession() as session:
            before = await polls(session)  # Prometheus has scraped before: its password is known good
            stop_at = time.monotonic() + 6.0
            statuses: list[int] = []
            attack = asyncio.gather(*(guess(session, stop_at, statuses) for _ in range(20)))
            await asyncio.sleep(0.5)
            latencies = []
            while time.monotonic() < stop_at - 0.5:
                started = time.monotonic()
                async with session.get(url, headers=right, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    assert resp.status == 200
                    await resp.read()
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.3)
            after = await polls(session)
            # Stopping with checks still queued: they are dropped, SIGTERM keeps its 5 s.
            proc.signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.proc.wait, 5) == 0
            await asyncio.gather(attack, return_exceptions=True)
        assert latencies, "no authorised scrape answered"
        assert after >= before + 4, f"the meter's polls stalled: {before} -> {after}"
        assert statuses and set(statuses) <= {401, 429}
        assert PASSWORD not in proc.logs()
    finally:
        proc.stop()
        loop_thread.run(meter.stop())


async def test_unknown_users_cost_a_bcrypt_check_like_wrong_passwords(tmp_path, monkeypatch):
    calls: list[tuple[bytes, bytes, str]] = []
    real = webconfig._checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed, threading.current_thread().name))
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", recording)
    long_password = "p" * 100  # bcrypt reads 72 bytes; htpasswd hashed those
    daemon = await in_process(tmp_path, basic_auth_file(tmp_path, 5, long_password))
    stored = daemon.web_config.users["prometheus"]
    url = f"http://127.0.0.1:{daemon.port}/-/healthy"

    async def status(user: str, password: str) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=auth(user, password)) as resp:
                return resp.status

    try:
        assert await status("nobody", "whatever") == 401
        assert len(calls) == 1
        _, hashed, thread = calls[0]
        assert hashed != stored and hashed[:7] == b"$2b$05$", "an unknown user must cost what a known one costs"
        assert thread != threading.current_thread().name, "bcrypt ran on the event loop"
        assert await status("prometheus", "wrong") == 401
        assert len(calls) == 2 and calls[1][1] == stored
        assert await status("prometheus", "x" * 200) == 401  # a long wrong password: 401, not 500
        assert await status("prometheus", long_password) == 200
        checks = len(calls)
        assert await status("prometheus", long_password) == 200
        assert len(calls) == checks, "a password already checked was checked again"
    finally:
        await daemon.stop()


async def test_password_checks_beyond_the_queue_are_refused_at_once(tmp_path, monkeypatch):
    gate = threading.Event()
    real = webconfig._checkpw

    def slow(password: bytes, hashed: bytes) -> bool:
        gate.wait(10)
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", slow)
    monkeypatch.setattr(webconfig, "MAX_WAITING_CHECKS", 2)
    daemon = await in_process(tmp_path, basic_auth_file(tmp_path, 4))
    url = f"http://127.0.0.1:{daemon.port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            async def attempt() -> int:
                async with session.get(url, headers=auth("prometheus", "wrong")) as resp:
                    return resp.status

            tasks = [asyncio.ensure_future(attempt()) for _ in range(10)]
            done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.ALL_COMPLETED)
            refused = [t.result() for t in done]
            assert refused.count(429) == 6, refused  # 2 checking + 2 waiting; the rest told at once
            gate.set()
            statuses = await asyncio.gather(*tasks)
        assert sorted(statuses) == [401] * 4 + [429] * 6
    finally:
        gate.set()
        await daemon.stop()


# --- POST /-/reload ---------------------------------------------------------------------------------


def with_extra_target(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / 'state'}
        targets:
          - name: added
            vendor: homewizard
            host: 127.0.0.1:9
            interval: 60s
        """))


async def post(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session:
        async with session.post(url, headers=headers or {}, data=data) as resp:
            return resp.status, await resp.text()


async def test_reload_over_http_needs_the_lifecycle_flag(tmp_path):
    daemon = await in_process(tmp_path)
    try:
        with_extra_target(tmp_path)
        status, text = await post(f"http://127.0.0.1:{daemon.port}/-/reload")
        assert status == 403 and "--web.enable-lifecycle" in text
        assert "added" not in daemon.store.targets
    finally:
        await daemon.stop()


@pytest.mark.parametrize("headers,data", [
    ({"Origin": "http://evil.example"}, None),
    ({"Origin": "null"}, None),
    ({"Sec-Fetch-Site": "cross-site"}, None),
    ({"Sec-Fetch-Site": "same-site"}, None),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n"),
    ({"Content-Type": "text/plain"}, b"reload"),
])
async def test_reload_refuses_cross_site_requests(tmp_path, headers, data):
    daemon = await in_process(tmp_path, lifecycle=True)
    url = f"http://127.0.0.1:{daemon.port}/-/reload"
    try:
        with_extra_target(tmp_path)
        status, text = await post(url, headers, data)
        assert status == 403 and "cross-site" in text
        assert "added" not in daemon.store.targets
        # The same server, asked as curl or a same-origin page asks, reloads.
        status, _ = await post(url, {"Origin": f"http://127.0.0.1:{daemon.port}", "Sec-Fetch-Site": "same-origin"})
        assert status == 200 and "added" in daemon.store.targets
    finally:
        await daemon.stop()


# --- Accept-Encoding and Accept ---------------------------------------------------------------------


@pytest.mark.parametrize("accept_encoding,gzipped", [
    ("gzip;q=0.0", False), ("gzip;q=0", False), ("gzip; q=0.000", False), ("deflate, gzip;q=0.0", False),
    ("gzip;q=0.001", True), ("gzip;q=0.5", True), ("gzip", True), ("br, gzip;q=1.0", True), ("identity", False),
])
async def test_gzip_only_when_accepted(tmp_path, accept_encoding, gzipped):
    daemon = await in_process(tmp_path)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(f"http://127.0.0.1:{daemon.port}/metrics",
                                   headers={"Accept-Encoding": accept_encoding}) as resp:
                body = await resp.read()
                assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped
                assert body.startswith(b"\x1f\x8b") is gzipped
    finally:
        await daemon.stop()


# Prometheus 2's Accept header, and Prometheus 3's with its default scrape protocols.
PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
                "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")


@pytest.mark.parametrize("accept,openmetrics", [
    ("application/openmetrics-text", True),  # no version: 1.0.0
    ("application/openmetrics-text; version=1.0.0", True),
    ("application/openmetrics-text;version=1.0.0;q=0", False),  # refused
    ("application/openmetrics-text; version=x", False),  # a version that cannot be read: text, no error
    (PROMETHEUS_2, True), (PROMETHEUS_3, True),
    ("text/plain; version=0.0.4", False), ("*/*", False),
])
async def test_openmetrics_only_when_accepted(tmp_path, accept, openmetrics):
    daemon = await in_process(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{daemon.port}/metrics", headers={"Accept": accept}) as resp:
                assert resp.status == 200
                content_type, body = resp.headers["Content-Type"], await resp.text()
        if openmetrics:
            assert content_type.startswith("application/openmetrics-text; version=1.0.0")
            assert body.endswith("# EOF\n")
        else:
            assert content_type.startswith("text/plain; version=0.0.4")
            assert "# EOF" not in body
        assert "energy_meter_exporter_build_info" in body
    finally:
        await daemon.stop()


@pytest.mark.parametrize("flag", ["--web.max-connections=0", "--web.max-connections=x",
                                  "--web.read-header-timeout=0s", "--web.read-header-timeout=soon"])
def test_bad_limit_flags_exit_2(flag):
    from exporter.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([flag])
    assert exit_.value.code == 2
