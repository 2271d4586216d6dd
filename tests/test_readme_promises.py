"""What the README's metric table promises for a vendor, the demo's simulated devices show.

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
    # Refusals of the push receivers need a misbehaving sender; the demo's meters behave.
    ("energy_meter_exporter_push_rejected_total", "iammeter"): "no simulated meter sends a refused upload",
    # The CT ratio is read over HTTP from a WEM3046T only; the demo's HTTP meter is a WEM3080T.
    ("energy_meter_ct_ratio", "iammeter"): "the demo's HTTP meter is a WEM3080T, not a WEM3046T",
    # Device-total reactive figures come from a single-phase meter with reactive measurement on;
    # the demo's only single-phase meter (MQTT, WEM3080) has it off, its three-phase ones give
    # the per-phase reactive series.
    ("energy_meter_reactive_power_volt_amperes_reactive", "iammeter"): "no single-phase meter with EA.Reactive",
    ("energy_meter_reactive_energy_inductive_volt_ampere_reactive_seconds_total", "iammeter"):
        "no single-phase meter with EA.Reactive",
    ("energy_meter_reactive_energy_capacitive_volt_ampere_reactive_seconds_total", "iammeter"):
        "no single-phase meter with EA.Reactive",
    # The demo's cloud account keeps two of the seed's meters: a single-phase one with rows of 5
    # (no power factor) and a three-phase one without net metering, so no net row.
    ("energy_meter_account_net_active_power_watts", "iammeter"): "the demo's cloud meters have no NEM row",
    ("energy_meter_account_net_energy_imported_joules_total", "iammeter"): "the demo's cloud meters have no NEM row",
    ("energy_meter_account_net_energy_exported_joules_total", "iammeter"): "the demo's cloud meters have no NEM row",
    ("energy_meter_account_power_factor_ratio", "iammeter"):
        "single-phase cloud meter sends rows of 5, the three-phase one no net row",
    # Analyses are at most two calls per poll, every 5 minutes, power analyses first: the
    # offline analysis comes 5 to 10 minutes after the start, beyond the wait.
    ("energy_meter_account_offline_seconds", "iammeter"): "offline analysis comes with the second or third cloud poll",
    ("energy_meter_account_offline_analysis_period_seconds", "iammeter"):
        "offline analysis comes with the second or third cloud poll",
    ("energy_meter_account_offline_gaps", "iammeter"): "offline analysis comes with the second or third cloud poll",
    # HomeWizard: the demo's P1 meter serves the capture with a gas and a water meter; heat, warm
    # water and unknown external meters are only in captures whose ids are all-zero placeholders.
    ("energy_meter_heat_joules_total", "homewizard"): "the demo's P1 capture has gas and water meters only",
    ("energy_meter_warm_water_cubic_meters_total", "homewizard"): "the demo's P1 capture has gas and water only",
    ("energy_meter_external_meter_reading", "homewizard"): "the demo's P1 capture has gas and water meters only",
    # A total power factor is sent by single-phase kWh meters (HWE-KWH1, SDM230) only; the demo
    # runs a three-phase one (per-phase power factors).
    ("energy_meter_power_factor_ratio", "homewizard"): "the demo has no single-phase kWh meter",
    # Enphase: the demo's gateway answers from the captures of firmware 8.2.4286 (split phase,
    # three CTs, batteries), which hold no /ivp/livedata/status, /ivp/ensemble/power, secctrl,
    # status nor device_list body: those endpoints answer 404 there, and their figures (shapes
    # from the seed and from pyenphase, parsed in tests/corpus_enphase.py) cannot show.
    ("energy_meter_battery_backup_mode_code", "enphase"): "from /ivp/livedata/status: not in the demo's captures",
    ("energy_meter_battery_backup_reserve_ratio", "enphase"): "from /ivp/livedata/status or secctrl: not captured",
    ("energy_meter_gateway_link_state", "enphase"): "from /ivp/livedata/status: not in the demo's captures",
    ("energy_meter_relay_state_code", "enphase"): "from /ivp/livedata/status: not in the demo's captures",
    ("energy_meter_battery_group_power_watts", "enphase"): "from /ivp/livedata/status: not in the demo's captures",
    ("energy_meter_battery_unit_power_watts", "enphase"): "from /ivp/ensemble/power: not in the demo's captures",
    ("energy_meter_ensemble_device_connected", "enphase"): "from /ivp/ensemble/device_list: not captured",
    # The CTs of the captured split-phase gateway measure two phases each: a CT voltage is given
    # per phase only (energy_meter_ct_phase_voltage_volts), never as a sum.
    ("energy_meter_ct_voltage_volts", "enphase"): "the demo's CTs are split-phase: per-phase voltages only",
    # CT health (/ivp/meters) is read every 5 minutes, first 9 polls after the first: later than
    # this test waits.
    ("energy_meter_ct_metering_status", "enphase"): "first read 9 polls after the first, beyond the wait",
    ("energy_meter_ct_status_flag", "enphase"): "first read 9 polls after the first, beyond the wait",
}
# Series the demo shows only when a program its simulators need is installed.
NEEDS_PROGRAM: dict[tuple[str, str], str] = {
    ("energy_meter_exporter_mqtt_connected", "iammeter"): "mosquitto",
}
WAIT_SECONDS = 60.0  # counters need their second poll, cloud analyses their first call


def promises() -> dict[str, set[str]]:
    """Metric name -> vendors, from the README's metric table (the exporter's own rows, whose
    vendors column reads `all (exporter)`, promise nothing per vendor)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- metrics-table:start -->", 1)[1].split("<!-- metrics-table:end -->", 1)[0]
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
    assert not missing, (f"the README promises these for {vendor}, but none of its demo targets ({where}) "
                         f"shows them:\n  " + "\n  ".join(sorted(missing)))
