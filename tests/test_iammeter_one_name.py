"""One IAMMETER meter, one set of names: the same simulated meter read over every transport
(local HTTP, Modbus/TCP, MQTT through a real Mosquitto, HTTP upload, TCP upload, and the cloud)
by one running daemon gives the same metric families with the same labels, whatever the
transport. What a transport cannot carry is listed below (DIFFERENCES) with the reason, and
asserted as exactly that: a new difference fails the test, and so does a listed one that no
longer holds.

The meter has net metering on, so its JSON carries the net row (the meter's totals) like the
Modbus "total" registers, and reactive measurement on, so its JSON carries `EA.Reactive` like
the Modbus reactive registers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.daemon import Daemon
from exporter.model import catalogue as M
from simulators.iammeter import IammeterHttpSimulator, IammeterModbusSimulator
from simulators.iammeter_cloud import CloudMeter, IammeterCloudSimulator
from simulators.iammeter_push import HttpPushMeter, MosquittoBroker, MqttMeter
from simulators.iammeter_tcp import TcpMeter

from .configs import load_config
from .conftest import free_port, wait_listening

TRANSPORTS = ("http", "modbus", "mqtt", "push", "tcp", "cloud")
SELF_METRICS = "energy_meter_exporter_"  # the exporter's own series: polls, errors, receivers
ACCOUNT_LABELS = {"installation", "meter"}  # what a cloud account adds to tell its meters apart


def names(*metrics: M.Metric) -> frozenset[str]:
    return frozenset(m.name for m in metrics)


@dataclass(frozen=True)
class Difference:
    """Families a transport lacks, or has beyond the local HTTP API, and why."""

    missing: frozenset[str] = frozenset()
    extra: frozenset[str] = frozenset()
    why: str = ""


# Only the local web API has endpoints beside the measurement: the Wi-Fi signal
# (`/api/monitor`) and the upload settings (`/api/wifidata`). Uploads, Modbus and the cloud
# carry the measurement only.
WEB_API_ONLY = names(M.WIFI_SIGNAL, M.UPLOAD_MODE, M.UPLOAD_INTERVAL)
REACTIVE_THREE = names(M.PHASE_REACTIVE_POWER, M.PHASE_REACTIVE_ENERGY_INDUCTIVE, M.PHASE_REACTIVE_ENERGY_CAPACITIVE)
REACTIVE_SINGLE = names(M.REACTIVE_POWER, M.REACTIVE_ENERGY_INDUCTIVE, M.REACTIVE_ENERGY_CAPACITIVE)

DIFFERENCES: dict[str, dict[str, Difference]] = {
    "WEM3080T": {
        "modbus": Difference(
            missing=WEB_API_ONLY | names(M.POWER_FACTOR, M.DEVICE_INFO),
            extra=names(M.DEVICE_UPTIME),
            why="the register map has no system power factor (the net row has one) and a runtime register; "
                "it holds no serial nor firmware, and `model: auto` cannot tell the three-phase models apart"),
        "mqtt": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "push": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "tcp": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "cloud": Difference(
            missing=WEB_API_ONLY | REACTIVE_THREE,
            extra=names(M.MEASUREMENT_TIME),
            why="the cloud's rows have no reactive figures; it tells when the meter uploaded them"),
    },
    "WEM3080": {
        "modbus": Difference(
            missing=WEB_API_ONLY | REACTIVE_SINGLE | names(M.FREQUENCY, M.POWER_FACTOR),
            why="the single-phase register map is voltage, current, power and the two counters"),
        "mqtt": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "push": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "tcp": Difference(missing=WEB_API_ONLY, why="an upload is the measurement document only"),
        "cloud": Difference(
            missing=WEB_API_ONLY | REACTIVE_SINGLE,
            extra=names(M.MEASUREMENT_TIME),
            why="the cloud's rows have no reactive figures; it tells when the meter uploaded them"),
    },
}
# The device figures every transport must give: the meter's total power and counters, by the
# same names as a single-phase meter's (a cloud account's under energy_meter_account_*).
TOTALS = names(M.ACTIVE_POWER, M.ENERGY_IMPORTED, M.ENERGY_EXPORTED)


def local_name(name: str) -> str:
    """A cloud account's series under the name the meter's own series have."""
    return name.replace("energy_meter_account_", "energy_meter_", 1)


def families(text: str) -> dict[str, dict[str, set[tuple]]]:
    """Per target (device label): family (sample name) -> the label sets of its samples, as
    label names with the phase (a series per phase is part of the shape). The vendor and device
    labels are the same everywhere and left out; so are the labels a cloud account adds to tell
    its meters apart, and its `account_` prefix."""
    found: dict[str, dict[str, set[tuple]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(SELF_METRICS) or "device" not in sample.labels:
                continue
            device = sample.labels["device"]
            cloud = device == "over-cloud"
            shape = tuple(sorted((k, v if k == "phase" else "") for k, v in sample.labels.items()
                                 if k not in ("vendor", "device") and not (cloud and k in ACCOUNT_LABELS)))
            found[device][local_name(sample.name) if cloud else sample.name].add(shape)
    return found


def value(text: str, name: str, device: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("device") == device:
                return sample.value
    return None


class Meter:
    """One simulated meter (its state shared by the HTTP and Modbus simulators; the uploading
    meters and the cloud start from the same values) and a daemon reading it six ways."""

    def __init__(self, model: str, tmp_path, broker: MosquittoBroker) -> None:
        self.model = model
        self.tmp_path = tmp_path
        self.broker = broker
        self.http = IammeterHttpSimulator(model, nem=True, reactive=True)
        self.modbus = IammeterModbusSimulator(self.http.state)
        self.sn = self.http.state.serial
        self.push_port, self.tcp_port = free_port(), free_port()
        upload = {"serial": self.sn, "interval": 0.5, "nem": True, "reactive": True}
        self.uploads = [
            MqttMeter(model, port=broker.port, **upload),
            HttpPushMeter(model, url=f"http://127.0.0.1:{self.push_port}/", **upload),
            TcpMeter(model, port=self.tcp_port, **upload),
        ]
        # The cloud keeps the rows the meter uploads: its phases and its net row.
        rows = [self.http._row(p) for p in self.http.state.phases]
        if len(rows) > 1:
            rows.append(self.http._row(self.http.state.net()))
        self.cloud = IammeterCloudSimulator(meters=[CloudMeter(self.sn, rows, time.time(), flat=len(rows) == 1)])
        self.daemon: Daemon | None = None

    def config(self) -> dict:
        common = {"vendor": "iammeter", "interval": "1s"}
        upload = {"vendor": "iammeter", "interval": "2s"}  # the fastest a meter uploads
        return {
            "state_directory": str(self.tmp_path / "state"),
            "mqtt_brokers": [{"name": "local", "host": "127.0.0.1", "port": self.broker.port,
                              "reconnect_delay": "0.1s"}],
            "http_push": {"listen": f"127.0.0.1:{self.push_port}", "max_requests_per_minute": 0},
            "tcp_push": {"listen": f"127.0.0.1:{self.tcp_port}"},
            "targets": [
                {"name": "over-http", **common, "host": self.http.host},
                {"name": "over-modbus", **common, "transport": "modbus", "host": "127.0.0.1",
                 "port": self.modbus.port},
                {"name": "over-mqtt", **upload, "transport": "mqtt", "broker": "local", "sn": self.sn},
                {"name": "over-push", **upload, "transport": "push", "sn": self.sn},
                {"name": "over-tcp", **upload, "transport": "tcp", "sn": self.sn},
                # the cloud allows one metersdata call per 5 minutes: the first poll is enough
                {"name": "over-cloud", "vendor": "iammeter", "transport": "cloud", "interval": "5m",
                 "base_url": self.cloud.base_url, "username": self.cloud.username,
                 "password": self.cloud.password, "sns": [self.sn], "analysis": False, "timezone": "UTC"},
            ],
        }

    async def start(self) -> None:
        await self.http.start()
        await self.modbus.start()
        await self.cloud.start()
        path = self.tmp_path / "exporter.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.daemon = Daemon(load_config(path))
        await self.daemon.start("127.0.0.1", 0)
        await wait_listening(self.push_port)
        await wait_listening(self.tcp_port)
        for meter in self.uploads:
            await meter.start()

    async def stop(self) -> None:
        for meter in self.uploads:
            await meter.stop()
        if self.daemon is not None:
            await self.daemon.stop()
        await self.cloud.stop()
        await self.modbus.stop()
        await self.http.stop()

    async def scrape(self) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.daemon.port}/metrics") as resp:
                return await resp.text()


@contextlib.asynccontextmanager
async def reading(model: str, tmp_path, broker):
    meter = Meter(model, tmp_path, broker)
    try:
        await meter.start()
        yield meter
    finally:
        await meter.stop()


async def complete_scrape(meter: Meter) -> str:
    """A scrape once every target has its device totals and the HTTP target its Wi-Fi and
    upload figures (read in the same first poll), so that what is missing then is missing for
    good."""
    wanted = {f"over-{t}": TOTALS for t in TRANSPORTS}
    wanted["over-http"] = TOTALS | WEB_API_ONLY
    text, missing = "", {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = await meter.scrape()
        found = families(text)
        missing = {device: sorted(names_ - set(found.get(device, {}))) for device, names_ in wanted.items()}
        missing = {device: gap for device, gap in missing.items() if gap}
        if not missing:
            return text
        await asyncio.sleep(0.25)
    raise AssertionError(f"families never arrived: {missing}")


@pytest.mark.parametrize("model", ["WEM3080T", "WEM3080"])
async def test_every_transport_names_the_meter_the_same(model, tmp_path, broker):
    async with reading(model, tmp_path, broker) as meter:
        text = await complete_scrape(meter)
    found = families(text)
    reference = found["over-http"]
    assert TOTALS | {M.PHASE_VOLTAGE.name, M.FREQUENCY.name, M.DEVICE_INFO.name} <= set(reference)
    for transport in TRANSPORTS[1:]:
        difference = DIFFERENCES[model].get(transport, Difference())
        got = found[f"over-{transport}"]
        expected = {n: shape for n, shape in reference.items() if n not in difference.missing}
        # names first (the clearest message), then the labels of each family
        assert set(got) - set(expected) == set(difference.extra), f"{transport}: more than HTTP ({difference.why})"
        assert set(expected) - set(got) == set(), f"{transport}: less than HTTP ({difference.why})"
        for name, shapes in expected.items():
            shapes_got = got[name]
            if name == M.DEVICE_INFO.name and transport == "cloud":
                # a cloud account's meters are told apart by the `meter` label of their identity
                shapes_got = {tuple(item for item in shape if item[0] != "meter") for shape in shapes_got}
            assert shapes_got == shapes, f"{transport}: labels of {name}"

    # The same figure under that name everywhere: the meter's total, the algebraic sum of its
    # phases (the net row, the total register, or the one row of a single-phase meter).
    phases = meter.http.state.phases
    total = sum(p.power for p in phases)
    for transport in TRANSPORTS:
        name = M.ACCOUNT_ACTIVE_POWER.name if transport == "cloud" else M.ACTIVE_POWER.name
        # the cloud's simulated power drifts slowly with the time of day
        assert value(text, name, f"over-{transport}") == pytest.approx(
            total, rel=0.01 if transport == "cloud" else 1e-9), transport
    # ... and the device's energy counters are the counters of that total (with net metering on,
    # the net row's), over the local JSON and Modbus alike, to the registers' resolution.
    resolution = 3.6e6 / (3200 if model == "WEM3080" else 800)
    for name in (M.ENERGY_IMPORTED.name, M.ENERGY_EXPORTED.name):
        over_http = value(text, name, "over-http")
        assert over_http is not None, name
        assert value(text, name, "over-modbus") == pytest.approx(over_http, abs=resolution), name
