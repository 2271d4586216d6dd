"""A JSON Schema of the configuration file, generated from the same option definitions the
loader checks with, so that an editor (yaml-language-server, VS Code, JetBrains) completes and
checks keys as the exporter will.

The schema says what one file may hold key by key; the loader checks more (a broker a target
names must exist, intervals against cloud quotas, a token's form): a file the schema accepts may
still be refused by `check-config`, with the reason. A file the schema refuses is always refused.
"""

from __future__ import annotations

from typing import Any, Mapping

from .loader import DURATION_RE, NAME_RE, COMMON_OPTIONS, TOP_LEVEL_KEYS, Option, VendorCatalogue

SCHEMA_ID = "https://energy-meter-exporter.invalid/config.schema.json"


def option_schema(option: Option) -> dict[str, Any]:
    """One key's value as JSON Schema (with the option's help as its description)."""
    out: dict[str, Any]
    if option.type in ("str", "path", "secret", "timezone"):
        out = {"type": "string"}
        if option.choices:
            out["enum"] = list(option.choices)
    elif option.type == "bool":
        out = {"type": "boolean"}
    elif option.type == "list":
        out = {"type": "array", "items": {"type": ["string", "integer"]}}
    elif option.type == "duration":
        number: dict[str, Any] = {"type": "number", "minimum": option.minimum if option.minimum is not None else 0}
        if option.maximum is not None:
            number["maximum"] = option.maximum
        out = {"anyOf": [number, {"type": "string", "pattern": DURATION_RE.pattern}]}
    elif option.type in ("int", "float"):
        out = {"type": "integer" if option.type == "int" else "number"}
        if option.minimum is not None:
            out["minimum"] = option.minimum
        if option.maximum is not None:
            out["maximum"] = option.maximum
    else:  # pragma: no cover - a new option type must be mapped here
        raise AssertionError(option.type)
    if option.help:
        out["description"] = option.help
    if option.default is not None:
        out["default"] = list(option.default) if isinstance(option.default, tuple) else option.default
    return out


def _keys(options: Mapping[str, Option]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The properties of a mapping with these options, and the rules on required keys (a secret
    may come from `<key>_file` instead, but not from both)."""
    properties: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    for key, option in options.items():
        properties[key] = option_schema(option)
        if option.type == "secret":
            properties[f"{key}_file"] = {"type": "string", "description": f"file holding {key} (one line)"}
            rules.append({"not": {"required": [key, f"{key}_file"]}})
            if option.required:
                rules.append({"anyOf": [{"required": [key]}, {"required": [f"{key}_file"]}]})
        elif option.required:
            rules.append({"required": [key]})
    return properties, rules


def _closed(properties: dict[str, Any], rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False, **extra}
    if rules:
        out["allOf"] = rules
    return out


def json_schema(vendors: VendorCatalogue) -> dict[str, Any]:
    """The configuration file's schema (draft 2020-12) for the vendors of the catalogue."""
    name = {"type": "string", "pattern": f"^{NAME_RE.pattern}$", "description": "the target's name (its device label)"}
    common, _ = _keys(COMMON_OPTIONS)
    branches = []
    for vendor in vendors.vendor_names():
        transports = vendors.transports(vendor)
        branches.append({"if": {"properties": {"vendor": {"const": vendor}}, "required": ["vendor"]},
                         "then": {"properties": {"transport": {"enum": transports}}}})
        for position, transport in enumerate(transports):
            spec = vendors.get(vendor, transport)
            assert spec is not None
            own, rules = _keys(spec.options)
            condition: dict[str, Any] = {"properties": {"vendor": {"const": vendor}, "transport": {"const": transport}},
                                         "required": ["vendor"] if position == 0 else ["vendor", "transport"]}
            properties = {"name": name, "vendor": {"const": vendor}, "transport": {"const": transport},
                          **common, **own}
            branches.append({"if": condition, "then": _closed(properties, rules)})
    target = {
        "type": "object",
        "required": ["name", "vendor"],
        "properties": {
            "name": name,
            "vendor": {"enum": vendors.vendor_names()},
            "transport": {"type": "string", "description": "how the device is read (default: the vendor's first)"},
        },
        "allOf": branches,
    }
    properties: dict[str, Any] = {
        "state_directory": {"type": "string", "description": "tokens and quota ledgers (0700; files 0600)"},
        "defaults": _closed(dict(common), [], description="values every target takes unless it sets its own"),
        "targets": {"type": "array", "items": target},
    }
    for section_name in vendors.section_names():
        section = vendors.section(section_name)
        assert section is not None
        own, rules = _keys(section.options)
        if section.many:
            item = _closed({"name": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}, **own},
                           [{"required": ["name"]}, *rules])
            properties[section_name] = {"type": "array", "items": item, "description": section.description}
        else:
            properties[section_name] = _closed(own, rules, description=section.description)
    assert set(properties) == TOP_LEVEL_KEYS | set(vendors.section_names())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "energy-meter-exporter configuration",
        "type": "object",
        "required": ["targets"],
        "properties": properties,
        "additionalProperties": False,
    }
