"""End to end: simulators -> exporter process -> a real Prometheus server -> its HTTP API."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from simulators.homewizard import HomeWizardSimulator

from .conftest import ExporterProcess, free_port, require_binary, wait_until
from .prometheus import PrometheusServer

TOKEN = "00112233445566778899aabbccddeeff"


@pytest.fixture
def stack(tmp_path, loop_thread):
    prometheus_bin = require_binary("prometheus")
    p1 = loop_thread.run(HomeWizardSimulator("HWE-P1").start())
    p1.tokens.add(TOKEN)
    water = loop_thread.run(HomeWizardSimulator("HWE-WTR").start())
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        defaults:
          interval: 1s
        targets:
          - name: p1
            vendor: homewizard
            host: {p1.v2_host}
            token: {TOKEN}
            ca_file: {p1.ca_file}
          - name: water
            vendor: homewizard
            host: {water.v1_host}
    """))
    exporter = ExporterProcess(config, free_port())
    yield prometheus_bin, exporter, tmp_path
    exporter.stop()
    for sim in (p1, water):
        loop_thread.run(sim.stop())


def test_prometheus_scrapes_the_exporter(stack):
    # Prometheus asks for OpenMetrics first; the text format is checked by promtool below.
    prometheus_bin, exporter, tmp_path = stack
    prom = PrometheusServer(prometheus_bin, tmp_path, exporter.port)
    try:
        wait_until(lambda: prom.value('energy_meter_exporter_target_up{device="p1"}') == 1, timeout=30,
                   what="p1 up in prometheus")
        assert prom.value('up{job="energy"}') == 1
        assert prom.value('energy_meter_active_power_watts{vendor="homewizard",device="p1"}') == -543
        assert prom.value('energy_meter_energy_imported_joules_total{device="p1",obis="1-0:1.8.0"}') == pytest.approx(13779.338 * 3.6e6)
        assert prom.value('sum(energy_meter_tariff_energy_imported_joules_total{device="p1"}) / 3.6e6') == pytest.approx(13779.338)
        assert prom.value('energy_meter_water_cubic_meters_total{device="water"}') == pytest.approx(8129.123)
        assert prom.value('energy_meter_battery_state_of_charge_ratio') is None  # no battery configured
        assert prom.value('count(energy_meter_phase_active_power_watts{device="p1"})') == 3
        info = prom.query('energy_meter_device_info{device="p1"}')
        assert info[0]["metric"]["model"] == "HWE-P1" and info[0]["metric"]["serial"] == "5c2fafaabbcc"
        # the scrape produced no errors or warnings in Prometheus
        assert prom.value('scrape_samples_post_metric_relabeling{job="energy"}') > 50
    finally:
        prom.stop()


def test_promtool_check_metrics_on_live_output(stack):
    _, exporter, _ = stack
    promtool = require_binary("promtool")
    wait_until(lambda: 'energy_meter_exporter_target_up{vendor="homewizard",device="p1"} 1' in exporter.metrics(),
               what="p1 up")
    result = subprocess.run([promtool, "check", "metrics"], input=exporter.metrics(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
