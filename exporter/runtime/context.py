"""What an adapter gets from the daemon: the shared HTTP client, shared connections, the state
directory and its quota ledger, the configuration's shared sections, a logger."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import aiohttp

from .quota import QuotaLedger
from .state import StateDirectory

T = TypeVar("T")


class SharedResources:
    """Objects several targets use at once (one MQTT connection per broker, one listener for
    HTTP push): created on first use, closed when the last user lets go."""

    def __init__(self) -> None:
        self._items: dict[Any, list] = {}  # key -> [object, users]
        self._locks: dict[Any, asyncio.Lock] = {}

    async def acquire(self, key: Any, factory: Callable[[], Awaitable[T]]) -> T:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = [await factory(), 0]
            item[1] += 1
            return item[0]

    async def release(self, key: Any) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            item = self._items.get(key)
            if item is None:
                return
            item[1] -= 1
            if item[1] <= 0:
                del self._items[key]
                close = getattr(item[0], "close", None)
                if close is not None:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class AdapterContext:
    session: aiohttp.ClientSession
    state: StateDirectory
    log: Any  # a structlog logger bound to the target
    clock: Callable[[], float] = field(default=time.time)
    shared: SharedResources = field(default_factory=SharedResources)
    sections: Mapping[str, Any] = field(default_factory=dict)
    # Where shared objects (listeners, broker connections) publish their own series, through
    # `store.set_global(owner, metric, [(labels, value), ...])`. None in unit tests.
    store: Any = None
    # The daemon's one ledger of rate-limited calls (targets sharing an account share it). None
    # for an adapter built on its own, which then keeps a ledger of its own.
    ledger: QuotaLedger | None = None
