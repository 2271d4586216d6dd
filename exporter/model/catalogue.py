"""The normalized metric catalogue: every device series the exporter can produce.

This is the one place metric names, types, units, labels and OBIS codes are defined. Parsers
refer to these objects, never to bare strings, and the metrics reference (docs/metrics.md) is checked
against this module by the tests (`tests/test_catalogue.py`).

Conventions (Prometheus naming guide): base units in the name, energy as a counter in joules,
`phase` = l1/l2/l3 on per-phase series only, device totals and per-phase values under different
names so that `sum()` never double counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

# Labels every device series carries; `Metric.labels` lists only the extra ones.
BASE_LABELS = ("vendor", "device")

HOMEWIZARD = "homewizard"
IAMMETER = "iammeter"
IOMETER = "iometer"
ENPHASE = "enphase"


@dataclass(frozen=True, eq=False)  # one object per metric: identity is equality
class Metric:
    name: str
    type: Literal["gauge", "counter"]  # the metric type, as in `# TYPE`
    unit: str  # base unit as written in docs/metrics.md; "" when dimensionless
    help: str
    labels: tuple[str, ...] = ()
    # OBIS code of the series: one code, or codes keyed by the value of `obis_by`.
    obis: str | Mapping[str, str] | None = None
    obis_by: str | None = None
    vendors: tuple[str, ...] = ()
    # Labels the exporter adds in front of `labels` (target-less self metrics have none).
    base_labels: tuple[str, ...] = BASE_LABELS

    def obis_for(self, labels: Mapping[str, str]) -> str | None:
        if self.obis is None or isinstance(self.obis, str):
            return self.obis
        return self.obis.get(labels.get(self.obis_by or "", ""))

    @property
    def om_name(self) -> str:
        """Family name in OpenMetrics: counters drop their `_total` suffix."""
        return self.name[: -len("_total")] if self.type == "counter" else self.name


def _phases(a: int, b: int, c: int, suffix: str = "7.0") -> dict[str, str]:
    return {f"l{i}": f"1-0:{n}.{suffix}" for i, n in ((1, a), (2, b), (3, c))}


def _tariffs(channel: int) -> dict[str, str]:
    return {str(t): f"1-0:{channel}.8.{t}" for t in range(1, 5)}


ALL_METER_VENDORS = (HOMEWIZARD, IAMMETER, IOMETER, ENPHASE)

# --- Device totals -------------------------------------------------------------------------
ACTIVE_POWER = Metric(
    "energy_meter_active_power_watts", "gauge", "W",
    "Active power of the whole meter; positive when importing from the grid, negative when exporting.",
    obis="1-0:16.7.0", vendors=ALL_METER_VENDORS)
APPARENT_POWER = Metric(
    "energy_meter_apparent_power_volt_amperes", "gauge", "VA",
    "Apparent power of the whole meter.", vendors=(HOMEWIZARD, ENPHASE))
REACTIVE_POWER = Metric(
    "energy_meter_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Reactive power of the whole meter; positive when inductive.", vendors=(HOMEWIZARD, IAMMETER, ENPHASE))
CURRENT = Metric(
    "energy_meter_current_amperes", "gauge", "A",
    "Current of the whole meter as the device reports it (HomeWizard: sum of absolute phase currents).",
    vendors=(HOMEWIZARD, ENPHASE))
APPARENT_CURRENT = Metric(
    "energy_meter_apparent_current_amperes", "gauge", "A",
    "Apparent current of the whole meter.", vendors=(HOMEWIZARD,))
REACTIVE_CURRENT = Metric(
    "energy_meter_reactive_current_amperes", "gauge", "A",
    "Reactive current of the whole meter.", vendors=(HOMEWIZARD,))
POWER_FACTOR = Metric(
    "energy_meter_power_factor_ratio", "gauge", "",
    "Power factor of the whole meter (0..1).", obis="1-0:13.7.0",
    vendors=(HOMEWIZARD, IAMMETER, IOMETER, ENPHASE))
FREQUENCY = Metric(
    "energy_meter_frequency_hertz", "gauge", "Hz",
    "Line frequency.", obis="1-0:14.7.0", vendors=ALL_METER_VENDORS)
ENERGY_IMPORTED = Metric(
    "energy_meter_energy_imported_joules_total", "counter", "J",
    "Active energy imported from the grid, all tariffs (1 kWh = 3.6e6 J).",
    obis="1-0:1.8.0", vendors=ALL_METER_VENDORS)
ENERGY_EXPORTED = Metric(
    "energy_meter_energy_exported_joules_total", "counter", "J",
    "Active energy exported to the grid, all tariffs (1 kWh = 3.6e6 J).",
    obis="1-0:2.8.0", vendors=ALL_METER_VENDORS)
TARIFF_ENERGY_IMPORTED = Metric(
    "energy_meter_tariff_energy_imported_joules_total", "counter", "J",
    "Active energy imported in one tariff register; the tariffs add up to the total.",
    labels=("tariff",), obis=_tariffs(1), obis_by="tariff", vendors=(HOMEWIZARD, IOMETER))
TARIFF_ENERGY_EXPORTED = Metric(
    "energy_meter_tariff_energy_exported_joules_total", "counter", "J",
    "Active energy exported in one tariff register; the tariffs add up to the total.",
    labels=("tariff",), obis=_tariffs(2), obis_by="tariff", vendors=(HOMEWIZARD, IOMETER))
ACTIVE_TARIFF = Metric(
    "energy_meter_active_tariff", "gauge", "",
    "Tariff register the meter counts in now (1..4).", obis="0-0:96.14.0", vendors=(HOMEWIZARD, IOMETER))
POWER_FAILURES = Metric(
    "energy_meter_power_failures_total", "counter", "",
    "Power failures in any phase, as counted by the meter.", obis="0-0:96.7.21", vendors=(HOMEWIZARD, IOMETER))
LONG_POWER_FAILURES = Metric(
    "energy_meter_long_power_failures_total", "counter", "",
    "Long power failures in any phase, as counted by the meter.", obis="0-0:96.7.9",
    vendors=(HOMEWIZARD, IOMETER))
AVERAGE_DEMAND = Metric(
    "energy_meter_average_demand_watts", "gauge", "W",
    "Average import demand of the running quarter hour (capacity tariffs).", obis="1-0:1.4.0",
    vendors=(HOMEWIZARD, IOMETER))
MONTHLY_PEAK_DEMAND = Metric(
    "energy_meter_monthly_peak_demand_watts", "gauge", "W",
    "Highest quarter-hour average demand of this month (capacity tariffs).", obis="1-0:1.6.0",
    vendors=(HOMEWIZARD, IOMETER))
MONTHLY_PEAK_DEMAND_TIME = Metric(
    "energy_meter_monthly_peak_demand_timestamp_seconds", "gauge", "s",
    "When this month's peak demand was registered (Unix time).", vendors=(HOMEWIZARD,))
MEASUREMENT_TIME = Metric(
    "energy_meter_measurement_timestamp_seconds", "gauge", "s",
    "When the device says it took the reading it exported (Unix time).",
    vendors=(HOMEWIZARD, IOMETER, ENPHASE))

# --- Per phase ------------------------------------------------------------------------------
PHASE_ACTIVE_POWER = Metric(
    "energy_meter_phase_active_power_watts", "gauge", "W",
    "Active power of one phase; negative when exporting.", labels=("phase",),
    obis=_phases(36, 56, 76), obis_by="phase", vendors=ALL_METER_VENDORS)
PHASE_APPARENT_POWER = Metric(
    "energy_meter_phase_apparent_power_volt_amperes", "gauge", "VA",
    "Apparent power of one phase.", labels=("phase",), vendors=(HOMEWIZARD, ENPHASE))
PHASE_REACTIVE_POWER = Metric(
    "energy_meter_phase_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Reactive power of one phase; positive when inductive.", labels=("phase",),
    vendors=(HOMEWIZARD, IAMMETER, ENPHASE))
PHASE_VOLTAGE = Metric(
    "energy_meter_phase_voltage_volts", "gauge", "V",
    "RMS voltage of one phase (a single-phase device reports phase l1).", labels=("phase",),
    obis=_phases(32, 52, 72), obis_by="phase", vendors=ALL_METER_VENDORS)
PHASE_CURRENT = Metric(
    "energy_meter_phase_current_amperes", "gauge", "A",
    "RMS current of one phase (HomeWizard signs it negative when exporting).", labels=("phase",),
    obis=_phases(31, 51, 71), obis_by="phase", vendors=ALL_METER_VENDORS)
PHASE_APPARENT_CURRENT = Metric(
    "energy_meter_phase_apparent_current_amperes", "gauge", "A",
    "Apparent current of one phase.", labels=("phase",), vendors=(HOMEWIZARD,))
PHASE_REACTIVE_CURRENT = Metric(
    "energy_meter_phase_reactive_current_amperes", "gauge", "A",
    "Reactive current of one phase.", labels=("phase",), vendors=(HOMEWIZARD,))
PHASE_POWER_FACTOR = Metric(
    "energy_meter_phase_power_factor_ratio", "gauge", "",
    "Power factor of one phase (0..1).", labels=("phase",), obis=_phases(33, 53, 73),
    obis_by="phase", vendors=(HOMEWIZARD, IAMMETER, IOMETER, ENPHASE))
PHASE_VOLTAGE_SAGS = Metric(
    "energy_meter_phase_voltage_sags_total", "counter", "",
    "Voltage sags of one phase, as counted by the meter.", labels=("phase",),
    obis=_phases(32, 52, 72, "32.0"), obis_by="phase", vendors=(HOMEWIZARD, IOMETER))
PHASE_VOLTAGE_SWELLS = Metric(
    "energy_meter_phase_voltage_swells_total", "counter", "",
    "Voltage swells of one phase, as counted by the meter.", labels=("phase",),
    obis=_phases(32, 52, 72, "36.0"), obis_by="phase", vendors=(HOMEWIZARD, IOMETER))

# --- Other utilities behind the meter ---------------------------------------------------------
GAS = Metric(
    "energy_meter_gas_cubic_meters_total", "counter", "m3",
    "Gas delivered, read from a gas meter on the smart meter's M-Bus (or the device itself).",
    labels=("meter",), obis="0-1:24.2.1", vendors=(HOMEWIZARD,))
WATER = Metric(
    "energy_meter_water_cubic_meters_total", "counter", "m3",
    "Water delivered, from a water meter (on the smart meter's M-Bus, or the device itself).",
    labels=("meter",), vendors=(HOMEWIZARD,))
WARM_WATER = Metric(
    "energy_meter_warm_water_cubic_meters_total", "counter", "m3",
    "Warm water delivered, from a warm water meter on the smart meter's M-Bus.",
    labels=("meter",), vendors=(HOMEWIZARD,))
HEAT = Metric(
    "energy_meter_heat_joules_total", "counter", "J",
    "Heat delivered (district heating), from a heat meter on the smart meter's M-Bus.",
    labels=("meter", "kind"), vendors=(HOMEWIZARD,))
EXTERNAL_READING = Metric(
    "energy_meter_external_meter_reading", "gauge", "",
    "Reading of an external meter of a type or unit the exporter does not know, as the device sent it.",
    labels=("meter", "type", "unit"), vendors=(HOMEWIZARD,))
EXTERNAL_MEASUREMENT_TIME = Metric(
    "energy_meter_external_measurement_timestamp_seconds", "gauge", "s",
    "When an external meter last sent its reading (Unix time).", labels=("meter",),
    vendors=(HOMEWIZARD,))
WATER_FLOW = Metric(
    "energy_meter_water_flow_cubic_meters_per_second", "gauge", "m3/s",
    "Water flow through the water meter now.", vendors=(HOMEWIZARD,))

# --- Batteries -------------------------------------------------------------------------------
BATTERY_STATE_OF_CHARGE = Metric(
    "energy_meter_battery_state_of_charge_ratio", "gauge", "",
    "State of charge of a battery (0..1).", vendors=(HOMEWIZARD, ENPHASE))
BATTERY_CYCLES = Metric(
    "energy_meter_battery_cycles_total", "counter", "",
    "Full charge cycles of a battery.", vendors=(HOMEWIZARD,))
# The plug-in batteries a HomeWizard P1 or kWh meter controls, as one group (/api/batteries).
BATTERY_TARGET_POWER = Metric(
    "energy_meter_battery_target_power_watts", "gauge", "W",
    "Power the controller of a group of batteries aims at, all together; positive when discharging.",
    vendors=(HOMEWIZARD,))
BATTERY_MAX_CHARGE_POWER = Metric(
    "energy_meter_battery_max_charge_power_watts", "gauge", "W",
    "Highest power a group of batteries may charge with, all together.", vendors=(HOMEWIZARD,))
BATTERY_MAX_DISCHARGE_POWER = Metric(
    "energy_meter_battery_max_discharge_power_watts", "gauge", "W",
    "Highest power a group of batteries may discharge with, all together.", vendors=(HOMEWIZARD,))
BATTERY_COUNT = Metric(
    "energy_meter_batteries", "gauge", "",
    "Batteries in the group a meter controls.", vendors=(HOMEWIZARD,))
BATTERY_CONTROL_MODE = Metric(
    "energy_meter_battery_control_mode", "gauge", "",
    "1 for the mode a group of batteries is controlled in (zero, to_full, standby, predictive; "
    "others as the device names them), 0 for the others.", labels=("mode",), vendors=(HOMEWIZARD,))
BATTERY_PERMISSION = Metric(
    "energy_meter_battery_permission", "gauge", "",
    "1 when a group of batteries has a permission (charge_allowed, discharge_allowed), else 0.",
    labels=("permission",), vendors=(HOMEWIZARD,))

# --- Device health ---------------------------------------------------------------------------
WIFI_SIGNAL = Metric(
    "energy_meter_wifi_signal_ratio", "gauge", "",
    "Wi-Fi signal strength as the device reports it in percent, as a ratio (0..1).",
    vendors=(HOMEWIZARD, IAMMETER))
WIFI_RSSI = Metric(
    "energy_meter_wifi_rssi_dbm", "gauge", "dBm",
    "Wi-Fi received signal strength.", vendors=(HOMEWIZARD, IAMMETER, IOMETER))
DEVICE_UPTIME = Metric(
    "energy_meter_device_uptime_seconds", "gauge", "s",
    "Time since the device started.", vendors=(HOMEWIZARD, IAMMETER))
DEVICE_INFO = Metric(
    "energy_meter_device_info", "gauge", "",
    "Device identity; value 1. Model, serial and firmware live here, not on every series.",
    labels=("model", "serial", "firmware"), vendors=ALL_METER_VENDORS)
SMART_METER_INFO = Metric(
    "energy_meter_smart_meter_info", "gauge", "",
    "Identity of the smart meter a P1 reader is plugged into; value 1. meter_id is the meter's "
    "equipment identifier as the reader sends it (hex), protocol_version its DSMR version (50 = 5.0).",
    labels=("model", "meter_id", "protocol_version"), vendors=(HOMEWIZARD,))


# --- The exporter's own series (vendors=() : every target, whatever its vendor) -------------------
TARGET_UP = Metric(
    "energy_meter_exporter_target_up", "gauge", "",
    "1 if the last poll of the target succeeded (or a push target is not silent), else 0.")
LAST_SUCCESS = Metric(
    "energy_meter_exporter_last_success_timestamp_seconds", "gauge", "s",
    "When the target last delivered a good reading (Unix time).")
POLL_DURATION = Metric(
    "energy_meter_exporter_poll_duration_seconds", "gauge", "s",
    "How long the target's last poll took, successful or not.")
POLLS = Metric(
    "energy_meter_exporter_polls_total", "counter", "",
    "Polls of the target (and messages of a push target), successful or not.")
POLL_ERRORS = Metric(
    "energy_meter_exporter_poll_errors_total", "counter", "",
    "Failed polls of the target, by reason (see the troubleshooting table in docs/troubleshooting.md).",
    labels=("reason",))
COUNTER_REGRESSIONS = Metric(
    "energy_meter_exporter_decreasing_readings_total", "counter", "",
    "Readings of a running total lower than the value held; held back, not exported as a reset.")
SAMPLES_DROPPED = Metric(
    "energy_meter_exporter_samples_dropped_total", "counter", "",
    "Values of the target's readings not exported, by reason: not_finite (NaN or infinite), "
    "negative (a running total below 0), out_of_range (a running total no meter reaches: energy "
    "beyond 100 years at max_power, anything else beyond 1e15), implausible_jump (a running total "
    "rising faster than max_power allows; the value held is kept), duplicate (a series twice in "
    "one reading; the first is kept).",
    labels=("reason",))
BUILD_INFO = Metric(
    "energy_meter_exporter_build_info", "gauge", "",
    "Version of the exporter; value 1.", labels=("version", "python_version"), base_labels=())
CONFIG_RELOAD_OK = Metric(
    "energy_meter_exporter_config_last_reload_successful", "gauge", "",
    "1 if the last configuration (re)load succeeded, 0 if it failed and the old one still runs.",
    base_labels=())
CONFIG_RELOAD_TIME = Metric(
    "energy_meter_exporter_config_last_reload_success_timestamp_seconds", "gauge", "s",
    "When the configuration was last loaded successfully (Unix time).", base_labels=())
QUOTA_REMAINING = Metric(
    "energy_meter_exporter_quota_remaining", "gauge", "",
    "Calls left in a cloud API's quota window (scope: the account, meter or target it counts for).",
    labels=("api", "scope", "window"), base_labels=())
QUOTA_LIMIT = Metric(
    "energy_meter_exporter_quota_limit", "gauge", "",
    "Calls a cloud API's quota window allows (the vendor's published limit).",
    labels=("api", "scope", "window"), base_labels=())
ASYNCIO_TASKS = Metric(
    "energy_meter_exporter_asyncio_tasks", "gauge", "",
    "Tasks alive in the exporter's event loop (flat over time on a healthy exporter).", base_labels=())
# The standard process series every Prometheus exporter serves (values from prometheus_client).
PROCESS_METRICS = (
    Metric("process_cpu_seconds_total", "counter", "s", "Total user and system CPU time spent in seconds.", base_labels=()),
    Metric("process_open_fds", "gauge", "", "Number of open file descriptors.", base_labels=()),
    Metric("process_max_fds", "gauge", "", "Maximum number of open file descriptors.", base_labels=()),
    Metric("process_virtual_memory_bytes", "gauge", "B", "Virtual memory size in bytes.", base_labels=()),
    Metric("process_resident_memory_bytes", "gauge", "B", "Resident memory size in bytes.", base_labels=()),
    Metric("process_start_time_seconds", "gauge", "s", "Start time of the process since unix epoch in seconds.",
           base_labels=()),
)
EXPORTER_SELF = (TARGET_UP, LAST_SUCCESS, POLL_DURATION, POLLS, POLL_ERRORS, COUNTER_REGRESSIONS,
                 SAMPLES_DROPPED)


# --- IAMMETER ---------------------------------------------------------------------------------
PHASE_ENERGY_IMPORTED = Metric(
    "energy_meter_phase_energy_imported_joules_total", "counter", "J",
    "Active energy imported through one phase, as the meter counts it per phase (1 kWh = 3.6e6 J).",
    labels=("phase",), obis=_phases(21, 41, 61, "8.0"), obis_by="phase", vendors=(IAMMETER, IOMETER))
PHASE_ENERGY_EXPORTED = Metric(
    "energy_meter_phase_energy_exported_joules_total", "counter", "J",
    "Active energy exported through one phase, as the meter counts it per phase (1 kWh = 3.6e6 J).",
    labels=("phase",), obis=_phases(22, 42, 62, "8.0"), obis_by="phase", vendors=(IAMMETER, IOMETER))
# A three-phase IAMMETER's own totals (the net-metering row of its JSON, the "total" Modbus
# registers) are the algebraic sum of its phases and the counters of that sum: they are
# ACTIVE_POWER and ENERGY_IMPORTED/EXPORTED above, not the sum of the per-phase counters below.
REACTIVE_ENERGY_INDUCTIVE = Metric(
    "energy_meter_reactive_energy_inductive_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Inductive reactive energy of the whole meter (1 kvarh = 3.6e6 var*s).", vendors=(IAMMETER,))
REACTIVE_ENERGY_CAPACITIVE = Metric(
    "energy_meter_reactive_energy_capacitive_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Capacitive reactive energy of the whole meter (1 kvarh = 3.6e6 var*s).", vendors=(IAMMETER,))
PHASE_REACTIVE_ENERGY_INDUCTIVE = Metric(
    "energy_meter_phase_reactive_energy_inductive_volt_ampere_reactive_seconds_total", "counter",
    "var*s", "Inductive reactive energy of one phase (1 kvarh = 3.6e6 var*s).", labels=("phase",),
    vendors=(IAMMETER,))
PHASE_REACTIVE_ENERGY_CAPACITIVE = Metric(
    "energy_meter_phase_reactive_energy_capacitive_volt_ampere_reactive_seconds_total", "counter",
    "var*s", "Capacitive reactive energy of one phase (1 kvarh = 3.6e6 var*s).", labels=("phase",),
    vendors=(IAMMETER,))
CT_RATIO = Metric(
    "energy_meter_ct_ratio", "gauge", "",
    "Current transformer ratio configured in the meter (WEM3046T with external 5 A CTs); the "
    "meter already applies it to its current, power and energy readings.", vendors=(IAMMETER,))
UPLOAD_MODE = Metric(
    "energy_meter_upload_mode", "gauge", "",
    "1 for the mode the meter sends its readings in (mode: cloud, tcp, http, mqtt, standalone; "
    "others as the firmware names them), 0 for the others.", labels=("mode",), vendors=(IAMMETER,))
UPLOAD_INTERVAL = Metric(
    "energy_meter_upload_interval_seconds", "gauge", "s",
    "How often the meter sends its readings in its upload mode.", vendors=(IAMMETER,))


# --- IOmeter ---------------------------------------------------------------------------------
# OBIS registers with a standard meaning (IEC 62056-6-1, DSMR) no other vendor reports: import
# and export apart (A+ and A-, each 0 while the other flows), per phase, and reactive Q+ / Q-.
IMPORT_POWER = Metric(
    "energy_meter_import_power_watts", "gauge", "W",
    "Active power imported from the grid (A+); 0 while exporting.", obis="1-0:1.7.0", vendors=(IOMETER,))
EXPORT_POWER = Metric(
    "energy_meter_export_power_watts", "gauge", "W",
    "Active power exported to the grid (A-); 0 while importing.", obis="1-0:2.7.0", vendors=(IOMETER,))
PHASE_IMPORT_POWER = Metric(
    "energy_meter_phase_import_power_watts", "gauge", "W",
    "Active power imported through one phase (A+); 0 while that phase exports.", labels=("phase",),
    obis=_phases(21, 41, 61), obis_by="phase", vendors=(IOMETER,))
PHASE_EXPORT_POWER = Metric(
    "energy_meter_phase_export_power_watts", "gauge", "W",
    "Active power exported through one phase (A-); 0 while that phase imports.", labels=("phase",),
    obis=_phases(22, 42, 62), obis_by="phase", vendors=(IOMETER,))
IMPORT_REACTIVE_POWER = Metric(
    "energy_meter_import_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Positive reactive power (Q+, quadrants I and II) of the whole meter.", obis="1-0:3.7.0",
    vendors=(IOMETER,))
EXPORT_REACTIVE_POWER = Metric(
    "energy_meter_export_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Negative reactive power (Q-, quadrants III and IV) of the whole meter.", obis="1-0:4.7.0",
    vendors=(IOMETER,))
REACTIVE_ENERGY_IMPORTED = Metric(
    "energy_meter_reactive_energy_imported_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Positive reactive energy (Q+) of the whole meter (1 kvarh = 3.6e6 var*s).", obis="1-0:3.8.0",
    vendors=(IOMETER,))
REACTIVE_ENERGY_EXPORTED = Metric(
    "energy_meter_reactive_energy_exported_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Negative reactive energy (Q-) of the whole meter (1 kvarh = 3.6e6 var*s).", obis="1-0:4.8.0",
    vendors=(IOMETER,))
# A register without a named metric is still exported, by its OBIS code (label `obis`).
OBIS_VALUE = Metric(
    "energy_meter_obis_value", "gauge", "",
    "A meter register the exporter has no named metric for, by its OBIS code (decimal form, "
    "label obis); converted to the base unit in label unit (J, W, V, A, Hz, var, VA, var*s, VA*s) "
    "where the device's unit is known, else as sent.",
    labels=("unit",), vendors=(IOMETER,))
# The IOmeter device: a reader ("core") on the meter's optical port, and a Wi-Fi gateway
# ("bridge"). Labelled by installation and device id, which both the local API and the cloud
# API give, so one metric serves both and a cloud account with many devices stays apart.
GATEWAY_CONNECTED = Metric(
    "energy_meter_gateway_connected", "gauge", "",
    "1 when the meter's Wi-Fi gateway (IOmeter bridge) is connected to the vendor's cloud, else 0.",
    labels=("installation", "device_id"), vendors=(IOMETER,))
READER_CONNECTED = Metric(
    "energy_meter_reader_connected", "gauge", "",
    "1 when the reader on the meter (IOmeter core) is connected to its gateway, else 0.",
    labels=("installation", "device_id"), vendors=(IOMETER,))
READER_ATTACHED = Metric(
    "energy_meter_reader_attached", "gauge", "",
    "1 when the reader (IOmeter core) is attached to the meter's optical port, else 0.",
    labels=("installation", "device_id"), vendors=(IOMETER,))
READER_BATTERY = Metric(
    "energy_meter_reader_battery_level_ratio", "gauge", "",
    "Battery level of the reader on the meter (IOmeter core), as a ratio (0..1).",
    labels=("installation", "device_id"), vendors=(IOMETER,))
READER_POWER_SOURCE = Metric(
    "energy_meter_reader_power_source", "gauge", "",
    "1 for the power source the reader (IOmeter core) runs on now (battery, wired), 0 for the others.",
    labels=("installation", "device_id", "source"), vendors=(IOMETER,))
READER_PIN_STATE = Metric(
    "energy_meter_reader_pin_state", "gauge", "",
    "1 for the state of the meter PIN entry (missing, pending, entered), 0 for the others; "
    "without the PIN many meters send energy totals only.",
    labels=("installation", "device_id", "state"), vendors=(IOMETER,))
READER_RSSI = Metric(
    "energy_meter_reader_rssi_dbm", "gauge", "dBm",
    "Radio signal strength between the reader (IOmeter core) and its gateway.",
    labels=("installation", "device_id"), vendors=(IOMETER,))
# A cloud account (IOmeter Partner API) holds many meters: its series carry `installation`
# and `meter` on top, so they cannot share the fixed label sets of the metrics above.
# Each meter is one series per name: sum() over them adds distinct meters, never a meter twice.
ACCOUNT_ACTIVE_POWER = Metric(
    "energy_meter_account_active_power_watts", "gauge", "W",
    "Active power of one meter of a cloud account; negative when exporting.",
    labels=("installation", "meter"), obis="1-0:16.7.0", vendors=(IOMETER, IAMMETER))
ACCOUNT_ENERGY_IMPORTED = Metric(
    "energy_meter_account_energy_imported_joules_total", "counter", "J",
    "Active energy one meter of a cloud account imported, all tariffs (1 kWh = 3.6e6 J).",
    labels=("installation", "meter"), obis="1-0:1.8.0", vendors=(IOMETER, IAMMETER))
ACCOUNT_ENERGY_EXPORTED = Metric(
    "energy_meter_account_energy_exported_joules_total", "counter", "J",
    "Active energy one meter of a cloud account exported, all tariffs (1 kWh = 3.6e6 J).",
    labels=("installation", "meter"), obis="1-0:2.8.0", vendors=(IOMETER, IAMMETER))
ACCOUNT_TARIFF_ENERGY_IMPORTED = Metric(
    "energy_meter_account_tariff_energy_imported_joules_total", "counter", "J",
    "Active energy one meter of a cloud account imported in one tariff register.",
    labels=("installation", "meter", "tariff"), obis=_tariffs(1), obis_by="tariff",
    vendors=(IOMETER,))
ACCOUNT_TARIFF_ENERGY_EXPORTED = Metric(
    "energy_meter_account_tariff_energy_exported_joules_total", "counter", "J",
    "Active energy one meter of a cloud account exported in one tariff register.",
    labels=("installation", "meter", "tariff"), obis=_tariffs(2), obis_by="tariff",
    vendors=(IOMETER,))
ACCOUNT_FREQUENCY = Metric(
    "energy_meter_account_frequency_hertz", "gauge", "Hz",
    "Line frequency at one meter of a cloud account.",
    labels=("installation", "meter"), obis="1-0:14.7.0", vendors=(IOMETER, IAMMETER))
ACCOUNT_POWER_FACTOR = Metric(
    "energy_meter_account_power_factor_ratio", "gauge", "",
    "Power factor of one meter of a cloud account (0..1).",
    labels=("installation", "meter"), obis="1-0:13.7.0", vendors=(IOMETER, IAMMETER))
ACCOUNT_PHASE_ACTIVE_POWER = Metric(
    "energy_meter_account_phase_active_power_watts", "gauge", "W",
    "Active power of one phase of one meter of a cloud account; negative when exporting.",
    labels=("installation", "meter", "phase"), obis=_phases(36, 56, 76), obis_by="phase",
    vendors=(IOMETER, IAMMETER))
ACCOUNT_PHASE_VOLTAGE = Metric(
    "energy_meter_account_phase_voltage_volts", "gauge", "V",
    "RMS voltage of one phase of one meter of a cloud account.",
    labels=("installation", "meter", "phase"), obis=_phases(32, 52, 72), obis_by="phase",
    vendors=(IOMETER, IAMMETER))
ACCOUNT_PHASE_CURRENT = Metric(
    "energy_meter_account_phase_current_amperes", "gauge", "A",
    "RMS current of one phase of one meter of a cloud account.",
    labels=("installation", "meter", "phase"), obis=_phases(31, 51, 71), obis_by="phase",
    vendors=(IOMETER, IAMMETER))
ACCOUNT_PHASE_POWER_FACTOR = Metric(
    "energy_meter_account_phase_power_factor_ratio", "gauge", "",
    "Power factor of one phase of one meter of a cloud account (0..1).",
    labels=("installation", "meter", "phase"), obis=_phases(33, 53, 73), obis_by="phase",
    vendors=(IOMETER, IAMMETER))
ACCOUNT_IMPORT_POWER = Metric(
    "energy_meter_account_import_power_watts", "gauge", "W",
    "Active power one meter of a cloud account imports (A+); 0 while exporting.",
    labels=("installation", "meter"), obis="1-0:1.7.0",
    vendors=(IOMETER,))
ACCOUNT_EXPORT_POWER = Metric(
    "energy_meter_account_export_power_watts", "gauge", "W",
    "Active power one meter of a cloud account exports (A-); 0 while importing.",
    labels=("installation", "meter"), obis="1-0:2.7.0",
    vendors=(IOMETER,))
ACCOUNT_PHASE_IMPORT_POWER = Metric(
    "energy_meter_account_phase_import_power_watts", "gauge", "W",
    "Active power imported through one phase of one meter of a cloud account (A+).",
    labels=("installation", "meter", "phase"), obis=_phases(21, 41, 61), obis_by="phase",
    vendors=(IOMETER,))
ACCOUNT_PHASE_EXPORT_POWER = Metric(
    "energy_meter_account_phase_export_power_watts", "gauge", "W",
    "Active power exported through one phase of one meter of a cloud account (A-).",
    labels=("installation", "meter", "phase"), obis=_phases(22, 42, 62), obis_by="phase",
    vendors=(IOMETER,))
ACCOUNT_IMPORT_REACTIVE_POWER = Metric(
    "energy_meter_account_import_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Positive reactive power (Q+) of one meter of a cloud account.",
    labels=("installation", "meter"), obis="1-0:3.7.0",
    vendors=(IOMETER,))
ACCOUNT_EXPORT_REACTIVE_POWER = Metric(
    "energy_meter_account_export_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Negative reactive power (Q-) of one meter of a cloud account.",
    labels=("installation", "meter"), obis="1-0:4.7.0",
    vendors=(IOMETER,))
ACCOUNT_REACTIVE_ENERGY_IMPORTED = Metric(
    "energy_meter_account_reactive_energy_imported_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Positive reactive energy (Q+) of one meter of a cloud account (1 kvarh = 3.6e6 var*s).",
    labels=("installation", "meter"), obis="1-0:3.8.0",
    vendors=(IOMETER,))
ACCOUNT_REACTIVE_ENERGY_EXPORTED = Metric(
    "energy_meter_account_reactive_energy_exported_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Negative reactive energy (Q-) of one meter of a cloud account (1 kvarh = 3.6e6 var*s).",
    labels=("installation", "meter"), obis="1-0:4.8.0",
    vendors=(IOMETER,))
ACCOUNT_ACTIVE_TARIFF = Metric(
    "energy_meter_account_active_tariff", "gauge", "",
    "Tariff register one meter of a cloud account counts in now.",
    labels=("installation", "meter"), obis="0-0:96.14.0",
    vendors=(IOMETER,))
ACCOUNT_POWER_FAILURES = Metric(
    "energy_meter_account_power_failures_total", "counter", "",
    "Power failures in any phase, as one meter of a cloud account counts them.",
    labels=("installation", "meter"), obis="0-0:96.7.21",
    vendors=(IOMETER,))
ACCOUNT_LONG_POWER_FAILURES = Metric(
    "energy_meter_account_long_power_failures_total", "counter", "",
    "Long power failures in any phase, as one meter of a cloud account counts them.",
    labels=("installation", "meter"), obis="0-0:96.7.9",
    vendors=(IOMETER,))
ACCOUNT_AVERAGE_DEMAND = Metric(
    "energy_meter_account_average_demand_watts", "gauge", "W",
    "Average import demand of the running period at one meter of a cloud account.",
    labels=("installation", "meter"), obis="1-0:1.4.0",
    vendors=(IOMETER,))
ACCOUNT_MONTHLY_PEAK_DEMAND = Metric(
    "energy_meter_account_monthly_peak_demand_watts", "gauge", "W",
    "Highest average demand of this month at one meter of a cloud account.",
    labels=("installation", "meter"), obis="1-0:1.6.0",
    vendors=(IOMETER,))
ACCOUNT_PHASE_VOLTAGE_SAGS = Metric(
    "energy_meter_account_phase_voltage_sags_total", "counter", "",
    "Voltage sags of one phase, as one meter of a cloud account counts them.",
    labels=("installation", "meter", "phase"), obis=_phases(32, 52, 72, "32.0"), obis_by="phase",
    vendors=(IOMETER,))
ACCOUNT_PHASE_VOLTAGE_SWELLS = Metric(
    "energy_meter_account_phase_voltage_swells_total", "counter", "",
    "Voltage swells of one phase, as one meter of a cloud account counts them.",
    labels=("installation", "meter", "phase"), obis=_phases(32, 52, 72, "36.0"), obis_by="phase",
    vendors=(IOMETER,))
ACCOUNT_OBIS_VALUE = Metric(
    "energy_meter_account_obis_value", "gauge", "",
    "A register of one meter of a cloud account the exporter has no named metric for, by its "
    "OBIS code (label obis), in the base unit in label unit where known, else as sent.",
    labels=("installation", "meter", "unit"), vendors=(IOMETER,))
ACCOUNT_MEASUREMENT_TIME = Metric(
    "energy_meter_account_measurement_timestamp_seconds", "gauge", "s",
    "When one meter of a cloud account took the newest reading the exporter holds (Unix time).",
    labels=("installation", "meter"), vendors=(IOMETER, IAMMETER))
READINGS_RECEIVED = Metric(
    "energy_meter_exporter_readings_received_total", "counter", "",
    "Meter readings a cloud-account target received (subscription messages and query results), "
    "duplicates included.", vendors=(IOMETER,))
DUPLICATE_READINGS = Metric(
    "energy_meter_exporter_duplicate_readings_total", "counter", "",
    "Meter readings dropped because the target already held a reading of that meter as new or "
    "newer (replays after a reconnect, repeated deliveries).", vendors=(IOMETER,))


# --- Enphase ---------------------------------------------------------------------------------
# IQ Gateway (Envoy). System figures under names that say what they are (production, house
# consumption, grid = the standard names above); raw CT readings per role under `meter`.
PRODUCTION_POWER = Metric(
    "energy_meter_production_power_watts", "gauge", "W",
    "Solar production power of the whole system (production CT when installed, else the "
    "microinverters' reports).", vendors=(ENPHASE,))
PRODUCTION_ENERGY = Metric(
    "energy_meter_production_energy_joules_total", "counter", "J",
    "Solar energy produced since installation (1 kWh = 3.6e6 J).", vendors=(ENPHASE,))
PHASE_PRODUCTION_POWER = Metric(
    "energy_meter_phase_production_power_watts", "gauge", "W",
    "Solar production power in one phase.", labels=("phase",), vendors=(ENPHASE,))
CONSUMPTION_POWER = Metric(
    "energy_meter_consumption_power_watts", "gauge", "W",
    "House consumption power (total consumption: grid import plus own solar use).",
    vendors=(ENPHASE,))
CONSUMPTION_ENERGY = Metric(
    "energy_meter_consumption_energy_joules_total", "counter", "J",
    "House consumption energy since installation (1 kWh = 3.6e6 J).", vendors=(ENPHASE,))
PHASE_CONSUMPTION_POWER = Metric(
    "energy_meter_phase_consumption_power_watts", "gauge", "W",
    "House consumption power in one phase.", labels=("phase",), vendors=(ENPHASE,))
INVERTER_POWER = Metric(
    "energy_meter_inverter_power_watts", "gauge", "W",
    "Power of one microinverter at its last report (reports come every 5 minutes or slower).",
    labels=("inverter",), vendors=(ENPHASE,))
INVERTER_MAX_POWER = Metric(
    "energy_meter_inverter_max_power_watts", "gauge", "W",
    "Highest power one microinverter ever reported.", labels=("inverter",), vendors=(ENPHASE,))
INVERTER_LAST_REPORT = Metric(
    "energy_meter_inverter_last_report_timestamp_seconds", "gauge", "s",
    "When one microinverter last reported (Unix time).", labels=("inverter",), vendors=(ENPHASE,))
CT_ACTIVE_POWER = Metric(
    "energy_meter_ct_active_power_watts", "gauge", "W",
    "Active power through one current transformer; `meter` is its role (production, "
    "net-consumption, total-consumption, storage, ...).", labels=("meter",), vendors=(ENPHASE,))
CT_APPARENT_POWER = Metric(
    "energy_meter_ct_apparent_power_volt_amperes", "gauge", "VA",
    "Apparent power through one current transformer.", labels=("meter",), vendors=(ENPHASE,))
CT_REACTIVE_POWER = Metric(
    "energy_meter_ct_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Reactive power through one current transformer.", labels=("meter",), vendors=(ENPHASE,))
CT_VOLTAGE = Metric(
    "energy_meter_ct_voltage_volts", "gauge", "V",
    "Voltage at one current transformer that measures one phase. On CTs of two or three "
    "phases the gateway reports the sum of the phase voltages, which is no voltage: those CTs "
    "give energy_meter_ct_phase_voltage_volts only.", labels=("meter",), vendors=(ENPHASE,))
CT_CURRENT = Metric(
    "energy_meter_ct_current_amperes", "gauge", "A",
    "Current through one current transformer, all its phases together.", labels=("meter",),
    vendors=(ENPHASE,))
CT_POWER_FACTOR = Metric(
    "energy_meter_ct_power_factor_ratio", "gauge", "",
    "Power factor at one current transformer (-1..1; negative when power flows backwards).",
    labels=("meter",), vendors=(ENPHASE,))
CT_FREQUENCY = Metric(
    "energy_meter_ct_frequency_hertz", "gauge", "Hz",
    "Line frequency at one current transformer.", labels=("meter",), vendors=(ENPHASE,))
CT_ENERGY_DELIVERED = Metric(
    "energy_meter_ct_energy_delivered_joules_total", "counter", "J",
    "Active energy through one current transformer in its forward direction (production: "
    "produced; net-consumption: imported from the grid).", labels=("meter",), vendors=(ENPHASE,))
CT_ENERGY_RECEIVED = Metric(
    "energy_meter_ct_energy_received_joules_total", "counter", "J",
    "Active energy through one current transformer backwards (net-consumption: exported to the "
    "grid).", labels=("meter",), vendors=(ENPHASE,))
CT_APPARENT_ENERGY = Metric(
    "energy_meter_ct_apparent_energy_volt_ampere_seconds_total", "counter", "VA*s",
    "Apparent energy through one current transformer (1 kVAh = 3.6e6 VA*s).", labels=("meter",),
    vendors=(ENPHASE,))
CT_REACTIVE_ENERGY_INDUCTIVE = Metric(
    "energy_meter_ct_reactive_energy_inductive_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Inductive (lagging) reactive energy through one current transformer (1 kvarh = 3.6e6 var*s).",
    labels=("meter",), vendors=(ENPHASE,))
CT_REACTIVE_ENERGY_CAPACITIVE = Metric(
    "energy_meter_ct_reactive_energy_capacitive_volt_ampere_reactive_seconds_total", "counter", "var*s",
    "Capacitive (leading) reactive energy through one current transformer (1 kvarh = 3.6e6 var*s).",
    labels=("meter",), vendors=(ENPHASE,))
CT_MEASUREMENT_TIME = Metric(
    "energy_meter_ct_measurement_timestamp_seconds", "gauge", "s",
    "When the gateway took the reading of one current transformer (Unix time).",
    labels=("meter",), vendors=(ENPHASE,))
CT_PHASE_ACTIVE_POWER = Metric(
    "energy_meter_ct_phase_active_power_watts", "gauge", "W",
    "Active power through one current transformer in one phase.", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_APPARENT_POWER = Metric(
    "energy_meter_ct_phase_apparent_power_volt_amperes", "gauge", "VA",
    "Apparent power through one current transformer in one phase.", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_REACTIVE_POWER = Metric(
    "energy_meter_ct_phase_reactive_power_volt_amperes_reactive", "gauge", "var",
    "Reactive power through one current transformer in one phase.", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_VOLTAGE = Metric(
    "energy_meter_ct_phase_voltage_volts", "gauge", "V",
    "Voltage of one phase at one current transformer.", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_CURRENT = Metric(
    "energy_meter_ct_phase_current_amperes", "gauge", "A",
    "Current of one phase through one current transformer.", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_POWER_FACTOR = Metric(
    "energy_meter_ct_phase_power_factor_ratio", "gauge", "",
    "Power factor of one phase at one current transformer (-1..1).", labels=("meter", "phase"),
    vendors=(ENPHASE,))
CT_PHASE_ENERGY_DELIVERED = Metric(
    "energy_meter_ct_phase_energy_delivered_joules_total", "counter", "J",
    "Active energy through one current transformer in one phase, forward direction.",
    labels=("meter", "phase"), vendors=(ENPHASE,))
CT_PHASE_ENERGY_RECEIVED = Metric(
    "energy_meter_ct_phase_energy_received_joules_total", "counter", "J",
    "Active energy through one current transformer in one phase, backwards.",
    labels=("meter", "phase"), vendors=(ENPHASE,))
CT_PHASE_APPARENT_ENERGY = Metric(
    "energy_meter_ct_phase_apparent_energy_volt_ampere_seconds_total", "counter", "VA*s",
    "Apparent energy through one current transformer in one phase (1 kVAh = 3.6e6 VA*s).",
    labels=("meter", "phase"), vendors=(ENPHASE,))
CT_PHASE_REACTIVE_ENERGY_INDUCTIVE = Metric(
    "energy_meter_ct_phase_reactive_energy_inductive_volt_ampere_reactive_seconds_total", "counter",
    "var*s", "Inductive (lagging) reactive energy through one current transformer in one phase "
    "(1 kvarh = 3.6e6 var*s).", labels=("meter", "phase"), vendors=(ENPHASE,))
CT_PHASE_REACTIVE_ENERGY_CAPACITIVE = Metric(
    "energy_meter_ct_phase_reactive_energy_capacitive_volt_ampere_reactive_seconds_total", "counter",
    "var*s", "Capacitive (leading) reactive energy through one current transformer in one phase "
    "(1 kvarh = 3.6e6 var*s).", labels=("meter", "phase"), vendors=(ENPHASE,))
BATTERY_UNIT_STATE_OF_CHARGE = Metric(
    "energy_meter_battery_unit_state_of_charge_ratio", "gauge", "",
    "State of charge of one battery of several (0..1); the whole storage is "
    "energy_meter_battery_state_of_charge_ratio.", labels=("battery",), vendors=(ENPHASE,))
BATTERY_UNIT_TEMPERATURE = Metric(
    "energy_meter_battery_unit_temperature_celsius", "gauge", "°C",
    "Temperature of one battery.", labels=("battery",), vendors=(ENPHASE,))
BATTERY_UNIT_CAPACITY = Metric(
    "energy_meter_battery_unit_capacity_joules", "gauge", "J",
    "Usable capacity of one battery (1 kWh = 3.6e6 J).", labels=("battery",), vendors=(ENPHASE,))
BATTERY_POWER = Metric(
    "energy_meter_battery_power_watts", "gauge", "W",
    "Power out of all batteries together; positive when discharging, negative when charging.",
    vendors=(HOMEWIZARD, ENPHASE))
BATTERY_STORED_ENERGY = Metric(
    "energy_meter_battery_stored_energy_joules", "gauge", "J",
    "Energy stored in all batteries together now (1 kWh = 3.6e6 J).", vendors=(ENPHASE,))
BATTERY_CAPACITY = Metric(
    "energy_meter_battery_capacity_joules", "gauge", "J",
    "Usable capacity of all batteries together (1 kWh = 3.6e6 J).", vendors=(ENPHASE,))
# One series per kind of battery (group: encharge = IQ Batteries, acb = AC Batteries); names
# apart from the site totals above, so that sum() over a name never counts a battery twice.
BATTERY_GROUP_STATE_OF_CHARGE = Metric(
    "energy_meter_battery_group_state_of_charge_ratio", "gauge", "",
    "State of charge of all batteries of one kind (group: encharge, acb) together (0..1).",
    labels=("group",), vendors=(ENPHASE,))
BATTERY_GROUP_STORED_ENERGY = Metric(
    "energy_meter_battery_group_stored_energy_joules", "gauge", "J",
    "Energy stored in all batteries of one kind (group: encharge, acb) now (1 kWh = 3.6e6 J).",
    labels=("group",), vendors=(ENPHASE,))
BATTERY_GROUP_CAPACITY = Metric(
    "energy_meter_battery_group_capacity_joules", "gauge", "J",
    "Usable capacity of all batteries of one kind (group: encharge, acb) (1 kWh = 3.6e6 J).",
    labels=("group",), vendors=(ENPHASE,))
BATTERY_GROUP_POWER = Metric(
    "energy_meter_battery_group_power_watts", "gauge", "W",
    "Power out of all batteries of one kind (group: encharge, acb); positive when discharging.",
    labels=("group",), vendors=(ENPHASE,))
BATTERY_UNIT_POWER = Metric(
    "energy_meter_battery_unit_power_watts", "gauge", "W",
    "Power out of one battery; positive when discharging.", labels=("battery",), vendors=(ENPHASE,))
BATTERY_UNIT_COMMUNICATING = Metric(
    "energy_meter_battery_unit_communicating", "gauge", "",
    "1 while one battery communicates with the gateway, else 0.", labels=("battery",), vendors=(ENPHASE,))
BATTERY_UNIT_FAULT = Metric(
    "energy_meter_battery_unit_fault", "gauge", "",
    "1 while the gateway lists a fault condition for one battery (its device status is not "
    "envoy.global.ok), else 0.", labels=("battery",), vendors=(ENPHASE,))
BATTERY_BACKUP_RESERVE = Metric(
    "energy_meter_battery_backup_reserve_ratio", "gauge", "",
    "The gateway's backup_soc figure (0..1): the charge the batteries keep for a grid outage.",
    vendors=(ENPHASE,))
BATTERY_BACKUP_MODE_CODE = Metric(
    "energy_meter_battery_backup_mode_code", "gauge", "",
    "The gateway's backup battery mode (backup_bat_mode), a code Enphase does not document.",
    vendors=(ENPHASE,))
GRID_RELAY_STATE = Metric(
    "energy_meter_grid_relay_state", "gauge", "",
    "1 for the state (closed, open) of the relay between the site and the grid, 0 for the other; "
    "open = the site runs islanded (off grid).", labels=("state",), vendors=(ENPHASE,))
RELAY_STATE_CODE = Metric(
    "energy_meter_relay_state_code", "gauge", "",
    "State of one relay of the gateway (relay: main, generator) as the raw code of its live data, "
    "which Enphase does not document.", labels=("relay",), vendors=(ENPHASE,))
GATEWAY_LINK_STATE = Metric(
    "energy_meter_gateway_link_state", "gauge", "",
    "1 for the state the gateway reports for one of its links (link: mqtt, provisioning, auth, "
    "live_stream, debug_stream; state as the gateway words it).", labels=("link", "state"),
    vendors=(ENPHASE,))
ENSEMBLE_DEVICE_CONNECTED = Metric(
    "energy_meter_ensemble_device_connected", "gauge", "",
    "1 when a provisioned device (device_type: storage, microinverter, unknown) is connected to "
    "the gateway, else 0.", labels=("device_id", "device_type"), vendors=(ENPHASE,))
CT_METERING_STATUS = Metric(
    "energy_meter_ct_metering_status", "gauge", "",
    "1 for the metering status of one current transformer (normal, not-metering, check-wiring), "
    "0 for the others.", labels=("meter", "status"), vendors=(ENPHASE,))
CT_STATUS_FLAG = Metric(
    "energy_meter_ct_status_flag", "gauge", "",
    "1 for each status flag the gateway raises for one current transformer (production-imbalance, "
    "negative-production, power-on-unused-phase, negative-total-consumption), 0 for the others.",
    labels=("meter", "flag"), vendors=(ENPHASE,))
MICROINVERTERS_POWER = Metric(
    "energy_meter_microinverters_power_watts", "gauge", "W",
    "Production power of all microinverters together, from their last reports (the production "
    "CT, when installed, measures the same flow more often: energy_meter_production_power_watts).",
    vendors=(ENPHASE,))
MICROINVERTERS_ENERGY = Metric(
    "energy_meter_microinverters_energy_joules_total", "counter", "J",
    "Energy all microinverters together report since installation (1 kWh = 3.6e6 J).",
    vendors=(ENPHASE,))
TOKEN_EXPIRY = Metric(
    "energy_meter_exporter_token_expiry_timestamp_seconds", "gauge", "s",
    "When the access token the exporter uses for the device expires (Unix time).",
    vendors=(ENPHASE,))
ENDPOINT_UP = Metric(
    "energy_meter_exporter_endpoint_up", "gauge", "",
    "1 if the device's endpoint answered at its last read, 0 if that read failed (its figures are "
    "left out while it fails); endpoints the device does not have are not listed.",
    labels=("endpoint",), vendors=(ENPHASE,))

# --- IAMMETER push ---------------------------------------------------------------------------
# Series of the shared receivers (the HTTP and TCP push listeners, one connection per MQTT
# broker), not of a target: no vendor/device labels.
PUSH_REJECTED = Metric(
    "energy_meter_exporter_push_rejected_total", "counter", "",
    "Pushed messages refused, by receiver (`http_push`, `tcp_push`, or `mqtt:<broker>`) and reason: "
    "unknown_sn, sn_mismatch, malformed, too_large, forbidden_network, rate_limited, not_found, "
    "bad_token (no or a wrong http_push.path_token), timeout (a body or document slower than read_timeout), "
    "tls (a refused TLS handshake), over_limit (a connection closed to make room under max_connections).",
    labels=("listener", "reason"), vendors=(IAMMETER,), base_labels=())
MQTT_CONNECTED = Metric(
    "energy_meter_exporter_mqtt_connected", "gauge", "",
    "1 while the exporter is connected to the MQTT broker and subscribed, else 0.",
    labels=("broker",), vendors=(IAMMETER,), base_labels=())

# --- IAMMETER cloud --------------------------------------------------------------------------
# One target is one IAMMETER cloud account holding many meters: its meter series are the
# `energy_meter_account_*` ones (labels installation, meter), like every cloud account's.
ACCOUNT_PHASE_ENERGY_IMPORTED = Metric(
    "energy_meter_account_phase_energy_imported_joules_total", "counter", "J",
    "Active energy imported through one phase of one meter of a cloud account (1 kWh = 3.6e6 J).",
    labels=("installation", "meter", "phase"), obis=_phases(21, 41, 61, "8.0"), obis_by="phase",
    vendors=(IAMMETER, IOMETER))
ACCOUNT_PHASE_ENERGY_EXPORTED = Metric(
    "energy_meter_account_phase_energy_exported_joules_total", "counter", "J",
    "Active energy exported through one phase of one meter of a cloud account (1 kWh = 3.6e6 J).",
    labels=("installation", "meter", "phase"), obis=_phases(22, 42, 62, "8.0"), obis_by="phase",
    vendors=(IAMMETER, IOMETER))
ACCOUNT_OFFLINE_TIME = Metric(
    "energy_meter_account_offline_seconds", "gauge", "s",
    "How long one meter of a cloud account sent nothing to the cloud during the previous day "
    "(the cloud's offline analysis).", labels=("installation", "meter"), vendors=(IAMMETER,))
ACCOUNT_OFFLINE_ANALYSIS_PERIOD = Metric(
    "energy_meter_account_offline_analysis_period_seconds", "gauge", "s",
    "How long the period was that the cloud's offline analysis of one meter of a cloud account "
    "covered (energy_meter_account_offline_seconds is the part of it the meter was offline).",
    labels=("installation", "meter"), vendors=(IAMMETER,))
ACCOUNT_OFFLINE_GAPS = Metric(
    "energy_meter_account_offline_gaps", "gauge", "",
    "Gaps longer than 5 minutes in which one meter of a cloud account sent nothing to the cloud "
    "during the previous day (the cloud's offline analysis).", labels=("installation", "meter"),
    vendors=(IAMMETER,))
ACCOUNT_AVERAGE_POWER = Metric(
    "energy_meter_account_average_power_watts", "gauge", "W",
    "Average active power of one meter of a cloud account over the previous day (the cloud's "
    "power analysis).", labels=("installation", "meter"), vendors=(IAMMETER,))
ACCOUNT_DAYTIME_AVERAGE_POWER = Metric(
    "energy_meter_account_daytime_average_power_watts", "gauge", "W",
    "Average active power of one meter of a cloud account between 8:00 and 20:00 of the previous "
    "day (the cloud's power analysis).", labels=("installation", "meter"), vendors=(IAMMETER,))
ACCOUNT_MINIMUM_POWER = Metric(
    "energy_meter_account_minimum_power_watts", "gauge", "W",
    "Lowest active power of one meter of a cloud account during the previous day (the cloud's "
    "power analysis).", labels=("installation", "meter"), vendors=(IAMMETER,))
ACCOUNT_MAXIMUM_POWER = Metric(
    "energy_meter_account_maximum_power_watts", "gauge", "W",
    "Highest active power of one meter of a cloud account during the previous day (the cloud's "
    "power analysis).", labels=("installation", "meter"), vendors=(IAMMETER,))
# Daily figures of a place (a site of the account); `day` is current or previous. They restart
# from 0 every day, so they are gauges; yield, grid import/export and self use are different
# names because self use is part of the yield.
PLACE_DAILY_YIELD = Metric(
    "energy_meter_place_daily_yield_joules", "gauge", "J",
    "Solar energy one place of a cloud account produced on the current or previous day "
    "(1 kWh = 3.6e6 J).", labels=("place", "day"), vendors=(IAMMETER,))
PLACE_DAILY_GRID_IMPORT = Metric(
    "energy_meter_place_daily_grid_import_joules", "gauge", "J",
    "Energy one place of a cloud account took from the grid on the current or previous day "
    "(1 kWh = 3.6e6 J).", labels=("place", "day"), vendors=(IAMMETER,))
PLACE_DAILY_GRID_EXPORT = Metric(
    "energy_meter_place_daily_grid_export_joules", "gauge", "J",
    "Energy one place of a cloud account fed into the grid on the current or previous day "
    "(1 kWh = 3.6e6 J).", labels=("place", "day"), vendors=(IAMMETER,))
PLACE_DAILY_SELF_USE = Metric(
    "energy_meter_place_daily_self_use_joules", "gauge", "J",
    "Solar energy one place of a cloud account used itself on the current or previous day "
    "(1 kWh = 3.6e6 J).", labels=("place", "day"), vendors=(IAMMETER,))
PLACE_DAILY_SPECIAL_LOAD = Metric(
    "energy_meter_place_daily_special_load_joules", "gauge", "J",
    "Energy of one place of a cloud account's special load on the current or previous day, as the "
    "cloud's energy history reports it (specialLoad; 1 kWh = 3.6e6 J).", labels=("place", "day"),
    vendors=(IAMMETER,))

def all_metrics() -> list[Metric]:
    return [v for v in globals().values() if isinstance(v, Metric)] + list(PROCESS_METRICS)


METRICS_BY_NAME: dict[str, Metric] = {m.name: m for m in all_metrics()}


def account_twin(metric: Metric) -> Metric:
    """The cloud-account metric of the quantity a device's `metric` measures:
    `energy_meter_X` -> `energy_meter_account_X` (the account's labels added). KeyError where the
    catalogue has none."""
    return METRICS_BY_NAME["energy_meter_account_" + metric.name.removeprefix("energy_meter_")]

# --- Unit conversions to base units ----------------------------------------------------------
JOULES_PER_KWH = 3.6e6
JOULES_PER_WH = 3.6e3
JOULES_PER_GJ = 1e9
# Units of the counters that measure energy (active, reactive, apparent): their rises are
# bounded by a target's `max_power`.
ENERGY_UNITS = frozenset({"J", "var*s", "VA*s"})



def _obis_text(metric: Metric) -> str:
    if metric.obis is None:
        return ""
    if isinstance(metric.obis, str):
        return metric.obis
    return ", ".join(f"{k}: {v}" for k, v in metric.obis.items())


def markdown_table() -> str:
    """The metrics reference table of docs/metrics.md (kept equal to this module by tests/test_docs.py)."""
    rows = ["| metric | type | unit | labels | OBIS | vendors |", "|---|---|---|---|---|---|"]
    for m in all_metrics():
        labels = ", ".join(m.base_labels + m.labels + (("obis",) if m.obis else ()))
        vendors = ", ".join(m.vendors) if m.vendors else "all (exporter)"
        rows.append(f"| `{m.name}` | {m.type} | {m.unit or '-'} | {labels or '-'} | {_obis_text(m) or '-'} | {vendors} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
