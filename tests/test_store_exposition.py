"""The snapshot store and the exposition formats, as a scraper sees them."""

from __future__ import annotations

import gzip
import subprocess

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.exposition import format_value
from exporter.model import catalogue as M
from exporter.model.samples import DeviceInfo, Reading
from exporter.store import COUNTER_RESET_GRACE, SnapshotStore
from exporter.web.server import wants_gzip, wants_openmetrics

from .conftest import exposition_text, require_binary, sample_value


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def reading(power: float, energy: float | None = None, phases: int = 3) -> Reading:
    r = Reading()
    r.add(M.ACTIVE_POWER, power)
    for n in range(1, phases + 1):
        r.add(M.PHASE_VOLTAGE, 230 + n, phase=f"l{n}")
    r.add(M.ENERGY_IMPORTED, energy)
    r.devices.append(DeviceInfo(model="HWE-P1", serial="abc", firmware="6.00"))
    return r


def make_store() -> tuple[SnapshotStore, Clock]:
    clock = Clock()
    store = SnapshotStore(clock=clock)
    for name in ("a", "b"):
        store.add_target(name, "homewizard", stale_after=60)
    return store, clock


def body(store: SnapshotStore, om: bool = False) -> str:
    return exposition_text(store, om)


def test_each_family_is_one_group_with_one_type_line():
    store, _ = make_store()
    store.record_success("a", reading(100, 5e6))
    store.record_success("b", reading(-50, 7e6))
    text = body(store)
    assert text.count("# TYPE energy_meter_active_power_watts gauge") == 1
    lines = [line for line in text.splitlines() if line.startswith("energy_meter_active_power_watts")]
    assert len(lines) == 2
    # the two targets' lines sit together under the family's header
    start = text.index("# TYPE energy_meter_active_power_watts")
    block = text[start:].split("# HELP", 1)[0]
    assert all(line in block for line in lines)
    assert sample_value(text, "energy_meter_active_power_watts", device="b", vendor="homewizard") == -50
    assert sample_value(text, "energy_meter_device_info", device="a", model="HWE-P1", serial="abc", firmware="6.00") == 1


def test_openmetrics_counters_and_info_and_eof():
    store, _ = make_store()
    store.record_success("a", reading(100, 5e6))
    om = body(store, om=True)
    assert om.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(om)}
    assert families["energy_meter_energy_imported_joules"].type == "counter"
    assert families["energy_meter_device"].type == "info"
    [s] = [s for s in families["energy_meter_energy_imported_joules"].samples if s.labels["device"] == "a"]
    assert s.name == "energy_meter_energy_imported_joules_total" and s.value == 5e6
    # both formats carry the same samples
    text_samples = {(s.name, tuple(sorted(s.labels.items()))) for f in parse_text(body(store)) for s in f.samples}
    om_samples = {(s.name, tuple(sorted(s.labels.items()))) for f in parse_openmetrics(om) for s in f.samples}
    assert text_samples == om_samples


def test_a_poll_replaces_the_snapshot_whole():
    store, _ = make_store()
    store.record_success("a", reading(100, 5e6, phases=3))
    store.record_success("a", reading(100, 5e6, phases=1))
    text = body(store)
    assert sample_value(text, "energy_meter_phase_voltage_volts", device="a", phase="l1") == 231
    assert sample_value(text, "energy_meter_phase_voltage_volts", device="a", phase="l3") is None


def test_failure_keeps_series_until_stale_then_drops_them():
    store, clock = make_store()
    store.record_success("a", reading(100, 5e6))
    clock.now += 30
    store.record_failure("a", "timeout", "no answer")
    text = body(store)
    assert sample_value(text, "energy_meter_exporter_target_up", device="a") == 0
    assert sample_value(text, "energy_meter_active_power_watts", device="a") == 100
    assert sample_value(text, "energy_meter_exporter_poll_errors_total", device="a", reason="timeout") == 1
    clock.now += 31
    store.expire()
    text = body(store)
    assert sample_value(text, "energy_meter_active_power_watts", device="a") is None
    assert sample_value(text, "energy_meter_device_info", device="a") is None
    # the exporter's own series of the target stay
    assert sample_value(text, "energy_meter_exporter_target_up", device="a") == 0
    assert sample_value(text, "energy_meter_exporter_last_success_timestamp_seconds", device="a") == clock.now - 61


def test_counters_never_step_back_and_the_glitch_is_counted():
    store, clock = make_store()
    store.record_success("a", reading(1, 5e6))
    store.record_success("a", reading(1, 4e6))  # firmware glitch
    text = body(store)
    assert sample_value(text, "energy_meter_energy_imported_joules_total", device="a") == 5e6
    assert sample_value(text, "energy_meter_exporter_decreasing_readings_total", device="a") == 1
    store.record_success("a", reading(1, 5.5e6))
    assert sample_value(body(store), "energy_meter_energy_imported_joules_total", device="a") == 5.5e6


def test_a_replaced_meter_is_accepted_after_the_grace_period():
    store, clock = make_store()
    store.record_success("a", reading(1, 5e6))
    store.record_success("a", reading(1, 10.0))
    clock.now += COUNTER_RESET_GRACE + 1
    store.record_success("a", reading(1, 20.0))
    assert sample_value(body(store), "energy_meter_energy_imported_joules_total", device="a") == 20.0


def test_a_removed_target_leaves_nothing_behind():
    store, _ = make_store()
    store.record_success("a", reading(1, 1))
    store.remove_target("a")
    assert 'device="a"' not in body(store)


async def test_gzip_body_is_cached_until_something_changes():
    store, _ = make_store()
    store.record_success("a", reading(1, 1))
    first = await store.cache.gzip_chunks(False)
    assert await store.cache.gzip_chunks(False) is first  # not compressed again
    store.record_success("a", reading(2, 1))
    second = await store.cache.gzip_chunks(False)
    assert second is not first
    assert gzip.decompress(b"".join(second)).decode() == body(store)


async def test_gzip_body_decompresses_to_the_text_body():
    store, _ = make_store()
    store.record_success("a", reading(1, 1))
    for om in (False, True):
        assert gzip.decompress(b"".join(await store.cache.gzip_chunks(om))).decode() == body(store, om)


def test_label_values_are_escaped():
    store, _ = make_store()
    r = Reading()
    r.add(M.GAS, 1.0, meter='we"ird\\id\n')
    store.record_success("a", r)
    assert sample_value(body(store), "energy_meter_gas_cubic_meters_total", meter='we"ird\\id\n') == 1.0


def test_values_are_formatted_without_conversion_noise():
    assert format_value(2948.827 * 3.6e6) == "10615777200"
    assert format_value(0.1 + 0.2) == "0.3"
    assert format_value(-543.0) == "-543"
    assert format_value(1e20) == "1e+20"


def test_content_negotiation():
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert wants_openmetrics("application/openmetrics-text")
    assert not wants_openmetrics("text/plain")
    assert not wants_openmetrics("application/openmetrics-text;q=0")
    assert not wants_openmetrics("application/openmetrics-text;version=1.x")  # the library cannot compare it
    # A refused element is skipped; the next one is negotiated as the library does.
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0;q=0, application/openmetrics-text")
    assert wants_gzip("gzip, deflate")
    assert wants_gzip("gzip;q=0.5")
    assert not wants_gzip("identity")
    assert not wants_gzip("gzip;q=0")
    assert not wants_gzip("gzip;q=nonsense")


def test_promtool_accepts_the_output():
    promtool = require_binary("promtool")
    store, _ = make_store()
    store.record_success("a", reading(100, 5e6))
    store.record_failure("b", "timeout", "x")
    result = subprocess.run([promtool, "check", "metrics"], input=body(store), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
