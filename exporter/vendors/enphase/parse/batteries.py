"""Batteries and the ensemble: `/ivp/livedata/status`, `/ivp/ensemble/inventory`,
`/ivp/ensemble/device_list`, `/ivp/ensemble/power`, `/ivp/ensemble/secctrl`, `/ivp/ensemble/status`,
and the AC Batteries' entry of `/production.json`."""

from __future__ import annotations

from typing import Any

from ....model import catalogue as M
from ....model.catalogue import JOULES_PER_WH
from ....model.jsontext import label_text
from ....model.samples import ParseError, Reading, checked_list, checked_object, number_or_none
from .common import MW_TO_W, int_or_none, opt_list, opt_obj, opt_str, serial_of, timestamp_of, unique_serial

# --- /ivp/livedata/status ------------------------------------------------------------------------------


LIVEDATA_MAX_AGE = 300.0  # older live figures are left over from when the stream was last on
_BATTERY_KEYS = ("soc", "enc_agg_soc", "acb_agg_soc", "enc_agg_energy", "acb_agg_energy")
# `connection` keys -> the `link` label
LINKS = {"mqtt_state": "mqtt", "prov_state": "provisioning", "auth_state": "auth", "sc_stream": "live_stream",
         "sc_debug": "debug_stream"}


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
    without a generator that cannot be told from an idle one.

    The status fields and each kind's figures: `parse_livedata_status`, `parse_livedata_groups`."""
    data = checked_object(payload, "/ivp/livedata/status")
    meters = fresh_meters(data, now)
    reading = Reading()
    if meters is None:
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


def fresh_meters(data: dict, now: float | None) -> dict | None:
    """The `meters` part of the live data, None when absent or (with `now`) too old."""
    meters = opt_obj(data, "meters", "/ivp/livedata/status")
    updated = livedata_updated_at(data)
    if meters is None or (now is not None and updated is not None and now - updated > LIVEDATA_MAX_AGE):
        return None
    return meters


def parse_livedata_groups(payload: Any, now: float | None = None) -> Reading:
    """`/ivp/livedata/status`, per kind of battery: IQ Batteries (`enc_agg_soc` %,
    `enc_agg_energy` Wh) and AC Batteries (`acb_agg_*`), for a kind that reports any (zeros are
    no battery); nothing from figures older than `LIVEDATA_MAX_AGE`."""
    meters = fresh_meters(checked_object(payload, "/ivp/livedata/status"), now)
    reading = Reading()
    if meters is None:
        return reading
    for group, prefix in (("encharge", "enc"), ("acb", "acb")):
        soc = percentage(meters.get(f"{prefix}_agg_soc"), f"meters.{prefix}_agg_soc")
        stored = number_or_none(meters.get(f"{prefix}_agg_energy"), f"meters.{prefix}_agg_energy")
        if stored is not None and stored < 0:
            raise ParseError(f"meters.{prefix}_agg_energy: stored energy {stored} is negative")
        if soc or stored:
            add_group(reading, group, soc=None if soc is None else soc / 100, stored_wh=stored)
    return reading


def parse_livedata_status(payload: Any, now: float | None = None) -> Reading:
    """`/ivp/livedata/status`: the gateway's links and relays.

    `connection` (current whatever the live stream does) gives `energy_meter_gateway_link_state`
    (1 for the state the gateway words; the seed shows "connected", "configured", "ok",
    "enabled"). `main_relay_state`, `gen_relay_state` and `backup_bat_mode` are integers the seed
    names ("State of the main relay") without listing their values. Its example has
    main_relay_state 0 (with zero grid power, which fits a closed relay at balance as well as an
    open one), other public examples 1; one third-party client reads 1 as closed and 2 as
    islanded without naming a source. So they are exported as raw codes, and nothing here
    claims which code means an open relay (the grid relay's documented words come from
    `/ivp/ensemble/status` and the System Controller). `backup_soc` (the seed:
    "State of the backup battery"; 10 while the batteries hold 100 in its example, so a
    setting, not a charge) is the backup reserve. The `meters` figures follow the live data's
    freshness (see `parse_livedata`)."""
    data = checked_object(payload, "/ivp/livedata/status")
    reading = Reading()
    connection = opt_obj(data, "connection", "/ivp/livedata/status") or {}
    for key, link in LINKS.items():
        state = opt_str(connection, key, "connection")
        if state is not None:
            reading.add(M.GATEWAY_LINK_STATE, 1, link=link, state=label_text(state.strip(), 32))
    meters = fresh_meters(data, now)
    if meters is None:
        return reading
    for key, relay in (("main_relay_state", "main"), ("gen_relay_state", "generator")):
        reading.add(M.RELAY_STATE_CODE, int_or_none(meters.get(key), f"meters.{key}"), relay=relay)
    reading.add(M.BATTERY_BACKUP_MODE_CODE, int_or_none(meters.get("backup_bat_mode"), "meters.backup_bat_mode"))
    reserve = percentage(meters.get("backup_soc"), "meters.backup_soc")
    reading.add(M.BATTERY_BACKUP_RESERVE, None if reserve is None else reserve / 100)
    return reading


# --- /ivp/ensemble/inventory, /ivp/ensemble/device_list -------------------------------------------------

BATTERY_TYPES = ("ENCHARGE", "ACB")
GROUPS = {"ENCHARGE": "encharge", "ACB": "acb"}  # the `group` label of each kind of battery
DEVICE_TYPE_BATTERY = 13
DEVICE_TYPES = {0: "unknown", 13: "storage", 14: "microinverter"}  # the seed's enumeration
HEALTHY = "envoy.global.ok"  # the device status of a unit without any condition
RELAY_STATES = ("closed", "open")


def add_relay_state(reading: Reading, state: str | None) -> None:
    """`mains_oper_state` as 1/0 series: 1 for the state reported, 0 for the other known one."""
    if state is None:
        return
    state = label_text(state.strip().lower(), 32)
    for known in dict.fromkeys((*RELAY_STATES, state)):
        reading.add(M.GRID_RELAY_STATE, 1 if known == state else 0, state=known)


def add_group(reading: Reading, group: str, *, soc: float | None = None, stored_wh: float | None = None,
              capacity_wh: float | None = None, power_w: float | None = None) -> None:
    """The figures of one kind of battery (soc as a ratio, energies in Wh)."""
    reading.add(M.BATTERY_GROUP_STATE_OF_CHARGE, soc, group=group)
    reading.add(M.BATTERY_GROUP_STORED_ENERGY, None if stored_wh is None else stored_wh * JOULES_PER_WH, group=group)
    reading.add(M.BATTERY_GROUP_CAPACITY, None if capacity_wh is None else capacity_wh * JOULES_PER_WH, group=group)
    reading.add(M.BATTERY_GROUP_POWER, power_w, group=group)


def percentage(value: Any, what: str) -> float | None:
    number = number_or_none(value, what)
    if number is not None and not 0 <= number <= 100:
        raise ParseError(f"{what}: {number} is not a percentage")
    return number


def parse_ensemble_inventory(payload: Any) -> Reading:
    """`GET /ivp/ensemble/inventory`: IQ Batteries (Encharge) and AC Batteries (ACB), per serial.

    `temperature` is in degrees Celsius for batteries (the Enpower/System Controller reports
    Fahrenheit and is not exported). The aggregate state of charge is the capacity-weighted mean,
    given only when every battery reports both figures. AC Batteries have no capacity field
    (their group's state of charge is the mean of the units: one model, one size), so a site
    with them gets its total from `battery_site` (which also prefers the live figures: the
    inventory's `percentFull` lags the batteries by hours on some firmware).

    Health: `communicating` as 1/0; a unit whose `device_status` lacks `envoy.global.ok` is
    faulted (the units of every capture list ["envoy.global.ok", "prop.done"])."""
    groups = checked_list(payload, "/ivp/ensemble/inventory")
    reading = Reading()
    seen: set[str] = set()
    weighted: list[tuple[float | None, float | None]] = []
    by_group: dict[str, list[tuple[float | None, float | None]]] = {}
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
            serial = unique_serial(device, "serial_num", what, seen, "battery")
            percent = percentage(device.get("percentFull"), f"{what}.percentFull")
            capacity = number_or_none(device.get("encharge_capacity"), f"{what}.encharge_capacity")
            if capacity is not None and capacity <= 0:
                capacity = None
            ratio = None if percent is None else percent / 100
            reading.add(M.BATTERY_UNIT_STATE_OF_CHARGE, ratio, battery=serial)
            reading.add(M.BATTERY_UNIT_TEMPERATURE, number_or_none(device.get("temperature"), f"{what}.temperature"), battery=serial)
            reading.add(M.BATTERY_UNIT_CAPACITY, None if capacity is None else capacity * JOULES_PER_WH, battery=serial)
            communicating = device.get("communicating")
            if isinstance(communicating, bool):
                reading.add(M.BATTERY_UNIT_COMMUNICATING, int(communicating), battery=serial)
            status = [s for s in opt_list(device, "device_status", what) if isinstance(s, str)]
            if status:
                reading.add(M.BATTERY_UNIT_FAULT, int(HEALTHY not in status), battery=serial)
            weighted.append((ratio, capacity))
            by_group.setdefault(GROUPS[kind], []).append((ratio, capacity))
    if weighted and all(r is not None and c is not None for r, c in weighted):
        total = sum(c for _, c in weighted)  # type: ignore[misc]
        reading.add(M.BATTERY_STATE_OF_CHARGE, sum(r * c for r, c in weighted) / total)  # type: ignore[operator]
    for name, units in by_group.items():
        ratios = [r for r, _ in units]
        if not units or any(r is None for r in ratios):
            continue
        capacities = [c for _, c in units]
        if all(c is not None for c in capacities):
            total = sum(capacities)  # type: ignore[arg-type]
            stored = sum(r * c for r, c in units)  # type: ignore[operator]
            add_group(reading, name, soc=stored / total, stored_wh=stored, capacity_wh=total)
        elif name == "acb":
            add_group(reading, name, soc=sum(ratios) / len(ratios))  # type: ignore[arg-type]
    return reading


def parse_enpower_relay(payload: Any) -> Reading:
    """`GET /ivp/ensemble/inventory`, its System Controller (type "ENPOWER"): the relay to the
    grid, `mains_oper_state` "closed" or "open" (captures 8.2.4286 and 8.3.5169 say "closed")."""
    reading = Reading()
    for gi, group in enumerate(checked_list(payload, "/ivp/ensemble/inventory")):
        group = checked_object(group, f"inventory[{gi}]")
        if opt_str(group, "type", f"inventory[{gi}]") != "ENPOWER":
            continue
        for di, device in enumerate(opt_list(group, "devices", f"inventory[{gi}]")):
            what = f"inventory[{gi}].devices[{di}]"
            add_relay_state(reading, opt_str(checked_object(device, what), "mains_oper_state", what))
            break  # one System Controller per site
    return reading


def parse_device_list(payload: Any) -> Reading:
    """`GET /ivp/ensemble/device_list`: provisioned devices; batteries (type 13) give their
    capacity (Wh). Every device gives 1/0 for `status` "Connected" (the seed shows "Connected"
    and "Unknown"), by serial and type (0 unknown, 13 storage, 14 microinverter)."""
    data = checked_object(payload, "/ivp/ensemble/device_list")
    reading = Reading()
    seen: set[str] = set()
    connected_seen: set[str] = set()
    for index, device in enumerate(opt_list(data, "devices", "/ivp/ensemble/device_list")):
        what = f"devices[{index}]"
        device = checked_object(device, what)
        device_type = int_or_none(device.get("device_type"), f"{what}.device_type")
        serial = serial_of(device.get("serial_number"), f"{what}.serial_number")
        status = opt_str(device, "status", what)
        if serial is not None and status is not None and serial not in connected_seen:
            connected_seen.add(serial)
            type_name = DEVICE_TYPES.get(device_type, str(device_type)) if device_type is not None else "unknown"
            reading.add(M.ENSEMBLE_DEVICE_CONNECTED, int(status.strip().lower() == "connected"),
                        device_id=serial, device_type=type_name)
        if device_type != DEVICE_TYPE_BATTERY:
            continue
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


# --- /ivp/ensemble/power, /ivp/ensemble/secctrl, /ivp/ensemble/status ----------------------------------


def parse_ensemble_power(payload: Any) -> Reading:
    """`GET /ivp/ensemble/power`: each IQ Battery (Encharge) now: `real_power_mw` (milliwatts)
    and `soc` (%). Not in the seed; the shape is the captures' (firmware 7.3 and 8.2), where the
    list's key is literally "devices:" (with the colon); "devices" is accepted as well.

    Sign: positive = discharging, as the open-source clients that read this endpoint take it
    (pyenphase); Enphase does not document it. The sum is the IQ Batteries' group power; AC
    Batteries are not listed here."""
    data = checked_object(payload, "/ivp/ensemble/power")
    key = "devices:" if "devices:" in data else "devices"
    reading = Reading()
    seen: set[str] = set()
    powers: list[float] = []
    for index, device in enumerate(opt_list(data, key, "/ivp/ensemble/power")):
        what = f"devices[{index}]"
        device = checked_object(device, what)
        serial = unique_serial(device, "serial_num", what, seen, "battery")
        milliwatts = number_or_none(device.get("real_power_mw"), f"{what}.real_power_mw")
        soc = percentage(device.get("soc"), f"{what}.soc")
        power = None if milliwatts is None else milliwatts * MW_TO_W
        reading.add(M.BATTERY_UNIT_POWER, power, battery=serial)
        reading.add(M.BATTERY_UNIT_STATE_OF_CHARGE, None if soc is None else soc / 100, battery=serial)
        if power is not None:
            powers.append(power)
    if seen and len(powers) == len(seen):
        add_group(reading, "encharge", power_w=sum(powers))
    return reading


def parse_ensemble_secctrl(payload: Any) -> Reading:
    """`GET /ivp/ensemble/secctrl`: the gateway's own battery aggregates, kept current (not in
    the seed; shape from the captures). IQ Batteries: `ENC_agg_soc` (%), `ENC_agg_avail_energy`
    (Wh stored), `Enc_max_available_capacity` (else `Enc_commissioned_capacity`, Wh); AC
    Batteries: `ACB_agg_soc`, `ACB_agg_energy`; all batteries: `agg_soc`, `Max_energy` (Wh).
    The AC Batteries' capacity is not given: it is `Max_energy` minus the IQ Batteries'.

    A kind of battery the site does not have reports zeros (capacity 0): no series for it, and
    none at all on a site without batteries (every figure 0)."""
    data = checked_object(payload, "/ivp/ensemble/secctrl")

    def wh(key: str) -> float | None:
        value = number_or_none(data.get(key), key)
        if value is not None and value < 0:
            raise ParseError(f"{key}: {value} is negative")
        return value

    reading = Reading()
    total = wh("Max_energy")
    if not total:
        return reading  # no batteries
    enc_capacity = wh("Enc_max_available_capacity") or wh("Enc_commissioned_capacity")
    enc_soc = percentage(data.get("ENC_agg_soc"), "ENC_agg_soc")
    if enc_capacity:
        add_group(reading, "encharge", soc=None if enc_soc is None else enc_soc / 100,
                  stored_wh=wh("ENC_agg_avail_energy"), capacity_wh=enc_capacity)
    acb_capacity = total - (enc_capacity or 0)
    acb_soc = percentage(data.get("ACB_agg_soc"), "ACB_agg_soc")
    acb_stored = wh("ACB_agg_energy")
    if acb_capacity > 0 and (acb_soc or acb_stored or not enc_capacity):
        add_group(reading, "acb", soc=None if acb_soc is None else acb_soc / 100, stored_wh=acb_stored,
                  capacity_wh=acb_capacity)
    soc = percentage(data.get("agg_soc"), "agg_soc")
    reading.add(M.BATTERY_STATE_OF_CHARGE, None if soc is None else soc / 100)
    reading.add(M.BATTERY_CAPACITY, total * JOULES_PER_WH)
    return reading


def parse_ensemble_status(payload: Any) -> Reading:
    """`GET /ivp/ensemble/status`: the grid relay (`relay.mains_oper_state`, "closed" or
    "open"). Its `secctrl` part is a copy that can lag `/ivp/ensemble/secctrl` by hours (seen on
    8.2.4382), so it is not read."""
    data = checked_object(payload, "/ivp/ensemble/status")
    reading = Reading()
    relay = opt_obj(data, "relay", "/ivp/ensemble/status")
    if relay is not None:
        add_relay_state(reading, opt_str(relay, "mains_oper_state", "relay"))
    return reading


# --- /production.json: the AC Batteries' entry ------------------------------------------------------

ACB_STALE_AFTER = 900.0  # an AC Battery reports every few minutes; older entries are left over


def parse_acb_storage(payload: Any) -> Reading:
    """The `storage` entries of type "acb" in `/production.json`: all AC Batteries together.

    `wNow` (W, positive = discharging, as `state` "discharging" says), `whNow` (Wh stored),
    `percentFull` (%). An entry whose `activeCount` is 0 describes no battery (every gateway
    without AC Batteries sends one). Its `readingTime` can be far older than the rest of the
    file (41 hours on 8.2.4382, while the other entries were minutes old): the entry then
    still says what the batteries last reported, so the stored energy and state of charge
    stand, but its power is not a power of now and gives no series."""
    data = checked_object(payload, "/production.json")
    entries = [checked_object(e, f"storage[{i}]") for i, e in enumerate(opt_list(data, "storage", "/production.json"))]
    newest = 0.0
    for section in ("production", "consumption"):
        for index, entry in enumerate(opt_list(data, section, "/production.json")):
            entry = checked_object(entry, f"{section}[{index}]")
            newest = max(newest, timestamp_of(entry.get("readingTime"), f"{section}[{index}].readingTime") or 0.0)
    reading = Reading()
    for index, entry in enumerate(entries):
        what = f"storage[{index}]"
        if opt_str(entry, "type", what) != "acb":
            continue
        active = int_or_none(entry.get("activeCount"), f"{what}.activeCount")
        if not active:
            continue
        at = timestamp_of(entry.get("readingTime"), f"{what}.readingTime")
        fresh = at is not None and (not newest or newest - at <= ACB_STALE_AFTER)
        percent = percentage(entry.get("percentFull"), f"{what}.percentFull")
        stored = number_or_none(entry.get("whNow"), f"{what}.whNow")
        if stored is not None and stored < 0:
            raise ParseError(f"{what}.whNow: {stored} is negative")
        power = number_or_none(entry.get("wNow"), f"{what}.wNow") if fresh else None
        add_group(reading, "acb", soc=None if percent is None else percent / 100, stored_wh=stored, power_w=power)
        break  # one entry for all AC Batteries
    return reading
