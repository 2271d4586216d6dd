"""The fault matrix: every fault, on real sockets, against a running daemon, for every transport.

Each transport has a rig: its simulator, a fault proxy in front of it (transport faults are the
same bytes-on-a-socket for HTTP, HTTPS and Modbus/TCP), a healthy control target beside it in the
same daemon, and the list of faults it supports with how to inject and clear each one. For each
fault the test checks what a user relies on: the daemon stays up, the control target keeps its
cadence, the faulty target shows `up 0` with the expected reason, no wrong value is exported
(every series of the faulty target holds its healthy value or is absent), and the target
recovers at the first or second poll after the fault clears. README.md's fault table lists the
same rows (transport, fault).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest

from exporter.config import load_config
from exporter.daemon import Daemon
from exporter.simulators.faultproxy import FaultProxy
from exporter.simulators.homewizard import HomeWizardSimulator
from exporter.simulators.tls import new_authority

from .conftest import async_wait_until, sample_value

INTERVAL = 0.5
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@dataclass
class Fault:
    name: str
    reasons: tuple[str, ...]
    apply: Callable[["Rig"], Awaitable[None] | None]
    clear: Callable[["Rig"], Awaitable[None] | None]


@dataclass
class Rig:
    device: Any
    proxy: FaultProxy
    control: HomeWizardSimulator
    daemon: Daemon
    secrets: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def text(self) -> str:
        return self.daemon.store.cache.encoded(False, False).decode()

    def value(self, name: str, **labels) -> float | None:
        return sample_value(self.text(), name, **labels)

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


def attr_fault(name: str, attribute: str, value: Any, reasons: tuple[str, ...]) -> Fault:
    """A simulator switch: set `device.<attribute>` to `value`, back to None to clear."""
    def apply(rig: Rig) -> None:
        setattr(rig.device, attribute, value)

    def clear(rig: Rig) -> None:
        setattr(rig.device, attribute, None)

    return Fault(f"device:{name}", reasons, apply, clear)


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
    return rig


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


RIGS: dict[str, tuple[Callable[..., Awaitable[Rig]], list[Fault]]] = {
    "homewizard-v1": (lambda tmp, _: homewizard_rig(tmp, "v1"), HOMEWIZARD_FAULTS),
    "homewizard-v2": (lambda tmp, _: homewizard_rig(tmp, "v2"), HOMEWIZARD_FAULTS),
    "iammeter-http": (iammeter_http_rig, IAMMETER_HTTP_FAULTS),
    "iammeter-modbus": (iammeter_modbus_rig, IAMMETER_MODBUS_FAULTS),
    "enphase-local": (enphase_rig, ENPHASE_FAULTS),
    "iometer-bridge": (iometer_bridge_rig, IOMETER_BRIDGE_FAULTS),
}
CASES = [(transport, fault) for transport, (_, faults) in RIGS.items() for fault in faults]


async def stop_rig(rig: Rig) -> None:
    await rig.daemon.stop()
    await rig.proxy.stop()
    for stop in rig.stops:
        await stop()
    await rig.control.stop()


@pytest.mark.parametrize("transport,fault", CASES, ids=[f"{t}-{f.name}" for t, f in CASES])
async def test_fault(tmp_path, monkeypatch, transport, fault):
    build, _ = RIGS[transport]
    fast_transports(monkeypatch)
    rig = await build(tmp_path, monkeypatch)
    await rig.daemon.start("127.0.0.1", 0)
    try:
        states = rig.daemon.store.targets
        await async_wait_until(lambda: states["faulty"].up and states["control"].up, what="both up")
        if "paths" in rig.extra:  # every path the healthy device was asked for
            rig.extra["paths"].update(p.split("?")[0] for p in list(rig.device.requests))
        good = rig.series()
        assert good, "the healthy target exported nothing"

        rig.extra["before"] = rig.series()
        await _maybe(fault.apply(rig))
        control_before = states["control"].polls
        await async_wait_until(lambda: not states["faulty"].up, timeout=20, what=f"faulty down under {fault.name}")
        faulty = states["faulty"]
        assert faulty.last_reason in fault.reasons, (faulty.last_reason, faulty.last_error)
        assert faulty.last_error and not any(s in faulty.last_error for s in rig.secrets)
        # nothing wrong is exported: each series holds its healthy value or is gone
        # (a device read on several cadences may add series after the first poll: those are
        # compared against the snapshot taken just before the fault)
        before = rig.extra["before"]
        for key, value in rig.series().items():
            assert before.get(key) == value, f"{key} = {value} under {fault.name}, healthy {before.get(key)}"
        assert rig.value("energy_meter_exporter_target_up", device="faulty") == 0
        assert rig.value("energy_meter_exporter_poll_errors_total", device="faulty", reason=faulty.last_reason) >= 1
        # let two more faulty polls happen; the control target keeps its cadence meanwhile
        failed_polls = faulty.polls
        control_runner = rig.daemon.runners["control"]
        lags_before = len(control_runner.lags)
        await async_wait_until(lambda: faulty.polls >= failed_polls + 2, timeout=30, what="more faulty polls")
        assert states["control"].polls > control_before
        lags = list(control_runner.lags)[lags_before - 1:]
        assert max(lags) < INTERVAL / 2, f"the healthy target's polls started late: {lags}"
        assert states["control"].up

        await _maybe(fault.clear(rig))
        cleared_at = faulty.polls
        await async_wait_until(lambda: faulty.up, timeout=30, what="recovery")
        assert faulty.polls <= cleared_at + 2, "did not recover at the first or second poll after the fault cleared"
        after = rig.series()
        assert {key: after.get(key) for key in good} == good
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
