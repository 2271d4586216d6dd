"""Energy meters: overview -- every meter at a glance."""

from __future__ import annotations

from grafana_foundation_sdk.models.common import GraphDrawStyle
from grafana_foundation_sdk.models.dashboard import FieldColorModeId

from exporter.model.catalogue import (DEVICE_INFO, ENERGY_EXPORTED, ENERGY_IMPORTED, GAS, TARGET_UP,
                                      TARIFF_ENERGY_EXPORTED, TARIFF_ENERGY_IMPORTED, WARM_WATER, WATER)

from .common import (EXPORTED_1D, EXPORTED_30D, IMPORTED_1D, IMPORTED_30D, OVERVIEW, SITE_POWER, TARIFF_EXPORTED_1D,
                     TARIFF_IMPORTED_1D, Board, bargauge_panel, colour, daily_bars_panel, device_or_account, in_kwh,
                     increase, kwh, query, series, sum_by, table_panel, timeseries_panel, value_texts)

DESCRIPTION = ("Every meter at a glance: power now, energy imported and exported in the last 24 hours, "
               "the last 30 days and per day, the per-tariff registers a bill is made of, gas and water. "
               "Energy in kWh (the exporter's joules / 3.6e6). Click a device in a table for its detail board.")

PER_METER = "{{device}} {{meter}}"


def recent_energy(title: str, what: str, recorded: str, window: str):
    return (bargauge_panel(title, f"Energy {what} per device (and per meter of a cloud account) in the last {window}: "
                                  f"recording rule {recorded} (the device's own counter, else the sum of its tariff "
                                  "registers or of its phases).",
                           "kwatth", (6, 8), query(kwh(series(recorded)), PER_METER, instant=True))
            .color_scheme(colour(FieldColorModeId.CONTINUOUS_BL_PU)).decimals(2))


def tariff_table(title: str, description: str, imported: str, exported: str):
    return (table_panel(title, description, "kwatth", (8, 8),
                        query(imported, instant=True, table_format=True),
                        query(exported, instant=True, table_format=True),
                        renamed={"Value #A": "imported", "Value #B": "exported"})
            .decimals(3))


def build() -> Board:
    board = Board(OVERVIEW, DESCRIPTION)
    board.add(
        bargauge_panel("Power now", "Active power per device: its total, or the sum of its phases where it reports no "
                                    "total (recording rule device:energy_meter_active_power_watts:total). Negative: "
                                    "power flows out (export to the grid).",
                       "watt", (12, 8), query(series(SITE_POWER), PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.CONTINUOUS_GR_YL_RD)),
        table_panel("Devices", "What each configured device is, and whether the exporter can read it now.",
                    "none", (12, 8),
                    query(series(DEVICE_INFO), instant=True, table_format=True),
                    query(series(TARGET_UP), instant=True, table_format=True),
                    hidden=("Value #A", "__name__", "job", "instance"), renamed={"Value #B": "state"},
                    order={"device": 0, "vendor": 1, "model": 2, "serial": 3, "firmware": 4, "meter": 5, "Value #B": 6})
        .mappings(value_texts(**{"0": ("down", "red"), "1": ("up", "green")})),
        recent_energy("Imported in the last 24 hours", "imported", IMPORTED_1D, "24 hours"),
        recent_energy("Exported in the last 24 hours", "exported", EXPORTED_1D, "24 hours"),
        recent_energy("Imported in the last 30 days", "imported", IMPORTED_30D, "30 days"),
        recent_energy("Exported in the last 30 days", "exported", EXPORTED_30D, "30 days"),
        timeseries_panel("Power", "Active power per device (and per meter of a cloud account): its total, or the sum "
                                  "of its phases. Negative: power flows out.",
                         "watt", (24, 9), query(series(SITE_POWER), PER_METER)),
        timeseries_panel("Energy per interval", "Energy imported (up) and exported (down) per time bucket of at least "
                                                "an hour, per device, from its total registers.",
                         "kwatth", (24, 9),
                         query(device_or_account(ENERGY_IMPORTED, in_kwh(increase("$__interval"))),
                               PER_METER + " import", interval="1h"),
                         query(f"-1 * ({device_or_account(ENERGY_EXPORTED, in_kwh(increase('$__interval')))})",
                               PER_METER + " export", interval="1h"))
        .draw_style(GraphDrawStyle.BARS).fill_opacity(80).decimals(2),
    )
    board.row("Energy per day")
    board.add(
        # One panel per device: Grafana repeats it for each value of $device, four to a line (its
        # default maxPerRow), a device alone across the whole width.
        daily_bars_panel("Energy per day: $device", "Energy the device imported (up) and exported (down) on each of "
                                                    "the last 7 days, from the recording rules "
                                                    f"{IMPORTED_1D} and {EXPORTED_1D}: each bar covers the day before "
                                                    "the midnight it ends at.",
                         (6, 8),
                         query(kwh(series(IMPORTED_1D)), "{{meter}} imported"),
                         query(f"-1 * {kwh(series(EXPORTED_1D))}", "{{meter}} exported"))
        .repeat("device").repeat_direction("h"),
    )
    board.row("Tariffs")
    board.add(
        tariff_table("Tariff registers (meter readings)",
                     "The meter's registers per tariff, as on the bill: multiply a difference by that tariff's price.",
                     device_or_account(TARIFF_ENERGY_IMPORTED, in_kwh(sum_by(("tariff",)))),
                     device_or_account(TARIFF_ENERGY_EXPORTED, in_kwh(sum_by(("tariff",))))),
        tariff_table("Energy per tariff in the selected range",
                     "Imported and exported energy per tariff over the dashboard's time range: the quantities a bill "
                     "for that period charges.",
                     device_or_account(TARIFF_ENERGY_IMPORTED, in_kwh(increase("$__range", ("tariff",)))),
                     device_or_account(TARIFF_ENERGY_EXPORTED, in_kwh(increase("$__range", ("tariff",))))),
        tariff_table("Energy per tariff in the last 24 hours",
                     "Imported and exported energy per tariff in the last 24 hours: recording rules "
                     f"{TARIFF_IMPORTED_1D} and {TARIFF_EXPORTED_1D}.",
                     kwh(series(TARIFF_IMPORTED_1D)), kwh(series(TARIFF_EXPORTED_1D))),
    )
    board.row("Gas and water")
    board.add(
        bargauge_panel("Gas today", "Gas used today so far, per meter.", "m3", (12, 6),
                       query(f"sum by (vendor, device, meter) (increase({series(GAS)}[$__range]))",
                             PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.CONTINUOUS_BL_YL_RD)).decimals(3).time_from("now/d"),
        bargauge_panel("Water today", "Water used today so far, per meter (cold and warm water).", "m3", (12, 6),
                       query(f"sum by (vendor, device, meter) (increase({series(WATER)}[$__range])) or "
                             f"sum by (vendor, device, meter) (label_replace(increase({series(WARM_WATER)}[$__range]), "
                             '"meter", "$1 (warm)", "meter", "(.*)"))', PER_METER, instant=True))
        .color_scheme(colour(FieldColorModeId.CONTINUOUS_BL_PU)).decimals(3).time_from("now/d"),
    )
    return board
