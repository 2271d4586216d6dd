"""Pure parsers of the IQ Gateway (Envoy) local API: one function per endpoint, one module per
family of endpoints (`info`, `production`, `meters`, `ct_health`, `inverters`, `batteries`;
`common` holds the checked accessors they share). Figures that need several endpoints or several
polls are not here but in `derived.py`'s steps (`battery_site.py`, `lifetimes.py`).

Payload in (decoded JSON, or the raw text of the XML/HTML pages), `Reading` out; no I/O and no
clock. Malformed payloads raise `ParseError`; fields the gateway did not send give no series.

Which names carry what (the gateway measures several points, and some of its figures are sums
of others, so the names keep them apart):

* `energy_meter_production_*`: solar production of the whole system as the gateway reports it:
  the production CT ("eim") when one is installed, otherwise the microinverters' reports.
* `energy_meter_consumption_*`: house consumption ("total-consumption": grid import plus the
  solar energy used at home). It is production plus net consumption, hence its own name.
* The device-level names shared with the other vendors (`energy_meter_active_power_watts`,
  `..._energy_imported_joules_total`, `..._phase_voltage_volts`, ...) describe the grid
  connection point, i.e. the "net-consumption" CT: positive power = importing.
* `energy_meter_ct_*{meter="<role>"}`: the raw readings of each physical current transformer
  from `/ivp/meters/readings`, labelled by its role (`measurementType` in `/ivp/meters`:
  production, net-consumption, total-consumption, storage, ...). A gateway has one CT clamp per
  role and the roles are different measurement points, so no `meter` series is the sum of its
  siblings; still, adding series of different roles does not give anything meaningful (the
  manual says so). The net-consumption CT appears both here and under the grid names above, so
  that dashboards written for other meters work unchanged.
* `energy_meter_inverter_*{inverter="<serial>"}`: each microinverter's last report;
  `energy_meter_microinverters_*`: all of them together as the gateway adds them up (on a
  system with a production CT this differs from the production figures, which are the CT's).
* `energy_meter_battery_unit_*{battery="<serial>"}`: each IQ Battery (Encharge);
  `energy_meter_battery_state_of_charge_ratio` is the state of all of them (the gateway's own
  figure from the live data, else the capacity-weighted mean of the units),
  `energy_meter_battery_power_watts` the power out of them (storage CT, or the live data;
  positive = discharging), `energy_meter_battery_stored_energy_joules` what they hold.

Known firmware faults, and what the parsers do about them:

* Phases that do not exist are reported as channels full of zeros (split-phase and single-phase
  meters still send three channels), and some firmware fills them with noise or with a copy of
  another CT's phase instead. With the meter's `phaseCount` from `/ivp/meters`, channels beyond
  it give no series; without it, a channel whose every value is 0 gives no series.
* Firmware 8.3.5433 reports, in `/production.json`, a total-consumption entry that is a copy of
  the net-consumption entry. Both cannot be true while anything was ever produced, so an entry
  pair that agrees in power and lifetime energy is taken as this fault: the total-consumption
  entry is not exported, and with production from the production CT house consumption is
  derived as production + net consumption (the net figures are right). The same applies to
  `/ivp/meters/reports`.
* CT figures of a CT that `/ivp/meters` lists as disabled, or does not list, carry noise (and a
  lifetime that still counts): they give no series from any endpoint, and production comes from
  the microinverters. Without a CT list (older firmware), CT entries of a meter that is not
  installed (`activeCount` 0 and a lifetime of 0) give no series. Entries without
  `measurementType` (4.2.x) are known by their position.
* The top-level voltage of a CT of two or three phases is the sum of its phases' voltages: only
  single-phase CTs export it; the others give the per-phase voltages.
* A lifetime of 0 is a source that does not count: never exported. The microinverters' lifetime
  wraps at 2^32 J on 7.6.x firmware; the adapter adds the wraps back (`lifetimes.py`).
* Power factors above 1 in magnitude (seen on 8.3.5433) are physically impossible: dropped.
* Lifetime counters have been seen to step down; the parsers report what the gateway says and
  the core daemon holds counters back. A negative counter value is dropped.
"""

from .batteries import (
    BATTERY_TYPES,
    LIVEDATA_MAX_AGE,
    livedata_updated_at,
    parse_device_list,
    parse_ensemble_inventory,
    parse_livedata,
)
from .common import PHASES
from .info import GatewayInfo, parse_info
from .inverters import parse_inverters
from .meters import (
    CtList,
    CtRoles,
    MeterConfig,
    ct_roles,
    gateway_phase_count,
    parse_grid_reading,
    parse_meter_readings,
    parse_meter_reports,
    parse_meters,
)
from .production import (
    parse_api_v1_production,
    parse_pdm_energy,
    parse_production_html,
    parse_production_json,
    parse_production_page,
)

__all__ = [
    "BATTERY_TYPES", "LIVEDATA_MAX_AGE", "PHASES", "GatewayInfo", "CtList", "CtRoles", "MeterConfig", "ct_roles",
    "gateway_phase_count",
    "livedata_updated_at", "parse_api_v1_production", "parse_device_list", "parse_ensemble_inventory",
    "parse_grid_reading", "parse_info", "parse_inverters", "parse_livedata", "parse_meter_readings",
    "parse_meter_reports", "parse_meters", "parse_pdm_energy", "parse_production_html", "parse_production_json",
    "parse_production_page",
]
