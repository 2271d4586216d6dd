"""Grafana dashboards and the docker-compose stack.

Lint: fixed unique uids, the `datasource` variable everywhere (file provisioning, no import
inputs), `vendor`/`device` variables that filter every device query, a unit on every panel,
`$__rate_interval` for rates, energy in kWh, only catalogue metrics and recorded series of
prometheus/recording.yml, links between the boards and from every table to the device board.
End to end: every vendor's simulated devices, the exporter and a real Prometheus with the shipped
rules; every panel's query, template variables filled in as Grafana fills them, must return data,
for every vendor whose devices the catalogue says report what the panel shows."""

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
from exporter.model.catalogue import (ACTIVE_POWER, ALL_METER_VENDORS, ENERGY_EXPORTED, ENERGY_IMPORTED, METRICS_BY_NAME,
                                      Metric)

from .conftest import ROOT, LoopThread, free_port, require_binary, wait_until
from .prometheus import DemoStack, PrometheusServer

DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "prometheus" / "alerts.yml"
RECORDING = ROOT / "prometheus" / "recording.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
REQUIRED_BOARDS = {"energy-meter-overview", "energy-meter-device", "energy-meter-solar", "energy-meter-exporter"}
DEVICE_BOARD = "energy-meter-device"
TAG = "energy-meter-exporter"
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
# Panels the demo cannot fill for a vendor that the catalogue says reports what they show: the
# vendor, why, and a query that returns data as long as that holds (once the demo can fill the
# panel the query returns nothing, and the test asks for the panel's data again).
DEMO_CANNOT_SHOW = {
    "Self-consumption and self-sufficiency over 24 hours": (
        "enphase", "the simulated gateway replays one capture, so its production counter stands still, and the "
                   "ratios are recorded only once something was produced",
        'max(device:energy_meter_production_energy_joules:increase1d{vendor="enphase"}) == 0'),
}
# Series that appear with a target's first failed poll: the demo shows them for the vendors of
# its failing targets only.
ON_FAILURE = {"energy_meter_exporter_poll_errors_total"}


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


# A catalogue name (energy_meter_...) or a recorded one (level:energy_meter_...:operations).
SELECTOR = re.compile(r"(?<![\w:])([a-z_]*:?energy_meter[a-z0-9_:]*)(?:\{([^}]*)\})?")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers text) of every vector selector naming an energy_meter metric,
    recorded series (names with a colon) included."""
    return [(m.group(1), m.group(2) or "") for m in SELECTOR.finditer(expr)]


def recording_rules() -> dict[str, list[str]]:
    """Recorded name -> the expressions recording it (several rules may record one name)."""
    rules: dict[str, list[str]] = {}
    for group in yaml.safe_load(RECORDING.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                rules.setdefault(rule["record"], []).append(rule["expr"])
    return rules


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
            # recorded series keep the vendor and device labels of the series they come from
            if ":" in metric or (metric in METRICS_BY_NAME and METRICS_BY_NAME[metric].base_labels):
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
    recorded = recording_rules()
    for name, panel, t in queries():
        for metric, _ in selectors(t["expr"]):
            if ":" in metric:
                assert metric in recorded, f"{name}: {panel['title']!r}: {metric} is not recorded in {RECORDING.name}"
            else:
                assert metric in METRICS_BY_NAME, \
                    f"{name}: {panel['title']!r}: {metric} is not in exporter/model/catalogue.py"


def test_the_name_check_knows_recorded_series_from_catalogue_metrics():
    found = selectors('device:energy_meter_active_power_watts:total{vendor=~"$vendor"} / '
                      'energy_meter_phase_voltage_volts{device=~"$device"}')
    assert found == [("device:energy_meter_active_power_watts:total", 'vendor=~"$vendor"'),
                     ("energy_meter_phase_voltage_volts", 'device=~"$device"')]
    assert "device:energy_meter_made_up:increase1d" not in recording_rules()


def test_boards_link_to_each_other():
    """Every board has the drop-down of the boards carrying the project's tag, and carries it."""
    for name, board in boards().items():
        assert TAG in board.get("tags", []), f"{name}: not tagged {TAG}"
        links = [link for link in board.get("links", []) if link.get("type") == "dashboards"]
        assert links and links[0]["tags"] == [TAG], f"{name}: no link to the other boards"
        assert links[0]["includeVars"] and links[0]["keepTime"], f"{name}: the link forgets vendor, device or time"


def test_every_table_drills_down_to_the_device_board():
    tables = [(name, panel) for name, board in boards().items() for panel in panels(board) if panel["type"] == "table"]
    assert len(tables) >= 5, [panel["title"] for _, panel in tables]
    for name, panel in tables:
        links = [link for override in panel["fieldConfig"].get("overrides", [])
                 if override["matcher"] == {"id": "byName", "options": "device"}
                 for prop in override["properties"] if prop["id"] == "links" for link in prop["value"]]
        assert links, f"{name}: {panel['title']!r}: no link on the device column"
        url = links[0]["url"]
        assert url.startswith(f"/d/{DEVICE_BOARD}?"), f"{name}: {panel['title']!r}: {url}"
        for parameter in ("var-vendor=${__data.fields.vendor}", "var-device=${__value.raw}",
                          "${datasource:queryparam}", "${__url_time_range}"):
            assert parameter in url.split("?", 1)[1].split("&"), f"{name}: {panel['title']!r}: {url} lacks {parameter}"
        for transformation in panel.get("transformations", []):
            options = transformation.get("options", {})
            for column in ("vendor", "device"):
                assert not options.get("excludeByName", {}).get(column), f"{name}: {panel['title']!r} hides {column}"
                assert column not in options.get("renameByName", {}), f"{name}: {panel['title']!r} renames {column}"


def test_the_overview_shows_each_devices_energy_per_day_as_bars():
    overview = next(board for board in boards().values() if board["uid"] == "energy-meter-overview")
    daily = [panel for panel in panels(overview) if panel.get("repeat") == "device"]
    assert len(daily) == 1, "one panel, repeated for each device"
    panel = daily[0]
    assert panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    assert panel["fieldConfig"]["defaults"]["unit"] == "kwatth"
    assert panel["interval"] == "1d", "one point (one bar) per day"
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert {m for m, _ in selectors(exprs)} == {"device:energy_meter_energy_imported_joules:increase1d",
                                                "device:energy_meter_energy_exported_joules:increase1d"}


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
    assert prometheus_yml["rule_files"] == ["alerts.yml", "recording.yml"]
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


def resolve_variables(prom: PrometheusServer, board: dict, chosen: dict[str, list[str]] | None = None
                      ) -> dict[str, list[str]]:
    """Query variables resolved the way Grafana does (label values of a selector), each set to All
    unless `chosen` sets it (e.g. one vendor: then the device variable lists that vendor's)."""
    values: dict[str, list[str]] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        if chosen and var["name"] in chosen:
            values[var["name"]] = chosen[var["name"]]
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
        prom = PrometheusServer(prometheus_bin, tmp_path, stack.port, rule_files=(ALERTS, RECORDING))
        yield stack, prom
    finally:
        if prom is not None:
            prom.stop()
        stack.stop()
        loop_thread.close()


def shown(panel: dict) -> bool:
    """False for a panel whose series exist only with a program the demo lacks here."""
    program = NEEDS_PROGRAM.get(panel["title"])
    return not program or bool(shutil.which(program) or Path(f"/usr/sbin/{program}").exists())


def excuse(panel: dict, vendor: str | None = None) -> str | None:
    """The DEMO_CANNOT_SHOW query of a panel (and vendor), if any. It is asked along with the
    panel's own queries, not once up front: the recorded series it reads need their first
    evaluations before it can tell."""
    which, _, still = DEMO_CANNOT_SHOW.get(panel["title"], (None, None, None))
    return still if which and vendor in (None, which) else None


def until_each_has_data(prom: PrometheusServer, pending: dict[tuple, list[tuple[dict, str]]],
                        excused: dict[tuple, str] | None = None, seconds: float = 45) -> list[str]:
    """Runs each key's queries until one of them returns data (or the key's query in `excused`
    does); the keys that never did (or whose query failed), described. Rates need two samples and
    counters their first poll: ask again until a deadline."""
    deadline = time.monotonic() + seconds
    errors: dict[tuple, str] = {}
    excused = excused or {}
    while pending and time.monotonic() < deadline:
        for key, filled in list(pending.items()):
            if key in excused and prom.query(excused[key]):
                del pending[key]
                continue
            for t, expr in filled:
                has_data, error = run_query(prom, t, expr)
                if error:
                    errors[key] = f"{expr}\n    {error}"
                if has_data or error:
                    del pending[key]
                    break
        if pending:
            time.sleep(1)
    problems = [f"{k}: error {e}" for k, e in errors.items()]
    problems += [f"{k}: no data for " + " / ".join(expr for _, expr in filled) for k, filled in pending.items()]
    return problems


@pytest.fixture(scope="module")
def demo_up(demo_prometheus):
    """The demo once every simulated device is up in Prometheus (and the offline one down)."""
    stack, prom = demo_prometheus
    healthy = [n for n in stack.target_names if n != "offline-meter"]
    assert len(healthy) >= 8, healthy

    def all_up() -> bool:
        up = {r["metric"]["device"]: r["value"][1] for r in prom.query("energy_meter_exporter_target_up")}
        return all(up.get(n) == "1" for n in healthy) and up.get("offline-meter") == "0"

    wait_until(all_up, timeout=45, interval=0.5, what="every simulated device up in Prometheus")
    return stack, prom, healthy


def test_every_panel_returns_data_from_a_real_prometheus(demo_up):
    """Every query of every panel, all vendors and devices selected."""
    _, prom, healthy = demo_up
    pending: dict[tuple, list[tuple[dict, str]]] = {}
    excused: dict[tuple, str] = {}
    for name, board in boards().items():
        values = resolve_variables(prom, board)
        assert set(healthy) <= set(values["device"]), f"{name}: device variable {values['device']}"
        for panel in filter(shown, panels(board)):
            for t in panel["targets"]:
                key = (name, panel["title"], t["refId"])
                pending[key] = [(t, fill(t["expr"], values, t.get("interval")))]
                if excuse(panel):
                    excused[key] = excuse(panel)
    problems = until_each_has_data(prom, pending, excused)
    assert not problems, "\n".join(problems)


# --- which vendors a panel should show ----------------------------------------------------------
# From the catalogue: Metric.vendors of each metric a query names (recorded series: of the
# metrics their rules read). `a or b` shows what either shows; `a / b`, `a and b`, f(a, b) need
# both. None stands for every vendor (the exporter's own series, and series without a vendor
# label, which no vendor choice filters out).

def _without_literals(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return re.sub(r"\[[^\]]*\]", "", re.sub(r"\{[^}]*\}", "", expr))


def _top_level(expr: str, separator: str) -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        if expr[i] == "(":
            depth += 1
        elif expr[i] == ")":
            depth -= 1
        elif depth == 0 and expr.startswith(separator, i):
            parts.append(expr[start:i])
            start = i = i + len(separator)
            continue
        i += 1
    return parts + [expr[start:]]


def _groups(expr: str) -> tuple[list[str], str]:
    """(contents of the top-level parentheses, the text outside them)."""
    groups, outside, depth, start = [], [], 0, 0
    for i, char in enumerate(expr):
        if char == "(":
            if depth == 0:
                start = i + 1
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                groups.append(expr[start:i])
        elif depth == 0:
            outside.append(char)
    return groups, "".join(outside)


def _union(sets: list[frozenset | None]) -> frozenset | None:
    return None if any(s is None for s in sets) else frozenset().union(*sets)


def _intersection(sets: list[frozenset | None]) -> frozenset | None:
    known = [s for s in sets if s is not None]
    return frozenset.intersection(*known) if known else None


def metric_vendors(name: str, rules: dict[str, list[str]]) -> frozenset | None:
    if name in rules:
        return _union([expr_vendors(expr, rules) for expr in rules[name]])
    metric: Metric = METRICS_BY_NAME[name]
    return frozenset(metric.vendors) if metric.vendors and metric.base_labels else None


def expr_vendors(expr: str, rules: dict[str, list[str]]) -> frozenset | None:
    expr = " ".join(_without_literals(expr).split())
    assert " unless " not in expr, "the vendors of `unless` are not worked out here"
    alternatives = _top_level(expr, " or ")
    if len(alternatives) > 1:
        return _union([expr_vendors(a, rules) for a in alternatives])
    groups, outside = _groups(expr)
    names = [m.group(1) for m in SELECTOR.finditer(outside)]
    return _intersection([expr_vendors(g, rules) for g in groups] + [metric_vendors(n, rules) for n in names])


def panel_vendors(panel: dict, rules: dict[str, list[str]]) -> frozenset | None:
    return _union([expr_vendors(t["expr"], rules) for t in panel["targets"]])


def test_the_vendors_of_a_query_follow_or_and_arithmetic():
    rules = {"device:energy_meter_x:total": ["sum by (vendor, device) (energy_meter_battery_power_watts) or "
                                "sum by (vendor, device) (energy_meter_battery_group_power_watts)"]}
    assert expr_vendors('energy_meter_gas_cubic_meters_total{vendor=~"$vendor"} or '
                        'energy_meter_inverter_power_watts', rules) == {"homewizard", "enphase"}
    assert expr_vendors("sum by (device) (increase(energy_meter_energy_exported_joules_total[$__range])) / "
                        "sum by (device) (energy_meter_production_energy_joules_total)", rules) == {"enphase"}
    assert expr_vendors('-1 * (energy_meter_gas_cubic_meters_total or label_replace(energy_meter_inverter_power_watts, '
                        '"meter", "$1 (x)", "meter", "(.*)"))', rules) == {"homewizard", "enphase"}
    assert expr_vendors("device:energy_meter_x:total", rules) == {"homewizard", "enphase"}
    assert expr_vendors("count(energy_meter_exporter_target_up == 0) or vector(0)", rules) is None


def test_every_panel_returns_data_for_every_vendor_that_reports_what_it_shows(demo_up):
    """The panel x vendor matrix: with one vendor chosen (and so its devices), each panel shows
    data for every vendor whose devices report a metric the panel queries."""
    _, prom, _ = demo_up
    rules = recording_rules()
    demo_vendors = sorted(prom.api("label/vendor/values", **{"match[]": "energy_meter_exporter_target_up"})["data"])
    assert demo_vendors == sorted(ALL_METER_VENDORS), demo_vendors
    failing = {r["metric"]["vendor"] for r in prom.query("energy_meter_exporter_target_up == 0")}
    assert failing, "the demo has a failing target"
    pending: dict[tuple, list[tuple[dict, str]]] = {}
    excused: dict[tuple, str] = {}
    for name, board in boards().items():
        for panel in filter(shown, panels(board)):
            vendors = panel_vendors(panel, rules)
            assert vendors is None or vendors, f"{name}: panel {panel['title']!r}: no vendor reports what it shows"
            if {m for t in panel["targets"] for m, _ in selectors(t["expr"])} <= ON_FAILURE:
                vendors = frozenset(failing)
            for vendor in sorted(vendors or demo_vendors):
                values = resolve_variables(prom, board, {"vendor": [vendor]})
                key = (name, f"panel {panel['title']!r}", f"vendor {vendor}")
                pending[key] = [(t, fill(t["expr"], values, t.get("interval"))) for t in panel["targets"]]
                if excuse(panel, vendor):
                    excused[key] = excuse(panel, vendor)
    problems = until_each_has_data(prom, pending, excused)
    assert not problems, "\n".join(problems)


def family(metric: Metric) -> list[str]:
    """The catalogue's names for one quantity: the device total, per phase, per tariff, and a
    cloud account's per-meter twins of each."""
    names = [metric.name.replace("energy_meter_", f"energy_meter_{part}", 1)
             for part in ("", "phase_", "tariff_", "account_", "account_phase_", "account_tariff_")]
    return [name for name in names if name in METRICS_BY_NAME]


def test_every_demo_device_appears_in_site_power_and_energy_panels(demo_up):
    """Power now, the power graph and the last 24 hours' energy list every device that reports
    that quantity in any form (total, phases, tariffs, cloud meters)."""
    _, prom, _ = demo_up
    overview = boards()["energy-meter-overview.json"]
    by_title = {panel["title"]: panel for panel in panels(overview)}
    values = resolve_variables(prom, overview)
    checks = {"Power now": ACTIVE_POWER, "Power": ACTIVE_POWER,
              "Imported in the last 24 hours": ENERGY_IMPORTED, "Exported in the last 24 hours": ENERGY_EXPORTED}
    for title, metric in checks.items():
        reporting = prom.query(f'group by (vendor, device) ({{__name__=~"{"|".join(family(metric))}"}})')
        expected = {r["metric"]["device"] for r in reporting}
        assert {r["metric"]["vendor"] for r in reporting} == set(ALL_METER_VENDORS), f"{title}: {reporting}"
        target = by_title[title]["targets"][0]
        expr = fill(target["expr"], values, target.get("interval"))
        seen: set[str] = set()

        def listed() -> bool:
            if target.get("instant"):
                seen.update(r["metric"]["device"] for r in prom.query(expr))
            else:
                end = time.time()
                data = prom.api("query_range", query=expr, start=end - 60, end=end, step=1)
                seen.update(r["metric"]["device"] for r in data["data"]["result"])
            return expected <= seen

        try:
            wait_until(listed, timeout=45, interval=1, what=title)
        except AssertionError:
            raise AssertionError(f"panel {title!r} leaves out {sorted(expected - seen)}") from None


def test_shipped_rules_evaluate_cleanly_on_live_data(demo_prometheus):
    _, prom = demo_prometheus

    def evaluated():
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("health") != "unknown" for r in rules) else None

    rules = wait_until(evaluated, timeout=30, interval=0.5, what="every rule evaluated")
    names = {r.get("alert") or r.get("record") for path in (ALERTS, RECORDING)
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == names
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    voltages = 'count({__name__=~"energy_meter_(account_)?phase_voltage_volts"})'
    wait_until(lambda: prom.value(voltages), timeout=30, interval=0.5, what="phase voltages scraped")
    # the nominal voltage is recorded for every measured phase, cloud meters' included, at 230 V
    wait_until(lambda: prom.value("count(energy_meter:nominal_voltage_volts == 230)") == prom.value(voltages),
               timeout=10, interval=0.5, what="a nominal voltage for every phase")


def test_recorded_power_covers_every_demo_device_that_reports_power(demo_prometheus):
    _, prom = demo_prometheus
    # What reports power: a device's total or phases, a cloud account's meters one by one.
    reporting = ('group by (vendor, device) ({__name__=~"energy_meter_(phase_)?active_power_watts"})'
                 ' or group by (vendor, device, installation, meter)'
                 ' ({__name__=~"energy_meter_account_(phase_)?active_power_watts"})')

    def labels(expr: str) -> set[tuple]:
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")) for r in prom.query(expr)}

    seen: dict[str, set] = {}

    def covered() -> bool:
        seen["reporting"] = labels(reporting)
        seen["recorded"] = labels("device:energy_meter_active_power_watts:total")
        vendors = {dict(item)["vendor"] for item in seen["reporting"]}
        return vendors == {"homewizard", "iammeter", "iometer", "enphase"} and seen["recorded"] == seen["reporting"]

    try:
        wait_until(covered, timeout=45, interval=0.5, what="a recorded power for every device")
    except AssertionError:
        missing = sorted(seen.get("reporting", set()) - seen.get("recorded", set()))
        extra = sorted(seen.get("recorded", set()) - seen.get("reporting", set()))
        raise AssertionError(f"no recorded power for {missing}; recorded power for {extra}, which report none") from None
    # devices that report phases only (three-phase IAMMETER uploads without net metering) too
    assert (("device", "iammeter-push"), ("vendor", "iammeter")) in seen["recorded"]
