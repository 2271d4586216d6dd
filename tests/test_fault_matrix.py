"""The fault matrix: every fault, on real sockets, against a running daemon, for every transport.

Each transport has a rig: its simulator (for MQTT a real Mosquitto), a fault proxy in front of it
where the fault is on the wire (transport faults are the same bytes-on-a-socket for HTTP, HTTPS
and Modbus/TCP), a healthy control target beside it in the same daemon, and the list of faults
it supports with how to inject and clear each one. For each fault the test checks what a user
relies on: the daemon stays up and answers /metrics, the control target keeps its cadence, the
faulty target shows `up 0` with the expected reason, no wrong value is exported (every series of
the faulty target holds its healthy value or is absent), refused pushes are counted, and the
target recovers after the fault clears: a polled target at the first poll that starts after it
clears, a pushing one at the first message or reconnection after it clears. A fault the
exporter absorbs (an expired Enphase token it renews) must fail no poll at all. README.md's
fault table lists the same rows (transport, fault).
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from exporter.config import load_config
from exporter.daemon import Daemon
from exporter.scheduler import RETRIES_BEFORE_BACKOFF
from exporter.simulators.faultproxy import FaultProxy
from exporter.simulators.homewizard import HomeWizardSimulator
from exporter.simulators.iometer_partner import LEGACY_WS, PartnerApiSimulator, demo_installations, demo_values
from exporter.simulators.tls import new_authority

from .conftest import async_wait_until, free_port, require_binary, sample_value

INTERVAL = 0.5
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PUSH_EVERY = 0.2  # a pushing meter's upload interval (the firmware's fastest is 2 s)
STALE_AFTER = 1.5  # a pushing target silent this long is down (`stale`)


@dataclass
class Fault:
    name: str
    reasons: tuple[str, ...]  # empty: the exporter absorbs the fault and the target stays up
    apply: Callable[["Rig"], Awaitable[None] | None]
    clear: Callable[["Rig"], Awaitable[None] | None]
    # Every attempt during the fault fails again (False: the target just hears nothing more and
    # goes `stale` once).
    repeats: bool = True
    # Refused pushes are counted in energy_meter_exporter_push_rejected_total with this reason.
    counted: str | None = None
    # The exporter holds the call back (a cloud quota) for a while after the fault clears.
    held_back: bool = False
    # A rig of its own instead of the transport's.
    rig: Callable[..., Awaitable["Rig"]] | None = None
    # For an absorbed fault: the exporter has met it and dealt with it.
    handled: Callable[["Rig"], bool] | None = None


@dataclass
class Rig:
    device: Any
    proxy: FaultProxy | None
    control: HomeWizardSimulator
    daemon: Daemon
    secrets: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def text(self) -> str:
        return self.daemon.store.cache.encoded(False, False).decode()

    def value(self, name: str, **labels) -> float | None:
        return sample_value(self.text(), name, **labels)

    def refused(self, reason: str) -> float:
        """Pushes refused for `reason` so far by the rig's listener."""
        return self.value("energy_meter_exporter_push_rejected_total", listener=self.extra["listener"],
                          reason=reason) or 0.0

    def series(self) -> dict[str, str]:
        """The faulty target's measurement series (line without value -> value)."""
        out = {}
        for line in self.text().splitlines():
            if line.startswith("#") or line.startswith("energy_meter_exporter_") or 'device="faulty"' not in line:
                continue
            key, _, value = line.rpartition(" ")
            out[key] = value
        return out


async def _maybe(result) -> None:
    if result is not None:
        await result


def proxy_fault(mode: str, reasons: tuple[str, ...]) -> Fault:
    async def apply(rig: Rig) -> None:
        await rig.proxy.set_mode(mode)

    async def clear(rig: Rig) -> None:
        await rig.proxy.set_mode("pass")

    return Fault(f"proxy:{mode}", reasons, apply, clear)


def attr_fault(name: str, attribute: str, value: Any, reasons: tuple[str, ...], prefix: str = "device",
               **options: Any) -> Fault:
    """A simulator switch: set `device.<attribute>` to `value`, back to None to clear."""
    def apply(rig: Rig) -> None:
        setattr(rig.device, attribute, value)

    def clear(rig: Rig) -> None:
        setattr(rig.device, attribute, None)

    return Fault(f"{prefix}:{name}", reasons, apply, clear, **options)


PROXY_FAULTS = [
    proxy_fault("refuse", ("connection",)),
    proxy_fault("blackhole", ("timeout",)),
    proxy_fault("reset", ("connection",)),
    proxy_fault("drip", ("timeout",)),
    proxy_fault("truncate", ("connection", "parse")),
]

# --- HomeWizard (API v1 over HTTP, v2 over HTTPS) -----------------------------------------------

HOMEWIZARD_FAULTS = [
    *PROXY_FAULTS,
    attr_fault("garbage", "broken", "garbage", ("parse",)),
    attr_fault("truncated", "broken", "truncated", ("parse",)),
    attr_fault("empty", "broken", "empty", ("parse",)),
    attr_fault("wrong_types", "broken", "wrong_types", ("parse",)),
    attr_fault("huge", "broken", "huge", ("too_large",)),
    *(attr_fault(f"status:{code}", "broken", f"status:{code}", (reason,)) for code, reason in
      ((401, "unauthorized"), (403, "unauthorized"), (404, "http_error"), (429, "http_error"),
       (500, "http_error"), (503, "http_error"))),
]
FAULTS = HOMEWIZARD_FAULTS  # kept for other modules that import the HomeWizard list


def failures(state) -> int:
    """Failed polls (or failed messages, or a silence) the target has had so far."""
    return sum(state.errors.values())


def daemon_config(tmp_path, faulty: str, control: HomeWizardSimulator, head: str = "") -> Daemon:
    """A daemon with the faulty target (YAML lines, indented under targets) and the control."""
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / 'state'}
        defaults:
          interval: {INTERVAL}s
          timeout: 0.4s
          jitter: 0
        """) + head + "targets:\n" + faulty
        + f"  - name: control\n    vendor: homewizard\n    host: {control.v1_host}\n")
    return Daemon(load_config(tmp_path / "c.yaml"))


def slow(target: str) -> str:
    return target


def fast_transports(monkeypatch) -> None:
    """Lower every transport's interval floor to the matrix's interval: the floors spare real
    devices and clouds; simulators take it, and it keeps the matrix short."""
    import dataclasses

    from exporter.vendors import load_all, registry

    load_all()
    for key, spec in list(registry._SPECS.items()):
        monkeypatch.setitem(registry._SPECS, key, dataclasses.replace(spec, min_interval=min(spec.min_interval, INTERVAL)))


async def homewizard_rig(tmp_path, api: str) -> Rig:
    device = await HomeWizardSimulator("HWE-P1").start()
    device.tokens.add(TOKEN)
    upstream = device.http_port if api == "v1" else device.https_port
    proxy = await FaultProxy("127.0.0.1", upstream).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    v2 = f"    token: {TOKEN}\n    ca_file: {device.ca_file}\n" if api == "v2" else ""
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: homewizard\n    host: {proxy.address}\n" + v2, control)
    return Rig(device, proxy, control, daemon, secrets=(TOKEN,), stops=[device.stop])


# --- IAMMETER local HTTP API --------------------------------------------------------------------

IAMMETER_HTTP_FAULTS = [
    *PROXY_FAULTS,
    attr_fault("garbage", "fault", "garbage", ("parse",)),
    attr_fault("short_row", "fault", "short_row", ("parse",)),
    attr_fault("nulls", "fault", "nulls", ("parse",)),
    attr_fault("string_value", "fault", "string_value", ("parse",)),
    attr_fault("null_data", "fault", "null_data", ("parse",)),
    attr_fault("status:500", "fault", "error500", ("http_error",)),
]


async def iammeter_http_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.iammeter import IammeterHttpSimulator

    device = IammeterHttpSimulator("WEM3080T")
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, slow(f"  - name: faulty\n    vendor: iammeter\n    host: {proxy.address}\n"), control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


# --- IAMMETER Modbus/TCP ------------------------------------------------------------------------

IAMMETER_MODBUS_FAULTS = [
    # Modbus/TCP frames carry their length: a cut or reset answer leaves the client waiting for
    # the rest of the frame, so it ends as a timeout (the target is down all the same).
    *(proxy_fault(mode, ("connection", "timeout") if mode in ("reset", "truncate") else f.reasons)
      for mode, f in zip(("refuse", "blackhole", "reset", "drip", "truncate"), PROXY_FAULTS)),
    attr_fault("modbus_exception", "fault", "exception", ("modbus_exception",)),
    attr_fault("short_read", "fault", "short", ("parse",)),
]


async def iammeter_modbus_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.iammeter import IammeterModbusSimulator, meter_state

    state, _ = meter_state("WEM3080T")
    device = IammeterModbusSimulator(state)
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, slow(f"  - name: faulty\n    vendor: iammeter\n    transport: modbus\n"
                           f"    host: 127.0.0.1\n    port: {proxy.port}\n    model: WEM3080T\n"), control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


# --- Enphase IQ Gateway (HTTPS, token, pinned certificate) --------------------------------------


def forced(status: int, reason: str) -> Fault:
    def apply(rig: Rig) -> None:
        for path in rig.extra["paths"]:
            rig.device.force(path, status)

    def clear(rig: Rig) -> None:
        for path in rig.extra["paths"]:
            rig.device.force(path, None)

    return Fault(f"device:status:{status}", (reason,), apply, clear)


def _hang(rig: Rig) -> None:
    rig.device.hang()


def _wake(rig: Rig) -> None:
    rig.device.wake()


ENPHASE_FAULTS = [
    *PROXY_FAULTS,
    # A 401/403 on an endpoint while /auth/check_jwt accepts the token switches that endpoint
    # off (installer-only data), and a 404 does too: by design, so the token refused everywhere
    # is the fault a user meets; 404s are covered in tests/test_enphase_local.py.
    *(forced(code, reason) for code, reason in
      ((401, "unauthorized"), (403, "unauthorized"), (500, "http_error"), (503, "http_error"))),
    Fault("device:hang", ("timeout",), _hang, _wake),
]


async def enphase_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.enphase import GatewaySimulator


    device = await GatewaySimulator().start()
    token = device.mint_token()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, slow(f"  - name: faulty\n    vendor: enphase\n    host: {proxy.address}\n"
                           f"    token: {token}\n    tls_fingerprint: {device.fingerprint}\n"
                           f"    nightly_window: \"off\"\n"), control)
    rig = Rig(device, proxy, control, daemon, secrets=(token,), stops=[device.stop])
    rig.extra["paths"] = {"/auth/check_jwt"}
    rig.extra["token"] = token
    return rig


ENLIGHTEN_USER, ENLIGHTEN_PASSWORD = "owner@example.com", "enlighten-pass-5e1"


async def enphase_enlighten_rig(tmp_path, monkeypatch) -> Rig:
    """The gateway with Enlighten credentials instead of a pasted token: the exporter fetches
    its tokens itself; Enlighten sits behind a fault proxy of its own."""
    from exporter.simulators.enphase import EnlightenSimulator, GatewaySimulator, TokenIssuer

    issuer = TokenIssuer()
    device = await GatewaySimulator(issuer=issuer).start()
    enlighten = await EnlightenSimulator(issuer, {ENLIGHTEN_USER: ENLIGHTEN_PASSWORD}).start()
    to_enlighten = await FaultProxy("127.0.0.1", enlighten.port).start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: enphase\n    host: {proxy.address}\n"
                           f"    username: {ENLIGHTEN_USER}\n    password: {ENLIGHTEN_PASSWORD}\n"
                           f"    enlighten_url: http://{to_enlighten.address}\n"
                           f"    token_url: http://{to_enlighten.address}\n"
                           f"    tls_fingerprint: {device.fingerprint}\n    nightly_window: \"off\"\n", control)
    rig = Rig(device, proxy, control, daemon, secrets=(ENLIGHTEN_PASSWORD,),
              stops=[to_enlighten.stop, enlighten.stop, device.stop])
    rig.extra.update(enlighten=enlighten, to_enlighten=to_enlighten)
    return rig


def _expire_tokens(rig: Rig) -> None:
    rig.extra["logins"] = rig.extra["enlighten"].login_calls if "enlighten" in rig.extra else 0
    rig.device.expire_tokens()


def _renewed(rig: Rig) -> bool:
    return rig.extra["enlighten"].login_calls > rig.extra["logins"]


async def _expire_with_enlighten_away(rig: Rig) -> None:
    await rig.extra["to_enlighten"].set_mode("refuse")
    _expire_tokens(rig)


async def _enlighten_back(rig: Rig) -> None:
    await rig.extra["to_enlighten"].set_mode("pass")


async def _paste_new_token(rig: Rig) -> None:
    """What the user does: a new token in the configuration, then a reload (SIGHUP)."""
    fresh = rig.device.mint_token()
    rig.secrets += (fresh,)
    path = Path(rig.daemon.config.path)
    path.write_text(path.read_text().replace(rig.extra["token"], fresh))
    ok, message = await rig.daemon.reload()
    assert ok, message


ENPHASE_TOKEN_FAULTS = [
    # The gateway refuses the token it accepted so far, as it does once the token expires.
    Fault("token:expired:pasted", ("unauthorized",), _expire_tokens, _paste_new_token),
    Fault("token:expired:renewed", (), _expire_tokens, lambda rig: None, rig=enphase_enlighten_rig,
          handled=_renewed),
    Fault("token:expired:enlighten_down", ("connection",), _expire_with_enlighten_away, _enlighten_back,
          rig=enphase_enlighten_rig),
]


# --- IOmeter local bridge -----------------------------------------------------------------------


def bridge_body(name: str, body: bytes, reasons: tuple[str, ...]) -> Fault:
    def apply(rig: Rig) -> None:
        rig.extra["saved"] = rig.device.body("reading")
        rig.device.set_reading(body)

    def clear(rig: Rig) -> None:
        rig.device.set_reading(rig.extra["saved"])

    return Fault(f"device:{name}", reasons, apply, clear)


IOMETER_BRIDGE_FAULTS = [
    *PROXY_FAULTS,
    bridge_body("html", b"<html><body><h1>502 Bad Gateway</h1></body></html>", ("parse",)),
    bridge_body("truncated", b'{"__typename": "iometer.reading.v1", "meter": {"number": "1EBZ01', ("parse",)),
    bridge_body("wrong_types", b'{"__typename": "iometer.reading.v1", "meter": "x"}', ("parse",)),
    *(attr_fault(f"status:{code}", "fail_with", code, (reason,)) for code, reason in
      ((401, "unauthorized"), (404, "http_error"), (500, "http_error"), (503, "http_error"))),
]


async def iometer_bridge_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.iometer import BridgeSimulator

    device = BridgeSimulator()
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, slow(f"  - name: faulty\n    vendor: iometer\n    host: {proxy.address}\n"), control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


# --- IAMMETER over MQTT (a real Mosquitto) -----------------------------------------------------


async def iammeter_mqtt_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.iammeter_push import MosquittoBroker, MqttMeter

    require_binary("mosquitto")
    broker = await MosquittoBroker(directory=tmp_path / "broker").start()
    meter = MqttMeter("WEM3080T", port=broker.port, interval=PUSH_EVERY)
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    # The reconnection delay keeps its default ceiling (60 s): the exporter caps it at the
    # shortest interval of the broker's targets.
    head = (f"mqtt_brokers:\n  - name: local\n    host: 127.0.0.1\n    port: {broker.port}\n"
            "    reconnect_delay: 0.1s\n    keepalive: 5s\n")
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iammeter\n    transport: mqtt\n"
                           f"    broker: local\n    sn: {meter.serial}\n    stale_after: {STALE_AFTER}s\n",
                           control, head)
    await meter.start()
    rig = Rig(meter, None, control, daemon, stops=[meter.stop, broker.close])
    rig.extra.update(broker=broker, listener="mqtt:local")
    return rig


async def _kill_broker(rig: Rig) -> None:
    await rig.extra["broker"].kill()


async def _start_broker(rig: Rig) -> None:
    await rig.extra["broker"].start()  # the same port; a fresh broker that knows no subscription


async def _stop_meter(rig: Rig) -> None:
    await rig.device.stop()


async def _start_meter(rig: Rig) -> None:
    await rig.device.start()


def test_mqtt_reconnections_come_within_the_shortest_interval_of_the_brokers_targets():
    """However long the broker stays away, the next try is never further off than the
    shortest interval of its targets (nor than max_reconnect_delay): a meter is read again within
    one of its intervals after the broker is back."""
    import structlog

    from exporter.mqtt import BrokerConnection, BrokerSettings

    connection = BrokerConnection(BrokerSettings.from_section({"name": "b", "host": "h", "reconnect_delay": 1.0}),
                                  structlog.get_logger())
    connection.failures = 30
    assert 54 <= connection._delay() <= 60  # max_reconnect_delay alone
    connection.add_interval(10.0)
    connection.add_interval(2.0)
    assert all(connection._delay() <= 2.0 for _ in range(50))
    connection.remove_interval(2.0)
    assert 9 <= connection._delay() <= 10.0
    connection.failures = 1
    assert connection._delay() <= 1.1  # the first tries keep reconnect_delay


IAMMETER_MQTT_FAULTS = [
    Fault("broker:killed", ("connection",), _kill_broker, _start_broker),
    Fault("broker:frozen", ("stale",), lambda rig: rig.extra["broker"].pause(),
          lambda rig: rig.extra["broker"].resume(), repeats=False),
    Fault("meter:silent", ("stale",), _stop_meter, _start_meter, repeats=False),
    attr_fault("garbage", "fault", "garbage", ("parse",), prefix="payload", counted="malformed"),
    attr_fault("wrong_types", "fault", "string_value", ("parse",), prefix="payload", counted="malformed"),
    attr_fault("nulls", "fault", "nulls", ("parse",), prefix="payload", counted="malformed"),
    attr_fault("wrong_sn", "fault", "wrong_sn", ("parse",), prefix="payload", counted="sn_mismatch"),
    attr_fault("too_large", "fault", "huge", ("too_large",), prefix="payload", counted="too_large"),
]


# --- IAMMETER HTTP upload (push receiver) -------------------------------------------------------


async def iammeter_push_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.simulators.iammeter_push import HttpPushMeter

    port = free_port()
    meter = HttpPushMeter("WEM3080T", url=f"http://127.0.0.1:{port}/", interval=PUSH_EVERY)
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    head = f"http_push:\n  listen: 127.0.0.1:{port}\n  max_requests_per_minute: 0\n"
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iammeter\n    transport: push\n"
                           f"    sn: {meter.serial}\n    stale_after: {STALE_AFTER}s\n", control, head)
    await meter.start()  # it retries until the daemon listens, as a meter does
    rig = Rig(meter, None, control, daemon, stops=[meter.stop])
    rig.extra["listener"] = "http_push"
    return rig


IAMMETER_PUSH_FAULTS = [
    Fault("upload:stopped", ("stale",), _stop_meter, _start_meter, repeats=False),
    attr_fault("garbage", "fault", "garbage", ("parse",), prefix="upload", counted="malformed"),
    attr_fault("wrong_types", "fault", "string_value", ("parse",), prefix="upload", counted="malformed"),
    attr_fault("nulls", "fault", "nulls", ("parse",), prefix="upload", counted="malformed"),
    # Refused before any target sees them: the target hears nothing and goes stale.
    attr_fault("wrong_sn", "fault", "wrong_sn", ("stale",), prefix="upload", counted="unknown_sn", repeats=False),
    attr_fault("too_large", "fault", "huge", ("stale",), prefix="upload", counted="too_large", repeats=False),
]


# --- IAMMETER cloud API -------------------------------------------------------------------------

CLOUD_PASSWORD = "cloud-pass-94c2"


async def iammeter_cloud_rig(tmp_path, monkeypatch) -> Rig:
    from exporter import quota
    from exporter.quota import Limit
    from exporter.simulators.iammeter_cloud import CloudLimits, IammeterCloudSimulator, parse_utc
    from exporter.vendors.iammeter import cloud

    # metersdata at the matrix's pace; a "nothing" answer holds the call back for this window,
    # doubling, as the real quota's 5 minutes do at the default interval of 5 minutes.
    monkeypatch.setattr(cloud, "METERSDATA_LIMITS", (Limit(1000, INTERVAL, "5m"),))
    frozen = parse_utc("2024/2/22 3:46:20")  # the cloud's clock stands still: the values do too
    device = IammeterCloudSimulator(clock=lambda: frozen, password=CLOUD_PASSWORD,
                                    limits=CloudLimits(metersdata_every=0.0))
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iammeter\n    transport: cloud\n"
                           f"    username: test\n    password: {CLOUD_PASSWORD}\n    base_url: http://{proxy.address}\n"
                           "    analysis: false\n    timezone: Asia/Shanghai\n", control)

    async def forget_ledger() -> None:
        quota._LEDGERS.pop(str((tmp_path / "state").resolve()), None)

    return Rig(device, proxy, control, daemon, secrets=(CLOUD_PASSWORD,), stops=[device.stop, forget_ledger])


IAMMETER_CLOUD_FAULTS = [
    *PROXY_FAULTS,
    attr_fault("status:500", "fault", "status:500", ("http_error",)),
    attr_fault("status:503", "fault", "status:503", ("http_error",)),
    attr_fault("html", "fault", "html", ("parse",)),
    attr_fault("nothing", "fault", "nothing", ("quota",), held_back=True),
]


# --- IOmeter Partner API (GraphQL subscription over WebSocket, or queries) ------------------------

BAD_READINGS = {
    "wrong_types": {"meter": "1EBZ0100507409", "time": "yesterday", "values": {"1-0:1.8.0": "lots"}},
    "nulls": {"meter": None, "time": None, "values": None},
}


class FaultyPartnerApi(PartnerApiSimulator):
    """The Partner API simulator with the faults of the matrix switched by `fault`: "drop"
    (every WebSocket cut right after the upgrade), "upgrade_401", "garbage" (a frame that is not
    JSON where the reading belongs), "wrong_types" / "nulls" (readings of the wrong shape, one
    per upload interval), "status:NNN" (the query endpoint's answer)."""

    fault: str | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if (self.fault or "").startswith("status:") and request.headers.get("Upgrade", "").lower() != "websocket":
            self.http_requests += 1
            return web.Response(status=int(self.fault[7:]), text="upstream connect error")
        return await super()._handle(request)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.fault == "upgrade_401":
            self.rejected += 1
            return web.json_response({"errors": [{"message": "unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]},
                                     status=401)
        if self.fault == "drop":
            ws = web.WebSocketResponse(protocols=self.protocols)
            await ws.prepare(request)
            request.transport.abort()
            return ws
        return await super()._websocket(request)

    async def _operation(self, conn: Any, op_id: str, payload: dict[str, Any]) -> None:
        kind = "data" if conn.protocol == LEGACY_WS else "next"
        if self.fault == "garbage":
            await conn.ws.send_str("<html><body><h1>502 Bad Gateway</h1></body></html>")
            return
        while self.fault in BAD_READINGS:
            await conn.ws.send_json({"id": op_id, "type": kind,
                                     "payload": {"data": {"meterReadings": BAD_READINGS[self.fault]}}})
            await asyncio.sleep(PUSH_EVERY)
        await super()._operation(conn, op_id, payload)


async def iometer_partner_rig(tmp_path, monkeypatch, mode: str = "subscription") -> Rig:
    device = FaultyPartnerApi(installations=demo_installations(2, 1))
    await device.start()
    # One reading per meter, before the exporter starts: it arrives with the subscription's
    # replay (or the first query), and again after every reconnection (never counted twice).
    for installation in device.installations:
        for meter in installation.meters:
            device.publish(meter, time.time() - 5, demo_values(1000.0, 400.0))
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iometer\n    transport: partner\n"
                           f"    mode: {mode}\n    partner_id: {device.partner_id}\n    secret: {device.secret}\n"
                           f"    endpoint: {device.url}\n    reconnect_delay: 100ms\n    min_emit_interval: 0\n",
                           control)
    rig = Rig(device, None, control, daemon, secrets=(device.secret,), stops=[device.stop])
    # Up comes with the first snapshot, which may hold only what discovery found: wait for the
    # readings of both meters too.
    rig.extra["ready"] = lambda rig: sum(key.startswith("energy_meter_account_energy_imported_joules_total{")
                                         and 'obis="1-0:1.8.0"' in key for key in rig.series()) == 2
    return rig


def partner_fault(name: str, reasons: tuple[str, ...]) -> Fault:
    """Switch the API's fault on and cut the live subscription, so the client meets it at once."""
    async def apply(rig: Rig) -> None:
        rig.device.fault = name
        await rig.device.drop_connections()

    def clear(rig: Rig) -> None:
        rig.device.fault = None

    return Fault(f"ws:{name}", reasons, apply, clear)


IOMETER_PARTNER_FAULTS = [
    partner_fault("drop", ("connection",)),
    partner_fault("upgrade_401", ("unauthorized",)),
    partner_fault("garbage", ("connection",)),
    partner_fault("wrong_types", ("parse",)),
    partner_fault("nulls", ("parse",)),
]
IOMETER_PARTNER_QUERY_FAULTS = [
    attr_fault("status:500", "fault", "status:500", ("http_error",), prefix="query"),
    attr_fault("status:503", "fault", "status:503", ("http_error",), prefix="query"),
]


RIGS: dict[str, tuple[Callable[..., Awaitable[Rig]], list[Fault]]] = {
    "homewizard-v1": (lambda tmp, _: homewizard_rig(tmp, "v1"), HOMEWIZARD_FAULTS),
    "homewizard-v2": (lambda tmp, _: homewizard_rig(tmp, "v2"), HOMEWIZARD_FAULTS),
    "iammeter-http": (iammeter_http_rig, IAMMETER_HTTP_FAULTS),
    "iammeter-modbus": (iammeter_modbus_rig, IAMMETER_MODBUS_FAULTS),
    "iammeter-mqtt": (iammeter_mqtt_rig, IAMMETER_MQTT_FAULTS),
    "iammeter-push": (iammeter_push_rig, IAMMETER_PUSH_FAULTS),
    "iammeter-cloud": (iammeter_cloud_rig, IAMMETER_CLOUD_FAULTS),
    "enphase-local": (enphase_rig, ENPHASE_FAULTS + ENPHASE_TOKEN_FAULTS),
    "iometer-bridge": (iometer_bridge_rig, IOMETER_BRIDGE_FAULTS),
    "iometer-partner": (iometer_partner_rig, IOMETER_PARTNER_FAULTS),
    "iometer-partner-query": (lambda tmp, mp: iometer_partner_rig(tmp, mp, "query"), IOMETER_PARTNER_QUERY_FAULTS),
}
CASES = [(transport, fault) for transport, (_, faults) in RIGS.items() for fault in faults]


async def stop_rig(rig: Rig) -> None:
    await rig.daemon.stop()
    if rig.proxy is not None:
        await rig.proxy.stop()
    for stop in rig.stops:
        await stop()
    await rig.control.stop()


def assert_nothing_wrong(rig: Rig, before: dict[str, str], fault: Fault) -> None:
    """Each series of the faulty target holds its value from before the fault, or is gone. (A
    target that stays up may add the series of an endpoint read on a slower cadence.)"""
    for key, value in rig.series().items():
        if key in before or fault.reasons:
            assert before.get(key) == value, f"{key} = {value} under {fault.name}, before it {before.get(key)}"


async def scrape(rig: Rig) -> str:
    """/metrics over HTTP: the daemon is up and answers."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{rig.daemon.port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


@pytest.mark.parametrize("transport,fault", CASES, ids=[f"{t}-{f.name}" for t, f in CASES])
async def test_fault(tmp_path, monkeypatch, transport, fault):
    build = fault.rig or RIGS[transport][0]
    fast_transports(monkeypatch)
    rig = await build(tmp_path, monkeypatch)
    await rig.daemon.start("127.0.0.1", 0)
    try:
        states = rig.daemon.store.targets
        faulty, control = states["faulty"], states["control"]
        ready = rig.extra.get("ready", lambda rig: True)
        await async_wait_until(lambda: faulty.up and control.up and ready(rig), timeout=20, what="both up")
        if "paths" in rig.extra:  # every path the healthy device was asked for
            rig.extra["paths"].update(p.split("?")[0] for p in list(rig.device.requests))
        # (a device read on several cadences may add series after the first poll: the values
        # under the fault are compared with this snapshot, taken just before it)
        good = rig.series()
        assert good, "the healthy target exported nothing"
        refused_before = rig.refused(fault.counted) if fault.counted else 0.0
        failed_before = failures(faulty)
        control_before = control.polls
        control_runner = rig.daemon.runners["control"]
        lags_before = len(control_runner.lags)

        await _maybe(fault.apply(rig))
        if fault.reasons:
            await async_wait_until(lambda: not faulty.up, timeout=20, what=f"faulty down under {fault.name}")
            assert faulty.last_reason in fault.reasons, (faulty.last_reason, faulty.last_error)
            assert faulty.last_error and not any(s in faulty.last_error for s in rig.secrets)
            assert_nothing_wrong(rig, good, fault)
            assert rig.value("energy_meter_exporter_target_up", device="faulty") == 0
            assert rig.value("energy_meter_exporter_poll_errors_total", device="faulty", reason=faulty.last_reason) >= 1
            # The fault goes on: two more failed attempts, or a while of silence.
            if fault.repeats:
                failed = failures(faulty)
                await async_wait_until(lambda: failures(faulty) >= failed + 2, timeout=30, what="more failures")
                # (a pushing meter fails faster than the control polls: the fault lasts for two
                # of the control's polls at least)
                await async_wait_until(lambda: control.polls >= control_before + 2, timeout=30, what="the control's polls")
            else:
                seen = control.polls
                await async_wait_until(lambda: control.polls >= seen + 3, timeout=30, what="the control's polls")
                assert not faulty.up
        else:
            await async_wait_until(lambda: fault.handled(rig), timeout=20, what=f"{fault.name} handled")
            seen = faulty.polls
            await async_wait_until(lambda: faulty.polls >= seen + 2, timeout=30, what="more polls")
            assert failures(faulty) == failed_before and faulty.up, (faulty.last_reason, faulty.last_error)
        assert_nothing_wrong(rig, good, fault)
        if fault.counted:
            assert rig.refused(fault.counted) > refused_before, f"refused pushes not counted as {fault.counted}"
        # The healthy target kept its cadence all along.
        assert control.polls > control_before
        lags = list(control_runner.lags)[lags_before:]  # the polls started since the fault was applied
        assert max(lags) < INTERVAL / 2, f"the healthy target's polls started late: {lags}"
        assert control.up

        runner = rig.daemon.runners["faulty"]
        if runner.kind == "poll" and fault.reasons and fault.repeats:
            # cleared after at most three failed polls, so the next poll comes one interval
            # after the last one (only then does the delay grow)
            assert runner.failures <= RETRIES_BEFORE_BACKOFF, runner.failures
        await _maybe(fault.clear(rig))
        runner = rig.daemon.runners["faulty"]  # a reload replaces it
        # A poll started before the fault cleared may still fail; so may a reconnection attempt
        # under way, or a message already sent.
        in_flight = 1 if runner.kind != "poll" or (runner.task is not None and not runner.task.done()) else 0
        failed_at_clear = failures(faulty)
        succeeded_at_clear = faulty.polls - failed_at_clear
        await async_wait_until(lambda: faulty.up and faulty.polls - failures(faulty) > succeeded_at_clear,
                               timeout=30, what="recovery")
        if not fault.held_back:
            late = failures(faulty) - failed_at_clear
            assert late <= in_flight, f"{late} attempts failed after the fault cleared ({faulty.last_reason})"
        after = rig.series()
        assert {key: after.get(key) for key in good} == good
        text = await scrape(rig)
        assert sample_value(text, "energy_meter_exporter_target_up", device="faulty") == 1
        assert sample_value(text, "energy_meter_exporter_target_up", device="control") == 1
    finally:
        await stop_rig(rig)


@pytest.mark.parametrize("case,reason", [("wrong_ca", "tls"), ("expired", "tls"), ("wrong_name", "tls")])
async def test_tls_faults(tmp_path, case, reason):
    """v2 TLS: a certificate from another CA, an expired one, one for another device."""
    device = HomeWizardSimulator("HWE-P1", v1=False)
    trusted = new_authority("Appliance Access CA", "HomeWizard (simulated)", tmp_path / "trusted")
    device.authority = trusted
    if case == "wrong_ca":
        device.authority = new_authority("Appliance Access CA", "Impostor", tmp_path / "impostor")
    await device.start()
    device.tokens.add(TOKEN)
    if case == "expired":
        await device.stop()
        context = trusted.issue(device.cert_name, valid_days=-1, not_before_days=30, name="expired")
        await device._serve(device._v2_app(), device.https_port, context)
    if case == "wrong_name":
        await device.stop()
        context = trusted.issue("appliance/p1dongle/000000000000", name="other")
        await device._serve(device._v2_app(), device.https_port, context)
    (tmp_path / "c.yaml").write_text(
        f"targets:\n  - name: p1\n    vendor: homewizard\n    host: {device.v2_host}\n    token: {TOKEN}\n"
        f"    ca_file: {trusted.ca_file}\n    serial: {device.serial}\n    interval: {INTERVAL}s\n")
    daemon = Daemon(load_config(tmp_path / "c.yaml"))
    await daemon.start("127.0.0.1", 0)
    try:
        state = daemon.store.targets["p1"]
        await async_wait_until(lambda: state.last_reason is not None, what="a failed poll")
        assert state.last_reason == reason and not state.up
        assert "v2 /api/measurement" not in device.requests, "the token was sent to an untrusted device"
    finally:
        await daemon.stop()
        await device.stop()


def test_every_fault_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for transport, fault in CASES:
        assert f"| {transport} | `{fault.name}` |" in readme, (transport, fault.name)
    for case in ("tls:wrong_ca", "tls:expired", "tls:wrong_name"):
        assert f"`{case}`" in readme, case
