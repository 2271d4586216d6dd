"""The real exporter process with IOmeter targets: the bridge (poll and sse) and a partner account
(subscription and query), against the simulators, scraped as Prometheus would."""

from __future__ import annotations

import textwrap
import time

import pytest

from simulators.iometer import THREE_PHASE_READING, BridgeSimulator
from simulators.iometer_partner import PartnerApiSimulator, demo_installations, demo_values

from .conftest import ExporterProcess, free_port, sample_value, wait_until


@pytest.fixture
def simulators(loop_thread):
    bridge = BridgeSimulator(reading=THREE_PHASE_READING)
    partner = PartnerApiSimulator(installations=demo_installations(2, 1))
    loop_thread.run(bridge.start())
    loop_thread.run(partner.start())
    now = time.time()
    for installation in partner.installations:
        for meter in installation.meters:
            loop_thread.call(partner.publish, meter, now - 30, demo_values(2500.0, 640.0))
    yield bridge, partner
    loop_thread.run(bridge.stop())
    loop_thread.run(partner.stop())


@pytest.fixture
def exporter(tmp_path, simulators):
    bridge, partner = simulators
    first = partner.installations[0].meters[0].number
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        state_directory: state
        defaults:
          interval: 1s
        targets:
          - name: hall
            vendor: iometer
            host: {bridge.host}
          - name: hall-stream
            vendor: iometer
            host: {bridge.host}
            mode: sse
          - name: fleet
            vendor: iometer
            transport: partner
            partner_id: {partner.partner_id}
            secret: {partner.secret}
            auth: wsse
            endpoint: {partner.url}
            meters: ["{first}=house"]
            min_emit_interval: 0s
            interval: 60s
          - name: fleet-query
            vendor: iometer
            transport: partner
            partner_id: {partner.partner_id}
            secret: {partner.secret}
            endpoint: {partner.url}
            mode: query
            interval: 10s
    """))
    proc = ExporterProcess(config, free_port())
    yield proc
    proc.stop()


def up(proc, name):
    return sample_value(proc.metrics(), "energy_meter_exporter_target_up", device=name)


def test_iometer_targets_end_to_end(exporter, simulators):
    bridge, partner = simulators
    proc = exporter
    wait_until(lambda: all(up(proc, n) == 1 for n in ("hall", "hall-stream", "fleet", "fleet-query")),
               timeout=30, what="all IOmeter targets up")
    wait_until(lambda: sample_value(proc.metrics(), "energy_meter_account_energy_imported_joules_total",
                                    device="fleet", meter="house") is not None, what="partner readings")
    text = proc.metrics()
    for device in ("hall", "hall-stream"):
        assert sample_value(text, "energy_meter_energy_imported_joules_total", device=device,
                            vendor="iometer", obis="1-0:1.8.0") == pytest.approx(18123456.7 * 3600)
        assert sample_value(text, "energy_meter_phase_voltage_volts", device=device, phase="l2") == 231.9
    assert sample_value(text, "energy_meter_reader_battery_level_ratio", device="hall") == 1.0
    assert sample_value(text, "energy_meter_export_power_watts", device="hall", obis="1-0:2.7.0") == 1250
    assert sample_value(text, "energy_meter_obis_value", device="hall", obis="1-0:15.7.0", unit="W") == 1250
    installation = partner.installations[0]
    assert sample_value(text, "energy_meter_account_energy_imported_joules_total", device="fleet",
                        installation=installation.id, meter="house") == 2500.0 * 3600
    assert sample_value(text, "energy_meter_account_energy_imported_joules_total", device="fleet-query",
                        meter=installation.meters[0].number) == 2500.0 * 3600
    assert sample_value(text, "energy_meter_gateway_connected", device="fleet",
                        device_id=installation.devices[0].id) == 1
    assert sample_value(text, "energy_meter_exporter_readings_received_total", device="fleet") >= 2
    assert partner.secret not in text
    assert bridge.stream_requests["reading"] >= 1  # the sse target streamed
