"""Alerting rules: promtool checks and unit tests, every alert's labels and annotations, and the
whole path through a real Prometheus and Alertmanager to a webhook when a simulated device stops."""

from __future__ import annotations

import re
import subprocess

import yaml

from .conftest import ROOT, require_binary, wait_until
from .prometheus import AlertmanagerServer, DemoStack, PrometheusServer, WebhookReceiver, rules_with_short_for

ALERTS = ROOT / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "prometheus" / "alerts.test.yml"
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
ALERTS_PAGE = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}


def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [r for g in document["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules_passes():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules()) + 1} rules found" in result.stdout  # + the nominal voltage rule


def test_promtool_unit_tests_pass():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True,
                            cwd=ALERTS_TEST.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_shipped_alerts_exist_with_severity_summary_and_description():
    rules = {r["alert"]: r for r in alert_rules()}
    assert {"EnergyMeterTargetDown", "EnergyMeterReadingsStale", "EnergyMeterTokenExpiringSoon",
            "EnergyMeterQuotaNearlyUsedUp", "EnergyMeterCounterRegression", "EnergyMeterVoltageOutOfBand",
            "EnergyMeterPeakDemandAboutToBeExceeded"} <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        assert name.startswith("EnergyMeter"), f"{name}: the Alertmanager route matches EnergyMeter..."
    # the voltage band's nominal is set in one place, a recording rule
    records = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "record" in r]
    assert [r["record"] for r in records] == ["energy_meter:nominal_voltage_volts"]
    assert "energy_meter:nominal_voltage_volts" in rules["EnergyMeterVoltageOutOfBand"]["expr"]


def test_unit_tests_show_every_alert_firing_and_silent():
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    firing, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                # promtool compares annotations only when given: every firing case gives them
                assert set(alert.get("exp_annotations", {})) == {"summary", "description"}, check["alertname"]
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown staying silent"


def test_shipped_alertmanager_config_and_documented_route_pass_amtool(tmp_path):
    amtool = require_binary("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    section = ALERTS_PAGE.read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "route:" in b]
    assert blocks, "docs/alerts.md shows no Alertmanager route"
    for i, block in enumerate(blocks):
        path = tmp_path / f"documented-{i}.yml"
        path.write_text(block)
        result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, block + result.stdout + result.stderr


def route_to(config: dict, url: str) -> str:
    """Point the receiver that the shipped route picks for EnergyMeter alerts at `url`, and make
    the route's waits test-sized. Returns that receiver's name."""
    energy = next(r for r in config["route"]["routes"] if any("EnergyMeter" in m for m in r.get("matchers", [])))
    for route in [config["route"], energy, *energy.get("routes", [])]:
        route["group_wait"], route["group_interval"] = "1s", "1s"
    receiver = next(r for r in config["receivers"] if r["name"] == energy["receiver"])
    receiver["webhook_configs"] = [{"url": url, "send_resolved": True}]
    return receiver["name"]


def test_a_stopped_device_reaches_the_webhook_as_target_down(tmp_path, loop_thread):
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    receiver = WebhookReceiver()
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert route_to(config, receiver.url) == "energy-meter"
    alertmanager = prometheus = None
    stack = DemoStack(loop_thread, tmp_path)
    try:
        alertmanager = AlertmanagerServer(alertmanager_bin, tmp_path, config)
        stack.start()
        # the shipped rules, with `for:` shortened so that the test need not wait 5 minutes
        rules = rules_with_short_for(ALERTS, tmp_path / "alerts.yml", "2s")
        prometheus = PrometheusServer(prometheus_bin, tmp_path, stack.port, rule_files=(rules,),
                                      alertmanager_port=alertmanager.port)
        victim = min(stack.participants, key=lambda p: len(p.targets))
        devices = {t["name"]: t["vendor"] for t in victim.targets}

        def victims_up() -> bool:
            return all(prometheus.value(f'energy_meter_exporter_target_up{{device="{d}"}}') == 1 for d in devices)

        wait_until(victims_up, timeout=45, interval=0.5, what=f"{sorted(devices)} up in Prometheus")
        stack.stop_participant(victim)

        def target_down_alerts() -> dict[str, dict]:
            found = {a["labels"].get("device"): a for a in receiver.alerts()
                     if a["labels"].get("alertname") == "EnergyMeterTargetDown" and a["status"] == "firing"}
            return found if set(devices) <= set(found) else None

        alerts = wait_until(target_down_alerts, timeout=60, interval=0.5,
                            what=f"EnergyMeterTargetDown for {sorted(devices)} at the webhook")
        for device, vendor in devices.items():
            alert = alerts[device]
            assert alert["labels"] == {"alertname": "EnergyMeterTargetDown", "severity": "warning", "vendor": vendor,
                                       "device": device, "job": "energy", "instance": f"127.0.0.1:{stack.port}"}
            assert alert["annotations"]["summary"] == f"{vendor} device {device} cannot be read"
            assert alert["annotations"]["description"].startswith(
                f"Every poll of {device} ({vendor}) has failed for 5 minutes")
        payload = receiver.payloads[-1]
        assert payload["receiver"] == "energy-meter" and payload["version"] == "4"
    finally:
        if prometheus is not None:
            prometheus.stop()
        if alertmanager is not None:
            alertmanager.stop()
        stack.stop()
        receiver.close()
