"""Vendor adapters: one package per vendor, one module per way of reaching its devices.

Each transport module declares its `TransportSpec` (registry.py) when imported. The tables below
say where every transport and shared section is declared, so the registry names them all
without importing any: a module, with the libraries its I/O needs (gql and websockets for the
IOmeter Partner API, pymodbus, aiomqtt...), is imported when a configuration uses it, and only
then. A daemon polling HomeWizard meters does not carry the other vendors' code (about 15 MB).
"""

from __future__ import annotations

from importlib import import_module

# (vendor, transport, module under exporter.vendors, shared sections the transport reads), each
# vendor's default transport first.
TRANSPORTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("homewizard", "local", "homewizard.local", ()),
    ("iometer", "local", "iometer.bridge", ()),
    ("iometer", "partner", "iometer.partner", ()),
    ("iammeter", "http", "iammeter.http", ()),
    ("iammeter", "modbus", "iammeter.modbus", ()),
    ("iammeter", "mqtt", "iammeter.mqtt", ("mqtt_brokers",)),
    ("iammeter", "push", "iammeter.push", ("http_push",)),
    ("iammeter", "cloud", "iammeter.cloud", ()),
    ("enphase", "local", "enphase.local", ()),
)

# Top-level sections of the configuration shared by targets -> the module that declares it.
SECTIONS: dict[str, str] = {
    "mqtt_brokers": "exporter.mqtt",
    "http_push": "exporter.push",
}


def load_transport(module: str) -> None:
    """Import one transport module of TRANSPORTS (it registers its spec)."""
    import_module(f"{__name__}.{module}")


def load_all() -> None:
    """Import every transport and section module: for what lists them all (README tables,
    tests), never needed to run a configuration."""
    for _, _, module, _ in TRANSPORTS:
        load_transport(module)
    for module in SECTIONS.values():
        import_module(module)
