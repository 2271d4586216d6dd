"""Configuration: what a person gets told when the file is wrong, and secrets from env and files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config.loader import ConfigError, Secret, parse_duration

from .configs import load_config


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems(path: Path, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ or {})
    return err.value.problems


def test_valid_config_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, """
        defaults:
          interval: 30s
          timeout: 2s
        targets:
          - name: p1
            vendor: homewizard
            host: 192.0.2.10
          - name: kwh
            vendor: homewizard
            host: 192.0.2.11
            interval: 1m
    """), environ={})
    p1, kwh = cfg.targets
    assert (p1.interval, p1.timeout, p1.transport) == (30.0, 2.0, "local")
    assert kwh.interval == 60.0
    assert p1.stale_after == 90.0  # three intervals by default
    assert p1.source.endswith("config.yaml:5")


def test_a_target_s_options_come_typed_with_every_default(tmp_path):
    from exporter.config.loader import TargetConfig
    from exporter.vendors.homewizard.local import HomeWizardSettings
    from exporter.vendors.iammeter.modbus import IammeterModbusSettings

    cfg = load_config(write(tmp_path, """
        targets:
          - {name: p1, vendor: homewizard, host: 192.0.2.10, serial: abc}
          - {name: m, vendor: iammeter, transport: modbus, host: 192.0.2.11, port: 1502}
    """), environ={})
    p1, meter = cfg.targets
    settings = HomeWizardSettings.of(p1)
    assert settings == HomeWizardSettings(host="192.0.2.10", serial="abc")
    assert (settings.api_version, settings.tls_verify, settings.token) == ("auto", True, None)
    assert IammeterModbusSettings.of(meter) == IammeterModbusSettings(host="192.0.2.11", port=1502, unit_id=1,
                                                                      model="auto")
    # A target made in code, without the loader, gets the same defaults from the same declaration.
    made = TargetConfig(name="p1", vendor="homewizard", transport="local", interval=10.0, timeout=5.0,
                        max_backoff=300.0, stale_after=60.0, jitter=0.1, options={"host": "192.0.2.10"})
    assert HomeWizardSettings.of(made) == HomeWizardSettings(host="192.0.2.10")


def test_a_key_left_out_takes_the_default_its_table_shows():
    # The documented rows and the loader's checks come from the same fields as the typed defaults.
    from exporter.config.loader import OptionTable
    from exporter.vendors import registry

    tables = [spec.options for spec in registry.specs()] + [s.options for s in registry.sections().values()]
    typed = [table for table in tables if isinstance(table, OptionTable)]
    assert len(typed) >= 10
    for table in typed:
        built = table.settings.from_options({"name": "n", **{k: "x" for k, o in table.items() if o.required}})
        for key, option in table.items():
            if not option.required and key != "port":  # a broker's port is filled in from tls
                empty = () if option.type == "list" else None
                assert getattr(built, key) == (empty if option.default is None else option.default), key


def test_unknown_key_names_file_line_and_path(tmp_path):
    path = write(tmp_path, """
        targets:
          - name: p1
            vendor: homewizard
            host: 192.0.2.10
            intervall: 10s
    """)
    [message] = problems(path)
    assert message.startswith(f"{path}:5: targets[0].intervall: unknown key")
    assert "interval" in message  # lists the known keys


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """
        targets:
          - name: p1
            vendor: homewizard
            host: 192.0.2.10
            interval: soon
          - name: p1
            vendor: homewizard
            host: 192.0.2.11
          - name: x
            vendor: acme
          - vendor: homewizard
            host: 192.0.2.12
            timeout: -1
    """)
    found = problems(path)
    text = "\n".join(found)
    assert f"{path}:5: targets[0].interval: expected a duration" in text
    assert f"{path}:6: targets[1].name: duplicate target name 'p1'" in text
    assert f"{path}:10: targets[2].vendor: unknown vendor 'acme'" in text
    assert "targets[3].name: missing" in text
    assert "targets[3].timeout: must be at least" in text


@pytest.mark.parametrize("snippet,expected", [
    ("interval: 0.1s", "shorter than 0.5s, the fastest homewizard local allows"),
    ("interval: 10s\n    timeout: 20s", "timeout 20s is longer than the interval 10s"),
    ("interval: 10s\n    stale_after: 5s", "shorter than the interval"),
    ("api_version: v2", "API v2 needs a token"),
    ("api_version: v3", "must be one of auto, v1, v2"),
    ("tls_verify: maybe", "expected true or false"),
    ("timezone: Mars/Olympus", "unknown time zone"),
    ("serial: [a, b]", "expected a string, got a list"),
])
def test_impossible_values(tmp_path, snippet, expected):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: 192.0.2.10\n    " + snippet + "\n")
    assert any(expected in p for p in problems(path)), problems(path)


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: [homewizard\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:") and "not valid YAML" in message


def test_duplicate_yaml_key(tmp_path):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    host: b\n")
    assert problems(path) == [f"{path}:5: targets[0].host: duplicate key"]


def test_secret_from_environment(tmp_path):
    path = write(tmp_path, """
        targets:
          - name: p1
            vendor: homewizard
            host: 192.0.2.10
            token: ${HW_TOKEN}
    """)
    cfg = load_config(path, environ={"HW_TOKEN": "abc123"})
    token = cfg.targets[0].options["token"]
    assert isinstance(token, Secret) and token.reveal() == "abc123"
    assert "abc123" not in repr(cfg)  # secrets never print
    [message] = problems(path, environ={})
    assert "targets[0].token: environment variable HW_TOKEN is not set" in message


def test_secret_from_file_relative_to_the_config(tmp_path):
    (tmp_path / "hw.token").write_text("deadbeef\n")
    path = write(tmp_path, """
        targets:
          - name: p1
            vendor: homewizard
            host: 192.0.2.10
            token_file: hw.token
    """)
    assert load_config(path, environ={}).targets[0].options["token"].reveal() == "deadbeef"
    (tmp_path / "hw.token").unlink()
    [message] = problems(path)
    assert "targets[0].token_file: cannot read" in message


def test_secret_and_secret_file_together_is_an_error(tmp_path):
    (tmp_path / "t").write_text("x")
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    token: y\n    token_file: t\n")
    assert any("give either token or token_file" in p for p in problems(path))


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("5m") == 300
    assert parse_duration(2) == 2.0
    with pytest.raises(ValueError):
        parse_duration("fast")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=30)


def test_check_config_exit_statuses(tmp_path):
    good = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n", "good.yaml")
    proc = run_cli("check-config", f"--config.file={good}")
    assert proc.returncode == 0 and "valid, 1 targets" in proc.stdout
    bad = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    hots: a\n", "bad.yaml")
    proc = run_cli("check-config", "--config.file", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:4: targets[0].hots: unknown key" in proc.stderr
    assert f"{bad}:2: targets[0]: missing required key 'host'" in proc.stderr


def test_the_daemon_refuses_to_start_on_bad_config_or_flags(tmp_path):
    bad = write(tmp_path, "targets: 3\n")
    proc = run_cli(f"--config.file={bad}", "--web.listen-address=127.0.0.1:0")
    assert proc.returncode == 2 and "targets: expected a list" in proc.stderr
    proc = run_cli("--log.level=loud")
    assert proc.returncode == 2 and "--log.level" in proc.stderr
    good = write(tmp_path, "targets: []\n", "good.yaml")
    proc = run_cli(f"--config.file={good}", "--web.listen-address=nonsense")
    assert proc.returncode == 2 and "--web.listen-address" in proc.stderr


def test_missing_config_file(tmp_path):
    proc = run_cli("check-config", f"--config.file={tmp_path / 'nope.yaml'}")
    assert proc.returncode == 2 and "cannot read the configuration" in proc.stderr


def test_example_config_is_valid():
    example = Path(__file__).resolve().parents[1] / "config.example.yaml"
    environ = {"HOMEWIZARD_P1_TOKEN": "0123456789abcdef0123456789abcdef", "IAMMETER_PASSWORD": "x",
               "IOMETER_PARTNER_SECRET": "y", "MQTT_PASSWORD": "z", "ENLIGHTEN_PASSWORD": "w"}
    cfg = load_config(example, environ=environ)
    kinds = {(t.vendor, t.transport) for t in cfg.targets}
    from exporter.vendors import registry

    assert kinds == {(s.vendor, s.transport) for s in registry.specs()}  # an example of every kind


def test_every_vendor_has_exactly_one_default_transport():
    from exporter.vendors import registry

    for vendor in registry.vendor_names():
        defaults = [s.transport for s in registry.specs() if s.vendor == vendor and s.default]
        assert len(defaults) == 1, (vendor, defaults)
        assert defaults == [registry.vendor_spec(vendor).default_transport] == registry.transports(vendor)[:1]
    assert registry.transports("iammeter")[0] == "http"


def test_a_transport_module_imported_first_does_not_change_the_default_transport(tmp_path):
    # In a fresh interpreter: the default comes from the vendor's declaration, not from which of
    # its transport modules happened to be registered first.
    path = write(tmp_path, """
        targets:
          - {name: a, vendor: iammeter, host: 192.0.2.1}
          - {name: b, vendor: iometer, host: 192.0.2.2}
    """)
    code = textwrap.dedent(f"""
        import exporter.vendors.iammeter.mqtt, exporter.vendors.iometer.partner
        from exporter.config.loader import load_config
        from exporter.vendors import registry
        config = load_config({str(path)!r}, environ={{}}, vendors=registry)
        print([t.transport for t in config.targets])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['http', 'local']", done.stderr


# The loader knows no vendor: what a configuration may hold comes from the catalogue it is handed.
class _OneVendor:
    """A catalogue of one made-up vendor with one transport and one shared section."""

    def __init__(self) -> None:
        from exporter.config.loader import Option, SectionSpec

        self.spec = SimpleNamespace(
            vendor="acme", transport="lan", delivery="poll", default_interval=20.0, min_interval=5.0,
            default_overrides={}, options={"host": Option("str", required=True)},
            check_target=lambda options: [("host", "no dots here")] if "." in options["host"] else [],
            check_config=lambda config: ([(("acme_hub", "url"), "no hub at that address")]
                                         if config.sections["acme_hub"].get("url") == "nowhere" else []))
        self.hub = SectionSpec("acme_hub", {"url": Option("str")})

    def section_names(self):
        return ["acme_hub"]

    def section(self, name):
        return self.hub if name == "acme_hub" else None

    def vendor_names(self):
        return ["acme"]

    def transports(self, vendor):
        return ["lan"] if vendor == "acme" else []

    def get(self, vendor, transport):
        return self.spec if (vendor, transport) == ("acme", "lan") else None

    def in_use(self, targets, section_keys):
        return [self.spec]


def test_the_loader_checks_against_the_catalogue_it_is_handed(tmp_path):
    from exporter.config.loader import VendorCatalogue
    from exporter.config.loader import load_config as load
    from exporter.vendors import registry

    catalogue = _OneVendor()
    assert isinstance(catalogue, VendorCatalogue) and isinstance(registry, VendorCatalogue)
    config = load(write(tmp_path, """
        acme_hub: {url: hub.local}
        targets:
          - {name: box, vendor: acme, host: box1}
    """), environ={}, vendors=catalogue)
    [box] = config.targets
    assert (box.vendor, box.transport, box.interval, dict(box.options)) == ("acme", "lan", 20.0, {"host": "box1"})
    assert config.sections == {"acme_hub": {"url": "hub.local"}}

    path = write(tmp_path, """
        acme_hub: {url: hub.local}
        targets:
          - {name: box, vendor: acme, host: box1}
          - {name: p1, vendor: homewizard, host: 192.0.2.1}
          - {name: b2, vendor: acme, host: box.2, interval: 1s}
    """)
    with pytest.raises(ConfigError) as err:
        load(path, environ={}, vendors=catalogue)
    assert err.value.problems == [
        f"{path}:4: targets[1].vendor: unknown vendor 'homewizard' (one of: acme)",
        f"{path}:5: targets[2].interval: 1s is shorter than 5s, the fastest acme lan allows",
        f"{path}:5: targets[2].host: no dots here",
    ]
    path = write(tmp_path, "acme_hub: {url: nowhere}\ntargets: [{name: box, vendor: acme, host: box1}]\n")
    with pytest.raises(ConfigError) as err:
        load(path, environ={}, vendors=catalogue)
    assert err.value.problems == [f"{path}:1: acme_hub.url: no hub at that address"]


# Plain YAML is read from the parser's events; anchors, aliases, merge keys, explicit tags and
# several documents go through the node tree. Both must give the same data and the same lines
# (which every error message names).
YAML_SAMPLES = [
    "",
    "~",
    "targets:\n  - name: a\n    vendor: homewizard\n    host: 10.0.0.2\n  -\n    name: b\n",
    "a:\n  - - 1\n    - 2\n  - {}\n  - []\nb: |\n  text\n  more\nc: [1, {d: e}]\n",
    "1: on\n2: yes\n3: 2024-01-01\n4: 0x10\n5: .inf\n6: null\n7: '5'\n8: 1_000\n",
    "x: &a {p: 1}\ny: *a\n",
    "base: &b {interval: 5s}\nt:\n  <<: *b\n  host: h\n",
    "a: !!str 5\n",
    "? [1, 2]\n: 3\n",
]


@pytest.mark.parametrize("text", YAML_SAMPLES + [Path(__file__).parents[1].joinpath("config.example.yaml").read_text()],
                         ids=[f"sample{i}" for i in range(len(YAML_SAMPLES))] + ["config.example.yaml"])
def test_yaml_read_from_events_and_from_the_node_tree_agree(text, monkeypatch):
    from exporter.config import loader as config

    events = config.load_yaml(text, "f.yaml")
    monkeypatch.setattr(config, "_load_yaml_events", lambda text, filename: None)
    tree = config.load_yaml(text, "f.yaml")
    assert (events.data, events.lines) == (tree.data, tree.lines)


# Documents of the shapes a configuration has: nested mappings and lists of scalars of every kind
# YAML resolves (numbers, booleans, nulls, dates, text that looks like them), written in block
# and flow style.
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                     st.floats(allow_nan=False, allow_infinity=False), st.dates(),
                     st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
                     st.sampled_from(["yes", "off", "0x1f", "1e3", "~", "10s", "2024-01-31", "a: b", "- x", "#"]))
_KEYS = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8),
                  st.integers(0, 99))


def _mappings(values, max_size: int):
    """Mappings whose keys stay distinct as text: a configuration's keys are text, so `0` and
    `'0'` in one mapping are one key given twice (a duplicate either reader reports)."""
    return st.dictionaries(_KEYS, values, max_size=max_size).filter(lambda d: len({str(k) for k in d}) == len(d))


_DOCUMENTS = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), _mappings(inner, 4)),
                          max_leaves=25)


@settings(max_examples=150, deadline=None)
@given(document=_mappings(_DOCUMENTS, 5), flow=st.booleans())
def test_yaml_readers_agree_on_any_plain_document(document, flow):
    """The event reader (fast, for plain YAML) and the node tree (for anchors, aliases, merges
    and tags) give the same data and the same line of every key."""
    from exporter.config import loader as config

    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    events = config._load_yaml_events(text, "f.yaml")
    assert events is not None  # plain YAML never needs the node tree
    original = config._load_yaml_events
    try:
        config._load_yaml_events = lambda text, filename: None
        tree = config.load_yaml(text, "f.yaml")
    finally:
        config._load_yaml_events = original
    assert (events.data, events.lines) == (tree.data, tree.lines)


def test_duplicate_keys_and_bad_yaml_name_their_line_either_way(tmp_path):
    for anchor in ("", "&x "):  # an anchor sends the file through the node tree
        path = tmp_path / "c.yaml"
        path.write_text(f"targets:\n  - {anchor}{{name: a, vendor: homewizard, host: h}}\n"
                        "  - name: b\n    vendor: homewizard\n    host: h2\n    host: h3\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert f"{path}:6: targets[1].host: duplicate key" in str(err.value)
        path.write_text(f"targets:\n  - {anchor}{{name: a, vendor: homewizard, host: h\n")
        with pytest.raises(ConfigError, match=rf"{path}:3: not valid YAML"):
            load_config(path)


@pytest.mark.parametrize("text,expected", [
    ("x: " + "[" * 101 + "]" * 101 + "\n", "f.yaml:1: nested more than 100 levels deep"),
    ("a: 1\nx: 2024-13-45\n", "f.yaml:2: x: cannot read this value: month must be in 1..12"),
    ("a: 1\nx: 0x" + "f" * 5000 + "\n", "f.yaml:2: x: cannot read this value: a number"),
    ("a: 1\n? 2024-02-31\n: 1\n", "f.yaml:2: (top level): cannot read this value: day is out of range"),
    ("a: 1\nb: !nope x\n", "f.yaml:2: not valid YAML: could not determine a constructor for the tag '!nope'"),
], ids=["deep", "date", "huge_int", "date_key", "unknown_tag"])
def test_both_yaml_readers_refuse_alike(text, expected, monkeypatch):
    from exporter.config import loader as config

    with pytest.raises(ConfigError) as by_events:
        config.load_yaml(text, "f.yaml")
    monkeypatch.setattr(config, "_load_yaml_events", lambda text, filename: None)
    with pytest.raises(ConfigError) as by_tree:
        config.load_yaml(text, "f.yaml")
    assert str(by_events.value).startswith(expected), str(by_events.value)
    assert str(by_tree.value).startswith(expected), str(by_tree.value)
