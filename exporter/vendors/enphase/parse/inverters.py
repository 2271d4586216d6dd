"""`/api/v1/production/inverters` and `/ivp/pdm/device_data`: each microinverter's last report."""

from __future__ import annotations

from typing import Any

from ....model import catalogue as M
from ....model.samples import Reading, checked_list, checked_object, number_or_none
from .common import int_or_none, opt_list, opt_obj, opt_str, timestamp_of, unique_serial

DEV_TYPE_ACB = 11

# --- /api/v1/production/inverters ----------------------------------------------------------------


def parse_inverters(payload: Any) -> Reading:
    """`GET /api/v1/production/inverters`: each microinverter's last report (updated every 5 min).

    Rows of `devType` 11 are AC Batteries (their serials are the inventory's ACB units, seen on
    8.2.4382): not microinverters, so they give no inverter series."""
    rows = checked_list(payload, "/api/v1/production/inverters")
    reading = Reading()
    seen: set[str] = set()
    for index, row in enumerate(rows):
        what = f"inverters[{index}]"
        row = checked_object(row, what)
        serial = unique_serial(row, "serialNumber", what, seen, "inverter")
        if int_or_none(row.get("devType"), f"{what}.devType") == DEV_TYPE_ACB:
            continue
        reading.add(M.INVERTER_POWER, number_or_none(row.get("lastReportWatts"), f"{what}.lastReportWatts"), inverter=serial)
        reading.add(M.INVERTER_MAX_POWER, number_or_none(row.get("maxReportWatts"), f"{what}.maxReportWatts"), inverter=serial)
        reading.add(M.INVERTER_LAST_REPORT, timestamp_of(row.get("lastReportDate"), f"{what}.lastReportDate"),
                    inverter=serial)
    return reading


# --- /ivp/pdm/device_data ----------------------------------------------------------------------


def pdm_device_counts(payload: Any) -> tuple[int | None, int | None]:
    """(`deviceCount`, `deviceDataLimit`) of `/ivp/pdm/device_data`."""
    data = checked_object(payload, "/ivp/pdm/device_data")
    return (int_or_none(data.get("deviceCount"), "deviceCount"),
            int_or_none(data.get("deviceDataLimit"), "deviceDataLimit"))


def parse_pdm_device_data(payload: Any) -> Reading:
    """`GET /ivp/pdm/device_data` (firmware 8.3 and later): each device's latest report.

    Neither the seed nor any capture has this endpoint; the shape is the one the open-source
    pyenphase client documents (its docs/json_data/ivp_pdm_device_data.json): an object keyed
    by device id, plus `deviceCount` and `deviceDataLimit`; each device has `devName` ("pcu" for
    a microinverter), `sn`, and `channels` with `watts` {`now`, `max`} and `lastReading`
    {`endDate`}. Only the first `deviceDataLimit` (50) devices are listed, so this is the
    microinverters' list only where `/api/v1/production/inverters` is missing or lacks a serial.

    Per microinverter: the power of its channels together, the highest power (one channel only:
    the maxima of two channels need not be simultaneous), and when it last reported."""
    data = checked_object(payload, "/ivp/pdm/device_data")
    reading = Reading()
    seen: set[str] = set()
    for key, device in data.items():
        if key in ("deviceCount", "deviceDataLimit") or not isinstance(device, dict):
            continue
        what = f"device_data[{key}]"
        if opt_str(device, "devName", what) != "pcu":
            continue  # not a microinverter
        serial = unique_serial(device, "sn", what, seen, "inverter")
        channels = [checked_object(c, f"{what}.channels[{i}]") for i, c in enumerate(opt_list(device, "channels", what))]
        powers, maxima, reports = [], [], []
        for index, channel in enumerate(channels):
            where = f"{what}.channels[{index}]"
            watts = opt_obj(channel, "watts", where) or {}
            powers.append(number_or_none(watts.get("now"), f"{where}.watts.now"))
            maxima.append(number_or_none(watts.get("max"), f"{where}.watts.max"))
            last = opt_obj(channel, "lastReading", where) or {}
            report = timestamp_of(last.get("endDate"), f"{where}.lastReading.endDate")
            if report is not None:
                reports.append(report)
        if channels and all(p is not None for p in powers):
            reading.add(M.INVERTER_POWER, sum(powers), inverter=serial)  # type: ignore[arg-type]
        if len(maxima) == 1:
            reading.add(M.INVERTER_MAX_POWER, maxima[0], inverter=serial)
        reading.add(M.INVERTER_LAST_REPORT, max(reports) if reports else None, inverter=serial)
    return reading
