"""The system's production (and, with CTs, consumption) figures, from whichever of three
endpoints the firmware has: /production.json (most), /api/v1/production (older firmware where
the former is missing), the HTML page /production (the oldest)."""

from __future__ import annotations

from typing import Any

from ....model.samples import Reading
from .. import parse
from .base import Endpoint, Facts


def _production_json(payload: Any, facts: Facts) -> Reading:
    return parse.parse_production_json(payload, facts.phases, facts.ct_list)


def _api_v1(payload: Any, facts: Facts) -> Reading:
    return parse.parse_api_v1_production(payload)


def _page(body: bytes, facts: Facts) -> Reading:
    return parse.parse_production_page(body, facts.phases, facts.ct_list)


PRODUCTION_JSON = Endpoint("production_json", "/production.json?details=1", 60, _production_json)
API_V1_PRODUCTION = Endpoint("api_v1_production", "/api/v1/production", 60, _api_v1,
                             fallback_of=("production_json",))
PRODUCTION_PAGE = Endpoint("production_page", "/production", 60, _page,
                           fallback_of=("production_json", "api_v1_production"), html=True)
