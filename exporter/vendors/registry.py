"""Which vendor transports exist, what their targets accept, and how to build their adapters.

A transport module declares one `TransportSpec`; `exporter/vendors/__init__.py` lists where
each is, and a module is imported the first time its transport is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Literal, Mapping, Protocol

from . import SECTIONS, TRANSPORTS, load_all, load_transport

if TYPE_CHECKING:
    from ..config import Config, Option, TargetConfig
    from ..context import AdapterContext
    from ..samples import Reading


class PollAdapter(Protocol):
    """Reaches one device. `poll` does I/O and hands payloads to pure parse functions."""

    async def poll(self) -> "Reading": ...  # raises PollError

    async def close(self) -> None: ...


class PushAdapter(Protocol):
    """Receives readings the device sends; calls `emit` for each, runs until cancelled."""

    async def run(self, emit: Callable[["Reading"], None]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TransportSpec:
    vendor: str
    transport: str
    options: Mapping[str, "Option"]
    create: Callable[["TargetConfig", "AdapterContext"], Any]
    kind: Literal["poll", "push"] = "poll"
    default_interval: float = 10.0
    min_interval: float = 1.0
    default_overrides: Mapping[str, Any] = field(default_factory=dict)
    # (key or "", message) pairs for one target's converted options.
    check_target: Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]] | None = None
    # problems across targets (shared quotas, listeners): (key path, message) pairs, where the
    # path is a tuple such as ("targets", 3, "broker") so the message names file and line.
    check_config: Callable[["Config"], Iterable[tuple[tuple, str]]] | None = None
    description: str = ""
    # Shared sections the transport reads; its targets restart when one of them changes.
    uses_sections: tuple[str, ...] = ()
    # What decides which replica polls a target under `--shard INDEX/COUNT`: targets with one
    # key stay on one replica. Default (None): the target's name, or for the transports in
    # ACCOUNT_OPTIONS their account; a transport whose targets share something else returns it.
    shard_key: Callable[["TargetConfig"], str] | None = None
    # The vendor's transport when a target names none (exactly one per vendor).
    default: bool = False


@dataclass(frozen=True)
class SectionSpec:
    """A top-level configuration section shared by targets (MQTT brokers, push listeners...).

    `many`: a list of mappings, each with a unique `name` that targets refer to; otherwise one
    mapping."""

    name: str
    options: Mapping[str, "Option"]
    many: bool = False
    description: str = ""


_SPECS: dict[tuple[str, str], TransportSpec] = {}

# Transports whose targets share an account and its cloud quota, by the option naming the
# account: all targets of one account stay on one replica, so one replica keeps its quota ledger.
ACCOUNT_OPTIONS: dict[tuple[str, str], str] = {
    ("iammeter", "cloud"): "username",
    ("iometer", "partner"): "partner_id",
}
_SECTIONS: dict[str, SectionSpec] = {}


def register_section(spec: SectionSpec) -> SectionSpec:
    _SECTIONS[spec.name] = spec
    return spec


def section_names() -> list[str]:
    """The shared sections a configuration may have, without importing their modules."""
    return sorted(set(SECTIONS) | set(_SECTIONS))


def section(name: str) -> SectionSpec | None:
    """One shared section's spec (its module imported on first use)."""
    if name not in _SECTIONS and name in SECTIONS:
        import_module(SECTIONS[name])
    return _SECTIONS.get(name)


def sections() -> dict[str, SectionSpec]:
    """Every shared section's spec (all their modules imported)."""
    return {name: spec for name in section_names() if (spec := section(name)) is not None}


def register(spec: TransportSpec) -> TransportSpec:
    _SPECS[(spec.vendor, spec.transport)] = spec
    return spec


def get(vendor: str, transport: str) -> TransportSpec | None:
    """The spec of one transport; its module (and that module's libraries) is imported the
    first time it is asked for."""
    spec = _SPECS.get((vendor, transport))
    if spec is None:
        module = next((m for v, t, m, _ in TRANSPORTS if (v, t) == (vendor, transport)), None)
        if module is not None:
            load_transport(module)
            spec = _SPECS.get((vendor, transport))
    return spec


def specs() -> list[TransportSpec]:
    """Every transport's spec (all their modules imported): for the README tables and tests."""
    load_all()
    return list(_SPECS.values())


def in_use(targets: Iterable["TargetConfig"], section_keys: Iterable[str]) -> list[TransportSpec]:
    """The specs of the transports these targets use and of those reading one of these shared
    sections (their cross-target checks look at the sections too), in the order of TRANSPORTS."""
    used = {(t.vendor, t.transport) for t in targets}
    present = set(section_keys)
    keys = [(v, t) for v, t, _, reads in TRANSPORTS if (v, t) in used or present.intersection(reads)]
    keys += sorted(used - set(keys))  # registered outside TRANSPORTS
    return [spec for key in keys if (spec := get(*key)) is not None]


def vendor_names() -> list[str]:
    return sorted({v for v, _, _, _ in TRANSPORTS} | {v for v, _ in _SPECS})


def shard_key(target: "TargetConfig") -> str:
    """The key `--shard` hashes to place `target` on a replica (see TransportSpec.shard_key)."""
    spec = get(target.vendor, target.transport)
    if spec is not None and spec.shard_key is not None:
        return spec.shard_key(target)
    option = ACCOUNT_OPTIONS.get((target.vendor, target.transport))
    account = target.option(option) if option else None
    if account:
        account = account.reveal() if hasattr(account, "reveal") else str(account)
        return f"{target.vendor}/{target.transport}/{account}"
    return target.name


def transports(vendor: str) -> list[str]:
    """Transports of a vendor, the default first, without importing their modules."""
    names = [t for v, t, _, _ in TRANSPORTS if v == vendor]
    return names + [t for v, t in _SPECS if v == vendor and t not in names]


def _default_text(option: "Option") -> str:
    if option.required:
        return "required"
    if option.default is None or option.default in ((), []):
        return ""
    if option.kind == "duration":
        return f"{option.default:g}s"
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    return f"{option.default:g}" if isinstance(option.default, float) else str(option.default)


def options_markdown() -> str:
    """The README's reference of every transport's target keys and shared sections (kept equal
    to the code by tests/test_catalogue.py)."""
    lines: list[str] = []
    for spec in sorted(specs(), key=lambda s: (s.vendor, not s.default, s.transport)):
        default = " (the default transport)" if spec.default else ""
        lines.append(f"#### `vendor: {spec.vendor}`, `transport: {spec.transport}`{default}\n")
        if spec.description:
            lines.append(f"{spec.description}. Interval: default {spec.default_interval:g}s, "
                         f"at least {spec.min_interval:g}s.\n")
        lines.append("| key | kind | default | meaning |\n|---|---|---|---|")
        for key, option in spec.options.items():
            kind = option.kind + (f" ({', '.join(option.choices)})" if option.choices else "")
            name = f"`{key}` / `{key}_file`" if option.kind == "secret" else f"`{key}`"
            lines.append(f"| {name} | {kind} | {_default_text(option)} | {option.help} |")
        lines.append("")
    for section in sorted(sections().values(), key=lambda s: s.name):
        shape = "a list of named entries" if section.many else "one mapping"
        lines.append(f"#### Section `{section.name}` ({shape})\n")
        if section.description:
            lines.append(section.description + "\n")
        lines.append("| key | kind | default | meaning |\n|---|---|---|---|")
        for key, option in section.options.items():
            kind = option.kind + (f" ({', '.join(option.choices)})" if option.choices else "")
            name = f"`{key}` / `{key}_file`" if option.kind == "secret" else f"`{key}`"
            lines.append(f"| {name} | {kind} | {_default_text(option)} | {option.help} |")
        lines.append("")
    return "\n".join(lines)
