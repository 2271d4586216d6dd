"""The real exporter process against HomeWizard simulators: serving, reloading, stopping."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import textwrap

import pytest

from simulators.homewizard import HomeWizardSimulator

from .conftest import ExporterProcess, free_port, http_get, sample_value, wait_until

TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


@pytest.fixture
def devices(loop_thread):
    p1 = loop_thread.run(HomeWizardSimulator("HWE-P1").start())
    p1.tokens.add(TOKEN)
    kwh = loop_thread.run(HomeWizardSimulator("HWE-KWH3", v2=False).start())
    yield p1, kwh
    for sim in (p1, kwh):
        loop_thread.run(sim.stop())


def write_config(path, p1, kwh, extra: str = "") -> None:
    path.write_text(textwrap.dedent(f"""
        state_directory: state
        defaults:
          interval: 0.5s
        targets:
          - name: p1
            vendor: homewizard
            host: {p1.v2_host}
            token: {TOKEN}
            ca_file: {p1.ca_file}
          - name: kwh
            vendor: homewizard
            host: {kwh.v1_host}
    """) + extra)


@pytest.fixture
def exporter(tmp_path, devices):
    p1, kwh = devices
    config = tmp_path / "config.yaml"
    write_config(config, p1, kwh)
    proc = ExporterProcess(config, free_port(), extra=["--web.enable-lifecycle"])
    yield proc, config
    proc.stop()


def up(proc, name):
    return sample_value(proc.metrics(), "energy_meter_exporter_target_up", device=name)


def test_serves_both_devices_and_its_own_state(exporter):
    proc, _ = exporter
    wait_until(lambda: up(proc, "p1") == 1 and up(proc, "kwh") == 1, what="both targets up")
    text = proc.metrics()
    assert sample_value(text, "energy_meter_active_power_watts", device="p1", vendor="homewizard") == -543
    assert sample_value(text, "energy_meter_phase_voltage_volts", device="kwh", phase="l1") == 230.751
    assert sample_value(text, "energy_meter_device_info", device="p1", model="HWE-P1", firmware="6.00") == 1
    assert sample_value(text, "energy_meter_exporter_build_info") == 1
    assert sample_value(text, "energy_meter_exporter_config_last_reload_successful") == 1
    assert sample_value(text, "energy_meter_exporter_poll_duration_seconds", device="p1") > 0
    assert http_get(proc.url("/-/healthy"))[0] == 200
    assert http_get(proc.url("/-/ready"))[0] == 200
    assert TOKEN not in text


def test_openmetrics_and_gzip_by_request_headers(exporter):
    proc, _ = exporter
    wait_until(lambda: up(proc, "p1") == 1, what="p1 up")
    status, headers, body = http_get(proc.url("/metrics"), {"Accept": "application/openmetrics-text; version=1.0.0",
                                                           "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().endswith("# EOF\n")
    status, headers, body = http_get(proc.url("/metrics"))
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers


def test_a_failing_device_shows_its_reason_and_the_others_keep_going(exporter, devices, loop_thread):
    proc, _ = exporter
    p1, kwh = devices
    wait_until(lambda: up(proc, "kwh") == 1, what="kwh up")
    loop_thread.call(setattr, kwh, "api_enabled", False)
    wait_until(lambda: up(proc, "kwh") == 0, what="kwh down")
    text = proc.metrics()
    assert sample_value(text, "energy_meter_exporter_poll_errors_total", device="kwh", reason="api_disabled") >= 1
    assert up(proc, "p1") == 1
    polls = sample_value(text, "energy_meter_exporter_polls_total", device="p1")
    wait_until(lambda: sample_value(proc.metrics(), "energy_meter_exporter_polls_total", device="p1") >= polls + 2,
               what="p1 still polled")
    page = http_get(proc.url("/"))[2].decode()
    assert "api_disabled" in page and "enable it in the HomeWizard Energy app" in page
    assert TOKEN not in page
    assert "level=warning" in proc.logs() and "reason=api_disabled" in proc.logs()
    loop_thread.call(setattr, kwh, "api_enabled", True)
    wait_until(lambda: up(proc, "kwh") == 1, what="kwh back up")


def test_reload_by_sighup_and_by_http(exporter, devices):
    proc, config = exporter
    p1, kwh = devices
    wait_until(lambda: up(proc, "kwh") == 1, what="kwh up")
    write_config(config, p1, kwh, extra=f"  - name: kwh-copy\n    vendor: homewizard\n    host: {kwh.v1_host}\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: up(proc, "kwh-copy") == 1, what="new target after SIGHUP")
    # An invalid file keeps the old configuration running and says so.
    config.write_text(config.read_text() + "  - name: broken\n    vendor: homewizard\n    bogus: 1\n")
    status, _, body = http_get_post(proc.url("/-/reload"))
    assert status == 400 and b"bogus: unknown key" in body
    text = proc.metrics()
    assert sample_value(text, "energy_meter_exporter_config_last_reload_successful") == 0
    assert up(proc, "kwh-copy") == 1
    assert "configuration reload failed" in proc.logs()
    # Removing a target by a good reload removes its series.
    write_config(config, p1, kwh)
    status, _, body = http_get_post(proc.url("/-/reload"))
    assert status == 200
    text = proc.metrics()
    assert sample_value(text, "energy_meter_exporter_config_last_reload_successful") == 1
    assert 'device="kwh-copy"' not in text


def http_get_post(url):
    import urllib.error
    import urllib.request

    # no body: urllib would label an empty one a form, which /-/reload refuses as cross-site
    req = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_sigterm_stops_within_five_seconds(exporter):
    proc, _ = exporter
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=5) == 0
    assert "shutting down" in proc.logs()


@pytest.fixture
def hanging_device(tmp_path, loop_thread):
    """An exporter polling one device that never answers (interval 60s, timeout 50s)."""
    sim = loop_thread.run(HomeWizardSimulator("HWE-KWH1", v2=False).start())
    sim.broken = "slow"
    config = tmp_path / "c.yaml"
    config.write_text(f"targets:\n  - name: slow\n    vendor: homewizard\n    host: {sim.v1_host}\n"
                      "    interval: 60s\n    timeout: 50s\n")
    proc = ExporterProcess(config, free_port())
    yield proc, sim
    proc.stop()
    loop_thread.run(sim.stop())


def test_sigterm_while_a_device_hangs(hanging_device):
    proc, sim = hanging_device
    wait_until(lambda: "v1 /api/v1/data" in sim.requests, what="a request in flight")
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=5) == 0


def test_json_logs(tmp_path, devices):
    p1, kwh = devices
    config = tmp_path / "c.yaml"
    write_config(config, p1, kwh)
    proc = ExporterProcess(config, free_port(), extra=["--log.format=json", "--log.level=debug"])
    try:
        wait_until(lambda: '"msg": "listening"' in proc.logs(), what="json log line")
    finally:
        proc.stop()
    assert TOKEN not in proc.logs()


def test_probe_prints_what_would_be_exported(tmp_path, devices):
    p1, kwh = devices
    config = tmp_path / "c.yaml"
    write_config(config, p1, kwh, extra="  - name: nobody\n    vendor: homewizard\n    host: 127.0.0.1:9\n")
    run = lambda name: subprocess.run([sys.executable, "-m", "exporter", "probe", name, f"--config.file={config}"],  # noqa: E731
                                      capture_output=True, text=True, timeout=30)
    ok = run("p1")
    assert ok.returncode == 0, ok.stderr
    assert 'energy_meter_active_power_watts{vendor="homewizard",device="p1",obis="1-0:16.7.0"} -543' in ok.stdout
    assert "model=HWE-P1" in ok.stdout
    assert TOKEN not in ok.stdout + ok.stderr
    failed = run("nobody")
    assert failed.returncode == 1 and "poll failed (connection)" in failed.stderr
    unknown = run("ghost")
    assert unknown.returncode == 2 and "no target named 'ghost'" in unknown.stderr


def test_port_in_use_is_a_clear_error(tmp_path, exporter):
    proc, config = exporter
    result = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={config}",
                             f"--web.listen-address=127.0.0.1:{proc.port}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot listen" in result.stderr


def test_ready_waits_for_first_polls(hanging_device):
    proc, _ = hanging_device
    assert http_get(proc.url("/-/ready"))[0] == 503
