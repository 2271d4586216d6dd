"""deploy/kubernetes: every overlay renders with kustomize into objects Kubernetes accepts (its
own schemas, offline, strict) and the Prometheus Operator accepts (its documented fields), and
what a user would notice holds: Prometheus finds the exporter, the probes hit real paths, the
pods run the exporter as the manifests say (non-root, read-only root filesystem, state on its
volume), each shard gets its own share of the targets and no cloud quota is spent by two."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from exporter.config.loader import Config
from exporter.runtime.shard import Shard
from exporter.vendors import load_all, registry

from .configs import load_config
from .conftest import ROOT

load_all()

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
# Every kustomization that renders on its own (components only render inside another one).
RENDERABLE = [p.parent for p in sorted(KUBERNETES.rglob("kustomization.yaml"))
              if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization"]
COMPONENT_WITHOUT_OPERATOR = KUBERNETES / "components" / "without-prometheus-operator"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
EXPORTER = Path(sys.executable).with_name("energy-meter-exporter")
# The oldest Kubernetes the manifests are for (the pod-index label the shards read is there from
# 1.28) and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.28.0", "latest")
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
OPERATOR_GROUP = "monitoring.coreos.com"


_NEEDS = "kubectl 1.27 or later, with kustomize v5, from the Kubernetes project's package repository"


@functools.cache
def _kubectl() -> str | None:
    path = shutil.which("kubectl")
    if not path:
        return None
    version = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "") if version.returncode == 0 else ""
    return path if re.match(r"v([5-9]|\d\d)\.", kustomize) else None


def kubectl() -> str:
    path = _kubectl()
    if not path:
        pytest.skip(f"kubectl with kustomize v5 is not installed: it renders the kustomizations ({_NEEDS})")
    return path


def kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIRECTORY`: the objects it renders."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_RENDERED: dict[Path, list[dict]] = {}


def rendered(directory: Path) -> list[dict]:
    """The objects of one kustomization, rendered once per run of the tests."""
    if directory not in _RENDERED:
        _RENDERED[directory] = kustomize(directory)
    return _RENDERED[directory]


def only(objects: Iterable[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objects: list[dict]) -> dict:
    (found,) = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    return found


def exporter_container(pod: dict) -> dict:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "exporter"]
    return container


def overlay_id(path: Path) -> str:
    return path.name


# --- Kubernetes's expansion of $(VAR) and the downward API -----------------------------------------

def expand(text: str, variables: Mapping[str, str]) -> str:
    """`$(VAR)` as the kubelet expands it in command, args and env values: a defined VAR becomes
    its value, `$$` a literal `$`, anything else stays as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i + 2:]:
            end = text.index(")", i + 2)
            name = text[i + 2:end]
            out.append(variables.get(name, text[i:end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def pod_of(workload_object: dict, ordinal: int = 0) -> dict:
    """The pod the controller makes: a StatefulSet's pod `ordinal` carries its name and the
    pod-index label (Kubernetes 1.28+)."""
    template = workload_object["spec"]["template"]
    metadata = dict(template.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    name = f"{workload_object['metadata']['name']}-{ordinal}"
    if workload_object["kind"] == "StatefulSet":
        labels[POD_INDEX_LABEL] = str(ordinal)
        labels["statefulset.kubernetes.io/pod-name"] = name
    metadata.update(labels=labels, name=name, namespace=workload_object["metadata"].get("namespace", "default"))
    return {"metadata": metadata, "spec": template["spec"]}


def _field(pod: dict, path: str) -> str:
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        values = pod["metadata"].get(match.group(1)) or {}
        assert match.group(2) in values, f"{path}: the pod has no such {match.group(1)[:-1]}"
        return values[match.group(2)]
    if path in ("metadata.name", "metadata.namespace"):
        return pod["metadata"][path.split(".")[1]]
    raise AssertionError(f"fieldRef {path} is not simulated here")


def environment(pod: dict, container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: in order, each value expanded with
    the variables defined before it, fieldRefs from the pod."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        else:
            source = item["valueFrom"]
            assert set(source) == {"fieldRef"}, f"env {item['name']}: only fieldRef is simulated here"
            env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
    return env


def command_line(pod: dict, container: dict) -> list[str]:
    env = environment(pod, container)
    return [expand(arg, env) for arg in container.get("command", []) + container.get("args", [])]


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


# --- the overlay's configuration, as mounted ------------------------------------------------------

def mounts(pod: dict, container: dict) -> dict[str, dict]:
    """mountPath -> the pod volume mounted there."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for claim in pod["spec"].get("volumeClaimTemplates") or []:
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "volumeClaimTemplate": claim}
    return {m["mountPath"]: volumes.get(m["name"], {"name": m["name"]}) for m in container.get("volumeMounts") or []}


def volume_mounts(objects: list[dict]) -> dict[str, dict]:
    """mountPath -> volume for the exporter container, claim templates included."""
    owner = workload(objects)
    pod = pod_of(owner)
    pod["spec"] = dict(pod["spec"], volumeClaimTemplates=owner["spec"].get("volumeClaimTemplates"))
    return mounts(pod, exporter_container(pod))


def mount_of(path: str, mounted: Mapping[str, dict]) -> str | None:
    """The mount path `path` lies under (the deepest), or None."""
    under = [m for m in mounted if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(under, key=len) if under else None


def config_map_files(objects: list[dict], volume: dict) -> dict[str, str]:
    name = volume["configMap"]["name"]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    return config_map["data"]


def config_text(objects: list[dict]) -> tuple[str, str]:
    """(the --config.file path, the configuration the ConfigMap puts there)."""
    pod = pod_of(workload(objects))
    path = flag(command_line(pod, exporter_container(pod)), "--config.file")
    assert path, "the exporter is not given --config.file"
    mounted = volume_mounts(objects)
    where = mount_of(path, mounted)
    assert where and "configMap" in mounted[where], f"{path} is not on a ConfigMap volume"
    files = config_map_files(objects, mounted[where])
    name = os.path.relpath(path, where)
    assert name in files, f"the ConfigMap mounted at {where} has no {name}"
    return path, files[name]


@pytest.fixture(scope="module")
def overlay_configs(tmp_path_factory) -> dict[Path, tuple[Path, Config, dict]]:
    """Per overlay: its configuration written out, loaded as check-config loads it (secrets not
    read), and as YAML."""
    out = {}
    for overlay in OVERLAYS:
        _, text = config_text(rendered(overlay))
        path = tmp_path_factory.mktemp(overlay.name) / "config.yaml"
        path.write_text(text)
        out[overlay] = (path, load_config(path, read_secrets=False), yaml.safe_load(text))
    return out


def dockerfile_image() -> str:
    match = re.search(r"docker build -t (\S+) \.", DOCKERFILE)
    assert match, "the Dockerfile no longer says `docker build -t NAME .`"
    return match.group(1)


def dockerfile_user() -> tuple[int, str]:
    """(uid, home) of the image's user."""
    match = re.search(r"useradd .*--uid (\d+) .*--home-dir (\S+)|useradd .*--home-dir (\S+) .*--uid (\d+)", DOCKERFILE)
    assert match, "the Dockerfile's useradd line lost --uid or --home-dir"
    uid, home = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
    return int(uid), home


# --- schemas -------------------------------------------------------------------------------------

def test_the_kustomizations_are_where_the_docs_say():
    names = {p.relative_to(KUBERNETES).as_posix() for p in RENDERABLE}
    assert {"base", "single", "sharded", "overlays/single", "overlays/sharded"} <= names
    assert {"sharded", "single"} <= {p.name for p in OVERLAYS}


@pytest.mark.parametrize("directory", RENDERABLE, ids=lambda p: p.relative_to(KUBERNETES).as_posix())
def test_every_object_is_valid_kubernetes(directory):
    import kubernetes_validate

    objects = rendered(directory)
    assert objects
    for version in KUBERNETES_VERSIONS:
        wanted = kubernetes_validate.latest_version() if version == "latest" else version
        for obj in objects:
            if obj["apiVersion"].startswith(OPERATOR_GROUP + "/"):
                continue  # not a core kind: checked against the operator's API below
            try:
                kubernetes_validate.validate(obj, wanted, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{directory.relative_to(ROOT)}: {obj['kind']} {obj['metadata']['name']} "
                                     f"is not valid Kubernetes {wanted}: {exc.message} at "
                                     f"{'.'.join(map(str, exc.path))}") from None


def test_strict_validation_refuses_an_unknown_field():
    # The check above is worth something only if a misspelt key fails it.
    import kubernetes_validate

    deployment = json.loads(json.dumps(workload(rendered(OVERLAYS[0]))))
    exporter_container(deployment["spec"]["template"])["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# The Prometheus Operator's kinds (monitoring.coreos.com/v1), from its API reference: the fields
# of ServiceMonitor and PrometheusRule. Closed (additionalProperties false) where the API is;
# nested settings the manifests do not use (TLS, authorization) are only required to be objects.
_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_OBJECT = {"type": "object"}
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_METADATA = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
    "namespace": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP}}
_LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STRING_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "additionalProperties": False, "properties": {
            "key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": _STRINGS}}}}}
_RELABEL_ACTIONS = ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                    "uppercase", "keepequal", "dropequal"]
_RELABELING = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "action": {"enum": _RELABEL_ACTIONS + ["Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop",
                                           "LabelKeep", "Lowercase", "Uppercase", "KeepEqual", "DropEqual"]},
    "modulus": {"type": "integer"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}}}}}
_SCRAPE_PROTOCOLS = ["PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0", "PrometheusText0.0.4",
                     "PrometheusText1.0.0"]
_ENDPOINT = {"type": "object", "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "targetPort": {"type": ["integer", "string"]}, "path": {"type": "string"},
    "scheme": {"enum": ["http", "https"]},
    "params": {"type": "object", "additionalProperties": _STRINGS},
    "interval": _DURATION, "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"}, "followRedirects": {"type": "boolean"},
    "enableHttp2": {"type": "boolean"}, "filterRunning": {"type": "boolean"},
    "relabelings": _RELABELING, "metricRelabelings": _RELABELING,
    "proxyUrl": {"type": "string", "pattern": "^(http|https|socks5)://.+$"}, "noProxy": {"type": "string"},
    "proxyFromEnvironment": {"type": "boolean"}, "proxyConnectHeader": _OBJECT,
    "tlsConfig": _OBJECT, "authorization": _OBJECT, "basicAuth": _OBJECT, "oauth2": _OBJECT,
    "bearerTokenFile": {"type": "string"}, "bearerTokenSecret": _OBJECT}}
_SERVICE_MONITOR_SPEC = {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                         "properties": {
    "jobLabel": {"type": "string"}, "targetLabels": _STRINGS, "podTargetLabels": _STRINGS,
    "endpoints": {"type": "array", "items": _ENDPOINT}, "selector": _LABEL_SELECTOR,
    "selectorMechanism": {"enum": ["RelabelConfig", "RoleSelector"]},
    "serviceDiscoveryRole": {"enum": ["Endpoints", "EndpointSlice"]},
    "namespaceSelector": {"type": "object", "additionalProperties": False,
                          "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS}},
    "sampleLimit": _COUNT, "targetLimit": _COUNT, "labelLimit": _COUNT, "labelNameLengthLimit": _COUNT,
    "labelValueLengthLimit": _COUNT, "keepDroppedTargets": _COUNT, "nativeHistogramBucketLimit": _COUNT,
    "nativeHistogramMinBucketFactor": {"type": ["integer", "string"]},
    "scrapeClassicHistograms": {"type": "boolean"}, "convertClassicHistogramsToNHCB": {"type": "boolean"},
    "scrapeProtocols": {"type": "array", "uniqueItems": True, "items": {"enum": _SCRAPE_PROTOCOLS}},
    "fallbackScrapeProtocol": {"enum": _SCRAPE_PROTOCOLS},
    "attachMetadata": {"type": "object", "additionalProperties": False, "properties": {"node": {"type": "boolean"}}},
    "scrapeClass": {"type": "string", "minLength": 1},
    "bodySizeLimit": {"type": "string", "pattern": r"(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$"}}}
_RULE = {"type": "object", "required": ["expr"], "additionalProperties": False, "properties": {
    "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"}, "alert": {"type": "string", "minLength": 1},
    "expr": {"type": ["string", "integer"]}, "for": _DURATION, "keep_firing_for": dict(_DURATION, minLength=1),
    "labels": _STRING_MAP, "annotations": _STRING_MAP},
    # One of record and alert; `for`, `keep_firing_for` and annotations belong to alerts only.
    "oneOf": [{"required": ["record"], "not": {"anyOf": [{"required": [k]} for k in
                                                         ("alert", "for", "keep_firing_for", "annotations")]}},
              {"required": ["alert"], "not": {"required": ["record"]}}]}
_RULE_GROUP = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "minLength": 1}, "interval": _DURATION, "query_offset": _DURATION,
    "limit": {"type": "integer"}, "labels": _STRING_MAP, "rules": {"type": "array", "items": _RULE},
    "partial_response_strategy": {"type": "string", "pattern": "^([Aa][Bb][Oo][Rr][Tt]|[Ww][Aa][Rr][Nn])?$"}}}
_PROMETHEUS_RULE_SPEC = {"type": "object", "additionalProperties": False, "properties": {
    "groups": {"type": "array", "items": _RULE_GROUP}}}


def _operator_kind(kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": f"{OPERATOR_GROUP}/v1"}, "kind": {"const": kind},
                           "metadata": _METADATA, "spec": spec}}


OPERATOR_SCHEMAS = {"ServiceMonitor": _operator_kind("ServiceMonitor", _SERVICE_MONITOR_SPEC),
                    "PrometheusRule": _operator_kind("PrometheusRule", _PROMETHEUS_RULE_SPEC)}


def operator_problems(obj: dict) -> list[str]:
    schema = OPERATOR_SCHEMAS.get(obj["kind"])
    if schema is None:
        return [f"{obj['kind']}: no schema here for this kind of {OPERATOR_GROUP}"]
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(obj)]
    if obj["kind"] == "PrometheusRule":  # the operator keys the groups by name
        names = [g["name"] for g in obj["spec"].get("groups") or []]
        problems += [f"group {n} named twice" for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


@pytest.mark.parametrize("directory", RENDERABLE, ids=lambda p: p.relative_to(KUBERNETES).as_posix())
def test_prometheus_operator_objects_use_only_documented_fields(directory):
    objects = [o for o in rendered(directory) if o["apiVersion"].startswith(OPERATOR_GROUP + "/")]
    assert {o["kind"] for o in objects} == {"ServiceMonitor", "PrometheusRule"}
    for obj in objects:
        assert operator_problems(obj) == [], f"{obj['kind']} {obj['metadata']['name']}"


def test_the_operator_schema_refuses_what_the_operator_refuses():
    rule = next(o for o in rendered(KUBERNETES / "base") if o["kind"] == "PrometheusRule")
    monitor = only(rendered(KUBERNETES / "base"), "ServiceMonitor")
    for broken in (
        {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}},  # misspelt
        {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "interval": "15 s"}]}},
        {**rule, "spec": {"groups": [{"name": "g", "rules": [{"record": "a:b", "alert": "A", "expr": "1"}]}]}},
        {**rule, "spec": {"groups": [{"name": "g", "rules": [{"record": "a:b", "expr": "1", "for": "5m"}]}]}},
        {**rule, "spec": {"groups": [{"name": "g"}, {"name": "g"}]}},
    ):
        assert operator_problems(broken), broken["spec"]


# --- the PrometheusRule: generated from the rule files ----------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("generate_kubernetes_rules",
                                                  ROOT / "scripts" / "generate-kubernetes-rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_prometheusrule_is_the_generated_one():
    generator = _generator()
    assert generator.OUTPUT.read_text() == generator.render(), (
        "deploy/kubernetes/base/prometheusrule.yaml is not what the rule files under prometheus/ give: "
        "run `python scripts/generate-kubernetes-rules.py`")


def test_the_prometheusrules_hold_exactly_the_rules_prometheus_loads():
    generator = _generator()
    files = generator.rule_files()
    listed = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert [p.name for p in files] == listed and all(p.is_file() for p in files)
    rules = {o["metadata"]["name"]: o["spec"]["groups"] for o in rendered(KUBERNETES / "base")
             if o["kind"] == "PrometheusRule"}
    # Whitespace aside: kustomize's YAML library (Go's, as Prometheus's) reads a folded `>-`
    # scalar with more-indented lines with one line break more than PyYAML does.
    assert _spaced(rules) == _spaced({generator.object_name(p): yaml.safe_load(p.read_text())["groups"] for p in files})


def _spaced(node: Any) -> Any:
    """`node` with every run of whitespace in its strings made one space."""
    if isinstance(node, dict):
        return {k: _spaced(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_spaced(v) for v in node]
    return " ".join(node.split()) if isinstance(node, str) else node


def test_the_generator_keeps_comments_and_refuses_groups_named_twice(tmp_path):
    generator = _generator()
    (tmp_path / "prometheus.yml").write_text("rule_files:\n  - rules/*.yml\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "b.yml").write_text(textwrap.dedent("""\
        # header, not carried over
        groups:
          - name: two
            rules:
              # why this rule exists
              - record: job:x:sum
                expr: |
                  sum by (job) (x)

                  + 0
        """))
    (tmp_path / "rules" / "a.yml").write_text("groups: [{name: one, rules: [{alert: A, expr: up == 0}]}]\n")
    text = generator.render(tmp_path / "prometheus.yml")
    documents = list(yaml.safe_load_all(text))
    assert [d["metadata"]["name"] for d in documents] == ["energy-meter-exporter-a", "energy-meter-exporter-b"]
    assert documents[1]["spec"]["groups"][0]["rules"][0]["expr"] == "sum by (job) (x)\n\n+ 0\n"
    assert "# why this rule exists" in text and "header" not in text
    assert documents[0]["spec"]["groups"] == [{"name": "one", "rules": [{"alert": "A", "expr": "up == 0"}]}]
    (tmp_path / "rules" / "a.yml").write_text("groups: [{name: one}, {name: one}]\n")
    with pytest.raises(ValueError, match="one"):
        generator.render(tmp_path / "prometheus.yml")


# --- what a user notices ----------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_prometheus_operator_finds_the_exporter(overlay):
    objects = rendered(overlay)
    monitor, service, owner = only(objects, "ServiceMonitor"), only(objects, "Service"), workload(objects)
    namespace = service["metadata"].get("namespace")
    assert monitor["metadata"].get("namespace") == namespace and namespace  # found in its own namespace
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    pod = pod_of(owner)
    container = exporter_container(pod)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = flag(command_line(pod, container), "--web.listen-address")
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports, f"the ServiceMonitor scrapes port {endpoint['port']}, the Service has {list(ports)}"
        assert endpoint.get("path", "/metrics") == "/metrics"
        target = ports[endpoint["port"]]["targetPort"]
        assert container_ports.get(target, target) == int(listen.rsplit(":", 1)[1])
    # The Service's endpoints are the exporter's pods.
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert owner["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # Every pod is a target of its own (shards serve different series).
    assert service["spec"].get("clusterIP") == "None"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_without_the_operator_the_service_carries_the_scrape_annotations(overlay, tmp_path):
    home = tmp_path / "overlay"
    home.mkdir()
    (home / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(overlay, home)], "components": [os.path.relpath(COMPONENT_WITHOUT_OPERATOR, home)]}))
    objects = kustomize(home)
    assert not [o for o in objects if o["apiVersion"].startswith(OPERATOR_GROUP)]
    service = only(objects, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert workload(objects) == workload(rendered(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_probes_ask_the_exporter_health_and_readiness(overlay):
    pod = pod_of(workload(rendered(overlay)))
    container = exporter_container(pod)
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: p["path"] for kind, p in probes.items()} == {
        "startupProbe": "/-/healthy", "livenessProbe": "/-/healthy", "readinessProbe": "/-/ready"}
    listen = int(flag(command_line(pod, container), "--web.listen-address").rsplit(":", 1)[1])
    assert {names.get(p["port"], p["port"]) for p in probes.values()} == {listen}
    # (test_the_pod_runs_read_only below asks the running exporter these very paths.)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_pods_run_unprivileged_with_a_read_only_root(overlay):
    objects = rendered(overlay)
    pod = pod_of(workload(objects))
    uid, _ = dockerfile_user()
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid and security["fsGroup"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    for container in pod["spec"]["containers"] + (pod["spec"].get("initContainers") or []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False and context.get("privileged") is not True
        assert context["capabilities"] == {"drop": ["ALL"]}
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{container['name']}: {bound}"
        # The image the Dockerfile builds, started as the console script it installs.
        assert container["image"].split(":")[0].rsplit("/", 1)[-1] == dockerfile_image()
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert container["command"][0] in scripts


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_the_configuration_comes_from_the_overlay_and_checks(overlay, overlay_configs):
    objects = rendered(overlay)
    path, text = config_text(objects)
    assert text == (overlay / "config.yaml").read_text()  # generated from the overlay's file
    # A change of the file changes the ConfigMap's name, which restarts the pods with it.
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert re.fullmatch(r"energy-meter-exporter-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    result = subprocess.run([str(EXPORTER), "check-config", "--no-secrets", "--config.file", str(overlay_configs[overlay][0])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def _secret_keys(vendor: str, transport: str) -> set[str]:
    spec = registry.get(vendor, transport)
    return {key for key, option in spec.options.items() if option.type == "secret"}


def _values(node: Any, key: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _values(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _values(v, key)
    else:
        yield key, node


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_secrets_are_files_of_a_secret_and_state_is_on_its_volume(overlay, overlay_configs):
    objects = rendered(overlay)
    _, config, data = overlay_configs[overlay]
    mounted = volume_mounts(objects)
    secret_mounts = [m for m, v in mounted.items() if "secret" in v]
    assert secret_mounts, "no Secret volume"
    assert not [o for o in objects if o["kind"] == "Secret"]  # secrets are not kept in the repository
    # Every secret of the configuration is a file of the Secret volume, none written inline.
    inline = [f"{t['name']}.{key}" for t in data["targets"]
              for key in _secret_keys(t["vendor"], t.get("transport") or registry.transports(t["vendor"])[0])
              if key in t]
    assert inline == []
    files = [value for key, value in _values(data) if key.endswith("_file")]
    assert files and all(mount_of(f, mounted) in secret_mounts for f in files), files
    # The state directory (tokens, the quota ledger) is on a persistent volume, below its root.
    where = mount_of(config.state_directory, mounted)
    assert where and where != config.state_directory, f"state_directory {config.state_directory}"
    volume = mounted[where]
    if workload(objects)["kind"] == "StatefulSet":
        assert "volumeClaimTemplate" in volume  # one volume per shard
    else:
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert [o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim]
        # one exporter at a time, even while a new version rolls out
        assert workload(objects)["spec"]["replicas"] == 1
        assert workload(objects)["spec"]["strategy"] == {"type": "Recreate"}


# --- shards ----------------------------------------------------------------------------------------

SHARDED = KUBERNETES / "overlays" / "sharded"


def shard_command_lines(objects: list[dict], count: int) -> list[list[str]]:
    owner = workload(objects)
    return [command_line(pod_of(owner, i), exporter_container(pod_of(owner, i))) for i in range(count)]


def test_the_shard_count_is_the_replica_count():
    owner = workload(rendered(SHARDED))
    assert owner["kind"] == "StatefulSet"
    replicas = owner["spec"]["replicas"]
    assert replicas > 1
    overlay = yaml.safe_load((SHARDED / "kustomization.yaml").read_text())
    assert overlay["replicas"] == [{"name": owner["metadata"]["name"], "count": replicas}]  # set in one place
    shards = [flag(argv, "--shard") for argv in shard_command_lines(rendered(SHARDED), replicas)]
    assert shards == [f"{i}/{replicas}" for i in range(replicas)]


def _cli(argv: list[str], *more: str) -> subprocess.CompletedProcess:
    """The pod's command line run here (this checkout's console script), with more arguments."""
    assert argv[0] == "energy-meter-exporter"
    return subprocess.run([str(EXPORTER), *argv[1:], *more], capture_output=True, text=True, timeout=60)


def test_the_exporter_accepts_every_shards_command_line(overlay_configs):
    objects = rendered(SHARDED)
    replicas = workload(objects)["spec"]["replicas"]
    config_path, _ = config_text(objects)
    local_config = str(overlay_configs[SHARDED][0])
    from exporter import cli

    for index, argv in enumerate(shard_command_lines(objects, replicas)):
        argv = [a.replace(config_path, local_config) for a in argv]
        # The real command line, with check-config after it: the flags are parsed (--shard
        # included) and the configuration checked, nothing started.
        result = _cli(argv, "check-config", "--no-secrets")
        assert result.returncode == 0, result.stderr
        assert cli.build_parser().parse_args(argv[1:]).shard == Shard(index, replicas)
    # `kubectl scale` past the overlay's count: the extra pod refuses to start (exit 2).
    (extra,) = shard_command_lines(objects, replicas + 1)[replicas:]
    result = _cli([a.replace(config_path, local_config) for a in extra], "check-config", "--no-secrets")
    assert result.returncode == 2 and "--shard" in result.stderr


def owners(config: Config, count: int) -> dict[str, set[int]]:
    """target name -> the shards that poll it."""
    return {t.name: {i for i in range(count) if Shard(i, count).owns(registry.shard_key(t))} for t in config.targets}


def quota_scopes(config: Config) -> dict[tuple[str, str], list[str]]:
    """(quota, scope) -> the targets that spend it: the IAMMETER cloud's login per source address
    (all accounts behind one base_url), metersdata per account, meterdata and the analyses per
    SN, energy history per place; the IOmeter Partner API per partner account."""
    from exporter.vendors.iammeter.cloud_settings import IammeterCloudSettings

    scopes: dict[tuple[str, str], list[str]] = {}
    for t in config.targets:
        keys: list[tuple[str, str]] = []
        if (t.vendor, t.transport) == ("iammeter", "cloud"):
            settings = IammeterCloudSettings.of(t)
            keys.append(("iammeter login", urlsplit(settings.base_url).netloc))
            keys.append(("iammeter metersdata", settings.username))
            keys += [("iammeter meterdata and analyses", sn) for sn in settings.sns]
            keys += [("iammeter energyhistory", place.split("=")[0]) for place in t.option("places", ())]
        elif (t.vendor, t.transport) == ("iometer", "partner"):
            keys.append(("iometer partner", str(t.option("partner_id"))))
        for key in keys:
            scopes.setdefault(key, []).append(t.name)
    return scopes


def test_each_target_has_one_shard_and_each_quota_one_ledger(overlay_configs):
    _, config, _ = overlay_configs[SHARDED]
    replicas = workload(rendered(SHARDED))["spec"]["replicas"]
    polled_by = owners(config, replicas)
    assert all(len(shards) == 1 for shards in polled_by.values()), polled_by
    assert {i for shards in polled_by.values() for i in shards} == set(range(replicas))  # no idle shard
    scopes = quota_scopes(config)
    assert scopes
    for (quota, scope), names in scopes.items():
        spending = set().union(*(polled_by[n] for n in names))
        assert len(spending) == 1, (
            f"{quota} quota of {scope} is spent from shards {sorted(spending)} (targets {names}): their "
            "ledgers do not know of each other; see docs/kubernetes.md, Shards and cloud quotas")
    # A meter uploads to one address, that of the push listeners: their targets cannot be sharded.
    listeners = {"http_push", "tcp_push"}
    assert not [t.name for t in config.targets if listeners & set(registry.get(t.vendor, t.transport).uses_sections)]


def test_two_iammeter_cloud_accounts_on_two_shards_share_the_login_quota():
    # What the check above guards against: the cloud counts logins per source address, and two
    # accounts may well land on different shards.
    from exporter.config.loader import TargetConfig

    accounts = [TargetConfig(name=f"cloud-{i}", vendor="iammeter", transport="cloud", interval=300.0, timeout=20.0,
                             max_backoff=300.0, stale_after=900.0, jitter=0.0,
                             options={"username": f"account-{i}@example.org", "password": "pw"}) for i in range(8)]
    config = Config(path="fleet.yaml", targets=tuple(accounts), state_directory="/state", sections={})
    polled_by = owners(config, 3)
    logins = quota_scopes(config)[("iammeter login", "www.iammeter.com")]
    assert len(set().union(*(polled_by[n] for n in logins))) > 1


# --- the pod, run: read-only root filesystem -------------------------------------------------------

# Run inside new user, mount and network namespaces (unshare): the network has only loopback (the
# overlays' meters and clouds are not reached), every mount is read-only but the state volume's
# directory. Brings loopback up, remounts, starts the exporter, asks the probe paths and
# /metrics, stops it with SIGTERM; prints what it saw as JSON.
_LAUNCHER = r"""
import fcntl, json, os, signal, socket, struct, subprocess, sys, time, urllib.error, urllib.request
spec = json.loads(sys.argv[1])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(sock, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
fcntl.ioctl(sock, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))
for path in spec["writable"]:
    subprocess.run(["mount", "--bind", path, path], check=True)
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    point, options = fields[4], fields[5].split(",")
    if "rw" not in options or point in spec["writable"] or point.startswith(("/proc", "/sys")):
        continue
    flags = ",".join("ro" if o == "rw" else o for o in options)
    subprocess.run(["mount", "-o", "remount,bind," + flags, point], check=True)
log = open(spec["log"], "w")
proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdout=log, stderr=subprocess.STDOUT)

def get(path):
    try:
        with urllib.request.urlopen(spec["base"] + path, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return None, repr(exc)

seen = {}
deadline = time.monotonic() + spec["timeout"]
while time.monotonic() < deadline and proc.poll() is None:
    seen = {path: get(path)[0] for path in spec["probes"]}
    if all(status == 200 for status in seen.values()):
        break
    time.sleep(0.2)
metrics = get("/metrics")[1]
proc.send_signal(signal.SIGTERM)
try:
    code = proc.wait(15)
except subprocess.TimeoutExpired:
    proc.kill()
    code = "killed"
print(json.dumps({"probes": seen, "metrics": metrics, "returncode": code}))
"""


def _namespaces_work() -> str | None:
    unshare = shutil.which("unshare")
    if not unshare or not shutil.which("mount"):
        return "unshare and mount (util-linux) are not installed"
    here = tempfile.gettempdir()
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "--net", "mount", "--bind", here, here],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"user namespaces are not available here ({probe.stderr.strip() or probe.returncode})"
    return None


def relocate(text: str, places: Mapping[str, Path]) -> str:
    """`text` with each mount path replaced by the directory standing in for it (longest first)."""
    for mount in sorted(places, key=len, reverse=True):
        text = text.replace(mount, str(places[mount]))
    return text


def _running_shard(config: Config, count: int) -> int:
    """The shard that polls the IAMMETER cloud account (so that its ledger is written), else 0."""
    for target in config.targets:
        if (target.vendor, target.transport) == ("iammeter", "cloud"):
            return next(i for i in range(count) if Shard(i, count).owns(registry.shard_key(target)))
    return 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_the_pod_runs_read_only(overlay, overlay_configs, tmp_path):
    """The rendered pod's command line, its volumes as directories at the places it mounts them
    (configuration and secrets read-only, the state volume writable), every other mount read-only
    and no network but loopback: the exporter starts, its probes answer 200, the IAMMETER cloud
    quota ledger is written to the state volume, and it stops cleanly on SIGTERM."""
    if not EXPORTER.exists():
        pytest.skip(f"{EXPORTER} not found (the exporter installed into this virtual environment)")
    reason = _namespaces_work()
    if reason:
        pytest.skip(f"cannot run the pod with a read-only root filesystem: {reason}")
    objects = rendered(overlay)
    owner = workload(objects)
    _, config, data = overlay_configs[overlay]
    ordinal = _running_shard(config, owner["spec"]["replicas"]) if owner["kind"] == "StatefulSet" else 0
    pod = pod_of(owner, ordinal)
    container = exporter_container(pod)
    mounted = volume_mounts(objects)
    places = {mount: tmp_path / f"volume-{i}" for i, mount in enumerate(sorted(mounted))}
    for mount, volume in mounted.items():
        places[mount].mkdir()
        if "configMap" in volume:
            for name, content in config_map_files(objects, volume).items():
                (places[mount] / name).write_text(relocate(content, places))
        elif "secret" in volume:
            for _, value in _values(data):
                if isinstance(value, str) and mount_of(value, mounted) == mount:
                    (places[mount] / os.path.relpath(value, mount)).write_text("not-a-real-secret\n")
    writable = [str(places[m]) for m, v in mounted.items() if "configMap" not in v and "secret" not in v]
    assert len(writable) == 1, "one writable volume, the state"
    _, home = dockerfile_user()
    env = {"PATH": os.environ["PATH"], "HOME": relocate(home, places), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1", **environment(pod, container)}
    argv = [relocate(a, places) for a in command_line(pod, container)]
    assert argv[0] == "energy-meter-exporter"
    argv[0] = str(EXPORTER)
    port = flag(argv, "--web.listen-address").rsplit(":", 1)[1]
    probes = sorted({container[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")})
    runtime = tmp_path / "runtime"  # the container runtime's log, outside the pod
    runtime.mkdir()
    log = runtime / "exporter.log"
    spec = {"writable": writable + [str(runtime)], "argv": argv, "cwd": relocate(home, places), "env": env, "log": str(log),
            "base": f"http://127.0.0.1:{port}", "probes": probes, "timeout": 45}
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net",
                             sys.executable, "-c", _LAUNCHER, json.dumps(spec)],
                            capture_output=True, text=True, timeout=120)
    output = log.read_text() if log.exists() else ""
    assert result.returncode == 0, f"{result.stderr}\nexporter log:\n{output}"
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["probes"] == {path: 200 for path in probes}, f"exporter log:\n{output}"
    assert "energy_meter_exporter_build_info" in seen["metrics"]
    assert seen["returncode"] == 0, f"exporter log:\n{output}"
    for problem in ("Read-only file system", "Permission denied", "Traceback", "level=error"):
        assert problem not in output, output
    # The ConfigMap's file is readable by all, as Kubernetes mounts it; it holds no secret (they
    # are files of the Secret), so the exporter has nothing to warn about.
    assert os.stat(flag(argv, "--config.file")).st_mode & 0o004
    assert "readable by other users" not in output, output
    state = Path(relocate(config.state_directory, places))
    assert (state / "quota-ledger.json").is_file(), f"nothing in {state}: {output}"
    assert state.stat().st_mode & 0o777 == 0o700


def test_a_state_directory_the_exporter_cannot_write_fails_the_poll_saying_so(tmp_path):
    # A state volume missing or not writable for the pod's user: the IAMMETER cloud target fails
    # with reason `config` and a message naming the directory, not as a crash.
    from exporter.model.errors import PollError
    from exporter.runtime.quota import Limit, QuotaLedger
    from exporter.runtime.state import StateDirectory

    blocker = tmp_path / "volume"
    blocker.write_text("")  # a file where the directory should be: no directory can be made below it
    ledger = QuotaLedger(StateDirectory(blocker / "state"))
    with pytest.raises(PollError) as caught:
        ledger.acquire("iammeter_login", "www.iammeter.com", [Limit(5, 3600, "hour")])
    assert caught.value.reason == "config"
    assert str(blocker / "state") in caught.value.message and "state_directory" in caught.value.message
