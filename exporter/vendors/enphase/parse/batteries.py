"""Batteries and the ensemble: `/ivp/livedata/status`, `/ivp/ensemble/inventory`,
`/ivp/ensemble/device_list`."""

from __future__ import annotations

from typing import Any

from ....model import catalogue as M
from ....model.catalogue import JOULES_PER_WH
from ....model.samples import ParseError, Reading, checked_list, checked_object, number_or_none
from .common import MW_TO_W, int_or_none, opt_list, opt_obj, opt_str, serial_of, timestamp_of

# --- /ivp/livedata/status ------------------------------------------------------------------------------


LIVEDATA_MAX_AGE = 300.0  # older live figures are left over from when the stream was last on
_BATTERY_KEYS = ("soc", "enc_agg_soc", "acb_agg_soc", "enc_agg_energy", "acb_agg_energy")


def livedata_updated_at(payload: Any) -> float | None:
    """When the gateway last refreshed the figures of `/ivp/livedata/status` (Unix time)."""
    meters = opt_obj(checked_object(payload, "/ivp/livedata/status"), "meters", "/ivp/livedata/status")
    if meters is None:
        return None
    value = meters.get("last_update", meters.get("timestamp"))
    return timestamp_of(value, "meters.last_update")


def parse_livedata(payload: Any, now: float | None = None) -> Reading:
    """`GET /ivp/livedata/status`: the gateway's live view, powers in milliwatts.

    The gateway refreshes these figures only while its live stream is on (the Enphase app turns
    it on while its live view is open, for a few minutes); otherwise they are frozen at the
    time in `last_update`. With `now`, figures older than `LIVEDATA_MAX_AGE` give no series.

    Exported: storage -> battery power (positive = discharging), the batteries' state of charge
    and stored energy (Wh), only when the gateway reports any battery (a non-zero state of
    charge or stored energy): a system without batteries reports zeros there, which are not a
    battery. Not exported: pv, load and grid repeat what the CTs measure (read every poll from
    `/ivp/meters/readings`, and `/production.json`), and a gateway without CTs reports zeros
    there that are not measurements; the generator section likewise holds zeros on systems
    without a generator that cannot be told from an idle one."""
    data = checked_object(payload, "/ivp/livedata/status")
    meters = opt_obj(data, "meters", "/ivp/livedata/status")
    reading = Reading()
    if meters is None:
        return reading
    updated = livedata_updated_at(data)
    if now is not None and updated is not None and now - updated > LIVEDATA_MAX_AGE:
        return reading

    def milliwatts(section: str) -> float | None:
        group = opt_obj(meters, section, "meters")
        if group is None:
            return None
        value = number_or_none(group.get("agg_p_mw"), f"meters.{section}.agg_p_mw")
        return None if value is None else value * MW_TO_W

    for section in ("pv", "load", "grid", "generator"):
        milliwatts(section)  # shape check only (see above)
    battery = {k: number_or_none(meters.get(k), f"meters.{k}") for k in _BATTERY_KEYS}
    for key in ("soc", "enc_agg_soc", "acb_agg_soc"):
        value = battery[key]
        if value is not None and not 0 <= value <= 100:
            raise ParseError(f"meters.{key}: {value} is not a percentage")
    for key in ("enc_agg_energy", "acb_agg_energy"):
        value = battery[key]
        if value is not None and value < 0:
            raise ParseError(f"meters.{key}: stored energy {value} is negative")
    if any(battery.values()):
        soc = battery["soc"] if battery["soc"] is not None else battery["enc_agg_soc"]
        reading.add(M.BATTERY_STATE_OF_CHARGE, None if soc is None else soc / 100)
        stored = [v for v in (battery["enc_agg_energy"], battery["acb_agg_energy"]) if v is not None]
        reading.add(M.BATTERY_STORED_ENERGY, sum(stored) * JOULES_PER_WH if stored else None)
        reading.add(M.BATTERY_POWER, milliwatts("storage"))
    return reading


# --- /ivp/ensemble/inventory, /ivp/ensemble/device_list -------------------------------------------------

BATTERY_TYPES = ("ENCHARGE", "ACB")
DEVICE_TYPE_BATTERY = 13


def parse_ensemble_inventory(payload: Any) -> Reading:
    """`GET /ivp/ensemble/inventory`: IQ Batteries (Encharge) and AC Batteries, per serial.

    `temperature` is in degrees Celsius for batteries (the Enpower/System Controller reports
    Fahrenheit and is not exported). The aggregate state of charge is the capacity-weighted mean,
    given only when every battery reports both figures."""
    groups = checked_list(payload, "/ivp/ensemble/inventory")
    reading = Reading()
    seen: set[str] = set()
    weighted: list[tuple[float | None, float | None]] = []
    for gi, group in enumerate(groups):
        gw = f"inventory[{gi}]"
        group = checked_object(group, gw)
        kind = opt_str(group, "type", gw)
        devices = opt_list(group, "devices", gw)
        if kind not in BATTERY_TYPES:
            continue
        for di, device in enumerate(devices):
            what = f"{gw}.devices[{di}]"
            device = checked_object(device, what)
            serial = serial_of(device.get("serial_num"), f"{what}.serial_num")
            if serial is None:
                raise ParseError(f"{what}: no serial_num")
            if serial in seen:
                raise ParseError(f"{what}: battery {serial} listed twice")
            seen.add(serial)
            percent = number_or_none(device.get("percentFull"), f"{what}.percentFull")
            if percent is not None and not 0 <= percent <= 100:
                raise ParseError(f"{what}.percentFull: {percent} is not a percentage")
            capacity = number_or_none(device.get("encharge_capacity"), f"{what}.encharge_capacity")
            if capacity is not None and capacity <= 0:
                capacity = None
            ratio = None if percent is None else percent / 100
            reading.add(M.BATTERY_UNIT_STATE_OF_CHARGE, ratio, battery=serial)
            reading.add(M.BATTERY_UNIT_TEMPERATURE, number_or_none(device.get("temperature"), f"{what}.temperature"), battery=serial)
            reading.add(M.BATTERY_UNIT_CAPACITY, None if capacity is None else capacity * JOULES_PER_WH, battery=serial)
            weighted.append((ratio, capacity))
    if weighted and all(r is not None and c is not None for r, c in weighted):
        total = sum(c for _, c in weighted)  # type: ignore[misc]
        reading.add(M.BATTERY_STATE_OF_CHARGE, sum(r * c for r, c in weighted) / total)  # type: ignore[operator]
    return reading


def parse_device_list(payload: Any) -> Reading:
    """`GET /ivp/ensemble/device_list`: provisioned devices; batteries (type 13) give their
    capacity (Wh)."""
    data = checked_object(payload, "/ivp/ensemble/device_list")
    reading = Reading()
    seen: set[str] = set()
    for index, device in enumerate(opt_list(data, "devices", "/ivp/ensemble/device_list")):
        what = f"devices[{index}]"
        device = checked_object(device, what)
        if int_or_none(device.get("device_type"), f"{what}.device_type") != DEVICE_TYPE_BATTERY:
            continue
        serial = serial_of(device.get("serial_number"), f"{what}.serial_number")
        if serial is None:
            raise ParseError(f"{what}: no serial_number")
        if serial in seen:
            raise ParseError(f"{what}: battery {serial} listed twice")
        seen.add(serial)
        info = opt_obj(device, "dev_info", what) or {}
        capacity = number_or_none(info.get("capacity"), f"{what}.dev_info.capacity")
        if capacity is not None and capacity > 0:
            reading.add(M.BATTERY_UNIT_CAPACITY, capacity * JOULES_PER_WH, battery=serial)
    return reading
