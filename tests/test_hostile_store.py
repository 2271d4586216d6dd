"""The store against hostile readings: text no encoder takes, values no meter sends, series that
come and go without end. Whatever a device sends, the body stays one a scraper parses, the state
stays bounded, and a reading that cannot be rendered leaves the state as it was."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.exposition import format_value
from exporter.exposition import text as text_module
from exporter.model import catalogue as M
from exporter.model.catalogue import JOULES_PER_KWH
from exporter.model.errors import MAX_MESSAGE, PollError, safe_text
from exporter.model.samples import DeviceInfo, Reading, Sample
from exporter.runtime.scheduler import LogThrottle
from exporter.store import CEILING_SECONDS, COUNTER_RESET_GRACE, DEFAULT_MAX_POWER, RETIRED_MIN, SnapshotStore
from exporter.store import snapshots as store_module

from .conftest import exposition_text, sample_value

SURROGATE = "\ud800"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store() -> tuple[SnapshotStore, Clock]:
    clock = Clock()
    store = SnapshotStore(clock=clock)
    store.add_target("a", "homewizard", stale_after=600)
    return store, clock


def p1(import_kwh: float | None = 1000.0, power: float = 500.0, gas: dict[str, float] | None = None) -> Reading:
    """A P1 meter's reading, built as a parser would (samples straight into the reading, no checks)."""
    r = Reading()
    r.samples.append(Sample(M.ACTIVE_POWER, (("obis", "1-0:16.7.0"),), power))
    r.samples.append(Sample(M.PHASE_VOLTAGE, (("phase", "l1"), ("obis", "1-0:32.7.0")), 231.0))
    if import_kwh is not None:
        r.samples.append(Sample(M.ENERGY_IMPORTED, (("obis", "1-0:1.8.0"),), import_kwh * JOULES_PER_KWH))
    for meter, value in (gas or {}).items():
        r.samples.append(Sample(M.GAS, (("meter", meter), ("obis", "0-1:24.2.1")), value))
    return r


def body(store: SnapshotStore, om: bool = False) -> str:
    return exposition_text(store, om)


def parses(store: SnapshotStore) -> None:
    """Both formats parse whole (prometheus_client's parsers refuse a body on its first bad line)."""
    list(parse_openmetrics(body(store, om=True)))
    list(parse_text(body(store)))


def value(store: SnapshotStore, name: str, **labels: str) -> float | None:
    return sample_value(body(store), name, device="a", **labels)


def dropped(store: SnapshotStore, reason: str) -> float:
    return value(store, "energy_meter_exporter_samples_dropped_total", reason=reason) or 0.0


# --- text no encoder takes ---------------------------------------------------------------------


def test_a_lone_surrogate_in_a_label_is_rendered_as_a_replacement_character():
    store, _ = make_store()
    store.record_success("a", p1(gas={f"G{SURROGATE}01": 12.5}))
    store.record_success("a", p1(gas={f"G{SURROGATE}01": 12.75}))  # the incremental render too
    parses(store)
    assert value(store, M.GAS.name, meter="G\ufffd01") == 12.75
    assert store.targets["a"].up


def test_a_lone_surrogate_in_the_device_identity_is_kept_as_valid_text():
    store, _ = make_store()
    r = p1()
    r.devices.append(DeviceInfo(model=f"HWE{SURROGATE}P1", serial="ab\udfffcd", firmware="6.00"))
    store.record_success("a", r)
    parses(store)
    assert value(store, M.DEVICE_INFO.name, model="HWE\ufffdP1", serial="ab\ufffdcd") == 1
    info = store.targets["a"].devices[0]
    json.dumps([info.model, info.serial], ensure_ascii=False).encode()  # the status page can show it


def test_error_messages_are_kept_as_valid_text_of_bounded_length():
    store, _ = make_store()
    store.record_failure("a", "http_error", f"HTTP 500: request:internal{SURROGATE}")
    state = store.targets["a"]
    assert state.last_error == "HTTP 500: request:internal\ufffd"
    state.last_error.encode()
    store.record_failure("a", "parse", "x" * 100_000)
    assert len(state.last_error) <= MAX_MESSAGE
    assert PollError("parse", f"bad {SURROGATE}").message == "bad \ufffd"
    # a reason no one knows is not a new label value (nor a new key) each time
    for n in range(50):
        store.record_failure("a", f"reason-{n}", "?")
    assert set(state.errors) <= {"http_error", "parse", "internal"}
    parses(store)


def test_safe_text_keeps_valid_text_as_it_is():
    for text in ("plain", "café", "\U0001f600", ""):
        assert safe_text(text) is text
    assert safe_text("\ud83d\ude00") == "\U0001f600"  # a pair split in two is joined
    assert safe_text("a\udc80b\ud800") == "a\ufffdb\ufffd"


# --- a render that fails leaves the state as it was --------------------------------------------


def test_a_reading_that_fails_to_render_changes_nothing(monkeypatch):
    store, clock = make_store()
    store.record_success("a", p1(1000.0, gas={"G1": 5.0}))
    clock.now += 10
    store.record_success("a", p1(999.0, gas={"G1": 5.0}))  # held: one decreasing reading
    state = store.targets["a"]
    before = (body(store), state.regressions, dict(state.disputed_since), list(state.values), state.metrics,
              state.shape, state.retired, state.polls, state.last_success)

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(store_module, "render_series", broken)
    clock.now += 10
    for reading in (p1(998.0, gas={"G2": 1.0}), p1(1001.0, gas={"G1": 6.0}), p1(-5.0, power=math.nan)):
        with pytest.raises(RuntimeError):
            store.record_success("a", reading)
        after = (body(store), state.regressions, dict(state.disputed_since), list(state.values), state.metrics,
                 state.shape, state.retired, state.polls, state.last_success)
        assert after == before
    monkeypatch.undo()
    store.record_success("a", p1(1001.0, gas={"G1": 6.0}))
    assert value(store, M.ENERGY_IMPORTED.name) == 1001.0 * JOULES_PER_KWH
    assert value(store, M.GAS.name, meter="G1") == 6.0


# --- values no meter sends ---------------------------------------------------------------------


def test_negative_and_non_finite_values_are_dropped_and_counted():
    store, _ = make_store()
    store.record_success("a", p1(-5.0, power=math.nan, gas={"G1": math.inf, "G2": 3.0}))
    parses(store)
    assert value(store, M.ENERGY_IMPORTED.name) is None
    assert value(store, M.ACTIVE_POWER.name) is None
    assert value(store, M.GAS.name, meter="G1") is None
    assert value(store, M.GAS.name, meter="G2") == 3.0  # the rest of the reading is exported
    assert value(store, M.PHASE_VOLTAGE.name, phase="l1") == 231.0
    assert dropped(store, "negative") == 1
    assert dropped(store, "not_finite") == 2
    assert store.targets["a"].up
    # a negative gauge is a measurement (export)
    store.record_success("a", p1(1000.0, power=-1500.0))
    assert value(store, M.ACTIVE_POWER.name) == -1500.0


def test_a_counter_that_turns_negative_keeps_its_value():
    store, clock = make_store()
    store.record_success("a", p1(1000.0))
    clock.now += 10
    store.record_success("a", p1(-5.0))
    parses(store)
    assert value(store, M.ENERGY_IMPORTED.name) == 1000.0 * JOULES_PER_KWH
    assert dropped(store, "negative") == 1
    assert value(store, "energy_meter_exporter_decreasing_readings_total") == 0
    clock.now += 10
    store.record_success("a", p1(1000.01))
    assert value(store, M.ENERGY_IMPORTED.name) == pytest.approx(1000.01 * JOULES_PER_KWH)


def test_absurd_counters_never_reach_the_body():
    store, clock = make_store()
    store.record_success("a", p1(1e300))  # 3.6e306 J: a float, and a value no meter holds
    parses(store)
    assert value(store, M.ENERGY_IMPORTED.name) is None
    assert dropped(store, "out_of_range") == 1
    clock.now += 10
    store.record_success("a", p1(1000.0))
    clock.now += 10
    store.record_success("a", p1(1e300))
    parses(store)
    assert value(store, M.ENERGY_IMPORTED.name) == 1000.0 * JOULES_PER_KWH
    assert dropped(store, "out_of_range") == 2


def test_a_forged_first_reading_does_not_hold_the_real_ones_back():
    """1e12 kWh as the first value: refused (no meter holds what 10 MW give in a century), so the
    real readings that follow are exported, not held as decreasing."""
    store, clock = make_store()
    store.record_success("a", p1(1e12))
    assert value(store, M.ENERGY_IMPORTED.name) is None
    for kwh in (2948.0, 2948.5, 2949.0):
        clock.now += 10
        store.record_success("a", p1(kwh))
        assert value(store, M.ENERGY_IMPORTED.name) == kwh * JOULES_PER_KWH
    assert value(store, "energy_meter_exporter_decreasing_readings_total") == 0
    # the ceiling itself: what max_power gives in a century
    assert DEFAULT_MAX_POWER * CEILING_SECONDS < 1e12 * JOULES_PER_KWH


def test_implausible_jumps_are_refused_and_the_counter_keeps_its_value():
    store, clock = make_store()
    store.record_success("a", p1(1000.0))
    clock.now += 10
    store.record_success("a", p1(1000.0 + 1e6))  # 1 GWh in 10 s: 360 GW
    assert value(store, M.ENERGY_IMPORTED.name) == 1000.0 * JOULES_PER_KWH
    assert dropped(store, "implausible_jump") == 1
    clock.now += 10
    store.record_success("a", p1(1000.1))  # the real meter again: 36 kW over 10 s is fine
    assert value(store, M.ENERGY_IMPORTED.name) == pytest.approx(1000.1 * JOULES_PER_KWH)
    assert dropped(store, "implausible_jump") == 1
    assert store.targets["a"].disputed_since is None
    # a long silence allows a bigger rise: 10 MW for a day is 240 MWh
    clock.now += 86400
    store.record_success("a", p1(1000.1 + 200_000))
    assert value(store, M.ENERGY_IMPORTED.name) == pytest.approx((1000.1 + 200_000) * JOULES_PER_KWH)


def test_a_jump_that_stays_is_taken_after_the_grace_period():
    """A meter replaced by one that reads more: held for an hour, then exported."""
    store, clock = make_store()
    store.record_success("a", p1(1000.0))
    for step in range(int(COUNTER_RESET_GRACE // 600) + 1):
        clock.now += 600
        store.record_success("a", p1(90_000.0 + step))
    assert value(store, M.ENERGY_IMPORTED.name) == (90_000.0 + step) * JOULES_PER_KWH
    assert dropped(store, "implausible_jump") == step  # all but the last


def test_a_replaced_meter_that_reads_less_still_resets_after_the_grace_period():
    store, clock = make_store()
    store.record_success("a", p1(5000.0))
    clock.now += 10
    store.record_success("a", p1(3.0))
    assert value(store, M.ENERGY_IMPORTED.name) == 5000.0 * JOULES_PER_KWH
    clock.now += COUNTER_RESET_GRACE + 1
    store.record_success("a", p1(4.0))
    assert value(store, M.ENERGY_IMPORTED.name) == 4.0 * JOULES_PER_KWH
    clock.now += 10
    store.record_success("a", p1(4.01))
    assert value(store, M.ENERGY_IMPORTED.name) == pytest.approx(4.01 * JOULES_PER_KWH)
    assert dropped(store, "implausible_jump") == 0


def test_max_power_is_the_target_s_own():
    store, clock = make_store()
    store.set_max_power("a", 3000.0)  # a house with a 3 kW connection
    store.record_success("a", p1(1000.0))
    clock.now += 3600
    store.record_success("a", p1(1004.0))  # 4 kW for an hour
    assert value(store, M.ENERGY_IMPORTED.name) == 1000.0 * JOULES_PER_KWH
    assert dropped(store, "implausible_jump") == 1
    clock.now += 3600
    store.record_success("a", p1(1005.0))  # 2.5 kW on average since the value held was read
    assert value(store, M.ENERGY_IMPORTED.name) == 1005.0 * JOULES_PER_KWH


def test_reactive_energy_is_energy_and_gas_has_a_plain_ceiling():
    store, clock = make_store()
    r = Reading()
    r.add(M.REACTIVE_ENERGY_INDUCTIVE, 1e9)
    r.add(M.GAS, 100.0, meter="G1")
    store.record_success("a", r)
    clock.now += 10
    r = Reading()
    r.add(M.REACTIVE_ENERGY_INDUCTIVE, 1e9 + 1e12)  # 100 Gvar over 10 s
    r.add(M.GAS, 1e6, meter="G1")  # a big step, but no energy: no power bounds it
    store.record_success("a", r)
    assert value(store, M.REACTIVE_ENERGY_INDUCTIVE.name) == 1e9
    assert value(store, M.GAS.name, meter="G1") == 1e6
    clock.now += 10
    r = Reading()
    r.add(M.REACTIVE_ENERGY_INDUCTIVE, 1e9 + 10)
    r.add(M.GAS, 1e16, meter="G1")  # beyond any gas meter
    store.record_success("a", r)
    assert value(store, M.GAS.name, meter="G1") == 1e6
    assert dropped(store, "out_of_range") == 1
    assert dropped(store, "implausible_jump") == 1
    parses(store)


def test_the_largest_floats_format_as_numbers_a_parser_reads():
    for number in (1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 3.6e306):
        text = format_value(number)
        assert float(text) == number, text
    store, _ = make_store()
    store.record_success("a", p1(1000.0, power=1.7976931348623157e308))
    parses(store)
    assert value(store, M.ACTIVE_POWER.name) == 1.7976931348623157e308


def test_values_of_the_wrong_type_are_dropped_not_rendered():
    store, _ = make_store()
    r = p1(1000.0)
    r.samples.append(Sample(M.FREQUENCY, (), "fifty"))
    r.samples.append(Sample(M.WIFI_RSSI, (), 10 ** 400))
    store.record_success("a", r)
    parses(store)
    assert dropped(store, "not_finite") == 2
    assert value(store, M.ENERGY_IMPORTED.name) == 1000.0 * JOULES_PER_KWH


def test_a_series_sent_twice_in_one_reading_is_exported_once():
    store, clock = make_store()
    for step in range(3):
        clock.now += 10
        store.record_success("a", p1(1000.0 + step, gas={"G1": 5.0 + step}) if step != 1 else
                             _twice(p1(1001.0, gas={"G1": 6.0})))
        parses(store)
    assert value(store, M.GAS.name, meter="G1") == 7.0
    assert dropped(store, "duplicate") == 2


def _twice(reading: Reading) -> Reading:
    """The reading with its counters repeated (lower), in another order."""
    reading.samples.extend(Sample(s.metric, s.labels, 1.0) for s in reversed(reading.samples)
                           if s.metric.type == "counter")
    return reading


# --- series that come and go without end ---------------------------------------------------------


def churn(store: SnapshotStore, clock: Clock, polls: int, start: int = 0) -> None:
    for n in range(start, start + polls):
        clock.now += 10
        # a new external meter every poll, and one that goes lower and then away (a dispute)
        store.record_success("a", p1(1000.0 + n / 1000, gas={f"G{n:08d}": 10.0 + n, f"L{n // 2}": 5.0 - n % 2}))


def test_a_device_naming_new_meters_on_every_poll_keeps_its_state_bounded():
    store, clock = make_store()
    state = store.targets["a"]
    churn(store, clock, 1000)
    assert len(state.retired) <= RETIRED_MIN
    assert len(state.disputed_since or ()) <= RETIRED_MIN + 4  # counters of the reading, or held
    gc.collect()
    tracemalloc.start()
    try:
        churn(store, clock, 200, start=1000)
        text_module._LABELS.clear()  # the label text cache all targets share has a bound of its own
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        churn(store, clock, 3000, start=1200)
        text_module._LABELS.clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert len(state.retired) <= RETIRED_MIN
    assert len(state.disputed_since or ()) <= RETIRED_MIN + 4  # counters of the reading, or held
    # Without bounds these 3,000 polls keep 3,000 more counters: 1.3 MB.
    assert grown < 200_000, grown
    # what went is still exported when it comes back: the newest retired counters are held
    clock.now += 10
    store.record_success("a", p1(1000.0 + 4.2, gas={"G00004199": 1.0}))
    assert value(store, M.GAS.name, meter="G00004199") == 10.0 + 4199
    parses(store)


def test_a_big_account_keeps_every_counter_it_reads():
    """An account of many meters (more than RETIRED_MIN): the ones absent from one reading (an
    answer cut short) are all held for their return."""
    store, clock = make_store()
    meters = {f"M{n}": 100.0 + n for n in range(1000)}
    store.record_success("a", p1(gas=meters))
    clock.now += 10
    store.record_success("a", p1(gas={"M0": 100.0}))
    clock.now += 10
    store.record_success("a", p1(gas={name: v - 1 for name, v in meters.items()}))
    assert value(store, M.GAS.name, meter="M999") == 1099.0  # held, not exported lower
    assert value(store, "energy_meter_exporter_decreasing_readings_total") == 1000


# --- the log -----------------------------------------------------------------------------------


def test_log_throttle_writes_the_first_then_a_summary_per_window():
    throttle = LogThrottle()
    assert throttle.allow("x", 300, now=0) == 0
    assert [throttle.allow("x", 300, now=t) for t in range(1, 300)] == [None] * 299
    assert throttle.allow("x", 300, now=300) == 299
    assert throttle.allow("y", 300, now=300) == 0  # another kind has its own window
    for n in range(LogThrottle.KINDS * 3):  # kinds from a device's answers stay bounded
        throttle.allow(("k", n), 300, now=400)
    assert len(throttle._kinds) == LogThrottle.KINDS


# --- any reading at all ------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                    st.sampled_from([0.0, -0.0, 1e300, -5 * JOULES_PER_KWH, 3.6e9, 1.7976931348623157e308]))
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # surrogates included
READINGS = st.lists(
    st.tuples(st.sampled_from([M.ENERGY_IMPORTED, M.GAS, M.ACTIVE_POWER, M.REACTIVE_ENERGY_INDUCTIVE]),
              st.sampled_from(["G1", "G2", "\ud800", "é"]) | TEXT, NUMBERS),
    max_size=6)


@settings(max_examples=200, deadline=None)
@given(polls=st.lists(st.tuples(READINGS, st.sampled_from([0.0, 0.5, 10.0, 600.0, 3600.0])), min_size=1,
                      max_size=8))
def test_any_reading_gives_a_body_the_parsers_read_and_counters_that_never_step_back(polls):
    store, clock = make_store()
    started = clock.now
    exported: dict[tuple, float] = {}
    for samples, pause in polls:
        clock.now += pause
        r = Reading()
        for metric, meter, number in samples:
            labels = (("meter", meter),) if metric is M.GAS else ()
            r.samples.append(Sample(metric, labels, number))
        store.record_success("a", r)
        assert store.targets["a"].up
        for family in parse_openmetrics(body(store, om=True)):
            for s in family.samples:
                assert math.isfinite(s.value), s
                if family.type == "counter" and s.labels.get("device") == "a" and "reason" not in s.labels:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    assert s.value >= 0
                    if key in exported and clock.now - started < COUNTER_RESET_GRACE:
                        # (later, a counter out of line for an hour may be taken as a new meter)
                        assert s.value >= exported[key], (key, s.value)
                    exported[key] = s.value
        list(parse_text(body(store)))
