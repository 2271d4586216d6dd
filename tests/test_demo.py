"""`make demo`: simulators and the exporter come up, every simulated target is up, Ctrl-C stops all."""

from __future__ import annotations

import signal
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, free_port, http_get, wait_until


def test_demo_runs_every_simulated_device_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    log = open(tmp_path / "demo.log", "w")
    # cwd: the demo runs from the source checkout, as `make demo` runs it.
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def targets_up():
            status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            ups = {s.labels["device"]: s.value for f in text_string_to_metric_families(body.decode())
                   for s in f.samples if s.name == "energy_meter_exporter_target_up"}
            return ups if ups and all(v == 1 for v in ups.values()) else None

        ups = wait_until(targets_up, timeout=60, interval=0.5, what=f"all demo targets up ({tmp_path / 'demo.log'})")
        assert len(ups) >= 5
        status, _, page = http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"p1-meter" in page
        output = (tmp_path / "demo.log").read_text()
        assert f"http://127.0.0.1:{port}/metrics" in output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "demo stopped." in (tmp_path / "demo.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
