"""Every configuration file the loader accepts during the tests must also pass the JSON Schema
generated for the same vendors: an editor checking a file with config.schema.json never flags one
the exporter runs, and a key the loader learns without the schema fails here.

Installed by tests/conftest.py around the loader's one reading function, so it sees the files the
tests, the CLI run in-process, the daemon's reloads and the demo load alike."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from exporter.config.loader import read_config_text

try:
    import jsonschema
except ImportError:  # the schema tests skip with a reason; nothing to guard with
    jsonschema = None


class EditorLoader(yaml.SafeLoader):
    """YAML as an editor's language server reads it (YAML 1.2: `1e7` is a number, as the
    loader's float options take it too), where PyYAML's YAML 1.1 reads a string."""


EditorLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class SchemaDisagreement(AssertionError):
    pass


_validators: dict[int, Any] = {}


def _validator(vendors: Any) -> Any:
    from exporter.config.schema import json_schema

    key = id(vendors)
    if key not in _validators:
        _validators[key] = jsonschema.Draft202012Validator(json_schema(vendors))
    return _validators[key]


def check_accepted(path, vendors: Any = None) -> None:
    """Raise SchemaDisagreement if the schema (of `vendors`, by default the exporter's own)
    rejects `path`, a file the exporter accepted."""
    if jsonschema is None:
        return
    if vendors is None:
        from exporter.vendors import registry as vendors
    document = yaml.load(read_config_text(path), Loader=EditorLoader)
    errors = sorted(_validator(vendors).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        problems = "\n".join(f"  {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10])
        raise SchemaDisagreement(f"the exporter accepted {path} but config.schema.json rejects it:\n{problems}")


def guarded(read: Callable[..., Any]) -> Callable[..., Any]:
    """`read` (the loader's `_load_config(path, environ, extra_check, vendors, read_secrets)`),
    raising SchemaDisagreement when it accepts a file the schema rejects."""

    def read_and_check(path, environ, extra_check, vendors, read_secrets):
        config = read(path, environ, extra_check, vendors, read_secrets)
        check_accepted(path, vendors)
        return config

    read_and_check.checks_schema = True
    return read_and_check
