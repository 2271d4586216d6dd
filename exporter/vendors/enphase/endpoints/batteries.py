"""Batteries and the ensemble: the gateway's live data (its own battery figures), the units'
inventory, the device list, the batteries' live power and aggregates (ensemble power, secctrl),
the AC Batteries' entry of /production.json, and the power distribution module's energy
counters; and the site's health: the grid relay (ensemble status) and the CTs' status (the CT
list, read more often than the adapter refreshes it for its configuration)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ....model.samples import Reading
from .. import parse
from ..parse.batteries import (parse_acb_storage, parse_enpower_relay, parse_ensemble_power, parse_ensemble_secctrl,
                               parse_ensemble_status, parse_livedata_groups, parse_livedata_status)
from ..parse.ct_health import parse_ct_health
from ..utc import iso
from .base import Endpoint, Facts

STALE_LIVEDATA = ("the gateway's live data stream is off, so /ivp/livedata/status holds old figures; "
                  "they are not exported (the Enphase app turns the stream on while its live view is open)")


def _livedata(payload: Any, facts: Facts) -> Reading:
    reading = parse.parse_livedata(payload, facts.now)
    updated = parse.livedata_updated_at(payload)
    if not reading.samples and updated and facts.now - updated > parse.LIVEDATA_MAX_AGE:
        facts.tell_once("livedata_stale", STALE_LIVEDATA, updated=iso(updated))
    reading.samples.extend(parse_livedata_groups(payload, facts.now).samples)
    reading.samples.extend(parse_livedata_status(payload, facts.now).samples)
    return reading


def _pdm_energy(payload: Any, facts: Facts) -> Reading:
    return parse.parse_pdm_energy(payload, facts.ct_list)


def _inventory(payload: Any, facts: Facts) -> Reading:
    reading = parse.parse_ensemble_inventory(payload)
    reading.samples.extend(parse_enpower_relay(payload).samples)
    return reading


def _device_list(payload: Any, facts: Facts) -> Reading:
    return parse.parse_device_list(payload)


LIVEDATA = Endpoint("livedata", "/ivp/livedata/status", 60, _livedata, stagger=3)
PDM_ENERGY = Endpoint("pdm_energy", "/ivp/pdm/energy", 60, _pdm_energy, stagger=4)
INVENTORY = Endpoint("inventory", "/ivp/ensemble/inventory", 60, _inventory, stagger=2)
DEVICE_LIST = Endpoint("device_list", "/ivp/ensemble/device_list", 60, _device_list, stagger=6)


def with_acb_storage(endpoint: Endpoint) -> Endpoint:
    """`endpoint` (/production.json) also giving its AC Battery entry: one request for both."""
    read = endpoint.read

    def both(payload: Any, facts: Facts) -> Reading:
        reading = read(payload, facts)
        reading.samples.extend(parse_acb_storage(payload).samples)
        return reading

    return replace(endpoint, read=both)


def _ensemble_power(payload: Any, facts: Facts) -> Reading:
    return parse_ensemble_power(payload)


def _secctrl(payload: Any, facts: Facts) -> Reading:
    return parse_ensemble_secctrl(payload)


def _ensemble_status(payload: Any, facts: Facts) -> Reading:
    return parse_ensemble_status(payload)


def _ct_health(payload: Any, facts: Facts) -> Reading:
    return parse_ct_health(payload)


ENSEMBLE_POWER = Endpoint("ensemble_power", "/ivp/ensemble/power", 60, _ensemble_power, stagger=3)
ENSEMBLE_SECCTRL = Endpoint("ensemble_secctrl", "/ivp/ensemble/secctrl", 60, _secctrl, stagger=4)
ENSEMBLE_STATUS = Endpoint("ensemble_status", "/ivp/ensemble/status", 60, _ensemble_status, stagger=5)
# CT faults are judged by the gateway over minutes; five minutes between reads is soon enough.
CT_HEALTH = Endpoint("ct_health", "/ivp/meters", 300, _ct_health, stagger=9, needs_cts=True)
