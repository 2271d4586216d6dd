"""IAMMETER cloud API parsers: every row shape of the seed document, nulls, the net row, the
"returns nothing" answer, and malformed answers (ParseError, never a wrong number)."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, timezone

import pytest

from exporter.model import catalogue as M
from exporter.model.samples import ParseError
from exporter.vendors.iammeter import cloud_parse as cp
from simulators import iammeter_cloud as seed

KWH = 3.6e6
LABELS = cp.MeterLabels("home", "kitchen")


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


def metersdata(**overrides) -> dict:
    readings = cp.parse_metersdata(seed.SEED_METERSDATA["data"], {"B384789C": cp.MeterLabels("home", "solar")},
                                   "home", **overrides)
    return readings


def series(reading, metric):
    return {dict(s.labels).get("phase", ""): s.value for s in reading.samples if s.metric is metric}


# --- metersdata: every meter shape of the seed ---------------------------------------------------


def test_single_phase_flat_row_gives_meter_totals_and_phase_l1():
    reading = metersdata()["DA2BED94"]
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="DA2BED94") == 225
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) == pytest.approx(14761.03 * KWH)
    assert reading.value_of(M.ACCOUNT_ENERGY_EXPORTED) == 0
    assert series(reading, M.ACCOUNT_PHASE_VOLTAGE) == {"l1": 223.71}
    assert series(reading, M.ACCOUNT_PHASE_CURRENT) == {"l1": 1.74}
    # 5 values: no frequency, no power factor, and never a zero in their place
    assert reading.value_of(M.ACCOUNT_FREQUENCY) is None
    assert reading.value_of(M.ACCOUNT_POWER_FACTOR) is None
    assert reading.value_of(M.ACCOUNT_MEASUREMENT_TIME) == utc(2024, 2, 22, 3, 46, 20)
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, installation="home") == 225
    assert reading.devices[0].serial == "DA2BED94" and reading.devices[0].meter == "DA2BED94"


def test_rows_of_seven_with_nulls_a_null_phase_and_the_net_row():
    reading = metersdata()["B384789C"]
    assert reading.devices[0].meter == "solar"
    assert series(reading, M.ACCOUNT_PHASE_ACTIVE_POWER) == {"l1": 3356, "l2": -2747}  # l3 is a row of nulls
    assert series(reading, M.ACCOUNT_PHASE_ENERGY_EXPORTED)["l2"] == pytest.approx(18489.44 * KWH)
    # The net row is the meter's total, under the names a single-phase meter's row has.
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="solar") == -2747
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) == pytest.approx(8988.48 * KWH)
    assert reading.value_of(M.ACCOUNT_ENERGY_EXPORTED) == pytest.approx(18489.44 * KWH)
    # null frequency and power factor: no series
    for metric in (M.ACCOUNT_FREQUENCY, M.ACCOUNT_POWER_FACTOR, M.ACCOUNT_PHASE_POWER_FACTOR):
        assert reading.value_of(metric) is None, metric.name


def test_three_rows_of_five_are_three_phases():
    reading = metersdata()["674B1E5D"]
    assert series(reading, M.ACCOUNT_PHASE_ENERGY_IMPORTED) == pytest.approx(
        {"l1": 5345.985 * KWH, "l2": 5367.715 * KWH, "l3": 5369.532 * KWH})
    # Without a net row a multi-phase meter has no total: none is made up from its phases.
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER) is None
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) is None


def test_three_rows_of_seven_give_frequency_once_and_phase_power_factors():
    reading = metersdata()["3FE34ABE"]
    assert [s.value for s in reading.samples if s.metric is M.ACCOUNT_FREQUENCY] == [49.99]
    assert series(reading, M.ACCOUNT_PHASE_POWER_FACTOR) == {"l1": 0.94, "l2": 0.94, "l3": 0.94}
    assert series(reading, M.ACCOUNT_PHASE_CURRENT)["l2"] == -11.5  # as sent, with the export sign
    obis = {dict(s.labels)["phase"]: dict(s.labels)["obis"] for s in reading.samples
            if s.metric is M.ACCOUNT_PHASE_ENERGY_IMPORTED}
    assert obis == {"l1": "1-0:21.8.0", "l2": "1-0:41.8.0", "l3": "1-0:61.8.0"}


def test_only_keeps_the_configured_meters():
    assert set(metersdata(only={"3FE34ABE", "NOSUCHSN"})) == {"3FE34ABE"}


def test_a_meter_without_values_has_identity_but_no_series():
    readings = cp.parse_metersdata([{"sn": "AAAA0001", "values": [None, None, None, None, None], "gmtTime": None},
                                    {"sn": "AAAA0002", "values": [], "gmtTime": "2024/2/22 3:46:20"}], {})
    assert [r.samples for r in readings.values()] == [[], []]
    assert [r.devices[0].serial for r in readings.values()] == ["AAAA0001", "AAAA0002"]


# --- meterdata / meterdata2 --------------------------------------------------------------------


def test_meterdata_single_phase():
    reading = cp.parse_meterdata(seed.SEED_METERDATA_SINGLE["data"], "SN1", LABELS)
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="kitchen", installation="home") == 119
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) == pytest.approx(1766.59 * KWH)
    assert reading.value_of(M.ACCOUNT_MEASUREMENT_TIME) == utc(2020, 8, 28, 5, 27, 33)  # gmtTime, not localTime


def test_meterdata2_puts_power_factor_fourth_and_it_is_reordered():
    reading = cp.parse_meterdata(seed.SEED_METERDATA2_SINGLE["data"], "SN1", LABELS)
    assert reading.value_of(M.ACCOUNT_POWER_FACTOR) == 0.66
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) == pytest.approx(5724.85 * KWH)
    assert reading.value_of(M.ACCOUNT_ENERGY_EXPORTED) == 0


def test_meterdata_three_phases_basic_and_advanced():
    basic = cp.parse_meterdata(seed.SEED_METERDATA_THREE["data"], "SN3", LABELS)
    assert series(basic, M.ACCOUNT_PHASE_ACTIVE_POWER) == {"l1": 216, "l2": 1986, "l3": 0}  # the meter sent 0
    assert series(basic, M.ACCOUNT_PHASE_ENERGY_EXPORTED)["l2"] == pytest.approx(17704.72 * KWH)
    advanced = cp.parse_meterdata(seed.SEED_METERDATA2_THREE["data"], "SN3", LABELS)
    assert series(advanced, M.ACCOUNT_PHASE_POWER_FACTOR) == {"l1": 0.57, "l2": 0, "l3": 0}
    assert series(advanced, M.ACCOUNT_PHASE_ENERGY_IMPORTED)["l1"] == pytest.approx(222.53 * KWH)
    assert series(advanced, M.ACCOUNT_PHASE_VOLTAGE) == {"l1": 233.8, "l2": 5, "l3": 3.1}


# --- envelopes: data, refusals, "nothing" ---------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"  \n", b"null", b"{}", b'""',
                                  b'{"data":null,"successful":true,"message":null}'])
def test_the_over_quota_answer_is_nothing_not_zeros(body):
    with pytest.raises(cp.NothingReturned):
        cp.unwrap(body, "metersdata")


def test_refusals_say_whether_a_login_may_help():
    with pytest.raises(cp.ApiRefused) as token:
        cp.unwrap(json.dumps(seed.INVALID_TOKEN).encode())
    assert token.value.token_invalid
    with pytest.raises(cp.ApiRefused) as password:
        cp.unwrap(json.dumps(seed.WRONG_PASSWORD).encode())
    assert not password.value.token_invalid and "password" in password.value.message
    with pytest.raises(cp.ApiRefused) as unknown:
        cp.unwrap(b'{"data":null,"successful":false,"message":"The meter does not exist"}')
    assert not unknown.value.token_invalid


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[1,2]", b'{"successful":true}',
                                  b'{"data":{},"successful":"yes"}'])
def test_garbage_envelopes_are_parse_errors(body):
    with pytest.raises(ParseError):
        cp.unwrap(body)


def test_login():
    login = cp.parse_login(cp.unwrap(json.dumps(seed.SEED_LOGIN).encode()))
    assert login == cp.Login("349dfxxxxxxac5169", "2025")
    for bad in ({"id": 1}, {"token": ""}, {"token": 5}, {"token": "a\nb"}, [], {"token": "t", "id": [1]}):
        with pytest.raises(ParseError):
            cp.parse_login(bad)


# --- malformed meter values ---------------------------------------------------------------------


def broken(sn: str, values) -> list:
    data = copy.deepcopy(seed.SEED_METERSDATA["data"])
    next(item for item in data if item["sn"] == sn)["values"] = values
    return data


@pytest.mark.parametrize("data, message", [
    (broken("DA2BED94", [223.71, 1.74, 225, 14761.03]), "4 values"),
    (broken("DA2BED94", [223.71, "abc", 225, 14761.03, 0]), "expected a number"),
    (broken("DA2BED94", [223.71, True, 225, 14761.03, 0]), "boolean"),
    (broken("DA2BED94", [[223.71, 1.74, 225, 14761.03, 0], 5]), "mixes rows"),
    (broken("DA2BED94", {"a": 1}), "expected a list"),
    (broken("674B1E5D", [[220.4, 1.86, 377, 5345.985, 20.565]] * 5), "5 rows"),
    (broken("674B1E5D", [[220.4, 1.86, 377, 5345.985, {"x": 1}]]), "expected a number"),
    (seed.SEED_METERSDATA["data"] + [seed.SEED_METERSDATA["data"][0]], "listed twice"),
    ([{"values": [1, 2, 3, 4, 5]}], "serial number"),
    ([{"sn": "X1", "values": [1, 2, 3, 4, 5], "gmtTime": "yesterday"}], "not a time"),
    ([{"sn": "X1", "values": [1, 2, 3, 4, 5], "gmtTime": "2024/2/30 1:00:00"}], "not a valid time"),
    ({"sn": "X1"}, "expected a list"),
    ([5], "expected an object"),
])
def test_malformed_metersdata_is_refused(data, message):
    with pytest.raises(ParseError, match=message):
        cp.parse_metersdata(data, {})


def test_numeric_strings_are_accepted_like_the_local_api():
    reading = cp.parse_metersdata(broken("DA2BED94", ["223.71", "1.74", "225", "14761.03", "0"]), {})["DA2BED94"]
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER) == 225


def test_meterdata_without_values_is_refused():
    with pytest.raises(ParseError, match="no values"):
        cp.parse_meterdata({"gmtTime": "2020/8/28 5:27:33"}, "SN1", LABELS)
    with pytest.raises(ParseError, match="expected an object"):
        cp.parse_meterdata([[1, 2, 3, 4, 5]], "SN1", LABELS)


# --- history ----------------------------------------------------------------------------------


def test_meterdatalist_single_phase_rows_carry_their_utc_time():
    points = cp.parse_meterdatalist(seed.SEED_METERDATALIST_SINGLE["data"], "SN1")
    assert [p.time for p in points] == [utc(2023, 9, 12, 0, 0, 34), utc(2023, 9, 12, 0, 1, 33)]
    reading = cp.history_reading(points[1], "SN1", LABELS)
    assert reading.value_of(M.ACCOUNT_PHASE_VOLTAGE, phase="l1") == 229.43
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED) == pytest.approx(13121.56 * KWH)
    assert reading.value_of(M.ACCOUNT_MEASUREMENT_TIME) is None  # the point's time is the sample's timestamp


def test_meterdatalist_three_phase_flat_rows():
    points = cp.parse_meterdatalist(seed.SEED_METERDATALIST_THREE["data"], "SN3")
    reading = cp.history_reading(points[0], "SN3", LABELS)
    assert series(reading, M.ACCOUNT_PHASE_ENERGY_EXPORTED) == pytest.approx({"l1": 0, "l2": 290.77 * KWH, "l3": 0})
    assert series(reading, M.ACCOUNT_PHASE_ENERGY_IMPORTED)["l3"] == pytest.approx(258.62 * KWH)


def test_meterdatalist2_objects_with_power_factor():
    points = cp.parse_meterdatalist(seed.SEED_METERDATALIST2["data"], "SN3")
    assert [p.time for p in points] == [utc(2023, 8, 31, 16, 0, 22), utc(2023, 9, 1, 0, 0, 49), utc(2023, 9, 1, 8, 0, 24)]
    reading = cp.history_reading(points[2], "SN3", LABELS)
    assert reading.value_of(M.ACCOUNT_PHASE_POWER_FACTOR, phase="l1") == 0.57
    assert reading.value_of(M.ACCOUNT_PHASE_ENERGY_IMPORTED, phase="l1") == pytest.approx(210.27 * KWH)


def test_history_points_come_sorted_and_once():
    rows = seed.SEED_METERDATALIST_SINGLE["data"]
    points = cp.parse_meterdatalist([rows[1], rows[0], rows[1]], "SN1")
    assert [p.time for p in points] == sorted({p.time for p in points})


@pytest.mark.parametrize("data, message", [
    ([[227.73, 1.45, 172, 13121.56, "2023/9/12 0:00:34", "x"]], "elements"),
    ([[227.73, 1.45, 172, 13121.56, 0, 1, "2023/9/12 0:00:34", "x"]], "5 per phase"),
    ([[227.73, 1.45, 172, 13121.56, 0, 5, "x"]], "UTC time: expected a time"),
    ([{"gmtTime": "2023/9/12 0:00:34"}], "no values"),
    ([7], "expected a row"),
    ({"data": []}, "expected a list"),
])
def test_malformed_history_is_refused(data, message):
    with pytest.raises(ParseError, match=message):
        cp.parse_meterdatalist(data, "SN1")


# --- analysis and energy history ---------------------------------------------------------------


def test_power_analysis():
    reading = cp.parse_power_analysis(seed.SEED_POWER_ANALYSIS["data"], LABELS)
    assert reading.value_of(M.ACCOUNT_AVERAGE_POWER, meter="kitchen") == 862.6
    assert reading.value_of(M.ACCOUNT_DAYTIME_AVERAGE_POWER) == 836.9
    assert reading.value_of(M.ACCOUNT_MINIMUM_POWER) == 259
    assert reading.value_of(M.ACCOUNT_MAXIMUM_POWER) == 3999
    with pytest.raises(ParseError, match="minimum"):
        cp.parse_power_analysis({**seed.SEED_POWER_ANALYSIS["data"], "minimum": 5000}, LABELS)
    with pytest.raises(ParseError):
        cp.parse_power_analysis({"average": "high"}, LABELS)


def test_offline_analysis_in_seconds():
    reading = cp.parse_offline_analysis(seed.SEED_OFFLINE_ANALYSIS["data"], LABELS)
    assert reading.value_of(M.ACCOUNT_OFFLINE_TIME, meter="kitchen") == 906 * 60
    # the seed's week (10080 minutes) and its one gap longer than the interval
    assert reading.value_of(M.ACCOUNT_OFFLINE_ANALYSIS_PERIOD, meter="kitchen") == 10080 * 60
    assert reading.value_of(M.ACCOUNT_OFFLINE_GAPS, meter="kitchen") == 1
    quiet = cp.parse_offline_analysis({"offlineCount": 0, "totalCount": 1440, "list": []}, LABELS)
    assert quiet.value_of(M.ACCOUNT_OFFLINE_GAPS) == 0 and quiet.value_of(M.ACCOUNT_OFFLINE_TIME) == 0
    bare = cp.parse_offline_analysis({"totalCount": 1440}, LABELS)
    assert [s.metric for s in bare.samples] == [M.ACCOUNT_OFFLINE_ANALYSIS_PERIOD]  # no count, no list: no series
    for bad in ({"offlineCount": 2000, "totalCount": 1440}, {"offlineCount": -1}, {"offlineCount": [1]},
                {"totalCount": -5}, {"offlineCount": 3, "list": {"startTime": "x"}}):
        with pytest.raises(ParseError):
            cp.parse_offline_analysis(bad, LABELS)


def test_energy_history_of_the_current_and_previous_day():
    reading = cp.parse_energy_history(seed.SEED_ENERGY_HISTORY["2393"]["data"], "home", date(2024, 5, 6))
    assert reading.value_of(M.PLACE_DAILY_YIELD, place="home", day="current") == pytest.approx(0.1 * KWH)
    assert reading.value_of(M.PLACE_DAILY_GRID_IMPORT, day="current") == pytest.approx(0.22 * KWH)
    assert reading.value_of(M.PLACE_DAILY_GRID_EXPORT, day="current") == pytest.approx(7.15 * KWH)
    assert reading.value_of(M.PLACE_DAILY_SELF_USE, day="previous") == 0
    assert reading.value_of(M.PLACE_DAILY_SPECIAL_LOAD, day="current") == 0  # the seed's specialLoad
    rows = [{**row, "specialLoad": 1.25} for row in seed.SEED_ENERGY_HISTORY["2393"]["data"]]
    special = cp.parse_energy_history(rows, "home", date(2024, 5, 6))
    assert special.value_of(M.PLACE_DAILY_SPECIAL_LOAD, place="home", day="current") == pytest.approx(1.25 * KWH)
    later = cp.parse_energy_history(seed.SEED_ENERGY_HISTORY["2393"]["data"], "home", date(2024, 5, 7))
    assert later.value_of(M.PLACE_DAILY_YIELD, day="previous") == pytest.approx(0.1 * KWH)
    assert later.value_of(M.PLACE_DAILY_YIELD, day="current") is None  # today's row not there yet


def test_malformed_energy_history_is_refused():
    rows = seed.SEED_ENERGY_HISTORY["1360"]["data"]
    for data, message in ((rows + rows[:1], "twice"), ([{**rows[0], "fromGrid": -1}], "negative"),
                          ([{**rows[0], "specialLoad": -2}], "negative"), ([{**rows[0], "specialLoad": "x"}], "specialLoad"),
                          ([{**rows[0], "time": "5 May"}], "not a time"), ({"x": 1}, "expected a list")):
        with pytest.raises(ParseError, match=message):
            cp.parse_energy_history(data, "1360", date(2024, 5, 6))


def test_times():
    assert cp.parse_time("2024/2/22 3:46:20", "t") == utc(2024, 2, 22, 3, 46, 20)
    assert cp.parse_time("2024-02-22T03:46:20Z", "t") == utc(2024, 2, 22, 3, 46, 20)
    for bad in ("2024/13/1 0:00:00", "", None, 1708573580, "2024/2/22 3:46:20+08:00"):
        with pytest.raises(ParseError):
            cp.parse_time(bad, "t")
