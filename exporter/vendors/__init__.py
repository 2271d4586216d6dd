"""Vendor adapters: one package per vendor, one module per way of reaching its devices."""

_LOADED = False


def load_all() -> None:
    """Import every transport module so that each registers its spec (first = vendor default)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from .homewizard import local as _homewizard_local  # noqa: F401
