"""The metric catalogue: naming rules, and which vendors really emit what (the generated tables of
the documentation are checked in tests/test_docs.py)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path


from exporter.model import catalogue as M

ROOT = Path(__file__).resolve().parents[1]


def test_names_follow_the_prometheus_conventions():
    names = [m.name for m in M.all_metrics()]
    assert len(names) == len(set(names))
    for m in M.all_metrics():
        assert re.fullmatch(r"(energy_meter|process)_[a-z0-9_]+", m.name), m.name
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        if m.obis_by:
            assert m.obis_by in m.labels, m.name
        assert "phase" not in m.labels or m.name.startswith("energy_meter_phase_") or "phase" in m.name, m.name


def corpus_modules():
    """tests/corpus_<vendor>.py: `readings(root)` parses the vendor's corpus, and an optional
    `documented()` parses shapes the vendor's documents show but no capture holds."""
    return sorted(p.stem for p in (ROOT / "tests").glob("corpus_*.py"))


def test_vendor_claims_match_what_the_parsers_emit(conformance):
    emitted: dict[str, set[str]] = {}
    checked = set()
    for module_name in corpus_modules():
        vendor = module_name.removeprefix("corpus_")
        module = importlib.import_module(f"tests.{module_name}")
        checked.add(vendor)
        documented = getattr(module, "documented", lambda: ())()
        for _, reading in [*module.readings(conformance), *documented]:
            for sample in reading.samples:
                emitted.setdefault(sample.metric.name, set()).add(vendor)
            if reading.devices:
                emitted.setdefault(M.DEVICE_INFO.name, set()).add(vendor)
    problems = []
    for m in M.all_metrics():
        if not m.vendors:
            continue  # the exporter's own series
        claimed = set(m.vendors)
        unknown = claimed - checked
        if unknown:
            problems.append(f"{m.name}: claims {sorted(unknown)} but no tests/corpus_<vendor>.py exists")
        really = emitted.get(m.name, set())
        if m.name.startswith("energy_meter_exporter_"):
            continue  # the exporter's own state (tokens, readings received) is not in captured bodies
        if claimed & checked != really:
            problems.append(f"{m.name}: claims {sorted(claimed & checked)}, emitted by {sorted(really)}")
    assert not problems, "\n".join(problems)


def test_simulator_bodies_are_the_corpus(conformance):
    data = ROOT / "simulators" / "data" / "homewizard"
    for path in data.rglob("*.json"):
        original = conformance / "homewizard" / path.relative_to(data)
        assert original.read_bytes() == path.read_bytes(), path
