"""Loading and validating the YAML configuration.

Every problem is reported with the file, the line and the key path (`targets[2].interval`), all
problems at once, and nothing is applied unless the whole file is valid.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml


class ConfigError(Exception):
    """One or more problems in a configuration file; `str()` lists them, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A password or token. Prints as `<secret>` so it cannot leak through logs or reprs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# --- Option schema -----------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from `10`, `2.5`, `500ms`, `10s`, `5m`, `1h`, `1d`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 5m or 1h")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration such as 10s, 5m or 1h, got {value!r}")


@dataclass(frozen=True)
class Option:
    """One key a target (or a section) accepts."""

    kind: str  # str | int | float | bool | duration | secret | path | list
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    minimum: float | None = None

    def convert(self, value: Any) -> Any:
        kind = self.kind
        if kind in ("str", "path", "secret"):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"expected a string, got {_type_name(value)}")
            text = str(value)
            if self.choices and text not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}; got {text!r}")
            return Secret(text) if kind == "secret" else text
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, got {_type_name(value)}")
            number = value
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {_type_name(value)}")
            number = float(value)
        elif kind == "duration":
            number = parse_duration(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {_type_name(value)}")
            return value
        elif kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(str(v) for v in value)
        else:  # pragma: no cover - schema error in the code, not in the user's file
            raise AssertionError(kind)
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {number:g}")
        return number


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing (null)"}.get(
        type(value), type(value).__name__
    )


# Keys every target takes, whatever its vendor; `defaults` may set all but name/vendor/transport.
COMMON_OPTIONS: dict[str, Option] = {
    "interval": Option("duration", help="time between polls", minimum=0.001),
    "timeout": Option("duration", help="how long one poll may take", minimum=0.001),
    "max_backoff": Option("duration", default=300.0, help="ceiling of the retry delay after failures"),
    "stale_after": Option("duration", help="series of a failing target disappear after this long"),
    "jitter": Option("float", default=0.1, minimum=0.0, help="random spread of poll times, as a fraction of the interval"),
}
GENERAL_DEFAULTS = {"timeout": 5.0}


@dataclass(frozen=True, slots=True)  # one per target, 10,000 in a fleet: no per-object __dict__
class TargetConfig:
    name: str
    vendor: str
    transport: str
    interval: float
    timeout: float
    max_backoff: float
    stale_after: float
    jitter: float
    options: Mapping[str, Any]
    source: str = ""  # "file:line", for messages

    def option(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value


@dataclass(frozen=True)
class Config:
    path: str
    targets: tuple[TargetConfig, ...]
    state_directory: str
    sections: Mapping[str, Any] = field(default_factory=dict)

    def target(self, name: str) -> TargetConfig | None:
        return next((t for t in self.targets if t.name == name), None)

    def section_item(self, section: str, name: str) -> Mapping[str, Any] | None:
        """One named entry of a list section (e.g. an MQTT broker), or None."""
        return next((item for item in self.sections.get(section, ()) if item.get("name") == name), None)


# --- YAML with line numbers ---------------------------------------------------------------------


@dataclass
class _Located:
    """Plain Python data plus the line of every path in it."""

    data: Any
    lines: dict[tuple, int]


# libyaml's parser where PyYAML has it: a fleet's file (10,000 targets) in a quarter of the time.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_error(exc: yaml.YAMLError, filename: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{filename}:{mark.line + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError([f"{where}: not valid YAML: {problem}"])


def _load_yaml(text: str, filename: str) -> _Located:
    try:
        located = _load_yaml_events(text, filename)
        if located is not None:
            return located
        node = yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, filename) from None
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    constructor = yaml.SafeLoader(stream="")

    def walk(n: yaml.Node, path: tuple) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[str, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    problems.append(
                        f"{filename}:{key_node.start_mark.line + 1}: {_path_text(path + (key,))}: duplicate key"
                    )
                out[key] = walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    data = walk(node, ()) if node is not None else {}
    if problems:
        raise ConfigError(problems)
    return _Located(data, lines)


class _Unsupported(Exception):
    """A YAML feature the event reader leaves to the node tree (anchors, aliases, merge keys,
    explicit tags, keys that are not scalars, several documents)."""


def _load_yaml_events(text: str, filename: str) -> _Located | None:
    """The same as the node-tree reader for plain YAML, built straight from the parser's events:
    a node tree of a 10,000-target file is some 30 MB at its peak, and the memory it leaves
    fragmented stays with the process. None for what only the node tree handles."""
    constructor = yaml.SafeLoader(stream="")
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    # Open collections: [container, path, key waiting for its value (or _NO_KEY), key's line]
    stack: list[list] = []
    root: Any = _NOTHING  # an empty file reads as an empty mapping
    documents = 0

    def scalar(event: yaml.ScalarEvent) -> Any:
        tag = constructor.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == "tag:yaml.org,2002:merge":
            raise _Unsupported
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        value = constructor.construct_object(node, deep=True)
        constructor.constructed_objects.clear()
        return value

    def attach(value: Any) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        frame = stack[-1]
        container, path = frame[0], frame[1]
        if container.__class__ is list:
            container.append(value)
        else:
            key = frame[2]
            container[key] = value
            lines[path + (key,)] = frame[3]
            frame[2] = _NO_KEY

    try:
        for event in yaml.parse(text, Loader=_COMPOSER):
            kind = event.__class__
            if kind in (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent):
                continue
            if kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _Unsupported
                continue
            if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                attach(stack.pop()[0])
                continue
            if kind is yaml.AliasEvent or event.anchor is not None or event.tag not in (None, "!"):
                raise _Unsupported
            frame = stack[-1] if stack else None
            if frame is not None and frame[0].__class__ is dict and frame[2] is _NO_KEY:
                if kind is not yaml.ScalarEvent:
                    raise _Unsupported
                key = scalar(event)
                if not isinstance(key, str):
                    key = str(key)
                if key in frame[0]:
                    problems.append(f"{filename}:{event.start_mark.line + 1}: "
                                    f"{_path_text(frame[1] + (key,))}: duplicate key")
                frame[2], frame[3] = key, event.start_mark.line + 1
                continue
            if frame is None:
                path: tuple = ()
            elif frame[0].__class__ is list:
                path = frame[1] + (len(frame[0]),)
            else:
                path = frame[1] + (frame[2],)
            lines[path] = event.start_mark.line + 1
            if kind is yaml.ScalarEvent:
                attach(scalar(event))
            elif kind is yaml.MappingStartEvent:
                stack.append([{}, path, _NO_KEY, 0])
            else:
                stack.append([[], path, _NO_KEY, 0])
    except _Unsupported:
        return None
    if problems:
        raise ConfigError(problems)
    return _Located({} if root is _NOTHING else root, lines)


_NO_KEY = object()  # a mapping waiting for its next key
_NOTHING = object()


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# --- Validation ----------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}$")


class _Checker:
    def __init__(self, located: _Located, filename: str, environ: Mapping[str, str]) -> None:
        self.located = located
        self.filename = filename
        self.environ = environ
        self.problems: list[str] = []

    def where(self, path: tuple) -> str:
        lines = self.located.lines
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        line = lines.get(probe)
        return f"{self.filename}:{line}" if line else self.filename

    def problem(self, path: tuple, message: str) -> None:
        self.problems.append(f"{self.where(path)}: {_path_text(path)}: {message}")

    def expand(self, value: Any, path: tuple) -> Any:
        """Substitute ${VAR} in strings; a variable that is not set is an error."""
        if not isinstance(value, str) or "${" not in value:
            return value

        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.environ:
                self.problem(path, f"environment variable {name} is not set")
                return ""
            return self.environ[name]

        return _ENV.sub(sub, value)

    def read_secret_file(self, path_value: Any, path: tuple) -> str | None:
        if not isinstance(path_value, str):
            self.problem(path, f"expected a file path, got {_type_name(path_value)}")
            return None
        file_path = Path(self.expand(path_value, path))
        if not file_path.is_absolute():
            file_path = Path(self.filename).resolve().parent / file_path
        try:
            content = file_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.problem(path, f"cannot read {file_path}: {exc.strerror or exc}")
            return None
        if not content:
            self.problem(path, f"{file_path} is empty")
            return None
        return content

    def options(
        self, raw: Mapping[str, Any], schema: Mapping[str, Option], path: tuple, skip: set[str] = frozenset()
    ) -> dict[str, Any]:
        """Convert `raw` by `schema`; unknown keys and bad values are problems."""
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in skip:
                continue
            key_path = path + (key,)
            if key.endswith("_file") and schema.get(key[: -len("_file")], Option("str")).kind == "secret":
                base = key[: -len("_file")]
                if base in raw:
                    self.problem(key_path, f"give either {base} or {key}, not both")
                    continue
                content = self.read_secret_file(value, key_path)
                if content is not None:
                    out[base] = Secret(content)
                continue
            option = schema.get(key)
            if option is None:
                known = ", ".join(sorted(schema)) or "none"
                self.problem(key_path, f"unknown key (known keys here: {known})")
                continue
            try:
                out[key] = option.convert(self.expand(value, key_path))
            except ValueError as exc:
                self.problem(key_path, str(exc))
        for key, option in schema.items():
            if key not in out and key not in skip:
                if option.required:
                    hint = " (or " + key + "_file)" if option.kind == "secret" else ""
                    self.problem(path, f"missing required key {key!r}{hint}")
                elif option.default is not None:
                    out[key] = option.default
        return out


TOP_LEVEL_KEYS = {"defaults", "targets", "state_directory"}


def load_config(
    path: str | os.PathLike,
    environ: Mapping[str, str] | None = None,
    extra_check: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    from .vendors import registry  # late import: vendors import this module

    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{filename}: cannot read the configuration: {exc.strerror or exc}"]) from None
    located = _load_yaml(text, filename)
    check = _Checker(located, filename, os.environ if environ is None else environ)
    data = located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the configuration must be a mapping with a 'targets' list"])

    known_top = TOP_LEVEL_KEYS | set(registry.section_names())
    for key in data:
        if key not in known_top:
            check.problem((key,), f"unknown key (known keys here: {', '.join(sorted(known_top))})")
    # Only the sections the file has: a section's module is imported when it is used.
    sections = {name: _section(check, data[name], registry.section(name))
                for name in registry.section_names() if name in data}

    raw_defaults = data.get("defaults") or {}
    if not isinstance(raw_defaults, dict):
        check.problem(("defaults",), f"expected a mapping, got {_type_name(raw_defaults)}")
        raw_defaults = {}
    defaults = check.options(raw_defaults, {k: v for k, v in COMMON_OPTIONS.items()}, ("defaults",))
    # Schema defaults are applied per target below, after the vendor's own defaults.
    defaults = {k: v for k, v in defaults.items() if k in raw_defaults}

    state_directory = data.get("state_directory", "state")
    if not isinstance(state_directory, str):
        check.problem(("state_directory",), "expected a directory path")
        state_directory = "state"
    state_directory = check.expand(state_directory, ("state_directory",))
    if not os.path.isabs(state_directory):
        state_directory = str(Path(filename).resolve().parent / state_directory)

    raw_targets = data.get("targets")
    if raw_targets is None:
        check.problem(("targets",), "missing: list the devices to poll under 'targets'")
        raw_targets = []
    elif not isinstance(raw_targets, list):
        check.problem(("targets",), f"expected a list of targets, got {_type_name(raw_targets)}")
        raw_targets = []

    targets: list[TargetConfig] = []
    seen: dict[str, tuple] = {}
    for index, raw in enumerate(raw_targets):
        path = ("targets", index)
        if not isinstance(raw, dict):
            check.problem(path, f"expected a mapping with name and vendor, got {_type_name(raw)}")
            continue
        name = raw.get("name")
        if isinstance(name, str) and name in seen:
            check.problem(path + ("name",), f"duplicate target name {name!r} (first at {check.where(seen[name])})")
            continue
        if isinstance(name, str):
            seen[name] = path + ("name",)
        target = _target(check, raw, path, defaults, registry)
        if target is not None:
            targets.append(target)

    config = Config(path=filename, targets=tuple(targets), state_directory=state_directory, sections=sections)
    if not check.problems:
        for spec in registry.in_use(config.targets, config.sections):
            if spec.check_config:
                for path, message in spec.check_config(config):
                    check.problem(path, message)
        if extra_check:
            check.problems.extend(extra_check(config))
    if check.problems:
        raise ConfigError(check.problems)
    return config


def _section(check: _Checker, raw: Any, spec) -> Any:
    """A shared section: one mapping, or (spec.many) a list of mappings with unique names."""
    path = (spec.name,)
    if raw is None:
        return () if spec.many else {}
    if not spec.many:
        if not isinstance(raw, dict):
            check.problem(path, f"expected a mapping, got {_type_name(raw)}")
            return {}
        return check.options(raw, spec.options, path)
    if not isinstance(raw, list):
        check.problem(path, f"expected a list, got {_type_name(raw)}")
        return ()
    out, names = [], set()
    for index, item in enumerate(raw):
        item_path = path + (index,)
        if not isinstance(item, dict):
            check.problem(item_path, f"expected a mapping, got {_type_name(item)}")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            check.problem(item_path + ("name",), "missing or not a valid name")
        elif name in names:
            check.problem(item_path + ("name",), f"duplicate name {name!r}")
        names.add(name)
        options = check.options(item, spec.options, item_path, skip={"name"})
        out.append({"name": name, **options})
    return tuple(out)


def _target(check: _Checker, raw: dict, path: tuple, defaults: dict, registry) -> TargetConfig | None:
    problems_before = len(check.problems)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        check.problem(
            path + ("name",),
            "missing" if name is None else
            f"{name!r} is not a valid name (letters, digits, '_', '.', ':', '-'; at most 63)",
        )
    vendor = raw.get("vendor")
    vendors = registry.vendor_names()
    if vendor not in vendors:
        check.problem(
            path + ("vendor",),
            ("missing" if vendor is None else f"unknown vendor {vendor!r}") + f" (one of: {', '.join(vendors)})",
        )
        return None
    transports = registry.transports(vendor)
    transport = raw.get("transport", transports[0])
    spec = registry.get(vendor, transport)
    if spec is None:
        check.problem(path + ("transport",), f"unknown transport {transport!r} for {vendor} (one of: {', '.join(transports)})")
        return None

    common = check.options(
        {k: v for k, v in raw.items() if k in COMMON_OPTIONS}, COMMON_OPTIONS, path
    )
    common = {k: v for k, v in common.items() if k in raw}
    options = check.options(
        {k: v for k, v in raw.items() if k not in COMMON_OPTIONS}, spec.options, path,
        skip={"name", "vendor", "transport"},
    )
    merged = {**{k: v.default for k, v in COMMON_OPTIONS.items()}, **GENERAL_DEFAULTS,
              "interval": spec.default_interval, **spec.default_overrides, **defaults, **common}
    if len(check.problems) > problems_before:
        return None
    interval, timeout = merged["interval"], merged["timeout"]
    if "timeout" not in common and "timeout" not in defaults:
        timeout = min(timeout, interval)  # the default timeout shrinks to fit a short interval
    where = path + ("interval",) if "interval" in raw else (("defaults", "interval") if "interval" in defaults else path)
    if interval < spec.min_interval:
        check.problem(where, f"{interval:g}s is shorter than {spec.min_interval:g}s, the fastest {vendor} {transport} allows")
    if timeout > interval and spec.kind == "poll":
        check.problem(path + ("timeout",) if "timeout" in raw else path,
                      f"timeout {timeout:g}s is longer than the interval {interval:g}s")
    stale_after = merged.get("stale_after") or max(3 * interval, 60.0)
    if stale_after < interval:
        check.problem(path + ("stale_after",), f"{stale_after:g}s is shorter than the interval {interval:g}s")
    if spec.check_target:
        for key, message in spec.check_target(options):
            check.problem(path + ((key,) if key else ()), message)
    if len(check.problems) > problems_before:
        return None
    line = check.located.lines.get(path, 0)
    # The spec's vendor and transport strings, not the file's: one copy for all targets.
    return TargetConfig(
        name=name, vendor=spec.vendor, transport=spec.transport, interval=interval, timeout=timeout,
        max_backoff=max(merged["max_backoff"], interval), stale_after=stale_after,
        jitter=min(merged["jitter"], 1.0), options=options, source=f"{check.filename}:{line}",
    )
