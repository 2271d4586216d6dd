"""The quota ledger: limits per window, deferral, and survival across restarts."""

from __future__ import annotations

import pytest

from exporter.model.errors import PollError
from exporter.runtime.quota import Limit, QuotaLedger
from exporter.runtime.state import StateDirectory
from exporter.store import SnapshotStore

from .conftest import exposition_text, sample_value

LOGIN = (Limit(5, 3600, "hour"), Limit(30, 86400, "day"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_calls_within_the_limit_pass_and_the_next_is_deferred(tmp_path):
    clock = Clock()
    ledger = QuotaLedger(StateDirectory(tmp_path), clock)
    for _ in range(5):
        ledger.acquire("login", "acct", LOGIN)
        clock.now += 60
    with pytest.raises(PollError) as err:
        ledger.acquire("login", "acct", LOGIN)
    assert err.value.reason == "quota"
    assert "5 per hour" in err.value.message
    # the first call leaves the hour window 3600 s after it was made
    assert ledger.wait_time("login", "acct", LOGIN) == pytest.approx(3600 - 300)
    clock.now += 3600 - 300
    ledger.acquire("login", "acct", LOGIN)


def test_the_day_limit_holds_across_hours(tmp_path):
    clock = Clock()
    ledger = QuotaLedger(StateDirectory(tmp_path), clock)
    made = 0
    for _ in range(24 * 12):  # try every 5 minutes for a day
        try:
            ledger.acquire("login", "acct", LOGIN)
            made += 1
        except PollError:
            pass
        clock.now += 300
    assert made == 30


def test_twenty_restarts_in_an_hour_make_at_most_five_logins(tmp_path):
    clock = Clock()
    made = 0
    for _ in range(20):
        ledger = QuotaLedger(StateDirectory(tmp_path), clock)  # a new process each time
        try:
            ledger.acquire("login", "acct", LOGIN)
            made += 1
        except PollError:
            pass
        clock.now += 180
    assert made == 5


def test_a_corrupt_ledger_file_is_not_fatal(tmp_path):
    (tmp_path / "quota-ledger.json").write_text("{not json")
    ledger = QuotaLedger(StateDirectory(tmp_path), Clock())
    ledger.acquire("login", "acct", LOGIN)
    assert (tmp_path / "quota-ledger.json").stat().st_mode & 0o777 == 0o600


def test_remaining_is_exported(tmp_path):
    clock = Clock()
    ledger = QuotaLedger(StateDirectory(tmp_path), clock)
    store = SnapshotStore()
    ledger.listeners.append(lambda: store.set_quota(ledger.windows()))
    ledger.register("meterdata", "SN1", (Limit(12, 3600, "hour"),))
    ledger.acquire("meterdata", "SN1", (Limit(12, 3600, "hour"),))
    text = exposition_text(store)
    assert sample_value(text, "energy_meter_exporter_quota_remaining", api="meterdata", scope="SN1", window="hour") == 11


@pytest.mark.parametrize("content", [
    '{"calls": {"login|acct": [NaN, NaN, NaN, NaN, NaN]}}',
    '{"calls": {"login|acct": [1e300, 1e300, 1e300, 1e300, 1e300]}}',
    "[" * 100_000,
], ids=["nan", "far-future", "deep"])
def test_a_damaged_ledger_holds_no_call_back(tmp_path, content):
    """A ledger file with NaN or far-future call times (hand-edited, damaged) or nested past the
    recursion limit neither stops the start nor defers cloud calls forever."""
    from exporter.runtime.quota import LEDGER_FILE

    (tmp_path / LEDGER_FILE).write_text(content)
    ledger = QuotaLedger(StateDirectory(tmp_path), Clock())
    assert ledger.wait_time("login", "acct", LOGIN) == 0.0
    ledger.acquire("login", "acct", LOGIN)
