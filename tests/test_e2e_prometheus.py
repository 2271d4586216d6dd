"""End to end: simulators -> exporter process -> a real Prometheus server -> its HTTP API."""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.parse

import pytest

from exporter.simulators.homewizard import HomeWizardSimulator

from .conftest import ExporterProcess, free_port, http_get, require_binary, wait_until

TOKEN = "00112233445566778899aabbccddeeff"


class PrometheusServer:
    def __init__(self, binary: str, workdir, scrape_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: energy
                static_configs:
                  - targets: ['127.0.0.1:{scrape_port}']
        """))
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30, what="prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {open(self.log.name).read()[-2000:]}")
        return http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)[0] == 200

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = http_get(url)
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        return data["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


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
