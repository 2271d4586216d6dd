"""The current transformers (CTs): their list, their readings every poll, the per-meter
reports and the grid reading. Only gateways with a CT in use have readings."""

from __future__ import annotations

from typing import Any

from ....model.samples import Reading
from .. import parse
from .base import Endpoint, Facts

CT_LIST_PATH = "/ivp/meters"
CT_LIST_REFRESH = 3600.0  # the CT configuration rarely changes


def read_ct_list(payload: Any) -> dict[int, parse.MeterConfig]:
    return parse.parse_meters(payload)


def _readings(payload: Any, facts: Facts) -> Reading:
    return parse.parse_meter_readings(payload, facts.meters)


def _reports(payload: Any, facts: Facts) -> Reading:
    return parse.parse_meter_reports(payload, facts.phases, facts.ct_list)


def _grid(payload: Any, facts: Facts) -> Reading:
    return parse.parse_grid_reading(payload, facts.phases, facts.ct_list)


METERS_READINGS = Endpoint("meters_readings", "/ivp/meters/readings", 0, _readings, needs_cts=True)
CONSUMPTION_REPORT = Endpoint("consumption_report", "/ivp/meters/reports/consumption", 60, _reports,
                              stagger=5, needs_cts=True)
GRID_READING = Endpoint("grid_reading", "/ivp/meters/gridReading", 60, _grid, stagger=1, needs_cts=True)
