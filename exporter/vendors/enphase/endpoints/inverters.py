"""The microinverters, one series each; they report every five minutes, so no more often."""

from __future__ import annotations

from typing import Any

from ....model.samples import Reading
from .. import parse
from .base import Endpoint, Facts


def _inverters(payload: Any, facts: Facts) -> Reading:
    return parse.parse_inverters(payload)


INVERTERS = Endpoint("inverters", "/api/v1/production/inverters", 300, _inverters, stagger=1)
