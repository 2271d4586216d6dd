"""What the four boards share: the data source and vendor/device variables, the links between
the boards, selectors, units, and panels with this project's defaults.

Metric names come from the catalogue (exporter/model/catalogue.py) and from the recording rules
(prometheus/recording.yml), never from strings typed into a panel, so that a renamed metric
breaks the generator instead of leaving a panel empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import count
from typing import Callable, Iterable

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, prometheus, stat, statetimeline, table
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import prometheus as prometheus_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DynamicConfigValue

from exporter.model.catalogue import METRICS_BY_NAME, TARGET_UP, Metric

# Every query and variable goes through the board's `datasource` variable: the files provision
# into any Grafana without import inputs, whatever its Prometheus data source is called.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "energy-meter-exporter"
FILTER = 'vendor=~"$vendor", device=~"$device"'
JOULES_PER_KWH = "3.6e6"


@dataclass(frozen=True)
class BoardRef:
    uid: str
    title: str
    file: str  # under grafana/dashboards/


OVERVIEW = BoardRef("energy-meter-overview", "Energy meters: overview", "energy-meter-overview.json")
DEVICE = BoardRef("energy-meter-device", "Energy meters: device detail", "energy-meter-device.json")
SOLAR = BoardRef("energy-meter-solar", "Energy meters: solar", "energy-meter-solar.json")
EXPORTER = BoardRef("energy-meter-exporter", "Energy meters: exporter health", "energy-meter-exporter.json")


# --- recorded series (prometheus/recording.yml) ---------------------------------------------------
# Labels vendor and device, and installation and meter for the meters of a cloud account.
SITE_POWER = "device:energy_meter_active_power_watts:total"
IMPORTED_1D = "device:energy_meter_energy_imported_joules:increase1d"
EXPORTED_1D = "device:energy_meter_energy_exported_joules:increase1d"
TARIFF_IMPORTED_1D = "device_tariff:energy_meter_energy_imported_joules:increase1d"
TARIFF_EXPORTED_1D = "device_tariff:energy_meter_energy_exported_joules:increase1d"
IMPORTED_30D = "device:energy_meter_energy_imported_joules:increase30d"
EXPORTED_30D = "device:energy_meter_energy_exported_joules:increase30d"
PRODUCTION_POWER = "device:energy_meter_production_power_watts:total"
PRODUCED_1D = "device:energy_meter_production_energy_joules:increase1d"
SELF_CONSUMPTION_1D = "device:energy_meter_self_consumption:ratio1d"
SELF_SUFFICIENCY_1D = "device:energy_meter_self_sufficiency:ratio1d"
BATTERY_POWER = "device:energy_meter_battery_power_watts:total"

# Labels that tell a cloud account's meters apart (the energy_meter_account_* series).
ACCOUNT_LABELS = ("installation", "meter")


# --- selectors ---------------------------------------------------------------------------------

def name_of(metric: Metric | str) -> str:
    return metric if isinstance(metric, str) else metric.name


def series(metric: Metric | str, extra: str = "") -> str:
    """The metric filtered by the board's vendor and device variables (every device series and
    every recorded series carries both labels)."""
    matchers = FILTER + (", " + extra if extra else "")
    return f"{name_of(metric)}{{{matchers}}}"


def kwh(expr: str) -> str:
    """Joules as kWh, the unit of every energy panel."""
    return f"{expr} / {JOULES_PER_KWH}"


def by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def account_twin(metric: Metric) -> Metric | None:
    """The catalogue's per-meter series of a cloud account for a device metric, if there is one
    (energy_meter_x -> energy_meter_account_x)."""
    return METRICS_BY_NAME.get(metric.name.replace("energy_meter_", "energy_meter_account_", 1))


def device_or_account(metric: Metric, shape: Callable[[str, tuple[str, ...]], str] | None = None,
                      by: tuple[str, ...] = ("vendor", "device")) -> str:
    """`shape(selector, labels)` of the metric, or of its cloud-account twin with the account's
    labels added to `labels`: a device reports one of the two, never both."""
    shape = shape or (lambda selector, _labels: selector)
    expr = shape(series(metric), by)
    twin = account_twin(metric)
    if twin is not None:
        expr += " or " + shape(series(twin), by + ACCOUNT_LABELS)
    return expr


# Shapes for device_or_account: what to make of a selector, given the labels that tell its
# devices (and meters) apart.

def increase(window: str, labels: tuple[str, ...] = ()):
    """The increase over `window` per device (and per `labels`)."""
    return lambda selector, device_labels: f"sum by ({by(device_labels + labels)}) (increase({selector}[{window}]))"


def in_kwh(shape):
    """Another shape's joules as kWh."""
    return lambda selector, device_labels: kwh(shape(selector, device_labels))


def sum_by(labels: tuple[str, ...] = ()):
    """The sum per device (and per `labels`)."""
    return lambda selector, device_labels: f"sum by ({by(device_labels + labels)}) ({selector})"


# --- units ------------------------------------------------------------------------------------
# Grafana's unit ids for the catalogue's base units. Joules never reach a panel as joules: the
# queries divide by 3.6e6, so their unit is kWh.
GRAFANA_UNITS = {"W": "watt", "V": "volt", "A": "amp", "Hz": "hertz", "VA": "voltamp", "var": "voltampreact",
                 "J": "kwatth", "m3": "m3", "s": "s", "dBm": "dBm", "": "none"}


def unit_of(metric: Metric) -> str:
    return GRAFANA_UNITS[metric.unit]


# --- links -------------------------------------------------------------------------------------

def board_links() -> list[dashboard.DashboardLink]:
    """A drop-down of every board carrying the project's tag, keeping time range and variables."""
    return [dashboard.DashboardLink("Energy meter boards").type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG]).as_dropdown(True).icon("external link").include_vars(True).keep_time(True)
            .target_blank(False)]


# The device board for the row's device: Grafana fills ${__value.raw} with the clicked cell and
# ${__data.fields.vendor} with the row's vendor column.
DEVICE_DRILL_DOWN_URL = (f"/d/{DEVICE.uid}?${{datasource:queryparam}}&var-vendor=${{__data.fields.vendor}}"
                         "&var-device=${__value.raw}&${__url_time_range}")


def device_drill_down() -> DynamicConfigValue:
    return DynamicConfigValue(id_val="links", value=[
        {"title": "Device detail of ${__value.raw}", "url": DEVICE_DRILL_DOWN_URL, "targetBlank": False}])


# --- variables ---------------------------------------------------------------------------------
ALL = model.VariableOption(selected=True, text=["All"], value=["$__all"])


def variables() -> list:
    """`datasource`, then `vendor` and `device` (the device list follows the vendor choice); the
    exporter's target_up lists every configured target, answering or not."""
    up = TARGET_UP.name
    return [
        dashboard.DatasourceVariable("datasource").id("datasource").label("Data source").type("prometheus")
        .include_all(False).multi(False),
        _label_variable("vendor", "Vendor", f"label_values({up}, vendor)"),
        _label_variable("device", "Device", f'label_values({up}{{vendor=~"$vendor"}}, device)'),
    ]


def _label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (dashboard.QueryVariable(name).id(name).label(label).datasource(DATASOURCE).query(query)
            .multi(True).include_all(True).current(ALL).refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC))


# --- queries -----------------------------------------------------------------------------------

def query(expr: str, legend: str = "__auto", *, instant: bool = False, table_format: bool = False,
          interval: str | None = None) -> prometheus.Dataquery:
    """A PromQL query through the board's data source; `interval` is its minimum step."""
    q = prometheus.Dataquery().expr(expr).legend_format(legend).editor_mode(prometheus_model.QueryEditorMode.CODE)
    q = q.datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if interval:
        q = q.interval(interval)
    return q.format(prometheus_model.PromQueryFormat.TABLE) if table_format else q


def _with_targets(panel, targets: Iterable[prometheus.Dataquery]):
    for ref, target in zip("ABCDEFGH", targets):
        panel.with_target(target.ref_id(ref))
    return panel


# --- panels ------------------------------------------------------------------------------------
# Each returns an SDK builder with the title, description, unit, size and queries set; callers
# chain what is particular to a panel (colours, thresholds, overrides).

def _common(panel, title: str, description: str, unit: str, size: tuple[int, int], targets):
    width, height = size
    panel = (panel.title(title).description(description).datasource(DATASOURCE).unit(unit)
             .span(width).height(height))
    panel.thresholds(thresholds(("green", None)))
    panel.mappings([])
    return _with_targets(panel, targets)


def thresholds(*steps: tuple[str, float | None]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=value, color=color) for color, value in steps])


def colour(mode: model.FieldColorModeId, fixed: str | None = None) -> dashboard.FieldColor:
    scheme = dashboard.FieldColor().mode(mode)
    return scheme.fixed_color(fixed) if fixed else scheme


def value_texts(**texts: tuple[str, str]) -> list:
    """A value mapping: value -> (text, colour), e.g. `value_texts(**{"0": ("down", "red")})`."""
    return [model.ValueMap(options={value: model.ValueMappingResult(text=text, color=color, index=i)
                                    for i, (value, (text, color)) in enumerate(texts.items())})]


def special_text(match: model.SpecialValueMatch, text: str) -> list:
    return [model.SpecialValueMap(options=model.DashboardSpecialValueMapOptions(
        match=match, result=model.ValueMappingResult(text=text, index=0)))]


def _last_value() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries_panel(title: str, description: str, unit: str, size: tuple[int, int], *targets) -> timeseries.Panel:
    panel = _common(timeseries.Panel(), title, description, unit, size, targets)
    return (panel.color_scheme(colour(model.FieldColorModeId.PALETTE_CLASSIC))
            .draw_style(common.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
            .show_points(common.VisibilityMode.NEVER).span_nulls(False)
            .axis_placement(common.AxisPlacement.AUTO).line_interpolation(common.LineInterpolation.LINEAR)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NONE).group("A"))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.OFF))
            .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(True))
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING)))


def daily_bars_panel(title: str, description: str, size: tuple[int, int], *targets) -> timeseries.Panel:
    """Energy per day as bars. Each point is a recorded 24-hour increase taken at a midnight (the
    panel's step is one day); the bar is drawn over the day before that midnight, the day it
    measures."""
    return (timeseries_panel(title, description, "kwatth", size, *targets)
            .draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).bar_alignment(common.BarAlignment.BEFORE)
            .decimals(2).interval("1d").time_from("7d"))


def stat_panel(title: str, description: str, unit: str, size: tuple[int, int], *targets,
               graph: bool = False) -> stat.Panel:
    panel = _common(stat.Panel(), title, description, unit, size, targets)
    return (panel.color_mode(common.BigValueColorMode.VALUE)
            .graph_mode(common.BigValueGraphMode.AREA if graph else common.BigValueGraphMode.NONE)
            .justify_mode(common.BigValueJustifyMode.AUTO).orientation(common.VizOrientation.AUTO)
            .text_mode(common.BigValueTextMode.AUTO).reduce_options(_last_value()))


def bargauge_panel(title: str, description: str, unit: str, size: tuple[int, int], *targets) -> bargauge.Panel:
    panel = _common(bargauge.Panel(), title, description, unit, size, targets)
    return (panel.display_mode(common.BarGaugeDisplayMode.GRADIENT).orientation(common.VizOrientation.HORIZONTAL)
            .show_unfilled(True).value_mode(common.BarGaugeValueMode.COLOR).min_viz_height(16).min_viz_width(8)
            .reduce_options(_last_value()))


def gauge_panel(title: str, description: str, unit: str, size: tuple[int, int], *targets) -> gauge.Panel:
    panel = _common(gauge.Panel(), title, description, unit, size, targets)
    return (panel.orientation(common.VizOrientation.AUTO).show_threshold_labels(False)
            .show_threshold_markers(True).reduce_options(_last_value()))


def state_timeline_panel(title: str, description: str, unit: str, size: tuple[int, int],
                         *targets) -> statetimeline.Panel:
    panel = _common(statetimeline.Panel(), title, description, unit, size, targets)
    return (panel.fill_opacity(80).line_width(0).align_value(common.TimelineValueAlignment.LEFT).merge_values(True)
            .row_height(0.9).show_value(common.VisibilityMode.NEVER)
            .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(False))
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)
                     .sort(common.SortOrder.NONE)))


def table_panel(title: str, description: str, unit: str, size: tuple[int, int], *targets,
                hidden: Iterable[str] = (), renamed: dict[str, str] | None = None,
                order: dict[str, int] | None = None) -> table.Panel:
    """A table of instant queries, one row per series, the queries' values side by side (merge).
    Every table drills down: a click on a device opens the device board for it, so each query
    keeps the vendor and device labels."""
    panel = _common(table.Panel(), title, description, unit, size, targets)
    panel = (panel.color_scheme(colour(model.FieldColorModeId.THRESHOLDS)).cell_height(common.TableCellHeight.SM)
             .show_header(True)
             .footer(common_builders.TableFooterOptions().show(False).reducer(["sum"]).fields("")))
    if len(targets) > 1:
        panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    excluded = {name: True for name in ("Time", *hidden)}
    panel.with_transformation(model.DataTransformerConfig(id_val="organize", options={
        "excludeByName": excluded, "renameByName": renamed or {}, "indexByName": order or {}}))
    return panel.override_by_name("device", [device_drill_down()])


# --- boards ------------------------------------------------------------------------------------

class Board:
    """A dashboard under construction: panels and rows in reading order, numbered in that order
    and laid out left to right, a new line when 24 columns are full."""

    def __init__(self, ref: BoardRef, description: str) -> None:
        self.ref = ref
        self._ids = count(1)
        self.builder = (
            dashboard.Dashboard(ref.title).uid(ref.uid).description(description).tags([TAG])
            .editable().tooltip(model.DashboardCursorSync.CROSSHAIR).timezone("browser")
            .time("now-24h", "now").refresh("30s").fiscal_year_start_month(0).live_now(False).week_start("")
            .version(1).annotations([]).links(board_links()).variables(variables())
        )

    def add(self, *panels) -> "Board":
        for panel in panels:
            self.builder.with_panel(panel.id(next(self._ids)))
        return self

    def row(self, title: str) -> "Board":
        self.builder.with_row(dashboard.Row(title).id(next(self._ids)).collapsed(False))
        return self

    def json(self) -> str:
        """The board as committed: keys sorted, two-space indent, a final newline."""
        return json.dumps(self.builder.build(), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
