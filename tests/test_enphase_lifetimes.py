"""Enphase lifetime counters that wrap at 2^32 J: the derived step over several polls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.model import catalogue as M
from exporter.model.samples import DeviceInfo, Reading
from exporter.runtime.state import StateDirectory
from exporter.vendors.enphase import derived, parse
from exporter.vendors.enphase.lifetimes import WRAP, WrappedLifetimes

ENPHASE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "enphase"
WH = 3600.0
WRAP_WH = WRAP / WH  # 1,193,046.47 Wh


def poll(step, inverters_wh: float | None, production_wh: float | None = None, ct_wh: float | None = None,
         serial: str = "122") -> Reading:
    """One poll's merged reading through the step: the microinverters' lifetime (and production
    from them unless given), optionally a production CT's lifetime from the CT readings."""
    reading = Reading()
    reading.devices.append(DeviceInfo(serial=serial))
    if inverters_wh is not None:
        reading.add(M.MICROINVERTERS_ENERGY, inverters_wh * WH)
        reading.add(M.PRODUCTION_ENERGY, (production_wh if production_wh is not None else inverters_wh) * WH)
    if ct_wh is not None:
        reading.add(M.CT_ENERGY_DELIVERED, ct_wh * WH, meter="production")
    step(reading, {})
    return reading


def wh(reading: Reading, metric=M.MICROINVERTERS_ENERGY) -> float | None:
    value = reading.value_of(metric)
    return None if value is None else value / WH


def test_a_step_down_by_the_wrap_size_is_a_wrap_and_is_added_from_then_on():
    step = WrappedLifetimes()
    assert wh(poll(step, 1_193_000.0)) == pytest.approx(1_193_000.0)
    after = poll(step, 30.0)  # 46.47 Wh to the top, then 30 Wh from the bottom
    assert wh(after) == pytest.approx(30.0 + WRAP_WH)
    assert wh(after, M.PRODUCTION_ENERGY) == pytest.approx(30.0 + WRAP_WH)
    assert wh(poll(step, 500.0)) == pytest.approx(500.0 + WRAP_WH)  # kept on the next polls
    assert wh(poll(step, None)) is None  # a poll without the figure forgets nothing
    assert wh(poll(step, 900.0)) == pytest.approx(900.0 + WRAP_WH)


def test_a_small_step_down_is_not_a_wrap():
    step = WrappedLifetimes()
    poll(step, 700_000.0)
    assert wh(poll(step, 699_990.0)) == pytest.approx(699_990.0)  # a glitch: the core holds counters


def test_a_counter_at_or_above_the_wrap_size_does_not_wrap_and_is_left_alone():
    step = WrappedLifetimes()
    assert wh(poll(step, 10_279_087.0)) == 10_279_087.0  # firmware 4.2.27
    assert wh(poll(step, 10_279_090.0)) == 10_279_090.0


def test_the_production_ct_tells_how_many_wraps_came_before_the_first_poll():
    # 7.6.175: the inverters say 702919 Wh, the production CT 3183793.885 Wh: two wraps behind.
    step = WrappedLifetimes()
    first = poll(step, 702_919.0, production_wh=3_183_793.303, ct_wh=3_183_793.885)
    assert wh(first) == pytest.approx(702_919.0 + 2 * WRAP_WH)
    assert wh(first, M.PRODUCTION_ENERGY) == pytest.approx(3_183_793.303)  # the CT: not touched
    # Later polls without the CT readings keep the count, and add the next wrap.
    assert wh(poll(step, 1_193_040.0, production_wh=3_674_000.0)) == pytest.approx(1_193_040.0 + 2 * WRAP_WH)
    assert wh(poll(step, 10.0, production_wh=3_674_010.0)) == pytest.approx(10.0 + 3 * WRAP_WH)


def test_a_reference_that_is_far_from_any_whole_wrap_tells_nothing():
    step = WrappedLifetimes()
    # A CT lifetime half a wrap away from every inverter total + k wraps: no estimate.
    assert wh(poll(step, 100_000.0, ct_wh=100_000.0 + 2.5 * WRAP_WH)) == pytest.approx(100_000.0)


def test_the_wraps_survive_a_restart_with_a_state_directory(tmp_path):
    store = StateDirectory(tmp_path)
    step = WrappedLifetimes(store)
    poll(step, 1_192_000.0)
    poll(step, 100.0)
    restarted = WrappedLifetimes(store)
    assert wh(poll(restarted, 150.0)) == pytest.approx(150.0 + WRAP_WH)
    other = WrappedLifetimes(store)
    assert wh(poll(other, 150.0, serial="999")) == pytest.approx(150.0)  # another gateway: its own file


def test_a_wrap_while_the_exporter_was_down_is_counted(tmp_path):
    store = StateDirectory(tmp_path)
    step = WrappedLifetimes(store)
    poll(step, 1_150_000.0)
    restarted = WrappedLifetimes(store)
    assert wh(poll(restarted, 20_000.0)) == pytest.approx(20_000.0 + WRAP_WH)


def test_the_step_runs_in_the_adapter_order_and_the_capture_of_7_6_175_comes_out_unwrapped(tmp_path):
    assert WrappedLifetimes in derived.STEPS
    name = ENPHASE / "7.6.175_with_cts"
    if not name.is_dir():
        pytest.skip("conformance corpus not found")
    cts = parse.parse_meters(json.loads((name / "ivp_meters").read_bytes()))
    production = parse.parse_production_json(json.loads((name / "production.json").read_bytes()), None, cts)
    readings = parse.parse_meter_readings(json.loads((name / "ivp_meters_readings").read_bytes()), cts)
    merged = Reading()
    merged.samples.extend(readings.samples + production.samples)
    derived.finish(merged, {"meters_readings": readings, "production_json": production}, derived.new_steps(StateDirectory(tmp_path)))
    assert merged.value_of(M.MICROINVERTERS_ENERGY) / WH == pytest.approx(702_919 + 2 * WRAP_WH)
    assert merged.value_of(M.PRODUCTION_ENERGY) / WH == pytest.approx(3_183_793.303)


def test_a_lifetime_of_0_is_never_exported_as_a_lifetime():
    # 7.3.466 with its CTs disabled: /api/v1/production says wattHoursLifetime 0 next to 689 W.
    api = parse.parse_api_v1_production({"wattHoursToday": 0, "wattHoursSevenDays": 0, "wattHoursLifetime": 0,
                                         "wattsNow": 689})
    assert api.value_of(M.PRODUCTION_POWER) == 689 and api.value_of(M.PRODUCTION_ENERGY) is None
    production = parse.parse_production_json(
        {"production": [{"type": "inverters", "activeCount": 7, "readingTime": 1, "wNow": 751, "whLifetime": 0}]})
    assert production.value_of(M.PRODUCTION_POWER) == 751
    assert production.value_of(M.PRODUCTION_ENERGY) is None and production.value_of(M.MICROINVERTERS_ENERGY) is None
    page = parse.parse_production_html("<table><tr><td>Currently</td><td>1.2 kW</td></tr>"
                                       "<tr><td>Since Installation</td><td>0 Wh</td></tr></table>")
    assert page.value_of(M.PRODUCTION_ENERGY) is None


def test_production_from_the_ct_entry_tells_the_wraps_when_the_ct_readings_are_missing():
    step = WrappedLifetimes()
    # The inverters count 20 kWh less than the CT (losses between them): still three wraps.
    first = poll(step, 500_000.0, production_wh=520_000.0 + 3 * WRAP_WH)
    assert wh(first) == pytest.approx(500_000.0 + 3 * WRAP_WH)
    assert wh(first, M.PRODUCTION_ENERGY) == pytest.approx(520_000.0 + 3 * WRAP_WH)
