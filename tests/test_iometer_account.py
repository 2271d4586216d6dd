"""IOmeter Partner API account: the newest reading of every meter, merged across deliveries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import catalogue as M
from exporter.model.samples import DeviceInfo, ParseError
from exporter.vendors.iometer import parse
from exporter.vendors.iometer.account import AccountReadings

from .test_iometer_parse import _reading_or_parse_error, installation, meter_reading, meter_reading_payloads


def _reading(time: str, energy_wh: float, meter: str = "m1", number: str = "1EMH1", inst: str | None = "i1") -> parse.MeterReading:
    return parse.parse_meter_reading(meter_reading(meter, number, inst, time, ("1.8.0", energy_wh, "Wh"), ("16.7.0", 5, "W")))


def test_account_keeps_the_newest_reading_and_counts_duplicates() -> None:
    account = AccountReadings(names={"1EMH1": "house"})
    assert account.offer(_reading("2025-01-01T00:00:10Z", 200))
    assert not account.offer(_reading("2025-01-01T00:00:10Z", 200))  # repeated delivery
    assert not account.offer(_reading("2025-01-01T00:00:05Z", 150))  # a replay of an older one
    snapshot = account.snapshot()
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="i1", meter="house") == 200 * 3600
    assert snapshot.value_of(M.ACCOUNT_MEASUREMENT_TIME, meter="house") == 1735689610
    assert snapshot.value_of(M.READINGS_RECEIVED) == 3
    assert snapshot.value_of(M.DUPLICATE_READINGS) == 2
    assert account.newest_time == 1735689610
    assert DeviceInfo("electricity meter", "1EMH1", "", meter="house") in snapshot.devices


def test_account_merges_registers_of_newer_readings() -> None:
    account = AccountReadings()
    account.offer(_reading("2025-01-01T00:00:00Z", 100))
    account.offer(parse.parse_meter_reading(meter_reading("m1", "1EMH1", "i1", "2025-01-01T00:00:01Z", ("16.7.0", 7, "W"))))
    snapshot = account.snapshot()
    assert snapshot.value_of(M.ACCOUNT_ACTIVE_POWER, meter="1EMH1") == 7
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="1EMH1") == 100 * 3600


def test_account_filters_installations_and_codes_and_learns_installations_from_discovery() -> None:
    account = AccountReadings(installations_allowed={"i1"}, obis_codes=["01-00:01.08.00*ff"])
    account.set_installations(parse.parse_installations({"installations": [
        installation("i1", ("m1", "1EMH1")), installation("i2", ("m2", "1EMH2"))]}))
    account.offer(_reading("2025-01-01T00:00:00Z", 100, inst=None))  # installation from discovery
    account.offer(_reading("2025-01-01T00:00:00Z", 100, "m2", "1EMH2", "i2"))  # not wanted
    snapshot = account.snapshot()
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="i1", meter="1EMH1") == 360000
    assert snapshot.value_of(M.ACCOUNT_ACTIVE_POWER) is None  # not in obis_codes
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="i2") is None
    assert snapshot.value_of(M.READER_CONNECTED, installation="i2") is None
    assert snapshot.value_of(M.READER_CONNECTED, installation="i1") == 1


def test_account_keeps_one_series_per_meter_label() -> None:
    account = AccountReadings(names={"A": "same", "B": "same"})
    account.offer(_reading("2025-01-01T00:00:00Z", 1, "m1", "A"))
    account.offer(_reading("2025-01-01T00:00:05Z", 2, "m2", "B"))
    samples = [s for s in account.snapshot().samples if s.metric is M.ACCOUNT_ENERGY_IMPORTED]
    assert [s.value for s in samples] == [2 * 3600]


def test_account_refuses_a_bad_reading_when_it_comes_and_keeps_the_last_good_one() -> None:
    account = AccountReadings()
    account.offer(_reading("2025-01-01T00:00:00Z", 100))
    account.snapshot()
    bad = (("1.8.0", 200, "W"),  # a unit that does not fit the quantity
           ("16.7.0", 1e306, "MW"))  # beyond the float range once scaled to W
    for value in bad:
        item = parse.parse_meter_reading(meter_reading("m1", "1EMH1", "i1", "2025-01-01T00:00:05Z",
                                                       ("1.8.2", 7, "Wh"), value))
        with pytest.raises(ParseError):
            account.offer(item)  # refused on arrival, not when the next snapshot is built
    snapshot = account.snapshot()
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="1EMH1") == 100 * 3600
    assert snapshot.value_of(M.ACCOUNT_TARIFF_ENERGY_IMPORTED, meter="1EMH1") is None
    assert snapshot.value_of(M.ACCOUNT_MEASUREMENT_TIME, meter="1EMH1") == 1735689600
    assert snapshot.value_of(M.READINGS_RECEIVED) == 3
    assert account.offer(_reading("2025-01-01T00:00:05Z", 300))  # the same time, now good: taken
    assert account.snapshot().value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="1EMH1") == 300 * 3600


def test_snapshots_hold_the_newest_reading_of_every_meter() -> None:
    account = AccountReadings()
    account.offer(_reading("2025-01-01T00:00:00Z", 100, "m1", "A"))
    account.offer(_reading("2025-01-01T00:00:00Z", 50, "m2", "B"))
    first = account.snapshot()
    for second, energy in ((1, 101), (2, 102)):  # two readings of A between two snapshots
        account.offer(_reading(f"2025-01-01T00:00:0{second}Z", energy, "m1", "A"))
    for second, power in ((3, 0.0), (4, -0.0)):
        account.offer(parse.parse_meter_reading(meter_reading("m2", "B", "i1", f"2025-01-01T00:00:0{second}Z",
                                                            ("16.7.0", power, "W"))))
        later = account.snapshot()
    assert later.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="A") == 102 * 3600
    assert later.value_of(M.ACCOUNT_MEASUREMENT_TIME, meter="A") == 1735689602
    assert later.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="B") == 50 * 3600  # B sent no energy
    assert str(later.value_of(M.ACCOUNT_ACTIVE_POWER, meter="B")) == "-0.0"  # as sent, not the +0.0 before
    assert [(s.metric, s.labels) for s in later.samples] == [(s.metric, s.labels) for s in first.samples]
    assert account.snapshot().samples == later.samples  # nothing new: the same snapshot


def test_account_power_total_from_36_7_0_follows_the_registers_held() -> None:
    account = AccountReadings()
    account.offer(parse.parse_meter_reading(meter_reading("m1", "1EMH1", "i1", "2025-01-01T00:00:00Z", ("36.7.0", 420, "W"))))
    alone = account.snapshot()
    assert alone.value_of(M.ACCOUNT_ACTIVE_POWER) == 420 and alone.value_of(M.ACCOUNT_PHASE_ACTIVE_POWER) is None
    account.offer(parse.parse_meter_reading(meter_reading("m1", "1EMH1", "i1", "2025-01-01T00:00:01Z", ("56.7.0", 100, "W"))))
    phases = account.snapshot()
    assert phases.value_of(M.ACCOUNT_ACTIVE_POWER) is None
    assert phases.value_of(M.ACCOUNT_PHASE_ACTIVE_POWER, phase="l1") == 420
    assert phases.value_of(M.ACCOUNT_PHASE_ACTIVE_POWER, phase="l2") == 100


def test_a_meter_takes_the_installation_discovery_finds_later() -> None:
    account = AccountReadings()
    account.offer(_reading("2025-01-01T00:00:00Z", 1, inst=None))
    assert account.snapshot().value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="", meter="1EMH1") == 3600
    account.set_installations(parse.parse_installations({"installations": [installation("i1", ("m1", "1EMH1"))]}))
    account.offer(_reading("2025-01-01T00:00:01Z", 2, inst=None))
    snapshot = account.snapshot()
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="i1", meter="1EMH1") == 7200
    assert snapshot.value_of(M.ACCOUNT_ACTIVE_POWER, installation="i1", meter="1EMH1") == 5
    assert snapshot.value_of(M.ACCOUNT_ENERGY_IMPORTED, installation="") is None


@settings(max_examples=300)
@given(st.lists(meter_reading_payloads, max_size=4))
def test_readings_into_the_account_any_json(items: list) -> None:
    account = AccountReadings()
    for item in items:
        try:
            account.offer(parse.parse_meter_reading(item))
        except ParseError:
            continue
    _reading_or_parse_error(lambda _: account.snapshot(), None)
