"""The benchmark's own parts keep working: the light multi-meter simulator answers like a P1
meter, and `make bench` runs end to end (at a tiny scale here; figures are not checked)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

from exporter.vendors.homewizard.parse import parse_device, parse_v1_data

from .conftest import ROOT, http_get

sys.path.insert(0, str(ROOT))
from bench.common import free_port, python_child  # noqa: E402
from bench.fleet import hosts  # noqa: E402


@pytest.fixture
def fleet(tmp_path):
    port = free_port("127.100.0.1")
    child = python_child("bench.fleet", "--count", "3", "--port", str(port), name="fleet", log=tmp_path / "fleet.log").start(60)
    yield child, hosts(0, 3, port)
    child.stop()


def test_each_simulated_meter_is_its_own_host_and_answers_like_a_p1_meter(fleet):
    child, addresses = fleet
    serials = set()
    for host in addresses:
        status, _, body = http_get(f"http://{host}/api")
        assert status == 200
        device = parse_device(json.loads(body))
        assert device.model == "HWE-P1"
        serials.add(device.serial)
        first = parse_v1_data(json.loads(http_get(f"http://{host}/api/v1/data")[2]))
        second = parse_v1_data(json.loads(http_get(f"http://{host}/api/v1/data")[2]))
        assert len(first.samples) == 41  # 3-phase, tariffs, gas, the other M-Bus meters, the smart meter
        assert [(s.metric, s.labels) for s in first.samples] == [(s.metric, s.labels) for s in second.samples]
        assert [s.value for s in first.samples] != [s.value for s in second.samples]  # it moves
        status, _, body = http_get(f"http://{host}/api/v2/nothing")
        assert status == 404 and json.loads(body)["error"]["id"] == 404
    assert len(serials) == 3
    counts = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{child.port}/stats").read())
    assert counts == {"/api/v1/data": 6, "/api": 3, "other": 3}


def test_make_bench_runs_end_to_end(tmp_path):
    for binary in ("prometheus-pushgateway", "curl"):
        if not shutil.which(binary):
            pytest.skip(f"{binary} is not installed (make bench installs the Pushgateway)")
    output = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--sizes", "20", "--scrapes", "3", "--peer-budget", "1",
         "--poll-targets", "40", "--poll-interval", "1", "--window", "4", "--push-meters", "20",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    for heading in ("## 1. /metrics latency", "## 2. Poll throughput", "## 3. Push ingest", "## 4. Memory",
                    "## 5. Concurrency"):
        assert heading in text
    assert "Command: `python -m bench.run --sizes 20" in text and "nproc" in text
    assert "40/40" in text or "| 40 |" in text  # every simulated meter was polled
    # The subscription's readings reached the exporter (a figure, not a speed: any rate above 0).
    pushed = re.search(r"\*\*([\d,]+) readings/s\*\*", text)
    assert pushed and int(pushed.group(1).replace(",", "")) > 0, text
