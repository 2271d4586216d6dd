"""The text of the exposition: escaping, number formatting, sample lines and family headers of
the Prometheus text format 0.0.4 and OpenMetrics 1.0."""

from __future__ import annotations

from typing import Iterable

from ..model.catalogue import Metric
from ..model.errors import safe_text

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF_LINE = b"# EOF\n"


def escape_label_value(value: str) -> str:
    if not value.isascii():  # text from a device may hold lone surrogates, which UTF-8 cannot carry
        value = safe_text(value)
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    # The common cases first: whole numbers (counters, watts, joules from kWh with 3 decimals),
    # then floats whose shortest form has at most 15 digits (which the rounding below keeps).
    if value.__class__ is float:
        if value.is_integer():
            if -1e15 < value < 1e15:
                return str(int(value))
        elif value == value and value not in (_INF, _NINF):
            text = repr(value)
            if len(text) <= 16 and "e" not in text:
                return text
    elif value.__class__ is int and -10**15 < value < 10**15:
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (_INF, _NINF):
        return "+Inf" if value > 0 else "-Inf"
    # 15 significant digits drop the noise of unit conversions (2948.827 kWh * 3.6e6).
    rounded = float(f"{value:.15g}")
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    if rounded in (_INF, _NINF):  # the largest floats round up past the float range
        return repr(float(value))
    return repr(rounded)


_INF, _NINF = float("inf"), float("-inf")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def sample_line(name: str, pairs: Iterable[tuple[str, str]], value: float) -> str:
    return f"{name}{label_text(pairs)} {format_value(value)}\n"


# Rendered `,name="value"` text of label tuples, shared by every target (most series carry the
# same extra labels: phase, tariff, obis). Bounded: meter ids and the like make it grow, in
# entries and (a device may send long ids) in the length of what is kept.
_LABELS: dict[tuple, str] = {}
_LABELS_MAX = 4096
_LABELS_LONGEST = 256


def extra_label_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """`,k="v",...` for labels that follow the base labels (empty for none)."""
    text = _LABELS.get(pairs)
    if text is None:
        text = "".join(f',{k}="{escape_label_value(v)}"' for k, v in pairs)
        if len(text) <= _LABELS_LONGEST:
            if len(_LABELS) >= _LABELS_MAX:
                _LABELS.clear()
            _LABELS[pairs] = text
    return text


def base_label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`k="v",...` of a target's own labels (vendor, device), rendered once per target."""
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


def render_lines(samples: Iterable, base: str) -> dict[Metric, bytes]:
    """Samples grouped by family, rendered with the pre-rendered `base` labels in front."""
    samples = list(samples)
    return render_series([s.metric for s in samples], [s.labels for s in samples], [s.value for s in samples], base)


def render_series(metrics, labels, values, base: str, only=None) -> dict[Metric, bytes]:
    """Series given as parallel sequences, grouped by family and rendered with the
    pre-rendered `base` labels in front; with `only`, just the families in it."""
    out: dict[Metric, list[str]] = {}
    for metric, pairs, value in zip(metrics, labels, values):
        if only is not None and metric not in only:
            continue
        extra = extra_label_text(pairs) if pairs else ""
        if base:
            line = f"{metric.name}{{{base}{extra}}} {format_value(value)}\n"
        elif extra:
            line = f"{metric.name}{{{extra[1:]}}} {format_value(value)}\n"
        else:
            line = f"{metric.name} {format_value(value)}\n"
        lines = out.get(metric)
        if lines is None:
            out[metric] = [line]
        else:
            lines.append(line)
    return {metric: "".join(lines).encode() for metric, lines in out.items()}


def render_samples(samples: Iterable, base: tuple[tuple[str, str], ...]) -> dict[Metric, str]:
    """Group samples by family and render their lines with `base` labels in front."""
    return {metric: lines.decode() for metric, lines in render_lines(samples, base_label_text(base)).items()}


def is_info(metric: Metric) -> bool:
    return metric.name.endswith("_info") and metric.type == "gauge"


def headers(metric: Metric) -> tuple[str, str]:
    """(text 0.0.4 header, OpenMetrics header) of one family."""
    text = f"# HELP {metric.name} {escape_help(metric.help)}\n# TYPE {metric.name} {metric.type}\n"
    if is_info(metric):
        om_name, om_type = metric.name[: -len("_info")], "info"
    else:
        om_name, om_type = metric.om_name, metric.type
    om = f"# TYPE {om_name} {om_type}\n# HELP {om_name} {escape_help(metric.help)}\n"
    return text, om
