"""Configurations loaded as the command line loads them: against every vendor of the registry."""

from __future__ import annotations

import os
from typing import Any

from exporter.config.loader import Config, VendorCatalogue
from exporter.config.loader import load_config as _load_config
from exporter.vendors import registry


def load_config(path: str | os.PathLike, *args: Any, vendors: VendorCatalogue = registry, **kwargs: Any) -> Config:
    return _load_config(path, *args, vendors=vendors, **kwargs)
