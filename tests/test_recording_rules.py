"""Recording rules (prometheus/recording.yml): promtool's checks and unit tests, every rule
covered by a unit test, only catalogue metrics queried, and the rules wired into the compose
stack's Prometheus."""

from __future__ import annotations

import re
import subprocess

import yaml

from exporter.model.catalogue import METRICS_BY_NAME

from .conftest import ROOT, require_binary

RECORDING = ROOT / "prometheus" / "recording.yml"
RECORDING_TEST = ROOT / "prometheus" / "recording.test.yml"
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

# Names dashboards and Kubernetes manifests are built on: they must not change.
FIXED_NAMES = {
    "device:energy_meter_active_power_watts:total",
    "device:energy_meter_energy_imported_joules:increase1d",
    "device:energy_meter_energy_exported_joules:increase1d",
    "device_tariff:energy_meter_energy_imported_joules:increase1d",
    "device_tariff:energy_meter_energy_exported_joules:increase1d",
    "device:energy_meter_energy_imported_joules:increase30d",
    "device:energy_meter_energy_exported_joules:increase30d",
    "device:energy_meter_production_power_watts:total",
    "device:energy_meter_production_energy_joules:increase1d",
    "device:energy_meter_self_consumption:ratio1d",
    "device:energy_meter_self_sufficiency:ratio1d",
    "device:energy_meter_battery_power_watts:total",
}
# level:metric:operations, the metric part an energy_meter_ name
RULE_NAME = re.compile(r"^[a-z_]+:energy_meter_[a-z0-9_]+:[a-z0-9_]+$")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RECORDING.read_text())["groups"] for r in g["rules"]]


def records() -> list[str]:
    return [r["record"] for r in rules()]


def test_promtool_check_rules_passes():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RECORDING)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "test", "rules", str(RECORDING_TEST)], capture_output=True, text=True,
                            cwd=RECORDING_TEST.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_recorded_name_is_checked_by_a_unit_test():
    tests = yaml.safe_load(RECORDING_TEST.read_text())
    assert tests["rule_files"] == ["recording.yml"]
    checked = {name for case in tests["tests"] for check in case.get("promql_expr_test", [])
               for name in re.findall(r"[a-z_]+:energy_meter_[a-z0-9_]+:[a-z0-9_]+", check["expr"])}
    assert set(records()) - checked == set(), "recorded names no promql_expr_test queries"


def test_the_fixed_names_exist_once_and_every_name_follows_level_metric_operations():
    names = records()
    assert len(names) == len(set(names)), "a name recorded twice"
    assert FIXED_NAMES <= set(names)
    assert [n for n in names if not RULE_NAME.match(n)] == []


def test_every_rule_says_what_it_is_for():
    lines = RECORDING.read_text().splitlines()
    uncommented = [line.strip() for i, line in enumerate(lines)
                   if line.strip().startswith("- record:") and not lines[i - 1].strip().startswith("#")]
    assert uncommented == []


def test_rules_query_only_catalogue_metrics_and_recorded_names():
    """A renamed or removed metric would leave a rule recording nothing, without any error."""
    known = set(METRICS_BY_NAME) | set(records())
    unknown = set()
    for rule in rules():
        expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", rule["expr"])
        for name in re.findall(r"\b(?:energy_meter_[a-z0-9_]+|[a-z_]+:energy_meter_[a-z0-9_]+:[a-z0-9_]+)", expr):
            if name not in known:
                unknown.add((rule["record"], name))
    assert unknown == set()


def test_recording_rules_use_counters_only_through_increase():
    """A counter's raw value is meaningless per day; a gauge must never go through increase()."""
    for rule in rules():
        for name in re.findall(r"increase\((energy_meter_[a-z0-9_]+)\[", rule["expr"]):
            assert METRICS_BY_NAME[name].type == "counter", (rule["record"], name)


def test_compose_prometheus_loads_the_recording_rules():
    prometheus = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert "recording.yml" in prometheus["rule_files"] and "alerts.yml" in prometheus["rule_files"]
    volumes = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]["volumes"]
    mounted = {v.split(":")[1] for v in volumes if v.startswith("./prometheus/")}
    assert {f"/etc/prometheus/{name}" for name in prometheus["rule_files"]} <= mounted
