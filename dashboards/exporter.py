"""Energy meters: exporter health -- is every device being read?"""

from __future__ import annotations

from grafana_foundation_sdk.models.common import BigValueTextMode
from grafana_foundation_sdk.models.dashboard import FieldColorModeId

from exporter.model.catalogue import (BUILD_INFO, CONFIG_RELOAD_OK, COUNTER_REGRESSIONS, LAST_SUCCESS, MQTT_CONNECTED,
                                      POLL_DURATION, POLL_ERRORS, POLLS, PUSH_REJECTED, QUOTA_REMAINING,
                                      READINGS_RECEIVED, TARGET_UP, TOKEN_EXPIRY)

from .common import (EXPORTER, Board, bargauge_panel, colour, query, series, stat_panel, state_timeline_panel,
                     table_panel, thresholds, timeseries_panel, value_texts)

DESCRIPTION = ("Is every device being read? Targets up, poll durations and errors, cloud quota use and token "
               "expiry, configuration reloads, push sources. Click a device in a table for its detail board.")

# Colours of a silence: 5 minutes is a few missed polls, 15 minutes what the alerts wait for.
SILENCE = (("green", None), ("orange", 300), ("red", 900))
# Token expiry: red under 14 days (the EnergyMeterTokenExpiringSoon alert), orange under 30.
EXPIRY = (("red", None), ("orange", 14 * 86400), ("green", 30 * 86400))
UP_DOWN = {"0": ("down", "red"), "1": ("up", "green")}


def per_minute(metric, labels: str) -> str:
    selector = series(metric) if metric.base_labels else metric.name
    return f"sum by ({labels}) (rate({selector}[$__rate_interval])) * 60"


def build() -> Board:
    board = Board(EXPORTER, DESCRIPTION)
    board.add(
        stat_panel("Targets up", "Targets whose last poll succeeded.", "none", (4, 4),
                   query(f"sum({series(TARGET_UP)})", "up", instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "green")),
        stat_panel("Targets down", "Targets whose last poll failed.", "none", (4, 4),
                   query(f"count({series(TARGET_UP)} == 0) or vector(0)", "down", instant=True))
        .thresholds(thresholds(("green", None), ("red", 1))).color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        stat_panel("Longest since a successful poll", "The target that has gone longest without a successful poll.",
                   "s", (4, 4), query(f"max(time() - {series(LAST_SUCCESS)})", instant=True))
        .thresholds(thresholds(*SILENCE)).color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        stat_panel("Earliest token expiry", "The first API token to expire (Enphase).", "s", (4, 4),
                   query(f"min({series(TOKEN_EXPIRY)}) - time()", instant=True))
        .thresholds(thresholds(*EXPIRY)).color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        stat_panel("Last configuration reload", "Whether the last configuration reload succeeded (a failed one keeps "
                                                "the previous configuration running).",
                   "none", (4, 4), query(CONFIG_RELOAD_OK.name, "{{instance}}", instant=True))
        .mappings(value_texts(**{"0": ("failed", "red"), "1": ("ok", "green")}))
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        stat_panel("Version", "Exporter version.", "none", (4, 4), query(BUILD_INFO.name, "{{version}}", instant=True))
        .color_scheme(colour(FieldColorModeId.FIXED, "text")).text_mode(BigValueTextMode.NAME),
        state_timeline_panel("Target state", "Up (last poll succeeded) or down, per target.", "none", (24, 8),
                             query(series(TARGET_UP), "{{device}}"))
        .thresholds(thresholds(("red", None), ("green", 1))).mappings(value_texts(**UP_DOWN))
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        timeseries_panel("Poll duration", "How long each poll took (the last one at each point).", "s", (12, 8),
                         query(series(POLL_DURATION), "{{device}}")),
        timeseries_panel("Polls", "Polls per minute, per target (backoff after failures lowers it).", "opm", (12, 8),
                         query(per_minute(POLLS, "vendor, device"), "{{device}}")),
        timeseries_panel("Poll errors", "Failed polls per minute, by target and reason (what each reason means: "
                                        "docs/troubleshooting.md).",
                         "opm", (12, 8),
                         query(per_minute(POLL_ERRORS, "vendor, device, reason"), "{{device}} {{reason}}"))
        .no_value("no errors"),
        table_panel("Poll errors in the selected range", "Failed polls per target and reason over the time range.",
                    "short", (12, 8),
                    query(f"sum by (vendor, device, reason) (increase({series(POLL_ERRORS)}[$__range]))",
                          instant=True, table_format=True),
                    renamed={"Value": "errors"})
        .decimals(0).no_value("no errors"),
        bargauge_panel("Time since the last successful poll", "Per target.", "s", (12, 8),
                       query(f"time() - {series(LAST_SUCCESS)}", "{{device}}", instant=True))
        .thresholds(thresholds(*SILENCE)).color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        bargauge_panel("Counter regressions held back",
                       "Running totals that came in lower than already exported in the selected range (held back; see "
                       "docs/reliability.md).",
                       "short", (12, 8),
                       query(f"sum by (vendor, device) (increase({series(COUNTER_REGRESSIONS)}[$__range]))",
                             "{{device}}", instant=True))
        .thresholds(thresholds(("green", None), ("orange", 1))).color_scheme(colour(FieldColorModeId.THRESHOLDS))
        .decimals(0),
        timeseries_panel("Cloud API quota remaining", "Calls left in each quota window of rate-limited cloud APIs (the "
                                                      "exporter defers calls rather than exceed one).",
                         "short", (12, 8), query(QUOTA_REMAINING.name, "{{api}} {{scope}} per {{window}}"))
        .decimals(0).min(0),
        bargauge_panel("Token expiry", "Time left until each API token expires. Red: under 14 days (the "
                                       "EnergyMeterTokenExpiringSoon alert).",
                       "s", (12, 8), query(f"{series(TOKEN_EXPIRY)} - time()", "{{device}}", instant=True))
        .thresholds(thresholds(*EXPIRY)).color_scheme(colour(FieldColorModeId.THRESHOLDS)),
    )
    board.row("Push sources")
    board.add(
        stat_panel("MQTT brokers", "Whether the exporter is connected to each configured MQTT broker.", "none", (6, 8),
                   query(MQTT_CONNECTED.name, "{{broker}}", instant=True))
        .mappings(value_texts(**{"0": ("disconnected", "red"), "1": ("connected", "green")}))
        .color_scheme(colour(FieldColorModeId.THRESHOLDS)),
        timeseries_panel("Pushed readings received", "Readings per minute that cloud-account targets "
                                                     "received (subscription messages and query results, duplicates "
                                                     "included).", "opm", (9, 8),
                         query(per_minute(READINGS_RECEIVED, "vendor, device"), "{{device}}")),
        timeseries_panel("Rejected pushes", "Messages the push listeners and MQTT subscriptions turned away, per "
                                            "minute, by reason (unknown serial, malformed, too large, not allowed).",
                         "opm", (9, 8),
                         query(per_minute(PUSH_REJECTED, "listener, reason"), "{{listener}} {{reason}}")),
    )
    return board
