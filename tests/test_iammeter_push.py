"""IAMMETER meters in HTTP upload mode: the shared push listener on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import textwrap

import aiohttp
import pytest

from exporter.config.loader import ConfigError, TargetConfig
from exporter.daemon import Daemon
from exporter.model import catalogue as M
from exporter.vendors.iammeter import push as iam_push
from simulators.iammeter_push import HttpPushMeter
from simulators.tls import new_authority

from .configs import load_config
from .push_targets import PushTargets
from .conftest import async_wait_until, free_port, sample_value

KWH = 3.6e6
SN = "3E0BAF87"
OTHER_SN = "5DB50BF4"


def target(sn: str = SN, name: str = "meter") -> TargetConfig:
    return TargetConfig(name=name, vendor="iammeter", transport="push", interval=2.0, timeout=2.0,
                        max_backoff=60.0, stale_after=60.0, jitter=0.0, options={"sn": sn})


class Exporter(PushTargets):
    """Push targets run by the scheduler's push loop into a store, as the daemon wires them."""

    def __init__(self, session, tmp_path, section: dict) -> None:
        super().__init__(tmp_path, "http_push", section, iam_push.SPEC, session)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def port():
    return free_port()


@contextlib.asynccontextmanager
async def exporter(session, tmp_path, **section):
    e = Exporter(session, tmp_path, section)
    try:
        yield e
    finally:
        await e.close()


async def test_an_upload_of_a_configured_meter_is_accepted(session, tmp_path, port, conformance):
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", conformance=conformance)
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        status, reply = await meter.post_once()
        assert (status, reply) == (200, {"successful": True, "message": "ok"})
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l3") == 263.5
        assert e.value(M.PHASE_ENERGY_EXPORTED.name, device="meter", phase="l1") == pytest.approx(11.201 * KWH)
        assert e.value(M.DEVICE_INFO.name, device="meter", serial=SN, model="WEM3080T") == 1
        assert e.value(M.TARGET_UP.name, device="meter") == 1
        assert e.rejected("unknown_sn") == 0  # shown from the start, so that rate() works at once


async def test_one_listener_for_all_push_targets(session, tmp_path, port):
    first = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/")
    second = HttpPushMeter("WEM3080", url=f"http://127.0.0.1:{port}/upload", serial=OTHER_SN.lower())
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
        a = await e.add(target(SN, "three-phase"))
        b = await e.add(target(OTHER_SN, "single-phase"))
        assert a.adapter.listener is b.adapter.listener
        assert (await first.post_once())[0] == 200
        assert (await second.post_once())[0] == 200  # any path; the SN's case does not matter
        assert e.value(M.ACTIVE_POWER.name, device="single-phase") == 152.0
        assert e.value(M.PHASE_ACTIVE_POWER.name, device="three-phase", phase="l3") == 1213
        await a.stop()
        assert (await first.post_once())[0] == 403  # its SN is no longer claimed
        await b.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await second.post_once()  # the last target closed the listener


async def test_an_unknown_sn_is_refused_and_counted(session, tmp_path, port):
    stranger = HttpPushMeter("WEM3080", url=f"http://127.0.0.1:{port}/", serial="ABCDEF01")
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        for expected in (1, 2):
            status, reply = await stranger.post_once()
            assert status == 403 and reply["successful"] is False and "ABCDEF01" in reply["message"]
            assert e.rejected("unknown_sn") == expected
        assert e.state().polls == 0 and e.value(M.ACTIVE_POWER.name) is None


@pytest.mark.parametrize("networks, status", [(["10.0.0.0/8", "192.168.0.0/16"], 403), (["127.0.0.0/8"], 200)])
async def test_only_allowed_source_networks_may_push(session, tmp_path, port, networks, status):
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/")
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}", allowed_networks=tuple(networks)) as e:
        await e.add(target())
        assert (await meter.post_once())[0] == status
        assert e.rejected("forbidden_network") == (1 if status == 403 else 0)
        assert (e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") is not None) == (status == 200)


async def test_an_oversized_body_is_refused_with_413(session, tmp_path, port):
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/")
    meter.fault = "huge"  # 70 kB, over the default 64 KiB
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}", max_body_bytes=65536) as e:
        await e.add(target())
        assert (await meter.post_once())[0] == 413

        async def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(20):
                yield b"x" * 8192

        async with session.post(f"http://127.0.0.1:{port}/", data=chunks()) as resp:
            assert resp.status == 413
        assert e.rejected("too_large") == 2
        assert e.state().polls == 0


@pytest.mark.parametrize("fault", ["garbage", "short_row", "nulls", "string_value"])
async def test_a_malformed_upload_is_refused_and_fails_its_target(session, tmp_path, port, fault):
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/")
    other = HttpPushMeter("WEM3080", url=f"http://127.0.0.1:{port}/", serial=OTHER_SN)
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        await e.add(target(OTHER_SN, "other"))
        assert (await meter.post_once())[0] == 200
        meter.fault = fault
        status, reply = await meter.post_once()
        assert status == 400 and reply["successful"] is False
        assert (await other.post_once())[0] == 200
        assert e.state().last_reason == "parse" and not e.state().up
        assert e.value(M.POLL_ERRORS.name, device="meter", reason="parse") == 1
        assert e.state("other").up and e.value(M.POLL_ERRORS.name, device="other", reason="parse") is None
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0  # the last good value
        assert e.rejected("malformed") == 1


async def test_a_body_that_names_no_configured_meter_is_only_counted(session, tmp_path, port):
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        for body in (b"<html>not json", b'{"Datas": [[1, 2, 3, 4, 5]]}', b'[1, 2]'):
            async with session.post(f"http://127.0.0.1:{port}/", data=body) as resp:
                assert resp.status == 400, body
        assert e.rejected("malformed") == 3
        assert e.state().polls == 0 and e.state().last_reason is None


async def test_path_method_and_rate_limit(session, tmp_path, port):
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/iammeter")
    url = f"http://127.0.0.1:{port}"
    async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}", path="iammeter",
                        max_requests_per_minute=3) as e:
        await e.add(target())
        assert (await meter.post_once())[0] == 200
        async with session.post(url + "/elsewhere", data=meter.body()) as resp:
            assert resp.status == 404
        async with session.get(url + "/iammeter") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        async with session.post(url + "/iammeter", data=meter.body()) as resp:
            assert resp.status == 429  # the fourth request of this minute, limit 3
        assert (e.rejected("not_found"), e.rejected("rate_limited")) == (1, 1)


async def test_a_port_in_use_is_a_target_error_not_a_crash(session, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with exporter(session, tmp_path, listen=f"127.0.0.1:{port}") as e:
            await e.add(target(), wait=False)
            await async_wait_until(lambda: e.state().last_reason == "config", what="reason config")
            assert f"cannot listen on 127.0.0.1:{port}" in e.state().last_error


# --- configuration and the daemon -----------------------------------------------------------------


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


TARGETS = "targets:\n  - name: a\n    vendor: iammeter\n    transport: {transport}\n    sn: 3E0BAF87\n"


@pytest.mark.parametrize("transport, section, expected", [
    ("push", "", ":4: targets[0].transport: transport push receives on the http_push listener, which has no `listen`"),
    ("push", "http_push:\n  listen: localhost\n", ":2: http_push.listen: 'localhost': expected [host]:port"),
    ("push", "http_push:\n  listen: ':8088'\n  allowed_networks: [10.0.0.0/33]\n",
     ":3: http_push.allowed_networks: '10.0.0.0/33' is not a network"),
    ("tcp", "", ":4: targets[0].transport: transport tcp receives on the tcp_push listeners, which have no address"),
    ("tcp", "tcp_push:\n  listen: localhost\n", ":2: tcp_push.listen: 'localhost': expected [host]:port"),
    ("tcp", "tcp_push:\n  tls_listen: ':9101'\n", ":2: tcp_push.tls_listen: a TLS listener needs tls_cert_file"),
    ("tcp", "tcp_push:\n  listen: ':9100'\n  allowed_networks: [10.0.0.0/33]\n",
     ":3: tcp_push.allowed_networks: '10.0.0.0/33' is not a network"),
    ("tcp", "tcp_push:\n  tls_listen: ':9101'\n  tls_cert_file: /nonexistent/c.pem\n  tls_key_file: /nonexistent/k.pem\n",
     ":3: tcp_push.tls_cert_file: cannot load the certificate"),
])
def test_config_problems_of_the_upload_listeners(tmp_path, transport, section, expected):
    config = write(tmp_path / "c.yaml", section + TARGETS.format(transport=transport))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert f"{config}{expected}" in str(info.value)


@pytest.mark.parametrize("transport, section", [("push", "http_push"), ("tcp", "tcp_push")])
def test_config_refuses_an_sn_on_two_upload_targets(tmp_path, transport, section):
    config = write(tmp_path / "c.yaml", f"""\
        {section}:
          listen: ":8088"
        targets:
          - {{name: a, vendor: iammeter, transport: {transport}, sn: 3E0BAF87}}
          - {{name: b, vendor: iammeter, transport: {transport}, sn: 3E0BAF87}}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert f"{config}:5: targets[1].sn: SN 3E0BAF87 is already received by {transport} target 'a'" in str(info.value)


async def test_the_daemon_exports_a_meter_that_posts(tmp_path, conformance):
    port = free_port()
    config = write(tmp_path / "exporter.yaml", f"""\
        state_directory: state
        http_push:
          listen: 127.0.0.1:{port}
          allowed_networks: [127.0.0.0/8]
        targets:
          - name: house
            vendor: iammeter
            transport: push
            sn: {SN}
            interval: 2s
    """)
    daemon = Daemon(load_config(config))
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", interval=0.2, conformance=conformance)
    await daemon.start("127.0.0.1", 0)
    try:
        await meter.start()
        async with aiohttp.ClientSession() as http:
            body = ""
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
                    body = await resp.text()
                if sample_value(body, M.PHASE_CURRENT.name, device="house", phase="l1") is not None:
                    break
                await asyncio.sleep(0.1)
        assert sample_value(body, M.PHASE_CURRENT.name, device="house", phase="l1", vendor="iammeter") == 9.99
        assert sample_value(body, M.PUSH_REJECTED.name, listener="http_push", reason="forbidden_network") == 0
        assert sample_value(body, M.TARGET_UP.name, device="house") == 1
        assert meter.last_reply == {"successful": True, "message": "ok"}

        # A changed listener section restarts the push targets on a new listener (same port).
        config.write_text(config.read_text().replace("[127.0.0.0/8]", "[192.0.2.0/24]"))
        ok, _ = await daemon.reload()
        assert ok
        await meter.stop()

        async def answered():  # the restarted target opens the new listener right after the reload
            try:
                return await meter.post_once()
            except aiohttp.ClientConnectionError:
                return None

        for _ in range(50):
            answer = await answered()
            if answer is not None:
                break
            await asyncio.sleep(0.05)
        status, reply = answer
        assert status == 403 and "allowed_networks" in reply["message"]
    finally:
        await meter.stop()
        await daemon.stop()


# --- HTTPS upload (a meter uploading to port 443) ------------------------------------------------

UPLOAD_TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


async def test_an_https_upload_carrying_the_path_token_is_accepted(tmp_path, port):
    authority = new_authority("Upload CA", "tests", tmp_path / "pki")
    authority.issue("127.0.0.1", ip_addresses=("127.0.0.1",), name="server")
    context = ssl.create_default_context(cafile=str(authority.ca_file))
    meter = HttpPushMeter("WEM3080T", url=f"https://127.0.0.1:{port}/{UPLOAD_TOKEN}")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as https:
        async with exporter(https, tmp_path, listen=f"127.0.0.1:{port}", path_token=UPLOAD_TOKEN,
                            tls_cert_file=str(authority.directory / "server.pem"),
                            tls_key_file=str(authority.directory / "server.key")) as e:
            await e.add(target())
            assert await meter.post_once(https) == (200, {"successful": True, "message": "ok"})
            assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l3") == 263.5
            # over HTTPS, but without the token: nothing is received here
            for path in ("/", f"/{UPLOAD_TOKEN[:-1]}"):
                async with https.post(f"https://127.0.0.1:{port}{path}", data=meter.body()) as resp:
                    assert resp.status == 404 and UPLOAD_TOKEN not in await resp.text()
            assert e.rejected("bad_token") == 2
            # plain HTTP to the HTTPS listener gets no answer
            plain = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/{UPLOAD_TOKEN}")
            with pytest.raises(aiohttp.ClientError):
                await plain.post_once()
            assert e.state().polls == 1
