"""Loading and validating the YAML configuration.

Every problem is reported with the file, the line and the key path (`targets[2].interval`), all
problems at once, and nothing is applied unless the whole file is valid.
"""

from __future__ import annotations

import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Self, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml


class ConfigError(Exception):
    """One or more problems in a configuration file; `str()` lists them, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A password or token. Prints as `<secret>` so it cannot leak through logs or reprs."""

    __slots__ = ("_value",)
    placeholder = False  # True: not read (check-config --no-secrets), only its place was checked

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

# ASCII digits only: `\d` would take other scripts' digits too.
DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from `10`, `2.5`, `500ms`, `10s`, `5m`, `1h`, `1d`; never NaN or infinite."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 5m or 1h")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = _as_float(value)
    elif isinstance(value, str):
        match = DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None:
        raise ValueError(f"expected a duration such as 10s, 5m or 1h, got {_show(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration such as 10s, 5m or 1h, got {_show(value)}")
    return seconds


def _as_float(value: int | float) -> float:
    """`value` as a float; NaN for what no float holds (an int of hundreds of digits)."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _show(value: Any) -> str:
    """A value for a message, short and printable whatever it is."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10**15:
            return str(value)
        if value.bit_length() < 1000:
            return f"{value:.3e}"
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _control_character(text: str) -> str | None:
    """The first control character (or lone surrogate) in `text`, as U+XXXX; None if clean.
    Such a character in a host, a path or a token ends as an invalid HTTP header or URL on
    every poll, far from the line that put it there."""
    if text.isprintable():  # the common case, at C speed (spaces count as printable)
        return None
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"U+{ord(char):04X}"
    return None


# The widest sane values where an option gives none: beyond them a number is a typo or an
# attack (a duration of 1e300 s, a count of 10^18), not a setting.
# PyYAML (YAML 1.1) reads `1e7` and `1.0e7` as strings: an exponent needs a dot and a sign there.
_EXPONENT_ONLY = re.compile(r"[-+]?([0-9]{1,20}\.?[0-9]{0,20}|\.[0-9]{1,20})[eE][-+]?[0-9]{1,3}")
_CEILINGS: dict[str, float] = {"int": 2**31 - 1, "duration": 366 * 86400.0, "float": 1e12}


@dataclass(frozen=True)
class Option:
    """One key a target (or a section) accepts."""

    type: str  # str | int | float | bool | duration | secret | path | list | timezone
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, value: Any) -> Any:
        type_ = self.type
        if type_ in ("str", "path", "secret", "timezone"):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"expected a string, got {type_name(value)}")
            text = value if isinstance(value, str) else str(value)
            bad = _control_character(text)
            if bad is not None:  # the value is not shown: it may be a secret
                raise ValueError(f"contains a control character ({bad}); it must be one line of text")
            if self.choices and text not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}; got {_show(text)}")
            if type_ == "timezone" and text:
                _check_zone(text)
            return Secret(text) if type_ == "secret" else text
        if type_ == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, got {type_name(value)}")
            number: float = value
        elif type_ == "float":
            if isinstance(value, str) and _EXPONENT_ONLY.fullmatch(value):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {type_name(value)}")
            number = _as_float(value)
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {_show(value)}")
        elif type_ == "duration":
            number = parse_duration(value)
        elif type_ == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type_name(value)}")
            return value
        elif type_ == "list":
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
                raise ValueError("expected a list of strings")
            items = tuple(str(v) for v in value)
            bad = next(filter(None, map(_control_character, items)), None)
            if bad is not None:
                raise ValueError(f"an entry contains a control character ({bad}); each must be one line of text")
            return items
        else:  # pragma: no cover - schema error in the code, not in the user's file
            raise AssertionError(type_)
        maximum = self.maximum if self.maximum is not None else _CEILINGS[type_]
        if number > maximum:
            raise ValueError(f"must be at most {maximum:g}, got {_show(number)}")
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {_show(number)}")
        return number


def _check_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {_show(name)} (an IANA name such as Europe/Berlin)") from None


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing (null)"}.get(
        type(value), type(value).__name__
    )


# --- Typed options -------------------------------------------------------------------------------
# A transport states each key of its targets once, as a field of a frozen, keyword-only
# dataclass deriving from Settings: the field's type, its Option (the loader's checks, the
# reference's row) and its default. The loader checks a target against the table generated from the
# fields (`OPTIONS = MySettings.table()`); an adapter reads `MySettings.of(target)`.

_OPTION = "option"  # the metadata key holding a settings field's Option


def setting(option_type: str, /, *, required: bool = False, default: Any = None, **details: Any) -> Any:
    """A field of a Settings dataclass: `details` are Option's (choices, help, minimum, maximum).
    A key left out takes `default`, or nothing (None; an empty tuple for a list)."""
    option = Option(option_type, required=required, default=default, **details)
    if required:
        return field(metadata={_OPTION: option})
    empty = () if option_type == "list" else None
    return field(default=empty if default is None else default, metadata={_OPTION: option})


class Settings:
    """Base of a transport's typed target options (see `setting`)."""

    __slots__ = ()

    @classmethod
    def table(cls) -> "OptionTable":
        return OptionTable(cls)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        """From options converted by the loader; a key absent (or None) takes its field's default."""
        return cls(**{f.name: value for f in fields(cls) if (value := options.get(f.name)) is not None})

    @classmethod
    def of(cls, target: TargetConfig) -> Self:
        """The target's options, typed. Built from `target.options` on each call (an adapter
        calls it once), so a target made in code or copied with other options reads the same."""
        return cls.from_options(target.options)


class OptionTable(dict):
    """The keys (name -> Option) a Settings class declares with `setting`, in field order."""

    def __init__(self, settings: type[Settings]) -> None:
        super().__init__((f.name, f.metadata[_OPTION]) for f in fields(settings) if _OPTION in f.metadata)
        self.settings = settings


# Keys every target takes, whatever its vendor; `defaults` may set all but name/vendor/transport.
COMMON_OPTIONS: dict[str, Option] = {
    "interval": Option("duration", help="time between polls", minimum=0.001),
    "timeout": Option("duration", help="how long one poll may take", minimum=0.001),
    "max_backoff": Option("duration", default=300.0, help="ceiling of the retry delay after failures"),
    "stale_after": Option("duration", help="series of a failing target disappear after this long"),
    "jitter": Option("float", default=0.1, minimum=0.0, maximum=1.0,
                     help="random spread of poll times, as a fraction of the interval"),
    # Default 1e7 (10 MW) in exporter/store/targetstate.py; kept in the target's options only when set.
    "max_power": Option("float", minimum=1.0, help="watts: energy counters rising faster than this are refused"),
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


# --- What the vendors declare --------------------------------------------------------------------
# The loader knows no vendor: it is handed a catalogue (exporter/vendors/registry.py) that names
# the vendors, their transports and the shared sections, and checks the file against it.


@dataclass(frozen=True)
class SectionSpec:
    """A top-level configuration section shared by targets (MQTT brokers, push listeners...).

    `many`: a list of mappings, each with a unique `name` that targets refer to; otherwise one
    mapping."""

    name: str
    options: Mapping[str, Option]
    many: bool = False
    description: str = ""


class TransportSchema(Protocol):
    """What the loader reads of one transport's spec (registry.TransportSpec)."""

    @property
    def vendor(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def options(self) -> Mapping[str, Option]: ...
    @property
    def delivery(self) -> Literal["poll", "push"]: ...
    @property
    def default_interval(self) -> float: ...
    @property
    def min_interval(self) -> float: ...
    @property
    def default_overrides(self) -> Mapping[str, Any]: ...
    # (key or "", message) pairs for one target's converted options
    @property
    def check_target(self) -> Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]] | None: ...
    # (key path, message) pairs across targets; run only when every target is valid
    @property
    def check_config(self) -> Callable[[Config], Iterable[tuple[tuple, str]]] | None: ...


@runtime_checkable
class VendorCatalogue(Protocol):
    """The vendors a configuration may name, as `load_config` asks for them."""

    def section_names(self) -> list[str]:
        """The shared sections a file may have."""

    def section(self, name: str) -> SectionSpec | None: ...

    def vendor_names(self) -> list[str]: ...

    def transports(self, vendor: str) -> list[str]:
        """The vendor's transports, its default first."""

    def get(self, vendor: str, transport: str) -> TransportSchema | None: ...

    def in_use(self, targets: Iterable[TargetConfig], section_keys: Iterable[str]) -> Iterable[TransportSchema]:
        """The transports whose cross-target checks apply: those the targets use, and those
        reading one of these sections."""


# --- YAML with line numbers ---------------------------------------------------------------------


@dataclass
class _Located:
    """Plain Python data plus the line of every path in it."""

    data: Any
    lines: dict[tuple, int]


# libyaml's parser where PyYAML has it: a fleet's file (10,000 targets) in a quarter of the time.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bounds on what one file may cost to read, whoever wrote it: a few hundred bytes of aliases
# (a "billion laughs") would otherwise expand to gigabytes, and deep nesting exhausts the stack.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_EXPANDED_CHARS = 64 * 1024  # one value after ${VAR} substitution
MAX_DEPTH = 100  # levels of nested mappings and lists, counting what aliases repeat
# Aliases may repeat what the file holds: up to ALIAS_RATIO times its own values (anchors and
# merge keys in a fleet's file repeat a few), at least ALIAS_FLOOR, never more than MAX_VALUES.
ALIAS_RATIO = 10
ALIAS_FLOOR = 100_000
MAX_VALUES = 4_000_000
_INT_BITS = 14_000  # an int that long cannot even be printed (Python's 4,300-digit limit)


class _Unreadable(Exception):
    """A file that cannot be read as text; `line` when the problem has one."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def _read_text(path: str | os.PathLike, limit: int, secret: bool = False) -> str:
    """A regular file's text (UTF-8), at most `limit` bytes; _Unreadable otherwise. Opened
    without blocking and checked before reading: a FIFO or a device would hang or never end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    except ValueError:  # a NUL in the path
        raise _Unreadable("the path contains a NUL character") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _Unreadable("it is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise _Unreadable("not a regular file (a pipe, socket or device)")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise _Unreadable(f"larger than {_size_text(limit)}")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        # The byte itself is not shown: it may be part of a secret.
        where = "" if secret else f" (line {line}, column {column})"
        raise _Unreadable(f"not valid UTF-8 at byte offset {exc.start}{where}; save it as UTF-8",
                          None if secret else line) from None


def _size_text(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"


def read_config_text(path: str | os.PathLike, what: str = "the configuration") -> str:
    """A configuration file's text, bounded in size; ConfigError naming the file otherwise."""
    filename = str(path)
    try:
        return _read_text(path, MAX_FILE_BYTES)
    except _Unreadable as exc:
        where = f"{filename}:{exc.line}" if exc.line else filename
        raise ConfigError([f"{where}: cannot read {what}: {exc.reason}"]) from None


def _yaml_error(exc: yaml.YAMLError, filename: str, text: str = "") -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    position = getattr(exc, "position", None)  # a ReaderError: a byte offset in the UTF-8 text
    if mark is not None:
        where = f"{filename}:{mark.line + 1}"
    elif isinstance(position, int) and text:
        line = text.encode("utf-8", "surrogatepass")[:position].count(b"\n") + 1
        where = f"{filename}:{line}"
    else:
        where = filename
    if isinstance(exc, yaml.reader.ReaderError):
        problem = f"{exc.reason} (character U+{exc.character:04X})" if isinstance(exc.character, int) else exc.reason
    else:
        problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError([f"{where}: not valid YAML: {problem}"])


def _value_error(filename: str, line: int, path: tuple, exc: Exception) -> ConfigError:
    reason = "a number of thousands of digits" if "integer string conversion" in str(exc) else str(exc)
    return ConfigError([f"{filename}:{line}: {_path_text(path)}: cannot read this value: {reason}"])


def _check_scalar(value: Any) -> Any:
    if value.__class__ is int and value.bit_length() > _INT_BITS:
        raise ValueError("a number with thousands of digits")
    return value


def load_yaml(text: str, filename: str) -> _Located:
    try:
        located = _load_yaml_events(text, filename)
        if located is not None:
            return located
        node = yaml.compose(text, Loader=_COMPOSER)
        if node is not None:
            _measure(node, filename)
        return _from_nodes(node, filename)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, filename, text) from None
    except RecursionError:  # bounded above; a last guard, as the stack is what it protects
        raise ConfigError([f"{filename}: nested too deeply (more than {MAX_DEPTH} levels)"]) from None


def _measure(root: yaml.Node, filename: str) -> None:
    """Refuse, before building anything, a node tree that aliases would make too big or too
    deep, or that contains itself. Each node is visited once: the size and height of a shared
    node are remembered, so a billion laughs costs as little as its text."""
    if root.__class__ is yaml.ScalarNode:
        return
    # id(collection) -> (values it stands for, with what aliases repeat; nesting levels)
    measured: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()  # collections on the current path: meeting one again is a cycle
    own = 0  # values the file itself holds, seen so far
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = ([n for pair in node.value for n in pair] if node.__class__ is yaml.MappingNode
                    else node.value)
        if not children_done:
            if key in measured:
                continue
            if key in open_nodes:
                raise ConfigError([f"{filename}:{node.start_mark.line + 1}: an alias refers to a node "
                                   "that contains it"])
            open_nodes.add(key)
            own += 1
            stack.append((node, True))
            for child in children:
                if child.__class__ is yaml.ScalarNode:
                    own += 1
                elif id(child) not in measured:
                    stack.append((child, False))
            continue
        open_nodes.discard(key)
        size, height = 1, 1
        for child in children:
            if child.__class__ is yaml.ScalarNode:
                size += 1
            else:
                child_size, child_height = measured[id(child)]
                size += child_size
                if child_height >= height:
                    height = child_height + 1
        limit = min(MAX_VALUES, ALIAS_FLOOR + ALIAS_RATIO * own)
        if size > limit:
            raise ConfigError([f"{filename}:{node.start_mark.line + 1}: the aliases here would expand to more "
                               f"than {limit:,} values; refusing what looks like an alias bomb"])
        if height > MAX_DEPTH:
            raise ConfigError([f"{filename}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels "
                               "deep (counting what aliases repeat)"])
        measured[key] = (size, height)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _from_nodes(node: yaml.Node | None, filename: str) -> _Located:
    """Plain data and lines from a node tree already bounded by _measure."""
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    constructor = yaml.SafeLoader(stream="")
    merged_counts: dict[int, int] = {}  # id(mapping) -> entries its merge keys brought in

    def value_of(n: yaml.Node, path: tuple, deep: bool = False) -> Any:
        try:
            return _check_scalar(constructor.construct_object(n, deep=deep))
        except (ValueError, OverflowError, TypeError) as exc:
            raise _value_error(filename, n.start_mark.line + 1, path, exc) from None

    def walk(n: yaml.Node, path: tuple) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            merged = merged_counts.get(id(n))
            if merged is None:  # flattened once; a node an alias repeats is already flat
                own = sum(1 for key_node, _ in n.value if key_node.tag != _MERGE_TAG)
                constructor.flatten_mapping(n)
                merged = merged_counts[id(n)] = len(n.value) - own
            out: dict[str, Any] = {}
            own_keys: set[str] = set()
            for index, (key_node, value_node) in enumerate(n.value):
                key = value_of(key_node, path, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                # A key a merge brought in may be given again: the mapping's own value wins.
                if index >= merged:
                    if key in own_keys:
                        problems.append(f"{filename}:{key_node.start_mark.line + 1}: "
                                        f"{_path_text(path + (key,))}: duplicate key")
                    own_keys.add(key)
                out[key] = walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(n.value)]
        return value_of(n, path)

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

    def scalar(event: yaml.ScalarEvent, path: tuple) -> Any:
        tag = constructor.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _MERGE_TAG:
            raise _Unsupported
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        try:
            return _check_scalar(constructor.construct_object(node, deep=True))
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date 2024-13-45
            raise _value_error(filename, event.start_mark.line + 1, path, exc) from None
        finally:
            constructor.constructed_objects.clear()

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
                key = scalar(event, frame[1])
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
                attach(scalar(event, path))
                continue
            if len(stack) >= MAX_DEPTH:
                raise ConfigError([f"{filename}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep"])
            if kind is yaml.MappingStartEvent:
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
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}")  # fullmatch: `$` would allow a final newline


class UnreadSecret(Secret):
    """Where a secret would be: an environment variable or a file not read (--no-secrets)."""

    __slots__ = ()
    placeholder = True


class ReferencedSecret(Secret):
    """A secret the configuration names (`<key>_file`, `${VAR}`) rather than holds: whoever
    can read the configuration file does not learn it."""

    __slots__ = ()


class Checker:
    def __init__(self, located: _Located, filename: str, environ: Mapping[str, str],
                 read_secrets: bool = True) -> None:
        self.located = located
        self.filename = filename
        self.environ = environ
        # False (check-config --no-secrets): a variable that is not set, or a secret file, is
        # checked for its form but not resolved, for files checked away from their machine.
        self.read_secrets = read_secrets
        self.unresolved = False  # the last expand() left a variable as written
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
        """Substitute ${VAR} in strings; a variable that is not set is an error (or, without
        reading secrets, stays as written)."""
        self.unresolved = False
        if not isinstance(value, str) or "${" not in value:
            return value
        size = len(value) + sum(len(self.environ.get(name, "")) for name in _ENV.findall(value))
        if size > MAX_EXPANDED_CHARS:  # many references to a long variable: refused before it is built
            self.problem(path, f"expands to more than {MAX_EXPANDED_CHARS // 1024} KiB of text")
            return ""

        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.environ:
                if not self.read_secrets:
                    self.unresolved = True
                    return match.group(0)
                self.problem(path, f"environment variable {name} is not set")
                return ""
            return self.environ[name]

        return _ENV.sub(sub, value)

    def read_secret_file(self, path_value: Any, path: tuple) -> str | None:
        if not isinstance(path_value, str):
            self.problem(path, f"expected a file path, got {type_name(path_value)}")
            return None
        file_path = Path(self.expand(path_value, path))
        if not file_path.is_absolute():
            file_path = Path(self.filename).resolve().parent / file_path
        if not self.read_secrets:
            bad = _control_character(str(file_path))
            if bad is not None:
                self.problem(path, f"the path contains a control character ({bad})")
                return None
            return "<unread>"
        try:
            # Surrounding white space (the final newline an editor adds) is not part of it.
            content = _read_text(file_path, MAX_SECRET_FILE_BYTES, secret=True).strip()
        except _Unreadable as exc:
            self.problem(path, f"cannot read {file_path}: {exc.reason}")
            return None
        if not content:
            self.problem(path, f"{file_path} is empty")
            return None
        bad = _control_character(content)
        if bad is not None:  # it would end in an HTTP header on every poll; never shown
            self.problem(path, f"{file_path}: the secret contains a line break or other control character "
                               f"({bad}); the file must hold it on one line")
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
            if key.endswith("_file") and schema.get(key[: -len("_file")], Option("str")).type == "secret":
                base = key[: -len("_file")]
                if base in raw:
                    self.problem(key_path, f"give either {base} or {key}, not both")
                    continue
                content = self.read_secret_file(value, key_path)
                if content is not None:
                    out[base] = ReferencedSecret(content) if self.read_secrets else UnreadSecret(content)
                continue
            option = schema.get(key)
            if option is None:
                known = ", ".join(sorted(schema)) or "none"
                self.problem(key_path, f"unknown key (known keys here: {known})")
                continue
            try:
                out[key] = option.convert(self.expand(value, key_path))
                if self.unresolved and option.type == "secret":
                    out[key] = UnreadSecret(out[key].reveal())
                elif option.type == "secret" and isinstance(value, str) and _ENV.search(value):
                    out[key] = ReferencedSecret(out[key].reveal())
            except ValueError as exc:
                self.problem(key_path, str(exc))
        for key, option in schema.items():
            if key not in out and key not in skip:
                if option.required:
                    hint = " (or " + key + "_file)" if option.type == "secret" else ""
                    self.problem(path, f"missing required key {key!r}{hint}")
                elif option.default is not None:
                    out[key] = option.default
        return out


TOP_LEVEL_KEYS = {"defaults", "targets", "state_directory"}


def load_config(
    path: str | os.PathLike,
    environ: Mapping[str, str] | None = None,
    extra_check: Callable[[Config], list[str]] | None = None,
    *,
    vendors: VendorCatalogue,
    read_secrets: bool = True,
) -> Config:
    """Read and validate a configuration file against the `vendors` catalogue; raise
    ConfigError listing every problem. `read_secrets=False` checks where secrets come from
    (variables, files) without resolving them: such a Config is for checking, not for running."""
    try:
        return _load_config(path, environ, extra_check, vendors, read_secrets)
    except RecursionError:  # nesting is bounded while reading; this guards what checks it later
        raise ConfigError([f"{path}: nested too deeply to check"]) from None


def _load_config(
    path: str | os.PathLike,
    environ: Mapping[str, str] | None,
    extra_check: Callable[[Config], list[str]] | None,
    vendors: VendorCatalogue,
    read_secrets: bool = True,
) -> Config:
    filename = str(path)
    located = load_yaml(read_config_text(path), filename)
    check = Checker(located, filename, os.environ if environ is None else environ, read_secrets)
    data = located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the configuration must be a mapping with a 'targets' list"])

    known_top = TOP_LEVEL_KEYS | set(vendors.section_names())
    for key in data:
        if key not in known_top:
            check.problem((key,), f"unknown key (known keys here: {', '.join(sorted(known_top))})")
    # Only the sections the file has: a section's module is imported when it is used.
    sections = {name: _section(check, data[name], spec)
                for name in vendors.section_names() if name in data and (spec := vendors.section(name)) is not None}

    raw_defaults = data.get("defaults") or {}
    if not isinstance(raw_defaults, dict):
        check.problem(("defaults",), f"expected a mapping, got {type_name(raw_defaults)}")
        raw_defaults = {}
    defaults = check.options(raw_defaults, {k: v for k, v in COMMON_OPTIONS.items()}, ("defaults",))
    # Schema defaults are applied per target below, after the vendor's own defaults.
    defaults = {k: v for k, v in defaults.items() if k in raw_defaults}

    state_directory = data.get("state_directory", "state")
    if not isinstance(state_directory, str):
        check.problem(("state_directory",), "expected a directory path")
        state_directory = "state"
    state_directory = check.expand(state_directory, ("state_directory",))
    if _control_character(state_directory) is not None:
        check.problem(("state_directory",), f"contains a control character ({_control_character(state_directory)})")
        state_directory = "state"
    if not os.path.isabs(state_directory):
        state_directory = str(Path(filename).resolve().parent / state_directory)

    raw_targets = data.get("targets")
    if raw_targets is None:
        check.problem(("targets",), "missing: list the devices to poll under 'targets'")
        raw_targets = []
    elif not isinstance(raw_targets, list):
        check.problem(("targets",), f"expected a list of targets, got {type_name(raw_targets)}")
        raw_targets = []

    targets: list[TargetConfig] = []
    seen: dict[str, tuple] = {}
    for index, raw in enumerate(raw_targets):
        path = ("targets", index)
        if not isinstance(raw, dict):
            check.problem(path, f"expected a mapping with name and vendor, got {type_name(raw)}")
            continue
        name = raw.get("name")
        if isinstance(name, str) and name in seen:
            check.problem(path + ("name",), f"duplicate target name {name!r} (first at {check.where(seen[name])})")
            continue
        if isinstance(name, str):
            seen[name] = path + ("name",)
        target = _target(check, raw, path, defaults, vendors)
        if target is not None:
            targets.append(target)

    config = Config(path=filename, targets=tuple(targets), state_directory=state_directory, sections=sections)
    if not check.problems:
        for spec in vendors.in_use(config.targets, config.sections):
            if spec.check_config:
                for path, message in spec.check_config(config):
                    check.problem(path, message)
        if extra_check:
            check.problems.extend(extra_check(config))
    if check.problems:
        raise ConfigError(check.problems)
    return config


def _section(check: Checker, raw: Any, spec: SectionSpec) -> Any:
    """A shared section: one mapping, or (spec.many) a list of mappings with unique names."""
    path = (spec.name,)
    if raw is None:
        return () if spec.many else {}
    if not spec.many:
        if not isinstance(raw, dict):
            check.problem(path, f"expected a mapping, got {type_name(raw)}")
            return {}
        return check.options(raw, spec.options, path)
    if not isinstance(raw, list):
        check.problem(path, f"expected a list, got {type_name(raw)}")
        return ()
    out, names = [], set()
    for index, item in enumerate(raw):
        item_path = path + (index,)
        if not isinstance(item, dict):
            check.problem(item_path, f"expected a mapping, got {type_name(item)}")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            check.problem(item_path + ("name",), "missing or not a valid name")
        elif name in names:
            check.problem(item_path + ("name",), f"duplicate name {name!r}")
        names.add(name)
        options = check.options(item, spec.options, item_path, skip={"name"})
        out.append({"name": name, **options})
    return tuple(out)


def _target(check: Checker, raw: dict, path: tuple, defaults: dict, catalogue: VendorCatalogue) -> TargetConfig | None:
    problems_before = len(check.problems)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        check.problem(
            path + ("name",),
            "missing" if name is None else
            f"{name!r} is not a valid name (letters, digits, '_', '.', ':', '-'; at most 63)",
        )
    vendor = raw.get("vendor")
    vendors = catalogue.vendor_names()
    if vendor not in vendors:
        check.problem(
            path + ("vendor",),
            ("missing" if vendor is None else f"unknown vendor {vendor!r}") + f" (one of: {', '.join(vendors)})",
        )
        return None
    transports = catalogue.transports(vendor)
    transport = raw.get("transport", transports[0])
    spec = catalogue.get(vendor, transport)
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
    if timeout > interval and spec.delivery == "poll":
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
        jitter=min(merged["jitter"], 1.0), source=f"{check.filename}:{line}",
        options=options if merged.get("max_power") is None else {**options, "max_power": merged["max_power"]},
    )
