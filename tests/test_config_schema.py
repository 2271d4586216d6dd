"""config.schema.json: generated from the option definitions, shipped, and in agreement with
`check-config` on what a file may hold."""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap

import pytest
import yaml

from exporter.config.loader import ConfigError, load_config
from exporter.config.schema import json_schema
from exporter.vendors import registry

from .conftest import ROOT

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_FILE = ROOT / "config.schema.json"
EXAMPLE = ROOT / "config.example.yaml"
ENV = {"IAMMETER_PASSWORD": "pw", "ENLIGHTEN_PASSWORD": "pw", "IOMETER_PARTNER_SECRET": "secret",
       "MQTT_PASSWORD": "pw", "ENV_VAR": "x", "SECRET": "s3cret"}


def validator():
    schema = json_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_the_generated_one():
    spec = importlib.util.spec_from_file_location("update", ROOT / "scripts" / "update-readme-tables.py")
    update = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update)
    assert SCHEMA_FILE.read_text() == update.schema_text(), "config.schema.json is out of date: run `make readme-tables`"


def test_the_example_names_the_schema_and_passes_it():
    assert EXAMPLE.read_text().startswith("# yaml-language-server: $schema=./config.schema.json\n")
    errors = sorted(validator().iter_errors(yaml.safe_load(EXAMPLE.read_text())), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # ... and check-config agrees, with every variable the example names set.
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", EXAMPLE.read_text())
    load_config(EXAMPLE, environ={**{name: "x" for name in names}, **ENV}, vendors=registry)


# Files the schema and the loader must judge alike. The loader checks more than the schema can
# (cross-target rules, quotas, a token's form): those are not in this list.
GOOD = [
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10}]",
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, interval: 10s, timeout: 2}]",
    "defaults: {interval: 30s, jitter: 0.2}\ntargets: [{name: m, vendor: iammeter, host: 192.0.2.11}]",
    "targets: [{name: m, vendor: iammeter, transport: modbus, host: 192.0.2.11, port: 502}]",
    "targets: [{name: c, vendor: iammeter, transport: cloud, username: me, password: '${SECRET}', interval: 5m}]",
    "targets: [{name: g, vendor: enphase, host: envoy.local, timezone: Europe/Berlin, disable: [inventory]}]",
    "mqtt_brokers: [{name: home, host: 127.0.0.1}]\n"
    "targets: [{name: q, vendor: iammeter, transport: mqtt, broker: home, sn: 3E0BAF87}]",
    "targets: [{name: b, vendor: iometer, host: 192.0.2.12}]",
]
BAD = [
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, colour: blue}]",  # unknown key
    "targets: [{name: p1, vendor: acme, host: 192.0.2.10}]",  # unknown vendor
    "targets: [{vendor: homewizard, host: 192.0.2.10}]",  # no name
    "targets: [{name: 'a b', vendor: homewizard, host: 192.0.2.10}]",  # not a name
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, interval: soon}]",  # not a duration
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, jitter: 2}]",  # out of range
    "targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, api_version: v3}]",  # not a choice
    "targets: [{name: m, vendor: iammeter, transport: modbus, host: h, port: '502'}]",  # a string for a number
    "targets: [{name: c, vendor: iammeter, transport: cloud, username: me}]",  # required secret missing
    "targets: [{name: c, vendor: iammeter, transport: cloud, username: me, password: a, password_file: /x}]",
    "targets: [{name: m, vendor: iammeter, transport: sms, host: h}]",  # unknown transport
    "targets: [{name: p1, vendor: homewizard, host: h, broker: home}]",  # another transport's key
    "defaults: {name: x}\ntargets: []",  # defaults take no name
    "state: /var/lib/x\ntargets: []",  # unknown top-level key
    "targets: {name: p1}",  # not a list
]


@pytest.mark.parametrize("text", GOOD + BAD, ids=[f"good{i}" for i in range(len(GOOD))] + [f"bad{i}" for i in range(len(BAD))])
def test_schema_and_check_config_agree(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text) + "\n")
    schema_ok = validator().is_valid(yaml.safe_load(path.read_text()))
    try:
        load_config(path, environ=ENV, vendors=registry)
        loader_ok = True
    except ConfigError as exc:
        loader_ok, problems = False, exc.problems
    assert schema_ok == (text in GOOD), f"schema says {'valid' if schema_ok else 'invalid'}"
    assert loader_ok == schema_ok, problems if not loader_ok else "the loader accepts it"


def test_every_option_of_every_transport_is_in_the_schema():
    schema = json_schema(registry)
    branches = schema["properties"]["targets"]["items"]["allOf"]
    by_transport = {(b["if"]["properties"]["vendor"]["const"], b["if"]["properties"]["transport"]["const"]):
                    set(b["then"]["properties"]) for b in branches if "transport" in b["if"]["properties"]}
    for spec in registry.specs():
        keys = by_transport[(spec.vendor, spec.transport)]
        assert set(spec.options) <= keys, (spec.vendor, spec.transport)
    assert json.loads(SCHEMA_FILE.read_text())["$schema"].startswith("https://json-schema.org/draft/2020-12")


def test_check_config_without_secrets_checks_their_place_not_their_value(tmp_path):
    """`check-config --no-secrets` (what `make check-config` runs on the example): variables not set
    and secret files absent here pass; a mistake elsewhere still fails with its line."""
    import subprocess
    import sys

    def check(path, *flags):
        return subprocess.run([sys.executable, "-m", "exporter", "check-config", *flags, "--config.file", str(path)],
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})

    good = check(EXAMPLE, "--no-secrets")
    assert good.returncode == 0, good.stderr
    assert "secrets not read" in good.stdout
    refused = check(EXAMPLE)  # the same file, secrets asked for: the variables are not set
    assert refused.returncode == 2 and "environment variable" in refused.stderr
    path = tmp_path / "config.yaml"
    path.write_text("targets:\n  - {name: c, vendor: iammeter, transport: cloud, username: me,"
                    " password_file: /nonexistent/secret}\n  - {name: p1, vendor: homewizard, host: h, colour: blue}\n")
    mixed = check(path, "--no-secrets")
    assert mixed.returncode == 2
    assert "config.yaml:3: targets[1].colour: unknown key" in mixed.stderr and "nonexistent" not in mixed.stderr


def test_every_file_the_loader_accepts_in_the_suite_is_checked_against_the_schema(tmp_path):
    """tests/conftest.py wraps the loader: a file it accepts that the schema rejects fails the
    test that wrote it (the demo's generated configuration among them, via tests/test_demo.py);
    a real exporter process a test starts (ExporterProcess) has its file checked once it runs."""
    from exporter.config import loader
    from tests.schema_guard import SchemaDisagreement, guarded

    assert getattr(loader._load_config, "checks_schema", False)
    path = tmp_path / "config.yaml"
    path.write_text("targets: [{name: p1, vendor: homewizard, host: 192.0.2.10, colour: red}]\n")
    accept_anything = guarded(lambda *args: "accepted")
    with pytest.raises(SchemaDisagreement, match=r"targets\.0: .*colour"):
        accept_anything(path, None, None, registry, True)
