"""Lifetime counters that wrap: a derived step (see `derived.py`).

Firmware 7.6.x keeps the microinverters' lifetime energy (`whLifetime` of the
"inverters" entry of `/production.json`, and so the system's production on gateways without a
production CT) in a 32-bit register of joules: at 2^32 J (1,193,046.47 Wh) it starts again
from the bottom. Exported as read, the counter would drop by 1.19 MWh, which the core takes as a
meter reset after an hour, and the lifetime shown would be short by every wrap.

Where a source that does not wrap is trustworthy, it is the one exported: the production CT
wins over the microinverters in the parsers (an enabled CT, per `/ivp/meters`), and its lifetime
here tells how many wraps an inverter total has behind it when the exporter first sees it
(`/api/v1/production` is not used for that: it reports the production CT on CT gateways, and
0, stalled or stepped-down figures on some firmware). Where only the wrapping source exists, a
step down by about the wrap size from one poll to the next is a wrap: the wrap size is added
from then on. Limits, said in docs/vendors/enphase.md: without a production CT, a counter that wrapped before
the exporter first saw it cannot be told from a young system's and is exported as read (later
wraps are added); a counter seen at or above the wrap size does not wrap and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Protocol

from ...model import catalogue as M
from ...model.samples import Reading

WRAP = 2.0**32  # J (1,193,046.47 Wh)
# How far an estimate from the production CT may be from a whole number of wraps: inverter and
# CT totals differ by a few percent (inverter losses, CT accuracy), not by a quarter wrap.
REFERENCE_SLACK = WRAP / 4

# The totals that come from the microinverters' register when no production CT counts.
WRAPPING = (M.MICROINVERTERS_ENERGY, M.PRODUCTION_ENERGY)


class Store(Protocol):
    def read_json(self, name: str) -> Any | None: ...
    def write_json(self, name: str, value: Any) -> None: ...


@dataclass
class Counter:
    last: float  # the last value as read (J)
    wraps: int  # wraps added to it
    saved: float | None = None  # `last` as last stored


def wraps_from_reference(value: float, reference: float | None) -> int:
    """Wraps behind `value`, judged from a total that does not wrap and counts about the same
    energy (the production CT); 0 when there is none or it does not tell."""
    if reference is None or reference < WRAP:
        return 0
    wraps = round((reference - value) / WRAP)
    if wraps <= 0 or abs(value + wraps * WRAP - reference) > REFERENCE_SLACK:
        return 0
    return wraps


class WrappedLifetimes:
    """Adds the wraps back to the lifetime counters of `WRAPPING`, remembering them across polls
    (and across restarts when given a store)."""

    def __init__(self, store: Store | None = None) -> None:
        self.counters: dict[str, Counter] = {}
        self.store = store
        self.loaded_for: str | None = None
        self.dirty = False  # something worth storing changed

    def __call__(self, merged: Reading, latest: Mapping[str, Reading]) -> None:
        self._load(merged)
        reference = merged.value_of(M.CT_ENERGY_DELIVERED, meter="production")
        if reference is None:
            # Production at or above the wrap size comes from a source that does not wrap (the
            # production CT's entry of /production.json or /ivp/pdm/energy).
            production = merged.value_of(M.PRODUCTION_ENERGY)
            reference = production if production is not None and production >= WRAP else None
        for index, sample in enumerate(merged.samples):
            if sample.metric not in WRAPPING or sample.labels:
                continue
            value = self._unwrapped(sample.metric.name, sample.value, reference)
            if value is not None:
                merged.samples[index] = replace(sample, value=value)
        self._save()

    def _unwrapped(self, name: str, value: float, reference: float | None) -> float | None:
        """The value with its wraps added; None when it is to be exported as read and nothing
        about it needs remembering."""
        counter = self.counters.get(name)
        if value >= WRAP:
            # A register that holds this much does not wrap (or the source changed to one that
            # does not): nothing to add.
            if self.counters.pop(name, None) is not None:
                self.dirty = True
            return None
        if counter is None or value - counter.last > WRAP / 2:
            # First sight, or a jump up by about a wrap (another source): start afresh.
            counter = Counter(last=value, wraps=wraps_from_reference(value, reference))
            self.counters[name] = counter
            self.dirty = True
        elif counter.last - value > WRAP / 2:
            counter.wraps += 1  # a step down by about the wrap size between two polls
            self.dirty = True
        counter.last = value
        if counter.saved is None or abs(value - counter.saved) > WRAP / 8:
            self.dirty = True  # keep the stored `last` close enough to tell a wrap from progress
        return value + counter.wraps * WRAP

    # --- across restarts ----------------------------------------------------------------------

    def _file(self, merged: Reading) -> str | None:
        serial = next((d.serial for d in merged.devices if d.serial), None)
        return f"enphase-lifetime-wraps-{serial}.json" if serial else None

    def _load(self, merged: Reading) -> None:
        name = self._file(merged) if self.store else None
        if name is None or name == self.loaded_for:
            return
        self.loaded_for = name
        assert self.store is not None
        stored = self.store.read_json(name)
        if not isinstance(stored, dict):
            return
        for metric, entry in stored.items():
            if (isinstance(entry, dict) and isinstance(entry.get("last"), (int, float))
                    and isinstance(entry.get("wraps"), int) and entry["wraps"] >= 0):
                last = float(entry["last"])
                self.counters.setdefault(metric, Counter(last=last, wraps=entry["wraps"], saved=last))

    def _save(self) -> None:
        """Stores the wraps when they change; `last` goes with them (refreshed every eighth of a
        wrap) to tell a wrap while the exporter was down from progress."""
        if not self.dirty or self.store is None or self.loaded_for is None:
            return
        self.dirty = False
        for counter in self.counters.values():
            counter.saved = counter.last
        self.store.write_json(self.loaded_for, {k: {"last": c.last, "wraps": c.wraps} for k, c in self.counters.items()})
