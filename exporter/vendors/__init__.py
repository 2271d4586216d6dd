"""Vendor adapters: one package per vendor, one module per way of reaching its devices."""

_LOADED = False


def load_all() -> None:
    """Import every transport module so that each registers its spec (first = vendor default)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from .homewizard import local as _homewizard_local  # noqa: F401
    from .iometer import bridge as _iometer_bridge  # noqa: F401
    from .iometer import partner as _iometer_partner  # noqa: F401
    from .iammeter import http as _iammeter_http  # noqa: F401
    from .iammeter import modbus as _iammeter_modbus  # noqa: F401
    from .iammeter import mqtt as _iammeter_mqtt  # noqa: F401
    from .iammeter import push as _iammeter_push  # noqa: F401
    from .iammeter import cloud as _iammeter_cloud  # noqa: F401
    from .enphase import local as _enphase_local  # noqa: F401
