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
exporter absorbs (an expired Enphase token it renews) must fail no poll at all. The fault
table of docs/reliability.md lists the same rows (transport, fault).

Hostile peers (`hostile=True`, see `simulators/hostile.py`) break the protocol itself:
framing errors, invalid UTF-8, lone surrogates, absurd numbers, deep nesting, endless data. For
every case the whole /metrics body must also parse with prometheus_client's OpenMetrics parser
(no faulty counter negative, absurd or not finite), the status page must answer, and an endless
answer must be given up on before the simulator's cap. A poison the exporter absorbs (a lone
surrogate it replaces, a counter it refuses) keeps the target up: the series hold their values,
the poisoned ones are absent or held, a sanitised label may appear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.daemon import Daemon
from exporter.runtime.backoff import RETRIES_BEFORE_BACKOFF
from simulators import hostile
from simulators.faultproxy import FaultProxy
from simulators.homewizard import HomeWizardSimulator
from simulators.iometer_partner import (CERTIFICATE_FAULTS, LEGACY_WS, PartnerApiSimulator, demo_installations,
                                        demo_values, format_obis)
from simulators.tls import new_authority

from .configs import load_config
from .conftest import (async_wait_until, daemon_beside_control, exposition_text, free_port, require_binary,
                       sample_value)

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
    # Series (metric name prefixes) that may change under an absorbed fault (a newer reading's time).
    moving: tuple[str, ...] = ()
    # A hostile peer (see the module's docstring): a bound of its own, so a hang fails fast.
    hostile: bool = False
    # An endless answer is one message, which a client must give up on before the simulator's
    # cap (False: a stream of frames, each dropped as it comes).
    one_message: bool = True
    # What else must hold while the fault lasts (asserts), checked just before it clears.
    check: Callable[["Rig"], None] | None = None


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
        return exposition_text(self.daemon.store)

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


def _insecure() -> ssl.SSLContext:
    """A client context for the proxy's own connection to an HTTPS simulator."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def failures(state) -> int:
    """Failed polls (or failed messages, or a silence) the target has had so far."""
    return sum(state.errors.values())


def daemon_config(tmp_path, faulty: str, control: HomeWizardSimulator, head: str = "") -> Daemon:
    """A daemon with the faulty target (YAML lines, indented under targets) and the control."""
    return daemon_beside_control(tmp_path, faulty, control, INTERVAL, head=head)


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
    proxy = FaultProxy("127.0.0.1", upstream)
    if api == "v2":  # hostile HTTP modes end TLS with a certificate for the same device
        proxy.tls, proxy.upstream_tls = device.authority.issue(device.cert_name, name="proxy"), _insecure()
    await proxy.start()
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
    from simulators.iammeter import IammeterHttpSimulator

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
    from simulators.iammeter import IammeterModbusSimulator, meter_state

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
    from simulators.enphase import GatewaySimulator


    device = await GatewaySimulator().start()
    token = device.mint_token()
    # hostile HTTP modes end TLS with the gateway's own certificate (the pinned one)
    proxy = await FaultProxy("127.0.0.1", device.port, tls=device.tls_context, upstream_tls=_insecure()).start()
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
    from simulators.enphase import EnlightenSimulator, GatewaySimulator, TokenIssuer

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
    from simulators.iometer import BridgeSimulator

    device = BridgeSimulator()
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, slow(f"  - name: faulty\n    vendor: iometer\n    host: {proxy.address}\n"), control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


# The device state (/v1/status) of a bridge that answers it with 404 while /v1/reading works.
BRIDGE_STATE_SERIES = ("energy_meter_reader_", "energy_meter_wifi_rssi_dbm")
BRIDGE_READING_SERIES = "energy_meter_energy_imported_joules_total"


async def iometer_bridge_status_rig(tmp_path, monkeypatch) -> Rig:
    """The bridge rig with the status read every second, and asked for again as often once it
    went missing (by default every 10 minutes), so that its return is seen within the test."""
    from exporter.vendors.iometer import bridge
    from simulators.iometer import BridgeSimulator

    monkeypatch.setattr(bridge, "MISSING_STATUS_RETRY", 1.0)
    device = BridgeSimulator()
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iometer\n    host: {proxy.address}\n"
                           "    status_interval: 1s\n", control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


def _status_gone(rig: Rig) -> None:
    rig.device.status_missing = True


async def _status_back(rig: Rig) -> None:
    """The status answers again; cleared once the exporter has asked for it (it asks for the
    missing status on its own, slower schedule)."""
    rig.device.status_missing = False
    asked = rig.device.requests["status"]
    await async_wait_until(lambda: rig.device.requests["status"] > asked, timeout=10, what="the status asked again")


def _state_left_out(rig: Rig) -> bool:
    """The 404 was met: the readings are exported, the device-state series are not (stale)."""
    keys = rig.series()
    return (rig.device.status_404s > 0 and any(key.startswith(BRIDGE_READING_SERIES) for key in keys)
            and not any(key.startswith(BRIDGE_STATE_SERIES) for key in keys))


IOMETER_BRIDGE_STATUS_FAULTS = [
    # Some bridge states answer /v1/status with 404 while /v1/reading works: the target stays up
    # with its readings, the device state is left out until the status answers again.
    Fault("device:status_missing", (), _status_gone, _status_back, rig=iometer_bridge_status_rig,
          handled=_state_left_out),
]


# --- IAMMETER over MQTT (a real Mosquitto) -----------------------------------------------------


async def iammeter_mqtt_rig(tmp_path, monkeypatch) -> Rig:
    from simulators.iammeter_push import MosquittoBroker, MqttMeter

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

    from exporter.transport.mqtt import BrokerConnection, BrokerSettings

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
    from simulators.iammeter_push import HttpPushMeter

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


# --- IAMMETER TCP upload over TLS (stream receiver) ---------------------------------------------


async def iammeter_tcp_rig(tmp_path, monkeypatch) -> Rig:
    from simulators.iammeter_tcp import TcpMeter

    authority = new_authority("Upload CA", "tests", tmp_path / "pki")
    authority.issue("127.0.0.1", ip_addresses=("127.0.0.1",), name="server")
    authority.issue("meter", name="client")
    stranger = new_authority("Other CA", "someone else", tmp_path / "other")
    stranger.issue("meter", name="client")
    port = free_port()
    client = (authority.directory / "client.pem", authority.directory / "client.key")
    meter = TcpMeter("WEM3080T", port=port, tls=True, ca_file=authority.ca_file, client_cert=client,
                     interval=PUSH_EVERY)
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    head = (f"tcp_push:\n  tls_listen: 127.0.0.1:{port}\n  max_messages_per_minute: 0\n  read_timeout: 1s\n"
            f"  tls_cert_file: {authority.directory / 'server.pem'}\n  tls_key_file: {authority.directory / 'server.key'}\n"
            f"  tls_client_ca_file: {authority.ca_file}\n")
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iammeter\n    transport: tcp\n"
                           f"    sn: {meter.serial}\n    stale_after: {STALE_AFTER}s\n", control, head)
    await meter.start()  # it retries until the daemon listens, as a meter does
    rig = Rig(meter, None, control, daemon, stops=[meter.stop])
    rig.extra.update(listener="tcp_push", client=client,
                     stranger=(stranger.directory / "client.pem", stranger.directory / "client.key"))
    return rig


def _stranger_certificate(rig: Rig) -> None:
    rig.device.client_cert = rig.extra["stranger"]


def _own_certificate(rig: Rig) -> None:
    rig.device.client_cert = rig.extra["client"]


IAMMETER_TCP_FAULTS = [
    Fault("upload:stopped", ("stale",), _stop_meter, _start_meter, repeats=False),
    attr_fault("garbage", "fault", "garbage", ("parse",), prefix="upload", counted="malformed"),
    attr_fault("wrong_types", "fault", "string_value", ("parse",), prefix="upload", counted="malformed"),
    # Refused before any target sees them: the target hears nothing and goes stale.
    attr_fault("wrong_sn", "fault", "wrong_sn", ("stale",), prefix="upload", counted="unknown_sn", repeats=False),
    # The connection is dropped once the document passes the limit; the SN at its start is told.
    attr_fault("too_large", "fault", "huge", ("too_large",), prefix="upload", counted="too_large"),
    # A document slower than read_timeout: the connection is dropped, the SN it got to is told.
    attr_fault("drip", "fault", "drip", ("timeout",), prefix="upload", counted="timeout"),
    # Plain TCP to the TLS listener (the meter's address lacks tls://): refused in the handshake.
    attr_fault("no_tls", "fault", "no_tls", ("stale",), prefix="tls", counted="tls", repeats=False),
    Fault("tls:client_cert", ("stale",), _stranger_certificate, _own_certificate, repeats=False, counted="tls"),
]


# --- IAMMETER HTTPS upload (push receiver serving TLS, client certificates) ---------------------


async def iammeter_push_https_rig(tmp_path, monkeypatch) -> Rig:
    """The push listener over HTTPS with client certificates, the faulty meter and a second one
    (target `peer`) uploading properly beside it all along."""
    from simulators.iammeter_push import HttpPushMeter

    authority = new_authority("Upload CA", "tests", tmp_path / "pki")
    authority.issue("127.0.0.1", ip_addresses=("127.0.0.1",), name="server")
    authority.issue("meter", name="client")
    stranger = new_authority("Other CA", "someone else", tmp_path / "other")
    stranger.issue("meter", name="client")
    port = free_port()
    client = (authority.directory / "client.pem", authority.directory / "client.key")
    meter = HttpPushMeter("WEM3080T", url=f"https://127.0.0.1:{port}/", ca_file=authority.ca_file,
                          client_cert=client, interval=PUSH_EVERY)
    peer = HttpPushMeter("WEM3080T", serial="PEER0001", url=f"https://127.0.0.1:{port}/", ca_file=authority.ca_file,
                         client_cert=client, interval=PUSH_EVERY)
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    head = (f"http_push:\n  listen: 127.0.0.1:{port}\n  max_requests_per_minute: 0\n  read_timeout: 1s\n"
            f"  tls_cert_file: {authority.directory / 'server.pem'}\n  tls_key_file: {authority.directory / 'server.key'}\n"
            f"  tls_client_ca_file: {authority.ca_file}\n")
    targets = "".join(f"  - name: {name}\n    vendor: iammeter\n    transport: push\n    sn: {sn}\n"
                      f"    stale_after: {STALE_AFTER}s\n" for name, sn in (("faulty", meter.serial), ("peer", peer.serial)))
    daemon = daemon_config(tmp_path, targets, control, head)
    await meter.start()  # they retry until the daemon listens, as meters do
    await peer.start()
    rig = Rig(meter, None, control, daemon, stops=[meter.stop, peer.stop])
    rig.extra.update(listener="http_push", client=client, peer=peer,
                     stranger=(stranger.directory / "client.pem", stranger.directory / "client.key"),
                     ready=lambda rig: rig.daemon.store.targets["peer"].up)
    return rig


def https_upload_fault(name: str, apply: Callable[[Rig], None], clear: Callable[[Rig], None],
                       check: Callable[[Rig], None] = lambda rig: None) -> Fault:
    """A meter whose TLS handshake with the HTTPS listener fails: refused in the handshake
    (counted `tls`), the target goes stale, and the other meter's uploads are accepted all along."""
    def start(rig: Rig) -> None:
        rig.extra["peer_sent"] = rig.extra["peer"].sent
        apply(rig)

    def others_accepted(rig: Rig) -> None:
        peer = rig.daemon.store.targets["peer"]
        assert rig.extra["peer"].sent >= rig.extra["peer_sent"] + 2, "the other meter's uploads were not accepted"
        assert peer.up, (peer.last_reason, peer.last_error)
        check(rig)

    return Fault(f"tls:{name}", ("stale",), start, clear, repeats=False, counted="tls", check=others_accepted)


def _stalled_handshakes_closed(rig: Rig) -> None:
    """Every stalled handshake was closed by the listener (none held until the meter's cap)."""
    assert rig.device.stalls_closed >= 1 and rig.device.stalls_held == 0, (rig.device.stalls_closed,
                                                                          rig.device.stalls_held)


IAMMETER_PUSH_HTTPS_FAULTS = [
    # Plain HTTP to the HTTPS port (the meter's address on another port than 443).
    https_upload_fault("plain_http", lambda rig: setattr(rig.device, "fault", "no_tls"),
                       lambda rig: setattr(rig.device, "fault", None)),
    # A client certificate of another CA.
    https_upload_fault("client_cert", _stranger_certificate, _own_certificate),
    # A handshake begun and never finished: closed after read_timeout.
    https_upload_fault("stall", lambda rig: setattr(rig.device, "fault", "tls_stall"),
                       lambda rig: setattr(rig.device, "fault", None), check=_stalled_handshakes_closed),
]


# --- IAMMETER cloud API -------------------------------------------------------------------------

CLOUD_PASSWORD = "cloud-pass-94c2"


async def iammeter_cloud_rig(tmp_path, monkeypatch) -> Rig:
    from exporter.runtime.quota import Limit
    from exporter.vendors.iammeter import cloud, cloud_quota
    from simulators.iammeter_cloud import CloudLimits, IammeterCloudSimulator, parse_utc

    # metersdata at the matrix's pace; a "nothing" answer holds the call back for this window,
    # doubling, as the real quota's 5 minutes do at the default interval of 5 minutes.
    for module in (cloud, cloud_quota):  # the adapter's calls and the configuration's check
        monkeypatch.setattr(module, "METERSDATA_LIMITS", (Limit(1000, INTERVAL, "5m"),))
    frozen = parse_utc("2024/2/22 3:46:20")  # the cloud's clock stands still: the values do too
    device = IammeterCloudSimulator(clock=lambda: frozen, password=CLOUD_PASSWORD,
                                    limits=CloudLimits(metersdata_every=0.0))
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iammeter\n    transport: cloud\n"
                           f"    username: test\n    password: {CLOUD_PASSWORD}\n    base_url: http://{proxy.address}\n"
                           "    analysis: false\n    timezone: Asia/Shanghai\n", control)
    return Rig(device, proxy, control, daemon, secrets=(CLOUD_PASSWORD,), stops=[device.stop])


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


PARTNER_POISONS = ("surrogate", "absurd", "deep")
# Where a poison goes in a subscription message: the meter number (a label), the import and
# export registers, the power.
_READING = ("payload", "data", "meterReadings")
PARTNER_SPOTS = hostile.Spots(_READING + ("meter", "number"), _READING + ("values", 0, "value"),
                              _READING + ("values", 1, "value"), _READING + ("values", 6, "value"))
ENDLESS_CAP = 16 * 1024 * 1024


class FaultyPartnerApi(PartnerApiSimulator):
    """The Partner API simulator with the faults of the matrix switched by `fault`: "drop"
    (every WebSocket cut right after the upgrade), "upgrade_401", "garbage" (a frame that is not
    JSON where the reading belongs), "wrong_types" / "nulls" (readings of the wrong shape, one
    per upload interval), "status:NNN" (the query endpoint's answer); hostile: a broken frame
    where the first reading belongs (`hostile.WS_MODES`), readings with a poison
    (`PARTNER_POISONS`), and for the query endpoint "query:endless" (a body without end) and
    "query:deep" (an answer nested 200,000 deep)."""

    fault: str | None = None
    endless_full: int = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            if (self.fault or "").startswith("status:"):
                self.http_requests += 1
                return web.Response(status=int(self.fault[7:]), text="upstream connect error")
            if self.fault == "query:deep":
                self.http_requests += 1
                return web.Response(body=hostile.deep({"data": {"readings": {"readings": [], "cursor": None}}}),
                                    content_type="application/json")
            if self.fault == "query:endless":
                self.http_requests += 1
                return await self._endless_answer(request)
        return await super()._handle(request)

    async def _endless_answer(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        try:
            await response.write(b'{"data": {"readings": {"readings": [')
            while sent < ENDLESS_CAP:
                await response.write(b" " * 65536)
                sent += 65536
            self.endless_full += 1
            await asyncio.sleep(3600)
        except (ConnectionError, RuntimeError):
            pass
        return response

    def _reading_message(self, op_id: str, kind: str) -> dict:
        """A fresh reading of the first meter, with the values published at the start."""
        meter = self.installations[0].meters[0]
        values = [{"obisCode": format_obis(code, self.obis_format), "value": value, "unit": unit}
                  for code, value, unit in demo_values(1000.0, 400.0)]
        reading = {"meter": {"id": meter.id, "number": meter.number, "installation": {"id": meter.installation_id}},
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "values": values}
        return {"id": op_id, "type": kind, "payload": {"data": {"meterReadings": reading}}}

    async def _hostile_frame(self, conn: Any, op_id: str, kind: str) -> None:
        transport = conn.transport
        payload = json.dumps(self._reading_message(op_id, kind)).encode()
        transport.write(hostile.ws_frame(self.fault, payload))
        if self.fault != "endless_frame":
            return
        sent = 0
        while sent < ENDLESS_CAP and not transport.is_closing():
            transport.write(b"0" * 65536)
            sent += 65536
            while transport.get_write_buffer_size() > 1 << 20 and not transport.is_closing():
                await asyncio.sleep(0.01)
        if sent >= ENDLESS_CAP:
            self.endless_full += 1

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
        if self.fault in hostile.WS_MODES:
            await self._hostile_frame(conn, op_id, kind)
            return
        while self.fault in PARTNER_POISONS:
            message = hostile.poisoned(self._reading_message(op_id, kind), self.fault, PARTNER_SPOTS)
            await conn.ws.send_str(message.decode("ascii"))
            await asyncio.sleep(PUSH_EVERY)
        while self.fault in BAD_READINGS:
            await conn.ws.send_json({"id": op_id, "type": kind,
                                     "payload": {"data": {"meterReadings": BAD_READINGS[self.fault]}}})
            await asyncio.sleep(PUSH_EVERY)
        await super()._operation(conn, op_id, payload)


async def iometer_partner_rig(tmp_path, monkeypatch, mode: str = "subscription", tls: bool = False) -> Rig:
    device = FaultyPartnerApi(installations=demo_installations(2, 1), tls=tls)
    await device.start()
    # One reading per meter, before the exporter starts: it arrives with the subscription's
    # replay (or the first query), and again after every reconnection (never counted twice).
    for installation in device.installations:
        for meter in installation.meters:
            device.publish(meter, time.time() - 5, demo_values(1000.0, 400.0))
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    trust = f"    ca_file: {device.ca_file}\n" if tls else ""
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iometer\n    transport: partner\n"
                           f"    mode: {mode}\n    partner_id: {device.partner_id}\n    secret: {device.secret}\n"
                           f"    endpoint: {device.url}\n    reconnect_delay: 100ms\n    min_emit_interval: 0\n"
                           + trust, control)
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


# --- IOmeter Partner API, subscriptions over Server-Sent Events ---------------------------------

SSE_IDLE = 1.0  # seconds a subscription stream may go without a complete event
READING_TIME = "energy_meter_account_measurement_timestamp_seconds"


async def iometer_partner_sse_rig(tmp_path, monkeypatch, tls: bool = False) -> Rig:
    """The Partner API with `subscription_protocol: sse`. Both meters send a reading every
    PUSH_EVERY, as meters do, so a healthy stream is never idle for SSE_IDLE; the readings keep
    their values, only their time moves."""
    device = PartnerApiSimulator(installations=demo_installations(2, 1), tls=tls)
    await device.start()
    meters = [meter for installation in device.installations for meter in installation.meters]

    async def meters_send() -> None:
        while True:
            for meter in meters:
                device.publish(meter, time.time(), demo_values(1000.0, 400.0))
            await asyncio.sleep(PUSH_EVERY)

    sending = asyncio.create_task(meters_send())

    async def stop_sending() -> None:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)

    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    trust = f"    ca_file: {device.ca_file}\n" if tls else ""
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iometer\n    transport: partner\n"
                           f"    subscription_protocol: sse\n    partner_id: {device.partner_id}\n"
                           f"    secret: {device.secret}\n    endpoint: {device.url}\n    reconnect_delay: 100ms\n"
                           f"    stream_idle_timeout: {SSE_IDLE}s\n    min_emit_interval: 0\n" + trust, control)
    rig = Rig(device, None, control, daemon, secrets=(device.secret,), stops=[stop_sending, device.stop])
    rig.extra["ready"] = lambda rig: sum(key.startswith("energy_meter_account_energy_imported_joules_total{")
                                         and 'obis="1-0:1.8.0"' in key for key in rig.series()) == 2
    return rig


def partner_sse_fault(name: str, reasons: tuple[str, ...]) -> Fault:
    """Switch the API's stream fault on and cut the open streams, so the client meets it on its
    next stream at once (the cut stream had delivered readings: reconnecting is routine)."""
    async def apply(rig: Rig) -> None:
        rig.device.sse_fault = name
        await rig.device.drop_connections()

    def clear(rig: Rig) -> None:
        rig.device.sse_fault = None

    return Fault(f"sse:{name}", reasons, apply, clear, moving=(READING_TIME,))


def certificate_fault(kind: str, rig: Callable[..., Awaitable[Rig]], **options: Any) -> Fault:
    """The API's certificate swapped for one the exporter does not trust (`CERTIFICATE_FAULTS`)
    and every open connection cut: the target fails with `tls`, and no request reaches the API
    while it lasts, so the Authorization header (the secret, with Basic) is never sent to it."""
    async def apply(rig: Rig) -> None:
        rig.extra["authorizations"] = rig.device.authorizations
        await rig.device.set_certificate(kind)

    async def clear(rig: Rig) -> None:
        await rig.device.set_certificate(None)

    def nothing_sent(rig: Rig) -> None:
        assert rig.device.handshakes.get(kind, 0) >= 2, "the exporter never met the untrusted certificate"
        assert rig.device.authorizations == rig.extra["authorizations"], \
            "the Authorization header reached the API under an untrusted certificate"

    return Fault(f"tls:{kind}", ("tls",), apply, clear, rig=rig, check=nothing_sent, **options)


def partner_tls_rig(mode: str) -> Callable[..., Awaitable[Rig]]:
    return lambda tmp, mp: iometer_partner_rig(tmp, mp, mode, tls=True)


IOMETER_PARTNER_TLS_FAULTS = [certificate_fault(kind, partner_tls_rig("subscription")) for kind in CERTIFICATE_FAULTS]
IOMETER_PARTNER_QUERY_TLS_FAULTS = [certificate_fault(kind, partner_tls_rig("query")) for kind in CERTIFICATE_FAULTS]


IOMETER_PARTNER_SSE_FAULTS = [
    # Each stream cut in the middle of its first event, before a reading was complete.
    partner_sse_fault("drop", ("connection",)),
    # The secret refused on every stream request (HTTP 401).
    partner_sse_fault("unauthorized", ("unauthorized",)),
    # Events whose data is no JSON: each is skipped and counted, the stream stays open.
    partner_sse_fault("garbage", ("parse",)),
    # An event of 2 MiB: the stream is dropped at the 1 MiB event limit.
    partner_sse_fault("oversized", ("too_large",)),
    # A stream that trickles a byte at a time and never completes an event within
    # stream_idle_timeout: given up on and opened again, never waited on for ever.
    partner_sse_fault("drip", ("timeout",)),
    # A certificate of another CA, or for another host name: refused before anything is sent.
    *(certificate_fault(kind, lambda tmp, mp: iometer_partner_sse_rig(tmp, mp, tls=True), moving=(READING_TIME,))
      for kind in CERTIFICATE_FAULTS),
]

# --- Hostile peers ------------------------------------------------------------------------------
#
# A peer that breaks the protocol itself. HTTP framing errors are a malformed answer: `parse`
# (either client), or `connection` (the general client finding the body's framing broken);
# an answer without end is `too_large` once past the limit; a body that is not JSON the exporter
# accepts (invalid UTF-8, NaN, nesting 200,000 deep) is `parse`. Three poisons are absorbed, the
# target stays up: a lone surrogate is replaced (U+FFFD) where the string is shown (a label), and
# an absurd (1e300) or negative (-5) counter value is not exported (the counter holds its value,
# or its series is absent) while the other series go on.

FRAMING = ("parse", "connection")
# A Modbus answer whose framing lies: a client detects it (`parse`), waits for bytes that never
# come (`timeout`), or drops the connection (`connection`).
MODBUS_FRAMING = ("parse", "timeout", "connection")


def hostile_proxy(mode: str, reasons: tuple[str, ...], **options: Any) -> Fault:
    fault = proxy_fault(mode, reasons)
    fault.hostile = True
    for key, value in options.items():
        setattr(fault, key, value)
    return fault


def _sanitised(rig: Rig) -> bool:
    """A poll took the poisoned string: it shows as U+FFFD in the target's series."""
    return any(hostile.REPLACEMENT in key for key in rig.series())


def _polled_twice(rig: Rig) -> bool:
    """Two more good polls (or messages) since the poison was served."""
    state = rig.daemon.store.targets["faulty"]
    return state.polls - failures(state) >= rig.extra["good_at_apply"] + 2


def _absorbed(kind: str) -> Callable[[Rig], bool]:
    """When an absorbed poison has been met: a replaced string shows, or polls went on."""
    return _sanitised if kind == "surrogate" else _polled_twice


def poison(attribute: str, kind: str, reasons: tuple[str, ...], prefix: str = "device", **options: Any) -> Fault:
    """A simulator switch to a poisoned body (hostile.BODY_POISONS) or another hostile mode."""
    if reasons:
        fault = attr_fault(kind, attribute, kind, reasons, prefix=prefix, **options)
    else:
        fault = attr_fault(kind, attribute, kind, reasons, prefix=prefix, handled=_absorbed(kind), **options)
    fault.hostile = True
    return fault


def poison_as(name: str, attribute: str, value: str, reasons: tuple[str, ...], prefix: str = "device",
              **options: Any) -> Fault:
    fault = attr_fault(name, attribute, value, reasons, prefix=prefix, **options)
    fault.hostile = True
    return fault


HOMEWIZARD_V1_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),
    hostile_proxy("chunk:+6", FRAMING),
    hostile_proxy("status_line", FRAMING),
    hostile_proxy("content_length:conflict", FRAMING),
    hostile_proxy("endless:chunked", ("too_large",)),
    poison("broken", "invalid_utf8", ("parse",)),
    poison("broken", "surrogate", ()),
    poison("broken", "absurd", ()),
    poison("broken", "negative", ()),
    poison("broken", "nan", ("parse",)),
    poison("broken", "deep", ("parse",)),
    poison("broken", "error_surrogate", ("http_error",)),
]
HOMEWIZARD_V2_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),  # (the proxy ends TLS with the device's certificate)
    poison("broken", "surrogate", ()),
    poison("broken", "absurd", ()),
]
IAMMETER_HTTP_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),
    hostile_proxy("endless:chunked", ("too_large",)),
    poison("fault", "invalid_utf8", ("parse",)),
    poison("fault", "surrogate", ()),
    poison("fault", "absurd", ()),
    poison("fault", "negative", ()),
]
IAMMETER_MODBUS_HOSTILE = [
    hostile_proxy("mbap:length", MODBUS_FRAMING),
    hostile_proxy("mbap:transaction", MODBUS_FRAMING),
    hostile_proxy("mbap:truncated_pdu", MODBUS_FRAMING),
    # Frames of other transactions without end: each is dropped, the poll times out.
    hostile_proxy("mbap:endless", MODBUS_FRAMING, one_message=False),
    poison("fault", "absurd", ()),
]
IAMMETER_CLOUD_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),
    poison("fault", "absurd", ()),
    poison("fault", "deep", ("parse",)),
    poison("fault", "error_surrogate", ("http_error",)),
]


def _swap_body(key: str, kind: str, spots: hostile.Spots, reasons: tuple[str, ...]) -> Fault:
    """An Enphase endpoint's captured body replaced by a poisoned one."""
    def apply(rig: Rig) -> None:
        rig.extra["saved_body"] = rig.device.bodies[key]
        rig.device.bodies[key] = hostile.poisoned(json.loads(rig.device.bodies[key]), kind, spots)

    def clear(rig: Rig) -> None:
        rig.device.bodies[key] = rig.extra["saved_body"]

    return Fault(f"device:{kind}", reasons, apply, clear, handled=None if reasons else _absorbed(kind),
                 hostile=True)


# /ivp/meters/readings (read every poll): the first CT's import, its first channel's import, its power.
ENPHASE_SPOTS = hostile.Spots((0, "eid"), (0, "actEnergyDlvd"), (0, "channels", 0, "actEnergyDlvd"), (0, "activePower"))
ENPHASE_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),  # (the proxy ends TLS with the gateway's certificate)
    hostile_proxy("endless:chunked", ("too_large",)),
    _swap_body("ivp_meters_readings", "absurd", ENPHASE_SPOTS, ()),
    _swap_body("ivp_meters_readings", "negative", ENPHASE_SPOTS, ()),
    _swap_body("ivp_meters_readings", "deep", ENPHASE_SPOTS, ("parse",)),
]


def bridge_poison(kind: str, reasons: tuple[str, ...]) -> Fault:
    def apply(rig: Rig) -> None:
        rig.extra["saved"] = rig.device.body("reading")
        rig.device.set_reading(rig.device.poisoned_reading(kind))

    def clear(rig: Rig) -> None:
        rig.device.set_reading(rig.extra["saved"])

    return Fault(f"device:{kind}", reasons, apply, clear, handled=None if reasons else _absorbed(kind), hostile=True)


IOMETER_BRIDGE_HOSTILE = [
    hostile_proxy("chunk:-6", FRAMING),
    bridge_poison("surrogate", ()),
    bridge_poison("absurd", ()),
]


async def iometer_bridge_sse_rig(tmp_path, monkeypatch) -> Rig:
    """The bridge in `mode: sse`: both event streams kept open, through a fault proxy."""
    from simulators.iometer import BridgeSimulator

    device = BridgeSimulator()
    await device.start()
    proxy = await FaultProxy("127.0.0.1", device.port).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    daemon = daemon_config(tmp_path, f"  - name: faulty\n    vendor: iometer\n    host: {proxy.address}\n"
                           "    mode: sse\n    reconnect_delay: 100ms\n", control)
    return Rig(device, proxy, control, daemon, stops=[device.stop])


def stream_fault(kind: str, reasons: tuple[str, ...], **options: Any) -> Fault:
    """The reading stream turns hostile: the open one ends (properly: the client just asks
    again), the next one is hostile."""
    def apply(rig: Rig) -> None:
        rig.device.stream_fault = kind
        rig.device.end_streams("reading")

    def clear(rig: Rig) -> None:
        rig.device.stream_fault = None
        rig.device.end_streams("reading")

    handled = options.pop("handled", None) or (None if reasons else _absorbed(kind))
    return Fault(f"stream:{kind}", reasons, apply, clear, handled=handled, hostile=True, **options)


IOMETER_BRIDGE_SSE_FAULTS = [
    proxy_fault("refuse", ("connection",)),
    # An event line that never ends: dropped at the event size limit.
    stream_fault("endless_line", ("too_large", "parse")),
    # Event streams are UTF-8 decoded with replacement (WHATWG): the meter number shows U+FFFD.
    stream_fault("invalid_utf8", (), handled=_sanitised),
    stream_fault("deep", ("parse",)),
]
for _fault in IOMETER_BRIDGE_SSE_FAULTS:
    _fault.hostile = True


async def iammeter_mqtt_proxied_rig(tmp_path, monkeypatch) -> Rig:
    """The MQTT rig with a fault proxy between the exporter and Mosquitto (the meter publishes
    to the broker directly): what the broker sends the exporter can be broken on the way."""
    rig = await iammeter_mqtt_rig(tmp_path, monkeypatch)
    broker = rig.extra["broker"]
    proxy = await FaultProxy("127.0.0.1", broker.port).start()
    path = Path(rig.daemon.config.path)
    path.write_text(path.read_text().replace(f"port: {broker.port}\n", f"port: {proxy.port}\n", 1))
    rig.daemon = Daemon(load_config(path))
    rig.proxy = proxy
    return rig


def mqtt_proxy_fault(mode: str, reasons: tuple[str, ...], **options: Any) -> Fault:
    return hostile_proxy(mode, reasons, rig=iammeter_mqtt_proxied_rig, **options)


IAMMETER_MQTT_HOSTILE = [
    # A packet whose length never ends: a protocol error, the client drops the connection; the
    # broker takes it back at once each time, so the meter is heard no more (`stale`).
    mqtt_proxy_fault("mqtt:garbage_frame", ("stale", "connection"), repeats=False),
    # Every reading arrives under a topic that is not UTF-8: refused, the meter is heard no more.
    mqtt_proxy_fault("mqtt:topic_utf8", ("stale", "connection"), repeats=False),
    # A PUBLISH announcing 256 MB: refused (a reading is at most 64 KiB) before it is read.
    mqtt_proxy_fault("mqtt:endless", ("too_large", "connection")),
    poison("fault", "invalid_utf8", ("parse",), prefix="payload", counted="malformed"),
    poison("fault", "surrogate", (), prefix="payload"),
    poison("fault", "absurd", (), prefix="payload"),
    poison("fault", "deep", ("parse",), prefix="payload", counted="malformed"),
]
IAMMETER_PUSH_HOSTILE = [
    # Refused by the listener's HTTP parser before any target sees it: the meter goes stale.
    poison_as("chunk:-6", "fault", "chunk:-6", ("stale",), prefix="upload", repeats=False),
    poison_as("endless:chunked", "fault", "endless:chunked", ("stale",), prefix="upload", repeats=False,
              counted="too_large"),
    poison("fault", "invalid_utf8", ("parse",), prefix="upload", counted="malformed"),
    poison("fault", "surrogate", (), prefix="upload"),
    poison("fault", "absurd", (), prefix="upload"),
    poison("fault", "deep", ("parse",), prefix="upload", counted="malformed"),
]


def _publish_fresh(rig: Rig) -> None:
    """Clear a poison sent as fresh readings: the healthy values again, newer still."""
    rig.device.fault = None
    fresh = time.time() + 1.5  # readings carry whole seconds: newer than the last poisoned one
    for installation in rig.device.installations:
        for meter in installation.meters:
            rig.device.publish(meter, fresh, demo_values(1000.0, 400.0))


def partner_hostile(kind: str, reasons: tuple[str, ...], **options: Any) -> Fault:
    fault = partner_fault(kind, reasons)
    fault.hostile = True
    if not reasons:
        fault.handled = _absorbed(kind)
        fault.clear = _publish_fresh
        # fresh readings carry a newer time
        fault.moving = ("energy_meter_account_measurement_timestamp_seconds",)
    for key, value in options.items():
        setattr(fault, key, value)
    return fault


IOMETER_PARTNER_HOSTILE = [
    # Broken frames where the first reading belongs: the client closes the connection.
    partner_hostile("invalid_utf8_frame", ("connection",)),
    partner_hostile("reserved_bits", ("connection",)),
    partner_hostile("endless_frame", ("connection", "too_large")),
    partner_hostile("surrogate", ()),
    partner_hostile("absurd", ()),
    # A reading nested 200,000 deep: refused (`parse`), or the connection dropped.
    partner_hostile("deep", ("parse", "connection")),
]
IOMETER_PARTNER_QUERY_HOSTILE = [
    poison_as("endless", "fault", "query:endless", ("too_large",), prefix="query"),
    poison_as("deep", "fault", "query:deep", ("parse",), prefix="query"),
]


RIGS: dict[str, tuple[Callable[..., Awaitable[Rig]], list[Fault]]] = {
    "homewizard-v1": (lambda tmp, _: homewizard_rig(tmp, "v1"), HOMEWIZARD_FAULTS + HOMEWIZARD_V1_HOSTILE),
    "homewizard-v2": (lambda tmp, _: homewizard_rig(tmp, "v2"), HOMEWIZARD_FAULTS + HOMEWIZARD_V2_HOSTILE),
    "iammeter-http": (iammeter_http_rig, IAMMETER_HTTP_FAULTS + IAMMETER_HTTP_HOSTILE),
    "iammeter-modbus": (iammeter_modbus_rig, IAMMETER_MODBUS_FAULTS + IAMMETER_MODBUS_HOSTILE),
    "iammeter-mqtt": (iammeter_mqtt_rig, IAMMETER_MQTT_FAULTS + IAMMETER_MQTT_HOSTILE),
    "iammeter-push": (iammeter_push_rig, IAMMETER_PUSH_FAULTS + IAMMETER_PUSH_HOSTILE),
    "iammeter-push-https": (iammeter_push_https_rig, IAMMETER_PUSH_HTTPS_FAULTS),
    "iammeter-tcp": (iammeter_tcp_rig, IAMMETER_TCP_FAULTS),
    "iammeter-cloud": (iammeter_cloud_rig, IAMMETER_CLOUD_FAULTS + IAMMETER_CLOUD_HOSTILE),
    "enphase-local": (enphase_rig, ENPHASE_FAULTS + ENPHASE_TOKEN_FAULTS + ENPHASE_HOSTILE),
    "iometer-bridge": (iometer_bridge_rig, IOMETER_BRIDGE_FAULTS + IOMETER_BRIDGE_HOSTILE + IOMETER_BRIDGE_STATUS_FAULTS),
    "iometer-bridge-sse": (iometer_bridge_sse_rig, IOMETER_BRIDGE_SSE_FAULTS),
    "iometer-partner": (iometer_partner_rig, IOMETER_PARTNER_FAULTS + IOMETER_PARTNER_HOSTILE
                        + IOMETER_PARTNER_TLS_FAULTS),
    "iometer-partner-query": (lambda tmp, mp: iometer_partner_rig(tmp, mp, "query"),
                              IOMETER_PARTNER_QUERY_FAULTS + IOMETER_PARTNER_QUERY_HOSTILE
                              + IOMETER_PARTNER_QUERY_TLS_FAULTS),
    "iometer-partner-sse": (iometer_partner_sse_rig, IOMETER_PARTNER_SSE_FAULTS),
}
CASES = [(transport, fault) for transport, (_, faults) in RIGS.items() for fault in faults]
HOSTILE_TIMEOUT = 150  # seconds: a hostile case that hangs the daemon fails alone, with a trace
PARAMS = [pytest.param(transport, fault, id=f"{transport}-{fault.name}",
                       marks=[pytest.mark.timeout(HOSTILE_TIMEOUT)] if fault.hostile else [])
          for transport, fault in CASES]


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
        if fault.moving and key.startswith(fault.moving):
            continue
        if key in before or fault.reasons:
            assert before.get(key) == value, f"{key} = {value} under {fault.name}, before it {before.get(key)}"


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ABSURD_TOTAL = 1e15  # no counter of one meter comes near (1e15 J is 278 GWh)


async def check_exposition(rig: Rig) -> None:
    """/metrics in OpenMetrics parses whole with prometheus_client's parser; every value of the
    faulty target is finite, its counters neither negative nor absurd; the status page and the
    targets API answer."""
    base = f"http://127.0.0.1:{rig.daemon.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics", headers={"Accept": OPENMETRICS}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text"), resp.headers
            raw = await resp.read()
        for path in ("/", "/api/v1/targets"):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 200, (path, resp.status)
                (await resp.read()).decode("utf-8")
    for family in text_string_to_metric_families(raw.decode("utf-8")):
        for sample in family.samples:
            if sample.labels.get("device") != "faulty":
                continue
            assert math.isfinite(sample.value), sample
            if family.type == "counter":
                assert 0 <= sample.value < ABSURD_TOTAL, sample


LOG_FLOOD = 500  # warnings from libraries while a fault lasts (a few seconds): more is a flood


class _Warnings(logging.Handler):
    """Counts the warnings and errors that libraries log through the standard library."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{record.name}: {record.getMessage()[:120]}"


def assert_bounded(rig: Rig, fault: Fault) -> None:
    """An endless answer was given up on before the simulator's cap (it was not buffered whole)."""
    if not fault.one_message:
        return
    for peer in (rig.proxy, rig.device):
        full = getattr(peer, "endless_full", 0)
        assert not full, f"the exporter read {full} endless answer(s) of the {type(peer).__name__} to its cap"


async def scrape(rig: Rig) -> str:
    """/metrics over HTTP: the daemon is up and answers."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{rig.daemon.port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


@pytest.mark.parametrize("transport,fault", PARAMS)
async def test_fault(tmp_path, monkeypatch, transport, fault):
    build = fault.rig or RIGS[transport][0]
    fast_transports(monkeypatch)
    rig = await build(tmp_path, monkeypatch)
    await rig.daemon.start("127.0.0.1", 0)
    warnings = _Warnings()
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
        rig.extra["good_at_apply"] = faulty.polls - failures(faulty)

        if fault.hostile:
            logging.getLogger().addHandler(warnings)
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
            # (a pushing target meets it faster than the control polls: two of its polls too)
            await async_wait_until(lambda: control.polls >= control_before + 2, timeout=30, what="the control's polls")
            assert failures(faulty) == failed_before and faulty.up, (faulty.last_reason, faulty.last_error)
        assert_nothing_wrong(rig, good, fault)
        await check_exposition(rig)
        assert_bounded(rig, fault)
        logging.getLogger().removeHandler(warnings)
        assert warnings.count < LOG_FLOOD, f"{warnings.count} library log lines under {fault.name}, first: {warnings.first}"
        if fault.counted:
            assert rig.refused(fault.counted) > refused_before, f"refused pushes not counted as {fault.counted}"
        # The healthy target kept its cadence all along.
        assert control.polls > control_before
        lags = list(control_runner.lags)[lags_before:]  # the polls started since the fault was applied
        assert max(lags) < INTERVAL / 2, f"the healthy target's polls started late: {lags}"
        assert control.up

        if fault.check is not None:
            fault.check(rig)
        runner = rig.daemon.runners["faulty"]
        if runner.delivery == "poll" and fault.reasons and fault.repeats:
            # cleared after at most three failed polls, so the next poll comes one interval
            # after the last one (only then does the delay grow)
            assert runner.failures <= RETRIES_BEFORE_BACKOFF, runner.failures
        await _maybe(fault.clear(rig))
        runner = rig.daemon.runners["faulty"]  # a reload replaces it
        # A poll started before the fault cleared may still fail; so may a reconnection attempt
        # under way, or a message already sent.
        in_flight = 1 if runner.delivery != "poll" or (runner.task is not None and not runner.task.done()) else 0
        failed_at_clear = failures(faulty)
        succeeded_at_clear = faulty.polls - failed_at_clear
        await async_wait_until(lambda: faulty.up and faulty.polls - failures(faulty) > succeeded_at_clear,
                               timeout=30, what="recovery")
        if not fault.held_back:
            late = failures(faulty) - failed_at_clear
            assert late <= in_flight, f"{late} attempts failed after the fault cleared ({faulty.last_reason})"
        kept = {key: value for key, value in good.items() if not (fault.moving and key.startswith(fault.moving))}
        if not fault.reasons and fault.hostile:
            # the target never went down: its first good reading after the clear may take a poll
            await async_wait_until(lambda: {key: rig.series().get(key) for key in kept} == kept, timeout=10,
                                   what="the healthy series back")
        after = rig.series()
        assert {key: after.get(key) for key in kept} == kept
        text = await scrape(rig)
        assert sample_value(text, "energy_meter_exporter_target_up", device="faulty") == 1
        assert sample_value(text, "energy_meter_exporter_target_up", device="control") == 1
        await check_exposition(rig)
    finally:
        logging.getLogger().removeHandler(warnings)
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


def test_every_fault_is_in_the_documented_fault_table():
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for transport, fault in CASES:
        assert f"| {transport} | `{fault.name}` |" in table, (transport, fault.name)
    for case in ("tls:wrong_ca", "tls:expired", "tls:wrong_name"):
        assert f"`{case}`" in table, case
