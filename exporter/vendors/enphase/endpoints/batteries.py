"""Batteries and the ensemble: the gateway's live data (its own battery figures), the units'
inventory, the device list, and the power distribution module's energy counters."""

from __future__ import annotations

from typing import Any

from ....model.samples import Reading
from .. import parse
from ..utc import iso
from .base import Endpoint, Facts

STALE_LIVEDATA = ("the gateway's live data stream is off, so /ivp/livedata/status holds old figures; "
                  "they are not exported (the Enphase app turns the stream on while its live view is open)")


def _livedata(payload: Any, facts: Facts) -> Reading:
    reading = parse.parse_livedata(payload, facts.now)
    updated = parse.livedata_updated_at(payload)
    if not reading.samples and updated:
        facts.tell_once("livedata_stale", STALE_LIVEDATA, updated=iso(updated))
    return reading


def _pdm_energy(payload: Any, facts: Facts) -> Reading:
    return parse.parse_pdm_energy(payload)


def _inventory(payload: Any, facts: Facts) -> Reading:
    return parse.parse_ensemble_inventory(payload)


def _device_list(payload: Any, facts: Facts) -> Reading:
    return parse.parse_device_list(payload)


LIVEDATA = Endpoint("livedata", "/ivp/livedata/status", 60, _livedata, stagger=3)
PDM_ENERGY = Endpoint("pdm_energy", "/ivp/pdm/energy", 60, _pdm_energy, stagger=4)
INVENTORY = Endpoint("inventory", "/ivp/ensemble/inventory", 60, _inventory, stagger=2)
DEVICE_LIST = Endpoint("device_list", "/ivp/ensemble/device_list", 60, _device_list, stagger=6)
