"""Vendor adapters: one package per vendor, one module per way of reaching its devices.

Each vendor's package declares its `VendorSpec` (registry.py) in its `__init__`, which imports
nothing else: its transports and the module of each, the default one, the module that tells its
devices apart on the network, its helper commands. A transport module declares its
`TransportSpec` when imported. So the registry names every vendor, transport and shared section
without importing a transport module: a module, with the libraries its I/O needs (gql and
websockets for the IOmeter Partner API, pymodbus, aiomqtt...), is imported when a configuration
uses it, and only then. A daemon polling HomeWizard meters does not carry the other vendors'
code (about 15 MB).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

# The vendors' packages, in the order `discover` asks a device who it is.
VENDORS: tuple[str, ...] = ("homewizard", "iometer", "iammeter", "enphase")

# Top-level sections of the configuration shared by targets -> the module that declares it
# (as `SECTION`): the transports' own, which know no vendor.
SECTIONS: dict[str, str] = {
    "mqtt_brokers": "exporter.transport.mqtt",
    "http_push": "exporter.transport.http_push",
    "tcp_push": "exporter.transport.tcp_push",
}


def load_vendor(vendor: str) -> ModuleType:
    """A vendor's package (its declaration only)."""
    return import_module(f"{__name__}.{vendor}")


def load_module(vendor: str, module: str) -> ModuleType:
    """One module of a vendor's package (a transport registers its spec when imported)."""
    return import_module(f"{__name__}.{vendor}.{module}")


def load_section(name: str) -> ModuleType:
    """The module declaring one shared section of SECTIONS."""
    return import_module(SECTIONS[name])


def load_all() -> None:
    """Import every vendor's transports and every section module: for what lists them all
    (the manual's tables, tests), never needed to run a configuration."""
    for vendor in VENDORS:
        for transport in load_vendor(vendor).VENDOR.transports:
            load_module(vendor, transport.module)
    for name in SECTIONS:
        load_section(name)
