"""A Partner API account flooding the exporter with subscription messages (the push benchmark's
feed, in its own process, sending as fast as the exporter reads): another target keeps being
polled, /metrics keeps answering, and SIGTERM still stops the exporter within its grace."""

from __future__ import annotations

import re
import signal
import sys
import textwrap
import time

import pytest

from simulators.homewizard import HomeWizardSimulator

from .conftest import ROOT, ExporterProcess, free_port, http_get, wait_until

sys.path.insert(0, str(ROOT))
from bench.common import python_child  # noqa: E402


@pytest.fixture
def feed(tmp_path):
    child = python_child("bench.iometer_feed", "--meters", "200", name="iometer feed",
                         log=tmp_path / "feed.log").start(120)
    yield child
    child.stop()


@pytest.fixture
def device(loop_thread):
    sim = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False).start())
    yield sim
    loop_thread.run(sim.stop())


def series(body: str, name: str, device: str) -> float:
    """One series of a target (the body holds thousands: a full parse per look is too slow)."""
    match = re.search(rf'^{name}{{[^}}]*device="{device}"[^}}]*}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def scrape(proc: ExporterProcess) -> str:
    status, _, body = http_get(proc.url("/metrics"))  # gives up after 5 s
    assert status == 200
    return body.decode()


def test_a_flood_of_readings_starves_no_other_target_and_stop_stays_prompt(tmp_path, feed, device):
    partner_id, secret = feed.extra.split()
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        state_directory: state
        targets:
          - name: account
            vendor: iometer
            transport: partner
            endpoint: http://127.0.0.1:{feed.port}/api/v1/query
            partner_id: {partner_id}
            secret: {secret}
          - name: kwh
            vendor: homewizard
            host: {device.v1_host}
            interval: 1s
    """))
    proc = ExporterProcess(config, free_port())
    try:
        def received() -> float:
            return series(scrape(proc), "energy_meter_exporter_readings_received_total", "account")

        wait_until(lambda: received() > 2000, timeout=60, what="the flood under way")
        # While readings pour in, the other target keeps its polls and every scrape is answered.
        body = scrape(proc)
        polls, flood = (series(body, "energy_meter_exporter_polls_total", "kwh"),
                        series(body, "energy_meter_exporter_readings_received_total", "account"))
        since = time.time()
        scrapes = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = scrape(proc)
            scrapes += 1
            assert "energy_meter_account_energy_imported_joules_total{" in body
            if scrapes >= 10 and series(body, "energy_meter_exporter_polls_total", "kwh") >= polls + 5:
                break
            time.sleep(0.2)
        assert series(body, "energy_meter_exporter_polls_total", "kwh") >= polls + 5
        assert series(body, "energy_meter_exporter_last_success_timestamp_seconds", "kwh") > since
        assert series(body, "energy_meter_exporter_readings_received_total", "account") > flood + 1000

        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
        logs = proc.logs()
        assert "shutting down" in logs
        assert "shutdown took too long" not in logs  # stopped within its grace, not cut short
    finally:
        proc.stop()
