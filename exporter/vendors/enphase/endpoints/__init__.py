"""The gateway's endpoints, in order of precedence.

Where several endpoints give the same quantity, the first endpoint of `ENDPOINTS` that gives
any series of a metric provides all of that metric's series, so one name never mixes two
sources (the README lists which endpoint wins for what). CT readings (every poll) beat the
minute-by-minute system figures; the gateway's own battery figures (live data) beat the ones
computed from the units (inventory). The staggers spread the first reads over the first polls,
so no poll reads everything at once.
"""

from __future__ import annotations

from .base import Endpoint, Facts, has_cts
from .batteries import DEVICE_LIST, INVENTORY, LIVEDATA, PDM_ENERGY
from .inverters import INVERTERS
from .meters import CONSUMPTION_REPORT, GRID_READING, METERS_READINGS
from .production import API_V1_PRODUCTION, PRODUCTION_JSON, PRODUCTION_PAGE

ENDPOINTS: tuple[Endpoint, ...] = (
    METERS_READINGS,
    PRODUCTION_JSON,
    API_V1_PRODUCTION,
    PRODUCTION_PAGE,
    LIVEDATA,
    PDM_ENERGY,
    CONSUMPTION_REPORT,
    GRID_READING,
    INVERTERS,
    INVENTORY,
    DEVICE_LIST,
)
ENDPOINT_NAMES = tuple(e.name for e in ENDPOINTS)

__all__ = ["ENDPOINTS", "ENDPOINT_NAMES", "Endpoint", "Facts", "has_cts"]
