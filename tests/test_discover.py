"""`discover`: which addresses a scan covers, who each simulated device turns out to be, the YAML
it prints (valid configuration, probe works on it), and mDNS announcements registered on
loopback by the test itself."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import uuid

import pytest
import yaml

from exporter.console import Console
from exporter.discover import Address, Options, parse_ports, parse_scan, render_yaml
from exporter.discover import discover as discover_with
from exporter.vendors import registry
from simulators.enphase import CORPUS, GatewaySimulator, firmware_folder
from simulators.homewizard import HomeWizardSimulator
from simulators.iammeter import IammeterHttpSimulator
from simulators.iometer import BridgeSimulator

from .conftest import free_port

# Every vendor's identifier, as the command line hands them over.
IDENTIFIERS = registry.identifiers()


async def discover(options: Options, console: Console):
    return await discover_with(options, IDENTIFIERS, console)

# --- --scan and --ports ------------------------------------------------------------------------


def test_scan_of_a_network_covers_its_hosts_on_the_default_ports():
    addresses = parse_scan(["192.168.7.0/30"])
    assert addresses == [Address("192.168.7.1", 80), Address("192.168.7.1", 443),
                         Address("192.168.7.2", 80), Address("192.168.7.2", 443)]
    assert len(parse_scan(["192.168.7.0/24"], ports=(80,))) == 254


def test_scan_takes_addresses_names_and_ports_comma_separated_or_repeated():
    addresses = parse_scan(["127.0.0.1:8080,meter.local", "[fd00::5]:81"], ports=(80,))
    assert addresses == [Address("127.0.0.1", 8080), Address("meter.local", 80), Address("fd00::5", 81)]
    assert parse_scan(["fd00::5"], ports=(80,)) == [Address("fd00::5", 80)]
    assert Address("fd00::5", 81).target_host("http") == "[fd00::5]:81"
    assert Address("10.0.0.5", 443).target_host("https") == "10.0.0.5"
    assert Address("10.0.0.5", 8443).target_host("https") == "10.0.0.5:8443"
    # The same pair twice is probed once.
    assert parse_scan(["127.0.0.1:80", "127.0.0.1"], ports=(80,)) == [Address("127.0.0.1", 80)]


@pytest.mark.parametrize("spec, message", [
    ("10.0.0.0/8", "too many"),
    ("192.168.1.0/33", "not a network"),
    ("127.0.0.1:70000", "out of range"),
    ("fd00::zz", "not an IPv6 address"),
    ("http://meter/", "without a scheme"),
    ("meter..local:x", "expected an address"),
])
def test_bad_scan_values_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_scan([spec])


def test_ports_option():
    assert parse_ports("80, 443,80") == (80, 443)
    with pytest.raises(ValueError, match="--ports"):
        parse_ports("http")


# --- identification against the simulators ------------------------------------------------------


@pytest.fixture
async def devices():
    sims = {
        "p1": await HomeWizardSimulator("HWE-P1", serial="3c39e7aa0001").start(),
        "battery": await HomeWizardSimulator("HWE-BAT", serial="5c2fafaa0002").start(),
        "kwh_off": await HomeWizardSimulator("HWE-KWH1", v2=False, serial="3c39e7aa0003", api_enabled=False).start(),
        "gateway": await GatewaySimulator().start(),
        "bridge": BridgeSimulator(),
        "wem3080t": IammeterHttpSimulator("WEM3080T"),
        "legacy": IammeterHttpSimulator("WEM3162"),
    }
    await sims["bridge"].start()
    await sims["wem3080t"].start()
    await sims["legacy"].start()
    yield sims
    for sim in sims.values():
        await sim.stop()


def scan_list(sims) -> list[str]:
    return [sims["p1"].v1_host, sims["p1"].v2_host, sims["battery"].v2_host, sims["kwh_off"].v1_host,
            sims["gateway"].host, sims["bridge"].host, sims["wem3080t"].host,
            sims["legacy"].host, f"127.0.0.1:{free_port()}"]


def test_two_devices_of_a_kind_get_names_from_their_serials():
    from exporter.discover import Device, _named

    devices = _named([Device("enphase", "10.0.0.2", "800-00654-r08", "202400000001"),
                      Device("enphase", "10.0.0.3", "800-00654-r08", "122300000001"),
                      Device("enphase", "10.0.0.4", "800-00654-r08", "999900000001"),
                      Device("iometer", "10.0.0.5", "bridge", "1ISK0000000000")], IDENTIFIERS)
    assert sorted(d.name for d in devices) == ["enphase-gateway-000001", "enphase-gateway-000001-2",
                                               "enphase-gateway-000001-3", "iometer"]


LEGACY_FIRMWARE = "5.0.62"  # plain HTTP with Digest auth; its bodies come from the corpus


@pytest.mark.skipif(firmware_folder(LEGACY_FIRMWARE) is None,
                    reason=f"conformance corpus not found at {CORPUS / LEGACY_FIRMWARE}")
async def test_a_scan_tells_a_legacy_gateway_from_a_modern_one():
    gateway = await GatewaySimulator(LEGACY_FIRMWARE).start()
    try:
        console = Console(err=io.StringIO(), out=io.StringIO(), interactive=False)
        found = await discover(Options(scan=parse_scan([gateway.host]), mdns=False, timeout=3), console)
    finally:
        await gateway.stop()
    old = next(d for d in found if d.vendor == "enphase" and d.serial == gateway.serial)
    assert old.api.startswith("HTTP with Digest") and "tls_fingerprint" not in old.options


async def test_a_scan_identifies_every_vendor(devices):
    sims = devices
    console = Console(err=io.StringIO(), out=io.StringIO(), interactive=False)
    found = await discover(Options(scan=parse_scan(scan_list(sims)), mdns=False, timeout=3), console)
    by = {(d.vendor, d.model): d for d in found}

    # HomeWizard P1 answers on API v1 and v2: one target (v1 works without pairing), v2 mentioned.
    p1 = by[("homewizard", "HWE-P1")]
    assert p1.serial == "3c39e7aa0001" and p1.firmware and p1.api == "API v1 (and v2)"
    assert p1.host == sims["p1"].v1_host and p1.options == {"serial": "3c39e7aa0001"}
    assert any(f"pair homewizard {sims['p1'].v2_host}" in n for n in p1.notes)
    assert p1.name == "p1-meter" and not p1.action_needed
    # The battery speaks only API v2: it needs pairing first.
    battery = by[("homewizard", "HWE-BAT")]
    assert battery.api == "API v2" and battery.action_needed and battery.host == sims["battery"].v2_host
    assert any("token_file" in h for h in battery.hints)
    # A kWh meter with the local API switched off is recognised by its error body.
    off = next(d for d in found if d.vendor == "homewizard" and d.host == sims["kwh_off"].v1_host)
    assert off.action_needed and any("Local API" in n for n in off.notes)

    gateway = next(d for d in found if d.vendor == "enphase" and d.serial == sims["gateway"].serial)
    assert gateway.api.startswith("HTTPS with a token") and gateway.action_needed
    assert gateway.options["tls_fingerprint"].replace(":", "").lower() == sims["gateway"].fingerprint
    assert gateway.firmware.startswith("D8")

    bridge = by[("iometer", "bridge")]
    assert bridge.host == sims["bridge"].host and bridge.firmware == "build-65"
    assert any("1ISK0000000000" in n for n in bridge.notes)

    wem = by[("iammeter", "WEM3080T")]
    assert wem.serial == "3E0BAF87" and wem.firmware == "i.75.97.9" and wem.host == sims["wem3080t"].host
    legacy = next(d for d in found if d.vendor == "iammeter" and d.options.get("legacy"))
    assert legacy.host == sims["legacy"].host
    # No credentials were sent to find the legacy meter: its challenge was enough.
    assert sims["legacy"].requests.count("/monitorjson") == 1

    assert len(found) == 7  # seven devices (the P1 once), and the closed port is none
    assert len({d.name for d in found}) == len(found)  # every target name its own


async def test_the_printed_yaml_carries_what_was_learnt(devices):
    sims = devices
    console = Console(err=io.StringIO(), out=io.StringIO(), interactive=False)
    found = await discover(Options(scan=parse_scan([sims["gateway"].host, sims["bridge"].host]), mdns=False), console)
    text = render_yaml(found)
    document = yaml.safe_load(text)
    entries = {t["vendor"]: t for t in document["targets"]}
    assert entries["enphase"]["serial"] == sims["gateway"].serial  # a string, though all digits
    assert entries["iometer"] == {"name": "iometer", "vendor": "iometer", "host": sims["bridge"].host}
    assert f"# Enphase {found[0].model}, serial {sims['gateway'].serial}" in text
    assert "# username: you@example.com" in text


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_devices(loop_thread):
    kwh = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False, serial="3c39e7aa0010").start())
    wem = IammeterHttpSimulator("WEM3080T")
    loop_thread.run(wem.start())
    bridge = BridgeSimulator()
    loop_thread.run(bridge.start())
    yield kwh, wem, bridge
    for sim in (kwh, wem, bridge):
        loop_thread.run(sim.stop())


def test_from_discover_to_a_working_probe(cli_devices, tmp_path):
    kwh, wem, bridge = cli_devices
    # A small loopback network (127.0.0.1 and .2) on the simulators' ports and a closed one.
    ports = f"{kwh.http_port},{wem.port},{bridge.port},{free_port()}"
    result = run_cli("discover", "--no-mdns", "--scan", "127.0.0.0/30", "--ports", ports, "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert "Scanning 2 addresses (8 address:port pairs, 3 at a time)" in result.stderr
    assert "scanning [" in result.stderr and "8/8" in result.stderr  # progress, plain lines without a terminal
    assert "OK: found 3 devices" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Next: ")
    config = tmp_path / "config.yaml"
    config.write_text(result.stdout)  # stdout holds only the YAML
    names = {t["name"]: t["vendor"] for t in yaml.safe_load(result.stdout)["targets"]}
    assert names == {"kwh-meter-3phase": "homewizard", "iammeter-wem3080t": "iammeter", "iometer": "iometer"}
    check = run_cli("check-config", f"--config.file={config}")
    assert check.returncode == 0, check.stderr
    for name, expected in (("kwh-meter-3phase", "energy_meter_phase_voltage_volts"),
                           ("iammeter-wem3080t", "energy_meter_phase_voltage_volts"),
                           ("iometer", "energy_meter_energy_imported_joules_total")):
        probe = run_cli("probe", name, f"--config.file={config}")
        assert probe.returncode == 0, probe.stderr
        assert f'{expected}{{vendor="{names[name]}",device="{name}"' in probe.stdout


def test_nothing_found_and_bad_input_exit_statuses():
    result = run_cli("discover", "--no-mdns", "--scan", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1 and result.stdout == ""
    assert "Failed: no meters found" in result.stderr and "Next: " in result.stderr and "--scan" in result.stderr
    result = run_cli("discover", "--no-mdns", "--scan", "10.0.0.0/8")
    assert result.returncode == 2 and "too many" in result.stderr and "Next: " in result.stderr
    result = run_cli("discover", "--no-mdns")
    assert result.returncode == 2 and "nothing to do" in result.stderr


# --- mDNS on loopback ------------------------------------------------------------------------------------


async def _register(zc, service_type: str, instance: str, port: int, properties: dict):
    from zeroconf.asyncio import AsyncServiceInfo

    info = AsyncServiceInfo(service_type, f"{instance}.{service_type}", addresses=[socket.inet_aton("127.0.0.1")],
                            port=port, properties=properties, server=f"{instance}.local.")
    await (await zc.async_register_service(info))
    return info


async def _loopback_multicast_works() -> bool:
    """Register a service on loopback and browse for it: the sandbox may not route multicast."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    from exporter.discover import browse

    service_type = "_emx-selftest._tcp.local."
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        await _register(zc, service_type, f"selftest-{uuid.uuid4().hex[:8]}", 9, {})
        found = await browse(2.0, ["127.0.0.1"], service_types=[service_type])
        return bool(found)
    except OSError:
        return False
    finally:
        await zc.async_close()


async def test_mdns_announcements_on_loopback_are_found_and_identified(devices):
    pytest.importorskip("zeroconf")
    if not await _loopback_multicast_works():
        pytest.skip("multicast on the loopback interface does not work here: a service registered on "
                    "127.0.0.1 was not seen by a browser on 127.0.0.1")
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    sims = devices
    tag = uuid.uuid4().hex[:6]
    silent_port = free_port()
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        await asyncio.gather(
            _register(zc, "_hwenergy._tcp.local.", f"p1meter-{tag}", sims["p1"].http_port,
                      {"product_type": "HWE-P1", "serial": "3c39e7aa0001", "api_enabled": "1", "path": "/api/v1"}),
            _register(zc, "_homewizard._tcp.local.", f"battery-{tag}", sims["battery"].https_port,
                      {"product_type": "HWE-BAT", "serial": "5c2fafaa0002"}),
            _register(zc, "_enphase-envoy._tcp.local.", f"envoy-{tag}", sims["gateway"].port,
                      {"serialnum": sims["gateway"].serial, "protovers": "8.3.5169"}),
            _register(zc, "_iometer._tcp.local.", f"iometer-{tag}", sims["bridge"].port, {}),
            # The local API is off: the device says only that; its announcement names it.
            _register(zc, "_hwenergy._tcp.local.", f"kwhmeter-{tag}", sims["kwh_off"].http_port,
                      {"product_type": "HWE-KWH1", "serial": "3c39e7aa0003", "api_enabled": "0"}),
            # Announced, but nothing listens: it is still listed, from what the announcement says.
            _register(zc, "_hwenergy._tcp.local.", f"watermeter-{tag}", silent_port,
                      {"product_type": "HWE-WTR", "serial": "3c39e7aa0099", "api_enabled": "0"}),
        )
        err = io.StringIO()
        found = await discover(Options(mdns=True, mdns_seconds=3.0, interfaces=["127.0.0.1"], timeout=3),
                               Console(err=err, out=io.StringIO(), interactive=False))
    finally:
        await zc.async_close()
    mine = {d.serial: d for d in found if "mDNS" in d.found_by}
    p1 = mine["3c39e7aa0001"]
    assert p1.model == "HWE-P1" and p1.api == "API v1" and p1.host == sims["p1"].v1_host and p1.firmware
    battery = mine["5c2fafaa0002"]
    assert battery.api == "API v2" and battery.host == sims["battery"].v2_host and battery.action_needed
    gateway = mine[sims["gateway"].serial]
    assert gateway.vendor == "enphase" and gateway.firmware.startswith("D8") and "tls_fingerprint" in gateway.options
    bridge = next(d for d in found if d.vendor == "iometer")
    assert bridge.host == sims["bridge"].host and "mDNS" in bridge.found_by
    off = mine["3c39e7aa0003"]
    assert off.model == "HWE-KWH1" and off.host == sims["kwh_off"].v1_host and off.action_needed
    assert off.options == {"serial": "3c39e7aa0003"} and any("Local API" in n for n in off.notes)
    silent = mine["3c39e7aa0099"]
    assert silent.model == "HWE-WTR" and silent.action_needed
    assert any("did not answer" in n for n in silent.notes) and any("Local API" in n for n in silent.notes)
    assert "listening" in err.getvalue()


# --- the identifiers are handed in: discovery itself knows no vendor ----------------------------------


async def test_discovery_asks_only_the_identifiers_it_is_handed():
    from aiohttp import web

    from exporter.discover import Device, DeviceIdentifier, json_body

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"maker": "acme", "serial": "ACME0042"})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    asked: list[str] = []

    async def identify(prober, address, scheme, base):
        asked.append(base)
        answer = json_body(await prober.get(f"{base}/whoami"))
        if not isinstance(answer, dict) or answer.get("maker") != "acme":
            return None
        return Device("acme", address.target_host(scheme), model="box", serial=answer["serial"])

    identifier = DeviceIdentifier(vendor="acme", identify=identify, title="ACME", schemes=("http",),
                                  name=lambda device: "acme-box")
    try:
        console = Console(err=io.StringIO(), out=io.StringIO(), interactive=False)
        found = await discover_with(Options(scan=parse_scan([f"127.0.0.1:{port}"]), mdns=False, timeout=3),
                                    [identifier], console)
    finally:
        await runner.cleanup()
    assert asked == [f"http://127.0.0.1:{port}"]
    [device] = found
    assert (device.vendor, device.name, device.serial) == ("acme", "acme-box", "ACME0042")
    assert "# ACME box, serial ACME0042" in render_yaml(found)
