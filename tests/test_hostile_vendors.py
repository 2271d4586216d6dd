"""Hostile devices on real sockets: what a device sends must never freeze, hang or poison a target.

Each fake device here is a small aiohttp (or raw asyncio) server answering crafted bytes; the
exporter is the real daemon (or the real adapter where the daemon adds nothing), and the checks
are what a user sees: `/metrics` and the status page answer, the hostile target is `up 0` with a
reason and its error counter moves (or, where the input is merely odd, the target stays up with
a sanitised label), and a healthy target beside it keeps polling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
import structlog
from aiohttp import web

from exporter.config.loader import Secret, TargetConfig
from exporter.daemon import Daemon
from exporter.model.errors import PollError
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors.homewizard.local import OPTIONS as HW_OPTIONS
from exporter.vendors.homewizard.local import HomeWizardLocal
from exporter.transport.sse import SseDecoder
from simulators.homewizard import HomeWizardSimulator
from simulators.iometer import EMBEDDED_READING, EMBEDDED_STATUS

from .conftest import async_wait_until, daemon_beside_control, exposition_text, sample_value

INTERVAL = 0.5
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
REPLACEMENT = "\ufffd"

# A P1 meter's /api/v1/data with one external gas meter; `{uid}` is spliced in as raw JSON text.
V1_DATA = (
    '{{"wifi_ssid":"home","wifi_strength":80,"total_power_import_kwh":1000.5,'
    '"total_power_export_kwh":2.5,"active_power_w":321,'
    '"external":[{{"unique_id":"{uid}","type":"gas_meter","timestamp":230125220957,'
    '"value":2569.646,"unit":"m3"}}]}}'
)


def v1_identity(serial: str = "5c2fafabcdef") -> str:
    return ('{"product_type":"HWE-P1","product_name":"P1 meter","serial":"%s",'
            '"firmware_version":"4.19","api_version":"v1"}' % serial)


class CraftedDevice:
    """An HTTP server answering each path with the status and raw bytes set for it."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.hits: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def set(self, path: str, body: str | bytes, status: int = 200) -> None:
        self.answers[path] = (status, body.encode() if isinstance(body, str) else body)

    async def start(self) -> "CraftedDevice":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        status, body = self.answers.get(request.path, (404, b'{"error":"not found"}'))
        return web.Response(status=status, body=body, content_type="application/json")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def running(tmp_path: Path, targets: str, body: Callable[[Daemon, HomeWizardSimulator], Awaitable[None]],
                  monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Run `body` against a daemon with `targets` and a healthy HomeWizard control target."""
    if monkeypatch is not None:
        _fast_intervals(monkeypatch)
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_beside_control(tmp_path, targets, control, INTERVAL, defaults="max_backoff: 0.5s\n")
    await daemon.start("127.0.0.1", 0)
    try:
        await body(daemon, control)
    finally:
        await daemon.stop()
        await control.stop()


def _fast_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let simulators be polled faster than real devices may be."""
    import dataclasses

    from exporter.vendors import load_all, registry

    load_all()
    for key, spec in list(registry._SPECS.items()):
        monkeypatch.setitem(registry._SPECS, key, dataclasses.replace(spec, min_interval=min(spec.min_interval, 0.1)))


async def get(daemon: Daemon, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{daemon.port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.text()


async def control_keeps_polling(daemon: Daemon) -> None:
    control = daemon.store.targets["control"]
    seen = control.polls
    await async_wait_until(lambda: control.polls >= seen + 2, timeout=15, what="the control's polls")
    assert control.up


async def running_beside_a_crafted_p1(tmp_path: Path, identity: str, data: str | bytes,
                                      check: Callable[[Daemon, CraftedDevice], Awaitable[None]],
                                      data_status: int = 200) -> None:
    """Run `check` against a daemon polling `hostile`, a crafted P1 meter answering `identity` at
    /api and `data` (with `data_status`) at /api/v1/data, beside the healthy control target."""
    device = await CraftedDevice().start()
    device.set("/api", identity)
    device.set("/api/v1/data", data, status=data_status)
    targets = f"  - name: hostile\n    vendor: homewizard\n    host: {device.host}\n"
    try:
        await running(tmp_path, targets, lambda daemon, _control: check(daemon, device))
    finally:
        await device.stop()


# --- HomeWizard: lone surrogates (`\ud800`) in device JSON -------------------------------------


async def test_a_lone_surrogate_in_an_external_meter_id_does_not_freeze_the_target(tmp_path):
    data = V1_DATA.format(uid="\\ud800gas\\u0007id")

    async def check(daemon: Daemon, device: CraftedDevice) -> None:
        state = daemon.store.targets["hostile"]
        await async_wait_until(lambda: state.polls >= 3, timeout=15, what="polls of the hostile target")
        status, text = await get(daemon, "/metrics")
        assert status == 200
        # the series is there, with the odd characters replaced in its label
        assert sample_value(text, "energy_meter_gas_cubic_meters_total", device="hostile",
                            meter=f"{REPLACEMENT}gas{REPLACEMENT}id") == pytest.approx(2569.646)
        assert sample_value(text, "energy_meter_exporter_target_up", device="hostile") == 1
        # it goes on polling: the counter follows the device
        device.set("/api/v1/data", data.replace("1000.5", "1001.5"))
        await async_wait_until(lambda: sample_value(exposition_text(daemon.store),
                                                    "energy_meter_energy_imported_joules_total",
                                                    device="hostile") == pytest.approx(1001.5 * 3.6e6),
                               timeout=15, what="the next reading")
        status, page = await get(daemon, "/")
        assert status == 200
        await control_keeps_polling(daemon)

    await running_beside_a_crafted_p1(tmp_path, v1_identity(), data, check)


async def test_a_lone_surrogate_in_the_identity_does_not_leave_the_target_pending(tmp_path):
    async def check(daemon: Daemon, _device: CraftedDevice) -> None:
        state = daemon.store.targets["hostile"]
        await async_wait_until(lambda: state.up and state.polls >= 2, timeout=15, what="the target up")
        status, text = await get(daemon, "/metrics")
        assert status == 200
        assert f"{REPLACEMENT}{REPLACEMENT}abc" in text  # the serial, in the info metric
        status, page = await get(daemon, "/")
        assert status == 200
        await control_keeps_polling(daemon)

    await running_beside_a_crafted_p1(tmp_path, v1_identity(serial="\\udc00\\ud800abc"), V1_DATA.format(uid="g1"),
                                      check)


async def test_a_lone_surrogate_in_an_error_body_keeps_the_status_page(tmp_path):
    async def check(daemon: Daemon, _device: CraftedDevice) -> None:
        state = daemon.store.targets["hostile"]
        await async_wait_until(lambda: state.errors.get("http_error", 0) >= 2, timeout=15, what="failed polls")
        assert not state.up and state.last_reason == "http_error"
        assert f"{REPLACEMENT} broken {REPLACEMENT}" in state.last_error
        status, page = await get(daemon, "/")
        assert status == 200 and "hostile" in page
        status, body = await get(daemon, "/api/v1/targets")
        assert status == 200
        status, text = await get(daemon, "/metrics")
        assert sample_value(text, "energy_meter_exporter_target_up", device="hostile") == 0
        await control_keeps_polling(daemon)

    await running_beside_a_crafted_p1(tmp_path, v1_identity(), '{"error":"\\ud800 broken \\udfff"}', check,
                                      data_status=500)


@pytest.mark.parametrize("body,what", [
    (b"[" * 200_000, "nested 200,000 deep"),
    (b'{"a":' * 100 + b"1" + b"}" * 100, "nested 100 deep"),
    (b'{"active_power_w": NaN}', "NaN"),
    (b'{"active_power_w": 1, "x": "\xff\xfe"}', "invalid UTF-8"),
])
async def test_undecodable_json_is_a_parse_error_not_an_internal_one(tmp_path, body, what):
    async def check(daemon: Daemon, _device: CraftedDevice) -> None:
        state = daemon.store.targets["hostile"]
        await async_wait_until(lambda: state.errors.get("parse", 0) >= 2, timeout=15, what=f"parse errors ({what})")
        assert set(state.errors) == {"parse"}, state.errors
        assert len(state.last_error) < 300
        status, text = await get(daemon, "/metrics")
        assert status == 200
        assert sample_value(text, "energy_meter_exporter_poll_errors_total", device="hostile", reason="parse") >= 2
        await control_keeps_polling(daemon)

    await running_beside_a_crafted_p1(tmp_path, v1_identity(), body, check)


# --- A token that cannot travel in a header ----------------------------------------------------


def homewizard_v2_target(host: str, token: str, ca_file: str) -> TargetConfig:
    raw = {"host": host, "token": Secret(token), "api_version": "v2", "ca_file": ca_file}
    options = {key: (value if isinstance(value, Secret) else HW_OPTIONS[key].convert(value)) for key, value in raw.items()}
    for key, option in HW_OPTIONS.items():
        if key not in options and option.default is not None:
            options[key] = option.default
    return TargetConfig(name="hw", vendor="homewizard", transport="local", interval=1.0, timeout=5.0,
                        max_backoff=1.0, stale_after=30.0, jitter=0.0, options=options)


@pytest.mark.parametrize("bad", ["\nX-Injected: 1", "\r", "\x00", "\x1b[31m"])
async def test_a_token_with_a_line_break_is_a_config_error_without_the_secret(tmp_path, bad):
    device = await HomeWizardSimulator("HWE-P1").start()
    device.tokens.add(TOKEN)
    secret = TOKEN[:16] + bad + TOKEN[16:]
    try:
        async with aiohttp.ClientSession() as session:
            ctx = AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger())
            adapter = HomeWizardLocal(homewizard_v2_target(device.v2_host, secret, str(device.ca_file)), ctx)
            for _ in range(2):  # the same answer every poll, not a crash on the second
                with pytest.raises(PollError) as err:
                    await adapter.poll()
                assert err.value.reason == "config"
                assert TOKEN[:16] not in err.value.message and TOKEN[16:] not in err.value.message
                assert "Authorization" in err.value.message
            await adapter.close()
    finally:
        await device.stop()


async def test_an_enphase_token_with_a_line_break_fails_each_poll_as_config(tmp_path):
    """A token the loader did not see (a token_file rewritten since) must not crash the adapter."""
    import base64

    from exporter.vendors.enphase.local import EnphaseLocal

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    claims = part(b'{"exp": 2000000000}')
    token = part(b"{}") + "." + claims + ".sig\nX-Evil: 1"
    device = await CraftedDevice().start()
    try:
        async with aiohttp.ClientSession() as session:
            target = TargetConfig(name="roof", vendor="enphase", transport="local", interval=10, timeout=5,
                                  max_backoff=60, stale_after=60, jitter=0,
                                  options={"host": device.host, "token": Secret(token), "nightly_window": "off"})
            adapter = EnphaseLocal(target, AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger()))
            for _ in range(2):
                with pytest.raises(PollError) as err:
                    await adapter.poll()
                assert err.value.reason == "config" and "sig" not in err.value.message
        assert device.hits == {}  # nothing was sent with it
    finally:
        await device.stop()


async def test_partner_credentials_that_cannot_travel_in_a_header_are_a_config_error(tmp_path):
    from exporter.vendors.iometer.partner import IOmeterPartner
    from simulators.iometer_partner import PartnerApiSimulator, demo_installations

    from .test_iometer_partner import make_target

    sim = PartnerApiSimulator(installations=demo_installations(1, 1))
    await sim.start()
    try:
        async with aiohttp.ClientSession() as session:
            ctx = AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger())
            bad = sim.partner_id + "\r\nX-Evil: 1"

            def target(**options: Any) -> TargetConfig:  # past the loader, which refuses it
                config = make_target(sim, auth="wsse", **options)
                return dataclasses.replace(config, options={**config.options, "partner_id": bad})

            query = IOmeterPartner(target(mode="query"), ctx)
            with pytest.raises(PollError) as err:
                await query.poll()
            assert err.value.reason == "config"
            streaming = IOmeterPartner(target(), ctx)
            emitted: list[Any] = []
            task = asyncio.create_task(streaming.run(emitted.append))
            try:
                await async_wait_until(lambda: any(isinstance(e, PollError) for e in emitted), timeout=10,
                                       what="the subscription's failure")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            failures = [e for e in emitted if isinstance(e, PollError)]
            assert {e.reason for e in failures} == {"config"}, failures
            assert all(sim.secret not in e.message for e in failures)
    finally:
        await sim.stop()


# --- IOmeter bridge, mode sse: every failure reaches the target ---------------------------------


async def raw_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(wrapped, "127.0.0.1", 0)


async def _read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def accept_and_close(reader, writer) -> None:
    await _read_head(reader)


async def answer_500(reader, writer) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!")
    await writer.drain()


async def answer_garbage(reader, writer) -> None:
    await _read_head(reader)
    writer.write(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
    await writer.drain()


async def stream_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    await writer.drain()


async def stream_endless_line(reader, writer) -> None:
    """An event stream whose one line never ends."""
    await _read_head(reader)
    await stream_head(writer)
    writer.write(b"data: ")
    for _ in range(3000):  # 3 MB, over the 1 MiB a bridge event may have
        writer.write(b"x" * 1024)
        await writer.drain()


async def stream_junk_events(reader, writer) -> None:
    await _read_head(reader)
    await stream_head(writer)
    writer.write(b"data: \xff\xfe{not json\n\n")
    await writer.drain()
    await asyncio.sleep(30)


def bridge_target(host: str) -> str:
    return (f"  - name: hostile\n    vendor: iometer\n    host: {host}\n    mode: sse\n"
            f"    reconnect_delay: 50ms\n    stream_idle_timeout: 2s\n    interval: 1s\n")


@pytest.mark.parametrize("server,reasons", [
    (None, {"connection"}),  # a closed port
    (accept_and_close, {"connection"}),
    (answer_500, {"http_error"}),
    (answer_garbage, {"parse", "connection"}),
    (stream_endless_line, {"too_large"}),
    (stream_junk_events, {"parse"}),
], ids=["closed_port", "accept_and_close", "status_500", "not_http", "endless_line", "junk_events"])
async def test_sse_failures_reach_the_target_with_a_reason(tmp_path, monkeypatch, server, reasons):
    listening = None
    if server is None:
        host = f"127.0.0.1:{closed_port()}"
    else:
        listening = await raw_server(server)
        host = f"127.0.0.1:{listening.sockets[0].getsockname()[1]}"

    async def check(daemon: Daemon, _control: HomeWizardSimulator) -> None:
        state = daemon.store.targets["hostile"]
        await async_wait_until(lambda: sum(state.errors.values()) >= 2, timeout=20, what="failures recorded")
        assert not state.up and state.last_reason in reasons, (state.last_reason, state.last_error)
        assert set(state.errors) <= reasons, state.errors
        status, text = await get(daemon, "/metrics")
        assert status == 200
        assert sample_value(text, "energy_meter_exporter_target_up", device="hostile") == 0
        assert sample_value(text, "energy_meter_exporter_poll_errors_total", device="hostile",
                            reason=state.last_reason) >= 1
        await control_keeps_polling(daemon)

    try:
        await running(tmp_path, bridge_target(host), check, monkeypatch)
    finally:
        if listening is not None:
            listening.close()


async def test_a_long_sse_line_in_small_pieces_is_read_in_linear_time(tmp_path, monkeypatch):
    """A 1 MB event line sent 1 kB at a time, then a good event: the good one arrives within a
    liveness bound (it took minutes of CPU when every piece was searched from the start)."""
    good = (b'data: {"__typename":"iometer.reading.v1","meter":{"number":"1EBZ0100000001","reading":'
            b'{"time":"2024-11-11T11:11:11Z","registers":[{"obis":"01-00:01.08.00*ff","value":7777,"unit":"Wh"}]}}}\n\n')

    async def slow_line(reader, writer) -> None:
        await _read_head(reader)
        await stream_head(writer)
        writer.write(b": the next line is long\ndata: \"")
        for _ in range(1000):
            writer.write(b"y" * 1000)
            await writer.drain()
        writer.write(b"\"\n\n" + good)
        await writer.drain()
        await asyncio.sleep(30)

    listening = await raw_server(slow_line)
    host = f"127.0.0.1:{listening.sockets[0].getsockname()[1]}"

    async def check(daemon: Daemon, _control: HomeWizardSimulator) -> None:
        state = daemon.store.targets["hostile"]
        started = time.monotonic()
        while not state.up:
            status, _ = await get(daemon, "/-/healthy")  # answers all along
            assert status == 200
            assert time.monotonic() - started < 20, "the good event after the long line never arrived"
            await asyncio.sleep(0.2)
        status, text = await get(daemon, "/metrics")
        assert sample_value(text, "energy_meter_energy_imported_joules_total", device="hostile") == 7777 * 3600

    try:
        await running(tmp_path, bridge_target(host), check, monkeypatch)
    finally:
        listening.close()


def test_the_sse_decoder_takes_a_long_line_in_small_pieces_in_bounded_time():
    decoder = SseDecoder()
    started = time.monotonic()
    assert decoder.feed(b"data: ") == []
    for _ in range(1000):
        assert decoder.feed(b"z" * 1000) == []
    events = decoder.feed(b"\r\n\r\n")
    assert [len(e.data) for e in events] == [1_000_000]
    assert time.monotonic() - started < 5  # a liveness bound: quadratic scanning took ~20 s


def test_the_sse_decoder_refuses_an_oversized_event_split_over_many_lines():
    decoder = SseDecoder(max_bytes=1000)
    with pytest.raises(ValueError):
        for _ in range(100):
            decoder.feed(b"data: " + b"q" * 50 + b"\n")


# --- IAMMETER over MQTT: a payload nested deeper than the decoder recurses ----------------------


async def test_a_deeply_nested_mqtt_payload_is_a_parse_error(tmp_path):
    from simulators.iammeter_push import MosquittoBroker

    from .conftest import require_binary
    from .test_iammeter_mqtt import SN, broker_item, exporter, target

    require_binary("mosquitto")
    import aiomqtt

    broker = await MosquittoBroker(directory=tmp_path / "broker").start()
    try:
        async with aiohttp.ClientSession() as session:
            async with exporter(session, tmp_path, broker_item(broker)) as e:
                runner = e.add(target())
                await async_wait_until(lambda: runner.adapter.connection is not None
                                       and runner.adapter.connection.connected.is_set(), timeout=10, what="subscribed")
                await asyncio.sleep(0.2)
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    for _ in range(2):
                        await client.publish(f"device/{SN}/realtime", b"[" * 60_000)
                state = e.store.targets["meter"]
                await async_wait_until(lambda: state.errors.get("parse", 0) >= 2, timeout=10, what="parse failures")
                assert not state.up and state.last_reason == "parse"
                assert e.value("energy_meter_exporter_push_rejected_total", listener="mqtt:local",
                               reason="malformed") >= 2
                assert runner.adapter.connection.handler_crashes == 0
    finally:
        await broker.close()


# --- HTTP push: a body nested deeper than the decoder recurses --------------------------------


async def test_a_deeply_nested_push_body_is_refused_as_malformed(tmp_path):
    from exporter.transport.http_push import PushListener, PushSettings
    from exporter.vendors.iammeter.push import FORMAT

    listener = await PushListener(PushSettings(host="127.0.0.1", port=0, max_body_bytes=1 << 20),
                                  structlog.get_logger(), format=FORMAT).start()
    try:
        async with aiohttp.ClientSession() as http:
            for body in (b"[" * 200_000, b'{"SN":"ABC","Data":[NaN,1,2,3,4]}', b'{"SN":"\xff"}'):
                async with http.post(f"http://127.0.0.1:{listener.port}/", data=body) as resp:
                    assert resp.status == 400, body[:20]
        assert listener.rejected["malformed"] == 3
    finally:
        await listener.close()


# --- Bridge events from the embedded copies are still fine (the decoder did not get stricter) ---


def test_embedded_bridge_documents_decode():
    import json

    from exporter.model.jsontext import loads

    for document in (EMBEDDED_READING, EMBEDDED_STATUS):
        assert loads(json.dumps(document).encode()) == document
