"""The microinverters, one series each; they report every five minutes, so no more often.
`/api/v1/production/inverters` lists them; `/ivp/pdm/device_data` (8.3 and later) lists the
first 50, and fills in any that the former lacks or all of them where it is missing."""

from __future__ import annotations

from typing import Any, Mapping

from ....model import catalogue as M
from ....model.samples import Reading
from .. import parse
from ..battery_site import union_series
from ..parse.inverters import parse_pdm_device_data, pdm_device_counts
from .base import Endpoint, Facts

INVERTER_METRICS = (M.INVERTER_POWER, M.INVERTER_MAX_POWER, M.INVERTER_LAST_REPORT)


def _inverters(payload: Any, facts: Facts) -> Reading:
    return parse.parse_inverters(payload)


INVERTERS = Endpoint("inverters", "/api/v1/production/inverters", 300, _inverters, stagger=1)


def _device_data(payload: Any, facts: Facts) -> Reading:
    reading = parse_pdm_device_data(payload)
    count, limit = pdm_device_counts(payload)
    listed = len({s.labels for s in reading.samples if s.metric is M.INVERTER_LAST_REPORT})
    if count is not None and limit is not None and count >= limit:
        facts.tell_once("device_data_limit", "/ivp/pdm/device_data lists only the first devices; the others "
                        "come from /api/v1/production/inverters when the gateway has it",
                        devices=count, listed=listed, limit=limit)
    return reading


PDM_DEVICE_DATA = Endpoint("pdm_device_data", "/ivp/pdm/device_data", 300, _device_data, stagger=2)


class InvertersFromEveryList:
    """Derived step: each microinverter's series from the first list that has it
    (`/api/v1/production/inverters`, then `/ivp/pdm/device_data`)."""

    def __call__(self, merged: Reading, latest: Mapping[str, Reading]) -> None:
        union_series(merged, latest, INVERTER_METRICS, (INVERTERS.name, PDM_DEVICE_DATA.name))
