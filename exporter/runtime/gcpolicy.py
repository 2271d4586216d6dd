"""The garbage collector at fleet scale."""

from __future__ import annotations

import asyncio
import gc
from typing import Callable

# With this many targets, or series lines of this many bytes (about 500 P1 meters: one IOmeter
# Partner account may hold thousands of meters), the garbage collector is managed: the objects
# built so far (configuration, adapters, runners, store) are moved out of its way (gc.freeze),
# and its full passes, which Python starts by a rule of thumb every few seconds under a
# fleet's steady churn of connections and readings (each a pause of all polls and scrapes,
# ~0.4 s at 10,000 targets; a third of the CPU time a flood of readings leaves for parsing),
# run on a timer instead. Young objects are collected as usual. The size is checked every
# GC_CHECK_EVERY seconds, since an account's meters arrive after start.
FREEZE_AT_TARGETS = 500
FREEZE_AT_BYTES = 2_500_000
GC_CHECK_EVERY = 5.0  # seconds (a sum over a few hundred segments)
FULL_COLLECTION_EVERY = 600.0  # seconds


class ManagedCollector:
    """Takes the collector's full passes in hand while the fleet is big (by its number of
    targets and the bytes of its series lines), and gives them back."""

    def __init__(self, targets: Callable[[], int], series_bytes: Callable[[], int]) -> None:
        self.targets = targets
        self.series_bytes = series_bytes
        self._timer: asyncio.Task | None = None  # full passes, while managed
        self._watch: asyncio.Task | None = None  # size checks, while not
        self._threshold = gc.get_threshold()

    def update(self) -> None:
        """After the set of objects changed (start, reload): freeze what exists and manage full
        passes if the fleet is big, else leave Python's own rule and watch the size."""
        gc.unfreeze()
        if not self.big():
            self._unmanage()
            if self._watch is None:
                self._watch = asyncio.create_task(self._watch_size(), name="gc-watch")
            return
        gc.collect()
        gc.freeze()
        if self._timer is None:
            self._threshold = gc.get_threshold()
            gc.set_threshold(self._threshold[0], self._threshold[1], 2**30)  # no automatic full passes
            self._timer = asyncio.create_task(self._full_collections(), name="gc")

    def big(self) -> bool:
        return self.targets() >= FREEZE_AT_TARGETS or self.series_bytes() >= FREEZE_AT_BYTES

    def stop(self) -> None:
        gc.unfreeze()
        self._unmanage()
        if self._watch is not None:
            self._watch.cancel()

    async def _watch_size(self) -> None:
        """Manage the collector once the series grow past FREEZE_AT_BYTES."""
        try:
            while self._timer is None:
                await asyncio.sleep(GC_CHECK_EVERY)
                if self._timer is None and self.big():
                    self.update()
        finally:
            self._watch = None

    async def _full_collections(self) -> None:
        while True:
            await asyncio.sleep(FULL_COLLECTION_EVERY)
            gc.collect()

    def _unmanage(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            gc.set_threshold(*self._threshold)
