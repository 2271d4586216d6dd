"""The fault matrix: every fault, on real sockets, against a running daemon.

For each fault the test checks what a user relies on: the daemon stays up, a healthy target
beside the faulty one keeps its cadence, the faulty target shows `up 0` with the expected
reason, no wrong value is exported, and the target recovers at the first or second poll after
the fault clears. README.md's fault table lists the same rows.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Awaitable, Callable

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
    apply: Callable[["Rig"], Awaitable[None]]
    clear: Callable[["Rig"], Awaitable[None]]


@dataclass
class Rig:
    device: HomeWizardSimulator
    proxy: FaultProxy
    control: HomeWizardSimulator
    daemon: Daemon

    def text(self) -> str:
        return self.daemon.store.cache.encoded(False, False).decode()

    def value(self, name: str, **labels) -> float | None:
        return sample_value(self.text(), name, **labels)


def proxy_fault(mode: str, reasons: tuple[str, ...]) -> Fault:
    async def apply(rig: Rig) -> None:
        await rig.proxy.set_mode(mode)

    async def clear(rig: Rig) -> None:
        await rig.proxy.set_mode("pass")

    return Fault(f"proxy:{mode}", reasons, apply, clear)


def device_fault(broken: str, reasons: tuple[str, ...]) -> Fault:
    async def apply(rig: Rig) -> None:
        rig.device.broken = broken

    async def clear(rig: Rig) -> None:
        rig.device.broken = None

    return Fault(f"device:{broken}", reasons, apply, clear)


FAULTS = [
    proxy_fault("refuse", ("connection",)),
    proxy_fault("blackhole", ("timeout",)),
    proxy_fault("reset", ("connection",)),
    proxy_fault("drip", ("timeout",)),
    proxy_fault("truncate", ("connection", "parse")),
    device_fault("garbage", ("parse",)),
    device_fault("truncated", ("parse",)),
    device_fault("empty", ("parse",)),
    device_fault("wrong_types", ("parse",)),
    device_fault("huge", ("too_large",)),
    *(device_fault(f"status:{code}", (reason,)) for code, reason in
      ((401, "unauthorized"), (403, "unauthorized"), (404, "http_error"), (429, "http_error"),
       (500, "http_error"), (503, "http_error"))),
]


async def make_rig(tmp_path, api: str) -> Rig:
    device = await HomeWizardSimulator("HWE-P1").start()
    device.tokens.add(TOKEN)
    upstream = device.http_port if api == "v1" else device.https_port
    proxy = await FaultProxy("127.0.0.1", upstream).start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    v2 = f"    token: {TOKEN}\n    ca_file: {device.ca_file}\n" if api == "v2" else ""
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        defaults:
          interval: {INTERVAL}s
          timeout: 0.4s
          jitter: 0
        targets:
          - name: faulty
            vendor: homewizard
            host: {proxy.address}
        """) + v2 + f"  - name: control\n    vendor: homewizard\n    host: {control.v1_host}\n")
    daemon = Daemon(load_config(tmp_path / "c.yaml"))
    await daemon.start("127.0.0.1", 0)
    return Rig(device, proxy, control, daemon)


async def stop_rig(rig: Rig) -> None:
    await rig.daemon.stop()
    await rig.proxy.stop()
    await rig.device.stop()
    await rig.control.stop()


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_fault(tmp_path, api, fault):
    rig = await make_rig(tmp_path, api)
    try:
        states = rig.daemon.store.targets
        await async_wait_until(lambda: states["faulty"].up and states["control"].up, what="both up")
        good = rig.value("energy_meter_active_power_watts", device="faulty")
        assert good == -543

        await fault.apply(rig)
        control_before = states["control"].polls
        await async_wait_until(lambda: not states["faulty"].up, timeout=20, what=f"faulty down under {fault.name}")
        faulty = states["faulty"]
        assert faulty.last_reason in fault.reasons, (faulty.last_reason, faulty.last_error)
        assert faulty.last_error and TOKEN not in faulty.last_error
        # nothing wrong is exported: the held value or nothing
        assert rig.value("energy_meter_active_power_watts", device="faulty") in (good, None)
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

        await fault.clear(rig)
        cleared_at = faulty.polls
        await async_wait_until(lambda: faulty.up, timeout=30, what="recovery")
        assert faulty.polls <= cleared_at + 2, "did not recover at the first or second poll after the fault cleared"
        assert rig.value("energy_meter_active_power_watts", device="faulty") == good
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
    for fault in FAULTS:
        assert f"`{fault.name}`" in readme, fault.name
    for case in ("tls:wrong_ca", "tls:expired", "tls:wrong_name"):
        assert f"`{case}`" in readme, case
