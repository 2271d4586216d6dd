"""Energy meters: solar -- production against consumption, inverters, batteries, cloud places."""

from __future__ import annotations

from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import FieldColorModeId, SpecialValueMatch

from exporter.model.catalogue import (BATTERY_STATE_OF_CHARGE, BATTERY_UNIT_STATE_OF_CHARGE, CONSUMPTION_ENERGY,
                                      CONSUMPTION_POWER, ENERGY_EXPORTED, ENERGY_IMPORTED, INVERTER_LAST_REPORT,
                                      INVERTER_MAX_POWER, INVERTER_POWER, PHASE_PRODUCTION_POWER,
                                      PLACE_DAILY_GRID_EXPORT, PLACE_DAILY_GRID_IMPORT, PLACE_DAILY_SELF_USE,
                                      PLACE_DAILY_YIELD, PRODUCTION_ENERGY)

from .common import (BATTERY_POWER, PRODUCED_1D, PRODUCTION_POWER, SELF_CONSUMPTION_1D, SELF_SUFFICIENCY_1D, SITE_POWER,
                     SOLAR, Board, bargauge_panel, colour, daily_bars_panel, gauge_panel, kwh, query, series,
                     special_text, stat_panel, table_panel, thresholds, timeseries_panel)

DESCRIPTION = ("Solar production against consumption, self-consumption and self-sufficiency, the inverters and the "
               "batteries. Production and consumption come from gateways that measure both (Enphase with CTs).")

PER_DEVICE = "{{device}}"


def per_device(expr: str) -> str:
    return f"sum by (vendor, device) ({expr})"


PRODUCTION = series(PRODUCTION_POWER)
CONSUMPTION = per_device(series(CONSUMPTION_POWER))
# Solar power the house uses itself now: the production, or the consumption when it is smaller.
SELF_USED = f"(({PRODUCTION} <= {CONSUMPTION}) or {CONSUMPTION})"


def range_increase(metric) -> str:
    return kwh(per_device(f"increase({series(metric)}[$__range])"))


def energy_stat(title: str, description: str, expr: str, fixed: str, time_from: str | None):
    panel = (stat_panel(title, description, "kwatth", (6, 5), query(expr, PER_DEVICE, instant=True))
             .color_scheme(colour(FieldColorModeId.FIXED, fixed)).decimals(2))
    return panel.time_from(time_from) if time_from else panel


def share_stat(title: str, description: str, expr: str, nothing: str, size: tuple[int, int], instant: bool):
    return (stat_panel(title, description, "percentunit", size, query(expr, PER_DEVICE, instant=instant))
            .color_scheme(colour(FieldColorModeId.FIXED, "green")).decimals(0)
            .mappings(special_text(SpecialValueMatch.NA_N, nothing)))


def build() -> Board:
    board = Board(SOLAR, DESCRIPTION)
    board.add(
        stat_panel("Production now", f"Solar power now (recording rule {PRODUCTION_POWER}).", "watt", (6, 5),
                   query(PRODUCTION, PER_DEVICE), graph=True)
        .color_scheme(colour(FieldColorModeId.FIXED, "yellow")),
        stat_panel("Consumption now", "The house's consumption now.", "watt", (6, 5),
                   query(CONSUMPTION, PER_DEVICE), graph=True)
        .color_scheme(colour(FieldColorModeId.FIXED, "blue")),
        share_stat("Self-consumption now", "Share of the solar power used in the house right now.",
                   f"{SELF_USED} / {PRODUCTION}", "no production", (6, 5), instant=False).min(0).max(1),
        share_stat("Self-sufficiency now", "Share of the house's consumption covered by solar power right now.",
                   f"{SELF_USED} / {CONSUMPTION}", "no consumption", (6, 5), instant=False).min(0).max(1),
        timeseries_panel("Production and consumption", "Solar production, house consumption and the grid (positive: "
                                                       "import) of devices that measure production.",
                         "watt", (24, 9),
                         query(PRODUCTION, PER_DEVICE + " production"),
                         query(CONSUMPTION, PER_DEVICE + " consumption"),
                         query(f"{series(SITE_POWER)} and on (vendor, device) {PRODUCTION}", PER_DEVICE + " grid")),
        energy_stat("Produced in the last 24 hours", "Solar energy of the last 24 hours (recording rule "
                                                     f"{PRODUCED_1D}).",
                    kwh(series(PRODUCED_1D)), "yellow", None),
        energy_stat("Consumed in the last 24 hours", "The house's consumption in the last 24 hours.",
                    range_increase(CONSUMPTION_ENERGY), "blue", "24h"),
        energy_stat("Produced this month", "Solar energy this month so far.", range_increase(PRODUCTION_ENERGY),
                    "yellow", "now/M"),
        energy_stat("Consumed this month", "The house's consumption this month so far.",
                    range_increase(CONSUMPTION_ENERGY), "blue", "now/M"),
        share_stat("Self-consumption (selected range)", "Share of the energy produced in the time range that was used "
                                                        "in the house: 1 - exported / produced (needs production and "
                                                        "grid export from the same device).",
                   f"clamp_min(1 - {per_device(f'increase({series(ENERGY_EXPORTED)}[$__range])')} / "
                   f"{per_device(f'increase({series(PRODUCTION_ENERGY)}[$__range])')}, 0)",
                   "no production", (6, 6), instant=True),
        share_stat("Self-sufficiency (selected range)", "Share of the energy consumed in the time range that did not "
                                                        "come from the grid: 1 - imported / consumed.",
                   f"clamp_min(1 - {per_device(f'increase({series(ENERGY_IMPORTED)}[$__range])')} / "
                   f"{per_device(f'increase({series(CONSUMPTION_ENERGY)}[$__range])')}, 0)",
                   "no consumption", (6, 6), instant=True),
        timeseries_panel("Self-consumption and self-sufficiency over 24 hours",
                         f"Each point: the shares of the 24 hours before it (recording rules {SELF_CONSUMPTION_1D} "
                         f"and {SELF_SUFFICIENCY_1D}).",
                         "percentunit", (12, 6),
                         query(series(SELF_CONSUMPTION_1D), PER_DEVICE + " self-consumption"),
                         query(series(SELF_SUFFICIENCY_1D), PER_DEVICE + " self-sufficiency"))
        .min(0).max(1),
        daily_bars_panel("Solar energy per day",
                         f"Solar energy of each of the last 7 days (recording rule {PRODUCED_1D}): each bar covers the "
                         "day before the midnight it ends at.",
                         (24, 8), query(kwh(series(PRODUCED_1D)), PER_DEVICE)),
    )
    board.row("Inverters")
    board.add(
        timeseries_panel("Inverter power", "AC power of each micro-inverter (as last reported to the gateway).", "watt",
                         (12, 9), query(series(INVERTER_POWER), "{{inverter}}"))
        .stacking(StackingConfig().mode(StackingMode.NORMAL).group("A")),
        bargauge_panel("Inverter load", "Each inverter's power against the highest it ever reported.",
                       "percentunit", (12, 9),
                       query(f"{series(INVERTER_POWER)} / {series(INVERTER_MAX_POWER)}", "{{inverter}}", instant=True))
        .color_scheme(colour(FieldColorModeId.CONTINUOUS_GR_YL_RD)).decimals(0).min(0).max(1),
        timeseries_panel("Production per phase", "Solar production per phase.", "watt", (12, 8),
                         query(series(PHASE_PRODUCTION_POWER), "{{device}} {{phase}}")),
        bargauge_panel("Time since each inverter reported", "Micro-inverters report to the gateway every few minutes "
                                                            "while the sun is up; silence in daylight means a fault.",
                       "s", (12, 8), query(f"time() - {series(INVERTER_LAST_REPORT)}", "{{inverter}}", instant=True))
        .thresholds(thresholds(("green", None), ("orange", 1800), ("red", 86400)))
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)),
    )
    board.row("Batteries")
    charge = f"{series(BATTERY_STATE_OF_CHARGE)} or {series(BATTERY_UNIT_STATE_OF_CHARGE)}"
    board.add(
        gauge_panel("Battery state of charge", "State of charge of each battery (and each unit of a multi-unit "
                                               "battery).",
                    "percentunit", (8, 8), query(charge, "{{device}} {{battery}}", instant=True))
        .thresholds(thresholds(("red", None), ("orange", 0.15), ("green", 0.4)))
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)).decimals(0).min(0).max(1),
        timeseries_panel("Battery state of charge over time", "State of charge of each battery.", "percentunit",
                         (8, 8), query(charge, "{{device}} {{battery}}")).min(0).max(1),
        timeseries_panel("Battery power", "Power out of (positive: discharging) or into (negative: charging) the "
                                          "batteries of a device, all together (recording rule "
                                          f"{BATTERY_POWER}).",
                         "watt", (8, 8), query(series(BATTERY_POWER), PER_DEVICE)),
    )
    board.row("Places (IAMMETER cloud)")
    place_figures = (PLACE_DAILY_YIELD, PLACE_DAILY_SELF_USE, PLACE_DAILY_GRID_IMPORT, PLACE_DAILY_GRID_EXPORT)
    board.add(
        table_panel("Places today", "A cloud place's own daily figures (solar yield, grid import and export, "
                                    "self-use), as the cloud computes them for the current day.",
                    "kwatth", (24, 6),
                    *(query(kwh(series(metric, 'day="current"')), instant=True, table_format=True)
                      for metric in place_figures),
                    hidden=("__name__", "job", "instance", "day"),
                    renamed={"Value #A": "solar yield", "Value #B": "self-use", "Value #C": "grid import",
                             "Value #D": "grid export"})
        .decimals(2),
    )
    return board
