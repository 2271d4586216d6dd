"""Write deploy/kubernetes/base/prometheusrule.yaml from the rule files prometheus/prometheus.yml
loads (`rule_files`): one PrometheusRule (Prometheus Operator) per file, whose groups are the
file's groups as written there, comments included. The rule files stay the one source.

  python scripts/generate-kubernetes-rules.py           # rewrite the manifest
  python scripts/generate-kubernetes-rules.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
COMMAND = "python scripts/generate-kubernetes-rules.py"
NAME_PREFIX = "energy-meter-exporter-"
LABELS = {"app.kubernetes.io/name": "energy-meter-exporter"}

_GROUPS_LINE = re.compile(r"^groups:[ \t]*(#.*)?$")
# A PrometheusRule's name must be a DNS-1123 subdomain.
_NOT_IN_NAME = re.compile(r"[^a-z0-9-]+")


def rule_files(config_path: Path = PROMETHEUS_CONFIG) -> list[Path]:
    """The files of `rule_files`, in their order, globs expanded as Prometheus does (paths
    relative to the configuration file)."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    files: list[Path] = []
    for entry in config.get("rule_files") or []:
        pattern = str(config_path.parent / entry)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files += [Path(m) for m in matches if Path(m) not in files]
    return files


def object_name(path: Path) -> str:
    return NAME_PREFIX + _NOT_IN_NAME.sub("-", path.stem.lower()).strip("-")


def _groups_text(source: str) -> str | None:
    """The `groups:` block of a rule file as written (the file's header comments left out), or
    None when the file is not laid out as one block-style top-level `groups:` key."""
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if _GROUPS_LINE.match(line)), None)
    if start is None:
        return None
    block = lines[start:]
    # Anything else at the top level (another key, a document marker) would need YAML's rules.
    if any(line[:1] not in ("", " ", "#") for line in block[1:]):
        return None
    return "\n".join(block).rstrip() + "\n"


def prometheus_rule(path: Path) -> str:
    """One PrometheusRule document for the rule file `path`: its groups re-indented under
    `spec:` (so its comments say what each rule is for here too), or dumped from the parsed
    file when its layout does not allow that. Either way the groups equal the file's."""
    source = path.read_text(encoding="utf-8")
    groups = (yaml.safe_load(source) or {}).get("groups") or []
    names = [g.get("name") for g in groups]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # the operator keys the list by name; Prometheus refuses the file as well
        raise ValueError(f"{path}: group names used twice: {', '.join(map(str, repeated))}")
    head = yaml.safe_dump({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                           "metadata": {"name": object_name(path), "labels": LABELS}}, sort_keys=False)
    text = _groups_text(source)
    if text is not None:
        body = "spec:\n" + "".join(f"  {line}" if line.strip() else "\n" for line in text.splitlines(True))
        document = head + body
        if (yaml.safe_load(document).get("spec") or {}).get("groups") == groups:
            return document
    return head + yaml.safe_dump({"spec": {"groups": groups}}, sort_keys=False, width=100)


def render(config_path: Path = PROMETHEUS_CONFIG) -> str:
    files = rule_files(config_path)
    if not files:
        raise ValueError(f"{config_path} lists no rule_files")
    sources = ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in files)
    header = (f"# Generated from {sources} (the rule files prometheus/prometheus.yml loads)\n"
              f"# by `{COMMAND}`: edit those files and run it again, not this one.\n")
    return header + "---\n".join(prometheus_rule(path) for path in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if args.check:
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
