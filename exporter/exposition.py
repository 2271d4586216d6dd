"""Rendering of the Prometheus text format 0.0.4 and OpenMetrics 1.0.

Lines are rendered when a target's data changes, never on scrape. The cache holds, per metric
family and per target, that target's rendered sample lines; a scrape writes each family's
header once and joins the cached lines of every target under it (a family must not be split,
and a second `# TYPE` for one name would fail the scrape). The joined body is cached per
generation, so several Prometheus servers scraping the same state cost one render.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Iterable

from .catalogue import Metric

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    # 15 significant digits drop the noise of unit conversions (2948.827 kWh * 3.6e6).
    value = float(f"{value:.15g}")
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def sample_line(name: str, pairs: Iterable[tuple[str, str]], value: float) -> str:
    return f"{name}{label_text(pairs)} {format_value(value)}\n"


def is_info(metric: Metric) -> bool:
    return metric.name.endswith("_info") and metric.kind == "gauge"


def headers(metric: Metric) -> tuple[str, str]:
    """(text 0.0.4 header, OpenMetrics header) of one family."""
    text = f"# HELP {metric.name} {escape_help(metric.help)}\n# TYPE {metric.name} {metric.kind}\n"
    if is_info(metric):
        om_name, om_type = metric.name[: -len("_info")], "info"
    else:
        om_name, om_type = metric.om_name, metric.kind
    om = f"# TYPE {om_name} {om_type}\n# HELP {om_name} {escape_help(metric.help)}\n"
    return text, om


@dataclass
class _Family:
    metric: Metric
    text_header: str
    om_header: str
    fragments: dict[str, str] = field(default_factory=dict)  # owner -> rendered lines
    joined: str | None = None  # cache of "".join(fragments), dropped on change


class FamilyCache:
    """Rendered sample lines per family and owner (a target, or the exporter itself)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self.generation = 0
        self._bodies: dict[tuple[bool, bool], tuple[int, bytes]] = {}

    def _family(self, metric: Metric) -> _Family:
        family = self._families.get(metric.name)
        if family is None:
            text, om = headers(metric)
            family = self._families[metric.name] = _Family(metric, text, om)
        return family

    def set_fragments(self, owner: str, fragments: dict[Metric, str], scope: Iterable[Metric] | None = None) -> bool:
        """Replace `owner`'s lines in the families of `scope` (default: all families) with
        `fragments`. Returns whether anything changed."""
        changed = False
        seen = set()
        for metric, lines in fragments.items():
            seen.add(metric.name)
            family = self._family(metric)
            if family.fragments.get(owner) != lines:
                family.fragments[owner] = lines
                family.joined = None
                changed = True
        names = (m.name for m in scope) if scope is not None else list(self._families)
        for name in names:
            if name in seen:
                continue
            family = self._families.get(name)
            if family is not None and family.fragments.pop(owner, None) is not None:
                family.joined = None
                changed = True
        if changed:
            self.generation += 1
        return changed

    def drop_owner(self, owner: str, scope: Iterable[Metric] | None = None) -> None:
        self.set_fragments(owner, {}, scope)

    def fragments_of(self, owner: str) -> dict[Metric, str]:
        """One owner's rendered lines per family, in scrape order."""
        return {f.metric: f.fragments[owner] for f in self._families.values() if f.fragments.get(owner)}

    def fragment(self, metric: Metric, owner: str) -> str | None:
        family = self._families.get(metric.name)
        return family.fragments.get(owner) if family else None

    def owners(self, metric: Metric) -> list[str]:
        family = self._families.get(metric.name)
        return list(family.fragments) if family else []

    def body(self, openmetrics: bool) -> str:
        parts: list[str] = []
        for family in self._families.values():
            if not family.fragments:
                continue
            if family.joined is None:
                family.joined = "".join(family.fragments.values())
            parts.append(family.om_header if openmetrics else family.text_header)
            parts.append(family.joined)
        if openmetrics:
            parts.append("# EOF\n")
        return "".join(parts)

    def encoded(self, openmetrics: bool, compress: bool) -> bytes:
        """The whole body as bytes, cached until the next change."""
        key = (openmetrics, compress)
        cached = self._bodies.get(key)
        if cached and cached[0] == self.generation:
            return cached[1]
        data = self.body(openmetrics).encode("utf-8")
        if compress:
            data = gzip.compress(data, compresslevel=3)
        self._bodies[key] = (self.generation, data)
        return data


def render_samples(samples: Iterable, base: tuple[tuple[str, str], ...]) -> dict[Metric, str]:
    """Group samples by family and render their lines with `base` labels in front."""
    out: dict[Metric, list[str]] = {}
    for sample in samples:
        out.setdefault(sample.metric, []).append(
            sample_line(sample.metric.name, base + sample.labels, sample.value)
        )
    return {metric: "".join(lines) for metric, lines in out.items()}
