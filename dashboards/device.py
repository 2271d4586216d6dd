"""Energy meters: device detail -- one device in depth."""

from __future__ import annotations

from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue, FieldColorModeId

from exporter.model.catalogue import (ACTIVE_TARIFF, APPARENT_POWER, AVERAGE_DEMAND, DEVICE_INFO, DEVICE_UPTIME,
                                      ENERGY_EXPORTED, ENERGY_IMPORTED, FREQUENCY, GAS, LONG_POWER_FAILURES,
                                      MONTHLY_PEAK_DEMAND, PHASE_ACTIVE_POWER, PHASE_CURRENT, PHASE_ENERGY_EXPORTED,
                                      PHASE_ENERGY_IMPORTED, PHASE_POWER_FACTOR, PHASE_VOLTAGE, PHASE_VOLTAGE_SAGS,
                                      PHASE_VOLTAGE_SWELLS, POWER_FACTOR, POWER_FAILURES, REACTIVE_POWER, WARM_WATER,
                                      WATER, WATER_FLOW, WIFI_RSSI, WIFI_SIGNAL)

from .common import (DEVICE, SITE_POWER, Board, bargauge_panel, colour, device_or_account, in_kwh, increase, query,
                     series, stat_panel, sum_by, table_panel, thresholds, timeseries_panel, unit_of)

DESCRIPTION = ("One device in depth (pick it above, or click it in a table of another board): per-phase voltage, "
               "current, power and power factor, frequency, its registers, power quality, gas and water. "
               "Energy in kWh.")

PER_METER = "{{device}} {{meter}}"
PER_PHASE = "{{device}} {{meter}} {{phase}}"
# EN 50160: 230 V +-10 %.
VOLTAGE_BAND = (207, 253)


def register(metric) -> str:
    return device_or_account(metric, in_kwh(lambda selector, _labels: selector))


def per_phase(title: str, description: str, metric, decimals: int | None = None):
    panel = timeseries_panel(title, description, unit_of(metric), (12, 8), query(device_or_account(metric), PER_PHASE))
    return panel.decimals(decimals) if decimals is not None else panel


def build() -> Board:
    board = Board(DEVICE, DESCRIPTION)
    board.add(
        stat_panel("Active power", "Active power now: the device's total, or the sum of its phases (negative: "
                                   "flowing out).", "watt", (6, 5), query(series(SITE_POWER), PER_METER), graph=True)
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        stat_panel("Imported (register)", "The meter's total import register.", "kwatth", (6, 5),
                   query(register(ENERGY_IMPORTED), PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "blue")).decimals(1),
        stat_panel("Exported (register)", "The meter's total export register.", "kwatth", (6, 5),
                   query(register(ENERGY_EXPORTED), PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "purple")).decimals(1),
        stat_panel("Active tariff", "The tariff the meter counts in now (Dutch/Belgian P1 meters).", "none", (6, 5),
                   query(device_or_account(ACTIVE_TARIFF), PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "text")),
    )
    board.row("Phases")
    low, high = VOLTAGE_BAND
    board.add(
        per_phase("Phase voltage", f"Voltage per phase (phase to neutral). Dashed lines: {low} V and {high} V, "
                                   "230 V +-10 %, the EN 50160 band.", PHASE_VOLTAGE, 1)
        .thresholds(thresholds(("red", None), ("transparent", low), ("red", high)))
        .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)),
        per_phase("Phase current", "Current per phase.", PHASE_CURRENT, 2),
        per_phase("Phase active power", "Active power per phase (negative: flowing out).", PHASE_ACTIVE_POWER),
        per_phase("Phase power factor", "Power factor per phase (1: purely resistive load; the sign follows the "
                                        "direction of active power on meters that report it signed).",
                  PHASE_POWER_FACTOR, 3).min(-1).max(1),
    )
    board.row("Totals")
    board.add(
        timeseries_panel("Active, apparent and reactive power", "Device totals: active (W; the sum of the phases "
                                                                "where the device reports no total), apparent (VA) "
                                                                "and reactive (var) power.",
                         "watt", (12, 8),
                         query(series(SITE_POWER), PER_METER + " active"),
                         query(device_or_account(APPARENT_POWER, sum_by()), PER_METER + " apparent"),
                         query(device_or_account(REACTIVE_POWER, sum_by()), PER_METER + " reactive"))
        .override_by_query("B", [DynamicConfigValue(id_val="unit", value=unit_of(APPARENT_POWER))])
        .override_by_query("C", [DynamicConfigValue(id_val="unit", value=unit_of(REACTIVE_POWER))]),
        timeseries_panel("Frequency", "Grid frequency.", unit_of(FREQUENCY), (12, 8),
                         query(device_or_account(FREQUENCY), PER_METER)).decimals(3),
        timeseries_panel("Power factor", "Power factor of the device total.", "none", (12, 8),
                         query(device_or_account(POWER_FACTOR), PER_METER)).decimals(3).min(-1).max(1),
        timeseries_panel("Energy registers", "Import and export registers (meter readings), and per-phase registers "
                                             "where the meter has them.",
                         "kwatth", (12, 8),
                         query(register(ENERGY_IMPORTED), PER_METER + " imported"),
                         query(register(ENERGY_EXPORTED), PER_METER + " exported"),
                         query(register(PHASE_ENERGY_IMPORTED), PER_PHASE + " imported"),
                         query(register(PHASE_ENERGY_EXPORTED), PER_PHASE + " exported")).decimals(3),
    )
    board.row("Power quality")
    board.add(
        bargauge_panel("Voltage sags and swells in the selected range", "Events the meter counted per phase (DSMR P1 "
                                                                        "meters).",
                       "short", (12, 7),
                       query(device_or_account(PHASE_VOLTAGE_SAGS, increase("$__range", ("phase",))),
                             PER_PHASE + " sags", instant=True),
                       query(device_or_account(PHASE_VOLTAGE_SWELLS, increase("$__range", ("phase",))),
                             PER_PHASE + " swells", instant=True))
        .thresholds(thresholds(("green", None), ("orange", 1))).color_scheme(colour(FieldColorModeId.THRESHOLDS))
        .decimals(0),
        stat_panel("Power failures (meter's count)",
                   "Power failures the meter has counted since it was installed: all, and long ones.",
                   "short", (12, 7),
                   query(device_or_account(POWER_FAILURES), PER_METER + " all", instant=True),
                   query(device_or_account(LONG_POWER_FAILURES), PER_METER + " long", instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "text")).decimals(0),
        timeseries_panel("Capacity tariff: demand", "The meter's running quarter-hour average demand and this month's "
                                                    "peak (the capacity tariff bills the peak).",
                         "watt", (24, 8),
                         query(device_or_account(AVERAGE_DEMAND), PER_METER + " quarter-hour average"),
                         query(device_or_account(MONTHLY_PEAK_DEMAND), PER_METER + " monthly peak")),
    )
    board.row("Gas and water")
    board.add(
        timeseries_panel("Gas meter", "Gas meter reading (external meters of a P1 meter).", unit_of(GAS), (8, 8),
                         query(series(GAS), PER_METER)).decimals(3),
        timeseries_panel("Water meter", "Water meter reading (cold; warm water marked).", unit_of(WATER), (8, 8),
                         query(f'{series(WATER)} or label_replace({series(WARM_WATER)}, "meter", "$1 (warm)", '
                               '"meter", "(.*)")', PER_METER)).decimals(3),
        # m3/s is a unit Grafana has no id for; litres per minute reads better anyway.
        timeseries_panel("Water flow", "Water flow now.", "flowlpm", (8, 8),
                         query(f"{series(WATER_FLOW)} * 60000", "{{device}}")).decimals(2),
    )
    board.row("Device")
    board.add(
        table_panel("Device and Wi-Fi", "Model, firmware, Wi-Fi reception and uptime.", "none", (24, 7),
                    query(series(DEVICE_INFO), instant=True, table_format=True),
                    query(series(WIFI_RSSI), instant=True, table_format=True),
                    query(series(WIFI_SIGNAL), instant=True, table_format=True),
                    query(series(DEVICE_UPTIME), instant=True, table_format=True),
                    hidden=("Value #A", "__name__", "job", "instance"),
                    renamed={"Value #B": "Wi-Fi RSSI", "Value #C": "Wi-Fi signal", "Value #D": "uptime"})
        .override_by_name("Wi-Fi RSSI", [DynamicConfigValue(id_val="unit", value=unit_of(WIFI_RSSI))])
        .override_by_name("Wi-Fi signal", [DynamicConfigValue(id_val="unit", value="percentunit")])
        .override_by_name("uptime", [DynamicConfigValue(id_val="unit", value=unit_of(DEVICE_UPTIME))]),
    )
    return board
