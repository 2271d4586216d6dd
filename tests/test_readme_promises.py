"""What the metrics reference (docs/metrics.md) promises for a vendor, the demo's simulated devices show.

The table (generated from the catalogue) names for every metric the vendors that emit it. Parser
tests alone cannot show that a figure reaches `/metrics`: a field can be parsed and never
requested, or requested and then dropped. So the demo (`make demo`: every vendor's simulators
and the real daemon) is scraped, and every promised metric must appear for at least one of that
vendor's targets, whatever transport it uses - or be listed below with the reason the simulated
devices cannot show it.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.model.catalogue import METRICS_BY_NAME

from .conftest import ROOT, LoopThread, http_get
from .prometheus import DemoStack

# (metric, vendor) -> why the demo cannot show it. Keep each reason specific: an entry is a
# promise the demo does not check.
NOT_IN_THE_DEMO: dict[tuple[str, str], str] = {
    # IAMMETER: the simulated meters report `sig` as a percentage (the ratio is shown); firmware
    # that sends a negative `sig` (dBm) is a variant no document shows an example of.
    ("energy_meter_wifi_rssi_dbm", "iammeter"): "simulated IAMMETER meters send sig as a percentage",
    # HomeWizard: heat in GJ is in no capture; the captured heat meters report m3 (shown as
    # energy_meter_external_meter_reading by the demo's v1 P1 meter).
    ("energy_meter_heat_joules_total", "homewizard"): "no captured heat meter reports GJ",
    # Enphase: no capture of any firmware holds /ivp/ensemble/device_list (the seed shows one
    # example, parsed in tests/corpus_enphase.py), so neither demo gateway answers it.
    ("energy_meter_ensemble_device_connected", "enphase"): "from /ivp/ensemble/device_list: not captured",
}
# Series the demo shows only when a program its simulators need is installed.
NEEDS_PROGRAM: dict[tuple[str, str], str] = {
    ("energy_meter_exporter_mqtt_connected", "iammeter"): "mosquitto",
}
# Counters need their second poll, cloud analyses their first call, and the Enphase CT health
# its first read nine polls in (45 s); a loaded machine stretches that, and waiting ends as soon
# as everything has shown.
WAIT_SECONDS = 150.0


def promises() -> dict[str, set[str]]:
    """Metric name -> vendors, from the metrics reference's table (the exporter's own rows, whose
    vendors column reads `all (exporter)`, promise nothing per vendor)."""
    reference = (ROOT / "docs" / "metrics.md").read_text()
    table = reference.split("<!-- metrics-table:start -->", 1)[1].split("<!-- metrics-table:end -->", 1)[0]
    out: dict[str, set[str]] = {}
    for line in table.splitlines():
        match = re.match(r"^\| `([a-z0-9_]+)` \|.*\| ([^|]+) \|$", line)
        if match and not match.group(2).startswith("all"):
            out[match.group(1)] = {v.strip() for v in match.group(2).split(",")}
    return out


PROMISES = promises()
VENDORS = sorted({v for vendors in PROMISES.values() for v in vendors})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    loop_thread = LoopThread()
    stack = DemoStack(loop_thread, tmp_path_factory.mktemp("readme-promises"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        loop_thread.close()


def shown(port: int) -> dict[str, set[str]]:
    """Metric name -> vendors it appears for on /metrics (`*` for series without a vendor label)."""
    status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert status == 200
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).add(sample.labels.get("vendor", "*"))
    return out


def expected(vendor: str) -> set[str]:
    names = {name for name, vendors in PROMISES.items() if vendor in vendors}
    names -= {name for name, v in NOT_IN_THE_DEMO if v == vendor}
    for (name, v), program in NEEDS_PROGRAM.items():
        if v == vendor and not (shutil.which(program) or Path(f"/usr/sbin/{program}").exists()):
            names.discard(name)
    return names


def missing_for(vendor: str, seen: dict[str, set[str]]) -> set[str]:
    def appears(name: str) -> bool:
        vendors = seen.get(name, set())
        return vendor in vendors or (not METRICS_BY_NAME[name].base_labels and bool(vendors))
    return {name for name in expected(vendor) if not appears(name)}


def test_the_table_is_read_and_every_allowance_names_a_promise():
    assert len(PROMISES) > 100 and {"homewizard", "iammeter", "iometer", "enphase"} <= set(VENDORS)
    for name, vendor in [*NOT_IN_THE_DEMO, *NEEDS_PROGRAM]:
        assert vendor in PROMISES.get(name, set()), f"{name} is not promised for {vendor}: drop the entry"


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_promised_metric_appears_for_one_of_the_vendors_demo_targets(demo, vendor):
    targets = [t for t in demo.config.targets if t.vendor == vendor]
    assert targets, f"the demo has no {vendor} target"
    deadline = time.monotonic() + WAIT_SECONDS
    missing = missing_for(vendor, shown(demo.port))
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = missing_for(vendor, shown(demo.port))
    where = ", ".join(f"{t.name} ({t.transport})" for t in targets)
    assert not missing, (f"the metrics reference promises these for {vendor}, but none of its demo targets ({where}) "
                         f"shows them:\n  " + "\n  ".join(sorted(missing)))
