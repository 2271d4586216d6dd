"""Which vendors and transports exist, what their targets accept, and how to build their adapters.

A vendor's package declares one `VendorSpec` (its transports, the default one, how `discover`
recognises its devices, its helper commands); a transport module declares one `TransportSpec`.
`exporter/vendors/__init__.py` lists the vendors' packages, and a transport module is imported
the first time its transport is asked for.

This module is the vendor catalogue the core is handed: `load_config(..., vendors=registry)`
(see exporter.config.loader.VendorCatalogue), the device identifiers of `discover`, the commands
of the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterable, Literal, Mapping, Protocol

from ..config.loader import SectionSpec
from . import SECTIONS, VENDORS, load_all, load_module, load_section, load_vendor

if TYPE_CHECKING:
    import argparse

    from ..config.loader import Config, Option, TargetConfig
    from ..discover import DeviceIdentifier
    from ..model.samples import Emit, Reading
    from ..runtime.context import AdapterContext


class PollAdapter(Protocol):
    """Reaches one device. `poll` does I/O and hands payloads to pure parse functions."""

    async def poll(self) -> "Reading": ...  # raises PollError

    async def close(self) -> None: ...


class PushAdapter(Protocol):
    """Receives what the device sends and hands each outcome to `emit`, until cancelled: a
    Reading (the target's new state), or a PollError (the target is down for that reason, and
    the error is counted and logged by the scheduler, as a failed poll's would be)."""

    async def run(self, emit: "Emit") -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TransportSpec:
    vendor: str
    transport: str
    options: Mapping[str, "Option"]
    create: Callable[["TargetConfig", "AdapterContext"], Any]
    # How readings arrive: "poll", the scheduler calls the adapter's `poll` every interval;
    # "push", the adapter's `run(emit)` hands them over as they come. An adapter whose targets
    # may do either (by an option) says which in its own `delivery` attribute.
    delivery: Literal["poll", "push"] = "poll"
    default_interval: float = 10.0
    min_interval: float = 1.0
    default_overrides: Mapping[str, Any] = field(default_factory=dict)
    # (key or "", message) pairs for one target's converted options.
    check_target: Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]] | None = None
    # problems across targets (shared quotas, listeners): (key path, message) pairs, where the
    # path is a tuple such as ("targets", 3, "broker") so the message names file and line.
    check_config: Callable[["Config"], Iterable[tuple[tuple, str]]] | None = None
    description: str = ""
    # What decides which replica polls a target under `--shard INDEX/COUNT`: targets with one
    # key stay on one replica. Default (None): the target's name, or for a transport whose
    # targets share an account (Transport.account) that account; a transport whose targets
    # share something else returns it.
    shard_key: Callable[["TargetConfig"], str] | None = None
    # Both filled in by `register` from the vendor's declaration (VendorSpec), where they are
    # stated: shared sections the transport reads (its targets restart when one changes), and
    # whether it is the vendor's transport when a target names none.
    uses_sections: tuple[str, ...] = ()
    default: bool = False


@dataclass(frozen=True)
class Transport:
    """One transport as its vendor declares it, without importing its module."""

    name: str
    module: str  # under the vendor's package
    # Shared sections the transport reads: its cross-target check runs when the file has one.
    sections: tuple[str, ...] = ()
    # The option naming the account its targets share with its cloud quota: all targets of
    # one account stay on one replica under --shard, so that one replica keeps its quota ledger.
    account: str | None = None


@dataclass(frozen=True)
class Command:
    """A helper command of a vendor: `energy-meter-exporter NAME VENDOR ...`. The functions are
    named `module:function` under the vendor's package, imported when the command is used."""

    name: str
    help: str  # in the list of commands; says the exit statuses
    arguments: str  # adds the command's arguments to an argparse parser
    run: str  # takes the parsed arguments; returns the exit status (or a coroutine giving it)


@dataclass(frozen=True)
class VendorSpec:
    name: str
    title: str  # as people write it: "HomeWizard", "IAMMETER"
    transports: tuple[Transport, ...]
    default_transport: str  # when a target names none
    discover: str | None = None  # the module whose IDENTIFIER tells this vendor's devices apart
    commands: tuple[Command, ...] = ()


_VENDORS: dict[str, VendorSpec] = {}
_SPECS: dict[tuple[str, str], TransportSpec] = {}
_SECTIONS: dict[str, SectionSpec] = {}


def vendor_spec(name: str) -> VendorSpec | None:
    """One vendor's declaration (its package imported, none of its transports)."""
    spec = _VENDORS.get(name)
    if spec is None and name in VENDORS:
        spec = _VENDORS[name] = load_vendor(name).VENDOR
    return spec


def vendor_specs() -> list[VendorSpec]:
    """Every vendor's declaration, in the order of VENDORS."""
    return [spec for name in VENDORS if (spec := vendor_spec(name)) is not None]


def _declared(vendor_name: str, transport: str) -> Transport | None:
    spec = vendor_spec(vendor_name)
    return next((t for t in spec.transports if t.name == transport), None) if spec else None


def section_names() -> list[str]:
    """The shared sections a configuration may have, without importing their modules."""
    return sorted(set(SECTIONS) | set(_SECTIONS))


def section(name: str) -> SectionSpec | None:
    """One shared section's spec (its module imported on first use)."""
    if name not in _SECTIONS and name in SECTIONS:
        _SECTIONS[name] = load_section(name).SECTION
    return _SECTIONS.get(name)


def sections() -> dict[str, SectionSpec]:
    """Every shared section's spec (all their modules imported)."""
    return {name: spec for name in section_names() if (spec := section(name)) is not None}


def register(spec: TransportSpec) -> TransportSpec:
    """Record a transport's spec, with what its vendor declares of it."""
    owner = vendor_spec(spec.vendor)
    declared = _declared(spec.vendor, spec.transport)
    if owner is not None and declared is not None:
        spec = dataclasses.replace(spec, uses_sections=declared.sections,
                                   default=spec.transport == owner.default_transport)
    _SPECS[(spec.vendor, spec.transport)] = spec
    return spec


def get(vendor: str, transport: str) -> TransportSpec | None:
    """The spec of one transport; its module (and that module's libraries) is imported the
    first time it is asked for."""
    spec = _SPECS.get((vendor, transport))
    if spec is None:
        declared = _declared(vendor, transport)
        if declared is not None:
            load_module(vendor, declared.module)
            spec = _SPECS.get((vendor, transport))
    return spec


def specs() -> list[TransportSpec]:
    """Every transport's spec (all their modules imported): for the manual's tables and tests."""
    load_all()
    return list(_SPECS.values())


def in_use(targets: Iterable["TargetConfig"], section_keys: Iterable[str]) -> list[TransportSpec]:
    """The specs of the transports these targets use and of those reading one of these shared
    sections (their cross-target checks look at the sections too), in the vendors' order."""
    used = {(t.vendor, t.transport) for t in targets}
    present = set(section_keys)
    keys: list[tuple[str, str]] = []
    for vendor in VENDORS:
        for name in transports(vendor):
            declared = _declared(vendor, name)
            if (vendor, name) in used or (declared is not None and present.intersection(declared.sections)):
                keys.append((vendor, name))
    keys += sorted(used - set(keys))  # registered outside the vendors' declarations
    return [spec for key in keys if (spec := get(*key)) is not None]


def vendor_names() -> list[str]:
    return sorted(set(VENDORS) | {v for v, _ in _SPECS})


def transports(vendor_name: str) -> list[str]:
    """Transports of a vendor, the default first, without importing their modules."""
    spec = vendor_spec(vendor_name)
    names = [] if spec is None else [spec.default_transport] + [
        t.name for t in spec.transports if t.name != spec.default_transport]
    return names + [t for v, t in _SPECS if v == vendor_name and t not in names]


def shard_key(target: "TargetConfig") -> str:
    """The key `--shard` hashes to place `target` on a replica (see TransportSpec.shard_key)."""
    spec = get(target.vendor, target.transport)
    if spec is not None and spec.shard_key is not None:
        return spec.shard_key(target)
    declared = _declared(target.vendor, target.transport)
    option = declared.account if declared is not None else None
    account = target.option(option) if option else None
    if account:
        account = account.reveal() if hasattr(account, "reveal") else str(account)
        return f"{target.vendor}/{target.transport}/{account}"
    return target.name


def identifiers() -> list["DeviceIdentifier"]:
    """How `discover` recognises each vendor's devices, in the order of VENDORS (their modules
    imported), each with its vendor's title."""
    return [dataclasses.replace(load_module(v.name, v.discover).IDENTIFIER, title=v.title)
            for v in vendor_specs() if v.discover]


@dataclass(frozen=True)
class VendorCommand:
    """A helper command of one vendor, its functions loaded."""

    vendor: str
    add_arguments: Callable[["argparse.ArgumentParser"], None]
    run: Callable[[Any], "int | Coroutine[Any, Any, int]"]


def commands() -> dict[str, list[tuple[VendorSpec, Command]]]:
    """The vendors' helper commands by name, without importing their modules."""
    out: dict[str, list[tuple[VendorSpec, Command]]] = {}
    for spec in vendor_specs():
        for command in spec.commands:
            out.setdefault(command.name, []).append((spec, command))
    return out


def load_command(vendor_name: str, name: str) -> VendorCommand:
    """One vendor's helper command, its module(s) imported."""
    spec = vendor_spec(vendor_name)
    command = next(c for c in (spec.commands if spec else ()) if c.name == name)

    def function(reference: str) -> Callable:
        module, _, attribute = reference.partition(":")
        return getattr(load_module(vendor_name, module), attribute)

    return VendorCommand(vendor_name, function(command.arguments), function(command.run))


def _default_text(option: "Option") -> str:
    if option.required:
        return "required"
    if option.default is None or option.default in ((), []):
        return ""
    if option.type == "duration":
        return f"{option.default:g}s"
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    return f"{option.default:g}" if isinstance(option.default, float) else str(option.default)


def options_markdown() -> str:
    """The configuration reference (docs/configuration.md) of every transport's target keys and shared sections (kept equal
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
            type_text = option.type + (f" ({', '.join(option.choices)})" if option.choices else "")
            name = f"`{key}` / `{key}_file`" if option.type == "secret" else f"`{key}`"
            lines.append(f"| {name} | {type_text} | {_default_text(option)} | {option.help} |")
        lines.append("")
    for section in sorted(sections().values(), key=lambda s: s.name):
        shape = "a list of named entries" if section.many else "one mapping"
        lines.append(f"#### Section `{section.name}` ({shape})\n")
        if section.description:
            lines.append(section.description + "\n")
        lines.append("| key | kind | default | meaning |\n|---|---|---|---|")
        for key, option in section.options.items():
            type_text = option.type + (f" ({', '.join(option.choices)})" if option.choices else "")
            name = f"`{key}` / `{key}_file`" if option.type == "secret" else f"`{key}`"
            lines.append(f"| {name} | {type_text} | {_default_text(option)} | {option.help} |")
        lines.append("")
    return "\n".join(lines)
