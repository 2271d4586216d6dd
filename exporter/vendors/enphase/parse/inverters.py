"""`/api/v1/production/inverters`: each microinverter's last report."""

from __future__ import annotations

from typing import Any

from ....model import catalogue as M
from ....model.samples import ParseError, Reading, checked_list, checked_object, number_or_none
from .common import serial_of, timestamp_of

# --- /api/v1/production/inverters ----------------------------------------------------------------


def parse_inverters(payload: Any) -> Reading:
    """`GET /api/v1/production/inverters`: each microinverter's last report (updated every 5 min)."""
    rows = checked_list(payload, "/api/v1/production/inverters")
    reading = Reading()
    seen: set[str] = set()
    for index, row in enumerate(rows):
        what = f"inverters[{index}]"
        row = checked_object(row, what)
        serial = serial_of(row.get("serialNumber"), f"{what}.serialNumber")
        if serial is None:
            raise ParseError(f"{what}: no serialNumber")
        if serial in seen:
            raise ParseError(f"{what}: inverter {serial} listed twice")
        seen.add(serial)
        reading.add(M.INVERTER_POWER, number_or_none(row.get("lastReportWatts"), f"{what}.lastReportWatts"), inverter=serial)
        reading.add(M.INVERTER_MAX_POWER, number_or_none(row.get("maxReportWatts"), f"{what}.maxReportWatts"), inverter=serial)
        reading.add(M.INVERTER_LAST_REPORT, timestamp_of(row.get("lastReportDate"), f"{what}.lastReportDate"),
                    inverter=serial)
    return reading
