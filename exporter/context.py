"""What an adapter gets from the daemon: the shared HTTP client, the state directory, a logger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from .state import StateDirectory


@dataclass
class AdapterContext:
    session: aiohttp.ClientSession
    state: StateDirectory
    log: Any  # a structlog logger bound to the target
    clock: Callable[[], float] = field(default=time.time)
