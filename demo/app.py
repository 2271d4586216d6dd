"""`make demo`: built-in device simulators plus the real exporter daemon, all on 127.0.0.1.

Each vendor contributes a `Participant`: simulators it starts and the YAML targets pointing at
them. The exporter reads the generated configuration like any other (it is printed, so it
doubles as an example), and Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import yaml

from exporter.config.loader import ConfigError, load_config
from exporter.daemon import Daemon
from exporter.runtime import logs
from exporter.runtime.state import write_private_file
from exporter.vendors import registry


@dataclass
class Participant:
    targets: list[dict]
    stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Top-level sections shared by targets (mqtt_brokers, http_push, ...), merged into the
    # generated configuration: lists are joined, mappings combined.
    sections: dict = field(default_factory=dict)


async def homewizard(workdir: Path) -> Participant:
    from simulators.homewizard import HomeWizardSimulator

    p1 = await HomeWizardSimulator("HWE-P1", live=True, auto_button_after=5).start()
    token_file = workdir / "homewizard-p1.token"
    write_private_file(token_file, p1.issue_token() + "\n")
    kwh3 = await HomeWizardSimulator("HWE-KWH3", v2=False, live=True, serial="3c39e7aa0003").start()
    kwh1 = await HomeWizardSimulator("HWE-KWH1", v2=False, live=True, serial="3c39e7aa0007").start()
    # A P1 meter on API v1: its capture has more external meters than the v2 one (warm water,
    # and heat meters that report in m3, shown as plain external readings).
    p1_v1 = await HomeWizardSimulator("HWE-P1", v2=False, live=True, serial="3c39e7aa0008").start()
    water = await HomeWizardSimulator("HWE-WTR", live=True, serial="3c39e7aa0004").start()
    socket = await HomeWizardSimulator("HWE-SKT", live=True, serial="3c39e7aa0005").start()
    battery = await HomeWizardSimulator("HWE-BAT", live=True, serial="5c2fafaa0006").start()
    battery_token = workdir / "homewizard-battery.token"
    write_private_file(battery_token, battery.issue_token() + "\n")
    sims = [p1, p1_v1, kwh3, kwh1, water, socket, battery]
    return Participant(
        targets=[
            {"name": "p1-meter", "vendor": "homewizard", "host": p1.v2_host, "token_file": str(token_file),
             "ca_file": str(p1.ca_file), "serial": p1.serial, "interval": "5s"},
            {"name": "p1-meter-v1", "vendor": "homewizard", "host": p1_v1.v1_host, "interval": "5s"},
            {"name": "kwh-3phase", "vendor": "homewizard", "host": kwh3.v1_host, "interval": "5s"},
            # single phase: a total power factor, which three-phase meters give per phase only
            {"name": "kwh-1phase", "vendor": "homewizard", "host": kwh1.v1_host, "interval": "5s"},
            {"name": "water", "vendor": "homewizard", "host": water.v1_host, "interval": "5s"},
            {"name": "socket", "vendor": "homewizard", "host": socket.v1_host, "interval": "5s"},
            {"name": "battery", "vendor": "homewizard", "host": battery.v2_host, "token_file": str(battery_token),
             "ca_file": str(battery.ca_file), "interval": "5s"},
        ],
        stop=[s.stop for s in sims],
        notes=[f"HomeWizard pairing: energy-meter-exporter pair homewizard {p1.v2_host} --ca-file {p1.ca_file} "
               "(the simulated button is pressed 5 s after the first attempt)"],
    )


async def iammeter(workdir: Path) -> Participant:
    from simulators.iammeter import IammeterHttpSimulator, IammeterModbusSimulator, meter_state
    from simulators.iammeter_push import HttpPushMeter, MosquittoBroker, MqttMeter, free_port, mosquitto_binary

    http = IammeterHttpSimulator("WEM3080T", nem=True, reactive=True)
    modbus = IammeterModbusSimulator(http.state)
    # A WEM3046T (its CT ratio is read over HTTP only) and a single-phase WEM3080 with reactive
    # measurement on (device totals of the reactive figures), serials of their own.
    ct_state, _ = meter_state("WEM3046T")
    ct_state.serial = "7A30C2E2"
    ct_meter = IammeterHttpSimulator("WEM3046T", state=ct_state)
    single_state, _ = meter_state("WEM3080", reactive=True)
    single_state.serial = "DA2BED95"
    single = IammeterHttpSimulator("WEM3080", state=single_state)
    for simulator in (http, modbus, ct_meter, single):
        await simulator.start()
    targets = [
        {"name": "iammeter-http", "vendor": "iammeter", "host": http.host, "interval": "5s"},
        {"name": "iammeter-modbus", "vendor": "iammeter", "transport": "modbus", "host": "127.0.0.1",
         "port": modbus.port, "interval": "5s"},
        {"name": "iammeter-3046", "vendor": "iammeter", "host": ct_meter.host, "interval": "5s"},
        {"name": "iammeter-1phase", "vendor": "iammeter", "host": single.host, "interval": "5s"},
    ]
    stops = [http.stop, modbus.stop, ct_meter.stop, single.stop]
    states = [http.state, ct_state, single_state]
    sections: dict = {}
    notes: list[str] = []

    # A meter in MQTT mode, publishing to a Mosquitto broker of its own every 2 s.
    if mosquitto_binary():
        broker = await MosquittoBroker(directory=workdir / "mosquitto").start()
        mqtt_meter = await MqttMeter("WEM3080", port=broker.port, interval=2.0).start()
        sections["mqtt_brokers"] = [{"name": "demo-broker", "host": "127.0.0.1", "port": broker.port}]
        targets.append({"name": "iammeter-mqtt", "vendor": "iammeter", "transport": "mqtt",
                        "broker": "demo-broker", "sn": mqtt_meter.serial, "interval": "2s"})
        stops = [mqtt_meter.stop, broker.close, *stops]
        states.append(mqtt_meter.state)
        notes.append(f"IAMMETER MQTT: Mosquitto on 127.0.0.1:{broker.port}; a WEM3080 publishes "
                     f"{mqtt_meter.topic} every 2 s")
    else:
        notes.append("IAMMETER MQTT left out: Mosquitto is not installed (apt-get install mosquitto)")

    # A meter in HTTP upload mode, posting to the exporter's push listener every 2 s.
    push_port = free_port()
    sections["http_push"] = {"listen": f"127.0.0.1:{push_port}", "allowed_networks": ["127.0.0.0/8"]}
    push_meter = await HttpPushMeter("WEM3046T", url=f"http://127.0.0.1:{push_port}/", interval=2.0).start()
    targets.append({"name": "iammeter-push", "vendor": "iammeter", "transport": "push",
                    "sn": push_meter.serial, "interval": "2s"})
    stops.insert(0, push_meter.stop)
    states.append(push_meter.state)
    notes.append(f"IAMMETER HTTP upload: a WEM3046T posts to http://127.0.0.1:{push_port}/ every 2 s")

    # Two meters in TCP upload mode: one on plain TCP keeping its connection, one over TLS (a
    # certificate generated for the exporter's listener) with a connection per upload.
    from simulators.iammeter_tcp import TcpMeter
    from simulators.tls import new_authority

    authority = new_authority("energy-meter-exporter demo upload CA", "energy-meter-exporter", workdir / "tcp-tls")
    authority.issue("127.0.0.1", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="tcp-push")
    tcp_port, tls_port = free_port(), free_port()
    sections["tcp_push"] = {"listen": f"127.0.0.1:{tcp_port}", "tls_listen": f"127.0.0.1:{tls_port}",
                            "tls_cert_file": str(authority.directory / "tcp-push.pem"),
                            "tls_key_file": str(authority.directory / "tcp-push.key"),
                            "allowed_networks": ["127.0.0.0/8"]}
    tcp_meter = await TcpMeter("WEM3080", port=tcp_port, serial="5DB50BF5", interval=2.0).start()
    tls_meter = await TcpMeter("WEM3080T", port=tls_port, tls=True, ca_file=authority.ca_file, serial="3E0BAF88",
                               keep=False, interval=2.0).start()
    for name, meter in (("iammeter-tcp", tcp_meter), ("iammeter-tls", tls_meter)):
        targets.append({"name": name, "vendor": "iammeter", "transport": "tcp", "sn": meter.serial, "interval": "2s"})
        stops.insert(0, meter.stop)
        states.append(meter.state)
    notes.append(f"IAMMETER TCP upload: a WEM3080 writes to {tcp_meter.address} on a kept connection, a WEM3080T to "
                 f"{tls_meter.address} (CA {authority.ca_file}) with a connection per upload, every 2 s")

    # A cloud account with four meters and a place. Real clock and the seed's quotas: one
    # metersdata call per 5 minutes, so the values change every 5 minutes. Three meters of the
    # seed's metersdata answer (single phase; three phase; three phase with net metering, whose
    # 4th row is the net row), read together in mode account, and the single-phase meter of the
    # seed's meterdata2 example (with a power factor; the seed names no SN for it) read alone in
    # mode meter: one SN, so its daily power and offline analyses both come with the first poll.
    from simulators.iammeter_cloud import (SEED_METERDATA2_SINGLE, CloudMeter, IammeterCloudSimulator, parse_utc,
                                           seed_meters)

    account_sns = ("DA2BED94", "3FE34ABE", "59C9AB8D")
    example = SEED_METERDATA2_SINGLE["data"]
    voltage, current, power, factor, imported, exported = example["values"][0]
    taken = parse_utc(example["gmtTime"])
    annex = CloudMeter("6C1F0A2D", [[voltage, current, power, imported, exported, None, factor]], taken, flat=True,
                       upload_second=taken % 60)
    cloud = IammeterCloudSimulator(meters=[m for m in seed_meters() if m.sn in account_sns] + [annex])
    await cloud.start()
    cloud_password = workdir / "iammeter-cloud.password"
    write_private_file(cloud_password, cloud.password + "\n")
    account = {"vendor": "iammeter", "transport": "cloud", "base_url": cloud.base_url, "username": cloud.username,
               "password_file": str(cloud_password), "timezone": "Asia/Shanghai", "interval": "5m"}
    targets.append({"name": "iammeter-cloud", **account, "sns": list(account_sns),
                    "names": ["DA2BED94=garage", "3FE34ABE=house", "59C9AB8D=workshop"], "places": ["2393=home"]})
    targets.append({"name": "iammeter-cloud-meter", **account, "mode": "meter", "sns": [annex.sn],
                    "names": [f"{annex.sn}=annex"]})
    stops.append(cloud.stop)
    notes.append(f"IAMMETER cloud: an account with four meters at {cloud.base_url} (quotas as the real cloud's: "
                 "metersdata once per 5 minutes, meterdata2 12 times an hour per meter)")

    async def advance() -> None:  # the meters' readings move on once a second
        while True:
            await asyncio.sleep(1)
            for state in states:
                state.advance(1)

    ticker = asyncio.create_task(advance())

    async def stop_ticker() -> None:
        ticker.cancel()

    return Participant(targets=targets, stop=[stop_ticker, *stops], notes=notes, sections=sections)


# A gateway whose captures hold the ensemble endpoints (/ivp/ensemble/power, secctrl, status):
# IQ Batteries and AC Batteries. Its bodies come from the conformance corpus beside the project.
ENSEMBLE_FIRMWARE = "8.2.4382_ACB"
LIVEDATA_REFRESH = 30.0  # seconds; the exporter drops live data older than 5 minutes (the stream is off)


async def enphase(workdir: Path) -> Participant:
    from simulators.enphase import GatewaySimulator, firmwares, start_demo

    # Firmware 8.2 with production, net-consumption and storage CTs, 35 microinverters and 5
    # IQ Batteries; its bodies ship with the package, so this works from a plain clone.
    gateway, enlighten, target = await start_demo()
    user, password = next(iter(enlighten.accounts.items()))
    password_file = workdir / "enlighten.password"
    write_private_file(password_file, password + "\n")
    participant = Participant(
        targets=[target],
        stop=[gateway.stop, enlighten.stop],
        notes=[f"Enphase IQ Gateway {gateway.firmware} at {gateway.host} (CTs, microinverters, batteries); the "
               f"exporter fetches its token from the simulated Enlighten at {enlighten.url}",
               f"Enphase token by hand: energy-meter-exporter token enphase --host {gateway.host} --username {user} "
               f"--password-file {password_file} --enlighten-url {enlighten.url} --token-url {enlighten.url} "
               f"--output {workdir / 'enphase.token'}"],
    )
    if ENSEMBLE_FIRMWARE not in firmwares():
        participant.notes.append(f"Enphase battery site left out: no captures of firmware {ENSEMBLE_FIRMWARE} "
                                 "(the conformance corpus beside the project)")
        return participant

    # A second site with a pasted token: the ensemble endpoints, and the gateway's live data
    # (the seed's shape, with the captured batteries' aggregates) kept fresh as while the
    # Enphase app's live view is open. Read every 5 s, so that the CT health (first read ten
    # polls in) shows within a minute.
    site = await GatewaySimulator(ENSEMBLE_FIRMWARE, issuer=gateway.issuer).start()
    token_file = workdir / "enphase-site.token"
    write_private_file(token_file, site.mint_token() + "\n")

    async def live() -> None:
        while True:
            site.serve_livedata(time.time())
            await asyncio.sleep(LIVEDATA_REFRESH)

    refresh = asyncio.create_task(live())

    async def stop_refresh() -> None:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)

    participant.targets.append({"name": "enphase-battery-site", "vendor": "enphase", "host": site.host,
                                "token_file": str(token_file), "tls_fingerprint": site.fingerprint,
                                "nightly_window": "off", "interval": "5s"})
    participant.stop[:0] = [stop_refresh, site.stop]
    participant.notes.append(f"Enphase IQ Gateway {site.firmware} at {site.host} (IQ Batteries and AC Batteries, "
                             f"live data on), with a pasted token ({token_file})")
    return participant


async def iometer(workdir: Path) -> Participant:
    from simulators.iometer import start_demo

    demo = await start_demo()
    return Participant(targets=demo.targets, stop=[demo.stop], notes=demo.notes)


PARTICIPANTS: list[Callable[[Path], Awaitable[Participant]]] = [homewizard, iammeter, enphase, iometer]

# The same demo with Prometheus, Alertmanager and Grafana around it (docker-compose.yml).
COMPOSE_HINT = ("With Prometheus, alerts and Grafana dashboards: docker compose --profile demo up -d --build\n"
                "  then open http://localhost:3000 (admin/admin), folder \"Energy meters\".")


def config_document(participants: list[Participant], workdir: Path, extra_targets: list[dict] = ()) -> dict:
    """The demo's configuration: every participant's targets and shared sections (list sections
    such as mqtt_brokers are joined, mapping sections merged)."""
    document: dict = {"state_directory": str(workdir / "state")}
    for p in participants:
        for name, value in p.sections.items():
            held = document.get(name)
            if isinstance(held, list) and isinstance(value, list):
                document[name] = held + value
            elif isinstance(held, dict) and isinstance(value, dict):
                document[name] = {**held, **value}
            else:
                document[name] = value
    document["targets"] = [t for p in participants for t in p.targets] + list(extra_targets)
    return document


async def run(host: str, port: int, workdir: Path, ready: asyncio.Event | None = None,
              stop: asyncio.Event | None = None) -> int:
    participants: list[Participant] = []
    daemon: Daemon | None = None
    stop = stop or asyncio.Event()
    try:
        for start in PARTICIPANTS:
            participants.append(await start(workdir))
        config_path = workdir / "demo.yaml"
        document = config_document(participants, workdir)
        write_private_file(config_path, "# Generated by `make demo`.\n" + yaml.safe_dump(document, sort_keys=False))
        try:
            config = load_config(config_path, vendors=registry)
        except ConfigError as exc:
            print(f"demo configuration invalid:\n{exc}", file=sys.stderr)
            return 1
        daemon = Daemon(config)
        try:
            bound = await daemon.start(host, port)
        except OSError as exc:
            print(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Try `make demo PORT=9897`.", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.reload()))
        print(f"\nenergy-meter-exporter demo is running: {len(config.targets)} simulated devices.\n"
              f"  Status page: http://{host}:{bound}/\n  Metrics:     http://{host}:{bound}/metrics\n"
              f"  Config:      {config_path}", flush=True)
        for p in participants:
            for note in p.notes:
                print(f"  {note}")
        print(COMPOSE_HINT)
        print("Press Ctrl-C to stop.\n", flush=True)
        if ready:
            ready.set()
        await stop.wait()
        return 0
    finally:
        if daemon is not None:
            await daemon.stop()
        for p in participants:
            for stop_sim in p.stop:
                await stop_sim()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo")
    parser.add_argument("--port", type=int, default=9896)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=logs.LEVELS)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, "logfmt")
    with tempfile.TemporaryDirectory(prefix="energy-meter-demo-") as workdir:
        status = asyncio.run(run(args.host, args.port, Path(workdir)))
    print("demo stopped.")
    return status

