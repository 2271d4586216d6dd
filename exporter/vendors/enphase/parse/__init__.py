"""Pure parsers of the IQ Gateway (Envoy) local API: one function per endpoint, one module per
family of endpoints (`info`, `production`, `meters`, `inverters`, `batteries`; `common` holds
the checked accessors they share).

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
  README says so). The net-consumption CT appears both here and under the grid names above, so
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
  pair that agrees in power and lifetime energy is taken as this fault and the total-consumption
  figures are not exported (the net ones are right; with a total-consumption CT installed the
  real house consumption is `energy_meter_ct_active_power_watts{meter="total-consumption"}`).
  The same check applies to `/ivp/meters/reports`.
* CT entries of a meter that is not installed (`activeCount` 0 and a lifetime of 0) carry
  random power values; they give no series.
* Power factors above 1 in magnitude (seen on 8.3.5433) are physically impossible: dropped.
* Lifetime counters have been seen to step down; the parsers report what the gateway says and
  the core daemon holds counters back. A negative counter value is dropped.
"""

from .batteries import (BATTERY_TYPES, LIVEDATA_MAX_AGE, livedata_updated_at, parse_device_list,
                        parse_ensemble_inventory, parse_livedata)
from .common import PHASES
from .info import GatewayInfo, parse_info
from .inverters import parse_inverters
from .meters import (MeterConfig, gateway_phase_count, parse_grid_reading, parse_meter_readings, parse_meter_reports,
                     parse_meters)
from .production import (parse_api_v1_production, parse_pdm_energy, parse_production_html, parse_production_json,
                         parse_production_page)

__all__ = [
    "BATTERY_TYPES", "LIVEDATA_MAX_AGE", "PHASES", "GatewayInfo", "MeterConfig", "gateway_phase_count",
    "livedata_updated_at", "parse_api_v1_production", "parse_device_list", "parse_ensemble_inventory",
    "parse_grid_reading", "parse_info", "parse_inverters", "parse_livedata", "parse_meter_readings",
    "parse_meter_reports", "parse_meters", "parse_pdm_energy", "parse_production_html", "parse_production_json",
    "parse_production_page",
]
