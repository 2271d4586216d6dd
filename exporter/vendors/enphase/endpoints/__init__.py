"""The gateway's endpoints, in order of precedence.

Where several endpoints give the same quantity, the first endpoint of `ENDPOINTS` that gives
any series of a metric provides all of that metric's series, so one name never mixes two
sources (docs/vendors/enphase.md lists which endpoint wins for what). CT readings (every poll) beat the
minute-by-minute system figures; the gateway's own battery figures (live data, then secctrl)
beat the ones computed from the units (inventory). Figures that combine several endpoints (the
site's batteries, the microinverters of two lists) are made after the merge (`derived`). The staggers spread the first reads over the first polls,
so no poll reads everything at once.
"""

from __future__ import annotations

from .base import Endpoint, Facts, has_cts
from .batteries import (CT_HEALTH, DEVICE_LIST, ENSEMBLE_POWER, ENSEMBLE_SECCTRL, ENSEMBLE_STATUS, INVENTORY, LIVEDATA,
                        PDM_ENERGY, with_acb_storage)
from .inverters import INVERTERS, PDM_DEVICE_DATA
from .meters import CONSUMPTION_REPORT, GRID_READING, METERS_READINGS
from .production import API_V1_PRODUCTION, PRODUCTION_JSON, PRODUCTION_PAGE

ENDPOINTS: tuple[Endpoint, ...] = (
    METERS_READINGS,
    with_acb_storage(PRODUCTION_JSON),  # its AC Battery entry as well
    API_V1_PRODUCTION,
    PRODUCTION_PAGE,
    LIVEDATA,
    ENSEMBLE_SECCTRL,
    ENSEMBLE_POWER,
    PDM_ENERGY,
    CONSUMPTION_REPORT,
    GRID_READING,
    INVERTERS,
    PDM_DEVICE_DATA,
    INVENTORY,
    DEVICE_LIST,
    ENSEMBLE_STATUS,
    CT_HEALTH,
)
ENDPOINT_NAMES = tuple(e.name for e in ENDPOINTS)

__all__ = ["ENDPOINTS", "ENDPOINT_NAMES", "Endpoint", "Facts", "has_cts"]
