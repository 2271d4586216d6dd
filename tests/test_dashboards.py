"""Grafana dashboards and the docker-compose stack.

Lint: fixed unique uids, the `datasource` variable everywhere (file provisioning, no import
inputs), `vendor`/`device` variables that filter every device query, a unit on every panel,
`$__rate_interval` for rates, energy in kWh, only catalogue metrics. End to end: every vendor's
simulated devices, the exporter and a real Prometheus with the shipped rules; every panel's
query, template variables filled in as Grafana fills them, must return data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import demo
from exporter.model.catalogue import METRICS_BY_NAME

from .conftest import ROOT, LoopThread, free_port, require_binary, wait_until
from .prometheus import DemoStack, PrometheusServer

DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "prometheus" / "alerts.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
REQUIRED_BOARDS = {"energy-meter-overview", "energy-meter-device", "energy-meter-solar", "energy-meter-exporter"}
MACROS = ("$__rate_interval", "$__interval", "$__range")

# Grafana unit ids the boards may use (a typo would silently show raw numbers).
GRAFANA_UNITS = {
    "none", "short", "percentunit", "watt", "kwatt", "kwatth", "watth", "volt", "amp", "hertz", "voltamp",
    "voltampreact", "m3", "flowlpm", "flowcms", "dBm", "s", "dtdurations", "dateTimeAsIso", "opm", "ops",
    "celsius",
}

# Substitutes for Grafana's interval macros. Prometheus scrapes every second here, so 15 s
# windows hold enough samples; $__range stands for the dashboard's (or panel's) time range.
FILLED_MACROS = {"$__rate_interval": "15s", "$__range": "1h"}
DEFAULT_INTERVAL = "15s"

# Panels whose series exist only when a program the demo's simulators need is installed.
NEEDS_PROGRAM = {"MQTT brokers": "mosquitto"}


# --- reading the boards ---------------------------------------------------------------------------

def boards() -> dict[str, dict]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS}"
    return {f.name: json.loads(f.read_text()) for f in files}


def panels(board: dict) -> list[dict]:
    """Every panel, rows' collapsed children included, rows themselves excluded."""
    out = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def queries() -> list[tuple[str, dict, dict]]:
    """(board file, panel, target) for every query of every board."""
    return [(name, panel, t) for name, board in boards().items() for panel in panels(board)
            for t in panel.get("targets", [])]


def unit_of(panel: dict, ref: str) -> str | None:
    unit = panel["fieldConfig"]["defaults"].get("unit")
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
    return unit


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers text) of every vector selector naming an energy_meter_ metric."""
    return [(m.group(1), m.group(2) or "") for m in re.finditer(r"\b(energy_meter_[a-z0-9_]+)(?:\{([^}]*)\})?", expr)]


# --- lint -----------------------------------------------------------------------------------------

def test_the_boards_exist_with_fixed_unique_uids_and_titles():
    found = boards()
    uids = [b.get("uid") for b in found.values()]
    titles = [b.get("title") for b in found.values()]
    assert all(isinstance(u, str) and re.fullmatch(r"[a-z0-9-]{1,40}", u) for u in uids), uids
    assert len(set(uids)) == len(uids), f"duplicate uids: {uids}"
    assert len(set(titles)) == len(titles), f"duplicate titles: {titles}"
    assert REQUIRED_BOARDS <= set(uids), f"missing boards: {REQUIRED_BOARDS - set(uids)}"
    for name, board in found.items():
        assert board.get("id") is None, f"{name}: a fixed numeric id clashes between Grafana instances"
        assert board.get("description"), f"{name}: no description"
        ids = [p["id"] for p in board["panels"]] + [c["id"] for p in board["panels"] for c in p.get("panels", [])]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
    titles = {p["title"] for board in found.values() for p in panels(board)}
    assert set(NEEDS_PROGRAM) <= titles, "NEEDS_PROGRAM names a panel that no longer exists"


def test_boards_provision_from_files_and_use_the_datasource_variable():
    for name, board in boards().items():
        text = (DASHBOARDS / name).read_text()
        assert "__inputs" not in board and "__requires" not in board, f"{name}: import inputs break file provisioning"
        assert "${DS_" not in text, f"{name}: ${{DS_...}} import placeholder"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables.get("datasource")
        assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", f"{name}: no datasource variable"
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"] == DATASOURCE_REF, f"{name}: variable {var['name']} ignores $datasource"
        for panel in panels(board):
            assert panel.get("datasource") == DATASOURCE_REF, f"{name}: panel {panel.get('title')!r} datasource"
            assert panel.get("targets"), f"{name}: panel {panel.get('title')!r} has no query"
            for t in panel["targets"]:
                assert t.get("datasource") == DATASOURCE_REF, f"{name}: {panel['title']!r} {t['refId']} datasource"
            assert panel.get("description"), f"{name}: panel {panel['title']!r} has no description"


def test_vendor_and_device_variables_filter_every_device_query():
    for name, board in boards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for var in ("vendor", "device"):
            assert variables.get(var, {}).get("type") == "query", f"{name}: no {var} variable"
            assert variables[var]["multi"] and variables[var]["includeAll"], f"{name}: {var} should allow All"
        assert "$vendor" in variables["device"]["query"], f"{name}: the device list should follow the vendor choice"
    for name, panel, t in queries():
        for metric, matchers in selectors(t["expr"]):
            if metric in METRICS_BY_NAME and METRICS_BY_NAME[metric].base_labels:
                assert 'vendor=~"$vendor"' in matchers and 'device=~"$device"' in matchers, \
                    f"{name}: {panel['title']!r}: {metric} is not filtered by $vendor/$device"


def test_every_panel_has_a_known_unit():
    for name, board in boards().items():
        for panel in panels(board):
            defaults = panel.get("fieldConfig", {}).get("defaults", {})
            assert defaults.get("unit") in GRAFANA_UNITS, f"{name}: {panel['title']!r} unit {defaults.get('unit')!r}"
            for override in panel["fieldConfig"].get("overrides", []):
                for prop in override["properties"]:
                    if prop["id"] == "unit":
                        assert prop["value"] in GRAFANA_UNITS, f"{name}: {panel['title']!r} override unit"


def test_rates_use_rate_interval_and_windows_come_from_grafana():
    for name, panel, t in queries():
        expr = t["expr"]
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in MACROS, f"{name}: {panel['title']!r}: fixed window [{window}] (use a Grafana macro)"
        for func in re.finditer(r"\b(rate|irate)\(", expr):
            inner = expr[func.end():]
            assert re.match(r"[^\[]*\[\$__rate_interval\]", inner), f"{name}: {panel['title']!r}: rate without $__rate_interval"
        assert not re.search(r"\$__(?!rate_interval|interval|range)", expr), f"{name}: unknown macro in {expr}"


def test_energy_is_shown_in_kwh():
    for name, panel, t in queries():
        if "_joules" not in t["expr"]:
            continue
        if unit_of(panel, t["refId"]) == "percentunit":  # a ratio of energies has no unit to convert
            continue
        assert t["expr"].count("/ 3.6e6") == t["expr"].count("_joules"), \
            f"{name}: {panel['title']!r}: joules not converted to kWh: {t['expr']}"
        assert unit_of(panel, t["refId"]) == "kwatth", f"{name}: {panel['title']!r}: energy unit"


def test_queries_name_only_catalogue_metrics():
    for name, panel, t in queries():
        for metric, _ in selectors(t["expr"]):
            assert metric in METRICS_BY_NAME, f"{name}: {panel['title']!r}: {metric} is not in exporter/model/catalogue.py"


def test_panels_do_not_overlap():
    for name, board in boards().items():
        taken: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']!r} wider than the grid"
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, f"{name}: {panel['title']!r} overlaps another panel"
            taken |= cells


# --- provisioning and compose ---------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_provisioning_loads_these_dashboards_into_grafana():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "energy-meter.yml").read_text())["datasources"]
    assert any(d["type"] == "prometheus" and d.get("isDefault") for d in datasources)
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "energy-meter.yml").read_text())["providers"]
    paths = {p["options"]["path"] for p in providers if p["type"] == "file"}
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts.get("./grafana/dashboards") in paths, "the provider must read where compose mounts the boards"
    assert mounts.get("./grafana/provisioning/dashboards") == "/etc/grafana/provisioning/dashboards"
    assert mounts.get("./grafana/provisioning/datasources") == "/etc/grafana/provisioning/datasources"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(mounts["./grafana/dashboards"] + "/") and (DASHBOARDS / Path(home).name).is_file()


def test_compose_stack_mounts_existing_files_and_prometheus_finds_the_exporter():
    services = compose()["services"]
    assert {"exporter", "exporter-demo", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./config.yaml":  # config.yaml is the user's own
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert services["exporter"]["profiles"] == ["meters"] and services["exporter-demo"]["profiles"] == ["demo"]
    assert "exporter" in services["exporter-demo"]["networks"]["default"]["aliases"]
    prometheus_yml = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus_yml["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert "exporter:9896" in targets
    assert prometheus_yml["rule_files"] == ["alerts.yml"]
    assert prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_compose_prometheus_config_passes_promtool():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "config", str(ROOT / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    pytest.skip("neither `docker compose` (the Compose plugin) nor docker-compose is installed")


def test_docker_compose_config_accepts_the_stack():
    command = _compose_command()
    result = subprocess.run([*command, "-f", str(COMPOSE), "--profile", "demo", "--profile", "meters", "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_tells_how_to_open_the_same_stack_with_compose():
    assert "docker compose --profile demo up" in demo.COMPOSE_HINT
    assert "localhost:3000" in demo.COMPOSE_HINT
    assert compose()["services"]["exporter-demo"]["entrypoint"][:3] == ["python", "-m", "demo"]


# --- end to end -----------------------------------------------------------------------------------

def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana's Prometheus data source writes it into a query."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def fill(expr: str, values: dict[str, list[str]], interval: str | None = None) -> str:
    for macro, value in FILLED_MACROS.items():
        expr = expr.replace(macro, value)
    expr = expr.replace("$__interval", interval or DEFAULT_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        formatted = regex_value(values[name])
        expr = expr.replace("${" + name + "}", formatted).replace("$" + name, formatted)
    return expr


def resolve_variables(prom: PrometheusServer, board: dict) -> dict[str, list[str]]:
    """Query variables resolved the way Grafana does (label values of a selector), each set to All."""
    values: dict[str, list[str]] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", fill(var["query"], values))
        assert match, f"unsupported variable query {var['query']}"
        data = prom.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
        assert data["status"] == "success" and data["data"], f"variable {var['name']}: {data}"
        values[var["name"]] = sorted(data["data"])
    return values


def run_query(prom: PrometheusServer, t: dict, expr: str) -> tuple[bool, str]:
    """(has data, error text)."""
    if t.get("instant"):
        data = prom.api("query", query=expr)
    else:
        end = time.time()
        data = prom.api("query_range", query=expr, start=end - 120, end=end, step=1)
    if data.get("status") != "success":
        return False, f"{data.get('errorType')}: {data.get('error')}"
    result = data["data"]["result"]
    if data["data"]["resultType"] == "matrix":
        return any(series["values"] for series in result), ""
    return bool(result), ""


@pytest.fixture(scope="module")
def demo_prometheus(tmp_path_factory):
    from exporter.runtime.quota import Limit

    prometheus_bin = require_binary("prometheus")
    tmp_path = tmp_path_factory.mktemp("dashboards")
    loop_thread = LoopThread()
    # A target that never answers, so that the error panels have something to show.
    offline = {"name": "offline-meter", "vendor": "homewizard", "host": f"127.0.0.1:{free_port()}", "interval": "1s"}
    stack = DemoStack(loop_thread, tmp_path, extra_targets=(offline,))
    prom = None

    def use_a_quota() -> None:
        # No simulated device uses a rate-limited cloud API (yet): feed the ledger the way a
        # cloud adapter does, so that the quota panel is checked against the real series.
        ledger = stack.daemon.ledger
        limits = (Limit(30, 86400, "day"), Limit(5, 3600, "hour"))
        ledger.register("example-cloud", "demo-account", limits)
        ledger.acquire("example-cloud", "demo-account", limits)

    try:
        stack.start()
        loop_thread.call(use_a_quota)
        prom = PrometheusServer(prometheus_bin, tmp_path, stack.port, rule_files=(ALERTS,))
        yield stack, prom
    finally:
        if prom is not None:
            prom.stop()
        stack.stop()
        loop_thread.close()


def test_every_panel_returns_data_from_a_real_prometheus(demo_prometheus):
    stack, prom = demo_prometheus
    healthy = [n for n in stack.target_names if n != "offline-meter"]
    assert len(healthy) >= 8, healthy

    def all_up() -> bool:
        up = {r["metric"]["device"]: r["value"][1] for r in prom.query("energy_meter_exporter_target_up")}
        return all(up.get(n) == "1" for n in healthy) and up.get("offline-meter") == "0"

    wait_until(all_up, timeout=45, interval=0.5, what="every simulated device up in Prometheus")

    pending: dict[tuple[str, str, str], tuple[dict, str]] = {}
    for name, board in boards().items():
        values = resolve_variables(prom, board)
        assert set(healthy) <= set(values["device"]), f"{name}: device variable {values['device']}"
        for panel in panels(board):
            program = NEEDS_PROGRAM.get(panel["title"])
            if program and not (shutil.which(program) or Path(f"/usr/sbin/{program}").exists()):
                continue  # the demo leaves that device out
            for t in panel["targets"]:
                pending[(name, panel["title"], t["refId"])] = (t, fill(t["expr"], values, t.get("interval")))

    # Rates need two samples and counters their first poll: ask again until a deadline.
    deadline = time.monotonic() + 45
    errors: dict[tuple, str] = {}
    while pending and time.monotonic() < deadline:
        for key, (t, expr) in list(pending.items()):
            has_data, error = run_query(prom, t, expr)
            if error:
                errors[key] = f"{expr}\n    {error}"
                del pending[key]
            elif has_data:
                del pending[key]
        if pending:
            time.sleep(1)
    problems = [f"{k}: error {e}" for k, e in errors.items()]
    problems += [f"{k}: no data for {expr}" for k, (_, expr) in pending.items()]
    assert not problems, "\n".join(problems)


def test_shipped_rules_evaluate_cleanly_on_live_data(demo_prometheus):
    _, prom = demo_prometheus

    def evaluated():
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("health") != "unknown" for r in rules) else None

    rules = wait_until(evaluated, timeout=30, interval=0.5, what="every rule evaluated")
    expected = yaml.safe_load(ALERTS.read_text())
    names = {r.get("alert") or r.get("record") for g in expected["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == names
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    voltages = 'count({__name__=~"energy_meter_(account_)?phase_voltage_volts"})'
    wait_until(lambda: prom.value(voltages), timeout=30, interval=0.5, what="phase voltages scraped")
    # the nominal voltage is recorded for every measured phase, cloud meters' included, at 230 V
    wait_until(lambda: prom.value("count(energy_meter:nominal_voltage_volts == 230)") == prom.value(voltages),
               timeout=10, interval=0.5, what="a nominal voltage for every phase")
